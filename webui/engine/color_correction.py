"""img2img colour correction (A1111's setting ``img2img_color_correction``): the result's colours are matched, in
LAB, to the histogram of the picture it started from, and only the hue and saturation of that match are kept over
the result's own luminosity. Colours then stop drifting over loopback or strong denoising while the detail the
model drew stays."""
from __future__ import annotations

import cv2
import numpy as np
from blendmodes.blend import BlendType, blendLayers
from PIL import Image
from skimage.exposure import match_histograms


def correction_target(image: Image.Image) -> np.ndarray:
    """The reference a result is corrected towards: the starting picture in LAB."""
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2LAB)


def apply_color_correction(target: np.ndarray, image: Image.Image) -> Image.Image:
    """``image`` with the colours of ``target`` (from ``correction_target``) and its own luminosity."""
    rgb = image.convert("RGB")
    lab = cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2LAB)
    matched = match_histograms(lab, target, channel_axis=2)
    corrected = Image.fromarray(cv2.cvtColor(np.clip(matched, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB))
    return blendLayers(corrected, rgb, BlendType.LUMINOSITY).convert("RGB")
