"""A1111's "Sampler parameters": sigma churn / tmin / tmax / noise for the samplers that take them (Euler; DPM++ SDE
takes the noise), the two ways of skipping the negative prompt's UNet pass: "Negative Guidance minimum sigma"
(NGMS, late steps) and "Ignore negative prompt during early steps" (Skip Early CFG), and the start noise of
img2img and hires passes: the noise multiplier, extra noise and the SGM noise multiplier."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch

_DISCARDABLE = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler",
                "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"}
_SIGMA_KEYS = (("s_churn", "Sigma churn", 0.0), ("s_tmin", "Sigma tmin", 0.0), ("s_tmax", "Sigma tmax", math.inf),
               ("s_noise", "Sigma noise", 1.0))


@dataclass(frozen=True)
class SamplerParams:
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf      # A1111's 0 means no upper bound
    s_noise: float = 1.0
    s_min_uncond: float = 0.0     # NGMS: below this sigma the negative prompt is skipped (every other step)
    s_min_uncond_all: bool = False
    skip_early_cond: float = 0.0  # the fraction of the first steps that skip the negative prompt
    noise_multiplier: float = 1.0  # img2img: the start noise times this ("Noise multiplier")
    extra_noise: float = 0.0      # img2img and hires passes: the same noise added once more, times this
    sgm_noise: bool = False       # the start noise scaled by sqrt(1 + sigma^2) rather than sigma
    discard_penultimate: bool = False   # A1111's "Always discard next-to-last sigma"

    @classmethod
    def of(cls, req, opts: dict) -> SamplerParams:
        """The job's values: a request field where the request sets it (A1111's API has s_churn, s_tmin, s_tmax,
        s_noise, s_min_uncond), else the setting."""
        def pick(name: str, default: float) -> float:
            value = getattr(req, name, None)
            return float(opts.get(name, default) if value is None else value)
        tmax = pick("s_tmax", 0.0)
        # only img2img requests carry initial_noise_multiplier (A1111's field): txt2img starts from noise alone
        multiplier = pick("initial_noise_multiplier", 1.0) if hasattr(req, "initial_noise_multiplier") else 1.0
        return cls(pick("s_churn", 0.0), pick("s_tmin", 0.0), math.inf if tmax == 0 else tmax,
                   pick("s_noise", 1.0), pick("s_min_uncond", 0.0), bool(opts.get("s_min_uncond_all", False)),
                   float(opts.get("skip_early_cond", 0.0)), multiplier, float(opts.get("img2img_extra_noise", 0.0)),
                   bool(opts.get("sgm_noise_multiplier", False)),
                   bool(opts.get("always_discard_next_to_last_sigma", False)))

    def _taken(self, scheduler) -> list[tuple[str, str, Any]]:
        accepted = set(inspect.signature(scheduler.step).parameters)
        return [(name, key, getattr(self, name)) for name, key, default in _SIGMA_KEYS
                if name in accepted and getattr(self, name) != default]

    def step_kwargs(self, scheduler) -> dict[str, float]:
        """The sigma parameters the scheduler's step takes and the job sets (others stay at their defaults)."""
        return {name: value for name, _, value in self._taken(scheduler)}

    def infotext(self, scheduler) -> dict[str, Any]:
        return {key: value for _, key, value in self._taken(scheduler)}

    def skip_uncond(self, step: int, steps: int, sigma: float) -> str | None:
        """Why this step runs without the negative prompt ("Skip Early CFG", "NGMS"), or None. As A1111: early
        steps while step / steps <= skip_early_cond; NGMS on odd steps (every step with s_min_uncond_all) once
        sigma is below s_min_uncond."""
        if self.skip_early_cond and step / steps <= self.skip_early_cond:
            return "Skip Early CFG"
        if self.s_min_uncond > 0 and (step % 2 or self.s_min_uncond_all) and sigma < self.s_min_uncond:
            return "NGMS"
        return None

    def skip_infotext(self, skipped: set[str]) -> dict[str, Any]:
        """The infotext keys of the skips that happened (A1111 writes them only then)."""
        p: dict[str, Any] = {}
        if "NGMS" in skipped:
            p["NGMS"] = self.s_min_uncond
            if self.s_min_uncond_all:
                p["NGMS all steps"] = True
        if "Skip Early CFG" in skipped:
            p["Skip Early CFG"] = self.skip_early_cond
        return p

    def can_discard(self, scheduler) -> bool:
        """Whether this scheduler steps through one sigma per step (Euler, Euler a, LMS, the DPM++ multistep
        family, UniPC), so that a sigma can be dropped from its schedule; second-order and alpha-based ones
        (Heun, DPM2, DPM++ SDE, DDIM, PLMS, LCM) interleave or recompute theirs."""
        return type(scheduler).__name__ in _DISCARDABLE

    def set_timesteps(self, scheduler, steps: int, device) -> None:
        """``scheduler.set_timesteps(steps)``; with discard_penultimate (where the scheduler allows it, as A1111's
        setting): a schedule of steps + 1 with the next-to-last sigma dropped, so the last step goes to zero from
        further up."""
        if not (self.discard_penultimate and self.can_discard(scheduler)):
            scheduler.set_timesteps(steps, device=device)
            return
        scheduler.set_timesteps(steps + 1, device=device)
        scheduler.sigmas = torch.cat([scheduler.sigmas[:-2], scheduler.sigmas[-1:]])
        scheduler.timesteps = scheduler.timesteps[:-1]
        scheduler.num_inference_steps = steps

    def start_noise_sigma(self, scheduler) -> float | None:
        """What txt2img's noise is multiplied by when the SGM noise multiplier is on and the scheduler works in
        sigma space (its latents are x + sigma * noise); None: the scheduler's own init_noise_sigma."""
        if not self.sgm_noise or float(scheduler.init_noise_sigma) <= 1.0:
            return None
        return math.sqrt(1.0 + float(scheduler.sigmas[0]) ** 2)

    def noised(self, scheduler, init: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
               img2img: bool) -> torch.Tensor:
        """``init`` noised to timestep ``t`` with A1111's start-noise settings, worked out in k-diffusion's sigma
        space (x + sigma * noise, then extra * noise) and brought back to the scheduler's own space, so that
        alpha-based schedulers (DDIM, DPM++ 2M, ...) get A1111's timestep samplers' figures."""
        multiplier = self.noise_multiplier if img2img else 1.0
        if multiplier == 1.0 and not self.extra_noise and not self.sgm_noise:
            return scheduler.add_noise(init, noise, t)
        noise = noise * multiplier
        one = torch.ones_like(init[:1])
        cx = float(scheduler.add_noise(one, torch.zeros_like(one), t[:1]).flatten()[0])   # 1, or sqrt(alpha)
        cn = float(scheduler.add_noise(torch.zeros_like(one), one, t[:1]).flatten()[0])   # sigma, or sqrt(1-alpha)
        sigma = cn / cx
        scale = math.sqrt(1.0 + sigma ** 2) if self.sgm_noise else sigma
        return (init + noise * (scale + self.extra_noise)) * cx

    def noise_infotext(self, img2img: bool, second_pass: bool) -> dict[str, Any]:
        """A1111's keys for the start noise a job used: "Noise multiplier" (img2img), "Extra noise" (img2img or a
        hires pass), "SGM noise multiplier"."""
        p: dict[str, Any] = {}
        if img2img and self.noise_multiplier != 1.0:
            p["Noise multiplier"] = self.noise_multiplier
        if (img2img or second_pass) and self.extra_noise > 0:
            p["Extra noise"] = self.extra_noise
        if self.sgm_noise:
            p["SGM noise multiplier"] = True
        return p

    def discard_infotext(self, scheduler) -> dict[str, Any]:
        return {"Discard penultimate sigma": True} if self.discard_penultimate and self.can_discard(scheduler) else {}


def sigma_at(scheduler, t) -> float:
    """The noise level (k-diffusion's sigma) of timestep ``t``, from the model's noise schedule."""
    ac = scheduler.alphas_cumprod
    index = min(max(int(round(float(t))), 0), len(ac) - 1)
    a = float(ac[index])
    return math.sqrt((1 - a) / a)
