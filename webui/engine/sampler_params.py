"""A1111's "Sampler parameters": sigma churn / tmin / tmax / noise for the samplers that take them (Euler; DPM++ SDE
takes the noise), and the two ways of skipping the negative prompt's UNet pass: "Negative Guidance minimum sigma"
(NGMS, late steps) and "Ignore negative prompt during early steps" (Skip Early CFG)."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

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

    @classmethod
    def of(cls, req, opts: dict) -> SamplerParams:
        """The job's values: a request field where the request sets it (A1111's API has s_churn, s_tmin, s_tmax,
        s_noise, s_min_uncond), else the setting."""
        def pick(name: str, default: float) -> float:
            value = getattr(req, name, None)
            return float(opts.get(name, default) if value is None else value)
        tmax = pick("s_tmax", 0.0)
        return cls(pick("s_churn", 0.0), pick("s_tmin", 0.0), math.inf if tmax == 0 else tmax,
                   pick("s_noise", 1.0), pick("s_min_uncond", 0.0), bool(opts.get("s_min_uncond_all", False)),
                   float(opts.get("skip_early_cond", 0.0)))

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


def sigma_at(scheduler, t) -> float:
    """The noise level (k-diffusion's sigma) of timestep ``t``, from the model's noise schedule."""
    ac = scheduler.alphas_cumprod
    index = min(max(int(round(float(t))), 0), len(ac) - 1)
    a = float(ac[index])
    return math.sqrt((1 - a) / a)
