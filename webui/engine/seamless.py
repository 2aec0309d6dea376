"""Tiling (A1111's "tiling" field): every convolution of the UNet and VAE pads circularly for the job, so the
picture wraps around at its edges and tiles without a seam."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def circular_padding(*models: torch.nn.Module | None, enabled: bool = True) -> Iterator[None]:
    """Within the block, the models' Conv2d layers pad circularly; their own padding modes come back after."""
    if not enabled:
        yield
        return
    convs = [m for model in models if model is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    before = [c.padding_mode for c in convs]
    for c in convs:
        c.padding_mode = "circular"
    try:
        yield
    finally:
        for c, mode in zip(convs, before):
            c.padding_mode = mode
