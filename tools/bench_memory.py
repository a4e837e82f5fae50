"""Measure the training step's GPU memory and speed per memory strategy, under a VRAM budget.

Builds the full-size SD1.5 or SDXL U-Net with random weights (memory and speed do not depend on the
values), converts it to the strategy's storage format, adds a rank-16 LoRA, and runs real training steps
from cached-style inputs (latents and text embeddings, as lowvram trains after its caching phase) under
`torch.cuda.set_per_process_memory_fraction(budget / total)`. Each (strategy, budget) runs in its own
subprocess, so peaks and the CUDA context are measured cleanly and an out-of-memory ends only that run.

    python tools/bench_memory.py --family sd15 --resolution 512 --budgets 2 4 6 8 --out benchmarks/sd15.json
    python tools/bench_memory.py --family sdxl --resolution 1024 --budgets 4 12 16 0 --strategies nf4-ckpt
    python tools/bench_memory.py --family tiny --resolution 64 --device cpu --steps 2   # smoke test, no GPU

Each run also records `estimated_peak_allocated`, what `lowvram plan` predicts for the same step, so the
results are the planner's calibration data (estimate vs measured peak allocated).

Budget 0 means unlimited. The JSON records the command, commit, device, driver and library versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name -> (unet_weights, gradient_checkpointing, optimizer)
STRATEGIES = {
    "fp16": ("fp16", False, "adamw"),
    "bf16": ("bf16", False, "adamw"),
    "bf16-ckpt": ("bf16", True, "adamw8bit"),
    "fp8-ckpt": ("fp8", True, "adamw8bit"),
    "int8-ckpt": ("quanto-int8", True, "adamw8bit"),
    "nf4-ckpt": ("bnb-nf4", True, "adamw8bit"),
    "int4-ckpt": ("quanto-int4", True, "adamw8bit"),
}
GIB = 1024**3
ROOT = Path(__file__).resolve().parents[1]


def parse_strategy(name: str) -> tuple[str, bool, str, bool]:
    """A named strategy, or any the planner can choose written as 'weights,ckpt|nockpt,optimizer[,offload]'
    (offload: saved activations in pinned host RAM, --offload-activations)."""
    if name in STRATEGIES:
        return (*STRATEGIES[name], False)
    weights, checkpointing, optimizer, *rest = name.split(",")
    return weights, checkpointing == "ckpt", optimizer, rest == ["offload"]


def strategy_name(weights: str, checkpointing: bool | int, optimizer: str) -> str:
    """weights,ckpt|nockpt|ckptN,optimizer (N: selective checkpointing of the first N units)."""
    units = "" if isinstance(checkpointing, bool) else str(checkpointing)
    return f"{weights},{'ckpt' if checkpointing else 'nockpt'}{units},{optimizer}"


def timed_steps(step, steps: int, warmup: int, cuda: bool) -> dict:
    """Run `step` warmup + steps times; the median seconds of the timed ones (the GPU synchronized), the first
    step's seconds and the last loss."""
    import torch

    times, loss = [], None
    for index in range(warmup + steps):
        start = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    # the first step pays for what is done once per shape (a compiled run's compilation)
    return {"seconds_per_step": statistics.median(times[warmup:]), "first_step_seconds": round(times[0], 3),
            "loss": loss}


def cap(result: dict, budget_gb: float) -> None:
    """Record the CUDA context (driver and context, before anything of ours) and hold the process to the budget."""
    import torch

    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    result["context_bytes"] = total - free
    if budget_gb:
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gb * GIB / total))


def finish(result: dict, cuda: bool) -> dict:
    """The run's peaks: GPU allocated and reserved (plus the context), and the host's resident set."""
    import resource

    import torch

    if cuda:
        result["peak_allocated"] = torch.cuda.max_memory_allocated()
        result["peak_reserved"] = torch.cuda.max_memory_reserved()
        result["peak_reserved_plus_context"] = result["peak_reserved"] + result["context_bytes"]
    result["host_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def random_module(build, device, dtype, seed: int = 0):
    """`build()` on the meta device, then storage on `device` filled with N(0, 0.02): seconds for SDXL on a GPU
    (memory and speed do not depend on the weights' values)."""
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # buffers (CLIP's position ids) keep their real values
        module = build()
    buffers = {name: tensor.clone() for name, tensor in module.named_buffers()}
    module = module.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for tensor in module.parameters():
            tensor.normal_(0.0, 0.02, generator=generator)
        for norm in module.modules():  # as initialized: norms with weights of 0.02 shrink activations to
            if isinstance(norm, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and norm.weight is not None:
                norm.weight.fill_(1.0)  # denormals, which a CPU computes a hundred times slower
        for name, value in buffers.items():
            module.get_buffer(name).copy_(value)
    return module


def random_components(family, device, dtype, names: tuple[str, ...]) -> dict:
    """The family's pipeline components `names` (unet, vae, text encoders, tokenizers), random, made on `device`."""
    import importlib

    root = family.config_dir
    index = json.loads((root / "model_index.json").read_text())
    parts = {}
    for name in names:
        library, class_name = index[name]
        cls = getattr(importlib.import_module(library), class_name)
        if class_name.endswith("Tokenizer"):
            parts[name] = cls.from_pretrained(root, subfolder=name)
        elif library == "diffusers":
            config = cls.load_config(root, subfolder=name)
            parts[name] = random_module(lambda cls=cls, config=config: cls.from_config(config), device, dtype)
        else:
            config = cls.config_class.from_pretrained(root, subfolder=name)
            parts[name] = random_module(lambda cls=cls, config=config: cls(config), device, dtype)
    return parts


def update(loss, optimizer, scaler, gradients_kept: bool = False) -> float:
    """Backward and an optimizer step through the grad scaler (a no-op one outside fp16); the loss. Kept
    gradients are zeroed in place, as a --cuda-graphs run keeps them (lowvram.train.setup.Trainee)."""
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=not gradients_kept)
    return loss.item()


def cached_style_step(unet, family, resolution: int, batch: int, compute, device, optimizer, scaler=None,
                      offload: bool = False, own_prediction: bool = False, gradients_kept: bool = False):
    """One training step as lowvram runs it after caching (latents and text embeddings as inputs), as a function
    returning the loss; with `own_prediction`, every image trained toward the model's own prediction
    (--prior-prediction's extra forward pass)."""
    import torch
    from diffusers import DDPMScheduler

    from lowvram.memory import ActivationsToHost
    from lowvram.models.conditioning import unet_conditioning
    from lowvram.train.loss import diffusion_loss, sample_noise, sample_timesteps

    cuda = device.type == "cuda"
    scheduler = DDPMScheduler.from_pretrained(family.config_dir, subfolder="scheduler")
    f = 8 if family.name in ("sd15", "sdxl") else 2
    latents = torch.randn(batch, 4, resolution // f, resolution // f, device=device, dtype=compute)
    hidden = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device, dtype=compute)
    pooled = torch.randn(batch, 1280 if family.name == "sdxl" else 32, device=device, dtype=compute)
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch, device=device)
    conditioning = unet_conditioning(family, hidden, pooled if family.size_conditioning else None, time_ids)
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    prior = torch.ones(batch, dtype=torch.bool, device=device) if own_prediction else None

    def step() -> float:
        saving = ActivationsToHost(unet, pin_memory=cuda) if offload else contextlib.nullcontext()
        with torch.autocast(device.type, dtype=compute, enabled=cuda), saving:
            noise = sample_noise(latents, 0.0)
            loss = diffusion_loss(unet, scheduler, latents, conditioning, noise,
                                  sample_timesteps(scheduler, batch, device), prior=prior)
        return update(loss, optimizer, scaler, gradients_kept)

    return step


def run_one(family_name: str, resolution: int, strategy: str, budget_gb: float, steps: int, warmup: int,
            batch: int, rank: int, device_name: str, model_dir: str | None = None) -> dict:
    """One measurement, in this process, the way `lowvram train` gets there: the U-Net converted on the host,
    then placed on the device. With `model_dir` (a diffusers folder of random weights, written once) the U-Net
    is read from it, memory-mapped, instead of filled with random numbers again."""
    import torch

    from lowvram.adapters.networks import add_adapter, cast_inputs
    from lowvram.attention import set_attention
    from lowvram.models import FAMILIES
    from lowvram.models.loading import random_unet
    from lowvram.optim import build_optimizer
    from lowvram.quant import convert_frozen, place, storage_bytes

    weights, checkpointing, optimizer_name, offload = parse_strategy(strategy)
    family = FAMILIES[family_name]
    device = torch.device(device_name)
    result = {"strategy": strategy, "unet_weights": weights, "gradient_checkpointing": checkpointing,
              "optimizer": optimizer_name, "offload_activations": offload, "budget_gb": budget_gb, "family": family_name,
              "resolution": resolution, "batch": batch, "rank": rank}
    cuda = device.type == "cuda"
    if cuda:
        cap(result, budget_gb)
    from lowvram.hardware import has_native_bf16

    native_bf16 = cuda and has_native_bf16(torch.cuda.get_device_properties(device).major)
    compute = torch.bfloat16 if native_bf16 else (torch.float16 if cuda else torch.float32)
    result["mixed_precision"] = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "no"}[compute]
    try:
        dtype = compute if weights not in ("fp32",) else torch.float32
        if model_dir:
            from diffusers import UNet2DConditionModel

            unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=dtype)
        else:
            unet = random_unet(family, dtype=dtype)
        convert_frozen(unet, weights, compute)
        place(unet, device)
        result["unet_bytes"] = storage_bytes(unet)
        result["attention"] = set_attention(unet, "auto")
        if checkpointing:
            unet.enable_gradient_checkpointing()
        params = add_adapter(unet, family.lora_targets("unet"), rank, rank, 0.0)
        cast_inputs(unet, cast=not cuda)  # as training sets it: no input casts under autocast
        result["lora_params"] = sum(p.numel() for p in params)
        optimizer = build_optimizer(optimizer_name, [{"params": params, "lr": 1e-4}], weight_decay=0.0)
        step = cached_style_step(unet, family, resolution, batch, compute, device, optimizer, offload=offload)
        if cuda:  # the bf16 weights converted away are no part of training's peak (PhasePeaks frees them too)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result.update(ok=True, **timed_steps(step, steps, warmup, cuda))
        result["estimated_peak_allocated"] = planner_estimate(family, resolution, batch, rank, weights,
                                                              checkpointing, optimizer_name, offload,
                                                              result["mixed_precision"])
    except torch.OutOfMemoryError as exc:
        result.update(ok=False, error=f"out of memory: {str(exc).splitlines()[0]}")
    return finish(result, cuda)


def run_baseline_here(family, resolution: int, steps: int, warmup: int, batch: int, rank: int, device) -> dict:
    """The usual way, as diffusers' train_text_to_image_lora(_sdxl).py does by default: every part in fp16 on
    the GPU, the VAE and the text encoder(s) run on every step (no caches), fp32 LoRA on the U-Net, AdamW,
    no gradient checkpointing, PyTorch's default attention (SDPA). Random weights made on the device."""
    import torch
    from diffusers import DDPMScheduler

    from lowvram.adapters.networks import add_adapter
    from lowvram.models.conditioning import encode_images, encode_prompts, unet_conditioning
    from lowvram.train.loss import diffusion_loss, sample_noise, sample_timesteps

    cuda = device.type == "cuda"
    result = {"strategy": "baseline (diffusers example defaults)", "family": family.name, "resolution": resolution,
              "batch": batch, "rank": rank, "mixed_precision": "fp16" if cuda else "no"}
    dtype = torch.float16 if cuda else torch.float32
    names = ("unet", "vae", *[n for spec in family.text_encoders for n in (spec.component, spec.tokenizer)])
    try:
        parts = random_components(family, device, dtype, names)
        unet, vae = parts["unet"], parts["vae"]
        encoders = [parts[spec.component] for spec in family.text_encoders]
        tokenizers = [parts[spec.tokenizer] for spec in family.text_encoders]
        for module in (unet, vae, *encoders):
            module.requires_grad_(False)
        if family.name in ("sdxl", "tiny-sdxl"):
            vae.to(dtype=torch.float32)  # the example keeps SDXL's VAE in fp32 (it overflows in fp16)
        params = add_adapter(unet, family.lora_targets("unet"), rank, rank, 0.0)  # fp32 trainables, as the example
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        scheduler = DDPMScheduler.from_pretrained(family.config_dir, subfolder="scheduler")
        pixels = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
        captions = ["a photo of a cat sitting on a chair"] * batch
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch, device=device)
        scaler = torch.amp.GradScaler(enabled=cuda)
        if cuda:  # SDXL's fp16 VAE, cast to fp32, is no part of the peak
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

        def step() -> float:
            with torch.no_grad():  # in the frozen parts' own dtypes, outside autocast, as the examples run them
                latents = encode_images(vae, pixels).to(dtype)
                hidden, pooled = encode_prompts(family, encoders, tokenizers, captions, device)
            with torch.autocast(device.type, dtype=dtype, enabled=cuda):
                conditioning = unet_conditioning(family, hidden, pooled, time_ids)
                loss = diffusion_loss(unet, scheduler, latents, conditioning, sample_noise(latents, 0.0),
                                      sample_timesteps(scheduler, batch, device))
            return update(loss, optimizer, scaler)

        result.update(ok=True, **timed_steps(step, steps, warmup, cuda))
        if cuda:
            result["peak_allocated"] = torch.cuda.max_memory_allocated()
            result["peak_reserved"] = torch.cuda.max_memory_reserved()
    except torch.OutOfMemoryError as exc:
        result.update(ok=False, error=f"out of memory: {str(exc).splitlines()[0]}")
    return result


def planner_estimate(family, resolution: int, batch: int, rank: int, weights: str, checkpointing: bool | int,
                     optimizer: str, offload: bool = False, mixed_precision: str = "bf16") -> int | None:
    """What `lowvram plan` predicts for this training step, comparable to max_memory_allocated (no CUDA
    context, no fragmentation margin): the calibration record for the estimator."""
    from lowvram.hardware import hardware_for
    from lowvram.plan.estimate import MemoryStrategy, Workload, estimate

    if weights == "fp32":
        return None
    mixed_precision = "bf16" if mixed_precision == "no" else mixed_precision  # a CPU rehearsal: the GPU's plan
    est = estimate(Workload(family, resolution, batch, rank, sampling=False, native_format=mixed_precision,
                            mixed_precision=mixed_precision, offload_activations=offload),
                   MemoryStrategy(weights, bool(checkpointing), optimizer,
                                  None if isinstance(checkpointing, bool) else checkpointing),
                   hardware_for(None, "80GB", "128GB"))
    return sum(v for k, v in est.vram["training"].items() if k not in ("context", "fragment."))


def measure(family: str, resolution: int, strategy: str, budget: float, steps: int, warmup: int, batch: int,
            rank: int, device: str, model_dir: str | None = None, timeout: float | None = None) -> dict:
    """One run in a subprocess of its own: clean peaks, and an out-of-memory, a crash or a hang (`timeout`
    seconds) ends only it."""
    cmd = [sys.executable, __file__, "--one", "--family", family, "--resolution", str(resolution), "--strategies",
           strategy, "--budgets", str(budget), "--steps", str(steps), "--warmup", str(warmup), "--batch", str(batch),
           "--rank", str(rank), "--device", device]
    if model_dir:
        cmd += ["--model-dir", str(model_dir)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"strategy": strategy, "budget_gb": budget, "ok": False, "error": f"timed out after {timeout:.0f} s"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"strategy": strategy, "budget_gb": budget, "ok": False,
                "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}


UNKNOWN_COMMIT = "unknown: not a git checkout (set LOWVRAM_COMMIT to the commit copied)"


def commit(root: Path = ROOT, from_environment: bool = True) -> str:
    """The commit of the code in `root` (this tree): LOWVRAM_COMMIT where it is set (a device machine runs a copy
    of the tree without its git metadata), else the checkout's HEAD. A copy inside another repository is not that
    one's HEAD: the first GPU results recorded a stranger's commit so."""
    if from_environment and os.environ.get("LOWVRAM_COMMIT"):
        return os.environ["LOWVRAM_COMMIT"]
    root = root.resolve()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    top = git("rev-parse", "--show-toplevel")
    return git("rev-parse", "HEAD") if top and Path(top).resolve() == root else UNKNOWN_COMMIT


def write_result(result: dict, out: Path | None, indent: int = 1) -> None:
    """A benchmark's result: printed, and written to `out` (its folder made) when given."""
    text = json.dumps(result, indent=indent)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def environment() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("diffusers", "transformers", "accelerate", "peft", "bitsandbytes", "optimum.quanto"):
        try:
            info[name] = __import__(name, fromlist=["__version__"]).__version__
        except Exception:  # noqa: BLE001 - report what is there
            info[name] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["total_memory"] = torch.cuda.get_device_properties(0).total_memory
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False)
        info["driver"] = smi.stdout.strip() or None
    else:
        info["device"] = "cpu"
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="sd15", choices=("sd15", "sdxl", "tiny", "tiny-sdxl"))
    parser.add_argument("--resolution", type=int, default=None, help="default: the family's")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                        help=f"named ({', '.join(STRATEGIES)}) or 'weights,ckpt|nockpt,optimizer'; 'baseline' "
                        "runs the diffusers-example way (see run_baseline)")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0], help="GiB; 0 = unlimited")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model-dir", help="a diffusers folder of the family with random weights to read the U-Net "
                        "from (see tools/bench_host_ram.py --write-only); default: fill one with random numbers")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from lowvram.models import FAMILIES

    resolution = args.resolution or FAMILIES[args.family].resolution
    if args.one:
        if args.strategies[0] == "baseline":
            import torch

            result = {"budget_gb": args.budgets[0]}
            if args.device == "cuda":
                cap(result, args.budgets[0])
            result.update(run_baseline_here(FAMILIES[args.family], resolution, args.steps, args.warmup, args.batch,
                                            args.rank, torch.device(args.device)))
            print(json.dumps(finish(result, args.device == "cuda")))
        else:
            print(json.dumps(run_one(args.family, resolution, args.strategies[0], args.budgets[0], args.steps,
                                     args.warmup, args.batch, args.rank, args.device, args.model_dir)))
        return
    runs = []
    for strategy in args.strategies:
        for budget in args.budgets:
            run = measure(args.family, resolution, strategy, budget, args.steps, args.warmup, args.batch, args.rank,
                          args.device, args.model_dir)
            runs.append(run)
            print(json.dumps(run), flush=True)
    record = {"benchmark": "training step memory and speed per strategy",
              "command": " ".join(["python", "tools/bench_memory.py", *sys.argv[1:]]), "commit": commit(),
              "environment": environment(), "runs": runs}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
