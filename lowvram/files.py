"""Writing files so that a crash, a kill or a full disk never leaves a half-written one behind."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lowvram.errors import LowvramError

if TYPE_CHECKING:
    import torch


def atomic_write(path: Path, write) -> Path:
    """Call `write(tmp_path)`, fsync, then rename over `path`; on failure the old `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp (and safetensors' own writer) leave it owner-only; a ComfyUI server of another user must read it
        os.chmod(tmp, plain_mode(0o666))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise LowvramError(f"disk full while writing {path}; free some space (nothing earlier was lost)") from None
        raise LowvramError(f"could not write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plain_mode(requested: int) -> int:
    """The permissions `open()` (0o666) or `mkdir()` (0o777) gives under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return requested & ~umask


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as safetensors, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
