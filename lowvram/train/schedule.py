"""How long a run is, in steps and epochs, and which steps save, sample, validate and stop training the text
encoders: worked out from the epochs' batches alone, so `lowvram plan` says it before anything is cached."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from lowvram.config import DEFAULT_EPOCHS, RunConfig
from lowvram.data.epochs import Epochs
from lowvram.option_values import parse_save_every, parse_until
from lowvram.resolve import ResolvedRun


@dataclass(frozen=True)
class Schedule:
    batches_per_step: int  # over all processes
    steps_per_epoch: int
    total_steps: int
    save_every: tuple[int, str] | None
    sample_every: tuple[int, str] | None
    validate_every: int | None  # None: at each epoch's end
    batch_shapes: int  # input shapes the U-Net meets: training's (pixel count, batch size) pairs, samples' sizes
    text_encoder_until: int | None = None  # the last step that trains the text encoders (--text-encoder-until)
    warmup_steps: int = 0  # --warmup-steps in steps (a share under 1 of the run's)
    # the step each epoch ends at, through the one the run's last step is in: with fractional repeats an epoch's
    # batch count varies with the images its share draws (so steps_per_epoch, epoch 0's, is then approximate)
    epoch_ends: tuple[int, ...] = ()
    epochs: float = 0.0  # the run's length in epochs: the last one's share its steps reach into
    past_end: int | None = None  # a resumed run's checkpoint step past its end: `epochs` is where that stands
    checkpoint_every: tuple[int, str] | None = None  # --checkpoint-every, as save_every

    def length(self, fractional: bool) -> str:
        """"200 steps = 10 epochs of 20" (of about 20 where fractional repeats vary an epoch's batches)."""
        epochs = f"{self.epochs:.3g}"
        per_epoch = f"{epochs} epoch{'s' * (epochs != '1')} of {'about ' * fractional}{self.steps_per_epoch}"
        if self.past_end is not None:  # ("12 steps = 0.32 epochs of 50": 0.32 was the checkpoint's step 16)
            return f"{self.total_steps} steps (the checkpoint is past them: step {self.past_end} = {per_epoch})"
        return f"{self.total_steps} steps = {per_epoch}"

    def trains_text_at(self, step: int) -> bool:
        return self.text_encoder_until is None or step <= self.text_encoder_until

    def epochs_at(self, step: int) -> int:
        """The epochs begun by `step` (a step that ends an epoch counts it, not the next)."""
        index = bisect.bisect_left(self.epoch_ends, step)
        if index < len(self.epoch_ends) or not self.epoch_ends:
            return index + 1 if step else 0
        return index + math.ceil((step - self.epoch_ends[-1]) / self.steps_per_epoch)

    def validates_at(self, step: int) -> bool:
        if self.validate_every:
            return step % self.validate_every == 0
        return self.epochs_done_at(step) is not None

    def epochs_done_at(self, step: int) -> int | None:
        """The epochs done when `step` ends one; None at any other step."""
        index = bisect.bisect_left(self.epoch_ends, step)
        return index + 1 if index < len(self.epoch_ends) and self.epoch_ends[index] == step else None


def plan_schedule(config: RunConfig, data: Epochs, world: int, start: tuple[int, int, int] | None = None
                  ) -> Schedule:
    """`start`: a resumed run's checkpoint's step, epoch and batch, from where the epochs are counted at this run's
    batches per step (the checkpoint's steps may have drawn another count: --gradient-accumulation changed)."""
    batches_per_step = config.training.gradient_accumulation * world
    steps_per_epoch = max(1, math.ceil(data.batches_per_epoch / batches_per_step))
    max_steps, epochs = config.training.max_steps, config.training.epochs or DEFAULT_EPOCHS
    until = parse_until(config.network.text_encoder_until)
    until_epochs = int(until[0]) if until and until[1] == "epochs" else 0

    def batches_of(epoch: int) -> int:
        return len(data.epoch_batches(epoch, shuffled=False)) if data.fractional else data.batches_per_epoch

    def steps_of(epoch: int) -> int:  # an epoch ends its last step early (loop.draw), so its steps round up
        return max(1, math.ceil(batches_of(epoch) / batches_per_step))

    step, epoch, batch = start or (0, 0, 0)
    ends = [step + math.ceil(max(0, batches_of(epoch) - batch) / batches_per_step) if start else steps_per_epoch]
    lengths = [steps_of(epoch) if start else steps_per_epoch]
    # the epochs the checkpoint's steps ended: each as long as this run's steps make it, all before the checkpoint
    # (whose step drew a batch of its own epoch)
    ends[:0] = [max(0, min(step - 1, ends[0] - lengths[0] - i * steps_per_epoch)) for i in reversed(range(epoch))]
    lengths[:0] = [steps_per_epoch] * epoch
    while (ends[-1] < max_steps) if max_steps else (len(ends) < max(epochs, until_epochs)):
        lengths.append(steps_of(len(ends)))
        ends.append(ends[-1] + lengths[-1])
    total_steps = max_steps or ends[epochs - 1]
    last = bisect.bisect_left(ends, total_steps)  # the epoch the last step is in
    run_epochs = last + 1 - (ends[last] - total_steps) / lengths[last]
    if start and total_steps <= step:  # (a run asked to end before its checkpoint: where that stands)
        run_epochs = epoch + min(batch, batches_of(epoch)) / batches_of(epoch)
    if until_epochs:
        until_step = ends[until_epochs - 1] if until_epochs <= len(ends) else total_steps
    else:
        until_step = until and math.ceil(until[0] * {"steps": 1, "percent": total_steps / 100}[until[1]])
    return Schedule(batches_per_step, steps_per_epoch, total_steps, parse_save_every(config.output.save_every),
                    parse_save_every(config.output.sample_every),
                    config.validation.validate_every,
                    len(data.batch_shapes()) + len(config.prompt_lines) + 1,
                    until_step, in_steps(config.optim.warmup_steps, total_steps),
                    tuple(ends[:last + 1]), run_epochs, step if start and total_steps < step else None,
                    parse_save_every(config.training.checkpoint_every))


SHORT_RUN_STEPS = 400  # a default-length run under this is short for a real model's subject or style
KOHYA_DEFAULT_STEPS = 1600  # sd-scripts' max_train_steps where nothing sets the length


def short_run_note(config, family, total_steps: int) -> str | None:
    """Where the default length (10 epochs) is few steps for a real model: a folder of photos without repeats
    trained 120 steps, where kohya's default is 1600 and an N_name folder's repeats made the same folder 1500."""
    if config.training.max_steps or config.training.epochs or family.full_size or total_steps >= SHORT_RUN_STEPS:
        return None
    return (f"{total_steps} steps is a short run for a real model (kohya's default is {KOHYA_DEFAULT_STEPS}): more "
            "repeats (an N_name folder's N: 10_ohwx trains its images 10 times an epoch), or --epochs or --max-steps, "
            "lengthen it")


def in_steps(given: float, total_steps: int) -> int:
    """--warmup-steps or --decay-steps in steps: as given, or under 1 that share of the run's steps (kohya's
    ratio, rounded down as kohya does)."""
    return int(given * total_steps) if 0 < given < 1 else int(given)


def folder_batches(run: ResolvedRun) -> str:
    """The batch sizes of a dataset file's folders that have their own (kohya's datasets)."""
    sizes = sorted({size for _, size in run.folder_shapes if size})
    return f" (some folders {', '.join(map(str, sizes))})" if sizes else ""
