"""Content-addressed caches of VAE latents and text embeddings, one safetensors file per entry.

A latent's key covers the image bytes (their hash), its bucket, scale, crop, flip and jitter, how
transparency is handled, and the VAE's identity (a fingerprint of its weights) and dtype. A text
embedding's key covers the caption text and the text encoders' identity and the hidden states used.
So any change invalidates exactly the entries it affects, and caches are safe to share between runs
and datasets. Entries are written atomically: an interrupted pass resumes where it stopped, and a
file that fails to open (truncated, corrupt) is deleted and encoded again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from lowvram.console import counted_progress
from lowvram.data.augment import Variant, apply_variant
from lowvram.data.buckets import Placement
from lowvram.data.cache_size import ENTRY_HEADER, cache_room_problem, holds_mask, latent_entry_bytes, text_entry_bytes
from lowvram.data.folders import ScanOptions
from lowvram.data.image_files import HIGH_BIT_MODES
from lowvram.data.scan import open_training_image
from lowvram.data.scan_report import ImageRecord
from lowvram.errors import LowvramError
from lowvram.files import (
    DiskFull,
    cache_sharing_fix,
    human_size,
    remove_orphans,
    save_safetensors,
    write_problem,
)

CACHE_FORMAT = 1  # bump when what an entry holds changes, so old entries are never misread


def module_fingerprint(*modules: torch.nn.Module) -> str:
    """A content hash of modules' weights: names, shapes, dtypes and the values at both ends of every
    tensor. Cheap on multi-GB models, and any two real checkpoints differ in it."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            sample = torch.cat([flat[:512], flat[-512:]]).to("cpu", torch.float32)
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def content_key(**parts: object) -> str:
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True).encode()).hexdigest()


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """A CRC-32 of the tensors' bytes as a safetensors file lays them out (its data, after the header, which the
    metadata does not change): what a cache entry's reader checks the file's own bytes against, without a read of
    any tensor back from where it is (a training step's readbacks are counted)."""
    from safetensors.torch import save

    return _data_checksum(save({name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}))


def _data_checksum(file_bytes: bytes) -> str:
    """The CRC-32 of a safetensors file's data section."""
    return f"{zlib.crc32(memoryview(file_bytes)[8 + int.from_bytes(file_bytes[:8], 'little'):]):08x}"


def _metadata(file_bytes: bytes) -> dict[str, str]:
    return json.loads(file_bytes[8 : 8 + int.from_bytes(file_bytes[:8], "little")]).get("__metadata__") or {}


def _checksum_problem(file_bytes: bytes, metadata: dict[str, str]) -> str | None:
    """Why an entry's data is not what was written (written unsynced: a power cut can zero its end); None where it
    is, or where it has no checksum (written before they were)."""
    written = metadata.get("crc32")
    if written is not None and written != _data_checksum(file_bytes):
        return "its tensors do not match the checksum written with them"
    return None


ORPHAN_AGE = 15 * 60  # seconds: a temporary entry file untouched this long was left by a killed writer


class TensorStore:
    """Files `<root>/<kind>/<key[:2]>/<key>.safetensors`, each holding one entry's tensors. Where the disk has no
    room for them, the entries of this run are kept in memory instead (`in_memory`, with the reason in
    `fell_back`), if the host RAM holds them. An entry's mtime is when a run last found it valid: what `lowvram
    cache --unused-for` reads (a run holds the cache's lock, `lowvram.resolve.cache_in_use`, while it reads)."""

    def __init__(self, root: Path, kind: str):
        self.root = Path(root) / kind
        self.memory: dict[str, dict[str, torch.Tensor]] | None = None
        self.fell_back: str | None = None
        self.expected_bytes = 0  # what this run will still write (set by the caching phase): the RAM it would need
        self.orphans_removed = sum(len(remove_orphans(folder, ORPHAN_AGE)) for folder in
                                   (self.root.glob("*") if self.root.is_dir() else ()) if folder.is_dir())

    def keep_in_memory(self, reason: str, needed: int) -> None:
        """From now on, entries go to memory; refused where the RAM available cannot hold `needed` bytes twice."""
        import psutil

        available = psutil.virtual_memory().available
        if needed * 2 > available:
            raise LowvramError(f"{reason}; keeping the cache in memory instead needs {human_size(needed * 2)} of RAM "
                               f"and {human_size(available)} is available: free disk space or pass another "
                               "--cache-dir") from None
        self.memory, self.fell_back = self.memory or {}, reason

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def valid(self, key: str) -> bool:
        """True when the entry exists, opens with the right key and its data matches its checksum; a broken file is
        removed (so the caching phase rebuilds an entry a power cut zeroed the end of, not the training's read)."""
        from safetensors.torch import load

        if self.memory is not None and key in self.memory:
            return True
        path = self.path(key)
        try:
            if not path.is_file():
                return False
        except OSError:  # another user's entry they keep to themselves (umask 077 on a shared cache): rebuilt
            return False
        try:
            data = path.read_bytes()  # (once: the checksum needs every byte, as training's read does)
            metadata = _metadata(data)
            if "crc32" not in metadata:  # (an entry from before checksums: whole where it loads)
                load(data)
            ok = metadata.get("key") == key and _checksum_problem(data, metadata) is None
        except Exception:  # noqa: BLE001 - any failure to open means the entry must be rebuilt
            ok = False
        if not ok:
            with contextlib.suppress(OSError):  # a read-only (shared) cache: its encoding is refused as unwritable
                path.unlink(missing_ok=True)
            return False
        with contextlib.suppress(OSError):  # a read-only (shared) cache: its owner's runs keep it fresh
            os.utime(path)
        return True

    def load(self, key: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        if self.memory is not None and key in self.memory:
            return self.memory[key]
        try:
            data = self.path(key).read_bytes()
            tensors = load(data)
            problem = _checksum_problem(data, _metadata(data))
            if problem:
                raise ValueError(problem)
            return tensors
        except FileNotFoundError:
            raise LowvramError(f"cache entry {self.path(key)} was removed while this run read the cache (by `lowvram "
                               "cache --clear` or --unused-for, which this run's lock keeps out where it can take it, "
                               "or by another program); run the same command with --resume auto to rebuild it and "
                               "go on (without it, the run's folder refuses a new start)") from None
        except Exception as exc:  # noqa: BLE001 - corrupt under us
            try:
                self.path(key).unlink(missing_ok=True)
                fix = "it was removed, run again to rebuild it"
            except OSError as removing:  # a read-only (shared) cache
                fix = (f"it cannot be removed ({removing.strerror}): pass another --cache-dir, or ask its owner to "
                       "remove it")
            raise LowvramError(f"cache entry {self.path(key)} is unreadable ({exc}); {fix}") from None

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.memory is None:
            try:
                # (an fsync each took 85 % of an entry's write, thousands of them; `valid` rebuilds one a power cut
                # left short or zeroed the end of, by its checksum)
                save_safetensors(tensors, self.path(key), {"key": key, "crc32": checksum(tensors)},
                                 what="a cache entry", durable=False)
                return
            except DiskFull as exc:
                self.keep_in_memory(exc.reason, max(self.expected_bytes, sum(t.nbytes for t in tensors.values())))
            except LowvramError as exc:  # a folder of it another user keeps to themselves (umask 077, shared cache)
                lasting = getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS)  # (not NFS' EIO)
                self.keep_in_memory(f"{exc}" + (f" (nor will the next run: {cache_sharing_fix(self.root)})"
                                                if lasting else ""),
                                    max(self.expected_bytes, sum(t.nbytes for t in tensors.values())))
        self.memory[key] = {k: v.detach().cpu().clone() for k, v in tensors.items()}


@dataclass(frozen=True)
class LatentJob:
    key: str
    record: ImageRecord
    placement: Placement
    variant: Variant
    options: ScanOptions  # how its image is read (its folder's)


@dataclass(frozen=True)
class TextJob:
    key: str
    caption: str


def latent_key(record: ImageRecord, placement: Placement, variant: Variant, options: ScanOptions,
               vae_id: str, vae_dtype: torch.dtype, tiled: bool) -> str:
    masked = {"mask": record.mask_sha256} if options.masked_loss and record.mask else {}  # older keys stay valid
    if masked and record.mask_mode in HIGH_BIT_MODES:  # its grey levels were clipped at 255 before: white
        masked["mask_levels"] = "scaled"
    # 16-bit grey with a transparent level: composited now; the latents cached before had black there
    composited = {"grey_alpha": 1} if record.has_alpha and record.mode in HIGH_BIT_MODES else {}
    # another resolution's placement (--extra-resolutions): a large JPEG was decoded for the record's bucket, too
    # small for a larger one, before its own size was asked for
    own_size = {"decoded_for_placement": 1} if placement.bucket != record.bucket else {}
    return content_key(kind="latent", image=record.sha256, bucket=list(placement.bucket),
                       scaled=list(placement.scaled), variant=variant.as_key(), background=list(options.background),
                       alpha_mask=options.alpha_mask, vae=vae_id, dtype=str(vae_dtype), tiled=tiled, **masked,
                       **composited, **own_size)


def text_key(caption: str, encoders_id: str) -> str:
    return content_key(kind="text", caption=caption, encoders=encoders_id)


def sdxl_time_ids(record: ImageRecord, placement: Placement, variant: Variant) -> list[float]:
    """SDXL's size conditioning: original (h, w), crop (top, left) and target (h, w). The crop is where the bucket
    was cut from the scaled image, as Stability's training and diffusers' examples give it (kohya gives half the
    margin of the image fitted inside the bucket instead); a flipped image's is measured from the other side."""
    top, left = variant.crop_top_left
    if variant.flip:
        left = placement.scaled[0] - placement.bucket[0] - left
    return [record.height, record.width, top, left, placement.bucket[1], placement.bucket[0]]


def vae_downscale(vae: torch.nn.Module) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def estimate_bytes(latent_jobs: list[LatentJob], text_jobs: list[TextJob], vae: torch.nn.Module,
                   text_width: int, pooled_width: int, dtype_bytes: int, text_dtype_bytes: int,
                   text_tokens: int) -> int:
    """Disk bytes the entries will take (tensor data; headers add about 200 bytes each). `text_tokens`: the hidden
    states' length (77, 152 or 227 with --max-token-length 75, 150 or 225)."""
    latent = sum(latent_entry_bytes(vae.config.latent_channels, dtype_bytes, j.placement.bucket, vae_downscale(vae),
                                    holds_mask(j.options, j.record)) for j in latent_jobs)
    text = len(text_jobs) * text_entry_bytes(text_tokens, text_width, pooled_width, text_dtype_bytes)
    return latent + text + ENTRY_HEADER * (len(latent_jobs) + len(text_jobs))


def cache_problem(folder: Path, needed: int) -> str | None:
    """Why a cache of `needed` more bytes cannot be written to `folder`: no file can be written there, or it will
    not fit the disk (with 10% to spare for headers and other writers); None when it can."""
    if not needed:
        return None  # all cached: a read-only cache (a shared one) serves as well
    problem = write_problem(folder)
    if problem:
        return f"--cache-dir: {problem} (pass a --cache-dir you can write to, to keep the cache)"
    return cache_room_problem(folder, needed)


def encode_latents(jobs: list[LatentJob], store: TensorStore, vae: torch.nn.Module, batch_size: int,
                   console: Console) -> tuple[int, dict[str, tuple[Path, str]]]:
    """Encode the given (missing) entries, batched per bucket, less those another run sharing the cache has written
    since they were found missing (runs of a grid started together); returns how many were encoded, and the keys
    of those whose image could no longer be read (deleted or changed since the scan) with its file and why."""
    from lowvram.models.conditioning import encode_images

    missing, encoded, unreadable = jobs, 0, {}
    if not missing:
        return 0, unreadable
    by_bucket: dict[tuple[int, int], list[LatentJob]] = {}
    for job in missing:
        by_bucket.setdefault(job.placement.bucket, []).append(job)
    f = vae_downscale(vae)
    with counted_progress(console, "caching latents") as progress, torch.no_grad(), _kept_when_stopped(
            console, store, "latents", lambda: encoded):
        task = progress.add_task("latents", total=len(missing))
        for bucket_jobs in by_bucket.values():
            for start in range(0, len(bucket_jobs), batch_size):
                chunk = _unwritten(bucket_jobs[start : start + batch_size], store, progress, task)
                if not chunk:
                    continue
                pixels, masks, read = [], [], []
                for job in chunk:  # one decoded image at a time: host RAM does not grow with the dataset
                    try:
                        image, mask = open_training_image(job.record, job.options, job.placement.bucket)
                    except LowvramError as exc:  # gone or changed during a long caching: left out, as the scan
                        unreadable[job.key] = (job.record.path, str(exc))  # leaves a bad file out, not the run
                        continue                                           # stopped
                    read.append(job)
                    pixels.append(_to_tensor(apply_variant(image, job.placement, job.variant)))
                    masks.append(None if mask is None else _mask_tensor(apply_variant(mask, job.placement,
                                                                                       job.variant)))
                if len(read) < len(chunk):  # (an advance of nothing prints its line again where no bar redraws)
                    progress.advance(task, len(chunk) - len(read))
                if not read:
                    continue
                chunk = read
                seeds = [int(job.key[:16], 16) for job in chunk]  # the key is a sha256: its own seed
                latents = encode_images(vae, torch.stack(pixels), seeds).cpu()
                for i, job in enumerate(chunk):
                    entry = {"latent": latents[i].contiguous(),
                             "time_ids": torch.tensor(sdxl_time_ids(job.record, job.placement, job.variant))}
                    if masks[i] is not None:
                        entry["mask"] = torch.nn.functional.interpolate(masks[i][None], scale_factor=1 / f,
                                                                        mode="area")[0]
                    store.save(job.key, entry)
                    encoded += 1  # (each as it is written: what a Ctrl-C says is kept)
                progress.advance(task, len(chunk))
    return encoded, unreadable


def encode_texts(jobs: list[TextJob], store: TensorStore, encode, batch_size: int, console: Console) -> int:
    """Encode the given (missing) captions, less those another run has written since (`encode_latents`);
    `encode(captions)` returns (hidden states, pooled or None). Returns how many were encoded."""
    missing, encoded = jobs, 0
    if not missing:
        return 0
    with counted_progress(console, "caching text embeddings") as progress, torch.no_grad(), _kept_when_stopped(
            console, store, "text embeddings", lambda: encoded):
        task = progress.add_task("text", total=len(missing))
        for start in range(0, len(missing), batch_size):
            chunk = _unwritten(missing[start : start + batch_size], store, progress, task)
            if not chunk:
                continue
            hidden, pooled = encode([job.caption for job in chunk])
            for i, job in enumerate(chunk):
                entry = {"hidden": hidden[i].cpu().contiguous()}
                if pooled is not None:
                    entry["pooled"] = pooled[i].cpu().contiguous()
                store.save(job.key, entry)
                encoded += 1
            progress.advance(task, len(chunk))
    return encoded


@contextlib.contextmanager
def _kept_when_stopped(console: Console, store: TensorStore, what: str, done) -> Iterator[None]:
    """On Ctrl-C while caching, the entries written so far said to be kept (`done()`: how many), for the same command
    to go on from (it said "interrupted" alone)."""
    try:
        yield
    except KeyboardInterrupt:
        if store.memory is None and done():
            console.print(f"caching stopped: the {done()} {what} encoded so far are kept in the cache, and the same "
                          "command goes on from there")
        raise


def _unwritten(batch: list, store: TensorStore, progress, task) -> list:
    """The jobs of `batch` whose entries are still not there whole (another run sharing the cache may have written
    some since: an entry is written under a temporary name and renamed), those counted done."""
    left = [job for job in batch if not store.valid(job.key)]
    if len(left) < len(batch):
        progress.advance(task, len(batch) - len(left))
    return left


def _mask_tensor(mask) -> torch.Tensor:
    """An 'L' mask as a (1, H, W) tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]


def _to_tensor(image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
