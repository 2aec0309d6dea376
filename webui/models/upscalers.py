"""Upscaler model files: listing (A1111's folders models/ESRGAN, RealESRGAN, SwinIR, DAT), loading through spandrel
(which detects the architecture - ESRGAN/RRDBNet old and new layouts, Real-ESRGAN, SwinIR, DAT, HAT, ... - from
the weights) and tiled inference whose memory is bounded by the tile, not the image.

spandrel declares torchvision as a dependency but uses it only in two architectures that are not upscalers
(LaMa inpainting, RestoreFormer faces), imported with the package. torchvision is not installed here (PyPI's build
does not load next to a CPU torch), so when it cannot be imported spandrel is imported with a stand-in for the
three names those modules take; using one of them raises a clear error. The stand-in is removed from sys.modules
right after the import, so nothing else in the process sees it.
"""
from __future__ import annotations

import enum
import importlib.util
import math
import re
import sys
import threading
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT")
UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors")
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")
_SCALE_IN_NAME = re.compile(r"(?<![a-z0-9])(\d)x|x(\d)(?![0-9])", re.IGNORECASE)
_import_lock = threading.Lock()


@dataclass(frozen=True)
class UpscalerFile:
    """A model upscaler found on disk; ``name`` (the file's stem, as A1111 names them) is what requests use."""

    name: str
    path: Path
    folder: str          # the A1111 folder it was found in: "ESRGAN", "RealESRGAN", "SwinIR" or "DAT"
    scale: int           # from the file name ("4x-UltraSharp", "RealESRGAN_x2plus"); 4 when it does not say
    mtime: float = 0.0

    def api_item(self) -> dict:
        """An item of GET /sdapi/v1/upscalers (A1111's keys)."""
        return {"name": self.name, "model_name": self.folder, "model_path": str(self.path), "model_url": None,
                "scale": self.scale}


def scale_from_name(name: str, default: int = 4) -> int:
    m = _SCALE_IN_NAME.search(name)
    return int(m.group(1) or m.group(2)) if m else default


def scan_upscalers(folders: dict[str, Path]) -> list[UpscalerFile]:
    """Model files in each folder (sub-folders too), in folder order then by name. A stem already taken by an
    earlier file gets the folder in brackets ("4x-foo [RealESRGAN]") so every name stays unique."""
    found: dict[str, UpscalerFile] = {}
    for kind, root in folders.items():
        if not Path(root).is_dir():
            continue
        for path in sorted(Path(root).rglob("*"), key=lambda p: p.as_posix().lower()):
            if path.suffix.lower() not in UPSCALER_SUFFIXES or not path.is_file() or path.stat().st_size == 0:
                continue
            name = path.stem if path.stem not in found and path.stem not in BUILTIN_UPSCALERS \
                else f"{path.stem} [{kind}]"
            if name in found:
                continue
            found[name] = UpscalerFile(name, path.resolve(), kind, scale_from_name(path.stem), path.stat().st_mtime)
    return list(found.values())


# -- spandrel ---------------------------------------------------------------------------------------------------
def _torchvision_importable() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision.transforms.functional  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - ImportError, or RuntimeError from a build that does not match torch
        return False


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    def unavailable(*_args, **_kwargs):
        raise RuntimeError("this model architecture needs torchvision, which is not installed")

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = InterpolationMode
    functional.rotate = unavailable
    functional.normalize = unavailable
    root.transforms = transforms
    transforms.functional = functional
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


def import_spandrel() -> types.ModuleType:
    """The spandrel package, imported once (with the torchvision stand-in where torchvision cannot load)."""
    with _import_lock:
        if "spandrel" in sys.modules:
            return sys.modules["spandrel"]
        if _torchvision_importable():
            import spandrel
            return spandrel
        stand_in = {k: v for k, v in _torchvision_stand_in().items() if k not in sys.modules}
        sys.modules.update(stand_in)
        try:
            import spandrel
        finally:
            for key in stand_in:
                sys.modules.pop(key, None)
        return spandrel


def read_upscaler_state_dict(path: Path) -> dict:
    """The weights of an upscaler file; .pth/.pt through torch's weights-only unpickler (no code runs)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged pickle raises anything (IndexError, UnpicklingError, ...)
        raise ValueError(f"not a readable weights file ({type(e).__name__}: {str(e)[:160]})") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{path.name} holds a {type(sd).__name__}, not a state dict")
    return sd


@dataclass
class LoadedUpscaler:
    file: UpscalerFile
    model: torch.nn.Module
    scale: int
    architecture: str
    multiple_of: int = 1
    minimum: int = 1
    square: bool = False
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")

    @property
    def title(self) -> str:
        return f"{self.file.name} ({self.architecture} {self.scale}x)"


def load_upscaler(file: UpscalerFile, device: torch.device, dtype: torch.dtype = torch.float32) -> LoadedUpscaler:
    """Load with spandrel; ValueError naming the file when it cannot be read or is not an image upscaler."""
    spandrel = import_spandrel()
    try:
        sd = read_upscaler_state_dict(file.path)
        sd = spandrel.canonicalize_state_dict(sd)
        desc = spandrel.ModelLoader().load_from_state_dict(sd)
    except spandrel.UnsupportedModelError:
        raise ValueError(f"{file.name}: spandrel does not recognise this model architecture") from None
    except (OSError, RuntimeError, KeyError, ValueError, EOFError) as e:
        raise ValueError(f"{file.name}: cannot be read ({str(e)[:240]})") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor) or desc.input_channels != desc.output_channels:
        raise ValueError(f"{file.name}: a {desc.architecture.name} model is not an image upscaler")
    if dtype == torch.bfloat16 and not desc.supports_bfloat16 or dtype == torch.float16 and not desc.supports_half:
        dtype = torch.float32
    desc.model.eval().requires_grad_(False)
    desc.to(device)
    desc.model.to(dtype=dtype)
    req = desc.size_requirements
    return LoadedUpscaler(file, desc.model, int(desc.scale), desc.architecture.name, max(1, req.multiple_of),
                          max(1, req.minimum), bool(req.square), dtype, device)


# -- inference --------------------------------------------------------------------------------------------------
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px, neighbours overlapping by at least
    ``overlap`` px, spread evenly (the last tile ends exactly at the edge)."""
    if tile >= length:
        return [0]
    step = max(1, tile - overlap)
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def fit_tile(length: int, tile: int, overlap: int) -> int:
    """The tile length (at most ``tile``) that covers ``length`` with the fewest tiles overlapping by about
    ``overlap``: 256 px in tiles of 128 with 16 overlap -> three of 96, not three of 128 overlapping by 64."""
    if tile >= length:
        return length
    n = math.ceil((length - overlap) / max(1, tile - overlap))
    return min(tile, math.ceil((length + (n - 1) * overlap) / n))


def _ramp(length: int, lo: int, hi: int) -> np.ndarray:
    """Blend weights along one axis of a tile: rising linearly over ``lo`` px at the start and falling over
    ``hi`` px at the end (0 = a hard edge: the image border), never exactly 0 so every pixel has weight."""
    w = np.ones(length, np.float32)
    if lo > 0:
        w[:lo] = (np.arange(lo, dtype=np.float32) + 0.5) / lo
    if hi > 0:
        w[length - hi:] = np.minimum(w[length - hi:], (np.arange(hi, 0, -1, dtype=np.float32) - 0.5) / hi)
    return w


@torch.no_grad()
def _run(up: LoadedUpscaler, x: torch.Tensor) -> torch.Tensor:
    """The model on one (1, C, h, w) tile in [0, 1], padded (reflect) to what the architecture needs."""
    h, w = x.shape[-2:]
    need_h = max(up.minimum, math.ceil(h / up.multiple_of) * up.multiple_of)
    need_w = max(up.minimum, math.ceil(w / up.multiple_of) * up.multiple_of)
    if up.square:
        need_h = need_w = max(need_h, need_w)
    if (need_h, need_w) != (h, w):
        mode = "reflect" if need_h - h < h and need_w - w < w else "replicate"
        x = torch.nn.functional.pad(x, (0, need_w - w, 0, need_h - h), mode=mode)
    out = up.model(x.to(up.device, up.dtype)).float().clamp_(0, 1)
    return out[..., : h * up.scale, : w * up.scale].cpu()


def upscale_once(up: LoadedUpscaler, image: Image.Image, tile: int = 192, overlap: int = 8,
                 check: Callable[[int, int], None] | None = None) -> Image.Image:
    """One pass of the model (the image grows by its scale), in tiles of ``tile`` px (0 = whole image) whose
    outputs are blended over ``overlap`` px with linear ramps. ``check(done, total)`` is called after each tile
    (progress; it may raise to stop)."""
    rgb = image.convert("RGB")
    arr = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    h, w = arr.shape[-2:]
    s = up.scale
    tile = tile if tile and tile > 0 else max(h, w)
    overlap = max(0, min(overlap, tile // 2))
    tile_h, tile_w = fit_tile(h, tile, overlap), fit_tile(w, tile, overlap)
    ys, xs = tile_starts(h, tile_h, overlap), tile_starts(w, tile_w, overlap)
    acc = np.zeros((h * s, w * s, 3), np.float32)
    weight = np.zeros((h * s, w * s, 1), np.float32)
    total, done = len(ys) * len(xs), 0
    for yi, y in enumerate(ys):
        th = min(tile_h, h - y)
        # the overlap actually shared with the neighbouring tile (0 at the image's border)
        top = (ys[yi - 1] + tile_h - y) * s if yi > 0 else 0
        bottom = (y + th - ys[yi + 1]) * s if yi + 1 < len(ys) else 0
        wy = _ramp(th * s, top, bottom)
        for xi, x in enumerate(xs):
            tw = min(tile_w, w - x)
            left = (xs[xi - 1] + tile_w - x) * s if xi > 0 else 0
            right = (x + tw - xs[xi + 1]) * s if xi + 1 < len(xs) else 0
            wx = _ramp(tw * s, left, right)
            out = _run(up, arr[..., y:y + th, x:x + tw])[0].permute(1, 2, 0).numpy()
            m = (wy[:, None] * wx[None, :])[..., None]
            acc[y * s:(y + th) * s, x * s:(x + tw) * s] += out * m
            weight[y * s:(y + th) * s, x * s:(x + tw) * s] += m
            done += 1
            if check is not None:
                check(done, total)
    result = np.clip(acc / weight * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(result)


def names(files: Iterable[UpscalerFile]) -> list[str]:
    return [*BUILTIN_UPSCALERS, *(f.name for f in files)]
