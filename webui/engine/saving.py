"""Saving outputs like A1111: numbered file names, infotext in the file, atomic and never overwriting.

Images are named "NNNNN-<pattern>.<ext>" (5-digit counter, 1 + the highest counter already in the folder,
starting at 00000), grids "grid-NNNN.<ext>". A file is encoded in memory, written to a hidden temp file in
the same folder, then hard-linked to its final name (which fails if the name exists, so nothing is ever
overwritten) while holding an exclusive lock on the folder, so concurrent saves (threads or processes)
get distinct counters. Where hard links are unsupported the name is reserved with O_EXCL and replaced.
PNG carries the infotext in a text chunk "parameters"; JPEG and WebP in EXIF UserComment (unicode).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import secrets
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import piexif
import piexif.helper
from PIL import Image, PngImagePlugin

from webui.core.errors import InvalidField
from webui.core.grids import GridAnnotation, grid_shape, label_font_size, wrap_text
from webui.core.infotext import format_number, format_value

try:
    import fcntl
except ImportError:  # Windows: no folder lock; os.link still never overwrites
    fcntl = None  # type: ignore[assignment]

FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
KNOWN_TOKENS = frozenset({
    "seed", "seed_first", "seed_last", "steps", "cfg", "width", "height", "sampler", "scheduler",
    "sampler_scheduler", "model_name", "model_hash", "vae_filename", "styles", "prompt", "prompt_spaces",
    "prompt_words", "prompt_hash", "prompt_no_styles", "negative_prompt_hash", "full_prompt_hash", "hasprompt",
    "date", "datetime", "job_timestamp", "batch_number", "batch_size", "generation_number", "clip_skip",
    "denoising", "user", "image_hash", "none",
})
IGNORED_INFO_KEYS = frozenset({
    "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background", "timestamp",
    "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop", "transparency",
    "gamma", "srgb", "aspect", "xmp",
})
TOKEN_RE = re.compile(r"\[(\w+)((?:<[^>]*>)*)\]")
# "#" too: Gradio's gallery shows a file whose name has one as a broken image (A1111 replaces it since 1.8)
INVALID_CHARS = {ord(c): "_" for c in '<>:"/\\|?*#'} | {c: "_" for c in [*range(32), 127]}
MAX_NAME_CHARS = 128
MAX_NAME_BYTES = 200
DEFAULT_DATETIME = "%Y%m%d%H%M%S"


def date_folder(root: Path, kind: str, now: datetime | None = None) -> Path:
    """``root/kind/YYYY-MM-DD`` (e.g. outputs/txt2img-images/2024-05-01); not created here."""
    if not kind or kind in (".", "..") or any(c in kind for c in "/\\"):
        raise ValueError(f"output kind must be one folder name, got {kind!r}")
    return Path(root) / kind / (now or datetime.now()).strftime("%Y-%m-%d")


def sanitize_filename_part(text: str, replace_spaces: bool = False, max_chars: int = MAX_NAME_CHARS) -> str:
    """Text safe inside a file name: invalid and control characters become "_", length is capped."""
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate(INVALID_CHARS).lstrip(" ")[:max_chars]
    while len(text.encode("utf-8")) > MAX_NAME_BYTES:
        text = text[:-1]
    return text.rstrip(" .")


def _datetime_text(now: datetime, fmt: str = "", tz: str = "") -> str:
    try:
        zone = ZoneInfo(tz) if tz else None
    except (ZoneInfoNotFoundError, ValueError):
        zone = None
    moment = now.astimezone(zone) if zone else now
    try:
        return moment.strftime(fmt or DEFAULT_DATETIME)
    except ValueError:
        return moment.strftime(DEFAULT_DATETIME)


def expand_pattern(pattern: str, tokens: Mapping[str, object] | None = None, now: datetime | None = None,
                   max_prompt_words: int = 8) -> str:
    """Expand A1111 file name tokens ("[seed]-[prompt_words]") into a sanitised name part.

    Tokens, case-insensitive: [seed] [seed_first] [seed_last] [steps] [cfg] [width] [height] [sampler]
    [scheduler] [sampler_scheduler] [model_name] [model_hash] [vae_filename] [styles] ("None" when there are
    none) [prompt] (spaces -> "_") [prompt_spaces] [prompt_words] (the first ``max_prompt_words`` words, "empty"
    when there are none) [prompt_hash] [prompt_no_styles] [negative_prompt_hash] [full_prompt_hash] (8 hex of
    sha256, or [prompt_hash<N>] for N) [hasprompt<word|otherwise>...] [date] [datetime]
    [datetime<%Y%m%d><Europe/Paris>] [job_timestamp] [batch_number] (nothing, and the text before it, for a
    batch of one) [batch_size] [generation_number] [clip_skip] [denoising] [image_hash] [none] and any other key
    of ``tokens``. A known token with no value expands to nothing; an unknown one is kept. Each value is capped
    at 128 characters, so a long prompt cannot push the tokens after it out of the name.
    """
    values = {str(k).lower(): v for k, v in (tokens or {}).items()}
    now = now or datetime.now()

    def digest(data: str | bytes, args: list[str]) -> str:
        n = int(args[0]) if args and args[0].isdigit() else 8
        return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()[:n]

    def value_of(name: str, args: list[str]) -> str | None:
        """The token's text; None to keep the token as written."""
        prompt = str(values.get("prompt") or "")
        if name == "datetime":
            return _datetime_text(now, *args)
        if name == "date":
            return now.date().isoformat()
        if name == "none":
            return ""
        if name == "prompt_words":
            if "prompt" not in values:
                return ""
            return " ".join(re.findall(r"[^\W_]+", prompt)[:max_prompt_words]) or "empty"
        if name in ("prompt_hash", "negative_prompt_hash", "full_prompt_hash"):
            negative = str(values.get("negative_prompt") or "")
            text = {"prompt_hash": prompt, "negative_prompt_hash": negative}.get(name, f"{prompt} {negative}")
            return digest(text, args) if text.strip() else ""
        if name in ("prompt", "prompt_spaces", "prompt_no_styles"):
            text = str(values.get("prompt_no_styles" if name == "prompt_no_styles" else "prompt") or "")
            return text.replace(" ", "_") if name == "prompt" else text
        if name == "hasprompt":   # <word|otherwise>...: the word where the prompt has it, else the other text
            low = prompt.lower()
            out = []
            for arg in args:
                word, _, otherwise = arg.partition("|")
                out.append(word.lower() if word.lower() in low else otherwise)
            return "".join(out)
        if name == "styles":
            styles = [str(x) for x in values.get("styles") or [] if str(x) != "None"]
            return ", ".join(styles) or ("None" if "styles" in values else "")
        if name == "image_hash":
            image = values.get("image")
            return digest(image.tobytes(), args) if isinstance(image, Image.Image) else ""
        if name == "cfg" and isinstance(values.get("cfg"), (int, float)):
            return str(float(values["cfg"]))   # as A1111's: 7.0
        value = values.get(name)
        if value is None:
            return "" if name in KNOWN_TOKENS else None
        if isinstance(value, (list, tuple)):
            return ", ".join(format_value(v) for v in value)
        return format_number(value) if isinstance(value, float) else format_value(value)

    out, last = "", 0
    for match in TOKEN_RE.finditer(pattern):
        name, args = match.group(1).lower(), re.findall(r"<([^>]*)>", match.group(2))
        text = pattern[last:match.start()]
        value = value_of(name, args)
        if name == "batch_number" and values.get("batch_size") == 1:
            text, value = "", ""   # A1111: a batch of one has no number, nor the text that leads to it
        out += text + (match.group(0) if value is None else value[:MAX_NAME_CHARS])
        last = match.end()
    out += pattern[last:]
    # the whole name is held to MAX_NAME_BYTES (file systems allow 255 with the counter and suffix)
    return sanitize_filename_part(out, max_chars=MAX_NAME_BYTES).strip(" -_.")


def next_counter(folder: Path, prefix: str = "") -> int:
    """1 + the highest counter among names "<prefix>NNNN..." in ``folder`` (0 when there is none)."""
    best = -1
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(prefix):
            head = os.path.splitext(entry.name[len(prefix):])[0].split("-")[0]
            if head.isascii() and head.isdigit():
                best = max(best, int(head))
    return best + 1


def _exif_with_comment(text: str) -> bytes:
    return piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump(text, encoding="unicode")}})


def encode_image(image: Image.Image, infotext: str | None, fmt: str = "png", jpeg_quality: int = 95,
                 extra_info: Mapping[str, str] | None = None) -> bytes:
    """The image file's bytes with the infotext embedded (also what the API base64-encodes)."""
    pil_format = FORMATS.get(fmt.lower())
    if pil_format is None:
        raise InvalidField("samples_format", f"{fmt!r} is not a supported image format; use one of {sorted(FORMATS)}")
    buffer = io.BytesIO()
    if pil_format == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in (extra_info or {}).items():
            info.add_text(key, str(value))
        if infotext is not None:
            info.add_text("parameters", infotext)
        image.save(buffer, "PNG", pnginfo=info)
        return buffer.getvalue()
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    wanted = "RGBA" if pil_format == "WEBP" and has_alpha else "RGB"
    if image.mode != wanted and not (pil_format == "JPEG" and image.mode == "L"):
        image = image.convert(wanted)
    kwargs: dict[str, object] = {"quality": jpeg_quality}
    if infotext is not None:
        kwargs["exif"] = _exif_with_comment(infotext)
    image.save(buffer, pil_format, **kwargs)
    return buffer.getvalue()


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on the folder itself (flock on its descriptor), across threads and processes."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_temp(folder: Path, data: bytes) -> Path:
    path = folder / f".{secrets.token_hex(8)}.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return path


def _place(temp: Path, target: Path) -> bool:
    """Give ``temp``'s content the name ``target`` unless that name exists; True on success."""
    try:
        os.link(temp, target)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here: reserve the name, then replace the (empty, ours) reservation
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            return False
        os.replace(temp, target)
        return True


def _save_new(folder: Path, files: Sequence[tuple[str, bytes]], prefix: str,
              name: Callable[[int], str], numbered: bool = True) -> Path:
    """Save ``files`` (suffix, bytes) under the first free counter (``numbered``: counting on from the folder's
    highest, else from 0); returns the first file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    temps = [_write_temp(folder, data) for _, data in files]
    try:
        with _folder_lock(folder):
            counter = next_counter(folder, prefix) if numbered else 0
            for _ in range(10_000):
                stem = name(counter)
                counter += 1
                targets = [folder / f"{stem}{suffix}" for suffix, _ in files]
                if any(t.exists() for t in targets[1:]) or not _place(temps[0], targets[0]):
                    continue
                for temp, target in zip(temps[1:], targets[1:], strict=True):
                    if not _place(temp, target):
                        raise FileExistsError(f"{target} appeared while saving")
                return targets[0]
            raise FileExistsError(f"no free file name in {folder}")
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def save_image(image: Image.Image, folder: Path, infotext: str | None, *, tokens: Mapping[str, object] | None = None,
               pattern: str = "[seed]", fmt: str = "png", jpeg_quality: int = 95,
               extra_info: Mapping[str, str] | None = None, sidecar_txt: bool = False, add_number: bool = True,
               embed_infotext: bool = True, now: datetime | None = None) -> Path:
    """Save as ``folder/NNNNN-<pattern>.<fmt>`` (e.g. 00012-1234.png); returns the new file's path.

    ``tokens`` fills the pattern (see ``expand_pattern``), e.g. {"seed": 1234, "prompt": ..., "steps": 20}.
    ``extra_info``: more PNG text chunks. ``sidecar_txt``: also write the infotext to NNNNN-....txt.
    ``add_number`` False (A1111's save_images_add_number): ``<pattern>.<fmt>``, then ``<pattern>_1`` ... when the
    name is taken (a name the pattern leaves empty is numbered still). ``embed_infotext`` False (A1111's
    enable_pnginfo): no infotext inside the file.
    """
    decoration = expand_pattern(pattern, tokens, now)
    files = [(f".{fmt.lower()}", encode_image(image, infotext if embed_infotext else None, fmt, jpeg_quality,
                                              extra_info if embed_infotext else None))]
    if sidecar_txt and infotext is not None:
        files.append((".txt", f"{infotext}\n".encode()))
    if not add_number and decoration:
        return _save_new(Path(folder), files, "", lambda n: f"{decoration}_{n}" if n else decoration,
                         numbered=False)
    return _save_new(Path(folder), files, "", lambda n: f"{n:05d}-{decoration}" if decoration else f"{n:05d}")


def save_grid(image: Image.Image, folder: Path, infotext: str | None, *, fmt: str = "png", jpeg_quality: int = 95,
              tokens: Mapping[str, object] | None = None, pattern: str = "", now: datetime | None = None,
              basename: str = "grid") -> Path:
    """Save a grid as ``folder/<basename>-NNNN.<fmt>`` (4-digit counter, a sequence per basename, as A1111's
    grid-0000, xyz_grid-0000, prompt_matrix-0000); returns the path."""
    decoration = expand_pattern(pattern, tokens, now)
    base = sanitize_filename_part(basename) or "grid"
    files = [(f".{fmt.lower()}", encode_image(image, infotext, fmt, jpeg_quality))]
    return _save_new(Path(folder), files, f"{base}-",
                     lambda n: f"{base}-{n:04d}-{decoration}" if decoration else f"{base}-{n:04d}")


def save_named(image: Image.Image, folder: Path, stem: str, infotext: str | None, *, fmt: str = "png",
               jpeg_quality: int = 95) -> Path:
    """Save as ``folder/<stem>.<fmt>`` (img2img batch outputs are named after their inputs); when that name is
    taken, ``<stem>_1``, ``<stem>_2``, ...: atomic, never overwriting. Returns the new file's path."""
    return save_bytes(folder, stem, f".{fmt.lower()}", encode_image(image, infotext, fmt, jpeg_quality))


def save_bytes(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Write ``data`` as ``folder/<stem><suffix>``, or ``<stem>_1<suffix>``, ... when the name is taken: atomic,
    never overwriting. Returns the new file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = sanitize_filename_part(stem) or "image"
    temp = _write_temp(folder, data)
    try:
        with _folder_lock(folder):
            for n in range(10_000):
                target = folder / f"{stem}{f'_{n}' if n else ''}{suffix}"
                if _place(temp, target):
                    return target
        raise FileExistsError(f"no free file name for {stem} in {folder}")
    finally:
        temp.unlink(missing_ok=True)


def append_text(path: Path, text: str, header: str = "") -> None:
    """Append ``text`` to a log file under its folder's lock (``header`` first when the file is new), flushed to
    disk, so concurrent writers never interleave and earlier lines are never rewritten."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent), open(path, "a", encoding="utf-8", newline="") as file:
        if file.tell() == 0 and header:
            file.write(header)
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def _info_value(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="ignore")
    return value if isinstance(value, str | int | float | bool) else str(value)


def _read(image: Image.Image) -> tuple[str | None, dict[str, object]]:
    items: dict[str, object] = dict(image.info or {})
    items.update(getattr(image, "text", None) or {})  # PNG text chunks, also those after the image data
    geninfo = items.pop("parameters", None)
    if "exif" in items:
        try:
            raw = piexif.load(items["exif"]).get("Exif", {}).get(piexif.ExifIFD.UserComment, b"")
        except (ValueError, OSError, struct.error):
            raw = b""
        try:
            comment = piexif.helper.UserComment.load(raw) if raw else ""
        except ValueError:
            comment = raw.decode("utf-8", errors="ignore")
        if comment:
            items["exif comment"] = geninfo = comment
    elif geninfo is None and isinstance(items.get("comment"), bytes | str):  # GIF
        geninfo = str(_info_value(items["comment"]))
    items = {k: _info_value(v) for k, v in items.items() if k.lower() not in IGNORED_INFO_KEYS}
    return (str(geninfo) if geninfo is not None else None), items


def read_infotext(source: str | os.PathLike[str] | Image.Image) -> tuple[str | None, dict[str, object]]:
    """(the "parameters" text or EXIF UserComment, the other info items) of an image or image file."""
    if isinstance(source, Image.Image):
        return _read(source)
    with Image.open(source) as image:
        return _read(image)


def make_grid(images: Sequence[Image.Image], rows: int | None = None, *, batch_size: int = 1,
              prevent_empty_spots: bool = False, background: str = "black") -> Image.Image:
    """Paste images into a grid (rows as in ``grid_shape``); cells take the largest size, images centred."""
    n_rows, cols = grid_shape(len(images), rows, batch_size=batch_size, prevent_empty_spots=prevent_empty_spots)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    mode = "RGBA" if any(im.mode in ("RGBA", "LA", "PA") for im in images) else "RGB"
    grid = Image.new(mode, (cols * w, n_rows * h), background)
    for i, im in enumerate(images):
        grid.paste(im.convert(mode), (i % cols * w + (w - im.width) // 2, i // cols * h + (h - im.height) // 2))
    return grid


def _label_font(size: int):
    from PIL import ImageFont
    return ImageFont.load_default(size=size)   # Pillow's bundled FreeType font: no font file needed


def labelled_grid(images: Sequence[Image.Image], cols: int,
                  col_labels: Sequence[Sequence[GridAnnotation]] | None = None,
                  row_labels: Sequence[Sequence[GridAnnotation]] | None = None, *, margin: int = 0,
                  background: str = "white") -> Image.Image:
    """Images in a grid of ``cols`` columns (row-major), ``margin`` px between cells, with A1111-style legends:
    a header band above each column and a label column left of each row ("Label: value" lines, centred,
    wrapped to the cell; inactive lines grey and struck through). Cells take the largest image's size."""
    from PIL import ImageDraw

    rows = max(1, math.ceil(len(images) / cols))
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    font_size = label_font_size(w, h)
    font = _label_font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def measure(text: str) -> int:
        return int(probe.textlength(text, font=font))

    line_h = font_size + font_size // 3
    pad = max(4, font_size // 2)
    col_labels = [list(c) for c in col_labels or []]
    row_labels = [list(r) for r in row_labels or []]
    has_rows = any(a.text for r in row_labels for a in r)
    has_cols = any(a.text for c in col_labels for a in c)
    widest = max((measure(a.text) for r in row_labels for a in r), default=0)
    pad_left = min(max(w * 3 // 4, widest + 2 * pad), w * 3 // 2) if has_rows else 0

    def wrapped(labels: list[GridAnnotation], width: int) -> list[tuple[str, bool]]:
        return [(line, a.is_active) for a in labels for line in wrap_text(a.text, width, measure)]

    col_lines = [wrapped(c, w - 2 * pad) for c in col_labels]
    row_lines = [wrapped(r, pad_left - 2 * pad) for r in row_labels]
    pad_top = (max((len(c) for c in col_lines), default=0) * line_h + 2 * pad) if has_cols else 0
    size = (pad_left + cols * w + (cols - 1) * margin, pad_top + rows * h + (rows - 1) * margin)
    mode = "RGBA" if any(im.mode in ("RGBA", "LA", "PA") for im in images) else "RGB"
    out = Image.new(mode, size, background)
    for i, im in enumerate(images):
        x = pad_left + (i % cols) * (w + margin) + (w - im.width) // 2
        y = pad_top + (i // cols) * (h + margin) + (h - im.height) // 2
        out.paste(im.convert(mode), (x, y))
    draw = ImageDraw.Draw(out)

    def block(lines: list[tuple[str, bool]], cx: float, cy: float) -> None:
        top = cy - len(lines) * line_h / 2
        for k, (text, active) in enumerate(lines):
            y = top + k * line_h + line_h / 2
            colour = (0, 0, 0) if active else (153, 153, 153)
            draw.text((cx, y), text, font=font, fill=colour, anchor="mm")
            if not active:
                half = measure(text) / 2
                draw.line((cx - half, y, cx + half, y), fill=colour, width=max(1, font_size // 10))

    for c, lines in enumerate(col_lines[:cols]):
        block(lines, pad_left + c * (w + margin) + w / 2, pad_top / 2)
    for r, lines in enumerate(row_lines[:rows]):
        block(lines, pad_left / 2, pad_top + r * (h + margin) + h / 2)
    return out
