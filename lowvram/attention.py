"""Choosing the attention kernels: xformers when installed and working, else PyTorch SDPA (which picks
flash or memory-efficient kernels on CUDA), else the plain math path. Returns what it chose, so the run
can say so."""

from __future__ import annotations

import torch

from lowvram.errors import LowvramError


def set_attention(unet: torch.nn.Module, choice: str = "auto") -> str:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if choice in ("auto", "xformers"):
        reason = _xformers_problem()
        if reason is None:
            unet.enable_xformers_memory_efficient_attention()
            return "xformers"
        if choice == "xformers":
            raise LowvramError(attention_problem(choice))
    if choice in ("auto", "sdpa"):
        unet.set_attn_processor(AttnProcessor2_0())
        return "sdpa"
    unet.set_attn_processor(AttnProcessor())
    return "math"


def attention_problem(choice: str) -> str | None:
    """Why the --attention asked for cannot run here (None: it can), before a run caches its data."""
    reason = _xformers_problem() if choice == "xformers" else None
    return f"--attention xformers: {reason}; use --attention sdpa (or auto)" if reason else None


def _xformers_problem() -> str | None:
    """None when xformers can run here, else why not."""
    if not torch.cuda.is_available():
        return "xformers needs a CUDA GPU"
    try:
        import xformers.ops

        q = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.float16)
        xformers.ops.memory_efficient_attention(q, q, q)
    except Exception as exc:  # noqa: BLE001 - a broken build fails in many ways (missing symbols, CUDA mismatch)
        return f"xformers is not installed or does not load ({str(exc).splitlines()[0] if str(exc) else exc})"
    return None
