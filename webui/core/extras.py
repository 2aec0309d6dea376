"""The Extras (postprocessing) request: A1111's field names and API defaults, one type for the tab and the API."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXTRAS_RESIZE_MODES = ("Scale by", "Scale to")
FLIPS = ("Horizontal", "Vertical", "Both")
OBJECTIVES = ("Maximize area", "Minimize error")   # "Auto-sized crop"'s choice


@dataclass
class ExtrasRequest:
    """POST /sdapi/v1/extra-single-image and extra-batch-images (without the images, which the faces decode)."""

    resize_mode: int = 0                    # 0 scale by upscaling_resize, 1 scale to upscaling_resize_w x _h
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0          # face restoration: no weights offline, so only 0 is accepted
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True             # scale to: crop the overflow (centred) to exactly w x h
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False
    # A1111's Extras options for preparing training pictures (the tab's; also accepted by the API here)
    split_oversized: bool = False           # "Split oversized images" (needs "Scale to")
    split_threshold: float = 0.5            # split when short/long, against the target's, is below this
    split_overlap_ratio: float = 0.2
    flipped_copies: list[str] = field(default_factory=list)   # "Create flipped copies": Horizontal, Vertical, Both
    focal_crop: bool = False                # "Auto focal point crop" (to the "Scale to" size, or the scaled size)
    focal_crop_face_weight: float = 0.9
    focal_crop_entropy_weight: float = 0.15
    focal_crop_edges_weight: float = 0.5
    focal_crop_debug: bool = False          # also output the picture with the points of interest drawn
    autosized_crop: bool = False            # "Auto-sized crop"
    autosized_crop_min_dim: int = 384
    autosized_crop_max_dim: int = 768
    autosized_crop_min_area: int = 64 * 64
    autosized_crop_max_area: int = 640 * 640
    autosized_crop_objective: str = "Maximize area"   # or "Minimize error"
    autosized_crop_threshold: float = 0.1


@dataclass
class FileData:
    """An item of extra-batch-images' imageList."""

    data: str = ""
    name: str = ""


@dataclass
class ExtrasSingleImage(ExtrasRequest):
    image: str = ""


@dataclass
class ExtrasBatchImages(ExtrasRequest):
    imageList: list[FileData] = field(default_factory=list)  # noqa: N815 - A1111's field name


def extras_params(req: ExtrasRequest, upscaler_1: str, upscaler_2: str | None, crop_size: tuple[int, int] | None
                  ) -> dict[str, Any]:
    """The "Postprocess ..." keys A1111 writes for an upscale (its postprocessing infotext)."""
    p: dict[str, Any] = {}
    if req.resize_mode == 1:
        p["Postprocess upscale to"] = f"{req.upscaling_resize_w}x{req.upscaling_resize_h}"
    else:
        p["Postprocess upscale by"] = req.upscaling_resize
    if crop_size is not None:
        p["Postprocess crop to"] = f"{crop_size[0]}x{crop_size[1]}"
    p["Postprocess upscaler"] = upscaler_1
    if upscaler_2:
        p["Postprocess upscaler 2"] = upscaler_2
    return p
