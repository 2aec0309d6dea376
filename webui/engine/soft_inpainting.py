"""Soft inpainting's two parts, as A1111's built-in script does them (its behaviour, re-derived):

1. Every step, the unmasked part is brought back towards the original not by a hard switch but by a blend of the
   original's and the current latents whose weight follows the (blurred, unrounded) mask raised to a power that
   falls with the noise level (``sigma ** schedule_bias * preservation_strength``), and whose vectors keep a
   magnitude interpolated between the two (a power mean, ``transition_contrast_boost``), so partly masked areas do
   not fade. The last step's latents are left as they are.
2. After decoding, the original's pixels go back over the result wherever the latents hardly changed: the
   per-pixel distance between the final and the original latents, smoothed by two weighted-percentile filters,
   becomes an opacity (half at ``difference_threshold``, sharper with ``difference_contrast``, biased by the mask
   with ``mask_influence``), which is scaled to the picture and blurred.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFilter

from webui.core.soft_inpainting import SoftInpainting
from webui.engine import images as geo


def blend_weight(settings: SoftInpainting, mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """How much of the current latents a step keeps (0: the original's), from the mask (1 = repaint)."""
    return torch.pow(mask, (sigma ** settings.schedule_bias) * settings.preservation_strength)


def latent_blend(settings: SoftInpainting, original: torch.Tensor, current: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
    """(1 - t) original + t current, each latent pixel's vector rescaled to the power mean (power:
    transition_contrast_boost) of the two vectors' lengths."""
    p = settings.transition_contrast_boost
    t = t.to(current.dtype)
    mixed = original * (1 - t) + current * t
    t64 = t[:, :1].double()
    length = torch.linalg.vector_norm(mixed, dim=1, keepdim=True).double() + 1e-5
    want = ((torch.linalg.vector_norm(original, dim=1, keepdim=True).double() ** p) * (1 - t64)
            + (torch.linalg.vector_norm(current, dim=1, keepdim=True).double() ** p) * t64) ** (1 / p)
    return mixed * (want / length).to(current.dtype)


def gaussian_kernel(stddev: float = 1.5, radius: int = 2) -> np.ndarray:
    """A (2r+1)^2 Gaussian peaking at 1, shifted and rescaled so it reaches 0 one pixel past the radius."""
    zero = math.exp(-((radius + 1.0) ** 2) / stddev ** 2)
    ys, xs = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    g = np.exp(-(xs ** 2 + ys ** 2) / stddev ** 2)
    return np.maximum(0.0, (g - zero) / (1 - zero))


def percentile_filter(img: np.ndarray, kernel: np.ndarray, low: float, high: float, min_width: float = 1.0
                      ) -> np.ndarray:
    """Each pixel: the mean of its neighbourhood's values, sorted and stacked by kernel weight, over the part of
    the stack between the fractions ``low`` and ``high`` of its height (at least ``min_width`` of weight wide)."""
    h, w = img.shape
    r = kernel.shape[0] // 2
    values, weights = [], []
    padded = np.pad(img, r)
    inside = np.pad(np.ones_like(img), r)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            values.append(padded[r + dy:r + dy + h, r + dx:r + dx + w])
            weights.append(inside[r + dy:r + dy + h, r + dx:r + dx + w] * kernel[r + dy, r + dx])
    v, wt = np.stack(values, -1), np.stack(weights, -1)
    order = np.argsort(v, axis=-1, kind="stable")
    v, wt = np.take_along_axis(v, order, -1), np.take_along_axis(wt, order, -1)
    top = np.cumsum(wt, axis=-1)
    bottom = top - wt
    total = top[..., -1:]
    lo, hi = total * low, total * high
    centre = (lo + hi) / 2
    narrow = (hi - lo) < min_width
    lo = np.where(narrow, centre - min_width / 2, lo)
    hi = np.where(narrow, centre + min_width / 2, hi)
    over = narrow & (hi > total)
    lo, hi = np.where(over, total - min_width, lo), np.where(over, total, hi)
    under = narrow & (lo < 0)
    lo, hi = np.where(under, 0, lo), np.where(under, min_width, hi)
    overlap = np.clip(np.minimum(hi, top) - np.maximum(lo, bottom), 0, None)
    weight = overlap.sum(-1)
    return np.where(weight > 0, (v * overlap).sum(-1) / np.where(weight > 0, weight, 1), 0.0)


def smootherstep(x: np.ndarray) -> np.ndarray:
    return x * x * x * (x * (6 * x - 15) + 10)


def composite_masks(settings: SoftInpainting, mask: torch.Tensor, original: torch.Tensor, final: torch.Tensor,
                    size: tuple[int, int]) -> list[Image.Image]:
    """Per image, where the result shows through (white) over the original, at ``size`` (w, h): from how far
    each latent pixel moved (``mask``: the latent mask, 1 = repaint; latents (B, C, h, w))."""
    m = torch.clamp(mask[:, 0].float(), 0, 1) ** (settings.preservation_strength / 2)
    scalar = 0.5 * (1 - settings.mask_influence) + (1 - m) * settings.mask_influence
    scalar = (scalar / (1.00001 - scalar)).cpu().numpy()
    distance = torch.linalg.vector_norm((final - original).float(), dim=1).cpu().numpy()
    kernel = gaussian_kernel()
    out = []
    for i, d in enumerate(distance):
        d = percentile_filter(d, kernel, 0.9, 1.0)
        d = percentile_filter(d, kernel, 0.25, 0.75)
        half = settings.difference_threshold * scalar[min(i, len(scalar) - 1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            kept = 1 / (1 + (d / half) ** settings.difference_contrast)
        kept = np.nan_to_num(kept, nan=0.0)
        shown = (255.0 * (1 - smootherstep(kept))).astype(np.uint8)
        image = geo.resize_image(2, Image.fromarray(shown), *size)
        out.append(image.filter(ImageFilter.GaussianBlur(radius=4)))
    return out
