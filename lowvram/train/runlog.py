"""What a run records as it goes: `metrics.jsonl` always (one JSON object per line, flushed, so it is
readable while training runs and after a kill), TensorBoard and Weights & Biases too when asked (loss, learning
rate, gradient norm, VRAM, each epoch's mean loss, validation loss, sample grids and the final samples). A resumed
run goes on logging to the W&B run it started: its id is a record of metrics.jsonl, which the resume keeps."""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from lowvram.config import RunConfig
from lowvram.errors import LowvramError, TrainingInterrupted
from lowvram.files import (
    KEPT_FREE,
    DiskFull,
    free_bytes,
    is_disk_full,
    is_size_limit,
    make_folders,
    plain_mode,
    shared_mode,
    write_problem,
    write_text,
)
from lowvram.run_files import LOGS, METRICS


class RunLog:
    def __init__(self, output_dir: Path, resumed_step: int, config: RunConfig, enabled: bool = True,
                 open_epoch: int | None = None):
        """`resumed_step`: the step a resumed run continues after (0 for a new run); what an interrupted run
        logged past it is dropped, since those steps are trained again. `open_epoch`: the epoch it resumes in the
        middle of (None: it resumes at an epoch's start), whose mean loss takes in the steps logged before."""
        self.enabled = enabled  # only the main process writes (multi-GPU)
        self.metrics, self.writer, self.wandb = None, None, None
        self.epoch_losses: list[float] = []  # the finite losses of the epoch under way, for its mean at its end
        self.last_step, self.ended = resumed_step, False
        if not enabled:
            return
        logs = output_dir / LOGS
        unwritable = write_problem(logs) if (config.output.tensorboard or config.output.wandb_project) else None
        if unwritable:  # (W&B would write elsewhere, TensorBoard stop with a traceback)
            raise LowvramError(f"--output: {unwritable} (the run's logs go there); move it away, or choose another "
                               "--output")
        if config.output.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise LowvramError("--tensorboard: TensorBoard is not installed; pip install 'lowvram[tensorboard]' "
                                   "(or tensorboard), or drop --tensorboard") from None
        path = output_dir / METRICS
        if resumed_step:  # rewritten atomically: a kill now must not lose the history
            kept = _lines_up_to(path, resumed_step)
            write_text(path, kept)
            self.epoch_losses = [] if open_epoch is None else _epoch_losses(kept, open_epoch)
        else:  # a new file, not whatever a link of that name (in a folder from elsewhere) points to
            path.unlink(missing_ok=True)
        # closed by close() / __exit__: this object is the context manager
        self.metrics = open(path, "a" if resumed_step else "w", encoding="utf-8")  # noqa: SIM115
        if not resumed_step:  # (a classmate resuming in a lab's shared output folder appends to it)
            with contextlib.suppress(OSError, AttributeError):  # (the file opened, never a link put there; Windows)
                os.fchmod(self.metrics.fileno(), shared_mode(output_dir, plain_mode(0o666)))
        try:
            if config.output.tensorboard:
                # a resumed run's steps past its checkpoint were logged by the run that was stopped: hidden, as
                # metrics.jsonl drops them (TensorBoard would draw both, the curve jumping back)
                self.writer = SummaryWriter(str(logs), purge_step=resumed_step + 1 if resumed_step else None)
                _quiet_writer_threads()
            if config.output.wandb_project:
                self.wandb = _WandbRun(config, output_dir, self._wandb_run_id(resumed_step))
        except BaseException:
            self.close(failed=True)
            raise

    def step(self, step: int, values: dict, ends_epoch: bool = False) -> None:
        """One optimizer step's numbers (`values` holds loss, lr, grad_norm, seconds, epoch, ...), and where it
        `ends_epoch`, the epoch's mean loss (kohya's loss/epoch) over its steps' finite losses."""
        if not self.enabled:
            return
        if torch.cuda.is_available():
            values = {**values, "vram_peak_gib": torch.cuda.max_memory_reserved() / 2**30}
        self._write({"step": step, **values})
        self.last_step = step
        scalars = {f"train/{key}": value for key, value in values.items()
                   if isinstance(value, (int, float)) and key not in ("epoch", "total_steps")}
        if isinstance(values.get("loss"), float) and math.isfinite(values["loss"]):
            self.epoch_losses.append(values["loss"])
        if ends_epoch:
            mean = sum(self.epoch_losses) / len(self.epoch_losses) if self.epoch_losses else float("nan")
            self._write({"step": step, "epoch": values.get("epoch", 0), "epoch_loss": mean})
            # against the step, as every curve: TensorBoard's purge on a resume drops a stopped run's re-run epochs
            scalars["epoch/loss"] = mean
            self.epoch_losses = []
        if self.writer:
            with self._writing():
                for tag, value in scalars.items():
                    self.writer.add_scalar(tag, value, step)
        if self.wandb:
            self.wandb.log(step, scalars | {"train/epoch": values.get("epoch", 0)})

    def validation(self, step: int, loss: float, best: bool) -> None:
        if not self.enabled:
            return
        self._write({"step": step, "validation_loss": loss, "best": best})
        if self.writer:
            with self._writing():
                self.writer.add_scalar("validation/loss", loss, step)
        if self.wandb:
            self.wandb.log(step, {"validation/loss": loss})

    def image(self, step: int, tag: str, path: Path) -> None:
        if self.writer:
            with self._writing():
                self.writer.add_image(tag, _pixels(path), step, dataformats="HWC")
        if self.wandb:
            self.wandb.image(step, tag, path)

    def final_samples(self, step: int, samples: list[Path]) -> None:
        """The final LoRA's samples, one image each (final_samples/00, ...), beside the grids; written out now, so
        that a full disk says so here (TensorBoard's writer thread would raise it only at the close)."""
        for index, path in enumerate(samples if self.enabled else []):
            self.image(step, f"final_samples/{index:02d}", path)
        if self.writer and samples:
            with self._writing():
                self.writer.flush()

    @contextmanager
    def _writing(self):
        """TensorBoard's writes, a full disk said as every write's is (its writer thread raises it on the next)."""
        try:
            yield
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            folder = Path(self.metrics.name).parent / LOGS
            raise DiskFull(folder, KEPT_FREE, free_bytes(folder), "the TensorBoard log", is_size_limit(exc)) from None

    def finished(self, step: int, lora: Path, copied: Path | None = None, missing: tuple[str, ...] = ()) -> None:
        """The last line of a run that ended as asked, with its LoRA and --copy-to's copy: a script following the
        file knows it is over, and what it asked for that could not be written (`missing`: "copy_to", the copy
        refused or failed; "checkpoint", the end's to train on from, "diffusers", --format diffusers' copy, on a full
        disk; "samples", the final samples, on a full disk or out of memory), each said as a warning."""
        self.record({"step": step, "end": "finished", "lora": str(lora)} | ({"copied_to": str(copied)} if copied else {})
                    | ({"missing": list(missing)} if missing else {}))
        self.ended = True

    def record(self, record: dict) -> None:
        """One more line in metrics.jsonl (what the run measured after its last step)."""
        if self.enabled:
            self._write(record)

    def _wandb_run_id(self, resumed_step: int) -> str:
        """The W&B run this run logs to: the one a resumed run started (its id is a record of metrics.jsonl), else
        a new one, recorded there."""
        if resumed_step:  # (the lines were read back already: each is whole)
            for line in Path(self.metrics.name).read_text(encoding="utf-8").splitlines():
                if '"wandb_run_id"' in line and isinstance(json.loads(line).get("wandb_run_id"), str):
                    return json.loads(line)["wandb_run_id"]
        run_id = secrets.token_hex(4)
        self._write({"step": 0, "wandb_run_id": run_id})
        return run_id

    def _write(self, record: dict) -> None:
        # a non-finite figure (a step whose loss went NaN) as null: JSON has no NaN, and strict readers (JavaScript's
        # JSON.parse, jq 1.7) refuse Python's bare NaN, at the moment a diverging run matters most
        finite = {key: None if isinstance(value, float) and not math.isfinite(value) else value
                  for key, value in record.items()}
        line = json.dumps(finite, allow_nan=False) + "\n"
        try:
            self.metrics.write(line)
            self.metrics.flush()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            folder = Path(self.metrics.name).parent
            raise DiskFull(folder, len(line), free_bytes(folder), METRICS, is_size_limit(exc)) from None

    def close(self, failed: bool = False) -> None:
        if self.wandb:
            self.wandb.finish(failed)
        if self.metrics:
            try:
                self.metrics.close()
            except OSError as exc:  # the line a full disk refused is still buffered: _write said so already
                if not is_disk_full(exc):
                    raise
        if self.writer:
            try:
                self.writer.close()
            except OSError as exc:  # what a full disk refused was said where it was written (final_samples)
                if not is_disk_full(exc):
                    raise

    def __enter__(self) -> RunLog:  # noqa: PYI034
        return self

    def __exit__(self, kind, error, *exc) -> None:
        # a stop asked for (Ctrl-C saves a checkpoint to resume from) is no failure
        failed = kind is not None and not issubclass(kind, (KeyboardInterrupt, TrainingInterrupted))
        if kind is not None and self.enabled and self.metrics and not self.ended:  # (the file ends saying how)
            with contextlib.suppress(OSError, DiskFull, ValueError):
                self._write(_end_record(self.last_step, error))
                self.ended = True
        self.close(failed=failed)


def _end_record(step: int, error: BaseException) -> dict:
    """The line that ends metrics.jsonl for a run stopped by `error`: interrupted (to resume), or failed and why."""
    if isinstance(error, (KeyboardInterrupt, TrainingInterrupted)):  # (with what it saved: a script reads the
        return {"step": step, "end": "interrupted"} | getattr(error, "saved", {})  # LoRA and how to go on there)
    return {"step": step, "end": "failed", "error": (str(error).splitlines() or [type(error).__name__])[0]}


def log_early_end(output_dir: Path, error: BaseException) -> None:
    """A run stopped before its log opened (while loading, caching, resuming): its end said in metrics.jsonl all the
    same, at the last step there, so that the line a run resumed earlier ended it with is not taken for this one's."""
    path = output_dir / METRICS
    if not path.is_file() or path.is_symlink():
        return
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text(encoding="utf-8", errors="replace")
        steps = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError, AttributeError):  # (a line cut short by a kill or a full disk)
                steps.append(json.loads(line).get("step", 0))
        with open(path, "a", encoding="utf-8") as metrics:  # (after such a line, on a line of its own)
            metrics.write(("\n" if text and not text.endswith("\n") else "")
                          + json.dumps(_end_record(steps[-1] if steps else 0, error)) + "\n")


class _WandbRun:
    """A Weights & Biases run of the training run's steps (its files under <output>/logs, as TensorBoard's)."""

    def __init__(self, config: RunConfig, output_dir: Path, run_id: str):
        import wandb

        folder = output_dir / LOGS
        make_folders(folder)
        # console "off": W&B would wrap the terminal that rich draws the progress on
        try:  # the recipe as a LoRA's metadata has it, without this machine's folders (W&B's own record of the
            # run keeps the command line and the Python it ran)
            self.run = wandb.init(project=config.output.wandb_project, name=config.output.wandb_run_name or
                                  config.output_name, id=run_id, resume="allow", dir=str(folder),
                                  config=config.to_shareable_dict(),
                                  settings=wandb.Settings(console="off", quiet=True))
        except wandb.errors.Error as exc:
            reason = str(exc).splitlines()[0].rstrip(".")
            offline = "" if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled") else (
                " To log on this machine only, set WANDB_MODE=offline (the run stays in <output>/logs for `wandb "
                "sync`)")
            raise LowvramError(f"--wandb-project: W&B did not start the run: {reason}.{offline}") from None
        self.first_step = self.run.step  # a resumed run's: the steps logged before are W&B's already

    def log(self, step: int, values: dict) -> None:
        if step >= self.first_step:
            self.run.log(values, step=step)

    def image(self, step: int, tag: str, path: Path) -> None:
        import wandb

        if step >= self.first_step:
            self.run.log({tag: wandb.Image(str(path))}, step=step)

    def finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def _quiet_writer_threads() -> None:
    """TensorBoard's writer thread meets a full disk: its traceback is not printed (the run's next write to it
    raises the error again, where the run says it in one line); any other thread's error is, as before."""
    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard", False):
        return

    def hook(args) -> None:
        if not (type(args.thread).__name__ == "_AsyncWriterThread" and is_disk_full(args.exc_value)):
            previous(args)

    hook.quiets_tensorboard = True
    threading.excepthook = hook


def _pixels(path: Path) -> np.ndarray:
    """An image file as TensorBoard takes it: height x width x RGB."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _epoch_losses(lines: str, epoch: int) -> list[float]:
    """The finite losses the step records in `lines` logged for `epoch`."""
    losses = []
    for line in lines.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        loss = record.get("loss") if isinstance(record, dict) and record.get("epoch") == epoch else None
        if isinstance(loss, float) and math.isfinite(loss):
            losses.append(loss)
    return losses


def _lines_up_to(path: Path, step: int) -> str:
    """The lines of the steps up to `step`, without the line that said how the earlier run ended: it goes on."""
    if not path.is_file():
        return ""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            if record.get("step", 0) <= step and "end" not in record:
                kept.append(line + "\n")
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return "".join(kept)
