"""The samplers sample images and `lowvram generate` can use, by the names kohya's --sample_sampler gives them.
Each is a diffusers scheduler made from the model's own scheduler config, so the prediction type (v-prediction),
the noise schedule and a zero-terminal-SNR rescale carry over; only how it steps changes."""

from __future__ import annotations

import importlib.util
import inspect

from lowvram.errors import LowvramError

# name -> (diffusers scheduler, its settings). Karras variants space the noise levels as Karras et al. (2022).
SAMPLERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),  # as diffusers' Stable Diffusion pipelines set it
    "lms": ("LMSDiscreteScheduler", {}),
    "lms_karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpm_2_a_karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),  # DPM++ 2M
    "dpmsolver++_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpmsolver++_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpmsolver++_sde_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++",
                                                               "use_karras_sigmas": True}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
    "dpmsingle_karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "unipc_karras": ("UniPCMultistepScheduler", {"use_karras_sigmas": True}),
    "ddpm": ("DDPMScheduler", {}),
}
# other tools' names: kohya's k_ spellings, OneTrainer's noise_scheduler values (lower-cased), A1111/ComfyUI's DPM++
ALIASES = {"k_lms": "lms", "k_euler": "euler", "k_euler_a": "euler_a", "k_dpm_2": "dpm_2", "k_dpm_2_a": "dpm_2_a",
           "dpmpp": "dpmsolver++", "dpmpp_karras": "dpmsolver++_karras", "dpmpp_sde": "dpmsolver++_sde",
           "dpmpp_sde_karras": "dpmsolver++_sde_karras", "dpmpp_2m": "dpmsolver++",
           "dpmpp_2m_karras": "dpmsolver++_karras",
           "dpmpp_2m_sde": "dpmsolver++_sde", "dpmpp_2m_sde_karras": "dpmsolver++_sde_karras",
           "euler_ancestral": "euler_a", "uni_pc": "unipc"}
# AUTOMATIC1111's names, as its infotext writes them ("Send to txt2img" reads them back): its "Schedule type" apart
A1111_NAMES = {"ddim": "DDIM", "pndm": "PLMS", "lms": "LMS", "euler": "Euler",
               "euler_karras": "Euler, Schedule type: Karras", "euler_a": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
               "dpm_2_a": "DPM2 a", "dpmsolver++": "DPM++ 2M", "dpmsolver++_karras": "DPM++ 2M Karras",
               "dpmsolver++_sde": "DPM++ 2M SDE", "dpmsolver++_sde_karras": "DPM++ 2M SDE Karras",
               "dpmsingle": "DPM++ SDE", "unipc": "UniPC", "unipc_karras": "UniPC, Schedule type: Karras",
               "lms_karras": "LMS Karras", "dpm_2_karras": "DPM2 Karras", "dpm_2_a_karras": "DPM2 a Karras",
               "dpmsingle_karras": "DPM++ SDE Karras", "ddpm": "DDPM"}
# they as typed ("DPM++ 2M Karras", "Euler a", "PLMS"), in sampler_name's spelling
ALIASES |= {"_".join(name.lower().split()): key for key, name in A1111_NAMES.items() if "," not in name}
NEEDS = {"LMSDiscreteScheduler": "scipy"}  # diffusers imports these schedulers only with that package installed


def sampler_name(name: str) -> str:
    """The name in SAMPLERS `name` means (another tool's spelling too); ValueError lists the names."""
    key = "_".join(name.lower().split())  # AUTOMATIC1111's "DPM++ 2M Karras", "Euler a"
    key = ALIASES.get(key, key)
    if key not in SAMPLERS:
        a1111 = ", ".join(f"'{n}'" for n in A1111_NAMES.values() if "," not in n)
        raise ValueError(f"unknown sampler '{name}'; use one of {', '.join(SAMPLERS)} (or AUTOMATIC1111's names: "
                         f"{a1111})")
    return key


def a1111_name(sampler: str) -> str:
    """How AUTOMATIC1111's infotext names a sampler of SAMPLERS (`own_sampler` names a model's own); one it has
    not, as it is."""
    return A1111_NAMES.get(sampler, sampler)


def own_sampler(scheduler) -> str:
    """The sampler of SAMPLERS a model's own scheduler is: of its class, with the most of its settings (a diffusers
    folder's DPM++ 2M with Karras sigmas is dpmsolver++_karras; its class's name was written, which no reader took
    back); a scheduler no sampler is (another class, PNDM with PRK steps, SDE-DPM-Solver) by its class's name."""
    kind, config = type(scheduler).__name__, scheduler.config
    same = [(len(settings), name) for name, (other, settings) in SAMPLERS.items() if other == kind
            and all(config.get(key) == value for key, value in settings.items())]
    # (none: its class's name, which no reader takes for another sampler's)
    return max(same, key=lambda pair: pair[0])[1] if same else kind


def sampler_problem(name: str, zero_terminal_snr: bool) -> str | None:
    """Why `name` cannot sample here (unknown, a package missing, no zero-terminal-SNR support), or None."""
    try:
        key = sampler_name(name)
    except ValueError as exc:
        return str(exc)
    class_name = SAMPLERS[key][0]
    package = NEEDS.get(class_name)
    if package and importlib.util.find_spec(package) is None:
        return f"'{key}' needs {package}: pip install {package}, or pick another sampler"
    if zero_terminal_snr and "rescale_betas_zero_snr" not in inspect.signature(_scheduler_class(key)).parameters:
        able = [other for other in SAMPLERS if not NEEDS.get(SAMPLERS[other][0])
                and "rescale_betas_zero_snr" in inspect.signature(_scheduler_class(other)).parameters]
        return (f"'{key}' cannot sample a zero-terminal-SNR schedule (its last step is pure noise); use one of "
                f"{', '.join(able)}")
    return None


def make_sampler(scheduler, name: str | None):
    """The model's own `scheduler` as the sampler `name` (None: a fresh copy of it), its config carried over."""
    if name is None:
        return type(scheduler).from_config(scheduler.config)
    key = sampler_name(name)
    problem = sampler_problem(key, bool(scheduler.config.get("rescale_betas_zero_snr")))
    if problem:
        raise LowvramError(f"sampler {problem}")
    cls = _scheduler_class(key)
    settings = dict(SAMPLERS[key][1])
    if "use_karras_sigmas" in inspect.signature(cls).parameters:
        settings.setdefault("use_karras_sigmas", False)  # not inherited from a base config that had them on
    return cls.from_config(scheduler.config, **settings)


def _scheduler_class(key: str):
    import diffusers

    return getattr(diffusers, SAMPLERS[key][0])
