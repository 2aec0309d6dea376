"""ControlNet preprocessors (sd-webui-controlnet's "modules"): an image in, the control map out.

The ones that need no learned weights are computed here with OpenCV and numpy (canny, invert, threshold,
scribble_xdog, lineart_standard, blur_gaussian, tile_resample, shuffle, inpaint); openpose_* run mediapipe's
bundled models (webui/engine/openpose.py). Those whose weights no registry package ships (lineart, softedge,
depth, normal, mlsd, segmentation, dw_openpose) are listed as unavailable with the reason and the file
A1111's extension would read from models/ControlNet/annotators; asking for one is a clear error, never a
download or a hang.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from webui.core.errors import InvalidField, ModelLoadError
from webui.engine.openpose import PoseDetector, draw


@dataclass(frozen=True)
class Slider:
    label: str
    minimum: float
    maximum: float
    value: float
    step: float = 1.0

    def as_dict(self) -> dict:
        return {"name": self.label, "min": self.minimum, "max": self.maximum, "value": self.value,
                "step": self.step}


RESOLUTION = Slider("Preprocessor Resolution", 64, 2048, 512, 1)


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable | None                   # (image HxWx3 uint8, resolution, a, b, ctx) -> map
    label: str = ""
    resolution: Slider | None = RESOLUTION
    slider_1: Slider | None = None
    slider_2: Slider | None = None
    needs_mask: bool = False
    weights: tuple[str, ...] = ()          # annotator files this module would need (unavailable ones)
    unavailable: str | None = None         # why it cannot run here
    tags: tuple[str, ...] = ()

    @property
    def shown(self) -> str:
        return self.label or self.name

    def defaults(self, res: float, a: float, b: float) -> tuple[int, float, float]:
        """The extension's rule: a value outside a slider's range (e.g. -1) means that slider's default."""
        def pick(value, slider):
            if slider is None:
                return value
            return value if slider.minimum <= value <= slider.maximum else slider.value
        r = pick(res, self.resolution)
        return int(r if r is not None else 512), float(pick(a, self.slider_1)), float(pick(b, self.slider_2))

    def detail(self) -> dict:
        sliders = [s.as_dict() for s in (self.resolution, self.slider_1, self.slider_2) if s is not None]
        out = {"model_free": self.unavailable is None and not self.weights, "sliders": sliders}
        if self.unavailable:
            out["unavailable"] = self.unavailable
        return out


@dataclass
class Context:
    """What some preprocessors need beside the image: the mask (inpaint), a seed (shuffle), the pose
    detector (openpose), and where the JSON of a detected pose goes."""

    mask: np.ndarray | None = None          # HxW uint8, 255 = masked
    seed: int = 0
    detector: PoseDetector | None = None
    poses: list = field(default_factory=list)


# -------------------------------------------------------------------------------------------------- helpers
def hwc3(image: np.ndarray) -> np.ndarray:
    """Any uint8 image as HxWx3 (grey repeated; alpha composited over white, as the extension's HWC3 does, so
    a drawing of black strokes on a transparent canvas reads as black on white)."""
    x = np.asarray(image)
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.shape[2] == 1:
        return np.repeat(x, 3, axis=2)
    if x.shape[2] == 4:
        alpha = x[:, :, 3:4].astype(np.float32) / 255.0
        return (x[:, :, :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(x[:, :, :3])


def resize_short_side(image: np.ndarray, resolution: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The image scaled so its short side is ``resolution``, padded (edge) to multiples of 64 as detectors like;
    returns it and a function that crops a result back to the unpadded size."""
    h, w = image.shape[:2]
    k = float(resolution) / float(min(h, w))
    th, tw = int(round(h * k)), int(round(w * k))
    resized = cv2.resize(image, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    ph, pw = -th % 64, -tw % 64
    padded = np.pad(resized, [[0, ph], [0, pw]] + [[0, 0]] * (resized.ndim - 2), mode="edge")
    return np.ascontiguousarray(padded), lambda x: np.ascontiguousarray(x[:th, :tw])


# ------------------------------------------------------------------------------------------------ the modules
def _none(img, res, a, b, ctx):
    return img


def _invert(img, res, a, b, ctx):
    return 255 - img


def _canny(img, res, a, b, ctx):
    x, unpad = resize_short_side(img, res)
    return unpad(hwc3(cv2.Canny(x, int(a), int(b))))


def _threshold(img, res, a, b, ctx):
    x, unpad = resize_short_side(img, res)
    out = np.where(x.min(axis=2) > a, 255, 0).astype(np.uint8)
    return unpad(hwc3(out))


def _scribble_xdog(img, res, a, b, ctx):
    x, unpad = resize_short_side(img, res)
    fine = cv2.GaussianBlur(x.astype(np.float32), (0, 0), 0.5)
    coarse = cv2.GaussianBlur(x.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255)
    out = np.where(2 * (255 - dog) > a, 255, 0).astype(np.uint8)
    return unpad(hwc3(out))


def _lineart_standard(img, res, a, b, ctx):
    x, unpad = resize_short_side(img, res)
    f = x.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(f, (0, 0), 6.0) - f, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity = intensity / max(16.0, float(np.median(strong)) if strong.size else 16.0) * 127
    return unpad(hwc3(intensity.clip(0, 255).astype(np.uint8)))


def _blur(img, res, a, b, ctx):
    x, unpad = resize_short_side(img, res)
    return cv2.GaussianBlur(unpad(x), (0, 0), float(a))


def _tile_resample(img, res, a, b, ctx):
    if a < 1.1:
        return img
    h, w = img.shape[:2]
    return cv2.resize(img, (int(w / a), int(h / a)), interpolation=cv2.INTER_AREA)


def _shuffle(img, res, a, b, ctx):
    """Content shuffle: the image warped by a smooth random flow (one seed, one warp)."""
    x, unpad = resize_short_side(img, res)
    x = unpad(x)
    h, w = x.shape[:2]
    rng = np.random.default_rng(ctx.seed)
    f = 256

    def smooth_noise() -> np.ndarray:
        coarse = rng.uniform(0, 1, size=(h // f + 2, w // f + 2)).astype(np.float32)
        big = cv2.resize(coarse, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f:f + h, f:f + w]
        big -= big.min()
        return big / max(float(big.max()), 1e-6)

    map_x = smooth_noise() * w
    map_y = smooth_noise() * h
    return cv2.remap(x, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR)


def _inpaint(img, res, a, b, ctx):
    """RGB + the mask as a 4th channel (255 = masked); the hint marks masked pixels with -1 later."""
    if ctx.mask is None:
        raise InvalidField("mask", "the inpaint preprocessor needs a mask (the img2img inpaint mask, or the "
                                   "unit's mask)")
    mask = ctx.mask
    if mask.shape[:2] != img.shape[:2]:
        mask = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    return np.concatenate([img, np.where(mask > 127, 255, 0).astype(np.uint8)[:, :, None]], axis=2)


def _openpose(hands: bool, face: bool, body: bool = True):
    def run(img, res, a, b, ctx):
        if ctx.detector is None:
            raise ModelLoadError("openpose: no pose detector")
        x, unpad = resize_short_side(img, res)
        x = unpad(x)
        pose = ctx.detector.detect(x, hands=hands, face=face)
        ctx.poses.append(pose)
        return draw(pose, body=body, hands=hands, face=face)
    return run


# the annotator weight files of A1111's extension (lllyasviel/Annotators and others): none ships in a package
_WEIGHTS = {
    "lineart_realistic": ("sk_model.pth",), "lineart_coarse": ("sk_model2.pth",),
    "lineart_anime": ("netG.pth",), "lineart_anime_denoise": ("erika.pth",),
    "softedge_hed": ("ControlNetHED.pth",), "softedge_hedsafe": ("ControlNetHED.pth",),
    "softedge_pidinet": ("table5_pidinet.pth",), "softedge_pidisafe": ("table5_pidinet.pth",),
    "depth_midas": ("dpt_hybrid-midas-501f0c75.pt",), "depth_leres": ("res101.pth",),
    "depth_zoe": ("ZoeD_M12_N.pt",), "depth_anything_v2": ("depth_anything_v2_vitl.pth",),
    "normal_bae": ("scannet.pt",), "mlsd": ("mlsd_large_512_fp32.pth",),
    "seg_ofade20k": ("250_16_swin_l_oneformer_ade20k_160k.pth",), "scribble_hed": ("ControlNetHED.pth",),
    "scribble_pidinet": ("table5_pidinet.pth",), "dw_openpose_full": ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"),
}


def _unavailable(name: str, annotators: Path) -> Preprocessor:
    files = _WEIGHTS[name]
    present = [f for f in files if (annotators / f).exists()]
    if len(present) == len(files):
        reason = (f"{name}: its weights are in {annotators}, but the network that runs them is not part of the "
                  f"studio (controlnet-aux's copy needs torchvision); preprocess the image elsewhere and use "
                  f"module 'none'")
    else:
        reason = (f"{name}: needs annotator weights that no installable package ships "
                  f"({', '.join(files)}, from lllyasviel/Annotators); nothing is downloaded. Put "
                  f"{' and '.join(files)} into {annotators} — or preprocess the image elsewhere and use "
                  f"module 'none'")
    return Preprocessor(name, None, weights=files, unavailable=reason)


def registry(annotators: Path, pose_available: str | None) -> dict[str, Preprocessor]:
    """Every preprocessor by name, in the order the UI lists them."""
    p = Preprocessor
    canny = (Slider("Canny Low Threshold", 1, 255, 100), Slider("Canny High Threshold", 1, 255, 200))
    items = [
        p("none", _none, resolution=None),
        p("canny", _canny, slider_1=canny[0], slider_2=canny[1], tags=("Canny",)),
        p("invert", _invert, label="invert (from white bg & black line)", resolution=None,
          tags=("Canny", "Lineart", "Scribble")),
        p("threshold", _threshold, slider_1=Slider("Binarization Threshold", 0, 255, 127)),
        p("scribble_xdog", _scribble_xdog, slider_1=Slider("XDoG Threshold", 1, 64, 32), tags=("Scribble",)),
        p("lineart_standard", _lineart_standard, label="lineart_standard (from white bg & black line)",
          tags=("Lineart",)),
        p("tile_resample", _tile_resample, resolution=None, slider_1=Slider("Down Sampling Rate", 1.0, 8.0, 1.0,
                                                                             0.01), tags=("Tile",)),
        p("blur_gaussian", _blur, slider_1=Slider("Sigma", 0.01, 64.0, 9.0, 0.01), tags=("Tile",)),
        p("shuffle", _shuffle, tags=("Shuffle",)),
        p("inpaint", _inpaint, label="inpaint_global_harmonious", resolution=None, needs_mask=True,
          tags=("Inpaint",)),
        p("inpaint_only", _inpaint, resolution=None, needs_mask=True, tags=("Inpaint",)),
    ]
    for name, hands, face, body in (("openpose", False, False, True), ("openpose_face", False, True, True),
                                    ("openpose_faceonly", False, True, False), ("openpose_hand", True, False, True),
                                    ("openpose_full", True, True, True)):
        items.append(p(name, _openpose(hands, face, body), unavailable=(f"{name}: {pose_available}"
                                                                           if pose_available else None),
                       tags=("OpenPose",)))
    items += [_unavailable(name, annotators) for name in _WEIGHTS]
    return {i.name: i for i in items}


ALIASES = {"lineart": "lineart_realistic", "hed": "softedge_hed", "pidinet": "softedge_pidinet",
           "depth": "depth_midas", "pidinet_scribble": "scribble_pidinet", "normal_map": "normal_bae",
           "inpaint_global_harmonious": "inpaint", "invert (from white bg & black line)": "invert",
           "lineart_standard (from white bg & black line)": "lineart_standard", "segmentation": "seg_ofade20k",
           "dw_openpose": "dw_openpose_full"}


def find(items: dict[str, Preprocessor], name: str, field_name: str = "module") -> Preprocessor:
    """A preprocessor by name, label or alias; InvalidField naming the valid ones (and why one cannot run)."""
    key = (name or "none").strip()
    key = ALIASES.get(key, ALIASES.get(key.lower(), key))
    found = items.get(key) or items.get(key.lower()) or next((i for i in items.values() if i.label == key), None)
    if found is None:
        valid = ", ".join(n for n, i in items.items() if i.unavailable is None)
        raise InvalidField(field_name, f"unknown module {name!r}; valid: {valid}")
    if found.unavailable:
        raise InvalidField(field_name, found.unavailable)
    return found


def run(pre: Preprocessor, image: np.ndarray, resolution: float, a: float, b: float, ctx: Context) -> np.ndarray:
    """Run one preprocessor on an RGB uint8 image; returns HxWx3 (HxWx4 for inpaint) uint8."""
    if pre.run is None:
        raise InvalidField("module", pre.unavailable or f"{pre.name} cannot run here")
    res, a, b = pre.defaults(resolution, a, b)
    out = pre.run(hwc3(image), res, a, b, ctx)
    return out if out.ndim == 3 and out.shape[2] == 4 else hwc3(out)
