"""What a run records as it goes: `metrics.jsonl` always (one JSON object per line, flushed, so it is
readable while training runs and after a kill), TensorBoard too when asked (loss, learning rate, gradient
norm, VRAM, validation loss and sample grids)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lowvram.errors import LowvramError
from lowvram.files import DiskFull, free_bytes, is_disk_full, is_size_limit, write_text


class RunLog:
    def __init__(self, output_dir: Path, resumed_step: int, tensorboard: bool, enabled: bool = True):
        """`resumed_step`: the step a resumed run continues after (0 for a new run); what an interrupted run
        logged past it is dropped, since those steps are trained again."""
        self.enabled = enabled  # only the main process writes (multi-GPU)
        self.metrics = None
        if enabled:
            path = output_dir / "metrics.jsonl"
            if resumed_step:  # rewritten atomically: a kill now must not lose the history
                write_text(path, _lines_up_to(path, resumed_step))
            else:  # a new file, not whatever a link of that name (in a folder from elsewhere) points to
                path.unlink(missing_ok=True)
            # closed by close() / __exit__: this object is the context manager
            self.metrics = open(path, "a" if resumed_step else "w", encoding="utf-8")  # noqa: SIM115
        self.writer = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise LowvramError("--tensorboard: TensorBoard is not installed; pip install 'lowvram[tensorboard]' "
                                   "(or tensorboard), or drop --tensorboard") from None
            self.writer = SummaryWriter(str(output_dir / "logs"))

    def step(self, step: int, values: dict) -> None:
        """One optimizer step's numbers (`values` holds loss, lr, grad_norm, seconds, ...)."""
        if not self.enabled:
            return
        if torch.cuda.is_available():
            values = {**values, "vram_peak_gib": torch.cuda.max_memory_reserved() / 2**30}
        self._write({"step": step, **values})
        if self.writer:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "total_steps"):
                    self.writer.add_scalar(f"train/{key}", value, step)

    def validation(self, step: int, loss: float, best: bool) -> None:
        if not self.enabled:
            return
        self._write({"step": step, "validation_loss": loss, "best": best})
        if self.writer:
            self.writer.add_scalar("validation/loss", loss, step)

    def image(self, step: int, tag: str, path: Path) -> None:
        if self.writer:
            from PIL import Image

            self.writer.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def _write(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        try:
            self.metrics.write(line)
            self.metrics.flush()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            folder = Path(self.metrics.name).parent
            raise DiskFull(folder, len(line), free_bytes(folder), "metrics.jsonl", is_size_limit(exc)) from None

    def close(self) -> None:
        if self.metrics:
            try:
                self.metrics.close()
            except OSError as exc:  # the line a full disk refused is still buffered: _write said so already
                if not is_disk_full(exc):
                    raise
        if self.writer:
            self.writer.close()

    def __enter__(self) -> RunLog:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def append_record(path: Path, record: dict) -> None:
    """One more line in a closed metrics.jsonl (what the run measured after its last step)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _lines_up_to(path: Path, step: int) -> str:
    if not path.is_file():
        return ""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line + "\n")
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return "".join(kept)
