"""sd-webui-controlnet's HTTP routes: /controlnet/model_list, /module_list, /detect, /render_openpose_json,
/version, /settings. Units themselves ride in /sdapi/v1/txt2img and /img2img as
alwayson_scripts {"controlnet": {"args": [unit, ...]}} and are handled by the engine."""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from fastapi import APIRouter
from PIL import Image
from pydantic import BaseModel, Field

from webui.core.controlnet import CONTROL_TYPES
from webui.core.errors import InvalidField
from webui.engine.openpose import Pose, draw
from webui.engine.processing import Engine


class DetectRequest(BaseModel):
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_processor_res: int = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    controlnet_masks: list[str] = Field(default_factory=list)
    low_vram: bool = False


def png_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, :3] if arr.ndim == 3 else arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def build_controlnet_router(engine: Engine) -> APIRouter:
    r = APIRouter(prefix="/controlnet")
    support = engine.controlnet

    @r.get("/version")
    def version():
        return {"version": 2}

    @r.get("/model_list")
    def model_list(update: bool = True):
        if update:
            support.store.refresh()
        return {"model_list": ["None", *support.store.titles()],
                "unusable": {i.name: i.error for i in support.store.items if i.error}}

    @r.get("/module_list")
    def module_list(alias_names: bool = False):
        names = support.module_names(usable_only=True)
        shown = [support.preprocessors[n].shown if alias_names else n for n in names]
        detail = {(support.preprocessors[n].shown if alias_names else n): support.preprocessors[n].detail()
                  for n in support.module_names()}
        unavailable = {n: p.unavailable for n, p in support.preprocessors.items() if p.unavailable}
        return {"module_list": shown, "module_detail": detail, "unavailable": unavailable}

    @r.get("/control_types")
    def control_types():
        out = {}
        for name in CONTROL_TYPES:
            modules, models, default_option, default_model = support.control_type(name)
            out[name] = {"module_list": modules, "model_list": models, "default_option": default_option,
                         "default_model": default_model}
        return {"control_types": out}

    @r.get("/settings")
    def settings():
        count = int(engine.settings.get("control_net_unit_count", 3))
        # the extension's older name for the same number is still read by clients
        return {"control_net_unit_count": count, "control_net_max_models_num": count}

    @r.post("/detect")
    def detect(body: DetectRequest):
        support.module(body.controlnet_module, "controlnet_module")   # 422 naming the valid modules
        if not body.controlnet_input_images:
            raise InvalidField("controlnet_input_images", "no image given (a list of base64 images)")
        images, poses = [], []
        for i, b64 in enumerate(body.controlnet_input_images):
            mask = body.controlnet_masks[i] if i < len(body.controlnet_masks) else None
            out, found = engine.jobs.run(lambda job, b64=b64, mask=mask: support.detect(
                body.controlnet_module, b64, body.controlnet_processor_res, body.controlnet_threshold_a,
                body.controlnet_threshold_b, mask=mask), "controlnet detect")
            images.append(png_b64(out))
            poses += [p.to_dict() for p in found]
        res: dict[str, Any] = {"images": images, "info": "Success"}
        if poses:
            res["poses"] = poses
        return res

    @r.post("/render_openpose_json")
    def render_openpose_json(pose_data: list[dict[str, Any]]):
        if not pose_data:
            return {"info": "No pose data detected."}
        return {"images": [png_b64(draw(Pose.from_dict(p))) for p in pose_data], "info": "Success"}

    return r
