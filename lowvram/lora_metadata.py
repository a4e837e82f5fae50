"""What every LoRA file lowvram writes (trained, resized, merged, extracted, stripped of paths) says of its kind and
identity, as kohya's scripts write it: Stability's modelspec block, which model sites and UIs read, and kohya's
hashes of the weights, which AUTOMATIC1111 takes instead of hashing the file itself. What a training adds is
lowvram.train.metadata's."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

from lowvram.errors import LowvramError
from lowvram.files import save_safetensors, utf8_text

MODELSPEC_VERSION = "1.0.0"
# kohya's rule (sai_model_spec.determine_implementation): an SDXL LoRA is Stability's implementation, others diffusers'
STABILITY_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
HASHES = ("sshs_model_hash", "sshs_legacy_hash")
RECIPE_KEY = "lowvram.config"  # a trained LoRA's options, as a TOML `train --config` reads (paths by name only)
LEGACY_HASH_SPAN = (0x100000, 0x10000)  # the legacy hash: 64 KiB from 1 MiB into the file


def implementation(architecture: str) -> str:
    """modelspec.implementation of a LoRA of `architecture` (modelspec.architecture)."""
    return STABILITY_IMPLEMENTATION if architecture.startswith("stable-diffusion-xl") else "diffusers"


def modelspec(architecture: str, title: str, resolution: str | None = None, prediction: str | None = None,
              merged_from: str | None = None, when: datetime | None = None) -> dict[str, str]:
    """Stability's modelspec block as kohya's sai_model_spec.build_metadata writes it for a LoRA; `resolution` as
    "WxH", `prediction` as "epsilon" or "v", `merged_from` the merged files' titles, comma-separated."""
    when = when or datetime.now(timezone.utc)
    spec = {"modelspec.sai_model_spec": MODELSPEC_VERSION, "modelspec.architecture": architecture,
            "modelspec.implementation": implementation(architecture), "modelspec.title": title,
            "modelspec.date": when.strftime("%Y-%m-%dT%H:%M:%S")}
    given = {"modelspec.resolution": resolution, "modelspec.prediction_type": prediction,
             "modelspec.merged_from": merged_from}
    return spec | {key: value for key, value in given.items() if value}


def title_of(path: Path, metadata: dict[str, str]) -> str:
    """A LoRA file's title: its modelspec title, else its file name without the extension (as kohya's
    build_merged_from names the files it merged)."""
    return metadata.get("modelspec.title") or path.stem


def trigger_words(metadata: dict[str, str]) -> str:
    """A LoRA's trigger words: modelspec's trigger_phrase, or where a lowvram before 2026-12-04 kept them alone, its
    lowvram.trigger_word ("" for none)."""
    return metadata.get("modelspec.trigger_phrase") or metadata.get("lowvram.trigger_word") or ""


def hashes(tensors: dict, metadata: dict[str, str]) -> dict[str, str]:
    """kohya's sshs_model_hash (sha256 of the tensor data, which AUTOMATIC1111 calls the addnet hash) and
    sshs_legacy_hash (of 64 KiB at 1 MiB) of the file `tensors` and the training metadata (ss_* only, so that
    what a user adds later changes neither) make (train_util.precalculate_safetensors_hashes)."""
    from safetensors.torch import save

    written = save(tensors, {key: value for key, value in metadata.items() if key.startswith("ss_")})
    start = 8 + int.from_bytes(written[:8], "little")
    offset, size = LEGACY_HASH_SPAN
    return {"sshs_model_hash": hashlib.sha256(memoryview(written)[start:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(written[offset:offset + size]).hexdigest()[:8]}


def addnet_hash(path: Path) -> str:
    """sha256 of a .safetensors file's tensor data (after its header): AUTOMATIC1111's LoRA hash, which its
    infotext's "Lora hashes" and model sites key images on; kohya's sshs_model_hash of a file as written."""
    return file_hashes(path)[1]


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256 of the whole file: Civitai's AutoV2, of which it shows the first 10 digits; the addnet hash), in
    one read."""
    whole, tensors = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as file:
        length = file.read(8)
        header = file.read(int.from_bytes(length, "little"))
        whole.update(length + header)
        for block in iter(lambda: file.read(2**20), b""):
            whole.update(block)
            tensors.update(block)
    return whole.hexdigest(), tensors.hexdigest()


def alpha_unread(key: str, tensors: dict) -> bool:
    """A full-matrix LoKr's alpha: LyCORIS writes its rank there (beyond fp16's range: inf), and no reader scales
    by it."""
    base = key.removesuffix(".alpha")
    return key.endswith(".alpha") and f"{base}.lokr_w1" in tensors and f"{base}.lokr_w2" in tensors


def save_lora(tensors: dict, path: Path, metadata: dict[str, str], what: str | None = None,
              fix: str = "lower the weights, or save at a wider --save-precision") -> Path:
    """A LoRA file, atomically, with kohya's hashes of it in its metadata; refused where it would hold NaN or
    infinite values (a merge weight of 1e30, a value past fp16's range, a run that diverged), which every tool would
    draw black, saying the `fix`."""
    import torch

    tensors = {key: tensor.detach().contiguous().cpu() for key, tensor in tensors.items()}
    bad = next((key for key, tensor in tensors.items() if tensor.is_floating_point()
                and not torch.isfinite(tensor).all() and not alpha_unread(key, tensors)), None)
    if bad:
        raise LowvramError(f"{path}: not written, {what or 'the LoRA'} would hold NaN or infinite values ({bad}); "
                           f"{fix}")
    unhashed = {key: utf8_text(value) for key, value in metadata.items() if key not in HASHES}  # (hashed as written)
    return save_safetensors(tensors, path, unhashed | hashes(tensors, unhashed), what)
