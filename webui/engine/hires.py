"""Hires fix's plan: the second pass's size, upscaler, steps, sampler and its infotext keys."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webui.core.request import GenerationRequest
from webui.core.samplers import schedule_label
from webui.engine import samplers as engine_samplers
from webui.engine import sampling

IMAGE_UPSCALERS = ("None", "Lanczos", "Nearest")


def hires_upscalers(models=None) -> list[str]:
    """The latent modes, then "None", "Lanczos", "Nearest" and (given the model manager) the model upscalers."""
    extra = [f.name for f in models.upscalers] if models is not None else []
    return [*sampling.LATENT_UPSCALE_MODES, *IMAGE_UPSCALERS, *extra]


@dataclass(frozen=True)
class HiresPlan:
    width: int
    height: int
    upscaler: str
    steps: int
    denoising: float
    sampler: str
    schedule: str
    checkpoint: str | None = None         # the second pass's own checkpoint (its name); None: the job's
    checkpoint_title: str | None = None   # its short title, for the infotext
    own_sampler: bool = False             # the request chose the second pass's sampler or schedule
    first_pass: Any = None                # A1111's firstpass_image (PIL, width x height): it stands in for the
                                          # first pass, which is then not sampled

    def infotext(self, req: GenerationRequest) -> dict[str, Any]:
        p: dict[str, Any] = {}
        if req.hr_resize_x or req.hr_resize_y:
            p["Hires resize"] = f"{self.width}x{self.height}"
        else:
            p["Hires upscale"] = req.hr_scale
        if req.hr_second_pass_steps:
            p["Hires steps"] = req.hr_second_pass_steps
        p["Hires upscaler"] = self.upscaler
        if self.checkpoint_title:
            p["Hires checkpoint"] = self.checkpoint_title
        if self.own_sampler:
            p["Hires sampler"] = self.sampler
            p["Hires schedule type"] = samplers_label(engine_samplers.effective_schedule(self.sampler,
                                                                                         self.schedule))
        if req.hr_prompt and req.hr_prompt != req.prompt:
            p["Hires prompt"] = req.hr_prompt
        if req.hr_negative_prompt and req.hr_negative_prompt != req.negative_prompt:
            p["Hires negative prompt"] = req.hr_negative_prompt
        return p


def samplers_label(schedule: str) -> str:
    return schedule_label(schedule)
