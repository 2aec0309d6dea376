"""A1111 sampler names and schedule types -> configured diffusers schedulers."""
from __future__ import annotations

import inspect

import numpy as np
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
from webui.engine.k_samplers import (
    DDIMCFGPlusPlusScheduler,
    DPM2AncestralEtaScheduler,
    DPMFastScheduler,
    DPMPP2SAncestralScheduler,
    EulerAncestralEtaScheduler,
    RestartScheduler,
)
from webui.engine.sampler_params import sigma_at

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
    "DPM++ 2S a": (DPMPP2SAncestralScheduler, {}),
    "DPM fast": (DPMFastScheduler, {}),
    "Restart": (RestartScheduler, {}),
    "DDIM": (DDIMScheduler, {"set_alpha_to_one": False}),
    "DDIM CFG++": (DDIMCFGPlusPlusScheduler, {"set_alpha_to_one": False}),
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


def make_scheduler(sampler: str, schedule: str, base_config: dict, opts: dict | None = None, steps: int = 0,
                   eta: float | None = None):
    """A fresh scheduler for one job (``opts``: the job's settings, for UniPC's order and variant and the ancestral
    samplers' eta; ``steps``: the pass's steps; ``eta``: the request's, over the setting). Raises InvalidField when
    the pair is not supported."""
    cls, extra = _CLASSES[sampler]
    job_eta = float(eta if eta is not None else (opts or {}).get("eta_ancestral", 1.0))
    if sampler == "Euler a" and job_eta != 1.0:
        cls = EulerAncestralEtaScheduler   # diffusers' Euler a has no eta
    if sampler == "DPM2 a" and job_eta != 1.0:
        cls = DPM2AncestralEtaScheduler    # nor has its DPM2 a
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
    if sampler == "UniPC" and opts is not None:
        # A1111's UniPC settings (order 3, variant bh1 by default); the order must stay below the steps. As
        # A1111's UniPC, sampling ends at the model's smallest noise level, not at zero (where diffusers' bh1
        # update divides by zero and draws NaN)
        config["solver_order"] = max(1, min(int(opts.get("uni_pc_order", 3)), steps - 1))
        config["solver_type"] = str(opts.get("uni_pc_variant", "bh1"))
        config["final_sigmas_type"] = "sigma_min"
    # diffusers gives the keys listed in _use_default_values each class's own default, whatever the config says:
    # the keys set here must leave that list, or a Karras schedule, say, is silently dropped
    ours = {k for k in config if config.get(k) != base_config.get(k) or k in kwargs}
    if "_use_default_values" in config:
        config["_use_default_values"] = [k for k in config["_use_default_values"] if k not in ours]
    scheduler = cls.from_config(config)
    if getattr(scheduler, "ancestral", False):
        # A1111 gives these k-diffusion samplers eta (its "Eta for ancestral samplers", 1 by default)
        scheduler.eta = job_eta
    if opts is not None:
        _apply_schedule_overrides(scheduler, schedule_overrides(scheduler, sampler, schedule, opts))
    return scheduler


# The noise schedule of every SD1.x / SD2.x / SDXL model (to check settings before a model is loaded).
SD_NOISE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}

# A1111's "Schedule min sigma" / "Schedule max sigma" / "Schedule rho" settings: (setting, infotext key)
_SCHEDULE_SETTINGS = (("sigma_min", "Schedule min sigma"), ("sigma_max", "Schedule max sigma"),
                      ("rho", "Schedule rho"))
_KARRAS_RHO = 7.0


def schedule_overrides(scheduler, sampler: str, schedule: str, opts: dict) -> dict[str, float]:
    """The schedule settings that apply to this job, by infotext key, as A1111's: min and max sigma (0 = the
    model's) for the Karras, Exponential and Beta schedules, rho (0 = 7) for Karras; a value equal to the
    default is not an override."""
    schedule = effective_schedule(sampler, schedule)
    if schedule not in ("karras", "exponential", "beta"):
        return {}
    last = len(scheduler.alphas_cumprod) - 1
    model = {"sigma_min": sigma_at(scheduler, 0), "sigma_max": sigma_at(scheduler, last), "rho": _KARRAS_RHO}
    out: dict[str, float] = {}
    for key, label in _SCHEDULE_SETTINGS:
        value = float(opts.get(key, 0.0) or 0.0)
        if value and abs(value - model[key]) > 1e-6 and (key != "rho" or schedule == "karras"):
            out[label] = value
    low = out.get("Schedule min sigma", model["sigma_min"])
    high = out.get("Schedule max sigma", model["sigma_max"])
    if out and not low < high:
        raise InvalidField("override_settings", f"the schedule's min sigma ({low:g}) must be below its max sigma "
                                                f"({high:g})")
    return out


def _apply_schedule_overrides(scheduler, overrides: dict[str, float]) -> None:
    # diffusers' Karras / exponential / beta conversions read sigma_min and sigma_max from the config when it
    # holds them; its Karras rho is fixed at 7, so this scheduler's conversion is replaced by one with the rho
    if "Schedule min sigma" in overrides:
        scheduler.register_to_config(sigma_min=overrides["Schedule min sigma"])
    if "Schedule max sigma" in overrides:
        scheduler.register_to_config(sigma_max=overrides["Schedule max sigma"])
    if "Schedule rho" in overrides:
        rho = overrides["Schedule rho"]

        def karras(in_sigmas, num_inference_steps):
            low = getattr(scheduler.config, "sigma_min", None)
            high = getattr(scheduler.config, "sigma_max", None)
            low = float(in_sigmas[-1]) if low is None else low
            high = float(in_sigmas[0]) if high is None else high
            ramp = np.linspace(0, 1, num_inference_steps)
            return (high ** (1 / rho) + ramp * (low ** (1 / rho) - high ** (1 / rho))) ** rho
        scheduler._convert_to_karras = karras


def step_eta(scheduler, eta: float | None, opts: dict) -> float | None:
    """The eta a scheduler whose step takes one (DDIM) runs with: the request's, else the setting eta_ddim."""
    if "eta" not in inspect.signature(scheduler.step).parameters:
        return None
    return float(eta if eta is not None else opts.get("eta_ddim", 0.0) or 0.0)


def ancestral_infotext(scheduler, sampler: str, opts: dict, eta: float | None = None) -> dict[str, float]:
    """A1111's "Eta" (an eta other than 1 on an ancestral sampler that takes it), "Eta DDIM" (DDIM's ``eta``, when
    not 0) and "ENSD" (a seed delta on a sampler whose noise over the steps it moves)."""
    out: dict[str, float] = {}
    if getattr(scheduler, "ancestral", False) and scheduler.eta != 1.0:
        out["Eta"] = scheduler.eta
    if sampler in ("DDIM", "DDIM CFG++") and eta:
        out["Eta DDIM"] = eta
    sdef = samplers.find_sampler(sampler)
    delta = int(opts.get("eta_noise_seed_delta", 0) or 0)
    if delta and sdef is not None and sdef.uses_ensd:
        out["ENSD"] = delta
    return out


def supports(sampler: str, schedule: str) -> bool:
    cls, _ = _CLASSES[sampler]
    accepted = set(inspect.signature(cls.__init__).parameters)
    return all(k in accepted for k in _SCHEDULE_KWARGS.get(schedule, {}))


def available() -> list[str]:
    return [s.name for s in samplers.SAMPLERS if s.name in _CLASSES]
