"""The training run, top to bottom: the session, the data, the frozen model and its caches, the adapters, the
steps with their save points, the LoRA file and samples. Each stage is a function in `setup`, `step` or `saving`."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import tomli_w
import torch
from rich.console import Console
from rich.markup import escape

from lowvram.adapters import lora_files, networks
from lowvram.config import RunConfig
from lowvram.console import another_process
from lowvram.console import console as log_console
from lowvram.data.dataset import TrainingData
from lowvram.data.prepare import PreparedData
from lowvram.errors import Busy, Refused, TrainingInterrupted, shell_line
from lowvram.files import DiskFull, is_utf8
from lowvram.lora_metadata import addnet_hash
from lowvram.memory import PhasePeaks, free_cached_memory, host_peak_bytes
from lowvram.models.loading import LoadedModel
from lowvram.resolve import cache_in_use
from lowvram.run_files import LOGS, LORA_SUFFIX, METRICS, SAMPLES, best_save, diffusers_copy, final_lora, options_path
from lowvram.train import checkpoint, outdir, publish
from lowvram.train.folder_lock import FolderLock
from lowvram.train.metadata import TrainingShape
from lowvram.train.progress import StopOnSignal, TrainingProgress, clock
from lowvram.train.runlog import RunLog, log_early_end
from lowvram.train.sampling import render_samples, save_grid
from lowvram.train.saving import (
    FinalSave,
    at_save_points,
    checkpoint_to_resume,
    grid_due_at_start,
    grid_of_final_samples,
    is_save_point,
    resume,
    sample_grid,
    save_final,
    save_interrupted,
    validate_and_keep_best,
)
from lowvram.train.schedule import plan_schedule
from lowvram.train.setup import (
    Dataset,
    Session,
    Trainee,
    attach_adapters,
    describe,
    fill_caches_and_place,
    freeze_text_encoders,
    load_frozen_model,
    scan_data,
    start_session,
)
from lowvram.train.step import count_bad_steps, forward_backward, learning_rates, sum_over_processes, update
from lowvram.train.validation import EarlyStopping, held_out_id


@dataclass
class TrainResult:
    lora_path: Path
    config_path: Path
    samples: list[Path]
    steps: int
    epochs: int
    final_loss: float
    model: LoadedModel  # the base model with the trained adapters still attached
    data: TrainingData  # what it trained on (cached entries)
    encoded: tuple[int, int]  # latents and text embeddings encoded by this run; the rest came from the cache
    data_reports: list  # the scan reports of the dataset (and the regularization set)
    validation: EarlyStopping | None = None  # the validation record, when a validation set was given


def train(config: RunConfig, console: Console | None = None) -> TrainResult:
    """Train a LoRA as `config` says and write it, its config and sample images to the output folder.

    Under `accelerate launch` every process runs this: each trains on its share of every step's batches
    (DDP averages the gradients), only the main process writes files."""
    # said before the data is cached or the model loads, and before what --resume finds there (taken in `claimed`,
    # after every process has joined the process group: none has taken it yet). Every process looks, the main one
    # alone saying so: the others, left waiting to join a main process that had refused, hung until the launcher
    # killed them
    lock = FolderLock(config.output_dir)
    lock.wait_while_going_stale(lambda line: None if another_process() else (console or log_console()).print(
        line, soft_wrap=True, highlight=False))
    if busy := lock.held_by_another():
        raise Busy(busy)
    config, fresh = outdir.nothing_to_resume(config)
    session = start_session(config, console)
    if fresh:
        session.console.print(fresh, soft_wrap=True)
    # under --overwrite, a dataset of no usable image refused before the earlier run moves to its archive (the
    # sample dataset is written into the folder once it is this run's; a resume's refusals come before any scan)
    moves = config.output.overwrite and not config.training.resume and not session.run.uses_sample_data
    dataset = scan_data(session) if moves else None
    # the cache's entries stay while the run reads them, and are free to remove once it ends (the result handed
    # back, in a notebook, holds no lock)
    with (cache_in_use(session.run.cache_dir, session.console),
          outdir.claimed(session.run, session.accelerator, session.main) as note):  # the folder is this run's
        if note:
            session.console.print(note, soft_wrap=True)
        try:
            return run_training(session, dataset)
        except DiskFull as exc:  # the newest checkpoint and LoRA are whole: say so, and how to go on
            failure = outdir.out_of_room(session.run, exc, session.world)
            if session.main and not session.logging:
                log_early_end(session.out_dir, exc)
            raise failure from None
        except BaseException as exc:
            if session.main and not session.logging and not isinstance(exc, Refused):
                log_early_end(session.out_dir, exc)
            raise


def write_options(session: Session) -> Path:
    """The run's options as <name>.toml in its folder: what `--config ... --resume auto` continues an interrupted
    run with (a fresh run's before its caching: a disconnect during it left none to continue with)."""
    config, out_dir, name = session.config, session.out_dir, session.config.output_name
    config_path = options_path(out_dir, name)
    if session.main and config_path.name != f"{name}.toml":
        session.console.print(f"kept {out_dir / name}.toml as it is: lowvram's header is not on its first line (your "
                              f"own config, or an older lowvram's); this run's options go to {config_path}",
                              soft_wrap=True)
    options = tomli_w.dumps(outdir.saved_options(config))
    if session.main and not outdir.write_options(config_path, options):
        session.console.print(f"kept {config_path} as it is: lowvram did not write it (the run's options are in "
                              "the LoRA's metadata)", soft_wrap=True)
    elif session.main and not is_utf8(options):  # (a TOML file is UTF-8)
        session.console.print(f"[yellow]note:[/] a path of this run is no UTF-8 text, so {config_path} names it "
                              "garbled: rename it (unzip -O cp932, convmv) to continue the run with --config",
                              soft_wrap=True)
    return config_path


def run_training(session: Session, dataset: Dataset | None) -> TrainResult:
    """Data (`dataset`, where it was scanned already), model, adapters, the steps with their save points, the LoRA
    and samples: the run, top to bottom."""
    config, console, out_dir, name = session.config, session.console, session.out_dir, session.config.output_name
    dataset = dataset or scan_data(session)
    fresh = not config.training.resume  # (a resumed run's stays until its resume is not refused: "nothing left")
    config_path = write_options(session) if fresh else options_path(out_dir, name)  # before the caching a
    # disconnect may stop, after a dataset refused
    model, noise_scheduler = load_frozen_model(session)
    peaks = PhasePeaks(session.device)  # each phase's peak VRAM, to print and to log beside the metrics
    prepared, attention = fill_caches_and_place(session, model, dataset, peaks)
    found = checkpoint_to_resume(session)
    schedule = plan_schedule(config, prepared.data, session.world, found and checkpoint.data_position(found))
    trainee = attach_adapters(session, model, noise_scheduler, schedule)
    describe(session, trainee, dataset, prepared, attention, schedule)
    position = resume(session, trainee, dataset, schedule, found)
    if not fresh:
        write_options(session)
    stopping = EarlyStopping.restore(config.validation.early_stopping, config.validation.early_stopping_delta,
                                     position.validation, held_out_id(dataset.held_out, prepared.validation))
    if stopping.restarted:
        console.print(f"[yellow]note:[/] the validation images or their captions changed since the checkpoint: "
                      f"early stopping's record starts over (its losses scored the others), and the next "
                      f"validation writes {best_save(name)}{LORA_SUFFIX} anew", soft_wrap=True)
    last_step = schedule.total_steps
    if stopping.stop and position.step < last_step:  # an early-stopped run, resumed: its stop stands
        last_step = position.step
        console.print(f"nothing left to train: the run stopped early at step {position.step}, "
                      f"{stopping.no_improvement()} (raise --early-stopping to train further); writing the LoRA "
                      f"of step {position.step} from the checkpoint", soft_wrap=True)

    # kohya's figures: its dataloader's batches (one process's share) and the epochs the steps reach into
    shape = TrainingShape(datetime.now(timezone.utc), -(-prepared.data.batches_per_epoch // session.world),
                          schedule.epochs_at(schedule.total_steps), schedule.total_steps, session.world)
    batches = prepared.data.batches(position.epoch, position.batch)
    following = draw(session, batches, schedule.batches_per_step)
    step, splits, bad_steps = position.step, 1, 0  # splits: batches run in this many parts after an out-of-memory
    resumed_at = position.step
    for module in trainee.trained_modules:  # adapter dropout and transformers' gradient checkpointing read .training
        module.train()
    spill = session.run.hardware.can_spill_vram  # slow steps then may mean VRAM spilled into system RAM
    # a resume inside an epoch (whose batch count may differ from another's): that epoch's mean goes on
    mid_epoch = 0 < position.batch < len(prepared.data.epoch_batches(position.epoch))
    # the log first: W&B's login prompt, on a terminal not logged in, comes before the progress bar is drawn;
    # it stays open for the final samples
    with RunLog(out_dir, position.step, config, session.main, position.epoch if mid_epoch else None) as log:
        session.logging = True
        with (TrainingProgress(console, schedule.total_steps, position.step, watch_spill=spill,
                               epochs=shape.epochs) as progress,
              StopOnSignal() as signals, peaks.phase("training")):
            if position.smoothed_loss is not None and math.isfinite(position.smoothed_loss):  # (an older run saved nan)
                progress.loss = position.smoothed_loss
            if grid_due_at_start(session, schedule, position.step):
                sample_grid(session, trainee, prepared, log, position.step)
            checkpointed_at, minutes = time.monotonic(), config.training.checkpoint_minutes
            for step in range(position.step + 1, last_step + 1):
                step_start = time.perf_counter()
                if not schedule.trains_text_at(step) and not trainee.text_frozen:
                    freeze_text_encoders(session, trainee, step)
                epoch, number, ends_epoch, mine = following
                step_loss, splits = forward_backward(session, trainee, mine, splits, step)
                if step < schedule.total_steps:  # read from the cache while the GPU works through the backward pass
                    following = draw(session, batches, schedule.batches_per_step)
                rates = learning_rates(trainee)  # the rates this step's update uses (the plain ones)
                # one collective and one read-back per step: the mean loss, whether any process was asked to stop,
                # and the gradient norm
                outcome = update(session, trainee, step_loss, signals.received is not None, step,
                                 bool(minutes) and time.monotonic() - checkpointed_at >= minutes * 60)
                rates = learning_rates(trainee, rates)  # as the step used them (schedule-free's, Prodigy's d)

                seconds = time.perf_counter() - step_start
                smoothed = progress.update(step, outcome.loss, rates.get("lr_effective", rates["lr"]), seconds, epoch)
                log.step(step, {"epoch": epoch, "loss": outcome.loss, "loss_smoothed": smoothed, **rates,
                                "grad_norm": outcome.grad_norm, "seconds": seconds,
                                "total_steps": schedule.total_steps}, ends_epoch)
                bad_steps = count_bad_steps(session, outcome.verdict, bad_steps, step)  # (logged: it may stop)
                stop_asked = outcome.stop_asked
                if prepared.validation and (schedule.validates_at(step) or step == schedule.total_steps):
                    validate_and_keep_best(session, trainee, dataset, prepared, stopping, log, step, epoch, shape)
                    # a Ctrl-C while validating (which takes a while) stops here, not a step later; every process
                    # validated, so all of them agree on it
                    stop_asked = sum_over_processes(session.accelerator, float(signals.received is not None))[0] > 0
                position = checkpoint.Position(step, epoch, number + 1, stopping.state(), smoothed)
                busy, kept = at_save_points(session, trainee, dataset, prepared, schedule, position, stopping.stop,
                                            log, shape, timed_checkpoint=outcome.checkpoint_due)
                if busy and not stop_asked:
                    # a Ctrl-C while saving or drawing samples stops here too, not a step later
                    stop_asked = sum_over_processes(session.accelerator, float(signals.received is not None))[0] > 0
                every = schedule.checkpoint_every  # (either checkpoint starts the minutes anew)
                if outcome.checkpoint_due or every and is_save_point(every, step, schedule):
                    checkpointed_at = time.monotonic()
                if stopping.stop:
                    console.print(f"[yellow]early stopping at step {step}:[/] {stopping.no_improvement()}; "
                                  f"the best ({stopping.best:.5f}, step "
                                  f"{stopping.best_step}) is {best_save(name)}{LORA_SUFFIX}", soft_wrap=True)
                    break
                if stop_asked and step < schedule.total_steps:
                    raise save_interrupted(session, trainee, dataset, schedule, position, shape, kept)

        for module in trainee.trained_modules:
            module.eval()
        lora_path = out_dir / final_lora(name)
        asked = signals.received is not None  # in the last step
        # a Ctrl-C as the last step ends (when it is most likely) lets the LoRA and its checkpoint be written
        with peaks.phase("saving"), StopOnSignal("writing the LoRA first, then stopping") as signals:
            saved = save_final(session, trainee, dataset, lora_path, step, schedule,
                               position if step > resumed_at else None, shape)
            copied = (publish.copy_final(config, lora_path, session.console, session.opened_at) if session.main
                      else None)
        if (asked or signals.received is not None) and session.main:
            raise stopped_after_the_last_step(lora_path, draw_again(session, lora_path))
        samples = finish(session, trainee, prepared, peaks, lora_path, step, shape.started, resumed_at, log, saved,
                         copied, grid_of_final_samples(session, schedule, step) if step > resumed_at else None)
    session.accelerator.wait_for_everyone()
    for _, module in networks.adapted_modules(model):  # the model handed back may run outside autocast
        networks.cast_inputs(module, cast=True)
    final_loss = progress.loss if progress.loss is not None else float("nan")  # a loss of 0.0 is a loss
    return TrainResult(lora_path, config_path, samples, step, schedule.epochs_at(step), final_loss, model,
                       prepared.data, (prepared.encoded_latents, prepared.encoded_texts), dataset.reports,
                       stopping if prepared.validation else None)


def _put_grid_together(session: Session, samples: list[Path], grid: Path, step: int, log: RunLog) -> bool:
    """The last step's sample grid from the final samples, which are its images (`saving.grid_of_final_samples`),
    and in the run's log; whether it was written (a full disk here leaves the samples as they are)."""
    from PIL import Image

    try:
        images = [Image.open(path) for path in samples]
        try:
            save_grid(images, grid)
        finally:
            for image in images:
                image.close()
        log.image(step, "samples", grid)
    except (OSError, DiskFull) as exc:
        session.console.print(f"[yellow]warning: the sample grid of step {step} is not written[/] "
                              f"({escape(str(exc))})", soft_wrap=True)
        return False
    return True


def draw(session: Session, batches, count: int) -> tuple[int, int, bool, list]:
    """The next step's batches: every process draws the same `count`, or fewer where an epoch ends (as kohya's
    gradient accumulation ends with the epoch: --epochs N is N passes over the images, and an epoch's save point
    is its end), and keeps its share. Returns the epoch and number of the last one drawn (where a checkpoint
    continues), whether it ends its epoch, and this process's batches, pinned on CUDA so that their copies to the
    GPU do not wait for it."""
    drawn = []
    while len(drawn) < count and not (drawn and drawn[-1][3]):
        drawn.append(next(batches))
    # every process runs as many batches (their gradients are averaged together): an epoch's short last step
    # repeats its first batches where they do not share out evenly, as accelerate's even_batches does
    dealt = drawn + [drawn[i % len(drawn)] for i in range(-len(drawn) % session.world)]
    mine = [batch for _, _, batch, _ in dealt[session.rank::session.world]]
    if session.device.type == "cuda":
        mine = [batch.pinned() for batch in mine]
    return drawn[-1][0], drawn[-1][1], drawn[-1][3], mine


def stopped_after_the_last_step(lora_path: Path, again: str | None) -> TrainingInterrupted:
    """Said where a Ctrl-C stops a run whose LoRA is written: `again`, the command that draws its samples, where it
    had samples left to draw."""
    left = f", its samples are not all drawn ({again})" if again else ""
    return TrainingInterrupted(f"interrupted after the last step: {lora_path} is saved{left}",
                               {"lora": str(lora_path)} | ({"samples": again} if again else {}))


def draw_again(session: Session, lora_path: Path) -> str | None:
    """The generate command that draws the run's first sample as the run draws it (its model, VAE, base weights,
    size, steps, seed and sampler: a bare --lora lacked the required --prompt, and drew on the random tiny model);
    None for a run of no samples."""
    config, lines = session.config, session.config.prompt_lines
    if not lines:
        return None
    side, sampler = str(session.run.resolution), config.output.sample_sampler
    model = config.model  # (its own family, VAE and base weights: the LoRA's prediction type generate reads from it)
    line = shell_line("lowvram", "generate", "--model", model.model, *(["--model-family", model.model_family]
                      if model.model_family else []), *(["--vae", model.vae] if model.vae else []),
                      *[word for base in model.base_weights for word in ("--lora", base)],
                      "--lora", lora_path, "--prompt", lines[0], "--width", side,
                      "--height", side, "--steps", str(config.output.sample_steps), "--seed",
                      str(config.training.seed), *(["--sampler", sampler] if sampler else []),
                      *(["--clip-skip", str(config.data.clip_skip)] if (config.data.clip_skip or 1) > 1 else []))
    return line + (f" draws the first of its {len(lines)} sample prompts" if len(lines) > 1 else " draws it")


def write_diffusers_copy(session: Session, trainee: Trainee, lora_path: Path) -> bool:
    """The diffusers-format copy (--format diffusers), if asked for; whether it was written. A disk without room
    for it is a warning: the LoRA is whole, and diffusers reads it too."""
    config = session.config
    if config.output.format != "diffusers":
        return False
    try:
        with trainee.averaged_weights():
            lora_files.save_diffusers(trainee.model, session.out_dir / diffusers_copy(config.output_name),
                                      config.output.save_precision)
    except DiskFull as exc:
        session.console.print(f"[yellow]warning: {exc.reason}[/]; {lora_path} is saved, which diffusers' "
                              f"load_lora_weights reads as well ({exc.remedy} for the copy)", soft_wrap=True)
        return False
    return True


def finish(session: Session, trainee: Trainee, prepared: PreparedData, peaks: PhasePeaks, lora_path: Path,
           step: int, started: datetime, resumed_at: int, log: RunLog, saved: FinalSave,
           copied: Path | None = None, grid: Path | None = None) -> list[Path]:
    """After the last step, in the main process: the diffusers-format copy, the sample images (in the `log` too,
    and side by side at `grid`, the last step's sample grid), the phase peaks, and how long this process's steps
    (those after `resumed_at`) took, from `started`, and where their figures are."""
    if not session.main:
        return []
    config, model, name = session.config, trainee.model, session.config.output_name
    written, copy_written = saved.written, False
    # the steps' time (with the LoRA's save), not the samples drawn after them: at 20 steps each on a slow card
    # they took longer than a short run's steps
    took = clock((datetime.now(timezone.utc) - started).total_seconds())
    try:
        copy_written = write_diffusers_copy(session, trainee, lora_path)
        with trainee.averaged_weights():
            # each sample names what made it, as AUTOMATIC1111's images do (not where the LoRA keeps no metadata)
            named = copied or lora_path  # (the copy in a LoRA list is the name AUTOMATIC1111 knows it by)
            shown = (named, addnet_hash(lora_path)[:12]) if lora_path.is_file() and not \
                config.output.no_metadata else None
            with peaks.phase("sampling"):  # (each said: minutes on a slow card, where a log's last line was the
                # last step's; one kept from an earlier run's end is not drawn, and not said)
                samples = render_samples(model, config.samples, session.out_dir / SAMPLES, name,
                                         session.run.resolution, config.output.sample_steps, config.training.seed,
                                         session.accelerator, prepared.sample_embeddings, shown,
                                         config.model.model or "", lambda place, count: session.console.print(
                                             f"drawing sample {place} of {count}", highlight=False))
    except KeyboardInterrupt:  # the run itself is done and saved: say so, not just "interrupted"
        raise stopped_after_the_last_step(lora_path, draw_again(session, lora_path)) from None
    except torch.OutOfMemoryError:  # beside the training state; generate has the GPU to itself
        free_cached_memory(session.device)
        session.console.print(f"[yellow]warning: out of memory drawing the samples after the last step[/]; "
                              f"{lora_path} is saved, and {draw_again(session, lora_path)}", soft_wrap=True)
        samples = []
    except DiskFull as exc:  # (the LoRA the run trained for is whole: not a run to continue)
        session.console.print(f"[yellow]warning: {exc.reason}[/]; {lora_path} is saved: {exc.remedy}, then "
                              f"{draw_again(session, lora_path)}", soft_wrap=True)
        samples = []
    grid = grid if grid and samples and _put_grid_together(session, samples, grid, step, log) else None
    with contextlib.suppress(OSError, DiskFull):  # (a thumbnail: the LoRA and its samples are what matter)
        publish.add_preview(copied or (publish.card_in_place(config, lora_path) if session.main else None), samples)
    diffusers_folder = session.out_dir / diffusers_copy(name)  # (the folder diffusers' load_lora_weights takes: the
    # run's folder holds its step saves too, of which diffusers picks one)
    said = ([f"[green]saved[/] {escape(str(lora_path))}"] * written
            + [f"[green]copied[/] to {escape(str(copied))}"] * bool(copied)
            + [(f"[green]saved[/] {escape(str(diffusers_folder))} (diffusers' format: pipe.load_lora_weights on that "
               "folder)")] * (written and copy_written)
            + [f"[green]sample[/] {escape(str(p))}" + " (drawn already, of this LoRA: kept)"
               * (p.stat().st_mtime < started.timestamp()) for p in samples]  # (a finished run resumed: kept)
            + [f"[green]samples[/] of step {step} side by side: {escape(str(grid))}"] * bool(grid))
    if said:
        session.console.print("\n".join(said), soft_wrap=True)
    try:
        log.final_samples(step, samples)
    except (OSError, DiskFull) as exc:  # (the LoRA and its samples are written, which is what matters)
        session.console.print(f"[yellow]warning: the final samples are not in the run's log[/] ({exc})", soft_wrap=True)
    logs = session.out_dir / LOGS
    viewer = f"; TensorBoard: {shell_line('tensorboard', '--logdir', logs)}" if config.output.tensorboard else ""
    steps = (f"to step {step}" if not resumed_at else f"steps {resumed_at + 1} to {step}" if step > resumed_at
             else f"no further steps (the LoRA is step {step}'s, from its checkpoint)")
    took += (f" ({clock(time.monotonic() - session.opened)} in all, with loading, caching"
             + (" and the final samples)" if samples else ")"))
    session.console.print(f"trained {steps} in {took}; each step's figures are in "
                          f"{session.out_dir / METRICS}{viewer}", soft_wrap=True, highlight=False)
    if peaks.bytes:
        session.console.print(f"peak VRAM per phase (reserved, without the CUDA context): {peaks.summary()}")
        log.record({"step": step, "phase_peak_bytes": peaks.bytes})
    host = host_peak_bytes()
    if host:  # what a machine of little RAM needs to know (lowvram plan --ram estimates it beforehand)
        session.console.print(f"peak host RAM {host / 2**30:.2f} GiB (resident, this process)", highlight=False)
        log.record({"step": step, "host_peak_bytes": host})
    missing = {"copy_to": config.output.copy_to and not copied, "checkpoint": saved.checkpoint_missing,
               "diffusers": config.output.format == "diffusers" and not copy_written,
               "samples": config.prompt_lines and not samples}  # (each said as a warning above)
    log.finished(step, lora_path, copied, tuple(name for name, lost in missing.items() if lost))
    return samples
