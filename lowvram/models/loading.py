"""Load a base model from whatever the user has: a family name, a diffusers folder, a single-file
checkpoint in the original (LDM/SGM) layout, or a hub id. Single files load offline: the configs and
tokenizer files they need ship in `lowvram/models/configs/`. Pickles are never opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lowvram.errors import PICKLE_SUFFIXES, LowvramError, first_line, pickle_refusal
from lowvram.files import expand_home
from lowvram.models.detect import (
    check_model_part,
    checkpoint_title,
    detect_family,
    detect_single_file_family,
    diffusers_folder_family,
    folder_variant,
    hub_failure,
    is_plainly_local,
    looks_like_lora,
    path_not_found,
    quiet_hub,
)
from lowvram.models.families import DEFAULT_READING, FAMILIES, ModelFamily, declared_schedule, family_for_pipeline
from lowvram.models.ldm_layout import SD15_CLIP_PREFIX

RANDOM_INIT_SEED = 0  # `--model tiny` is one fixed model, so a LoRA trained on it loads on it again later


@dataclass
class LoadedModel:
    """A base model's components (inside a diffusers pipeline, which also samples) and where they came from."""

    family: ModelFamily
    pipeline: object  # diffusers StableDiffusionPipeline / StableDiffusionXLPipeline
    source: str
    name: str  # the model's file or folder name, for metadata (kohya's ss_sd_model_name)
    hash: str  # AUTOMATIC1111's short model hash (or a stand-in for random-init models)
    text_reading: object = None  # how captions are read (models.conditioning.TextReading; None: the default)

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipeline.unet

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipeline.vae

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [getattr(self.pipeline, spec.component) for spec in self.family.text_encoders]

    @property
    def tokenizers(self) -> list:
        return [getattr(self.pipeline, spec.tokenizer) for spec in self.family.text_encoders]


def load_model(model: str, family: str | None = None, dtype: torch.dtype = torch.float32,
               vae: str | None = None) -> LoadedModel:
    """Load `model` (see `--model`); `family` overrides detection; `vae` replaces the model's VAE."""
    loaded = _load_model(model, family, dtype)
    if vae:
        loaded.pipeline.register_modules(vae=load_vae(vae, loaded.family, dtype))
    return loaded


def _load_model(model: str, family: str | None, dtype: torch.dtype) -> LoadedModel:
    forced = detect_family(model, family) if family else None  # --model-family must agree with what the file is
    path = expand_home(model)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LowvramError(pickle_refusal("--model", model))
    if model in FAMILIES and not path.exists():
        spec = FAMILIES[model]
        if spec.is_random_init:
            return LoadedModel(spec, build_from_config(spec, dtype=dtype), model, model, f"random{RANDOM_INIT_SEED}")
        return _load_from_hub(spec.hub_id, forced or spec, dtype)
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise LowvramError(f"--model: {model} is not a .safetensors checkpoint or a diffusers folder")
        return _load_single_file(path, forced, dtype)
    if path.is_dir():
        return _load_diffusers_folder(path, forced, dtype)
    if is_plainly_local(model):
        raise path_not_found("--model", model)
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return _load_from_hub(model, forced, dtype)
    raise LowvramError(f"--model: '{model}' is not a file, a folder, a hub id or one of {', '.join(FAMILIES)}")


def load_vae(vae: str | Path, family: ModelFamily, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A user's VAE: a diffusers folder (or a whole diffusers model's vae/), or a .safetensors file in the original
    or the diffusers layout."""
    from diffusers import AutoencoderKL

    path = expand_home(vae)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LowvramError(pickle_refusal("--vae", str(vae)))
    if not path.exists():
        raise path_not_found("--vae", str(vae))
    if path.is_dir() and not (path / "config.json").is_file():
        if not (path / "vae" / "config.json").is_file():
            raise LowvramError(f"--vae: {path} has no config.json, so is not a diffusers VAE folder; pass a VAE "
                               "folder (config.json and diffusion_pytorch_model.safetensors) or a .safetensors file")
        path = path / "vae"  # a whole diffusers model: its VAE
    if path.is_dir():
        check_model_part(path, "diffusers", "AutoencoderKL", "--vae")
    elif (title := checkpoint_title(path)) and title != family.title:  # (the same family's: its VAE, as meant)
        raise LowvramError(f"--vae: {path} is a whole {title} checkpoint, whose VAE is not {family.title}'s (its "
                           f"latents are scaled otherwise); give a VAE of {family.title}'s")
    other = _other_familys_vae(path, family)
    if other:
        raise LowvramError(f"--vae: {path} is {other}'s VAE by its {'config' if path.is_dir() else 'name'}, and the "
                           f"model is {family.title}: the two VAEs are built alike but encode otherwise, so the "
                           f"U-Net would learn from latents it never saw; give a VAE of {family.title}'s, or none")
    try:
        if path.is_dir():
            return AutoencoderKL.from_pretrained(path, torch_dtype=dtype, local_files_only=True, use_safetensors=True)
        from safetensors.torch import load_file

        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - missing files, bad headers and configs all mean "not a VAE"
        raise LowvramError(f"--vae: {path} could not be loaded as a VAE ({first_line(exc)})") from None
    state = {k.removeprefix("first_stage_model."): v for k, v in state.items()}
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(family.config_dir, subfolder="vae"))
    if any(k.startswith("encoder.down.") for k in state):  # original (LDM) layout
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        state = convert_ldm_vae_checkpoint(state, vae.config)
    if looks_like_lora(state):
        raise LowvramError(f"--vae: {path} is a LoRA, not a VAE; give a VAE file (e.g. sdxl_vae.safetensors), and a "
                           "LoRA as --network-weights or to generate --lora")
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LowvramError(f"--vae: {path} does not fit {family.title}'s VAE ({len(missing)} weights missing, "
                           f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})")
    return vae.to(dtype=dtype)


# VAE file names that say whose VAE they are: SD1.5's and SDXL's are built alike, so the other's loads without a word
VAE_NAMES = {"sdxl": re.compile(r"sdxl|(^|[^a-z])xl([^a-z]|$)"),
             "sd15": re.compile(r"vae-ft-(mse|ema)|sd-?1[-._]?5|(sd|diffusion)-v1-5|kl-f8-anime|orangemix")}


def _other_familys_vae(path: Path, family: ModelFamily) -> str | None:
    """Which other family's VAE `path` is, where a folder's config (its latents' scale) or a file's name says so."""
    own = json.loads((family.config_dir / "vae" / "config.json").read_text())["scaling_factor"]
    if path.is_dir():
        scale = json.loads((path / "config.json").read_text()).get("scaling_factor", own)
        others = [f.title for f in FAMILIES.values() if not f.is_random_init
                  and json.loads((f.config_dir / "vae" / "config.json").read_text())["scaling_factor"] == scale]
        return others[0] if scale != own and others else None
    if checkpoint_title(path):  # a whole checkpoint of this family (its header says so): its name says no more
        return None
    mine = family.full_size or family.name
    named = [name for name, pattern in VAE_NAMES.items() if pattern.search(path.name.lower())]
    return FAMILIES[named[0]].title if named and mine not in named else None


def build_from_config(family: ModelFamily, dtype: torch.dtype = torch.float32, seed: int = RANDOM_INIT_SEED):
    """A pipeline of the family's architecture with seeded random weights (no download, no weight files)."""
    root = family.config_dir
    index = json.loads((root / "model_index.json").read_text())
    torch.manual_seed(seed)
    components = {}
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list):
            continue
        library, class_name = entry
        if library is None:
            components[name] = None
            continue
        cls = getattr(importlib.import_module(library), class_name)
        if library == "diffusers" and class_name.endswith("Scheduler"):
            components[name] = cls.from_pretrained(root, subfolder=name)
        elif library == "diffusers":
            components[name] = cls.from_config(cls.load_config(root, subfolder=name)).to(dtype=dtype)
        elif class_name.endswith("Tokenizer"):
            components[name] = cls.from_pretrained(root, subfolder=name)
        else:
            config = cls.config_class.from_pretrained(root, subfolder=name)
            components[name] = cls(config).to(dtype=dtype)
    pipeline_cls = getattr(importlib.import_module("diffusers"), family.pipeline_class)
    return pipeline_cls(**components)


def random_unet(family: ModelFamily, dtype: torch.dtype = torch.float16, seed: int = RANDOM_INIT_SEED):
    """A full-size U-Net of the family with random weights, made directly in `dtype` (built on the meta
    device first, so an SDXL U-Net never exists in fp32 in host RAM). For benchmarks: memory and speed do
    not depend on the weights' values."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(family.config_dir, subfolder="unet"))
    unet = unet.to(dtype=dtype).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*unet.parameters(), *unet.buffers()]:
            tensor.normal_(0.0, 0.02, generator=generator)
    return unet


def _load_single_file(path: Path, forced: ModelFamily | None, dtype: torch.dtype) -> LoadedModel:
    family = forced or detect_single_file_family(path)
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    pipeline_cls = getattr(importlib.import_module("diffusers"), family.pipeline_class)
    with _quiet_diffusers(), _lower_case_suffix(path) as readable:
        try:
            pipeline = pipeline_cls.from_single_file(
                readable, config=str(family.config_dir), local_files_only=True, torch_dtype=dtype,
                **_text_encoder_of_older_layout(path, family, dtype)
            )
        except SingleFileComponentError as exc:
            component = str(exc).split("Failed to load ", 1)[-1].split(".", 1)[0]
            raise LowvramError(f"--model: {path} has no {component} weights; pass a complete "
                               f"{family.title} checkpoint") from None
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise LowvramError(f"--model: {path} could not be loaded as {family.title}: {first_line(exc)}") from None
    for name, component in pipeline.components.items():
        # diffusers leaves weights the file lacks on the meta device instead of failing: catch it here
        if isinstance(component, torch.nn.Module) and any(p.is_meta for p in component.parameters()):
            raise LowvramError(f"--model: {path} has no (or incomplete) {name} weights; "
                               f"pass a complete {family.title} checkpoint")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        declared = declared_schedule(set(handle.keys()), handle.metadata() or {})
    if "v-prediction" in declared:
        pipeline.scheduler.register_to_config(prediction_type="v_prediction")
    if "zero terminal SNR" in declared:
        pipeline.scheduler = zero_terminal_snr_sampler(pipeline.scheduler)
    return LoadedModel(family, pipeline, str(path), path.name, file_short_hash(path))


def _text_encoder_of_older_layout(path: Path, family: ModelFamily, dtype: torch.dtype) -> dict:
    """{"text_encoder": it} for an SD1 file from before transformers' CLIP had its text_model level
    (cond_stage_model.transformer.encoder.*, as NovelAI-era merges are; AUTOMATIC1111 and ComfyUI rename them),
    whose text encoder diffusers does not find; {} for any other file."""
    from safetensors import safe_open

    if len(family.text_encoders) != 1:
        return {}
    with safe_open(str(path), framework="pt") as handle:
        names = handle.keys()
    keys = [key for key in names if key.startswith(SD15_CLIP_PREFIX)]
    if not any(key.startswith(f"{SD15_CLIP_PREFIX}encoder.") for key in keys):
        return {}
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():  # (its weights come from the file: none made to be replaced)
        encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(family.config_dir / "text_encoder"))
    wanted = set(encoder.state_dict())  # (with text_model. where this transformers has it)
    state = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in keys:
            name = key.removeprefix(SD15_CLIP_PREFIX)
            name = name if name in wanted else f"text_model.{name}"
            if name in wanted:
                state[name] = handle.get_tensor(key)
    missing = sorted(name.removeprefix("text_model.") for name in wanted - set(state)
                     if not name.endswith("position_ids"))
    if missing:
        raise LowvramError(f"--model: {path} has an incomplete text encoder (no {SD15_CLIP_PREFIX}{missing[0]}, "
                           f"{len(missing)} missing); pass a complete {family.title} checkpoint")
    encoder.load_state_dict(state, strict=False, assign=True)
    return {"text_encoder": encoder.to(dtype).eval()}


@contextlib.contextmanager
def _lower_case_suffix(path: Path) -> Iterator[str]:
    """`path` under a name ending in `.safetensors`: diffusers reads any other name (`model.SAFETENSORS`) as a
    pickle, so such a file is read through a correctly named link in a temporary folder."""
    if path.name.endswith(".safetensors"):
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="lowvram-") as folder:
        link = Path(folder) / f"{path.stem}.safetensors"
        try:
            os.symlink(path.resolve(), link)
        except OSError as exc:  # e.g. Windows without the symlink privilege
            raise LowvramError(f"--model: rename {path} to {link.name} (diffusers reads only a lower-case "
                               f".safetensors extension, and a link to it could not be made: {first_line(exc)})"
                               ) from None
        yield str(link)


def zero_terminal_snr_sampler(scheduler):
    """The sampler for a model trained with zero terminal SNR (Lin et al. 2023): its schedule rescaled so the last
    timestep is pure noise, and timesteps spaced from that last one ('trailing'). Euler where the model's own
    sampler has no such option (PNDM, SD1.5's default)."""
    from diffusers import EulerDiscreteScheduler

    sampler = type(scheduler)
    if "rescale_betas_zero_snr" not in inspect.signature(sampler).parameters:
        sampler = EulerDiscreteScheduler
    return sampler.from_config(scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing")


def _load_diffusers_folder(path: Path, forced: ModelFamily | None, dtype: torch.dtype) -> LoadedModel:
    family = forced or diffusers_folder_family(path)  # (detection, when forced, checked the parts already)
    pipeline_cls = getattr(importlib.import_module("diffusers"), family.pipeline_class)
    try:
        pipeline = pipeline_cls.from_pretrained(path, torch_dtype=dtype, local_files_only=True, use_safetensors=True,
                                                safety_checker=None, requires_safety_checker=False,
                                                variant=folder_variant(path))
    except OSError as exc:
        pickles = any(p.suffix.lower() in PICKLE_SUFFIXES for p in path.glob("*/*"))
        hint = " (lowvram reads only .safetensors weights; convert pickle .bin files first)" if pickles else ""
        raise LowvramError(f"--model: {path} could not be loaded: {first_line(exc)}{hint}") from None
    unet_weights = next((path / "unet").glob("*.safetensors"), None)
    return LoadedModel(family, pipeline, str(path), path.name, file_short_hash(unet_weights) if unet_weights else "")


def _load_from_hub(repo_id: str, family: ModelFamily | None, dtype: torch.dtype) -> LoadedModel:
    from diffusers import DiffusionPipeline

    try:
        with quiet_hub():
            pipeline = DiffusionPipeline.from_pretrained(repo_id, torch_dtype=dtype, use_safetensors=True,
                                                         safety_checker=None, requires_safety_checker=False)
    except Exception as exc:  # noqa: BLE001 - hub, network and auth errors have no common base class
        raise LowvramError(f"--model: could not download '{repo_id}' from the Hugging Face hub ({hub_failure(exc)}); "
                           "pass a local .safetensors file or diffusers folder") from None
    family = family or family_for_pipeline(type(pipeline).__name__, pipeline.unet.config.cross_attention_dim)
    if family is None:
        raise LowvramError(f"--model: '{repo_id}' is a {type(pipeline).__name__}; lowvram trains SD1.5 and SDXL")
    return LoadedModel(family, pipeline, repo_id, repo_id.split("/")[-1], "")


def file_short_hash(path: Path) -> str:
    """AUTOMATIC1111's legacy model hash: sha256 of 64 KiB at offset 1 MiB (cheap on multi-GB files)."""
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]


class _quiet_diffusers:
    """diffusers logs a warning per unexpected key on single files; the user can't act on them."""

    def __enter__(self):
        self.logger = logging.getLogger("diffusers")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


KOHYA_NO_HASH = ("IsADirectory", "NOFILE")  # kohya's ss_sd_model_hash of a diffusers folder, of a file not there


def follow_lora_schedule(model: LoadedModel, lora: Path, keep_clip_skip: bool = False) -> tuple[list[str], str]:
    """A LoRA trained with v-prediction, zero terminal SNR or clip skip (its modelspec.prediction_type,
    ss_zero_terminal_snr and ss_clip_skip) where the base model's own reading says otherwise: the sampler and the
    text reading are set to what training used (the clip skip kept with `keep_clip_skip`: one asked for). What was
    changed, in words; and a note where the LoRA was trained on another model (its ss_sd_model_hash), whose
    schedule is not this one's: a NoobAI-XL V-Pred LoRA on Illustrious samples as Illustrious does, as in ComfyUI."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(lora), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, SafetensorError):
        return [], ""  # _lycoris_kind names the unreadable file
    scheduler, changes = model.pipeline.scheduler, []
    wanted = [what for what, trained, found in (
        ("v-prediction", metadata.get("modelspec.prediction_type") == "v", scheduler.config.prediction_type
         == "v_prediction"),
        ("zero terminal SNR", metadata.get("ss_zero_terminal_snr") == "True",
         scheduler.config.get("rescale_betas_zero_snr"))) if trained and not found]
    trained_on, other_model = metadata.get("ss_sd_model_hash", ""), ""
    if wanted and trained_on not in ("", *KOHYA_NO_HASH) and model.hash and trained_on != model.hash:
        named = metadata.get("ss_sd_model_name") or f"hash {trained_on}"
        rescaled = "with" if scheduler.config.get("rescale_betas_zero_snr") else "without"
        other_model = (f"{lora.name} was trained with {' and '.join(wanted)} on another model ({named}): "
                       f"{model.name} keeps its own schedule ({scheduler.config.prediction_type}, {rescaled} zero "
                       "terminal SNR), as ComfyUI and AUTOMATIC1111 sample it")
        wanted = []
    if "v-prediction" in wanted:
        scheduler.register_to_config(prediction_type="v_prediction")
        changes.append("v-prediction")
    if "zero terminal SNR" in wanted:
        model.pipeline.scheduler = zero_terminal_snr_sampler(scheduler)
        changes.append("zero terminal SNR")
    skip = metadata.get("ss_clip_skip", "")
    reading = model.text_reading or DEFAULT_READING
    if not keep_clip_skip and skip.isdigit() and int(skip) > 1 and model.family.text_encoders[0].hidden_state == -1 and reading.clip_skip == 1:
        model.text_reading = replace(reading, clip_skip=int(skip))  # SDXL reads its penultimate layer already
        changes.append(f"clip skip {skip}")
    return changes, other_model
