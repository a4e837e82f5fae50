"""What we run on, or plan for: the GPU present, a profile from `lowvram/profiles/`, or a bare budget.

A `Hardware` is all the planner needs to know about a machine: VRAM (total and free), whether bf16 works,
host RAM, PCIe bandwidth for offload estimates, and what the CUDA context takes before we allocate anything.
"""

from __future__ import annotations

import difflib
import os
import platform
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from lowvram.errors import LowvramError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILES = Path(__file__).parent / "profiles"
GIB = 1024**3


def gib(size: int) -> str:
    """Bytes as GiB, as plan and the web UI show them: '5.75'."""
    return f"{size / GIB:.2f}"


# CUDA context + libraries before our first tensor, where no GPU result measured one (lowvram.plan.calibration)
DEFAULT_CONTEXT = int(0.5 * GIB)


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    name: str
    total_vram: int  # bytes; 0 on CPU
    bf16: bool  # bf16 tensor math supported (Ampere and newer)
    free_vram: int = 0  # bytes free now (a profile: total minus what the desktop typically holds)
    host_ram: int = 0  # bytes
    compute_capability: str = ""
    pcie_gbps: float = 12.0  # effective host<->device bandwidth, GB/s
    cuda_context: int = 0  # bytes the driver and libraries take before our first tensor (0: the measured default)
    shared_memory_fallback: bool = False  # Windows drivers can spill into system RAM (10x slower) instead of OOM
    source: str = "detected"  # detected / profile <name> / --vram / "detected, held to --vram" (train --auto)
    index: int = 0  # the CUDA device this process uses (its LOCAL_RANK's under `accelerate launch`)
    host_ram_source: str = "this machine's"  # whose host_ram is: this machine's, a profile's, or --ram's

    @property
    def fp16_fails(self) -> bool:
        """A GTX 16xx (Turing without tensor cores, compute capability 7.5): fp16 gives NaN losses and black images
        there (kohya-ss/sd-scripts#293, pytorch/pytorch#58123); AUTOMATIC1111 tells these cards apart the same way.
        No bf16 either, so they train in fp32."""
        return self.compute_capability == "7.5" and "GTX 16" in self.name

    @property
    def can_spill_vram(self) -> bool:
        """Slow steps may mean VRAM spilled into system RAM: a CUDA GPU behind the Windows driver's fallback."""
        return self.device == "cuda" and self.shared_memory_fallback


def detect() -> Hardware:
    """The machine we are on: this process's CUDA GPU (LOCAL_RANK's under `accelerate launch`, so each
    process plans for its own card), else the CPU. Imports torch: `plan` with a profile or --vram does not."""
    import torch

    host = _host_ram()
    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        return Hardware("cuda", props.name, total, has_native_bf16(props.major), free_vram=free, host_ram=host,
                        compute_capability=f"{props.major}.{props.minor}",
                        shared_memory_fallback=behind_windows_driver(), index=index)
    return Hardware("cpu", "CPU", 0, True, host_ram=host)


def no_gpu_reason() -> str:
    """Why torch sees no CUDA GPU, said where a run falls back to the CPU: the usual causes are a CPU-only PyTorch
    (pip's default wheel on Windows), CUDA_VISIBLE_DEVICES hiding the cards, or a missing or old driver."""
    import torch

    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={hidden.strip()!r} hides every GPU from this process"
    hip = getattr(torch.version, "hip", None)
    if platform.system() == "Darwin":
        return "a Mac has no CUDA GPU: lowvram trains on an NVIDIA GPU's CUDA (an AMD one's ROCm), else on the CPU"
    if torch.version.cuda is None and hip is None:
        return (f"PyTorch {torch.__version__} is a CPU-only build; pytorch.org/get-started gives the command that "
                "installs a CUDA one")
    named = f"CUDA_VISIBLE_DEVICES={hidden.strip()!r} names no GPU here, or " if hidden is not None else ""
    driver = (f"the NVIDIA driver is missing, or older than its CUDA {torch.version.cuda} needs (nvidia-smi shows it)"
              if hip is None else f"the AMD driver is missing, or older than its ROCm {hip} needs (rocm-smi shows it)")
    return f"PyTorch {torch.__version__} found none: {named}{driver}"


def has_native_bf16(compute_major: int) -> bool:
    """bf16 in hardware: Ampere (compute capability 8) and later. torch.cuda.is_bf16_supported() also says yes
    on a T4 or other Turing card, where bf16 is emulated and slow: those train in fp16."""
    return compute_major >= 8


def behind_windows_driver(system: str | None = None, release: str | None = None) -> bool:
    """Windows, or WSL (Linux on the Windows driver): where the driver's sysmem fallback can spill VRAM into
    system RAM instead of raising out-of-memory."""
    system = platform.system() if system is None else system
    release = (platform.uname().release if release is None else release).lower()
    return system == "Windows" or (system == "Linux" and ("microsoft" in release or "wsl" in release))


def _host_ram() -> int:
    try:
        import psutil

        return psutil.virtual_memory().total
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return 0


SIZE_UNITS = "GB and GiB alike are 1024³ bytes"  # (a card's "8 GB" is 8 GiB)


def parse_size(text: str, flag: str) -> int:
    """'6GB', '6 GiB', '6', '5.5G', '512MB' -> bytes (SIZE_UNITS)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([gGmM]i?[bB]?)?\s*", str(text))
    if not match:
        raise LowvramError(f"{flag}: '{text}' is not a size; write e.g. 6GB or 512MB")
    value, unit = float(match.group(1)), (match.group(2) or "g")[0].lower()
    size = value * (GIB if unit == "g" else 1024**2)  # (a float: 400 digits of it are inf, which int() refuses)
    if size < 256 * 1024**2:
        raise LowvramError(f"{flag}: '{text}' is under 256 MB, no machine to train on; write e.g. 6GB")
    most = 1024 if flag == "--vram" else 16384  # GB: no GPU holds a terabyte yet
    if size > most * GIB:
        hint = (f"; a number alone is in GB (write {text.strip()}MB for megabytes)" if not match.group(2)
                else "; give the card's memory, e.g. 24GB")
        raise LowvramError(f"{flag}: '{text}' is over {most} GB{hint}")
    if flag == "--vram" and not match.group(2) and value > 256:  # 512 alone: megabytes meant, more likely than GB
        raise LowvramError(f"{flag}: '{text}' alone would be read in GB; write {text.strip()}MB for megabytes, or "
                           f"{text.strip()}GB if you mean it")
    return int(size)


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.toml"))


def _meant_profile(name: str) -> str:
    """' (did you mean colab-t4?)' for 't4' (a card's name within a profile's), else for a near spelling."""
    words = str(name).lower().replace("_", "-").replace(" ", "-")
    within = [profile for profile in list_profiles() if set(words.split("-")) <= set(profile.split("-"))]
    meant = within or difflib.get_close_matches(words, list_profiles(), n=1)
    return f" (did you mean {' or '.join(meant)}?)" if meant and len(meant) <= 3 else ""


def load_profile(name: str) -> Hardware:
    """A card people train on, from `lowvram/profiles/<name>.toml`."""
    path = PROFILES / f"{name}.toml"
    if not path.is_file() or name not in list_profiles():  # (a name, not a path: ../x.toml is no profile)
        raise LowvramError(f"--profile: no profile '{name}'{_meant_profile(name)}; profiles are "
                           f"{', '.join(list_profiles())}")
    data = tomllib.loads(path.read_text())
    known = {"name", "vram_gb", "free_vram_gb", "bf16", "host_ram_gb", "compute_capability", "pcie_gbps",
             "cuda_context_gb", "shared_memory_fallback", "notes"}
    unknown = set(data) - known
    if unknown:
        raise LowvramError(f"profile {path}: unknown keys {sorted(unknown)}; known keys are {sorted(known)}")
    try:
        vram = int(data["vram_gb"] * GIB)
        return Hardware(
            device="cuda", name=data["name"], total_vram=vram, bf16=bool(data["bf16"]),
            free_vram=int(data.get("free_vram_gb", data["vram_gb"]) * GIB),
            host_ram=int(data["host_ram_gb"] * GIB), compute_capability=str(data["compute_capability"]),
            pcie_gbps=float(data.get("pcie_gbps", 12.0)),
            cuda_context=int(data.get("cuda_context_gb", 0) * GIB),
            shared_memory_fallback=bool(data.get("shared_memory_fallback", False)), source=f"profile {name}",
            host_ram_source="the profile's: --ram gives yours")
    except KeyError as exc:
        raise LowvramError(f"profile {path}: missing key {exc}") from None


def hardware_for(profile: str | None, vram: str | None, ram: str | None) -> Hardware:
    """What `plan`/`train --auto` plan for: a profile, a bare --vram budget, or the machine present."""
    if profile and vram:
        raise LowvramError("--profile and --vram: can't use both; choose one")
    if profile:
        hardware = load_profile(profile)
    elif vram:
        budget = parse_size(vram, "--vram")
        hardware = Hardware("cuda", f"{round(budget / GIB, 2):g} GiB GPU", budget, True, free_vram=budget,
                            host_ram=_host_ram(), source="--vram")
    else:
        hardware = detect()
    if ram:
        hardware = replace(hardware, host_ram=parse_size(ram, "--ram"), host_ram_source="--ram")
    return hardware


def resolve_mixed_precision(choice: str, hardware: Hardware) -> str:
    """'auto' -> bf16 on GPUs that have it, fp16 on older GPUs (T4, Turing), no (fp32) on a GTX 16xx and on the
    CPU."""
    if choice == "auto":
        if hardware.device == "cpu" or hardware.fp16_fails and not hardware.bf16:
            return "no"
        return "bf16" if hardware.bf16 else "fp16"
    if choice == "fp16" and hardware.device == "cpu":
        raise LowvramError("--mixed-precision fp16: needs a CUDA GPU; on the CPU use bf16 or no")
    if choice == "bf16" and hardware.device == "cuda" and not hardware.bf16:
        raise LowvramError(f"--mixed-precision bf16: {hardware.name} has no bf16 support; use fp16 (or auto)")
    return choice


def precision_trouble(mixed_precision: str, hardware: Hardware) -> str | None:
    """What the run's precision may do to its losses on this card, and the way out; None where nothing is known."""
    if mixed_precision != "fp16":
        return None
    if hardware.fp16_fails:
        return (f"fp16 on a {hardware.name}, where GTX 16xx cards give NaN losses (kohya-ss/sd-scripts#293): "
                "--mixed-precision no (fp32), what auto picks there")
    if hardware.bf16:
        return "fp16 overflow (try --mixed-precision bf16)"
    return "fp16 overflow (try --mixed-precision no: fp32)"


# where no GPU is looked at (check-data): plans and data need a family and a resolution, not a card
NO_GPU = Hardware("cpu", "CPU", 0, True)
