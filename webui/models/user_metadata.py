"""What A1111 keeps beside a model file for its extra-network card: a preview picture (``name.png``,
``name.preview.png``, jpg / jpeg / webp / gif too), a description (``name.txt``, ``name.description.txt``) and the
user metadata its card editor writes (``name.json``: "description", "activation text", "preferred weight",
"negative text", "sd version", "notes"). Files users already have from A1111 are read as they are."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from PIL import Image

PREVIEW_SUFFIXES = ("png", "jpg", "jpeg", "webp", "gif")
SD_VERSIONS = ("Unknown", "SD1", "SD2", "SDXL")


def base_of(path: Path) -> Path:
    """The model's path without its suffix (a diffusers folder is its own base): the sidecar files' stem."""
    return path if path.is_dir() else path.with_suffix("")


def find_preview(path: Path) -> Path | None:
    base = base_of(path)
    for suffix in PREVIEW_SUFFIXES:
        for candidate in (Path(f"{base}.{suffix}"), Path(f"{base}.preview.{suffix}")):
            if candidate.is_file():
                return candidate
    return None


def find_description(path: Path) -> str:
    base = base_of(path)
    for candidate in (Path(f"{base}.txt"), Path(f"{base}.description.txt")):
        if candidate.is_file():
            try:
                return candidate.read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                return ""
    return ""


def metadata_file(path: Path) -> Path:
    return Path(f"{base_of(path)}.json")


def read(path: Path) -> dict:
    """The user metadata of a model file ({} when there is none or it is not a JSON object)."""
    try:
        data = json.loads(metadata_file(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_atomic(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(path: Path, data: dict) -> Path:
    """Store the user metadata (keys the editor does not show are kept); returns the JSON file's path."""
    target = metadata_file(path)
    merged = {**read(path), **data}
    _write_atomic(target, lambda f: f.write(json.dumps(merged, indent=4, ensure_ascii=False).encode("utf-8")))
    return target


def save_preview(path: Path, image: Image.Image, infotext: str | None = None) -> Path:
    """Make ``image`` the card's preview (A1111's "Replace preview"): written as ``name.png``, which is the first
    place a preview is looked for, keeping the picture's infotext as A1111 does."""
    from PIL import PngImagePlugin

    target = Path(f"{base_of(path)}.png")
    picture = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    _write_atomic(target, lambda f: picture.save(f, format="PNG", pnginfo=info))
    return target
