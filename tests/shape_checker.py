"""A small classical image checker for the "shapes" world (OpenCV + numpy, no learned model).

Given an RGB image with a plain background and one (main) foreground shape it tells:

- ``background``: the named colour of the background (median of the image border),
- ``colour``: the dominant named colour of the largest foreground blob (majority vote of its eroded core pixels),
- ``shape``: circle / square / triangle / star, from the blob's contour (solidity = area / convex-hull area, and how
  much of its minimum enclosing circle it fills),
- ``position``: left / right / top / bottom / centre, from the blob's centroid.

It is what tests/test_bundled_quality.py uses to judge the bundled model, and it has its own tests on drawn images
(tests/test_shape_checker.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Same reference colours as tools/shapes_dataset.py (kept here so the checker does not depend on the tool).
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (35, 70, 220),
    "yellow": (245, 220, 35),
    "purple": (135, 45, 170),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
_NAMES = list(NAMED_COLOURS)


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    """N x 3 uint8 RGB -> N x 3 float Lab (L in 0..100, a/b roughly -128..127)."""
    arr = np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0
    return cv2.cvtColor(arr, cv2.COLOR_RGB2Lab).reshape(-1, 3)


_REF_LAB = _to_lab(np.array([NAMED_COLOURS[n] for n in _NAMES], np.uint8))


def colour_indices(pixels: np.ndarray) -> np.ndarray:
    """Index into the named-colour list of the nearest named colour (Lab distance) for each RGB pixel."""
    lab = _to_lab(pixels)
    d = ((lab[:, None, :] - _REF_LAB[None, :, :]) ** 2).sum(-1)
    return d.argmin(1)


def name_colour(rgb) -> str:
    """The nearest named colour of one RGB triple."""
    return _NAMES[int(colour_indices(np.asarray(rgb, np.uint8).reshape(1, 3))[0])]


@dataclass
class Analysis:
    background: str
    colour: str | None
    shape: str | None
    position: str | None
    centroid: tuple[float, float] | None
    area: float
    solidity: float
    circle_fill: float
    mask: np.ndarray  # HxW bool, the main blob

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("background", "colour", "shape", "position", "centroid", "area",
                                              "solidity", "circle_fill")}


def _as_rgb_array(image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError("expected an RGB image")
    return np.ascontiguousarray(arr.astype(np.uint8))


def background_rgb(img: np.ndarray, border: int = 4) -> np.ndarray:
    """Median colour of a frame of ``border`` pixels around the image."""
    frame = np.concatenate([img[:border].reshape(-1, 3), img[-border:].reshape(-1, 3),
                            img[:, :border].reshape(-1, 3), img[:, -border:].reshape(-1, 3)])
    return np.median(frame, axis=0)


def foreground_mask(img: np.ndarray, bg_rgb: np.ndarray, threshold: float = 25.0) -> np.ndarray:
    """Pixels whose Lab colour is farther than ``threshold`` from the background colour."""
    lab = _to_lab(img.reshape(-1, 3)).reshape(img.shape)
    bg_lab = _to_lab(np.asarray(bg_rgb, np.float32).clip(0, 255).astype(np.uint8).reshape(1, 3))[0]
    dist = np.sqrt(((lab - bg_lab) ** 2).sum(-1))
    return dist > threshold


def classify_contour(contour: np.ndarray) -> tuple[str, float, float]:
    """(shape name, solidity, circle fill) of one outer contour.

    A shape with solidity (area / convex-hull area) below 0.88 is a star (an ideal 5-point star: ~0.6; the convex
    shapes: ~1.0). A convex shape is the one of circle / square / triangle whose minimum enclosing figure it fills
    best: area over the minimum enclosing circle (circle 1.0, square 0.64, triangle 0.41), over the minimum-area
    rectangle (square 1.0, circle 0.79, triangle 0.5) and over the minimum enclosing triangle (triangle 1.0,
    circle 0.6, square 0.5). Blurred or rounded outlines keep the order.
    """
    area = float(cv2.contourArea(contour))
    hull = cv2.convexHull(contour)
    hull_area = float(cv2.contourArea(hull))
    solidity = area / hull_area if hull_area > 0 else 0.0
    (_, _), radius = cv2.minEnclosingCircle(contour)
    circle_fill = area / (np.pi * radius * radius) if radius > 0 else 0.0
    if solidity < 0.88:
        return "star", solidity, circle_fill
    (_, (rw, rh), _) = cv2.minAreaRect(contour)
    rect_fill = area / (rw * rh) if rw * rh > 0 else 0.0
    tri_area, _ = cv2.minEnclosingTriangle(hull.astype(np.float32))
    tri_fill = area / tri_area if tri_area > 0 else 0.0
    fills = {"circle": circle_fill, "square": rect_fill, "triangle": tri_fill}
    return max(fills, key=fills.get), solidity, circle_fill


def position_of(cx: float, cy: float, width: int, height: int) -> str:
    """left / right / top / bottom / centre from a centroid; 'centre' within 12.5 % of the width of the middle on
    both axes."""
    dx = (cx - width / 2) / width
    dy = (cy - height / 2) / height
    if max(abs(dx), abs(dy)) < 0.125:
        return "centre"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def analyse(image, min_area_frac: float = 0.004) -> Analysis:
    """Analyse an RGB image (PIL image or HxWx3 uint8 array) of the shapes world."""
    img = _as_rgb_array(image)
    h, w = img.shape[:2]
    bg = background_rgb(img)
    background = name_colour(bg.round().astype(np.uint8))
    mask = foreground_mask(img, bg)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    mask_u8 = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask_u8, connectivity=8)
    if n <= 1:
        return Analysis(background, None, None, None, None, 0.0, 0.0, 0.0, np.zeros((h, w), bool))
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    area = float(stats[k, cv2.CC_STAT_AREA])
    blob = labels == k
    if area < min_area_frac * h * w:
        return Analysis(background, None, None, None, None, area, 0.0, 0.0, blob)
    # fill holes so the contour is the outer outline
    contours, _ = cv2.findContours(blob.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    shape, solidity, circle_fill = classify_contour(contour)
    # colour: vote over the blob's core (eroded, to skip the anti-aliased / blurred rim)
    core = cv2.erode(blob.astype(np.uint8), kernel, iterations=2).astype(bool)
    if core.sum() < 10:
        core = blob
    votes = np.bincount(colour_indices(img[core]), minlength=len(_NAMES))
    colour = _NAMES[int(votes.argmax())]
    cx, cy = float(centroids[k][0]), float(centroids[k][1])
    return Analysis(background, colour, shape, position_of(cx, cy, w, h), (cx, cy), area, solidity, circle_fill,
                    blob)


def edge_map(image, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edges (HxW bool) of an RGB image, computed the way the ControlNet's canny annotator does."""
    return cv2.Canny(_as_rgb_array(image), low, high) > 0


def edge_iou(a: np.ndarray, b: np.ndarray, tolerance: int = 2) -> float:
    """IoU of two edge maps after dilating each by ``tolerance`` pixels (edges a pixel or two apart count as one)."""
    if tolerance > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
        a = cv2.dilate(a.astype(np.uint8), k).astype(bool)
        b = cv2.dilate(b.astype(np.uint8), k).astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
