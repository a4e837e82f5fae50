"""What a run keeps along the way: LoRA files, checkpoints, validation and sample grids, at the points the config
asks for, and on Ctrl-C. Only the main process writes; a checkpoint gathers every process's random state first."""

from __future__ import annotations

import math
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
from rich.markup import escape

from lowvram.adapters import lora_files
from lowvram.config import fields_by_name, flag_name
from lowvram.data.augment import DROPPED_VARIANTS_DRAWN, VARIANTS_DRAWN
from lowvram.errors import Refused, TrainingInterrupted, shell_line
from lowvram.files import DiskFull
from lowvram.lora_header import read_header
from lowvram.memory import free_cached_memory
from lowvram.optim import optimizer_kwargs, spec_of
from lowvram.precision import DTYPES
from lowvram.run_files import LORA_SUFFIX, SAMPLES, best_save, epoch_save, final_lora, interval_count, step_save
from lowvram.train import checkpoint, checkpoint_folders, outdir
from lowvram.train.identity import recipe
from lowvram.train.metadata import TrainingShape, lora_metadata
from lowvram.train.runlog import RunLog
from lowvram.train.sampling import render_grid
from lowvram.train.schedule import Schedule
from lowvram.train.setup import Dataset, Session, Trainee
from lowvram.train.step import sum_over_processes
from lowvram.train.validation import EarlyStopping, fixed_timesteps, validation_loss

VARIANTS = "caption variants"  # (a checkpoint's settings: how its cached caption variants were drawn)
EPOCH_SAMPLES = "samples per epoch"  # (and the images' repeats, a dataset file's num_repeats, that make it)
RESUMABLE_SECTIONS = ("model", "data", "network", "optim", "training")
# the run's length, its saving and its caches' places, which a resume changes freely; the class images' weight is
# said only where there are class images
NOT_RESUMABLE = ("max_steps", "epochs", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints", "resume",
                 "cache_dir", "cache_batch_size", "network_weights", "prior_loss_weight", "text_encoder_lr",
                 "text_encoder_2_lr")


def save_lora(session: Session, trainee: Trainee, dataset: Dataset, path: Path, step: int, epoch: int,
              shape: TrainingShape) -> Path:
    """The LoRA as it stands (schedule-free's or --ema's averaged weights), written by the main process."""
    if session.main:
        with trainee.averaged_weights():
            lora_files.save_kohya(trainee.model, path, session.config.alpha, session.config.output.save_precision,
                                  lora_metadata(session.run, trainee.model, dataset.training, step, epoch,
                                                dataset.trigger, shape, dataset.regularization,
                                                dataset.trigger_from_folder))
    return path


def written_already(session: Session, trainee: Trainee, dataset: Dataset, path: Path, step: int, epoch: int,
                    shape: TrainingShape) -> bool:
    """Whether `path` holds the LoRA save_lora would write now, its tensors and what its metadata says alike."""
    metadata = lora_metadata(session.run, trainee.model, dataset.training, step, epoch, dataset.trigger, shape,
                             dataset.regularization, dataset.trigger_from_folder)
    with trainee.averaged_weights():
        tensors = lora_files.kohya_state_dict(trainee.model, DTYPES[session.config.output.save_precision])
    return outdir.written_already(path, metadata, tensors)


def save_checkpoint(session: Session, trainee: Trainee, dataset: Dataset, position: checkpoint.Position
                    ) -> Path | None:
    """Every process takes part (its random state is gathered); the main process writes."""
    rng_states = checkpoint.gather_rng_states(session.accelerator)
    if not session.main:
        return None
    return checkpoint.save(checkpoint_folders.checkpoint_root(session.out_dir), position, trainee.adapted,
                           trainee.optimizer, trainee.lr_scheduler, session.accelerator,
                           session.config.training.keep_checkpoints, rng_states, recipe(session.run), trainee.ema, dataset.fingerprint,
                           resumable_settings(session, dataset))


def resumable_settings(session: Session, dataset: Dataset) -> dict[str, object]:
    """The options a resumed run may change that its LoRA's record then holds for the whole run, by flag: those
    of what the steps train on and how (the data's, the network's, the optimizer's and the loss's, less what makes
    the run: `identity.recipe`), the text encoders' rates where they train, the class images' loss weight where
    there are class images, and the samples an epoch draws (a dataset file's repeats)."""
    config = session.config
    made_by = recipe(session.run)
    options = {flag_name(f): _stored(getattr(getattr(config, section), name))
               for name, (section, f, _) in fields_by_name().items()
               if section in RESUMABLE_SECTIONS and name not in NOT_RESUMABLE and flag_name(f) not in made_by}
    options[EPOCH_SAMPLES] = sum(record.repeats for record in dataset.training)
    rates = options | {"--lr": config.lr}
    if config.network.train_text_encoder:
        rates |= {flag: config.text_encoder_rate(index) for index, flag in
                  enumerate(("--text-encoder-lr", "--text-encoder-2-lr")[:len(session.run.family.text_encoders)])}
    if dataset.regularization:  # (the scan's: no dataset file read again at each checkpoint)
        rates["--prior-loss-weight"] = config.data.prior_loss_weight
    return rates | {"--batch-size": config.training.batch_size,
                    "--gradient-accumulation": config.training.gradient_accumulation,
                    VARIANTS: variants_drawn(config.data.tag_dropout)}


def variants_drawn(tag_dropout: float) -> int:
    """How this lowvram draws the caption variants of a run of this --tag-dropout (`augment.VARIANTS_DRAWN`)."""
    return DROPPED_VARIANTS_DRAWN if tag_dropout else VARIANTS_DRAWN



def _stored(value: object) -> object:
    """An option's value as a checkpoint's JSON keeps it (a tuple as a list)."""
    return list(value) if isinstance(value, tuple) else value


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


# settings its restored state was made with: Prodigy's slice of each weight (its s and p0 tensors) and the d0 its
# estimate divides by; a change of them on resume keeps the checkpoint's
STATE_SHAPING = {"slice_p", "d0"}


def checkpoint_to_resume(session: Session) -> Path | None:
    """The checkpoint --resume names, as it is found (a newer one unreadable is said); None for a fresh run."""
    if not session.config.training.resume:
        return None
    found, unreadable = checkpoint_folders.resolve(session.config.training.resume, session.out_dir, recipe(session.run))
    for line in unreadable:
        session.console.print(f"[yellow]warning: {line}: resuming from an earlier one[/]", soft_wrap=True)
    return found


def resume(session: Session, trainee: Trainee, dataset: Dataset, schedule: Schedule,
           found: Path | None) -> checkpoint.Position:
    """Where the run continues: the start, or the checkpoint `found` (adapters, optimizer, schedule, RNG, the data
    position and early stopping's record); a dataset changed since is said, not refused (a caption fixed mid-run is
    worth training on)."""
    if found is None:
        return checkpoint.Position(0, 0, 0)
    optim = session.config.optim
    settings = {*dict(spec_of(optim.optimizer).args), *optimizer_kwargs(optim.optimizer, optim.optimizer_args),
                "weight_decay"} - STATE_SHAPING  # (not what an optimizer keeps in its groups as it goes: Prodigy's d)
    position = checkpoint.load(found, trainee.adapted, trainee.optimizer, trainee.lr_scheduler, session.accelerator,
                               trainee.ema, settings)
    session.console.print(f"resumed from {found} at step {position.step}", soft_wrap=True)
    then, now = dict(position.settings or {}), resumable_settings(session, dataset)
    if position.settings is None and position.step:  # (a preset's defaults changed since applied mid-run, unsaid)
        session.console.print(f"[yellow]note:[/] this checkpoint (an earlier lowvram's, before 2026-12-04) keeps no "
                              f"record of the options it trained with: the steps from {position.step + 1} train with "
                              "these, a --preset's as they are today; where one differs from the run's, give it",
                              soft_wrap=True)
    drawn = then.pop(VARIANTS, None)
    now.pop(VARIANTS)
    # (drawn otherwise than today for the checkpoint's own options: a --tag-dropout changed since is said as that)
    if drawn != variants_drawn(then.get("--tag-dropout", 0.0) or 0.0) and (session.config.data.shuffle_tags
                                                                          or session.config.data.tag_dropout):
        session.console.print(f"[yellow]note:[/] this checkpoint's run drew its caption variants (--shuffle-tags, "
                              "--tag-dropout) as an earlier lowvram did (before 2026-12-05; under --tag-dropout, "
                              "2026-12-06), or keeps no record of how: where they were drawn otherwise, the steps "
                              f"from {position.step + 1} train on "
                              "today's, and the LoRA will not be the one an uninterrupted run of either gives",
                              soft_wrap=True)
    changed = checkpoint.data_changes(position.data, dataset.fingerprint)
    if changed:  # (images added or removed change the samples an epoch draws: said as that)
        then.pop(EPOCH_SAMPLES, None)
    changes = [f"{flag} {_shown(now[flag])} (was {_shown(then[flag])})" for flag in now
               if flag in then and then[flag] != now[flag]]
    old_batch, batch = then.get("--batch-size"), now["--batch-size"]
    if position.batch and isinstance(old_batch, int) and old_batch != batch:  # (the epoch's place is a batch count)
        session.console.print(
            f"[yellow]note:[/] epoch {position.epoch + 1} goes on after its first {position.batch} batches, drawn "
            f"anew at {batch} images each: {position.batch * batch} of its images are passed over, not the "
            f"{position.batch * old_batch} that trained, some of which train again this epoch (the next epochs "
            "are whole)", soft_wrap=True)
    if changed:  # images added or removed change the order the rest come in; a caption or an image edited does not
        order = ", in another order than the interrupted run's" * checkpoint.reordered(position.data, dataset.fingerprint)
        session.console.print(f"[yellow]warning: the dataset changed since this checkpoint ({changed})[/]: training "
                              f"goes on with it as it is now{order}, so the LoRA will not be the one an uninterrupted "
                              "run gives", soft_wrap=True)
    lora = session.out_dir / final_lora(session.config.output_name)
    if position.step >= schedule.total_steps and (changes or position.step > schedule.total_steps) and \
            _lora_step(lora) == position.step:
        # (written anew, its record and the run's .toml would name options no step of it trained with)
        what = (", ".join(changes) if changes else
                f"the run's end at step {schedule.total_steps}, before the checkpoint's {position.step},")
        raise Refused(f"--resume: nothing left to train, and {what} would change no step of it: {lora} stands "
                           f"as step {position.step}'s LoRA; raise --max-steps (or --epochs) past {position.step} to "
                           "train further")
    # allowed (raising the steps or the lr of a finished run is how it is trained on), and said: after the refusal
    # above (a change was said to train the steps from here, then refused)
    if changes:
        many = len(changes) > 1
        session.console.print(f"[yellow]note:[/] {', '.join(changes)}: the steps from {position.step + 1} train "
                              f"with {'them' if many else 'it'}; the LoRA's metadata and the run's .toml record the "
                              f"new value{'s' * many} for the whole run", soft_wrap=True)
    ended = _lora_step(lora) or 0
    if session.config.training.resume == "auto" and ended > position.step:  # the run's end, its checkpoint lost
        # the same end (an early stop's too): trained again, its LoRA was kept twice, on the disk that had filled
        if not (changes or changed) and schedule.total_steps == _lora_step(lora, "ss_max_train_steps"):
            early = ended < schedule.total_steps  # (an early stop's: --early-stopping is no resumable setting)
            raise Refused(
                f"--resume auto: {lora} is the run's end{' (stopped early)' * early}, step {ended}, written after its "
                f"newest checkpoint, step {position.step} (the end's was lost: a full disk, or a kill while saving "
                f"it); nothing is left to train: to train it on, {outdir.train_on_from(lora)}"
                + ("" if early else f", or raise --max-steps (or --epochs) past its end (steps {position.step + 1} to "
                   f"{ended} train again; this LoRA moves to archive/)")
                + f"; to train those steps again{' (past the stop: a higher --early-stopping)' * early}, --resume "
                f"{shell_line(found)}")
        if session.main:  # a branch left after all: set aside before a step, so that a kill leaves no LoRA
            note = outdir.set_aside_later(  # passing for this run's
                checkpoint_folders.complete(checkpoint_folders.checkpoint_root(session.out_dir)), "auto",
                session.out_dir, session.config.output_name, recipe(session.run), end_decided=True)
            if note:
                session.console.print(note, soft_wrap=True)
    rate = trainee.optimizer.param_groups[0]["lr"]
    if (position.last_rate is not None and position.step < schedule.total_steps and "--lr" not in " ".join(changes)
            and abs(rate - position.last_rate) > 0.05 * max(rate, position.last_rate)):  # a decay over more steps
        session.console.print(f"[yellow]note:[/] --scheduler {session.config.optim.scheduler} is laid over the run's "
                              f"{schedule.total_steps} steps: the learning rate goes from {position.last_rate:.2e} "
                              f"at step {position.step} to {rate:.2e} (the schedule of the steps it was trained for "
                              "had come further)", soft_wrap=True)
    if position.step >= schedule.total_steps:
        past = f", before the checkpoint's {position.step}" if position.step > schedule.total_steps else ""
        session.console.print(f"nothing left to train: the run ends at step {schedule.total_steps}{past} (raise "
                              f"--max-steps or --epochs to train further); writing the LoRA of step {position.step} "
                              "from the checkpoint", soft_wrap=True)
    return position


def _lora_step(lora: Path, key: str = "ss_steps") -> int | None:
    """The step a LoRA file was written at, by its metadata (None: no such file, or no step in it); or the run's
    end then (`ss_max_train_steps`)."""
    try:
        return int(read_header(lora)[0].get(key, ""))
    except (OSError, ValueError):
        return None


def validate(session: Session, trainee: Trainee, data, samples: list) -> float:
    """The held-out loss, each process scoring its share of the images."""
    config, model, world = session.config, trainee.model, session.world
    with evaluating(trainee):
        total, count = validation_loss(
            model.unet, trainee.noise_scheduler, model.family, data, samples[session.rank::world],
            fixed_timesteps(config.validation.validation_timesteps, config.training.min_timestep or 0,
                            config.training.max_timestep or trainee.noise_scheduler.config.num_train_timesteps),
            config.training.seed, session.device, session.weight_dtype,
            session.accelerator.autocast, model.text_encoders if trainee.train_text else None, model.tokenizers,
            model.text_reading)
    total, count = sum_over_processes(session.accelerator, total, count)
    return total / count


def validate_and_keep_best(session: Session, trainee: Trainee, dataset: Dataset, prepared, stopping: EarlyStopping,
                           log: RunLog, step: int, epoch: int, shape: TrainingShape) -> None:
    loss = validate(session, trainee, prepared.data, prepared.validation)
    previous_best = stopping.best
    best = stopping.update(step, loss)
    log.validation(step, loss, best)
    # the gain shown to two digits: one too small to see in five decimals still names what made it a best
    gain = f", {previous_best - loss:.2g} lower" if best and math.isfinite(previous_best) else ""
    session.console.print(f"step {step}: validation loss {loss:.5f}" + (f" (best{gain})" if best else
                          f", best {stopping.best:.5f} at step {stopping.best_step}"))
    if best:
        save_lora(session, trainee, dataset, session.out_dir / (best_save(session.config.output_name) + LORA_SUFFIX),
                  step, epoch, shape)


def at_save_points(session: Session, trainee: Trainee, dataset: Dataset, prepared, schedule: Schedule,
                   position: checkpoint.Position, stop: bool, log: RunLog, shape: TrainingShape,
                   timed_checkpoint: bool = False) -> tuple[bool, dict[str, Path]]:
    """The LoRA every --save-every, a checkpoint every --checkpoint-every and where `timed_checkpoint` (the
    --checkpoint-minutes passed) says (the last one, at the end or where early
    stopping ends the run, follows the LoRA: a disk with room for only one keeps the LoRA), then a sample grid
    every --sample-every: drawing one may run out of memory, which must find the step's work kept. Whether the step
    was one of them (the same in every process), which takes a while a Ctrl-C may come in, and the LoRA and
    checkpoint it wrote ({"lora", "checkpoint"}), which a stop there need not write again."""
    config, step, epoch = session.config, position.step, position.epoch
    name, out_dir = config.output_name, session.out_dir
    save_every, sample_every = schedule.save_every, schedule.sample_every
    written = []  # said in one line, as kohya says each save: a notebook's log shows what is safe on the disk
    kept: dict[str, Path] = {}
    if save_every and step < schedule.total_steps and is_save_point(save_every, step, schedule):
        # kohya's ss_epoch: the epoch under way (from 0) in a step's save, the epochs done in an epoch's
        done = schedule.epochs_done_at(step)
        saved, saved_epoch = save_point_name(schedule, name, step), epoch if save_every[1] == "steps" else done
        lora = save_lora(session, trainee, dataset, out_dir / (saved + LORA_SUFFIX), step, saved_epoch, shape)
        kept["lora"] = lora
        written.append(f"saved {lora}")
        if config.output.keep_saves and session.main:
            removed = []
            for old in older_saves(out_dir, name, save_every, config.output.keep_saves):
                old.unlink(missing_ok=True)
                removed.append(old.name)
                for sample in outdir.samples_of(old):  # an earlier final LoRA kept as this save: its samples
                    sample.unlink(missing_ok=True)
            if removed:  # (a LoRA gone from ComfyUI's list without a word looked lost)
                written.append(f"removed {', '.join(removed)} (--keep-saves {config.output.keep_saves})")
    every = schedule.checkpoint_every
    if (every and is_save_point(every, step, schedule) or timed_checkpoint) and step < schedule.total_steps \
            and not stop:
        kept["checkpoint"] = save_checkpoint(session, trainee, dataset, position)
        written.append(f"checkpoint {kept['checkpoint']}")
    if written:
        session.console.print(f"step {step}: {'; '.join(written)}", soft_wrap=True, highlight=False)
    sampled = bool(sample_every and is_save_point(sample_every, step, schedule))
    if sampled and not grid_of_final_samples(session, schedule, step):
        sample_grid(session, trainee, prepared, log, step)
    return bool(written) or sampled, kept


def grid_of_final_samples(session: Session, schedule: Schedule, step: int) -> Path | None:
    """The last step's sample grid, where its images are the final samples drawn after the LoRA is saved (the same
    weights, under EMA the same average, prompts and seeds), so put together from them rather than drawn twice."""
    every = schedule.sample_every
    if step == schedule.total_steps and every and is_save_point(every, step, schedule) and session.config.samples:
        return grid_path(session, step)
    return None


class FinalSave(NamedTuple):
    written: bool  # the LoRA file (not: the file there holds it already)
    checkpoint_missing: bool = False  # the end's checkpoint could not be written (a full disk): none to train on from


def save_final(session: Session, trainee: Trainee, dataset: Dataset, lora_path: Path, step: int, schedule: Schedule,
               position: checkpoint.Position | None, shape: TrainingShape) -> FinalSave:
    """The LoRA, then the end's checkpoint at `position` to train on from (None: this run took no step). A disk
    with room for one keeps the LoRA; one whose LoRA write fails (a file-size limit, a disk filled meanwhile) still
    gets the checkpoint where it fits, from which --resume writes the LoRA without another step."""
    epochs = schedule.epochs_at(step)
    if session.main and session.config.training.resume:
        if position is None and written_already(session, trainee, dataset, lora_path, step, epochs, shape):
            session.console.print(f"{lora_path} holds step {step}'s LoRA of these options already: not written "
                                  "again (its file hash, which model sites key on, stays)", soft_wrap=True)
            return FinalSave(written=False)  # (and no checkpoint: this run took no step)
        kept = outdir.keep_earlier_final_lora(lora_path, step, trained=position is not None,
                                              save_name=partial(save_point_name, schedule))
        if kept:
            session.console.print(kept, soft_wrap=True)
    try:
        save_lora(session, trainee, dataset, lora_path, step, epochs, shape)
    except DiskFull:
        if position is not None:
            with suppress(DiskFull):
                save_checkpoint(session, trainee, dataset, position)
        raise
    if position is not None:
        try:
            save_checkpoint(session, trainee, dataset, position)
        except DiskFull as exc:  # the LoRA trained for is whole: the run did its work (a script waiting for exit 0,
            # and metrics.jsonl's end, took a finished LoRA for a failed run); its checkpoint is to train on from
            session.console.print(f"[yellow]warning: {escape(exc.reason)}[/]: {escape(str(lora_path))}, the run's end, "
                                  f"is whole, but has no checkpoint to --resume from; to train it on, {exc.remedy}, "
                                  f"then {escape(outdir.train_on_from(lora_path))}", soft_wrap=True)
            return FinalSave(written=True, checkpoint_missing=True)
    return FinalSave(written=True)


def grid_due_at_start(session: Session, schedule: Schedule, step: int) -> bool:
    """Whether the run draws a grid before its first step: the base model's (--sample-at-first), or a resumed
    step's that a kill between its checkpoint and its grid left undrawn."""
    if step == 0:
        return session.config.output.sample_at_first
    every = schedule.sample_every
    return bool(every) and is_save_point(every, step, schedule) and not grid_path(session, step).exists()


def grid_path(session: Session, step: int) -> Path:
    """The sample grid of `step`: samples/<name>-stepNNNNNN.png."""
    return session.out_dir / SAMPLES / f"{step_save(session.config.output_name, step)}.png"


def sample_grid(session: Session, trainee: Trainee, prepared, log: RunLog, step: int) -> None:
    """The sample prompts as the LoRA stands at `step` (0: the base model alone), one grid image, rendered by the
    main process, and said."""
    if not session.main:
        return
    config = session.config
    path = grid_path(session, step)
    try:
        with evaluating(trainee):
            grid = render_grid(trainee.model, config.samples, path,
                               session.run.resolution, config.output.sample_steps, config.training.seed,
                               session.accelerator, prepared.sample_embeddings)
    except torch.OutOfMemoryError:  # the VAE's decode beside the training state: the run matters more
        free_cached_memory(session.device)
        session.console.print(f"[yellow]warning: step {step}: out of memory drawing the sample grid; skipped, "
                              "training goes on[/] (a smaller sample size, e.g. --w 512 --h 512 in the prompt, may "
                              "fit)",
                              soft_wrap=True)
        return
    log.image(step, "samples", grid)
    session.console.print(f"step {step}: samples {path}", soft_wrap=True, highlight=False)


def older_saves(out_dir: Path, name: str, every: tuple[int, str], keep: int) -> list[Path]:
    """This run's --save-every LoRAs of one kind (<name>-step00000500 or <name>-000002) beyond the newest `keep`; other
    files, the -best and the final LoRA among them, are never matched, nor a LoRA of a step between save points (an
    interrupted run's, named as a step's save is)."""
    count, unit = every
    saves = sorted((number, path) for path in out_dir.iterdir()
                   if (number := interval_count(name, path.name, unit)) is not None
                   and (unit != "steps" or number % count == 0) and outdir.is_save_of(name, path))
    return [path for _, path in saves[:-keep]]


def save_interrupted(session: Session, trainee: Trainee, dataset: Dataset, schedule: Schedule,
                     position: checkpoint.Position, shape: TrainingShape,
                     kept: dict[str, Path] | None = None) -> TrainingInterrupted:
    """Ctrl-C or SIGTERM: a usable LoRA of the steps so far and a checkpoint, the LoRA first (as at the end: a disk
    with room for one of them keeps the smaller, which is a LoRA to use), but for those the step's save point `kept`
    already; the error says how to continue."""
    step, out_dir, name, kept = position.step, session.out_dir, session.config.output_name, kept or {}
    usable = kept.get("lora") or save_lora(session, trainee, dataset, out_dir / (step_save(name, step) + LORA_SUFFIX),
                                           step, position.epoch, shape)
    saved = kept.get("checkpoint") or save_checkpoint(session, trainee, dataset, position)
    if not session.main:  # the main process says it, once
        return TrainingInterrupted("")
    then = outdir.continue_line(out_dir, name, session.world)
    return TrainingInterrupted(f"interrupted at step {step} of {schedule.total_steps}: saved {usable} and the "
                               f"checkpoint {saved}; continue with: {then}",
                               {"lora": str(usable), "checkpoint": str(saved), "continue": then})


@contextmanager
def evaluating(trainee: Trainee):
    """Sampling and validation see the LoRA as it will be saved: no adapter dropout, schedule-free's or --ema's
    averaged weights; training resumes where it was afterwards."""
    modules = [trainee.model.unet, *trainee.model.text_encoders]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with trainee.averaged_weights():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def save_point_name(schedule: Schedule, name: str, step: int) -> str:
    """The name of run `name`'s LoRA at `step`, as --save-every names it: an epoch's (<name>-000003) where the run
    saves by epochs and the step ends one it saves at, else the step's."""
    every, done = schedule.save_every, schedule.epochs_done_at(step)
    return epoch_save(name, done) if every and every[1] == "epochs" and done and done % every[0] == 0 else \
        step_save(name, step)


def is_save_point(every: tuple[int, str], step: int, schedule: Schedule) -> bool:
    count, unit = every
    if unit == "steps":
        return step % count == 0
    done = schedule.epochs_done_at(step)
    return done is not None and done % count == 0
