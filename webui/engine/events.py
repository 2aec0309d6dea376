"""Listeners the engine calls at fixed points of every job, whatever face submitted it: before and after an image
is saved, and at every step of the sampling loop just before the UNet runs. Extensions' callbacks
(on_before_image_saved, on_image_saved, on_cfg_denoiser) are added here by the extension loader; app.py builds one
EngineEvents and hands it to the Engine. With no listeners nothing changes."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImageSaveParams:
    """A1111's ImageSaveParams. Before saving, ``filename`` is the folder the file goes to (its numbered name
    is chosen while saving); after, the saved file's path. Replace ``image`` or edit ``pnginfo["parameters"]``
    (the infotext) in on_before_image_saved to change what is written."""

    image: Any
    p: Any                      # the request (A1111's field names: p.prompt, p.seed, ...)
    filename: str
    pnginfo: dict[str, Any]


@dataclass
class CFGDenoiserParams:
    """A1111's CFGDenoiserParams, at one step of the sampling loop before the guided UNet call. Listeners may
    replace ``x`` (the latents of the batch) and edit ``text_cond`` (a list of (Cond, weight) pairs: AND parts)
    and ``text_uncond`` (a Cond; Cond has ``embeds`` and, for SDXL, ``pooled``)."""

    x: Any
    image_cond: Any
    sigma: Any                  # the scheduler's timestep of this step
    sampling_step: int
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None


@dataclass
class EngineEvents:
    before_image_saved: list[Callable[[ImageSaveParams], None]] = field(default_factory=list)
    image_saved: list[Callable[[ImageSaveParams], None]] = field(default_factory=list)
    cfg_denoiser: list[Callable[[CFGDenoiserParams], None]] = field(default_factory=list)
