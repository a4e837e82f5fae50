"""A run's config worked out once for its model and machine: the model family, the mixed precision and what
follows from it (the U-Net's native storage, the VAE's dtype), the training resolution, the cache folder and how
captions are read. `lowvram plan`, `check-data` and the training loop all read one `ResolvedRun`, so what is
planned is what trains. Plain data: no torch, no weights (the family comes from names, headers and configs)."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from rich.markup import escape

from lowvram.adapters.blocks import BlockPlan, block_plan
from lowvram.config import SAMPLE_DATA, RunConfig
from lowvram.configure import kohya_recipe, onetrainer_recipe
from lowvram.dataset_files import is_dataset_file, read_dataset
from lowvram.errors import LowvramError
from lowvram.files import cache_sharing_fix, cache_variable, expand_home, windows_output_problem
from lowvram.hardware import Hardware, resolve_mixed_precision
from lowvram.locks import hold_shared
from lowvram.models.detect import detect_family
from lowvram.models.families import FAMILIES, ModelFamily, TextReading, clip_skip_problem
from lowvram.option_values import parse_resolutions

NATIVE_FORMAT = {"bf16": "bf16", "fp16": "fp16", "no": "fp32"}  # the U-Net stored as the run computes


# the cache folder's parts, by what they hold
LATENTS, TEXT, SCANS, SAMPLE_DATASET = "latents", "text", "scan", "sample-data"  # rebuilt when a run needs them
EDITED_CAPTIONS, REPLACED_CAPTIONS, UI_FILES = "edited-captions", "replaced-captions", "ui"  # never rebuilt
IN_USE = ".in-use"  # the lock runs share while they read the cache, and `lowvram cache` holds alone to remove


_UNLOCKED_SAID: set[str] = set()  # the lock failures said in this process


@contextmanager
def cache_in_use(cache_dir: Path, console=None):
    """Within the block, the cache's shared lock (IN_USE) is held: `lowvram cache` removes nothing from it. A wait
    for a removal to finish first is said on `console`."""
    def waiting() -> None:
        console.print(f"waiting for `lowvram cache` to finish removing entries from {escape(str(cache_dir))}",
                      soft_wrap=True)

    def unlocked(reason: str) -> None:
        if reason in _UNLOCKED_SAID:  # (a run's scan takes the lock again inside the run's own hold)
            return
        _UNLOCKED_SAID.add(reason)
        fix = (cache_sharing_fix(Path(cache_dir)) if Path(cache_dir).is_dir() else  # (a HOME that is not there)
               "give --cache-dir or LOWVRAM_CACHE_DIR a folder you can write")
        console.print(f"[yellow]warning:[/] the cache's lock cannot be taken ({escape(reason)}), so `lowvram cache` "
                      f"could remove what this run reads; {fix}", soft_wrap=True)

    with hold_shared(Path(cache_dir) / IN_USE, waiting if console else None, unlocked if console else None):
        yield


def default_cache_dir() -> Path:
    """$LOWVRAM_CACHE_DIR, else $XDG_CACHE_HOME/lowvram, else ~/.cache/lowvram; a Windows path in either is refused
    (it would be made as a folder of that whole name here)."""
    if variable := cache_variable():
        name, value = variable
        if windows := windows_output_problem(name, value):
            raise LowvramError(windows)
        return Path(value) if name == "LOWVRAM_CACHE_DIR" else Path(value) / "lowvram"
    try:
        return Path.home() / ".cache" / "lowvram"
    except RuntimeError:  # (no HOME and a user of no passwd entry: `docker run --user 1234`, cron's `env -i`)
        raise LowvramError("no home folder to keep the caches in (this user has none); give --cache-dir, "
                           "LOWVRAM_CACHE_DIR or XDG_CACHE_HOME a folder you can write") from None


@dataclass(frozen=True)
class ResolvedRun:
    config: RunConfig
    family: ModelFamily
    hardware: Hardware
    mixed_precision: str  # "no" (fp32), "fp16" or "bf16": what the run computes in
    vae_fp32: bool  # the VAE stays in fp32 where it overflows in fp16 (SDXL's, `force_upcast`)
    cache_dir: Path

    @property
    def resolution(self) -> int:
        return self.config.data.resolution or self.family.resolution

    @property
    def native_format(self) -> str:
        return NATIVE_FORMAT[self.mixed_precision]

    @property
    def unet_weights(self) -> str:
        """The frozen U-Net's storage format: --unet-weights, `auto` being the compute dtype itself."""
        chosen = self.config.memory.unet_weights
        return self.native_format if chosen == "auto" else chosen

    @property
    def compute_bytes(self) -> int:
        return 4 if self.mixed_precision == "no" else 2

    @property
    def blocks(self) -> BlockPlan | None:
        """The U-Net's per-block ranks, alphas and learning-rate weights, where the config sets any."""
        return block_plan(self.config.network, self.family.blocks, self.family.title)

    @property
    def text_reading(self) -> TextReading:
        return TextReading(self.config.data.max_token_length, self.config.data.clip_skip,
                           self.config.data.weighted_captions)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Every resolution each image trains at: --resolution's, then --extra-resolutions'."""
        return (self.resolution, *(r for r in parse_resolutions(self.config.data.extra_resolutions)
                                   if r != self.resolution))

    @cached_property  # read once: describe, plan and the checks ask for it
    def folder_shapes(self) -> tuple[tuple[int | None, int | None], ...]:
        """(resolution, batch size) of each of a dataset file's image folders that has either of its own (kohya's
        datasets of other images at other resolutions or batch sizes, OneTrainer's resolution override); None
        where it has the run's."""
        if not is_dataset_file(self.config.data.data):
            return ()
        return tuple(dict.fromkeys((s.resolution, s.batch_size) for s in read_dataset(Path(self.config.data.data))
                                   .subsets if s.resolution or s.batch_size))

    @property
    def trained_resolutions(self) -> tuple[int, ...]:
        """Every resolution some image trains at."""
        return tuple(dict.fromkeys((*self.resolutions, *sorted({r for r, _ in self.folder_shapes if r}))))

    @property
    def planned_shape(self) -> tuple[int, int]:
        """The (resolution, batch size) of the batches with the most pixels: what the planner plans for."""
        batch = self.config.training.batch_size
        shapes = [(r, batch) for r in self.resolutions]
        for resolution, size in self.folder_shapes:
            shapes += [(r, size or batch) for r in ((resolution,) if resolution else self.resolutions)]
        return max(shapes, key=lambda shape: (shape[0] ** 2 * shape[1], shape[0]))

    @property
    def trained_text_encoders(self) -> tuple[str, ...]:
        """The text encoders (their components) that train: those whose learning rate is not 0."""
        return tuple(spec.component for i, spec in enumerate(self.family.text_encoders)
                     if self.config.text_encoder_rate(i) > 0)

    @property
    def uses_sample_data(self) -> bool:
        return self.config.data.data == SAMPLE_DATA

    @property
    def sample_resolution(self) -> int | None:
        """The square side with as many pixels as the largest sample image (prompts may set --w/--h)."""
        sizes = [p.size(self.resolution) for p in self.config.samples]
        return int(max(w * h for w, h in sizes) ** 0.5) if sizes else None


def kohya_model_checked(values: dict, config: Path, typed: Collection[str] = ()) -> dict:
    """A kohya (or OneTrainer) config's values against its model (a local one: a hub id is looked up where the run
    checks it): a recipe for SDXL given an SD1.5 model, or the other way round, picked in a dropdown by mistake, is
    refused (sd-scripts stops; lowvram trained the recipe's 1024 px on SD1.5 without a word); a kohya clip skip for
    SDXL, which reads its penultimate layer already, is left out with a note, as kohya's SDXL script warns and trains
    on (Pony guides give clip_skip 2, and their recipes carry it). Typed on the command line, --clip-skip is refused."""
    kohya, model = kohya_recipe(config), str(values.get("model") or "")
    recipe = kohya or onetrainer_recipe(config)  # (OneTrainer fails to load the model of another model_type)
    if recipe is None or not (model in FAMILIES or expand_home(model).exists()):
        return values
    try:
        family = detect_family(model, values.get("model_family"))
    except LowvramError:  # (said where the run checks its model)
        return values
    sdxl, why = recipe
    if sdxl is not None and (len(family.text_encoders) > 1) != sdxl:
        kind = "SDXL" if sdxl else "SD1.5"
        raise LowvramError(f"--model: {model} is {family.title}, but {config} is a recipe for {kind} ({why}); pass "
                           f"an {kind} model, or a recipe made for {family.title}")
    skip = values.get("clip_skip")
    if kohya is None or "clip_skip" in typed or not isinstance(skip, int) or clip_skip_problem(family, skip) is None:
        return values
    print(f"{config}: clip_skip {skip}: {family.title} reads its text encoders' penultimate layer already, and kohya "
          "ignores clip skip for it; not carried over", file=sys.stderr)
    return {name: value for name, value in values.items() if name != "clip_skip"}


def family_problem(config: RunConfig, family: ModelFamily) -> str | None:
    """What of the options the model's family refuses (a second text encoder's rate on SD1.5, a clip skip on SDXL)."""
    if config.optim.text_encoder_2_lr is not None and len(family.text_encoders) < 2:
        return f"--text-encoder-2-lr: {family.title} has one text encoder; --text-encoder-lr is its rate"
    return clip_skip_problem(family, config.data.clip_skip)


def resolve_run(config: RunConfig, hardware: Hardware) -> ResolvedRun:
    """Everything the config leaves to the model and the machine; the checks that need the family."""
    family = detect_family(config.model.model, config.model.model_family)
    if problem := family_problem(config, family):
        raise LowvramError(problem)
    mixed_precision = resolve_mixed_precision(config.training.mixed_precision, hardware)
    vae_fp32 = mixed_precision == "fp16" and bool(_vae_config(config, family).get("force_upcast"))
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir()
    run = ResolvedRun(config, family, hardware, mixed_precision, vae_fp32, cache_dir)
    run.blocks  # noqa: B018 -- a list of the wrong length for this family is said now, before any weights load
    return run


def _vae_config(config: RunConfig, family: ModelFamily) -> dict:
    """The config of the VAE the run will load: a --vae folder's (e.g. the fp16-fixed SDXL VAE: force_upcast
    false), a diffusers model folder's own, else the family's (single files, a --vae file, hub ids)."""
    if config.model.vae:  # a VAE folder, or a whole diffusers model's, whose vae/ it loads
        folder = expand_home(config.model.vae)
        own = next((f for f in (folder / "config.json", folder / "vae" / "config.json") if f.is_file()),
                   folder / "config.json")
    else:
        own = expand_home(config.model.model) / "vae" / "config.json"
    return json.loads((own if own.is_file() else family.config_dir / "vae" / "config.json").read_text())
