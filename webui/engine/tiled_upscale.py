"""SD upscale (tiled upscaling): upscale an image with an upscaler, then redraw it tile by tile with img2img at the
generation size, blending each tile into the picture with gradient masks so no seam shows. Memory is bounded
by one tile: the model only ever sees a tile.

The plan follows A1111's "SD upscale" script (tiles of the request's width x height overlapping by ``overlap``
px, default 64) with the options of the Ultimate SD Upscale extension that people use: tile size, padding
(context around each tile), mask blur, redraw order ("Linear" row by row, "Chess" every other tile first,
"None" no redraw) and a seams-fix pass ("Band pass", "Half tile offset pass", "... + intersections").

Tiles are redrawn one after another. Each tile's weight rises linearly from 0 to 1 across its overlap with each
neighbour, so the weights of neighbours add up to 1 there and the result crossfades from one tile to the next
(A1111's gradient masks). A tile reads the picture as it stands: its redrawn neighbours faded into the upscaled
image, never a hard edge, so it continues what they drew. Each redraw is one img2img run of the engine's one
loop, supplied by the caller (``redraw``): the engine's own run_in_job, or process_images(p) for the script, so
always-on scripts apply to every tile. Tile k uses seed + k, as A1111 counts.

Denoising 0 redraws nothing (a VAE round trip would only blur): the result is the upscaled image itself.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from webui.core import infotext as infotext_fmt
from webui.core.errors import InvalidField
from webui.core.request import VERSION, Img2ImgRequest, resolve_seed
from webui.engine import saving, upscaling
from webui.engine.hooks import JobHooks
from webui.engine.jobs import Job
from webui.models.upscalers import tile_starts

REDRAW_MODES = ("Linear", "Chess", "None")
SEAMS_FIX_MODES = ("None", "Band pass", "Half tile offset pass", "Half tile offset pass + intersections")
LANCZOS = Image.Resampling.LANCZOS

# redraw(tile image, generation width, generation height, seed, denoising strength) -> the redrawn tile,
# or None when the job was skipped / interrupted during that tile
Redraw = Callable[[Image.Image, int, int, int, float], "Image.Image | None"]


@dataclass(frozen=True)
class TiledUpscaleOptions:
    scale: float = 2.0
    upscaler: str = "None"
    overlap: int = 64
    tile_width: int = 0                 # 0: the request's width
    tile_height: int = 0                # 0: the request's height
    padding: int = 0                    # context around each tile, px (the crop is resized to the tile size)
    mask_blur: int = 0                  # extra Gaussian feathering of each tile's paste mask, px
    redraw: str = "Linear"
    seams_fix: str = "None"
    seams_fix_width: int = 64
    seams_fix_denoise: float = 0.35
    seams_fix_padding: int = 16
    seams_fix_mask_blur: int = 4

    def infotext(self) -> dict[str, Any]:
        """A1111's keys ("SD upscale overlap", "SD upscale upscaler") and ours for the Ultimate options."""
        p: dict[str, Any] = {"SD upscale overlap": self.overlap, "SD upscale upscaler": self.upscaler}
        if self.scale != 2.0:
            p["SD upscale scale"] = self.scale
        if self.padding:
            p["SD upscale padding"] = self.padding
        if self.mask_blur:
            p["SD upscale mask blur"] = self.mask_blur
        if self.redraw != "Linear":
            p["SD upscale redraw"] = self.redraw
        if self.seams_fix != "None":
            p["SD upscale seams fix"] = self.seams_fix
            p["SD upscale seams fix denoise"] = self.seams_fix_denoise
        return p


@dataclass
class Region:
    """One img2img run: the rect pasted back (x1, y1, x2, y2) and its paste weights (h, w) in [0, 1]."""

    box: tuple[int, int, int, int]
    weight: np.ndarray
    denoise: float
    padding: int


@dataclass
class TiledPlan:
    width: int                          # the upscaled image
    height: int
    tile_w: int                         # the generation size
    tile_h: int
    xs: list[int]
    ys: list[int]
    options: TiledUpscaleOptions
    main: list[tuple[int, int]] = field(default_factory=list)   # (row, col) in redraw order

    @property
    def tile_count(self) -> int:
        return len(self.main) if self.options.redraw != "None" else 0


def check_options(o: TiledUpscaleOptions, models, tile_w: int, tile_h: int, in_w: int, in_h: int,
                  max_side: int) -> TiledUpscaleOptions:
    """The options with the upscaler's canonical name; InvalidField naming what is allowed, before any work."""
    if not 1.0 <= float(o.scale) <= 8.0:
        raise InvalidField("scale_factor", f"the SD upscale scale factor must be between 1 and 8, got {o.scale!r}")
    name = upscaling.check_upscaler(models, o.upscaler, "upscaler")
    if o.redraw not in REDRAW_MODES:
        raise InvalidField("redraw", f"redraw mode must be one of {', '.join(REDRAW_MODES)}, got {o.redraw!r}")
    if o.seams_fix not in SEAMS_FIX_MODES:
        raise InvalidField("seams_fix", f"seams fix must be one of {', '.join(SEAMS_FIX_MODES)}, got {o.seams_fix!r}")
    for key in ("padding", "mask_blur", "seams_fix_padding", "seams_fix_mask_blur"):
        if not 0 <= int(getattr(o, key)) <= 512:
            raise InvalidField(key, f"{key} must be from 0 to 512 px")
    if not 0 <= int(o.overlap) < min(tile_w, tile_h):
        raise InvalidField("overlap", f"the tile overlap must be from 0 to less than the tile size "
                                      f"({tile_w}x{tile_h}), got {o.overlap!r}")
    if not 8 <= int(o.seams_fix_width) <= min(tile_w, tile_h):
        raise InvalidField("seams_fix_width", f"seams_fix_width must be from 8 to the tile size, got "
                                              f"{o.seams_fix_width!r}")
    if not 0.0 <= float(o.seams_fix_denoise) <= 1.0:
        raise InvalidField("seams_fix_denoise", "seams_fix_denoise must be between 0 and 1")
    w, h = upscaling.target_size(in_w, in_h, o.scale)
    if max(w, h) > max_side:
        raise InvalidField("scale_factor", f"the image ({in_w}x{in_h}) upscaled {o.scale}x would be {w}x{h}, "
                                           f"larger than {max_side} px (setting upscale_max_side)")
    return TiledUpscaleOptions(**{**o.__dict__, "upscaler": name})


def plan_tiles(width: int, height: int, tile_w: int, tile_h: int, o: TiledUpscaleOptions) -> TiledPlan:
    tw, th = min(tile_w, width), min(tile_h, height)
    xs, ys = tile_starts(width, tw, o.overlap), tile_starts(height, th, o.overlap)
    cells = [(r, c) for r in range(len(ys)) for c in range(len(xs))]
    if o.redraw == "Chess":
        cells = [rc for rc in cells if sum(rc) % 2 == 0] + [rc for rc in cells if sum(rc) % 2 == 1]
    return TiledPlan(width, height, tw, th, xs, ys, o, cells)


def _ramp(n: int, start: int, end: int) -> np.ndarray:
    """Weights along one side: 0 -> 1 over ``start`` px, 1 -> 0 over ``end`` px (0 = no ramp)."""
    w = np.ones(n, np.float32)
    if start > 0:
        w[:start] = np.minimum(w[:start], (np.arange(start, dtype=np.float32) + 1) / (start + 1))
    if end > 0:
        w[n - end:] = np.minimum(w[n - end:], (np.arange(end, 0, -1, dtype=np.float32)) / (end + 1))
    return w


def main_regions(plan: TiledPlan, denoise: float) -> list[Region]:
    """The main pass in redraw order: each tile's weight ramps across its overlap with every neighbour. The
    ramps of two neighbours add up to 1 across their overlap (in corners the products of four add up to 1)."""
    o, xs, ys, tw, th = plan.options, plan.xs, plan.ys, plan.tile_w, plan.tile_h
    out = []
    for r, c in plan.main:
        left = xs[c - 1] + tw - xs[c] if c > 0 else 0
        right = xs[c] + tw - xs[c + 1] if c + 1 < len(xs) else 0
        top = ys[r - 1] + th - ys[r] if r > 0 else 0
        bottom = ys[r] + th - ys[r + 1] if r + 1 < len(ys) else 0
        weight = _ramp(th, top, bottom)[:, None] * _ramp(tw, left, right)[None, :]
        out.append(Region((xs[c], ys[r], xs[c] + tw, ys[r] + th), weight, denoise, o.padding))
    return out


def _tent(n: int) -> np.ndarray:
    """1 in the middle, falling linearly to 0 at both ends (a band centred on a seam)."""
    x = (np.arange(n, dtype=np.float32) + 0.5) / n
    return np.clip(1 - np.abs(2 * x - 1), 0, 1)


def seam_regions(plan: TiledPlan) -> list[Region]:
    """The seams-fix pass over the seams between tiles (the middle of each overlap)."""
    o = plan.options
    if o.seams_fix == "None" or o.seams_fix_denoise <= 0:
        return []
    xs, ys, tw, th, W, H = plan.xs, plan.ys, plan.tile_w, plan.tile_h, plan.width, plan.height
    seams_x = [(xs[i] + tw + xs[i + 1]) // 2 for i in range(len(xs) - 1)]   # vertical seams
    seams_y = [(ys[i] + th + ys[i + 1]) // 2 for i in range(len(ys) - 1)]   # horizontal seams
    d, pad = o.seams_fix_denoise, o.seams_fix_padding
    out: list[Region] = []
    if o.seams_fix == "Band pass":
        half = o.seams_fix_width // 2
        for sx in seams_x:
            x1, x2 = max(0, sx - half), min(W, sx + half)
            for y in tile_starts(H, th, o.overlap):
                box = (x1, y, x2, y + th)
                weight = _ramp(th, o.overlap if y > 0 else 0, 0)[:, None] * _tent(x2 - x1)[None, :]
                out.append(Region(box, weight, d, pad))
        for sy in seams_y:
            y1, y2 = max(0, sy - half), min(H, sy + half)
            for x in tile_starts(W, tw, o.overlap):
                box = (x, y1, x + tw, y2)
                weight = _tent(y2 - y1)[:, None] * _ramp(tw, o.overlap if x > 0 else 0, 0)[None, :]
                out.append(Region(box, weight, d, pad))
        return out
    # half tile offset: tiles centred on the seams, fading towards their other two sides
    for sy in seams_y:
        y1 = min(max(0, sy - th // 2), H - th)
        for x in plan.xs:
            weight = _tent(th)[:, None] * _ramp(tw, o.overlap if x > 0 else 0, 0)[None, :]
            out.append(Region((x, y1, x + tw, y1 + th), weight, d, pad))
    for sx in seams_x:
        x1 = min(max(0, sx - tw // 2), W - tw)
        for y in plan.ys:
            weight = _ramp(th, o.overlap if y > 0 else 0, 0)[:, None] * _tent(tw)[None, :]
            out.append(Region((x1, y, x1 + tw, y + th), weight, d, pad))
    if o.seams_fix.endswith("intersections"):
        for sy in seams_y:
            for sx in seams_x:
                x1, y1 = min(max(0, sx - tw // 2), W - tw), min(max(0, sy - th // 2), H - th)
                weight = _tent(th)[:, None] * _tent(tw)[None, :]
                out.append(Region((x1, y1, x1 + tw, y1 + th), weight, d, pad))
    return out


def _gen_size(w: int, h: int, tile_w: int, tile_h: int) -> tuple[int, int]:
    """The generation size for a crop of w x h: the crop's own size (multiples of 8, at least 64) unless it is
    larger than the tile, then scaled down to fit the tile (memory stays bounded by the tile)."""
    s = min(1.0, tile_w / w, tile_h / h)
    return max(64, int(round(w * s / 8)) * 8), max(64, int(round(h * s / 8)) * 8)


class Canvas:
    """The picture being redrawn. Main-pass tiles accumulate (weight x tile) with their weights; what a tile
    reads is that sum where the weights reach 1, topped up with the upscaled image where they do not yet, so a
    tile always starts from a seamless picture: its redrawn neighbours faded into the upscale. Seams-fix
    regions are then pasted over the result (weight x new + (1 - weight) x old)."""

    def __init__(self, upscaled: Image.Image):
        self.base = np.asarray(upscaled.convert("RGB"), dtype=np.float32)
        self.acc = np.zeros_like(self.base)
        self.weight = np.zeros(self.base.shape[:2], np.float32)

    def view(self, y1: int, y2: int, x1: int, x2: int) -> np.ndarray:
        w = self.weight[y1:y2, x1:x2, None]
        return (self.acc[y1:y2, x1:x2] + np.maximum(0.0, 1.0 - w) * self.base[y1:y2, x1:x2]) / np.maximum(w, 1.0)

    def add(self, y1: int, y2: int, x1: int, x2: int, image: np.ndarray, weight: np.ndarray) -> None:
        self.acc[y1:y2, x1:x2] += image * weight[..., None]
        self.weight[y1:y2, x1:x2] += weight

    def settle(self) -> None:
        """Make the current picture the base (before the seams pass pastes over it)."""
        self.base = self.view(0, self.base.shape[0], 0, self.base.shape[1])
        self.acc[:] = 0
        self.weight[:] = 0

    def paste(self, y1: int, y2: int, x1: int, x2: int, image: np.ndarray, weight: np.ndarray) -> None:
        m = weight[..., None]
        self.base[y1:y2, x1:x2] = self.base[y1:y2, x1:x2] * (1 - m) + image * m

    def image(self) -> Image.Image:
        return Image.fromarray(np.clip(self.view(0, self.base.shape[0], 0, self.base.shape[1]), 0, 255)
                               .round().astype(np.uint8))


def redraw_region(canvas: Canvas, region: Region, plan: TiledPlan, redraw: Redraw, seed: int, mask_blur: int,
                  accumulate: bool = True) -> bool:
    """Redraw one region of the canvas; False when redraw gave nothing (skipped or interrupted)."""
    H, W = canvas.weight.shape
    x1, y1, x2, y2 = region.box
    p = region.padding
    cx1, cy1, cx2, cy2 = max(0, x1 - p), max(0, y1 - p), min(W, x2 + p), min(H, y2 + p)
    crop = Image.fromarray(np.clip(canvas.view(cy1, cy2, cx1, cx2), 0, 255).round().astype(np.uint8))
    gw, gh = _gen_size(cx2 - cx1, cy2 - cy1, plan.tile_w, plan.tile_h)
    work = crop if crop.size == (gw, gh) else crop.resize((gw, gh), LANCZOS)
    out = redraw(work, gw, gh, seed, region.denoise)
    if out is None:
        return False
    if out.size != crop.size:
        out = out.resize(crop.size, LANCZOS)
    weight = np.zeros((cy2 - cy1, cx2 - cx1), np.float32)
    weight[y1 - cy1:y2 - cy1, x1 - cx1:x2 - cx1] = region.weight
    if mask_blur > 0:
        k = 2 * int(2.5 * mask_blur + 0.5) + 1
        weight = cv2.GaussianBlur(weight, (k, k), sigmaX=mask_blur, borderType=cv2.BORDER_REPLICATE)
    new = np.asarray(out.convert("RGB"), dtype=np.float32)
    (canvas.add if accumulate else canvas.paste)(cy1, cy2, cx1, cx2, new, weight)
    return True


@dataclass
class TiledResult:
    image: Image.Image
    upscaled: Image.Image               # before any redraw
    plan: TiledPlan
    runs: int = 0
    interrupted: bool = False


def tiled_redraw(upscaled: Image.Image, plan: TiledPlan, denoise: float, seed: int, redraw: Redraw,
                 progress: Callable[[int, int], bool] | None = None) -> TiledResult:
    """The main pass then the seams-fix pass over the upscaled image. ``progress(k, n)`` before region k of n
    returns False to stop (interrupt)."""
    o = plan.options
    regions = main_regions(plan, denoise) if o.redraw != "None" and denoise > 0 else []
    seams = seam_regions(plan)
    canvas = Canvas(upscaled)
    res = TiledResult(upscaled, upscaled, plan)
    total = len(regions) + len(seams)
    for k, region in enumerate([*regions, *seams]):
        if k == len(regions):
            canvas.settle()
        if progress is not None and not progress(k, total):
            res.interrupted = True
            break
        main = k < len(regions)
        if redraw_region(canvas, region, plan, redraw, seed + k, o.mask_blur if main else o.seams_fix_mask_blur,
                         accumulate=main):
            res.runs += 1
    if total:
        res.image = canvas.image()
    return res


def upscale_first(engine, image: Image.Image, o: TiledUpscaleOptions, opts: dict, job: Job | None = None
                  ) -> Image.Image:
    """The image upscaled by o.scale with o.upscaler ("None": a plain Lanczos resize)."""
    def check(done: int, total: int) -> None:
        if job is not None:
            job.progress.textinfo = f"Upscaling with {o.upscaler}: tile {done}/{total}"
    size = upscaling.target_size(image.width, image.height, o.scale)
    return upscaling.upscale_to(engine.models, image.convert("RGB"), size, o.upscaler, opts, check)


# -- the engine's own entry (the Script wraps the same functions around process_images) ------------------------
def prepare(engine, req: Img2ImgRequest, image: Image.Image, o: TiledUpscaleOptions
            ) -> tuple[TiledUpscaleOptions, int, int]:
    """Check the request and options before queueing; (options, tile width, tile height)."""
    opts, _, _ = engine.prepare(req)
    tw, th = o.tile_width or req.width, o.tile_height or req.height
    for name, v in (("tile_width", tw), ("tile_height", th)):
        if v % 8 or not 64 <= v <= int(opts["max_image_side"]):
            raise InvalidField(name, f"the tile size must be a multiple of 8 from 64 to {opts['max_image_side']}, "
                                     f"got {v}")
    denoise = 0.75 if req.denoising_strength is None else float(req.denoising_strength)
    if not 0.0 <= denoise <= 1.0:
        raise InvalidField("denoising_strength", "denoising_strength must be between 0 and 1")
    o = check_options(o, engine.models, tw, th, image.width, image.height, int(opts.get("upscale_max_side", 8192)))
    return o, tw, th


class _Params(JobHooks):
    def __init__(self, params: dict[str, Any]):
        self.params = params

    def extra_params(self) -> dict[str, Any]:
        return dict(self.params)


def engine_redraw(engine, job: Job, req: Img2ImgRequest, o: TiledUpscaleOptions, notes: list[str],
                  results: list) -> Redraw:
    """A redraw that runs one img2img of the request (at the tile's size, with the tile's seed) in ``job``;
    every tile's infotext carries the SD upscale keys."""
    hooks = _Params(o.infotext())

    def redraw(tile: Image.Image, w: int, h: int, seed: int, denoise: float) -> Image.Image | None:
        r = copy.deepcopy(req)
        r.width, r.height, r.seed, r.denoising_strength = w, h, seed, denoise
        r.batch_size, r.n_iter, r.resize_mode = 1, 1, 0
        r.script_name, r.script_args, r.init_images, r.mask = None, [], [], None
        res = engine.run_in_job(job, r, [tile], save=False, hooks=hooks)
        if not results:   # the first tile's result is kept: its model, sampler and infotext describe the run
            results.append(res)
        notes.extend(n for n in res.notes if n not in notes)
        return res.images[res.index_of_first_image] if res.images else None
    return redraw


def run_sd_upscale(engine, job: Job, req: Img2ImgRequest, image: Image.Image, o: TiledUpscaleOptions,
                   tile_w: int, tile_h: int, save: bool = True):
    """SD upscale inside a job with the engine's img2img as the redraw; returns a GenerationResult whose
    images are the upscaled pictures (one per batch count), infotext from the first tile with the options."""
    from webui.engine.processing import GenerationResult
    opts = engine.settings.with_overrides(req.override_settings)
    denoise = 0.75 if req.denoising_strength is None else float(req.denoising_strength)
    seed = resolve_seed(req.seed)
    job.progress.job = "SD upscale"
    upscaled = upscale_first(engine, image, o, opts, job)
    plan = plan_tiles(upscaled.width, upscaled.height, tile_w, tile_h, o)
    notes: list[str] = []
    base = None
    images, texts, seeds, saved = [], [], [], []
    interrupted = False
    for n in range(max(1, req.n_iter)):
        start = seed + n
        first: list = []

        def progress(k: int, total: int, n: int = n) -> bool:
            job.progress.run_no, job.progress.run_count = n * total + k, total * max(1, req.n_iter)
            job.progress.stage = f"Tile {k + 1} of {total}: "
            return not job.interrupted

        done = tiled_redraw(upscaled, plan, denoise, start, engine_redraw(engine, job, req, o, notes, first),
                            progress)
        interrupted = interrupted or done.interrupted
        text = final_infotext(first, o, req, start, upscaled, denoise)
        base = base or (first[0] if first else None)
        images.append(done.image)
        texts.append(text)
        seeds.append(start)
        if save and not req.do_not_save_samples:
            saved.append(save_result(engine, done.image, text, start, req, opts))
        if interrupted:
            break
    job.progress.stage = ""
    res = GenerationResult(images, texts, seeds, [req.subseed] * len(seeds), [req.prompt] * len(seeds),
                           [req.negative_prompt] * len(seeds), req, base.model if base else "",
                           base.model_hash if base else None, base.sampler if base else str(req.sampler_name),
                           base.schedule if base else str(req.scheduler or "Automatic"), saved=saved,
                           notes=notes, interrupted=interrupted, extra_params=o.infotext())
    if denoise <= 0 or o.redraw == "None":
        res.notes.append("denoising strength 0 or redraw None: tiles were not redrawn, the image is the upscale")
    return res


def final_infotext(runs: list, o: TiledUpscaleOptions, req: Img2ImgRequest, seed: int, upscaled: Image.Image,
                   denoise: float) -> str:
    """The first tile's infotext (A1111 keeps that one; it carries the SD upscale keys), or when no tile was
    redrawn a short one of our own."""
    for res in runs:
        if res.infotexts:
            return res.infotexts[res.index_of_first_image]
    params = {"Steps": req.steps, "Seed": seed, "Size": f"{upscaled.width}x{upscaled.height}",
              "Denoising strength": denoise, **o.infotext(), "Version": VERSION}
    return infotext_fmt.format_infotext(req.prompt, req.negative_prompt, params)


def save_result(engine, image: Image.Image, text: str, seed: int, req, opts: dict):
    """Save an upscaled picture as an img2img sample (numbered, atomic, never overwriting; extensions'
    before/after image-saved callbacks run as for any sample)."""
    model = engine.models.current
    if model is not None:
        return engine._save(image, text, seed, req, model, opts, "outdir_img2img_samples")
    fmt = str(opts.get("samples_format") or "png").lower()
    return saving.save_image(image, engine._outdir(opts, "outdir_img2img_samples"), text, tokens={"seed": seed},
                             pattern=str(opts.get("samples_filename_pattern") or "[seed]"),
                             fmt="jpg" if fmt == "jpeg" else fmt, jpeg_quality=int(opts.get("jpeg_quality", 80)))


def submit_sd_upscale(engine, req: Img2ImgRequest, image: Image.Image, options: TiledUpscaleOptions, *,
                      save: bool = True) -> Job:
    """Check everything now, then queue SD upscale on the engine's worker."""
    o, tw, th = prepare(engine, req, image, options)
    return engine.jobs.submit(lambda job: run_sd_upscale(engine, job, req, image, o, tw, th, save), "SD upscale")


def sd_upscale(engine, req: Img2ImgRequest, image: Image.Image, options: TiledUpscaleOptions, *, save: bool = True):
    return submit_sd_upscale(engine, req, image, options, save=save).wait()
