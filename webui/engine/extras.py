"""The Extras job: upscale one image or many (upscaler 1, optionally blended with upscaler 2), save them to
outputs/extras-images (or a chosen folder) and say what was done in A1111's "Postprocess ..." keys.

Saved files keep the source's own PNG chunks (its "parameters" infotext stays readable by PNG Info) and add an
"extras" chunk with the postprocessing line, as A1111 does. Files are never overwritten: a batch from a folder
is saved as NNNNN-<original name>.png.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from webui.core import infotext as infotext_fmt
from webui.core.errors import InvalidField
from webui.core.extras import FLIPS, OBJECTIVES, ExtrasRequest, extras_params
from webui.engine import autocrop, saving, upscaling
from webui.engine.jobs import Job


class _Stop(Exception):
    """Raised from the tile callback when the job is interrupted."""


@dataclass
class ExtrasResult:
    images: list                                     # PIL images, in input order
    infotexts: list[str]                             # the "Postprocess ..." line of each
    names: list[str] = field(default_factory=list)   # the source names (file names for batches)
    saved: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    processed: int = 0

    def html_info(self) -> str:
        """The API's html_info: the first image's line as HTML (A1111 shows it below the gallery)."""
        text = self.infotexts[0] if self.infotexts else ""
        extra = "".join(f"<p class='studio-note'>{html.escape(n)}</p>" for n in self.notes)
        return f"<div class='infotext'><p>{html.escape(text)}</p>{extra}</div>"


@dataclass(frozen=True)
class ExtrasPlan:
    upscaler_1: str
    upscaler_2: str | None          # None when off (name "None" or visibility 0)
    visibility: float

    def sizes(self, req: ExtrasRequest, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """(the upscaled size, the crop size or None) for one source image."""
        if req.resize_mode == 1:
            by = max(req.upscaling_resize_w / width, req.upscaling_resize_h / height)
            crop = (req.upscaling_resize_w, req.upscaling_resize_h) if req.upscaling_crop else None
        else:
            by, crop = req.upscaling_resize, None
        return upscaling.target_size(width, height, by), crop


def plan_extras(models, req: ExtrasRequest, images: list, max_side: int) -> ExtrasPlan:
    """Check the request against the images before any work; InvalidField naming what is allowed."""
    if req.resize_mode not in (0, 1):
        raise InvalidField("resize_mode", "resize_mode must be 0 (scale by upscaling_resize) or 1 (scale to "
                                          "upscaling_resize_w x upscaling_resize_h)")
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if float(getattr(req, name) or 0) != 0:
            raise InvalidField(name, "face restoration (GFPGAN, CodeFormer) is not available in this studio: "
                                     "its weights cannot be downloaded; send 0")
    if not 0.0 <= float(req.extras_upscaler_2_visibility) <= 1.0:
        raise InvalidField("extras_upscaler_2_visibility", "extras_upscaler_2_visibility must be between 0 and 1")
    if req.resize_mode == 0 and not 0 < float(req.upscaling_resize) <= 8:
        raise InvalidField("upscaling_resize", f"upscaling_resize must be above 0 and at most 8, got "
                                               f"{req.upscaling_resize!r}")
    if req.resize_mode == 1:
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            v = getattr(req, name)
            if not isinstance(v, int) or not 1 <= v <= max_side:
                raise InvalidField(name, f"{name} must be a whole number from 1 to {max_side} "
                                         f"(setting upscale_max_side), got {v!r}")
    bad = [f for f in req.flipped_copies or [] if f not in FLIPS]
    if bad:
        raise InvalidField("flipped_copies", f"unknown flip {bad[0]!r}; valid: {', '.join(FLIPS)}")
    if not 0.0 <= float(req.split_threshold) <= 1.0:
        raise InvalidField("split_threshold", "split_threshold must be between 0 and 1")
    if not 0.0 <= float(req.split_overlap_ratio) <= 0.9:
        raise InvalidField("split_overlap_ratio", "split_overlap_ratio must be between 0 and 0.9")
    for name in ("focal_crop_face_weight", "focal_crop_entropy_weight", "focal_crop_edges_weight"):
        if not 0.0 <= float(getattr(req, name)) <= 1.0:
            raise InvalidField(name, f"{name} must be between 0 and 1")
    if req.autosized_crop:
        if req.autosized_crop_objective not in OBJECTIVES:
            raise InvalidField("autosized_crop_objective", f"autosized_crop_objective must be one of "
                                                           f"{', '.join(OBJECTIVES)}")
        if not 64 <= int(req.autosized_crop_min_dim) <= int(req.autosized_crop_max_dim) <= max_side:
            raise InvalidField("autosized_crop_min_dim", f"the auto-sized crop's sides need 64 <= min_dim <= "
                                                         f"max_dim <= {max_side}")
        if not 0 < int(req.autosized_crop_min_area) <= int(req.autosized_crop_max_area):
            raise InvalidField("autosized_crop_min_area", "the auto-sized crop's areas need 0 < min_area <= "
                                                          "max_area")
        if not 0.0 <= float(req.autosized_crop_threshold) <= 1.0:
            raise InvalidField("autosized_crop_threshold", "autosized_crop_threshold must be between 0 and 1")
    if req.split_oversized and req.resize_mode != 1:
        raise InvalidField("split_oversized", "splitting oversized images cuts pieces of the \"Scale to\" size: "
                                              "use resize_mode 1 (Scale to)")
    u1 = upscaling.check_upscaler(models, req.upscaler_1, "upscaler_1")
    u2 = upscaling.check_upscaler(models, req.upscaler_2, "upscaler_2")
    plan = ExtrasPlan(u1, u2 if u2 != "None" and req.extras_upscaler_2_visibility > 0 else None,
                      float(req.extras_upscaler_2_visibility))
    if not images:
        raise InvalidField("image", "no image given")
    for i, im in enumerate(images):
        size = _size_of(im)
        if size is None:
            continue   # an unreadable file of a folder batch: reported and skipped when its turn comes
        (w, h), _ = plan.sizes(req, *size)
        cut = split_boxes(*size, req.upscaling_resize_w, req.upscaling_resize_h, float(req.split_threshold),
                          float(req.split_overlap_ratio)) if req.split_oversized else None
        if cut is not None:
            w, h = cut[0]
        if max(w, h) > max_side:
            field_name = "upscaling_resize" if req.resize_mode == 0 else "upscaling_resize_w"
            raise InvalidField(field_name, f"image {i + 1} ({size[0]}x{size[1]}) would become {w}x{h}, larger "
                                           f"than {max_side} px (setting upscale_max_side)")
    return plan


def _size_of(item) -> tuple[int, int] | None:
    """The size of a PIL image, or of an image file from its header (None when it cannot be read)."""
    if isinstance(item, Image.Image):
        return item.size
    try:
        with Image.open(item) as im:
            return im.size
    except (OSError, SyntaxError, ValueError):
        return None


def _open(item) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    with Image.open(item) as im:
        im.load()
        return ImageOps.exif_transpose(im)


def upscale_one(models, image: Image.Image, req: ExtrasRequest, plan: ExtrasPlan, opts: dict, check=None
                ) -> tuple[Image.Image, str]:
    """One source image upscaled as the request says, and its "Postprocess ..." line."""
    size, crop = plan.sizes(req, image.width, image.height)
    out = _upscale_exact(models, image, size, plan, opts, check)
    if crop is not None and plan.upscaler_1 != "None" and out.size != crop:
        left, top = (out.width - crop[0]) // 2, (out.height - crop[1]) // 2
        out = out.crop((left, top, left + crop[0], top + crop[1]))
    else:
        crop = None
    params = extras_params(req, plan.upscaler_1, plan.upscaler_2, crop)
    return out, infotext_fmt.format_params(params)


def split_boxes(width: int, height: int, target_w: int, target_h: int, threshold: float, overlap: float
                ) -> tuple[tuple[int, int], list[tuple[int, int, int, int]]] | None:
    """A1111's "Split oversized images": None when the picture is not much longer than the target's shape (its
    proportions against the target's at or above ``threshold``), else the size to scale it to (its short side
    the target's) and the target-sized windows along its long side, evenly spread from end to end with at least
    ``overlap`` of a window shared by neighbours."""
    tall = height > width   # as A1111: a portrait picture is cut across, a landscape one along
    ratio = (width * target_h) / (height * target_w) if tall else (height * target_w) / (width * target_h)
    if ratio >= 1.0 or ratio > threshold:
        return None
    if tall:
        scaled, window = (target_w, max(target_h, round(height * target_w / width))), target_h
    else:
        scaled, window = (max(target_w, round(width * target_h / height)), target_h), target_w
    length = scaled[1] if tall else scaled[0]
    count = max(2, math.ceil((length - window * overlap) / (window * (1.0 - overlap))))
    step = (length - window) / (count - 1)
    starts = [round(step * i) for i in range(count)]
    boxes = [(0, s, target_w, s + target_h) if tall else (s, 0, s + target_w, target_h) for s in starts]
    return scaled, boxes


def flipped(image: Image.Image, options: list[str]) -> list[Image.Image]:
    """A1111's "Create flipped copies": the mirrored (Horizontal), upside-down (Vertical) and both (Both) copies."""
    out = []
    if "Horizontal" in options:
        out.append(ImageOps.mirror(image))
    if "Vertical" in options:
        out.append(ImageOps.flip(image))
    if "Both" in options:
        out.append(ImageOps.flip(ImageOps.mirror(image)))
    return out


def _crops(models, image: Image.Image, source_size: tuple[int, int], req: ExtrasRequest, line: str
           ) -> list[tuple[Image.Image, str]]:
    """A1111's crops after the upscale: "Auto focal point crop" to the target size (the "Scale to" size, else the
    scaled size), its debug picture after it; then "Auto-sized crop" (a picture no size fits stays as it is)."""
    out = [(image, line)]
    if req.focal_crop:
        tw, th = ((req.upscaling_resize_w, req.upscaling_resize_h) if req.resize_mode == 1 else
                  (int(source_size[0] * req.upscaling_resize), int(source_size[1] * req.upscaling_resize)))
        weights = autocrop.FocalWeights(float(req.focal_crop_face_weight), float(req.focal_crop_entropy_weight),
                                        float(req.focal_crop_edges_weight))
        yunet = Path(models.paths.data) / "models" / "opencv" / autocrop.YUNET_FILE
        cropped, shown = autocrop.focal_crop(image, tw, th, weights, yunet, bool(req.focal_crop_debug))
        out = [(cropped, line)] + ([(shown, line)] if shown is not None else [])
    if req.autosized_crop:
        first, first_line = out[0]
        size = autocrop.autosized_size(first.width, first.height, int(req.autosized_crop_min_dim),
                                       int(req.autosized_crop_max_dim), int(req.autosized_crop_min_area),
                                       int(req.autosized_crop_max_area), req.autosized_crop_objective,
                                       float(req.autosized_crop_threshold))
        if size is not None:
            out[0] = (autocrop.centre_crop(first, *size), first_line)
    return out


def postprocess_one(models, image: Image.Image, req: ExtrasRequest, plan: ExtrasPlan, opts: dict, check=None
                    ) -> list[tuple[Image.Image, str]]:
    """Every output of one source: upscaled (or, with "Split oversized images", scaled by the upscaler and cut
    into target-sized pieces), then cropped (auto focal point, auto-sized) and followed by its flipped copies;
    with each one's "Postprocess ..." line."""
    cut = split_boxes(image.width, image.height, req.upscaling_resize_w, req.upscaling_resize_h,
                      float(req.split_threshold), float(req.split_overlap_ratio)) \
        if req.split_oversized and req.resize_mode == 1 else None
    if cut is None:
        outs = [upscale_one(models, image, req, plan, opts, check)]
    else:
        scaled, boxes = cut
        big = _upscale_exact(models, image, scaled, plan, opts, check)
        params = {**extras_params(req, plan.upscaler_1, plan.upscaler_2, None), "Postprocess split": len(boxes)}
        outs = [(big.crop(box), infotext_fmt.format_params(params)) for box in boxes]
    result = []
    for piece, piece_line in outs:
        for out, line in _crops(models, piece, image.size, req, piece_line):
            result.append((out, line))
            result += [(copy, line) for copy in flipped(out, list(req.flipped_copies or []))]
    return result


def _upscale_exact(models, image: Image.Image, size: tuple[int, int], plan: ExtrasPlan, opts: dict, check=None
                   ) -> Image.Image:
    """``image`` at ``size`` by upscaler 1 (blended with upscaler 2), its transparency kept."""
    source = image.convert("RGBA" if image.mode in ("RGBA", "LA", "PA") else "RGB")
    alpha = source.getchannel("A") if source.mode == "RGBA" else None
    rgb = source.convert("RGB")
    out = upscaling.upscale_to(models, rgb, size, plan.upscaler_1, opts, check) \
        if plan.upscaler_1 != "None" else rgb
    if plan.upscaler_2 is not None:
        second = upscaling.upscale_to(models, rgb, out.size, plan.upscaler_2, opts, check)
        out = Image.blend(out, second, plan.visibility)
    if alpha is not None and out.size != alpha.size:   # transparency follows the upscale (models are RGB)
        alpha = alpha.resize(out.size, Image.Resampling.LANCZOS)
    if alpha is not None:
        out.putalpha(alpha)
    return out


def run_extras(job: Job, models, req: ExtrasRequest, images: list[tuple[str, Image.Image | Path]], plan: ExtrasPlan,
               opts: dict, save_dir: Path | None, keep_names: bool = False, show_limit: int | None = None
               ) -> ExtrasResult:
    """The job's body: each image in turn (PIL images, or files opened when their turn comes: a folder batch
    never holds more than one source in memory); progress counts images and model tiles; interrupt stops
    between tiles and returns what is done."""
    res = ExtrasResult([], [], [])
    job.progress.job = "extras"
    job.progress.job_count = len(images)

    def check(done: int, total: int) -> None:
        job.progress.sampling_step, job.progress.sampling_steps = done, total
        job.progress.textinfo = f"Image {job.progress.job_no + 1}/{len(images)}: tile {done}/{total}"
        if job.interrupted:
            raise _Stop

    for i, (name, item) in enumerate(images):
        if job.interrupted:
            res.interrupted = True
            break
        job.progress.job_no = i
        try:
            image = _open(item)
        except (OSError, SyntaxError, ValueError) as e:
            res.notes.append(f"{name or item}: skipped, not a readable image ({type(e).__name__})")
            continue
        try:
            outputs = postprocess_one(models, image, req, plan, opts, check)
        except _Stop:
            res.interrupted = True
            break
        res.processed += 1
        source_text, chunks = saving.read_infotext(image) if save_dir is not None else (None, {})
        keep = {k: str(v) for k, v in chunks.items() if isinstance(v, str) and k not in ("extras",)}
        stem = saving.sanitize_filename_part(Path(name).stem) if keep_names and name else ""
        fmt = str(opts.get("samples_format") or "png").lower()
        for out, line in outputs:
            if show_limit is None or len(res.images) < show_limit:   # a folder batch keeps only what it shows
                res.images.append(out)
                res.infotexts.append(line)
                res.names.append(name)
            if save_dir is not None:
                # a kept name is the file's own ("photo.png", then "photo_1.png": never overwriting), as A1111
                res.saved.append(saving.save_image(out, save_dir, source_text, pattern=stem, fmt=fmt,
                                                   jpeg_quality=int(opts.get("jpeg_quality", 80)),
                                                   extra_info={**keep, "extras": line}, add_number=not stem))
    job.progress.job_no = len(images)
    if res.interrupted:
        res.notes.append(f"interrupted: {res.processed} of {len(images)} images done")
    return res


def submit_extras(engine, req: ExtrasRequest, images: list[tuple[str, Image.Image | Path]], *, save: bool = True,
                  output_dir: str | Path | None = None, show_limit: int | None = None) -> Job:
    """Check now (bad input fails before queueing), then queue the upscaling on the engine's worker.
    ``output_dir``: save there (batch from a folder, keeping the source names) instead of extras-images."""
    opts = engine.settings.as_dict()
    plan = plan_extras(engine.models, req, [im for _, im in images], int(opts.get("upscale_max_side", 8192)))
    save_dir = None
    if output_dir:
        save_dir = Path(output_dir).expanduser()
    elif save:   # as A1111: extras go straight into their folder, no date sub-folder
        save_dir = engine._outdir({**opts, "save_to_dirs": False}, "outdir_extras_samples")
    # as A1111 (setting use_original_name_batch): a batch's images keep their files' names; one image is numbered
    keep_names = bool(opts.get("use_original_name_batch", True))
    return engine.jobs.submit(lambda job: run_extras(job, engine.models, req, images, plan, opts, save_dir,
                                                     keep_names, show_limit), "extras")


def extras(engine, req: ExtrasRequest, images: list[tuple[str, Image.Image | Path]], *, save: bool = True,
           output_dir: str | Path | None = None, show_limit: int | None = None) -> ExtrasResult:
    return submit_extras(engine, req, images, save=save, output_dir=output_dir, show_limit=show_limit).wait()
