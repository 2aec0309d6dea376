"""ControlNet as an option of the one sampling loop: the units of a request are checked before the job is queued,
their control maps made once per job (preprocessor, resize mode, pixel perfect), and a residual provider adds
the ControlNets' outputs to every UNet call of the loop (webui/engine/sampling.py's ``unet_residuals`` hook).

Control modes, as sd-webui-controlnet implements them:
- Balanced: each residual times the weight, on the conditional and the unconditional half alike;
- My prompt is more important: "soft injection", residual k of n scaled by weight * 0.825 ** (n - 1 - k) (the
  middle block keeps the full weight, the shallow blocks little), on both halves;
- ControlNet is more important: the residuals only on the conditional half, so classifier-free guidance
  amplifies the control by the CFG scale.
A unit acts on the steps whose fraction i / steps lies in [guidance_start, guidance_end]; weight 0 skips it.
In hires fix's second pass the map is made at the hires size, and canny/mlsd maps switch to soft injection
(as the extension does, to avoid artefacts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from webui.core import controlnet as cn_core
from webui.core.controlnet import ControlNetUnit
from webui.core.errors import InvalidField, StudioError
from webui.engine import preprocessors as pre
from webui.engine.images import decode_image
from webui.engine.openpose import PoseDetector
from webui.models.families import FAMILIES

SOFT_DECAY = 0.825


class ControlNetSupport:
    """What the engine keeps for ControlNet across jobs: the preprocessor list and the pose detector."""

    def __init__(self, models, annotators_dir):
        self.models = models
        self.annotators = annotators_dir
        self.detector = PoseDetector()
        self.preprocessors = pre.registry(annotators_dir, PoseDetector.available())

    @property
    def store(self):
        return self.models.controlnets

    def module(self, name: str, field_name: str = "module") -> pre.Preprocessor:
        return pre.find(self.preprocessors, name, field_name)

    def module_names(self, usable_only: bool = False) -> list[str]:
        return [n for n, p in self.preprocessors.items() if not usable_only or p.unavailable is None]

    def control_type(self, control_type: str) -> tuple[list[str], list[str], str, str]:
        """What a Control Type offers here: (preprocessors, models, default preprocessor, default model), the
        models limited to the loaded checkpoint's kind (SD1.x / SD2.x / SDXL) as the extension limits them."""
        current = self.models.current
        kind = next((f.label for f in FAMILIES if current is not None and f.name == current.family), None)
        models = [(i.title, i.kind) for i in self.store.usable()]
        return cn_core.control_type_choices(control_type, self.module_names(usable_only=True), models, kind)

    def detect(self, module: str, image, resolution: float = -1, a: float = -1, b: float = -1, mask=None,
               seed: int = 0) -> tuple[np.ndarray, list]:
        """(control map, detected poses) of one image (the preview, /controlnet/detect)."""
        p = self.module(module, "controlnet_module")
        arr, unit_mask = to_array(image, "controlnet_input_images")
        if mask is not None:
            unit_mask = to_array(mask, "controlnet_masks")[0][:, :, 0]
        ctx = pre.Context(mask=unit_mask, seed=seed, detector=self.detector)
        out = pre.run(p, arr, resolution, a, b, ctx)
        return out, ctx.poses

    # -- requests --------------------------------------------------------------------------------------------
    def check(self, alwayson_scripts: dict | None, *, img2img: bool) -> list[CheckedUnit]:
        """The enabled units of a request, resolved (module, model, image) before the job is queued;
        InvalidField / NotFound name the unit and what is valid."""
        units = cn_core.units_from_request(alwayson_scripts)
        checked = []
        for k, unit in enumerate(units):
            where = f"controlnet[{unit.extra.get('index', k)}]"
            module = self.module(unit.module, f"{where}.module")
            if not unit.model or unit.model == "None":
                raise InvalidField(f"{where}.model", "a ControlNet model is needed; valid: "
                                   + (", ".join(self.store.titles()) or "none in models/ControlNet"))
            try:
                info = self.store.find(unit.model)
            except StudioError as e:
                raise type(e)(f"{where}.model: {e.message}") if not isinstance(e, InvalidField) else e from None
            image = mask = None
            if unit.image is not None and not (isinstance(unit.image, str) and not unit.image.strip()):
                image, mask = to_array(unit.image, f"{where}.image")
            elif not img2img:
                raise InvalidField(f"{where}.image", "this ControlNet unit has no image: give input_image (base64) "
                                                     "— only img2img falls back to the img2img image")
            if unit.mask is not None:
                mask = to_array(unit.mask, f"{where}.mask")[0][:, :, 0]
            checked.append(CheckedUnit(unit, module, info, image, mask, k))
        return checked


@dataclass
class CheckedUnit:
    unit: ControlNetUnit
    module: pre.Preprocessor
    info: Any                   # ControlNetInfo
    image: np.ndarray | None    # HxWx3 uint8; None: the img2img image
    mask: np.ndarray | None     # HxW uint8 (255 = masked) or None
    index: int                  # among the enabled units: "ControlNet <index>" in the infotext


# ----------------------------------------------------------------------------------------------------- images
def to_array(value, field_name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(HxWx3 uint8 RGB, mask from an alpha channel / {"mask": ...} or None) from a PIL image, numpy array,
    base64 string or {"image": ..., "mask": ...}; InvalidField when it is not an image."""
    from PIL import Image

    mask = None
    if isinstance(value, dict):
        if value.get("mask") is not None:
            mask = to_array(value["mask"], field_name + ".mask")[0][:, :, 0]
        value = value.get("image")
    if isinstance(value, list | tuple) and len(value) == 2 and not isinstance(value[0], int | float):
        mask = to_array(value[1], field_name + ".mask")[0][:, :, 0]
        value = value[0]
    if isinstance(value, str):
        value = decode_image(value, field_name)
    if isinstance(value, Image.Image):
        value = np.asarray(value.convert("RGBA") if value.mode in ("RGBA", "LA", "P") else value.convert("RGB"))
    if not isinstance(value, np.ndarray) or value.ndim not in (2, 3) or min(value.shape[:2]) < 1:
        raise InvalidField(field_name, "not an image")
    return pre.hwc3(value), mask


def pixel_perfect_resolution(image: np.ndarray, target_h: int, target_w: int, resize_mode: str) -> int:
    """The preprocessor resolution that maps the image's short side onto the generation size one to one."""
    h, w = image.shape[:2]
    k0, k1 = target_h / h, target_w / w
    k = min(k0, k1) if resize_mode == "Resize and Fill" else max(k0, k1)
    return int(np.round(k * min(h, w)))


def _resize_map(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A control map to (w, h): binary maps stay binary (Otsu after an area/cubic resize), maps of few colours
    (segmentation, poses) resize with nearest, others with area (smaller) or cubic (bigger)."""
    w, h = size
    if x.shape[1] == w and x.shape[0] == h:
        return x
    flat = x.reshape(-1, x.shape[2])
    colours = len(np.unique(flat[:: max(1, len(flat) // 65536)], axis=0))
    smaller = w * h < x.shape[0] * x.shape[1]
    binary = colours == 2 and x.min() < 16 and x.max() > 240
    if 2 < colours < 200:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if smaller else cv2.INTER_CUBIC
    y = cv2.resize(x, (w, h), interpolation=interp)
    if binary:
        grey = y.astype(np.float32).mean(axis=2).clip(0, 255).astype(np.uint8)
        _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        y = np.repeat(grey[:, :, None], 3, axis=2)
    return y.reshape(h, w, -1)


def fit_map(detected: np.ndarray, resize_mode: str, h: int, w: int) -> np.ndarray:
    """The detected map at the generation size by the unit's resize mode (an inpaint map keeps its mask as
    a 4th channel, made hard)."""
    rgb, alpha = detected[:, :, :3], detected[:, :, 3:] if detected.shape[2] == 4 else None

    def resize(x: np.ndarray, size) -> np.ndarray:
        y = _resize_map(x, size)
        if alpha is not None:
            a = cv2.resize(alpha, size, interpolation=cv2.INTER_NEAREST).reshape(size[1], size[0], 1)
            y = np.concatenate([y, np.where(a > 127, 255, 0).astype(np.uint8)], axis=2)
        return y

    if resize_mode == "Just Resize":
        return resize(rgb, (w, h))
    oh, ow = rgb.shape[:2]
    k0, k1 = h / oh, w / ow
    if resize_mode == "Resize and Fill":
        k = min(k0, k1)
        fitted = resize(rgb, (int(round(ow * k)), int(round(oh * k))))
        border = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]])
        colour = np.median(border, axis=0).astype(np.uint8)
        if alpha is not None:
            colour[3] = 255      # the padding is "to be painted" for an inpaint map
        out = np.tile(colour[None, None], (h, w, 1))
        nh, nw = fitted.shape[:2]
        top, left = max(0, (h - nh) // 2), max(0, (w - nw) // 2)
        out[top:top + nh, left:left + nw] = fitted[:h, :w]
        return out
    k = max(k0, k1)
    fitted = resize(rgb, (int(round(ow * k)), int(round(oh * k))))
    nh, nw = fitted.shape[:2]
    top, left = max(0, (nh - h) // 2), max(0, (nw - w) // 2)
    return np.ascontiguousarray(fitted[top:top + h, left:left + w])


def hint_tensor(fitted: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1]; for an inpaint map the masked pixels are -1 (the ControlNet inpaint
    protocol)."""
    x = torch.from_numpy(np.array(fitted, copy=True)).float().div(255.0).permute(2, 0, 1)[None]
    if x.shape[1] == 4:
        m = (x[:, 3:4] > 0.5).float()
        x = x[:, :3] * (1 - m) - m
    return x


# ----------------------------------------------------------------------------------------- per job: the plan
@dataclass
class ActiveUnit:
    checked: CheckedUnit
    model: Any                  # ControlNetModel on the run device
    hints: torch.Tensor         # (N, 3, H, W): one per init image (img2img) or one for all
    detected: list[np.ndarray]  # the maps shown / saved (at the generation size)
    resolution: int
    threshold_a: float
    threshold_b: float
    soft: bool = False          # soft injection (My prompt is more important, or forced in hires fix)
    cond_only: bool = False     # ControlNet is more important
    global_pool: bool = False   # shuffle models: the residuals averaged over space, conditional half only

    def scales(self, n: int) -> list[float]:
        w = float(self.checked.unit.weight)
        if not self.soft:
            return [w] * n
        top = 12 if n in (10, 13) else n - 1     # SD1/SD2 13 residuals, SDXL the first 10 of the same decay
        return [w * SOFT_DECAY ** float(top - k) for k in range(n)]

    def infotext(self) -> str:
        u = self.checked.unit
        shown = ControlNetUnit(module=self.checked.module.name, model=self.checked.info.title, weight=float(u.weight),
                               resize_mode=u.resize_mode, processor_res=self.resolution,
                               threshold_a=float(self.threshold_a), threshold_b=float(self.threshold_b),
                               guidance_start=float(u.guidance_start), guidance_end=float(u.guidance_end),
                               pixel_perfect=bool(u.pixel_perfect), control_mode=u.control_mode)
        return shown.infotext()


@dataclass
class ControlPass:
    """The units of one sampling pass (first pass, or hires fix's second) and its residual provider."""

    units: list[ActiveUnit]
    steps: int = 1
    notes: list[str] = field(default_factory=list)

    def provider(self):
        """``unet_residuals(step, steps, x, t, embeds, added, cond_rows, image_rows)`` for SamplingPlan, or None
        when no unit acts (so a pass without control runs exactly as without ControlNet)."""
        live = [u for u in self.units if u.checked.unit.weight != 0]
        if not live:
            return None
        dtypes = [u.model.dtype for u in live]   # once per pass: diffusers walks every module to find it

        @torch.no_grad()
        def residuals(step: int, steps: int, x: torch.Tensor, t, embeds: torch.Tensor, added: dict | None,
                      cond_rows: list[bool], image_rows: list[int]):
            frac = step / max(1, steps)
            total_down: list[torch.Tensor] | None = None
            total_mid: torch.Tensor | None = None
            for u, dtype in zip(live, dtypes):
                unit = u.checked.unit
                if frac < unit.guidance_start or frac > unit.guidance_end:
                    continue
                model = u.model
                hint = u.hints[[r % len(u.hints) for r in image_rows]].to(x.device, dtype)
                x_in = x[:, :model.config.in_channels]
                scale = 2 ** (len(model.config.conditioning_embedding_out_channels) - 1)
                want = (x_in.shape[-2] * scale, x_in.shape[-1] * scale)
                if hint.shape[-2:] != want:   # a ControlNet whose hint stride differs from the VAE's
                    hint = torch.nn.functional.interpolate(hint, size=want, mode="bilinear", align_corners=False)
                kw = {}
                if added is not None and model.config.addition_embed_type == "text_time":
                    kw["added_cond_kwargs"] = {k: v.to(dtype) for k, v in added.items()}
                down, mid = model(x_in.to(dtype), t, encoder_hidden_states=embeds.to(dtype),
                                  controlnet_cond=hint, return_dict=False, **kw)
                outs = [*down, mid]
                scales = u.scales(len(outs))
                if u.cond_only or u.global_pool:
                    mask = torch.tensor(cond_rows, dtype=outs[0].dtype, device=outs[0].device).view(-1, 1, 1, 1)
                else:
                    mask = None
                scaled = []
                for o, s in zip(outs, scales):
                    o = o * s
                    if u.global_pool:
                        o = o.mean(dim=(2, 3), keepdim=True).expand_as(o)
                    if mask is not None:
                        o = o * mask
                    scaled.append(o)
                if total_down is None:
                    total_down, total_mid = scaled[:-1], scaled[-1]
                else:
                    total_down = [a + b for a, b in zip(total_down, scaled[:-1])]
                    total_mid = total_mid + scaled[-1]
            if total_down is None:
                return None
            return total_down, total_mid

        return residuals


def crop_to_region(x: np.ndarray, resize_mode: str, region: tuple[int, int, int, int], h: int, w: int) -> np.ndarray:
    """A unit's image (or mask) for inpainting "Only masked": fitted to the generation size by the unit's resize
    mode, cut to the masked region and scaled back to the generation size (the region has its aspect ratio), so
    the map lines up with the cropped picture the model sees."""
    x1, y1, x2, y2 = region
    return _resize_map(np.ascontiguousarray(fit_map(x, resize_mode, h, w)[y1:y2, x1:x2]), (w, h))


def make_pass(support: ControlNetSupport, checked: list[CheckedUnit], base_unet, height: int, width: int, *,
              init_images: list | None = None, init_mask=None, seed: int = 0, hires: bool = False,
              region: tuple[int, int, int, int] | None = None) -> ControlPass:
    """Load the units' ControlNets (through the model manager) and make their maps at height x width.
    region: inpainting's "Only masked" box (generation coordinates); the units' images and masks are cut to it."""
    units: list[ActiveUnit] = []
    notes: list[str] = []
    for c in checked:
        u = c.unit
        if hires and u.hr_option == "Low res only" or not hires and u.hr_option == "High res only":
            continue
        model = support.store.get(c.info, dict(base_unet.config))
        if model.config.cross_attention_dim != base_unet.config.cross_attention_dim:
            raise InvalidField(f"controlnet[{u.extra.get('index', c.index)}].model",
                               f"{c.info.title} is made for another model family (cross-attention "
                               f"{model.config.cross_attention_dim}) than the checkpoint "
                               f"({base_unet.config.cross_attention_dim})")
        widths, unet_widths = tuple(model.config.block_out_channels), tuple(base_unet.config.block_out_channels)
        if widths != unet_widths:   # its residuals could not be added to the UNet's (a small or custom model)
            raise InvalidField(f"controlnet[{u.extra.get('index', c.index)}].model",
                               f"{c.info.title} was trained for a UNet of other widths {list(widths)} than the "
                               f"checkpoint's {list(unet_widths)}")
        sources = [c.image] if c.image is not None else [to_array(im, "init_images")[0] for im in init_images or []]
        if not sources:
            raise InvalidField(f"controlnet[{c.index}].image", "no image for this unit")
        mask = c.mask
        if mask is None and init_mask is not None and c.image is None:
            mask = to_array(init_mask, "mask")[0][:, :, 0]
        if region is not None:
            sources = [crop_to_region(src, u.resize_mode, region, height, width) for src in sources]
            if mask is not None:
                mask = crop_to_region(mask[:, :, None], u.resize_mode, region, height, width)[:, :, 0]
        res = u.processor_res
        if u.pixel_perfect:
            res = pixel_perfect_resolution(sources[0], height, width, u.resize_mode)
        resolution, a, b = c.module.defaults(res, u.threshold_a, u.threshold_b)
        hints, shown = [], []
        for src in sources:
            ctx = pre.Context(mask=mask, seed=seed, detector=support.detector)
            detected = pre.run(c.module, src, resolution, a, b, ctx)
            fitted = fit_map(detected, "Just Resize" if region is not None else u.resize_mode, height, width)
            hints.append(hint_tensor(fitted))
            shown.append(fitted[:, :, :3] if fitted.shape[2] == 3 else _show_inpaint(fitted))
        soft = u.control_mode == "My prompt is more important" or (hires and c.module.name in ("canny", "mlsd"))
        pool = "shuffle" in c.info.name.lower() and c.module.name == "shuffle"
        units.append(ActiveUnit(c, model, torch.cat(hints), shown,
                                resolution if c.module.resolution is not None else -1,
                                a if c.module.slider_1 is not None else -1, b if c.module.slider_2 is not None else -1,
                                soft=soft, cond_only=u.control_mode == "ControlNet is more important",
                                global_pool=pool))
    return ControlPass(units, notes=notes)


def _show_inpaint(fitted: np.ndarray) -> np.ndarray:
    """An inpaint map for the eye: the masked area black."""
    rgb = fitted[:, :, :3].copy()
    rgb[fitted[:, :, 3] > 127] = 0
    return rgb


def infotext_params(active: list[ActiveUnit]) -> dict[str, str]:
    """{"ControlNet 0": "Module: ..., Model: ..., ...", ...} for the enabled units."""
    return {f"ControlNet {u.checked.index}": u.infotext() for u in active}
