"""A1111 sampler names and schedule types -> configured diffusers schedulers."""
from __future__ import annotations

import inspect

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from webui.core import samplers
from webui.core.errors import InvalidField

_CLASSES: dict[str, tuple[type, dict]] = {
    "DPM++ 2M": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ SDE": (DPMSolverSDEScheduler, {}),
    "DPM++ 2M SDE": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE Heun": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                                        "solver_type": "heun"}),
    "DPM++ 3M SDE": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Euler": (EulerDiscreteScheduler, {}),
    "LMS": (LMSDiscreteScheduler, {}),
    "Heun": (HeunDiscreteScheduler, {}),
    "DPM2": (KDPM2DiscreteScheduler, {}),
    "DPM2 a": (KDPM2AncestralDiscreteScheduler, {}),
    "DDIM": (DDIMScheduler, {"set_alpha_to_one": False}),
    "PLMS": (PNDMScheduler, {"skip_prk_steps": True}),
    "UniPC": (UniPCMultistepScheduler, {}),
    "LCM": (LCMScheduler, {}),
}

_SCHEDULE_KWARGS: dict[str, dict] = {
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "uniform": {},
}

# The sigma-schedule flags a scheduler may carry over from a model's saved config; cleared before ours apply.
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def effective_schedule(sampler: str, schedule: str) -> str:
    """What "automatic" means for this sampler (A1111 gives some samplers a default schedule)."""
    if schedule != "automatic":
        return schedule
    sdef = samplers.find_sampler(sampler)
    return sdef.default_schedule if sdef else "automatic"


def make_scheduler(sampler: str, schedule: str, base_config: dict):
    """A fresh scheduler for one job. Raises InvalidField when the pair is not supported."""
    cls, extra = _CLASSES[sampler]
    schedule = effective_schedule(sampler, schedule)
    kwargs = dict(extra)
    kwargs.update(_SCHEDULE_KWARGS.get(schedule, {}))
    accepted = set(inspect.signature(cls.__init__).parameters)
    unsupported = [k for k in kwargs if k not in accepted]
    if unsupported and schedule in _SCHEDULE_KWARGS and any(k in _SCHEDULE_KWARGS[schedule] for k in unsupported):
        ok = [samplers.schedule_label(s) for s in _SCHEDULE_KWARGS if supports(sampler, s)]
        raise InvalidField("scheduler", f"schedule type {samplers.schedule_label(schedule)!r} is not available "
                                        f"for sampler {sampler!r}; valid: Automatic, {', '.join(ok)}")
    config = {k: v for k, v in base_config.items() if k not in _SIGMA_FLAGS}
    for k in _SIGMA_FLAGS:
        if k in accepted:
            config[k] = False
    config.update({k: v for k, v in kwargs.items() if k in accepted})
    if sampler == "DPM++ 3M SDE":
        config["final_sigmas_type"] = "zero"
    return cls.from_config(config)


def supports(sampler: str, schedule: str) -> bool:
    cls, _ = _CLASSES[sampler]
    accepted = set(inspect.signature(cls.__init__).parameters)
    return all(k in accepted for k in _SCHEDULE_KWARGS.get(schedule, {}))


def available() -> list[str]:
    return [s.name for s in samplers.SAMPLERS if s.name in _CLASSES]
