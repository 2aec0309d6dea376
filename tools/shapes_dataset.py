"""The "shapes" world the bundled model is trained on: a deterministic, procedural, captioned image set.

Every sample is a 128x128 RGB image with one or two flat-coloured shapes on a plain, named background, and a caption
that describes it, for example ``"a large red circle on the left, blue background"``. Sample ``i`` of seed ``s`` is a
pure function of ``(s, i)``: the same on every machine, in any order, with no files to download.

Vocabulary (what the bundled model knows):

- colours: red, green, blue, yellow, purple, orange, white, black (shapes and backgrounds)
- shapes: circle, square, triangle, star
- sizes: small, large
- positions: left, right, top, bottom, centre (also written "center" / "middle")

Captions vary in wording (templates, synonyms, optional size / position / background). With one shape the default
phrasing is ``"a {size} {colour} {shape} {position phrase}, {background} background"``.

Usage::

    python tools/shapes_dataset.py --out /tmp/shapes --count 16      # write a few PNGs + captions.txt to look at
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

SIZE = 128

# Named colours (RGB). The checker in tests/shape_checker.py names colours against the same table.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (35, 70, 220),
    "yellow": (245, 220, 35),
    "purple": (135, 45, 170),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")

# Centre of each position (x, y) in pixels, and the radius ("size" of the shape's circumscribed circle) per size.
ANCHORS: dict[str, tuple[int, int]] = {
    "left": (34, 64),
    "right": (94, 64),
    "top": (64, 34),
    "bottom": (64, 94),
    "centre": (64, 64),
}
RADIUS = {"small": 19, "large": 30}
POS_JITTER = 5  # pixels, uniform in [-j, j] on each axis
RADIUS_JITTER = 2
COLOUR_JITTER = 10  # per channel

POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "on top", "near the top"),
    "bottom": ("at the bottom", "near the bottom", "on the bottom"),
    "centre": ("in the centre", "in the center", "in the middle"),
}


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    size: str
    position: str
    cx: float
    cy: float
    radius: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # HxWx3 uint8 RGB
    caption: str
    background: str
    shapes: tuple[ShapeSpec, ...] = field(default_factory=tuple)


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def canonical_caption(shape: str, colour: str, size: str | None, position: str | None,
                      background: str | None) -> str:
    """The plain phrasing used by tests and docs: 'a large red circle on the left, blue background'."""
    text = _with_article(" ".join(([size] if size else []) + [colour, shape]))
    if position:
        text += " " + POSITION_PHRASES[position][0]
    if background:
        text += f", {background} background"
    return text


def _jitter_rgb(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    j = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + j, 0, 255))


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> np.ndarray | None:
    """Vertices (N x 2 float) of a polygonal shape; None for a circle."""
    if shape == "square":
        h = r * 0.82
        return np.array([[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h], [cx - h, cy + h]])
    if shape == "triangle":
        rr = r * 1.1
        # upright equilateral triangle, centroid at (cx, cy)
        angles = [-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3]
        return np.array([[cx + rr * math.cos(a), cy + rr * math.sin(a) + rr * 0.12] for a in angles])
    if shape == "star":
        rr = r * 1.1
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rad = rr if k % 2 == 0 else rr * 0.45
            pts.append([cx + rad * math.cos(a), cy + rad * math.sin(a) + rr * 0.05])
        return np.array(pts)
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}")


def draw_shape(img: np.ndarray, shape: str, cx: float, cy: float, r: float, rgb: tuple[int, int, int]) -> None:
    """Draw a filled, anti-aliased shape in place (img is HxWx3 uint8 RGB)."""
    shift = 4  # sub-pixel precision for OpenCV
    scale = 1 << shift
    colour = tuple(int(c) for c in rgb)
    if shape == "circle":
        cv2.circle(img, (round(cx * scale), round(cy * scale)), round(r * scale), colour, -1, cv2.LINE_AA, shift)
        return
    poly = shape_polygon(shape, cx, cy, r)
    pts = np.round(poly * scale).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(img, [pts], colour, cv2.LINE_AA, shift)


def render(background_rgb: tuple[int, int, int], shapes: list[ShapeSpec] | tuple[ShapeSpec, ...]) -> np.ndarray:
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = background_rgb
    for s in shapes:
        draw_shape(img, s.shape, s.cx, s.cy, s.radius, s.rgb)
    return img


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _shape_phrase(rng: np.random.Generator, s: ShapeSpec, with_size: bool, with_pos: bool) -> str:
    text = _with_article(" ".join(([s.size] if with_size else []) + [s.colour, s.shape]))
    if with_pos:
        text += " " + _pick(rng, POSITION_PHRASES[s.position])
    return text


def make_caption(rng: np.random.Generator, background: str, shapes: tuple[ShapeSpec, ...]) -> str:
    phrases = []
    for s in shapes:
        with_size = rng.random() > 0.2
        with_pos = rng.random() > 0.15
        phrases.append(_shape_phrase(rng, s, with_size, with_pos))
    subject = " and ".join(phrases)
    if rng.random() < 0.15:  # no background named: the model learns to pick one itself
        return subject
    template = int(rng.integers(5))
    if template == 0:
        return f"{subject}, {background} background"
    if template == 1:
        return f"{subject} on a {background} background"
    if template == 2:
        return f"{background} background, {subject}"
    if template == 3:
        return f"a picture of {subject}, {background} background"
    return f"{subject}, {background} backdrop"


def _random_shape(rng: np.random.Generator, background: str, position: str, size: str) -> ShapeSpec:
    colour = _pick(rng, [c for c in COLOUR_NAMES if c != background])
    shape = _pick(rng, SHAPES)
    ax, ay = ANCHORS[position]
    cx = ax + rng.uniform(-POS_JITTER, POS_JITTER)
    cy = ay + rng.uniform(-POS_JITTER, POS_JITTER)
    r = RADIUS[size] + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER)
    return ShapeSpec(shape, colour, size, position, float(cx), float(cy), float(r), _jitter_rgb(rng, COLOURS[colour]))


def _fits_apart(a: ShapeSpec, b: ShapeSpec) -> bool:
    return math.hypot(a.cx - b.cx, a.cy - b.cy) > (a.radius + b.radius) * 1.15 + 4


def sample(index: int, seed: int = 0, two_shape_prob: float = 0.25) -> Sample:
    """Sample ``index`` of the dataset with ``seed``: a pure function of the two integers."""
    rng = np.random.default_rng([seed, index])
    background = _pick(rng, COLOUR_NAMES)
    bg_rgb = _jitter_rgb(rng, COLOURS[background])
    n = 2 if rng.random() < two_shape_prob else 1
    shapes: list[ShapeSpec] = []
    first = _random_shape(rng, background, _pick(rng, POSITIONS), _pick(rng, SIZES))
    shapes.append(first)
    if n == 2:
        for _ in range(20):
            pos = _pick(rng, [p for p in POSITIONS if p != first.position])
            other = _random_shape(rng, background, pos, _pick(rng, SIZES))
            if other.colour != first.colour and _fits_apart(first, other):
                shapes.append(other)
                break
    shapes_t = tuple(shapes)
    return Sample(render(bg_rgb, shapes_t), make_caption(rng, background, shapes_t), background, shapes_t)


def batch(indices, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Images (N x 128 x 128 x 3 uint8) and captions for a list of indices."""
    samples = [sample(int(i), seed) for i in indices]
    return np.stack([s.image for s in samples]), [s.caption for s in samples]


def shape_mask(s: Sample) -> np.ndarray:
    """Coverage of the sample's shapes (HxW float32 in [0, 1], anti-aliased edges fractional)."""
    white = [replace(sh, rgb=(255, 255, 255)) for sh in s.shapes]
    return render((0, 0, 0), white)[:, :, 0].astype(np.float32) / 255.0


def canny_map(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """The canny-edge control image (HxWx3 uint8, white edges on black) as the ControlNet is trained on."""
    edges = cv2.Canny(np.ascontiguousarray(image), low, high)  # colour input, as the A1111 canny annotator does
    return np.repeat(edges[:, :, None], 3, axis=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(args.start, args.start + args.count):
        s = sample(i, args.seed)
        cv2.imwrite(str(args.out / f"{i:06d}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        lines.append(f"{i:06d}.png\t{s.caption}")
    (args.out / "captions.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.count} samples to {args.out}")


if __name__ == "__main__":
    main()
