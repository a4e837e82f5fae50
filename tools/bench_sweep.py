"""One process, one model family, every strategy the planner may choose: the GPU proof's measurements.

    python tools/bench_sweep.py --family sd15 --out /tmp/sweep-sd15.jsonl
    python tools/bench_sweep.py --family tiny --device cpu --out /tmp/sweep-tiny.jsonl   # rehearsal, no GPU

A fresh process per strategy spends half a minute loading and converting SDXL; this one makes each strategy's
full-size U-Net with random weights directly on the GPU (memory and speed do not depend on the values),
converts it there, trains `--warmup` + `--steps` steps at each batch size from cached-style inputs (latents and
text embeddings, as lowvram trains after caching), frees everything and resets the peak statistics before the
next. Each measurement is one JSON line, appended and flushed as it is made, so a run cut short keeps what it
measured. First the usual way (diffusers' example defaults) at each batch size, then the strategies, most telling
first. `tools/bench_gpu_proof.py` checks two of them against a fresh process of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_memory

# (storage, checkpointing, optimizer, mixed precision, at every batch size or the first only): the planner's
# candidates, the likeliest choices first (then the planner's picks per budget, and W8A8, which #14 asks to be
# faster than bf16), at every batch; then, at batch 1 only, one AdamW pair (the
# optimizer's cost) and the fp16 way a T4 trains (it has no bf16)
SWEEP = [
    ("native", False, "adamw8bit", "bf16", True), ("native", True, "adamw8bit", "bf16", True),
    ("w8a8-fp8", False, "adamw8bit", "bf16", True), ("w8a8-int8", False, "adamw8bit", "bf16", True),
    ("w8a8-fp8", True, "adamw8bit", "bf16", True), ("w8a8-int8", True, "adamw8bit", "bf16", True),
    ("bnb-nf4", True, "adamw8bit", "bf16", True), ("fp8", True, "adamw8bit", "bf16", True),
    ("quanto-int4", True, "adamw8bit", "bf16", True), ("fp8", False, "adamw8bit", "bf16", True),
    ("bnb-nf4", False, "adamw8bit", "bf16", True), ("quanto-int4", False, "adamw8bit", "bf16", True),
    ("native", False, "adamw", "bf16", False), ("native", True, "adamw", "bf16", False),
    ("native", False, "adamw8bit", "fp16", False), ("native", True, "adamw8bit", "fp16", False),
    ("bnb-nf4", True, "adamw8bit", "fp16", False), ("fp8", True, "adamw8bit", "fp16", False),
    # the model's own prediction (--prior-prediction, --masked-prior-weight): its extra forward pass's cost
    ("native", False, "adamw8bit", "bf16", True, "own-prediction"),
    # --compile, last (its warm-up is long): the same strategies compiled, for the planner's compile ratio
    ("native", False, "adamw8bit", "bf16", True, "compiled"), ("native", True, "adamw8bit", "bf16", True, "compiled"),
    # --cuda-graphs: the compiled blocks' training passes replayed as CUDA graphs, against the compiled run above
    ("native", False, "adamw8bit", "bf16", True, "compiled", "graphs"),
]
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "no": "float32"}


def random_unet(family, device, dtype):
    return bench_memory.random_components(family, device, dtype, ("unet",))["unet"]


def strategy_name(weights: str, checkpointing: bool | int, optimizer: str, mixed_precision: str,
                  compiled: bool = False, own_prediction: bool = False, graphs: bool = False) -> str:
    name = bench_memory.strategy_name(weights, checkpointing, optimizer)
    name = name if mixed_precision == "bf16" else f"{name},{mixed_precision}"
    name = f"{name},own-prediction" if own_prediction else name
    name = f"{name},compiled" if compiled else name
    return f"{name},graphs" if graphs else name


def measure(family, device, weights: str, checkpointing: bool | int, optimizer_name: str, mixed_precision: str,
            resolution: int, batches: list[int], steps: dict[int, int], warmup: int, rank: int,
            compiled: bool = False, own_prediction: bool = False, graphs: bool = False):
    """Yield one result per batch size for one strategy, on one freshly made and converted U-Net."""
    import torch

    from lowvram.adapters.networks import add_adapter, cast_inputs
    from lowvram.attention import set_attention
    from lowvram.checkpointing import enable_checkpointing
    from lowvram.compiling import compile_blocks
    from lowvram.optim import build_optimizer
    from lowvram.plan.estimate import checkpoint_unit_names
    from lowvram.quant import convert_frozen, place, storage_bytes

    cuda = device.type == "cuda"
    compute = getattr(torch, DTYPES[mixed_precision]) if cuda else torch.float32
    units = None if isinstance(checkpointing, bool) else checkpointing
    common = {"strategy": strategy_name(weights, checkpointing, optimizer_name, mixed_precision, compiled,
                                        own_prediction, graphs),
              "compiled": compiled, "cuda_graphs": graphs, "own_prediction": own_prediction,
              "unet_weights": weights, "gradient_checkpointing": bool(checkpointing), "checkpoint_units": units,
              "optimizer": optimizer_name,
              "mixed_precision": mixed_precision if cuda else "no", "offload_activations": False,
              "family": family.name, "resolution": resolution, "rank": rank, "budget_gb": 0}
    started = time.perf_counter()
    try:
        unet = random_unet(family, device, compute)
        convert_frozen(unet, weights, compute)  # on the device: the run converts on the host, then places
        place(unet, device)
        set_attention(unet, "auto")
        if checkpointing:
            enable_checkpointing(unet, checkpoint_unit_names(family, units))
        params = add_adapter(unet, family.lora_targets("unet"), rank, rank, 0.0)
        cast_inputs(unet, cast=not cuda)  # as training sets it: no input casts under autocast
        if compiled:  # the warm-up steps pay for the compilation, as a run's first steps do
            compile_blocks(unet, len(batches), cuda_graphs=graphs)  # one fixed shape per batch size
        for p in params if graphs else ():  # kept, as the run keeps them (see lowvram.train.setup.Trainee)
            p.grad = torch.zeros_like(p)
        optimizer = build_optimizer(optimizer_name, [{"params": params, "lr": 1e-4}], weight_decay=0.0)
        scaler = torch.amp.GradScaler(enabled=mixed_precision == "fp16" and cuda)
        common.update(unet_bytes=storage_bytes(unet), lora_params=sum(p.numel() for p in params),
                      convert_seconds=round(time.perf_counter() - started, 1))
    except Exception as exc:  # noqa: BLE001 - a backend that cannot convert is a result, not the end
        for batch in batches:  # a row per batch size, as every other result (the tables sort rows by it)
            yield {**common, "batch": batch, "ok": False,
                   "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        return
    for batch in batches:
        result = {**common, "batch": batch}
        try:
            step = bench_memory.cached_style_step(unet, family, resolution, batch, compute, device, optimizer,
                                                  scaler, own_prediction=own_prediction, gradients_kept=graphs)
            if cuda:  # the bf16 weights converted away are no part of training's peak (PhasePeaks frees them too)
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            result.update(ok=True, **bench_memory.timed_steps(step, steps[batch], warmup, cuda))
            if cuda:
                result["peak_allocated"] = torch.cuda.max_memory_allocated()
                result["peak_reserved"] = torch.cuda.max_memory_reserved()
            result["estimated_peak_allocated"] = bench_memory.planner_estimate(
                family, resolution, batch, rank, weights, checkpointing, optimizer_name, False, mixed_precision)
        except Exception as exc:  # noqa: BLE001 - an out-of-memory or a kernel's refusal is this run's result
            result.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        yield result
        optimizer.zero_grad(set_to_none=True)
    del unet, params, optimizer


def with_picks(family, resolution: int, args) -> list[tuple]:
    """SWEEP with the planner's picks at each --budgets GB and batch added after the first two entries, where
    SWEEP lacks them, as the calibration stands and as it would once every strategy is seen: what the proof
    compares against the fastest step must have been measured."""
    from lowvram.hardware import hardware_for
    from lowvram.plan.estimate import Workload
    from lowvram.plan.planner import plan

    picks = []
    for budget, batch, seen_only in itertools.product([b for b in args.budgets if b > 0], args.batches, (True, False)):
        work = Workload(family, resolution, batch, args.rank, sampling=False)
        choice = plan(work, hardware_for(None, f"{budget:g}GB", "128GB"), {}, seen_only=seen_only).choice
        if choice is None:
            continue
        s = choice.strategy
        checkpointing = s.checkpoint_units if s.selective else s.gradient_checkpointing
        weights = "native" if s.unet_weights == "bf16" else s.unet_weights
        entry = (weights, checkpointing, s.optimizer, "bf16", True)
        if entry not in SWEEP and entry not in picks:
            picks.append(entry)
    return [*SWEEP[:2], *picks, *SWEEP[2:]]


class StrategyTimeout(BaseException):
    """Past --strategy-limit: not an Exception, which a measurement catches as its own result and goes on from."""


@contextmanager
def time_limit(seconds: int):
    """StrategyTimeout once `seconds` have passed (0: no limit): one strategy that compiles for minutes, or waits on
    a CUDA extension's build lock another process left, must not take the rest of the sweep with it. Python runs
    the handler between bytecodes, so a kernel in flight finishes first."""
    def expire(signum, frame):
        raise StrategyTimeout(f"stopped after {seconds} s (--strategy-limit)")

    previous = signal.signal(signal.SIGALRM, expire) if seconds else None
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        if previous is not None:
            signal.signal(signal.SIGALRM, previous)


def free(cuda: bool) -> None:
    import torch

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", required=True, choices=("sd15", "sdxl", "tiny", "tiny-sdxl"))
    parser.add_argument("--resolution", type=int, help="default: the family's")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--steps", nargs="+", type=int, default=[3, 2], help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--deadline", type=float, default=0, help="seconds after which no strategy starts (0: none)")
    parser.add_argument("--strategy-limit", type=int, default=0,
                        help="seconds one strategy (or baseline) may take, all its batch sizes together (0: none)")
    parser.add_argument("--budgets", nargs="*", type=float, default=[],
                        help="GB: also sweep the planner's pick at each (selective checkpointing is chosen per budget)")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended as they are measured")
    args = parser.parse_args()
    import torch

    from lowvram.models import FAMILIES
    from lowvram.plan import NATIVE_FORMAT

    family, device = FAMILIES[args.family], torch.device(args.device)
    cuda = device.type == "cuda"
    resolution = args.resolution or family.resolution
    steps = dict(zip(args.batches, args.steps))
    started = time.monotonic()
    context = 0
    if cuda:
        torch.cuda.init()
        free_bytes, total = torch.cuda.mem_get_info()
        context = total - free_bytes
    with open(args.out, "a", encoding="utf-8") as out:
        def emit(result: dict) -> None:
            result = {**result, "context_bytes": context, "seconds_into_sweep": round(time.monotonic() - started)}
            if result.get("peak_reserved"):
                result["peak_reserved_plus_context"] = result["peak_reserved"] + context
            if cuda:  # the GPU memory the allocator does not hold, now: the context at the start plus the kernel
                # images (cuBLAS, bitsandbytes, Marlin, Triton) loaded since, on a GPU this process has to itself
                with contextlib.suppress(Exception):  # a CUDA fault that failed this strategy: its row still goes
                    free_now, total_now = torch.cuda.mem_get_info()
                    result["outside_allocator_bytes"] = total_now - free_now - torch.cuda.memory_reserved()
            out.write(json.dumps(result) + "\n")
            out.flush()
            print(json.dumps(result), flush=True)

        for batch in args.batches:
            usual = {"strategy": "baseline (diffusers example defaults)", "family": family.name, "batch": batch}
            try:
                with time_limit(args.strategy_limit):
                    result = bench_memory.run_baseline_here(family, resolution, steps[batch], args.warmup, batch,
                                                            args.rank, device)
            except (Exception, StrategyTimeout) as exc:  # noqa: BLE001 - beyond out-of-memory: the strategies go on
                result = {**usual, "ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            emit({**result, "kind": "baseline"})
            free(cuda)
        for weights, checkpointing, optimizer, mixed_precision, every_batch, *extra in with_picks(family, resolution,
                                                                                                args):
            compiled, own_prediction, graphs = "compiled" in extra, "own-prediction" in extra, "graphs" in extra
            if not cuda and (mixed_precision != "bf16" or compiled):
                continue  # the CPU computes in fp32 only; compiling here would only rehearse the compiler
            if args.deadline and time.monotonic() - started > args.deadline:
                emit({"kind": "not run", "strategy": strategy_name(weights, checkpointing, optimizer,
                                                                   mixed_precision, compiled, own_prediction,
                                                                   graphs)})
                continue
            if weights == "native":  # the U-Net stored as the run computes (the CPU: fp32)
                weights = NATIVE_FORMAT[mixed_precision if cuda else "no"]
            batches = args.batches if every_batch else args.batches[:1]
            name = strategy_name(weights, checkpointing, optimizer, mixed_precision, compiled, own_prediction, graphs)
            measured = []
            try:
                with time_limit(args.strategy_limit):
                    for result in measure(family, device, weights, checkpointing, optimizer, mixed_precision,
                                          resolution, batches, steps, args.warmup, args.rank, compiled,
                                          own_prediction, graphs):
                        emit({**result, "kind": "strategy"})
                        measured.append(result.get("batch"))
            except StrategyTimeout as exc:  # the batch sizes measured before it are written already
                cut = next((batch for batch in batches if batch not in measured), None)
                if cut is not None:  # None: it fired after the last batch size was measured and written
                    emit({"strategy": name, "family": family.name, "batch": cut, "ok": False,
                          "error": f"StrategyTimeout: {exc}", "kind": "strategy"})
            free(cuda)


if __name__ == "__main__":
    main()
