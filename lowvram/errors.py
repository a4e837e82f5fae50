"""The one exception type the CLI turns into a clean one-line message (no traceback), and the messages more
than one layer gives."""

import errno
import os
import shlex
import subprocess
from pathlib import Path

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # never opened: loading a pickle can run code


class LowvramError(Exception):
    """A problem the user can fix: the message names the file or option and says how."""


class Refused(LowvramError):
    """A run refused before it changed anything (a --resume that finds nothing to do): the record of the run there,
    metrics.jsonl's end line, stays as the run left it."""


class TrainingInterrupted(LowvramError):
    """Ctrl-C or SIGTERM: the current step finished, a checkpoint and a usable LoRA were saved."""

    exit_code = 130

    def __init__(self, message: str = "", saved: dict[str, str] | None = None):
        super().__init__(message)
        # what the stop left, for metrics.jsonl's end line as the message says it: "lora", "checkpoint", "continue"
        self.saved = saved or {}


class Busy(Refused):
    """Another live lowvram run holds the output folder (or the cache `lowvram cache` would prune): refused before
    anything changed, with EX_TEMPFAIL's exit code (75, "try again later", as sendmail's), so a script tells it
    from an error to fix."""

    exit_code = 75


class TrainingDiverged(LowvramError):
    """Several steps in a row had a non-finite loss or gradient."""


def shell_line(*words: object) -> str:
    """A command as this machine's shell takes it pasted: a word with a space (a Drive folder's "My Drive") quoted."""
    text = [str(word) for word in words]
    return subprocess.list2cmdline(text) if os.name == "nt" else shlex.join(text)


def first_line(exc: BaseException) -> str:
    """An exception's message as one line of ours quotes it: libraries' run to paragraphs."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def host_memory_ran_out(exc: BaseException, command: str = "train") -> str | None:
    """What to say where `exc` is host RAM running out (PyTorch's CPU allocator, Python's MemoryError, a mapping
    refused) in `command`, else None. (CUDA's out-of-memory is torch.OutOfMemoryError, whose steps retry it.)"""
    allocator = isinstance(exc, RuntimeError) and "DefaultCPUAllocator: " in str(exc)
    if not (allocator or isinstance(exc, MemoryError) or isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        return None
    said = first_line(exc).split("DefaultCPUAllocator: ")[-1]  # (past PyTorch's "[enforce fail at alloc_cpu.cpp]")
    training = "" if command != "train" else (
        "; `lowvram plan` shows the host RAM each phase needs (--ram SIZE plans for a machine's), and a model saved in "
        "the precision it trains in, or a diffusers folder, loads with less")
    return f"host RAM ran out ({said}): close other programs or add swap{training}"


def quoted(value: object) -> str:
    """A value as an error message quotes it: its repr, the middle of a long one (a number of 400 digits) left out."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:30]}…{text[-20:]}"


# converts a pickled checkpoint without running its code (weights_only); the paths come as its arguments, which no
# quoting of Python's can break (a Windows path's \\U, an apostrophe in a name)
CONVERT_PICKLE = ("import sys, torch, safetensors.torch as st; d = torch.load(sys.argv[1], weights_only=True); "
                  "st.save_file({k: v.contiguous() for k, v in d.get('state_dict', d).items() if "
                  "isinstance(v, torch.Tensor)}, sys.argv[2])")  # (a .ckpt's global_step beside them)


# what a file named .safetensors holds instead, by its first bytes: safetensors says "header too large" (or
# "invalid header") for each, whatever it is; the more specific first
NOT_SAFETENSORS = (
    (b"version https://git-lfs", "a Git LFS pointer, not the file itself (the clone skipped its large files)",
     "fetch them in that clone: git lfs pull"),
    (b"<", "a web page, not a model (the download saved a sign-in or error page)",
     "download it again in a browser, or with the site's token (civitai's API key, hf auth login)"),
    (b"GGUF", "a GGUF file (for ComfyUI-GGUF or stable-diffusion.cpp)", "give the .safetensors the GGUF was made from"),
    (b"PK\x03\x04", "a zip archive", "unpack it and give the .safetensors inside"),
)


def not_safetensors(path: str | Path, exc: BaseException, fix: str) -> str:
    """Why `path` is no safetensors file, and `fix`, in one line: what it holds instead where its first bytes say
    it (a renamed pickle gets the command that converts it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        head = b""
    if head[8:9] != b"{":  # (a header's start: the file is a safetensors one, if broken, e.g. cut off)
        pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") or _pytorch_zip(path)
        if pickled and Path(path).suffix.lower() in PICKLE_SUFFIXES:  # (named as one: nothing to rename)
            return pickle_refusal(None, str(path))
        if pickled:
            renamed = Path(path).with_suffix(".ckpt")  # (torch.load reads a .safetensors name as safetensors)
            return (f"{path} is a pickle file named {Path(path).suffix}, which can run arbitrary code when loaded, so "
                    f"lowvram never opens it; rename it {renamed.name}, then convert it once to safetensors: python -c "
                    f"\"{CONVERT_PICKLE}\" {shell_line(renamed, path)}")
        if head.strip(b"\x00") == b"" and len(head) >= 8:
            return (f"{path} holds only zero bytes (a download or copy that never wrote it: a full disk?); "
                    "download or copy it again")
        for start, what, advice in NOT_SAFETENSORS:
            if head.lstrip(b" \t\r\n").startswith(start):
                return f"{path} is {what}, not a .safetensors file; {advice}"
    return f"{path} is not a readable .safetensors file ({first_line(exc)}); {fix}"


def _pytorch_zip(path: str | Path) -> bool:
    """Whether `path` is the zip torch.save writes: its data.pkl among the archive's names (the central directory,
    at its end: a long name puts data.pkl past any first bytes read)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def pickle_refusal(flag: str | None, path: str, out: str | Path | None = None) -> str:
    """Why a pickled checkpoint is refused (given by `flag`, where one names it), and the one command that converts it
    (to `out`, by default beside it as .safetensors) without running its code."""
    out = out or Path(path).with_suffix(".safetensors")
    return (f"{flag + ': ' if flag else ''}{path} is a pickle file, which can run arbitrary code when loaded, so lowvram never opens it; "
            f"convert it once to safetensors: python -c \"{CONVERT_PICKLE}\" {shell_line(path, out)}")
