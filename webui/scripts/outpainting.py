"""Outpainting (img2img): extend the canvas left / right / up / down by N pixels and let the model fill the new
area, as an inpainting job of the engine over the bigger canvas (the mask covers the new area and reaches a few
pixels into the picture so the seam blends). The result is pasted over the canvas, so the original picture
away from the seam comes back unchanged.

- "Outpainting mk2": the new area starts as a colour extension of the picture plus noise with the picture's
  own frequency content ("matched noise": fall-off exponent and colour variation as in A1111), masked content
  "original".
- "Poor man's outpainting": the new area starts as one of the masked-content modes (fill, original, latent
  noise, latent nothing). A1111 does it tile by tile at the generation size; here one pass over the canvas.

The canvas grows to a multiple of 8 px (the extra pixels go to the extended sides); request width/height are
replaced by the canvas size."""
from __future__ import annotations

import copy

import cv2
import numpy as np
from PIL import Image, ImageDraw

from webui.core.errors import InvalidField
from webui.core.request import MASKED_CONTENT
from webui.extensions.api import Processed, Script, process_images

DIRECTIONS = ("left", "right", "up", "down")


def canvas_margins(width: int, height: int, pixels: int, directions: list[str]) -> tuple[int, int, int, int]:
    """(left, right, up, down) pixels to add so the canvas is a multiple of 8 on each side."""
    left, right = (pixels if "left" in directions else 0), (pixels if "right" in directions else 0)
    up, down = (pixels if "up" in directions else 0), (pixels if "down" in directions else 0)
    extra_w = -(width + left + right) % 8
    extra_h = -(height + up + down) % 8
    if extra_w:   # round up on the sides being extended (the right when none is)
        if left and not right:
            left += extra_w
        else:
            right += extra_w
    if extra_h:
        if up and not down:
            up += extra_h
        else:
            down += extra_h
    return left, right, up, down


def outpaint_canvas(image: Image.Image, margins: tuple[int, int, int, int],
                    overlap: int) -> tuple[Image.Image, Image.Image]:
    """(canvas with the picture pasted, edges replicated outward; mask white over the new area and ``overlap``
    px into the picture on the extended sides)."""
    left, right, up, down = margins
    arr = np.asarray(image.convert("RGB"))
    canvas = cv2.copyMakeBorder(arr, up, down, left, right, cv2.BORDER_REPLICATE)
    w, h = canvas.shape[1], canvas.shape[0]
    mask = Image.new("L", (w, h), 255)
    inner = (left + (overlap if left else 0), up + (overlap if up else 0),
             w - right - (overlap if right else 0) - 1, h - down - (overlap if down else 0) - 1)
    if inner[2] >= inner[0] and inner[3] >= inner[1]:
        ImageDraw.Draw(mask).rectangle(inner, fill=0)
    return Image.fromarray(canvas), mask


def matched_noise(canvas: Image.Image, known: np.ndarray, falloff: float, colour_variation: float,
                  seed: int) -> Image.Image:
    """Fill the unknown pixels with a smooth colour extension of the known ones (OpenCV inpainting) plus noise
    whose spectrum follows the known area's (|F|^falloff with random phase), scaled to its contrast; the known
    pixels are kept as they are."""
    rgb = np.asarray(canvas.convert("RGB"))
    unknown = (~known).astype(np.uint8) * 255
    base = cv2.inpaint(rgb, unknown, 5, cv2.INPAINT_TELEA).astype(np.float64) / 255.0
    rng = np.random.default_rng(seed)
    h, w = known.shape
    grey = base.mean(axis=2)
    window = np.where(known, grey - grey[known].mean(), 0.0) if known.any() else grey * 0
    spectrum = np.abs(np.fft.fft2(window)) ** max(0.0, float(falloff))
    spectrum[0, 0] = 0.0
    phase = np.exp(2j * np.pi * rng.random((h, w)))
    shaped = np.real(np.fft.ifft2(spectrum * phase))
    contrast = float(base[known].std()) if known.any() else 0.1
    shaped = shaped / (shaped.std() + 1e-8) * contrast
    noise = shaped[..., None] + rng.normal(0, contrast * max(0.0, colour_variation) * 4, (h, w, 3))
    filled = np.clip(base + noise * (~known)[..., None], 0, 1)
    out = np.where(known[..., None], rgb / 255.0, filled)
    return Image.fromarray((out * 255).round().astype(np.uint8))


def _checked(pixels, directions, image) -> tuple[int, list[str]]:
    try:
        pixels = int(pixels)
    except (TypeError, ValueError):
        raise InvalidField("script_args", f"pixels to expand must be a whole number, got {pixels!r}") from None
    if not 8 <= pixels <= 1024:
        raise InvalidField("script_args", f"pixels to expand must be from 8 to 1024, got {pixels}")
    directions = [directions] if isinstance(directions, str) else list(directions or [])
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise InvalidField("script_args", f"outpainting direction must be some of {', '.join(DIRECTIONS)}, "
                                          f"got {directions!r}")
    if image is None:
        raise InvalidField("init_images", "outpainting needs an init image")
    return pixels, directions


def _run(p, canvas: Image.Image, mask: Image.Image, blur: int, fill: int, extra: dict) -> Processed:
    q = copy.copy(p)
    q.init_images, q.image_mask = [canvas], mask
    q.width, q.height = canvas.size
    q.resize_mode, q.inpaint_full_res, q.inpainting_mask_invert = 0, False, 0
    q.mask_blur, q.mask_blur_x, q.mask_blur_y = blur, blur, blur
    q.inpainting_fill = fill
    q.extra_generation_params.update(extra)
    side = int(p.opts.get("max_image_side", 2048))
    if max(canvas.size) > side:
        raise InvalidField("script_args", f"the outpainted canvas {canvas.width}x{canvas.height} is larger than "
                                          f"{side} px (setting max_image_side)")
    return process_images(q)


class OutpaintingMk2(Script):
    def title(self) -> str:
        return "Outpainting mk2"

    def show(self, is_img2img: bool) -> bool:
        return is_img2img

    def ui(self, is_img2img: bool) -> list:
        import gradio as gr

        gr.HTML("<p>Recommended: denoising strength 0.8 or more, masked content 'original'.</p>")
        pixels = gr.Slider(8, 256, value=128, step=8, label="Pixels to expand", elem_id=self.elem_id("pixels"))
        blur = gr.Slider(0, 64, value=8, step=1, label="Mask blur", elem_id=self.elem_id("mask_blur"))
        direction = gr.CheckboxGroup(list(DIRECTIONS), value=list(DIRECTIONS), label="Outpainting direction",
                                     elem_id=self.elem_id("direction"))
        falloff = gr.Slider(0.0, 4.0, value=1.0, step=0.01, label="Fall-off exponent (lower=higher detail)",
                            elem_id=self.elem_id("noise_q"))
        variation = gr.Slider(0.0, 1.0, value=0.05, step=0.01, label="Color variation",
                              elem_id=self.elem_id("color_variation"))
        return [pixels, blur, direction, falloff, variation]

    def run(self, p, pixels=128, mask_blur=8, direction=DIRECTIONS, noise_q=1.0, color_variation=0.05):
        image = p.init_images[0] if p.init_images else None
        pixels, directions = _checked(pixels, direction, image)
        blur = max(0, int(mask_blur))
        margins = canvas_margins(image.width, image.height, pixels, directions)
        canvas, mask = outpaint_canvas(image, margins, blur)
        left, right, up, down = margins
        known = np.zeros((canvas.height, canvas.width), dtype=bool)
        known[up:up + image.height, left:left + image.width] = True
        seed = p.seed if isinstance(p.seed, int) and p.seed >= 0 else 0
        filled = matched_noise(canvas, known, float(noise_q), float(color_variation), seed)
        return _run(p, filled, mask, blur, 1, {"Outpainting": "mk2", "Outpaint pixels": pixels,
                                                     "Outpaint direction": " ".join(directions)})


class PoorMansOutpainting(Script):
    def title(self) -> str:
        return "Poor man's outpainting"

    def show(self, is_img2img: bool) -> bool:
        return is_img2img

    def ui(self, is_img2img: bool) -> list:
        import gradio as gr

        pixels = gr.Slider(8, 256, value=128, step=8, label="Pixels to expand", elem_id=self.elem_id("pixels"))
        blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id=self.elem_id("mask_blur"))
        fill = gr.Radio(list(MASKED_CONTENT), value="fill", type="index", label="Masked content",
                        elem_id=self.elem_id("inpainting_fill"))
        direction = gr.CheckboxGroup(list(DIRECTIONS), value=list(DIRECTIONS), label="Outpainting direction",
                                     elem_id=self.elem_id("direction"))
        return [pixels, blur, fill, direction]

    def run(self, p, pixels=128, mask_blur=4, inpainting_fill=0, direction=DIRECTIONS):
        image = p.init_images[0] if p.init_images else None
        pixels, directions = _checked(pixels, direction, image)
        if isinstance(inpainting_fill, str) and inpainting_fill in MASKED_CONTENT:
            inpainting_fill = MASKED_CONTENT.index(inpainting_fill)
        if inpainting_fill not in range(4):
            raise InvalidField("script_args", f"masked content must be 0-3 ({', '.join(MASKED_CONTENT)})")
        blur = max(0, int(mask_blur))
        margins = canvas_margins(image.width, image.height, pixels, directions)
        canvas, mask = outpaint_canvas(image, margins, blur * 2)
        return _run(p, canvas, mask, blur * 2, int(inpainting_fill),
                    {"Outpainting": "poor man's", "Outpaint pixels": pixels,
                     "Outpaint direction": " ".join(directions)})
