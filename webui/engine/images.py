"""Image geometry for img2img and inpainting: A1111's resize modes, mask blur, the "only masked" crop; and
decoding the base64 images requests carry."""
from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from webui.core.errors import InvalidField


def scaled_size(image: Image.Image, scale: float) -> tuple[int, int]:
    """img2img's "Resize by": the input image's size times ``scale``, down to multiples of 8 (as A1111)."""
    w, h = int(image.width * float(scale)), int(image.height * float(scale))
    return max(8, w - w % 8), max(8, h - h % 8)


def resize_image(mode: int, im: Image.Image, width: int, height: int) -> Image.Image:
    """0 just resize (stretch), 1 crop and resize (fill the box, crop the overflow, centred), 2 resize and fill
    (fit inside, fill the bands with the stretched edge rows/columns), 3 as 0 (the latent upscale happens later)."""
    lanczos = Image.Resampling.LANCZOS
    if mode in (0, 3) or im.size == (width, height):
        return im.resize((width, height), lanczos)
    ratio, src_ratio = width / height, im.width / im.height
    if mode == 1:
        w = width if ratio > src_ratio else im.width * height // im.height
        h = height if ratio <= src_ratio else im.height * width // im.width
        resized = im.resize((w, h), lanczos)
        out = Image.new(im.mode, (width, height))
        out.paste(resized, box=(width // 2 - w // 2, height // 2 - h // 2))
        return out
    w = width if ratio < src_ratio else im.width * height // im.height
    h = height if ratio >= src_ratio else im.height * width // im.width
    resized = im.resize((w, h), lanczos)
    out = Image.new(im.mode, (width, height))
    out.paste(resized, box=(width // 2 - w // 2, height // 2 - h // 2))
    if ratio < src_ratio:        # bands above and below
        fill = height // 2 - h // 2
        if fill > 0:
            out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            out.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                      box=(0, fill + h))
    elif ratio > src_ratio:      # bands left and right
        fill = width // 2 - w // 2
        if fill > 0:
            out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            out.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                      box=(fill + w, 0))
    return out


def prepare_mask(mask: Image.Image, invert: bool, blur_x: int, blur_y: int, size: tuple[int, int],
                 resize_mode: int) -> tuple[Image.Image, Image.Image]:
    """(hard mask, blurred mask) as "L" images at the output size; white = repaint."""
    m = mask.convert("RGBA")
    alpha = np.asarray(m)[..., 3]
    lum = np.asarray(m.convert("L"))
    # an editor layer (transparent where not painted) or a plain black/white image
    arr = np.where(alpha < 255, alpha, lum) if (alpha < 255).any() else lum
    hard = Image.fromarray(((arr > 127) * 255).astype(np.uint8))
    if invert:
        hard = Image.fromarray(255 - np.asarray(hard))
    hard = resize_image(resize_mode, hard, *size).point(lambda v: 255 if v > 127 else 0)
    blurred = hard
    if blur_x > 0 or blur_y > 0:
        arr = np.asarray(hard, dtype=np.float32)
        import cv2
        kx = 2 * int(2.5 * blur_x + 0.5) + 1 if blur_x > 0 else 1
        ky = 2 * int(2.5 * blur_y + 0.5) + 1 if blur_y > 0 else 1
        arr = cv2.GaussianBlur(arr, (kx, ky), sigmaX=max(blur_x, 1e-6), sigmaY=max(blur_y, 1e-6))
        blurred = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return hard, blurred


def masked_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box around the mask plus padding, grown to the output's aspect ratio and kept inside the image."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    x1, y1, x2, y2 = max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), \
        min(y2 + padding, mask.height)
    ratio = width / height
    w, h = x2 - x1, y2 - y1
    if w / h < ratio:
        grow = int(h * ratio) - w
        x1, x2 = x1 - grow // 2, x2 + grow - grow // 2
    else:
        grow = int(w / ratio) - h
        y1, y2 = y1 - grow // 2, y2 + grow - grow // 2
    if x1 < 0:
        x2, x1 = x2 - x1, 0
    if y1 < 0:
        y2, y1 = y2 - y1, 0
    if x2 > mask.width:
        x1, x2 = max(0, x1 - (x2 - mask.width)), mask.width
    if y2 > mask.height:
        y1, y2 = max(0, y1 - (y2 - mask.height)), mask.height
    return x1, y1, x2, y2


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area painted with the surrounding colours before encoding."""
    import cv2
    arr = np.asarray(image.convert("RGB"))
    m = (np.asarray(mask) > 127).astype(np.uint8)
    return Image.fromarray(cv2.inpaint(arr, m, 3, cv2.INPAINT_TELEA))


def composite(original: Image.Image, generated: Image.Image, soft_mask: Image.Image) -> Image.Image:
    """The result pasted over the original: outside the (blurred) mask the original's pixels, exactly."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), soft_mask)


def decode_image(data: str, field: str = "image", max_side: int | None = None) -> Image.Image:
    """A PIL image from base64 PNG, JPEG or WebP (a data-URL prefix is accepted); InvalidField when it is not
    one, or when a side is larger than max_side (checked from the header, before the pixels are decoded)."""
    if not isinstance(data, str) or not data.strip():
        raise InvalidField(field, "no image given (base64 PNG, JPEG or WebP expected)")
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidField(field, "not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if max_side is not None and max(image.size) > max_side:
            raise InvalidField(field, f"the image is {image.width}x{image.height}, larger than {max_side} px "
                                      f"on a side (twice the setting max_image_side)")
        image.load()
    except Image.DecompressionBombError:
        raise InvalidField(field, "the image has too many pixels to be decoded safely") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise InvalidField(field, "base64 decoded, but it is not an image (PNG, JPEG or WebP expected)") from None
    return image
