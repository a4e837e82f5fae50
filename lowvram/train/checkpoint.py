"""Resumable training state: small (no base weights), safetensors for tensors, written atomically.

A checkpoint is a folder `<output>/checkpoints/step-000500/` holding the adapters, the optimizer's tensors,
and `state.json` with everything else: scheduler, step, the data position, RNG states. It is written into a
temporary folder and renamed into place, so a kill at any moment leaves the previous checkpoint whole.
Resuming restores all of it, so an interrupted run ends with the same LoRA as an uninterrupted one
(bit-identical on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lowvram.errors import LowvramError, Refused
from lowvram.files import (
    DiskFull,
    ensure_room,
    free_bytes,
    is_disk_full,
    is_size_limit,
    make_folders,
    plain_mode,
    shared_mode,
)
from lowvram.run_files import checkpoint_name
from lowvram.train.checkpoint_folders import (
    ADAPTERS,
    EMA_PART,
    FORMAT,
    complete,
    format_refusal,
    processes_of,
    processes_refusal,
)
from lowvram.train.identity import identity


@dataclass
class Position:
    step: int  # optimizer steps done
    epoch: int  # data position: the next batch to draw
    batch: int
    validation: dict | None = None  # early stopping's state: best loss, its step, validations since
    smoothed_loss: float | None = None  # the progress line's and metrics' running mean, continued on resume
    data: dict | None = None  # the dataset it was saved with (`data_fingerprint`); None before it was kept
    settings: dict | None = None  # the options a resume may change, as they were (None before they were kept)
    last_rate: float | None = None  # the learning rate of its last step, by the schedule it was saved with


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch RNG states (CPU and every CUDA device)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def gather_rng_states(accelerator) -> list[dict[str, torch.Tensor]]:
    """Every process's RNG states, in rank order (a collective: every process calls it); each rank draws its own
    noise, so a resumed rank must continue its own stream, not rank 0's."""
    if accelerator.num_processes == 1:
        return [rng_state()]
    from accelerate.utils import gather_object

    return gather_object([rng_state()])


def save(root: Path, position: Position, modules: dict[str, torch.nn.Module], optimizer, lr_scheduler,
         accelerator, keep: int, rng_states: list[dict[str, torch.Tensor]], run_recipe: dict | None = None,
         ema=None, data: dict | None = None, settings: dict | None = None) -> Path:
    """Write a checkpoint for `position` (with every process's RNG states, from `gather_rng_states`, the moving
    average of --ema, and the dataset's `data_fingerprint`) and keep only this run's newest `keep` (by step;
    `run_recipe` says which run it is, see `lowvram.train.outdir`)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    final = root / checkpoint_name(position.step)
    adapters = {f"{name}/{key}": value.detach().cpu().contiguous()
                for name, module in modules.items() for key, value in get_peft_model_state_dict(module).items()}
    if not all(torch.isfinite(t).all() for t in adapters.values()):
        raise LowvramError("refusing to checkpoint non-finite LoRA weights; the last good checkpoint is kept")
    optimizer_tensors, optimizer_rest = _split(optimizer.state_dict())
    rng = {f"rank{rank}/{key}": value for rank, states in enumerate(rng_states) for key, value in states.items()}
    averaged = {str(i): t.detach().cpu().contiguous() for i, t in enumerate(ema.shadow_params)} if ema else {}
    size = sum(t.nbytes for part in (adapters, optimizer_tensors, rng, averaged) for t in part.values()) + 2**16
    try:
        ensure_room(root, size, f"checkpoint {final.name}")  # before writing: a full disk stops it cleanly
    except DiskFull as short:  # the checkpoints this save prunes, gone first where that makes the room (the newest
        # kept: the run resumes from it; none removed for nothing, where they would not make enough)
        pruned = [path for _, path in complete(root, run_recipe)][:-max(keep - 1, 1)]
        if sum(part.stat().st_size for old in pruned for part in old.rglob("*") if part.is_file()) \
                < short.needed - short.free:
            raise
        for old in pruned:
            shutil.rmtree(old, ignore_errors=True)
        ensure_room(root, size, f"checkpoint {final.name}")
    try:
        make_folders(root)
        tmp = Path(tempfile.mkdtemp(prefix=".step-", dir=root))
    except OSError as exc:  # (the folder gone read-only mid-run: a Drive unmounted, a share remounted)
        if is_disk_full(exc):
            raise DiskFull(root, size, free_bytes(root), f"checkpoint {final.name}", is_size_limit(exc)) from None
        kept = "the previous checkpoint is intact" if complete(root, run_recipe) else "no checkpoint was written yet"
        raise LowvramError(f"could not write checkpoint {final}: {exc.strerror or exc} in {root}; make it writable "
                           f"again, then resume ({kept})") from None
    # like every file lowvram writes: what the umask gives, not mkdtemp's 0700 (setgid kept in a group's folder)
    os.chmod(tmp, shared_mode(root, plain_mode(0o777), of_folder=True))
    try:
        save_file(adapters, str(tmp / ADAPTERS))
        save_file(optimizer_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        if ema is not None:
            save_file(averaged, str(tmp / EMA_PART))
        state = {
            "format": FORMAT, "step": position.step, "epoch": position.epoch, "batch": position.batch,
            "validation": position.validation, "smoothed_loss": position.smoothed_loss,
            "optimizer": optimizer_rest, "lr_scheduler": lr_scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "python_rng": _jsonable(random.getstate()), "numpy_rng": _jsonable(np.random.get_state()),
            "run": {"identity": identity(run_recipe), "recipe": run_recipe} if run_recipe is not None else None,
            "ema_step": ema.optimization_step if ema is not None else None, "data": data, "settings": settings,
        }
        (tmp / "state.json").write_text(json.dumps(state))
        for path in tmp.iterdir():
            with open(path, "rb+") as fh:  # Windows flushes no file opened read-only
                os.fsync(fh.fileno())
            os.chmod(path, shared_mode(tmp, plain_mode(0o666)))  # safetensors writes owner-only
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):  # the disk filled up meanwhile (another writer), or a file-size limit
            raise DiskFull(root, size, free_bytes(root), f"checkpoint {final.name}", is_size_limit(exc)) from None
        if isinstance(exc, OSError):
            raise LowvramError(f"could not write checkpoint {final}: {exc.strerror or exc}; the previous checkpoint "
                               "is intact") from None
        raise
    mine = [path for _, path in complete(root, run_recipe)]
    for old in mine[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def data_position(path: Path) -> tuple[int, int, int]:
    """Where checkpoint `path` stands: its step and its data's, the epoch and the batch in it."""
    state = json.loads((path / "state.json").read_text())
    return state["step"], state["epoch"], state["batch"]


def load(path: Path, modules: dict[str, torch.nn.Module], optimizer, lr_scheduler, accelerator, ema=None,
         settings: Collection[str] = ()) -> Position:
    """Restore everything `save` wrote; returns where training continues. `settings`: the optimizer's own
    settings (betas, weight decay, Adafactor's relative_step), kept as this run gives them: the restored state holds
    the earlier run's, and a changed one is said to train the steps from here."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if other := format_refusal(path):
        raise Refused(other)
    rng = load_file(str(path / "rng.safetensors"))
    # each process's random state and share of the data: another count would continue another run (every process
    # reads the same file, so every one stops here, before any step)
    saved_by = processes_of(path)
    if saved_by is not None and saved_by != accelerator.num_processes:
        raise Refused(processes_refusal(path, saved_by, accelerator.num_processes))
    adapters = load_file(str(path / ADAPTERS))
    for name, module in modules.items():
        prefix = f"{name}/"
        part = {k[len(prefix):]: v for k, v in adapters.items() if k.startswith(prefix)}
        if not part:
            raise Refused(f"--resume: {path} has no adapter for {name}; was it saved by a run with other "
                               "--train-text-encoder / network options?")
        device = next(p for p in module.parameters() if p.requires_grad).device
        set_peft_model_state_dict(module, {k: v.to(device) for k, v in part.items()})
    rates = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]  # this run's --lr
    own = [{key: group[key] for key in settings if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(_join(load_file(str(path / "optimizer.safetensors")), state["optimizer"]))
    for group, given in zip(optimizer.param_groups, own):
        group.update(given)
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    _with_rates(optimizer, lr_scheduler, rates)
    if ema is not None:
        if not (path / EMA_PART).is_file():
            raise Refused(f"--resume: {path} holds no --ema average; resume it without --ema, or start anew")
        averaged = load_file(str(path / EMA_PART))
        for i, shadow in enumerate(ema.shadow_params):
            shadow.copy_(averaged[str(i)])
        ema.optimization_step = state["ema_step"]
    if state["scaler"] is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    prefix = f"rank{accelerator.process_index}/"
    mine = {k[len(prefix):]: v for k, v in rng.items() if k.startswith(prefix)}
    torch.set_rng_state(mine["torch"])
    if torch.cuda.is_available():
        for index, cuda_state in cuda_rng_states(mine, torch.cuda.device_count()):
            torch.cuda.set_rng_state(cuda_state, index)
    random.setstate(_tuples(state["python_rng"]))
    np.random.set_state(_numpy_state(state["numpy_rng"]))
    return Position(state["step"], state["epoch"], state["batch"], state.get("validation"), state.get("smoothed_loss"),
                    state.get("data"), state.get("settings"), (state["lr_scheduler"].get("_last_lr") or [None])[0])


def data_fingerprint(records: list, held_out: Collection[str] = ()) -> dict[str, str]:
    """Each image's content and caption, and whether it is held out for validation (`held_out`: their relpaths),
    by its path: what a checkpoint keeps of the dataset, so that a resumed run can tell the dataset changed since
    (its data position would then continue another order)."""
    return {record.relpath: f"{record.sha256[:16]}/{hashlib.sha256(record.caption.encode()).hexdigest()[:12]}"
                            f"/{'held out' if record.relpath in held_out else 'trained'}" for record in records}


def data_changes(then: dict | None, now: dict[str, str]) -> str | None:
    """What changed in the dataset since a checkpoint, in words ('2 images added, 1 caption changed'); None when
    nothing did, or the checkpoint kept no fingerprint."""
    if then is None or then == now:
        return None
    kept = now.keys() & then.keys()
    parts = [(len(now.keys() - then.keys()), "image", "added"), (len(then.keys() - now.keys()), "image", "removed"),
             (sum(now[p].split("/")[0] != then[p].split("/")[0] for p in kept), "image", "replaced"),
             (sum(now[p].split("/")[1] != then[p].split("/")[1] for p in kept), "caption", "changed"),
             (sum(_role(then[p]) is not None and _role(now[p]) != _role(then[p]) for p in kept), "image",
              "held out for validation or back in training")]
    return ", ".join(f"{n} {noun}{'s' * (n > 1)} {verb}" for n, noun, verb in parts if n) or None


def reordered(then: dict | None, now: dict[str, str]) -> bool:
    """Whether the images that train changed since a checkpoint (added, removed, or held out otherwise), so that
    its data position continues another order."""
    if then is None:
        return False
    return then.keys() != now.keys() or any(_role(then[p]) is not None and _role(now[p]) != _role(then[p])
                                            for p in now.keys() & then.keys())


def _role(facts: str) -> str | None:
    """'trained' or 'held out', where the fingerprint says (one from before it did: None)."""
    parts = facts.split("/")
    return parts[2] if len(parts) > 2 else None


def cuda_rng_states(saved: dict[str, torch.Tensor], device_count: int) -> list[tuple[int, torch.Tensor]]:
    """(device index, state) of each saved `cuda<N>` state whose device is here: by number, where sorting the
    names would put cuda10 before cuda2, and a machine with fewer GPUs than the one that saved skips the rest."""
    indices = sorted(int(name.removeprefix("cuda")) for name in saved if name.startswith("cuda"))
    return [(index, saved[f"cuda{index}"]) for index in indices if index < device_count]


def _with_rates(optimizer, lr_scheduler, rates: list[float]) -> None:
    """This run's learning rates (--lr may change on resume) on its schedule at the restored step: the restored
    state holds the earlier run's. Unchanged, they are the same floats the schedule's own step computes."""
    lr_scheduler.base_lrs = list(rates)
    for group, rate, factor in zip(optimizer.param_groups, rates, lr_scheduler.lr_lambdas):
        group["initial_lr"] = rate
        group["lr"] = rate * factor(lr_scheduler.last_epoch)
    lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _split(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state -> (tensors keyed by their path 'state/<param>/<name>[/<inner>...]', the JSON-able
    rest). Nested dicts (bitsandbytes keeps its quantization state in one) are walked. A tensor held under several
    parameters (bitsandbytes' quantization maps, one for all) is written once, and the others refer to it:
    safetensors refuses tensors that share memory."""
    tensors: dict[str, torch.Tensor] = {}
    written: dict[int, str] = {}  # id of a tensor already taken -> its path

    def walk(value, path: str):
        if isinstance(value, torch.Tensor):
            if id(value) in written:
                return {"__tensor__": written[id(value)]}
            written[id(value)] = path
            tensors[path] = value.detach().to("cpu", copy=True).contiguous()  # its own memory, even on the CPU
            return {"__tensor__": path}
        if isinstance(value, dict):
            return {str(k): walk(v, f"{path}/{k}") for k, v in value.items()}
        return value

    state = {str(param_id): walk(entries, f"state/{param_id}") for param_id, entries in state_dict["state"].items()}
    return tensors, {"param_groups": state_dict["param_groups"], "state": state}


def _join(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    def unwalk(value):
        if isinstance(value, dict):
            if set(value) == {"__tensor__"}:
                return tensors[value["__tensor__"]]
            return {k: unwalk(v) for k, v in value.items()}
        return value

    return {"state": {int(k): unwalk(v) for k, v in rest["state"].items()}, "param_groups": rest["param_groups"]}


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _numpy_state(value):
    name, keys, pos, has_gauss, cached = value
    return name, np.array(keys["ndarray"], dtype=keys["dtype"]), pos, has_gauss, cached
