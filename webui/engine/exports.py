"""The gallery's 💾 Save and 🗃️ Zip buttons, as A1111's: copies of the shown images go into the save folder
(setting ``outdir_save``, "log/images"), each click adds one row to that folder's ``log.csv``, and Zip also packs
what it saved into one archive there. Every file is written atomically and never overwrites another."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from webui.core.errors import InvalidField
from webui.core.infotext import parse_infotext, parse_number
from webui.engine import saving

LOG_COLUMNS = ("prompt", "seed", "width", "height", "sampler", "cfgs", "steps", "filename", "negative_prompt")
ZIP_PATTERN = "[datetime]_[[model_name]]_[seed]-[seed_last]"


@dataclass
class SavedFiles:
    """What one click wrote: the zip first when one was made, then the images (and their .txt files)."""
    folder: Path
    files: list[Path] = field(default_factory=list)

    @property
    def message(self) -> str:
        first = next((f for f in self.files if f.suffix != ".zip"), None)
        return f"Saved: {first.relative_to(self.folder)}" if first else "Nothing saved"


def save_folder(opts: Mapping[str, object], data_dir: Path) -> Path:
    folder = Path(str(opts.get("outdir_save") or "log/images"))
    return folder if folder.is_absolute() else data_dir / folder


def _tokens(text: str, image: Image.Image) -> dict[str, object]:
    """File-name tokens from an image's infotext (the gallery keeps the text, not the request)."""
    p = parse_infotext(text) if "Steps: " in text else {}
    tokens: dict[str, object] = {"prompt": p.get("Prompt", ""), "prompt_no_styles": p.get("Prompt", ""),
                                 "negative_prompt": p.get("Negative prompt", ""), "width": image.width,
                                 "height": image.height, "image": image, "batch_size": 1}
    for key, name in (("Seed", "seed"), ("Steps", "steps"), ("CFG scale", "cfg"), ("Sampler", "sampler"),
                      ("Schedule type", "scheduler"), ("Model", "model_name"), ("Model hash", "model_hash"),
                      ("Clip skip", "clip_skip"), ("Denoising strength", "denoising")):
        if p.get(key) not in (None, ""):
            tokens[name] = p[key]
    for name, kind in (("seed", int), ("steps", int), ("cfg", float)):   # numbers, as the name tokens format them
        number = parse_number(tokens.get(name))
        if number is not None:
            tokens[name] = kind(number)
    return tokens


def save_gallery(images: Sequence[Image.Image], infotexts: Sequence[str], selected: int, *, make_zip: bool,
                 opts: Mapping[str, object], data_dir: Path, index_of_first_image: int = 0) -> SavedFiles:
    """Save the gallery's images (only the ``selected`` one when the setting ``save_selected_only`` is on and a
    picture, not a grid, is selected; -1 = none) as the Save button does; ``make_zip`` adds the archive."""
    if not images:
        raise InvalidField("images", "there are no images to save: generate some first")
    texts = [str(t or "") for t in infotexts] + [""] * (len(images) - len(infotexts))
    indices = list(range(len(images)))
    if opts.get("save_selected_only", True) and index_of_first_image <= selected < len(images):
        indices = [selected]
    folder = save_folder(opts, data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fmt = str(opts.get("samples_format") or "png").lower()
    fmt = "jpg" if fmt == "jpeg" else fmt
    pattern = str(opts.get("samples_filename_pattern") or "")
    to_dirs = bool(opts.get("use_save_to_dirs_for_ui", False))
    out = SavedFiles(folder)
    named = []   # each saved image's name tokens
    for i in indices:
        image, text = images[i], texts[i]
        tokens = _tokens(text, image)
        named.append(tokens)
        target = folder
        if to_dirs:
            sub = saving.expand_pattern(str(opts.get("directories_filename_pattern") or "[prompt_words]"), tokens,
                                        max_prompt_words=int(opts.get("directories_max_prompt_words", 8)))
            target = folder / sub if sub and sub not in (".", "..") else folder
        embed = bool(opts.get("enable_pnginfo", True)) and bool(text)
        if i < index_of_first_image:
            path = saving.save_grid(image, target, text if embed else None, fmt=fmt,
                                    jpeg_quality=int(opts.get("jpeg_quality", 80)))
        else:
            path = saving.save_image(image, target, text if embed else None, tokens=tokens,
                                     pattern=pattern or ("[seed]" if to_dirs else "[seed]-[prompt_spaces]"),
                                     fmt=fmt, jpeg_quality=int(opts.get("jpeg_quality", 80)),
                                     sidecar_txt=bool(opts.get("save_txt")) and bool(text),
                                     add_number=bool(opts.get("save_images_add_number", True)))
        out.files.append(path)
        if path.with_suffix(".txt").exists() and opts.get("save_txt") and text:
            out.files.append(path.with_suffix(".txt"))
    _log_row(folder, texts[indices[0]], out.files[0].relative_to(folder))
    if make_zip:
        known = [t["seed"] for t in named if t.get("seed") is not None]
        tokens = {**named[0], "seed": known[0] if known else "", "seed_last": known[-1] if known else ""}
        name = saving.expand_pattern(str(opts.get("grid_zip_filename_pattern") or ZIP_PATTERN), tokens) or "images"
        out.files.insert(0, _write_zip(folder, name, [(f, f.relative_to(folder).as_posix()) for f in out.files]))
    return out


def _log_row(folder: Path, text: str, filename: Path) -> None:
    """One row per click, as A1111's log.csv: the first saved file and the parameters of its image."""
    p = parse_infotext(text) if "Steps: " in text else {"Prompt": text}
    size = str(p.get("Size", "x")).partition("x")
    row = [p.get("Prompt", ""), p.get("Seed", ""), size[0], size[2], p.get("Sampler", ""), p.get("CFG scale", ""),
           p.get("Steps", ""), filename.as_posix(), p.get("Negative prompt", "")]
    buffer = io.StringIO()
    csv.writer(buffer).writerow(row)
    saving.append_text(folder / "log.csv", buffer.getvalue(), header=",".join(LOG_COLUMNS) + "\r\n")


def _write_zip(folder: Path, stem: str, members: Sequence[tuple[Path, str]]) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, arcname in members:
            archive.write(path, arcname)
    return saving.save_bytes(folder, stem, ".zip", buffer.getvalue())
