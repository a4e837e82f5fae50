"""`lowvram doctor`: what this machine can do, in words: the GPU and its precision, the optional backends and what
their absence costs, RAM and disk, and what `train --auto` would choose here for SD1.5 and SDXL."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from rich.table import Table

from lowvram.configure import build_config
from lowvram.console import Console
from lowvram.errors import LowvramError, first_line
from lowvram.files import free_bytes, human_size
from lowvram.hardware import GIB, Hardware, detect, list_profiles, load_profile, no_gpu_reason
from lowvram.housekeeping import usage
from lowvram.plan import plan, workload_for
from lowvram.resolve import default_cache_dir, resolve_run

# what --auto is asked about: the two families at their native resolutions, default options
AUTO_EXAMPLES = (("SD1.5 at 512", "sd15"), ("SDXL at 1024", "sdxl"))


def print_doctor(profiles: bool, as_json: bool = False) -> None:
    """The report as a table (as JSON, `as_json`); with `profiles`, the GPU profiles `plan --profile` knows
    instead."""
    console = Console()
    if as_json:
        import json

        hardware = None if profiles else detect()  # (once: it reads the GPU)
        print(json.dumps({"profiles": [profile_facts(name) for name in list_profiles()]} if profiles else
                         {"machine": machine_facts(hardware), "report": dict(doctor_report(hardware))}, indent=2))
        return
    if profiles:
        table = Table(title="GPU profiles (lowvram plan --profile NAME)")
        for column in ("name", "card", "VRAM GiB", "bf16", "host RAM GiB"):
            table.add_column(column)
        for name in list_profiles():
            hw = load_profile(name)
            table.add_row(name, hw.name, f"{hw.total_vram / 2**30:g}", "yes" if hw.bf16 else "no",
                          f"{hw.host_ram / 2**30:g}")
        console.print(table)
        return
    table = Table(title="lowvram doctor", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for topic, words in doctor_report():
        table.add_row(topic, words)
    console.print(table)


def profile_facts(name: str) -> dict:
    """A GPU profile's figures, as `doctor --profiles --json` lists them."""
    hw = load_profile(name)
    return {"name": name, "card": hw.name, "vram_bytes": hw.total_vram, "bf16": hw.bf16, "host_ram_bytes": hw.host_ram}


def machine_facts(hardware: Hardware) -> dict:
    """What the report's lines say in words, as figures (bytes), for a script: the GPU, host RAM, disk and cache."""
    import psutil
    import torch

    facts = {"device": hardware.device, "gpu": hardware.name if hardware.device == "cuda" else None,
             "vram_bytes": hardware.total_vram, "vram_free_bytes": hardware.free_vram,
             "compute_capability": hardware.compute_capability or None, "bf16": hardware.bf16,
             "torch": torch.__version__, "cuda": torch.version.cuda,
             "host_ram_bytes": hardware.host_ram, "host_ram_available_bytes": psutil.virtual_memory().available,
             "swap_bytes": psutil.swap_memory().total, "free_disk_here_bytes": shutil.disk_usage(".").free}
    try:
        cache_dir = default_cache_dir()
    except LowvramError:
        return facts | {"cache_dir": None}
    try:
        folders = usage(cache_dir) if cache_dir.is_dir() else []
    except OSError:  # (another user's folder in a shared cache: the table says "cannot be read")
        return facts | {"cache_dir": str(cache_dir), "cache_bytes": None}
    return facts | {"cache_dir": str(cache_dir), "cache_bytes": sum(f.size for f in folders),
                    "cache_removable_bytes": sum(f.removable for f in folders),
                    "cache_disk_free_bytes": free_bytes(cache_dir) if cache_dir.is_dir() else None}


def _host_ram_line(total: int) -> str:
    """The machine's RAM (what plan plans for), what is free of it now, and the swap a loading peak past it may
    spill into (slowly; --ram plans for RAM and swap together)."""
    import psutil

    swap = psutil.swap_memory().total
    spill = (f"; swap {swap / GIB:.1f} GiB (a loading peak past RAM spills there, slowly: plan --ram "
             f"{math.floor((total + swap) / GIB)}GB plans with it)" if swap else "; no swap")
    return f"{total / GIB:.1f} GiB, {psutil.virtual_memory().available / GIB:.1f} GiB of it free now{spill}"


def doctor_report(hardware: Hardware | None = None) -> list[tuple[str, str]]:
    """(topic, what to know) rows, of `hardware` (this machine's by default)."""
    import torch

    hardware = hardware or detect()
    rows = [("GPU", _gpu_line(hardware)),
            ("PyTorch", f"{torch.__version__}, " + (f"CUDA {torch.version.cuda}" if torch.version.cuda else
                                                     "a CPU-only build (no CUDA)"))]
    bnb_missing = "--unet-weights bnb-int8/bnb-nf4 and the 8-bit optimizers are unavailable; pip install bitsandbytes"
    rows.append(("bitsandbytes", _works(_bitsandbytes_check, bnb_missing)))
    quanto_missing = "--unet-weights quanto-* is unavailable; pip install optimum-quanto"
    rows.append(("optimum-quanto", _works(_quanto_check, quanto_missing)))
    rows.append(("xformers", _xformers_line()))
    rows.append(("host RAM", _host_ram_line(hardware.host_ram)))
    free_disk = shutil.disk_usage(".").free / GIB
    rows.append(("free disk here", f"{free_disk:.1f} GiB (latent caches and checkpoints need a few GiB)"))
    try:
        rows.append(("cache", _cache_line(default_cache_dir())))
    except LowvramError as exc:
        rows.append(("cache", str(exc)))
    for label, model in AUTO_EXAMPLES:
        rows.append((f"--auto, {label}", _auto_line(hardware, model)))
    return rows


def _cache_line(cache_dir: Path) -> str:
    """Where the caches are and what they hold, so a filling disk finds `lowvram cache`."""
    try:
        folders = usage(cache_dir) if cache_dir.is_dir() else []
    except OSError as exc:
        return f"{cache_dir}: cannot be read ({exc.strerror or exc})"
    removable = sum(f.removable for f in folders)
    # its own disk's room: on a lab server the home (the default cache) is a small quota, the current folder not
    return (f"{cache_dir}: {human_size(sum(f.size for f in folders))}, of which {human_size(removable)} the next run "
            f"rebuilds if removed (lowvram cache shows and prunes it); {human_size(free_bytes(cache_dir))} free on "
            "its disk")


def _gpu_line(hardware: Hardware) -> str:
    if hardware.device != "cuda":
        return (f"none: {no_gpu_reason()}. Training runs on the CPU in fp32, which suits the tiny demo models only; "
                "`lowvram plan --vram 8GB` (or --profile) plans for a card elsewhere")
    precision = ("bf16 and fp16" if hardware.bf16 else "fp32 (no bf16, and fp16 gives NaN losses on a GTX 16xx)"
                 if hardware.fp16_fails else "fp16 only (no bf16: pre-Ampere, e.g. a T4)")
    return (f"{hardware.name}, {hardware.total_vram / GIB:.1f} GiB ({hardware.free_vram / GIB:.1f} GiB free now), "
            f"compute capability {hardware.compute_capability}, mixed precision {precision}")


def _auto_line(hardware: Hardware, model: str) -> str:
    if hardware.device != "cuda":
        return "no GPU: --auto trains on the CPU in fp32"
    result = plan(workload_for(resolve_run(build_config({"model": model, "data": "sample"}), hardware)), hardware)
    if result.choice is None:
        return f"would refuse: {result.explanation}"
    peak = result.choice.peak_vram() / GIB
    return f"{result.choice.strategy.label} (peak {peak:.1f} GiB of {hardware.free_vram / GIB:.1f} GiB free)"


def _works(check, missing: str) -> str:
    try:
        check()
        return "works"
    except ImportError:
        return f"not installed: {missing}"
    except Exception as exc:  # noqa: BLE001 - report any failure as text, it's a diagnostic
        return f"installed but failing here ({first_line(exc)}): {missing.split(';')[0]}"


def _bitsandbytes_check() -> None:
    import torch

    # its CPU kernel lookup logs a failure to reach the hub on every import; it falls back by itself
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes as bnb

    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to(device)
    layer(torch.zeros(1, 64, device=device))


def _quanto_check() -> None:
    import torch
    from optimum.quanto import freeze, qint8, quantize

    layer = torch.nn.Sequential(torch.nn.Linear(64, 64))
    quantize(layer, weights=qint8)
    freeze(layer)
    layer(torch.zeros(1, 64))


def _xformers_line() -> str:
    from lowvram.attention import _xformers_problem

    problem = _xformers_problem()
    if problem is None:
        return "works (--attention auto uses it)"
    return f"not used ({problem}): PyTorch's SDPA attention does the same job"
