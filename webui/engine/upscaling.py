"""Upscaling an image with a named upscaler: Lanczos, Nearest, None, or a model from models/ESRGAN etc.

A1111's rule for a model upscaler: run the model (up to 3 passes) until the image is at least the target size,
then resize to the exact target with Lanczos. Model passes run in tiles (settings ESRGAN_tile and
ESRGAN_tile_overlap) so memory is bounded by the tile. Used by the Extras tab / API, hires fix and SD upscale.
"""
from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from webui.core.errors import InvalidField, NotFound
from webui.models.manager import ModelManager
from webui.models.upscalers import upscale_once

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST
MAX_MODEL_PASSES = 3


def upscaler_names(models: ModelManager) -> list[str]:
    return models.upscaler_names()


def check_upscaler(models: ModelManager, name: str | None, field: str = "upscaler") -> str:
    """The upscaler's canonical name; InvalidField naming the valid ones when there is no such upscaler."""
    if not name:
        return "None"
    try:
        file = models.find_upscaler(name)
    except NotFound:
        raise InvalidField(field, f"unknown upscaler {name!r}; valid: {', '.join(models.upscaler_names())}") \
            from None
    return file.name if file is not None else name


def target_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, int(width * scale)), max(1, int(height * scale))


def upscale_to(models: ModelManager, image: Image.Image, size: tuple[int, int], upscaler: str,
               opts: dict | None = None, check: Callable[[int, int], None] | None = None) -> Image.Image:
    """``image`` at exactly ``size`` made by ``upscaler`` ("None" and "Lanczos" resize with Lanczos, "Nearest"
    with nearest neighbour; a model runs its passes first). ``check(done, total)`` is called after each model
    tile (progress, interrupt)."""
    image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    if upscaler in ("None", "Lanczos", "Nearest", None, ""):
        if image.size == size:
            return image.copy()
        return image.resize(size, NEAREST if upscaler == "Nearest" else LANCZOS)
    opts = opts or {}
    model = models.get_upscaler(upscaler)
    tile = int(opts.get("ESRGAN_tile", 192))
    overlap = int(opts.get("ESRGAN_tile_overlap", 8))
    out = image.convert("RGB")
    for _ in range(MAX_MODEL_PASSES):   # at least one pass: a 1x model (restoration) still runs
        out = upscale_once(model, out, tile, overlap, check)
        if model.scale == 1 or out.width >= size[0] and out.height >= size[1]:
            break
    if out.size != size:
        out = out.resize(size, LANCZOS)
    return out


def upscale(models: ModelManager, image: Image.Image, scale: float, upscaler: str, opts: dict | None = None,
            check: Callable[[int, int], None] | None = None) -> Image.Image:
    """``image`` made ``scale`` times larger (int(w * scale) x int(h * scale)) by ``upscaler``."""
    return upscale_to(models, image, target_size(image.width, image.height, scale), upscaler, opts, check)
