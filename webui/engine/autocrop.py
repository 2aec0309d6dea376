"""Extras' crops for preparing training pictures, as A1111's "Auto focal point crop" and "Auto-sized crop" do them.

Focal point: the picture is scaled to cover the target size, then cut to it around a point of interest: the weighted
mean of the centroids of its corner features (OpenCV's good-features-to-track, the bottom tenth greyed out so a
watermark does not pull), of its most "entropic" target-sized window along the long side, and of its faces (OpenCV's
YuNet when ``models/opencv/face_detection_yunet_2023mar.onnx`` is there, else the Haar cascades A1111 falls back to
offline, where the installed OpenCV still has them: OpenCV 5 dropped them, so without the YuNet file no faces are
found and the face weight drops out). Auto-sized: the largest (or the best-fitting) size in steps of 64 within
the given sides and areas whose proportions are close enough to the picture's, centre-cropped and resized.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
# (cascade file, smallest face as a fraction of the short side), tried in order until one finds something
HAAR_TRIES = (("haarcascade_eye.xml", 0.01), ("haarcascade_frontalface_default.xml", 0.05),
              ("haarcascade_profileface.xml", 0.05), ("haarcascade_frontalface_alt.xml", 0.05),
              ("haarcascade_frontalface_alt2.xml", 0.05), ("haarcascade_frontalface_alt_tree.xml", 0.05),
              ("haarcascade_eye_tree_eyeglasses.xml", 0.05), ("haarcascade_upperbody.xml", 0.05))


@dataclass
class Point:
    x: float
    y: float
    weight: float = 1.0


@dataclass(frozen=True)
class FocalWeights:
    face: float = 0.9
    entropy: float = 0.15
    edges: float = 0.5


def _cover_scale(w: int, h: int, tw: int, th: int) -> float:
    """A1111's scale before the crop: a landscape picture to the target's height, a portrait one to its width, a
    square one by the target's longer side."""
    if w > h:
        return th / h
    if h > w:
        return tw / w
    return (th / h) if th > tw else (tw / w)


def corner_points(im: Image.Image) -> list[Point]:
    gray = im.convert("L")
    ImageDraw.Draw(gray).rectangle([0, im.height * 0.9, im.width, im.height], fill="#999")
    pts = cv2.goodFeaturesToTrack(np.asarray(gray), maxCorners=100, qualityLevel=0.04,
                                  minDistance=min(im.width, im.height) * 0.06, useHarrisDetector=False)
    return [] if pts is None else [Point(float(p[0][0]), float(p[0][1])) for p in pts]


def _entropy(im: Image.Image) -> float:
    """The Shannon entropy of the window's grey levels. (A1111 sums -log2 of the frequencies, unweighted, over the
    dithered 1-bit picture: that favours a window with a sliver of detail over one holding all of it, and reads
    flat grey, dithered, as busy. Its code keeps the greyscale line this follows, commented out.)"""
    hist = np.bincount(np.asarray(im.convert("L"), dtype=np.uint8).ravel(), minlength=256)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def entropy_points(im: Image.Image, tw: int, th: int) -> list[Point]:
    """The centre of the target-sized window, slid 4 px at a time along the long side, with the most entropy."""
    if im.width == im.height:
        return []
    axis = 0 if im.width > im.height else 1
    box, best, best_e = [0, 0, tw, th], [0, 0, tw, th], 0.0
    while box[axis + 2] < im.size[axis]:
        e = _entropy(im.crop(tuple(box)))
        if e > best_e:
            best_e, best = e, list(box)
        box[axis] += 4
        box[axis + 2] += 4
    return [Point(int(best[0] + tw / 2), int(best[1] + th / 2))]


def face_points(im: Image.Image, yunet: Path | None) -> list[Point]:
    rgb = np.asarray(im.convert("RGB"))
    if yunet is not None and yunet.is_file():
        detector = cv2.FaceDetectorYN.create(str(yunet), "", (im.width, im.height), 0.9, 0.3, 5000)
        _, faces = detector.detect(rgb[:, :, ::-1].copy())
        # the focus of a face: its middle across, a third of the way down
        return [] if faces is None else [Point(int(f[0] + f[2] * 0.5), int(f[1] + f[3] * 0.33)) for f in faces]
    cascade = getattr(cv2, "CascadeClassifier", None)   # gone from OpenCV 5, with its cascade files
    folder = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or ".")
    if cascade is None:
        return []
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    for name, fraction in HAAR_TRIES:
        if not (folder / name).is_file():
            continue
        classifier = cascade(str(folder / name))
        size = int(min(im.width, im.height) * fraction)
        found = classifier.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=7, minSize=(size, size),
                                            flags=cv2.CASCADE_SCALE_IMAGE)
        if len(found):
            return [Point(x + w // 2, y + h // 2) for x, y, w, h in found]
    return []


def _centroid(points: list[Point]) -> Point:
    return Point(sum(p.x for p in points) / len(points), sum(p.y for p in points) / len(points))


def focal_point(im: Image.Image, tw: int, th: int, weights: FocalWeights, yunet: Path | None,
                draw: ImageDraw.ImageDraw | None = None) -> Point:
    groups = [(weights.edges, corner_points(im) if weights.edges > 0 else [], "#00F", "Edge"),
              (weights.entropy, entropy_points(im, tw, th) if weights.entropy > 0 else [], "#ff0", "Entropy"),
              (weights.face, face_points(im, yunet) if weights.face > 0 else [], "#F00", "Face")]
    groups = [g for g in groups if g[1]]
    total = sum(w for w, *_ in groups)
    x = y = weight = 0.0
    size = min(im.width, im.height) * 0.07
    for w, points, colour, label in groups:
        c = _centroid(points)
        share = w / total
        x, y, weight = x + c.x * share, y + c.y * share, weight + share
        if draw is not None:
            r = size * share / 2
            draw.text((c.x - r, c.y - r - 15), f"{label}: {share:.02f}", fill=colour)
            draw.ellipse([c.x - r, c.y - r, c.x + r, c.y + r], outline=colour)
            for p in points if len(points) > 1 else []:
                draw.rectangle([p.x - 2, p.y - 2, p.x + 2, p.y + 2], outline=colour)
    # no point found at all: the top-left corner, as A1111
    return Point(round(x / weight) if weight else 0, round(y / weight) if weight else 0)


def _place(centre: float, size: int, extent: int) -> int:
    """Where a window of ``size`` centred at ``centre`` starts, moved back inside ``extent`` (its start first)."""
    start = int(centre - size // 2)
    if start < 0:
        return 0
    return extent - size if start + size > extent else start


def focal_crop(image: Image.Image, tw: int, th: int, weights: FocalWeights | None = None,
               yunet: Path | None = None, debug: bool = False) -> tuple[Image.Image, Image.Image | None]:
    """``image`` cut to ``tw`` x ``th`` around its focal point (and, with ``debug``, the scaled picture with the
    points of interest and the crop drawn on it)."""
    weights = weights or FocalWeights()
    s = _cover_scale(image.width, image.height, tw, th)
    im = image.resize((int(image.width * s), int(image.height * s)))
    shown = im.copy() if debug else None
    focus = focal_point(im, tw, th, weights, yunet, ImageDraw.Draw(shown) if shown is not None else None)
    x1, y1 = _place(focus.x, tw, im.width), _place(focus.y, th, im.height)
    box = (x1, y1, x1 + tw, y1 + th)
    if shown is not None:
        d = ImageDraw.Draw(shown)
        r = min(im.width, im.height) * 0.07 / 2
        d.ellipse([focus.x - r, focus.y - r, focus.x + r, focus.y + r], outline="#0F0")
        d.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline="#0F0")
    return im.crop(box), shown


def autosized_size(width: int, height: int, min_dim: int, max_dim: int, min_area: int, max_area: int,
                   objective: str, threshold: float) -> tuple[int, int] | None:
    """The size "Auto-sized crop" picks: sides in steps of 64 from min_dim to max_dim, area within bounds, the
    proportions' error (1 - the smaller ratio of the two aspect ratios) at most ``threshold``; the largest area
    (then the smallest error) for "Maximize area", else the smallest error (then the largest area)."""
    def error(w: int, h: int) -> float:
        r = (width / height) / (w / h)
        return 1 - (r if r < 1 else 1 / r)
    fits = [(w, h) for w in range(min_dim, max_dim + 1, 64) for h in range(min_dim, max_dim + 1, 64)
            if min_area <= w * h <= max_area and error(w, h) <= threshold]
    if not fits:
        return None
    if objective == "Maximize area":
        return max(fits, key=lambda wh: (wh[0] * wh[1], -error(*wh)))
    return max(fits, key=lambda wh: (-error(*wh), wh[0] * wh[1]))


def centre_crop(image: Image.Image, w: int, h: int) -> Image.Image:
    """The largest centred box of ``w``:``h`` proportions, resized to ``w`` x ``h`` (sub-pixel box, Lanczos)."""
    iw, ih = image.size
    if ih / h < iw / w:
        sw = w * ih / h
        box = ((iw - sw) / 2, 0, iw - (iw - sw) / 2, ih)
    else:
        sh = h * iw / w
        box = (0, (ih - sh) / 2, iw, ih - (ih - sh) / 2)
    return image.resize((w, h), Image.Resampling.LANCZOS, box)
