"""img2img from a folder (A1111's img2img "Batch" tab): every image of an input folder through img2img, with an
optional folder of masks, written to an output folder. One queue job with progress ("3 out of 12"); a file that
cannot be read (or a request the engine refuses for it) is reported and skipped, the rest are processed.

A1111's rules: images are found in the input folder and its sub-folders (.png .jpg .jpeg .webp .tif .tiff .bmp);
a masks folder holding exactly one file uses that mask for every image, otherwise each image takes the mask with
its own stem (``cat.png`` -> ``masks/cat.*``) and an image without one is skipped. Outputs are named after the
input (``cat.png``; ``cat-1.png``, ``cat-2.png`` ... when a request makes several images); a name already taken
gets ``_1``, ``_2``: nothing is overwritten, and each file is written atomically. Without an output folder the
images are saved like any img2img job (outputs/img2img-images). A random seed is drawn once for the whole batch.

Also as A1111 1.10: the images can be uploaded files instead of a folder; "Resize by" scales each image by its own
size; "Append png info to prompts" takes the chosen parameters (PNG_INFO_PROPS) from each image's infotext, or from
the file of the same name in a PNG info folder: its prompts are appended to the form's, the rest replace the form's,
and a "Model hash" of a local checkpoint picks that checkpoint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from webui.core.errors import InvalidField, StudioError
from webui.core.infotext import parse_infotext
from webui.core.request import Img2ImgRequest, resolve_seed
from webui.engine import saving
from webui.engine.images import scaled_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
SHOW_LIMIT = 32   # images kept for the gallery (A1111's img2img_batch_show_results_limit); all are written
PNG_INFO_PROPS = ("Prompt", "Negative prompt", "Seed", "CFG scale", "Sampler", "Steps", "Model hash")


@dataclass(frozen=True)
class BatchFolders:
    input_dir: Path | None       # None: the uploaded ``files`` are the inputs
    output_dir: Path | None      # None: saved as a normal img2img job
    mask_dir: Path | None
    files: tuple[Path, ...] = ()
    scale_by: float | None = None             # "Resize by": each image's own size times this
    use_png_info: bool = False
    png_info_props: tuple[str, ...] = ()
    png_info_dir: Path | None = None

    def inputs(self) -> list[tuple[Path, str]]:
        """(file, name shown and used for the output) of every input image."""
        if self.input_dir is None:
            return [(f, f.name) for f in self.files]
        return [(f, f.relative_to(self.input_dir).as_posix()) for f in list_images(self.input_dir)]


@dataclass
class BatchResult:
    """What a folder batch did: plain data for the faces."""

    processed: list[str] = field(default_factory=list)              # input files (relative names) done
    skipped: list[tuple[str, str]] = field(default_factory=list)    # (relative name, reason)
    written: list[Path] = field(default_factory=list)               # every file written
    images: list = field(default_factory=list)                      # the first SHOW_LIMIT images
    infotexts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def summary(self) -> str:
        parts = [f"Batch: {len(self.processed)} image(s) processed, {len(self.written)} file(s) written"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped: " + "; ".join(f"{n}: {why}" for n, why in self.skipped))
        if self.interrupted:
            parts.append("interrupted")
        return ", ".join(parts[:1]) + "".join(f"\n{p}" for p in parts[1:])


def check_folders(input_dir: str | Path | None, output_dir: str | Path | None = "",
                  mask_dir: str | Path | None = "", *, files: list[str | Path] | None = None,
                  scale_by: float | None = None, use_png_info: bool = False,
                  png_info_props: list[str] | tuple[str, ...] = (), png_info_dir: str | Path | None = ""
                  ) -> BatchFolders:
    """The folders (or uploaded ``files``) and options of a batch, checked before any work (InvalidField names the
    bad one)."""
    uploaded = tuple(Path(str(f)) for f in files or ())
    src = None
    if not uploaded:
        if not str(input_dir or "").strip():
            raise InvalidField("input_dir", "an input folder (or uploaded images) is needed")
        src = Path(str(input_dir).strip()).expanduser()
        if not src.is_dir():
            raise InvalidField("input_dir", f"the input folder {str(src)!r} does not exist")
    unknown = [p for p in png_info_props or () if p not in PNG_INFO_PROPS]
    if unknown:
        raise InvalidField("png_info_props", f"unknown parameter {unknown[0]!r}; valid: {', '.join(PNG_INFO_PROPS)}")
    info_dir = Path(str(png_info_dir).strip()).expanduser() if str(png_info_dir or "").strip() else None
    if use_png_info and info_dir is not None and not info_dir.is_dir():
        raise InvalidField("png_info_dir", f"the PNG info folder {str(info_dir)!r} does not exist")
    if scale_by is not None and not 0.05 <= float(scale_by) <= 8:
        raise InvalidField("scale_by", f"scale_by must be between 0.05 and 8, got {scale_by!r}")
    out = Path(str(output_dir).strip()).expanduser() if str(output_dir or "").strip() else None
    if out is not None and out.exists() and not out.is_dir():
        raise InvalidField("output_dir", f"{str(out)!r} is a file, not a folder")
    masks = Path(str(mask_dir).strip()).expanduser() if str(mask_dir or "").strip() else None
    if masks is not None and not masks.is_dir():
        raise InvalidField("mask_dir", f"the masks folder {str(masks)!r} does not exist")
    return BatchFolders(src, out, masks, uploaded, float(scale_by) if scale_by is not None else None,
                        bool(use_png_info), tuple(png_info_props or ()), info_dir)


def with_png_info(req: Img2ImgRequest, base: Img2ImgRequest, infotext: str | None, props: tuple[str, ...],
                  models) -> Img2ImgRequest:
    """``req`` with the chosen parameters of an image's infotext (A1111's "Append png info to prompts"): prompts
    appended to ``base``'s, seed / CFG scale / sampler / steps replacing them, a "Model hash" found among the local
    checkpoints choosing that one. An image without an infotext leaves ``base``'s values."""
    parsed = {k: v for k, v in parse_infotext(infotext).items() if k in props} if infotext else {}
    changes: dict = {"prompt": base.prompt + (" " + str(parsed["Prompt"]) if "Prompt" in parsed else ""),
                     "negative_prompt": base.negative_prompt + (" " + str(parsed["Negative prompt"])
                                                                if "Negative prompt" in parsed else "")}
    try:
        if "Seed" in parsed:
            changes["seed"] = int(float(str(parsed["Seed"])))
        if "CFG scale" in parsed:
            changes["cfg_scale"] = float(str(parsed["CFG scale"]))
        if "Steps" in parsed:
            changes["steps"] = int(float(str(parsed["Steps"])))
    except ValueError as e:
        raise ValueError(f"its infotext has a bad number ({e})") from None
    if "Sampler" in parsed:
        changes["sampler_name"], changes["scheduler"] = str(parsed["Sampler"]), base.scheduler
    override = dict(base.override_settings or {})
    if "Model hash" in parsed:
        found = next((c for c in models.usable() if c.matches(str(parsed["Model hash"]))), None)
        if found is not None:
            override["sd_model_checkpoint"] = found.title
    changes["override_settings"] = override
    return dataclasses.replace(req, **changes)


def list_images(folder: Path) -> list[Path]:
    """The images of a folder and its sub-folders, by name (hidden files and our temp files left out)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def list_masks(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def find_mask(image: Path, masks: list[Path]) -> Path | None:
    """One mask for all when the folder holds one file, else the mask with the image's stem."""
    if len(masks) == 1:
        return masks[0]
    return next((m for m in masks if m.stem == image.stem), None)


def open_image(path: Path) -> Image.Image:
    """A fully decoded image, turned upright by its EXIF orientation; ValueError with the reason otherwise."""
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a readable image ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
                         ) from None


def run_batch(engine, job, req: Img2ImgRequest, folders: BatchFolders) -> BatchResult:
    """Process the folder inside a running queue job (engine: the studio's Engine)."""
    out = BatchResult()
    files = folders.inputs()
    masks = list_masks(folders.mask_dir)
    if not files:
        out.notes.append(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folders.input_dir}")
        return out
    opts = engine.settings.with_overrides(req.override_settings)
    fmt = str(opts.get("samples_format") or "png").lower()
    fmt = "jpg" if fmt == "jpeg" else fmt
    quality = int(opts.get("jpeg_quality", 80))
    save_normally = folders.output_dir is None
    # a batch never saves grids; a random seed is drawn once for all its images (A1111)
    item_req = dataclasses.replace(req, do_not_save_grid=True, seed=resolve_seed(req.seed),
                                   subseed=resolve_seed(req.subseed))
    job.progress.run_count = len(files)
    for k, (path, name) in enumerate(files):
        if job.interrupted:
            out.interrupted = True
            break
        job.skipped = False
        job.progress.run_no = k
        job.progress.stage = f"{k + 1} out of {len(files)}: "
        try:
            image = open_image(path)
            this_req = item_req
            if folders.scale_by is not None:
                w, h = scaled_size(image, folders.scale_by)
                this_req = dataclasses.replace(this_req, width=w, height=h)
            if folders.use_png_info:
                source = folders.png_info_dir / path.name if folders.png_info_dir is not None else image
                try:
                    infotext, _ = saving.read_infotext(source)
                except (OSError, UnidentifiedImageError, ValueError):
                    infotext = None        # as A1111: no usable PNG info, the form's values
                this_req = with_png_info(this_req, item_req, infotext, folders.png_info_props, engine.models)
            mask = None
            if masks:
                mask_path = find_mask(path, masks)
                if mask_path is None:
                    raise ValueError(f"no mask named {path.stem}.* in {folders.mask_dir}")
                mask = open_image(mask_path)
            res = engine.run_in_job(job, this_req, [image], mask, save=save_normally)
        except (ValueError, StudioError) as e:
            out.skipped.append((name, str(e)))
            continue
        produced = list(zip(res.images[res.index_of_first_image:], res.infotexts[res.index_of_first_image:]))
        if produced:
            out.processed.append(name)
        if save_normally:
            out.written.extend(res.saved)
        else:
            for n, (im, text) in enumerate(produced):
                stem = path.stem if len(produced) == 1 else f"{path.stem}-{n + 1}"
                out.written.append(saving.save_named(im, folders.output_dir, stem, text, fmt=fmt,
                                                     jpeg_quality=quality))
        for im, text in produced:
            if len(out.images) < SHOW_LIMIT:
                out.images.append(im)
                out.infotexts.append(text)
        out.notes.extend(n for n in res.notes if n not in out.notes)
        if res.interrupted:
            out.interrupted = True
            break
    job.progress.stage = ""
    return out
