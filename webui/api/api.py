"""The A1111-compatible HTTP API: /sdapi/v1/*. Each route is a thin call into the engine."""
from __future__ import annotations

import base64
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel

from webui.api.controlnet_api import build_controlnet_router
from webui.api.models import (
    CreateEmbeddingApiRequest,
    CreateHypernetworkApiRequest,
    ExtrasBatchImagesApiRequest,
    ExtrasSingleImageApiRequest,
    Img2ImgApiRequest,
    TrainEmbeddingApiRequest,
    TrainHypernetworkApiRequest,
    Txt2ImgRequest,
    to_request,
)
from webui.core import infotext as infotext_fmt
from webui.core import samplers as core_samplers
from webui.core.errors import BadRequest, InvalidField, NotAvailable, NotFound, StudioError
from webui.core.extras import ExtrasBatchImages, ExtrasSingleImage
from webui.core.request import Img2ImgRequest, fields_from_infotext
from webui.core.training import (
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
)
from webui.engine import extras as extras_engine
from webui.engine import samplers as engine_samplers
from webui.engine import sampling, saving
from webui.engine.images import decode_image
from webui.engine.processing import Engine, result_json
from webui.extensions.runner import ScriptRunner
from webui.models.lora import relink_loras


class PngInfoRequest(BaseModel):
    image: str = ""


class InterrogateRequest(BaseModel):
    image: str = ""
    model: str = "clip"


def encode_png(image: Image.Image, text: str | None) -> str:
    return base64.b64encode(saving.encode_image(image, text, "png")).decode("ascii")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StudioError)
    async def studio_error(_request: Request, exc: StudioError):
        return JSONResponse(exc.as_dict(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        parts = []
        for e in errors:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'body'}: {e.get('msg')}")
        detail = "; ".join(parts) or "invalid request"
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = "malformed JSON body: " + detail
        return JSONResponse({"error": "InvalidField", "detail": detail, "body": "", "errors": parts,
                             "field": parts[0].split(":")[0] if parts else None}, status_code=422)


def build_router(engine: Engine, cmd_flags: dict[str, Any], scripts: ScriptRunner | None = None) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1")
    models = engine.models
    settings = engine.settings

    def encode_output(image: Image.Image, text: str | None) -> str:
        """A generated image as base64 in the setting samples_format (PNG, JPEG or WebP) with its infotext,
        as A1111's API sends them."""
        fmt = str(settings.get("samples_format") or "png").lower()
        return base64.b64encode(saving.encode_image(image, text, fmt, int(settings.get("jpeg_quality", 80))
                                                    )).decode("ascii")
    if scripts is None:
        from webui.scripts import default_runner
        scripts = default_runner(engine)

    def fill_from_infotext(body, req) -> None:
        if body.infotext:
            filled = fields_from_infotext(infotext_fmt.parse_infotext(body.infotext),
                                          relink=lambda prompt, hashes: relink_loras(prompt, hashes, models.loras))
            for key, value in filled.items():
                if key == "override_settings":
                    merged = dict(value)
                    if "sd_model_checkpoint" in merged and not _resolvable(models, merged["sd_model_checkpoint"]):
                        merged.pop("sd_model_checkpoint")
                    if merged.get("sd_vae") and merged["sd_vae"] not in models.vae_names():
                        merged.pop("sd_vae")
                    merged.update(req.override_settings)
                    req.override_settings = merged
                elif key not in body.model_fields_set:
                    setattr(req, key, value)

    def keep_overrides(req) -> None:
        """override_settings_restore_afterwards=false: the job's overrides become the settings (as A1111)."""
        if req.override_settings_restore_afterwards or not req.override_settings:
            return
        kept = dict(req.override_settings)
        if kept.get("sd_model_checkpoint"):
            kept["sd_model_checkpoint"] = models.find(kept["sd_model_checkpoint"]).title
        settings.update(kept)

    @r.post("/txt2img")
    def txt2img(body: Txt2ImgRequest):
        req = to_request(body)
        fill_from_infotext(body, req)
        result = scripts.run(req, save=bool(req.save_images))
        keep_overrides(req)
        images = [encode_output(im, text) for im, text in zip(result.images, result.infotexts)] \
            if req.send_images else []
        return {"images": images, "parameters": body.model_dump(), "info": result_json(result)}

    @r.post("/img2img")
    def img2img(body: Img2ImgApiRequest):
        req = to_request(body, Img2ImgRequest)
        fill_from_infotext(body, req)
        try:
            limit = 2 * int(settings.with_overrides(req.override_settings)["max_image_side"])
        except ValueError as e:
            raise InvalidField("override_settings", str(e)) from None
        images = [decode_image(b64, f"init_images[{i}]", limit) for i, b64 in enumerate(req.init_images or [])]
        if not images:
            raise InvalidField("init_images", "at least one base64 image is needed")
        mask = decode_image(req.mask, "mask", limit) if req.mask else None   # another size: the engine resizes
        result = scripts.run(req, images, mask, save=bool(req.save_images))
        keep_overrides(req)
        out = [encode_output(im, text) for im, text in zip(result.images, result.infotexts)] \
            if req.send_images else []
        params = body.model_dump()
        if not req.include_init_images:   # as A1111: the flag only keeps them in the echoed parameters
            params["init_images"] = params["mask"] = None
        return {"images": out, "parameters": params, "info": result_json(result)}

    @r.get("/scripts")
    def scripts_list():
        return scripts.api_scripts()

    @r.get("/script-info")
    def script_info():
        return scripts.api_script_info()

    @r.get("/progress")
    def progress(skip_current_image: bool = False):
        job = engine.jobs.current
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None,
                    "current_task": None,
                    "state": {"skipped": False, "interrupted": False, "job": "", "job_count": 0,
                              "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}}
        p = job.progress
        elapsed = time.time() - p.started if p.started else 0.0
        frac = p.fraction
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        image = None
        if p.preview is not None and not skip_current_image:
            image = encode_png(p.preview, None)
        return {"progress": frac, "eta_relative": eta, "current_image": image, "textinfo": p.textinfo,
                "current_task": job.id,
                "state": {"skipped": job.skipped, "interrupted": job.interrupted, "job": p.job,
                          "job_count": p.job_count, "job_timestamp": "0", "job_no": p.job_no,
                          "sampling_step": p.sampling_step, "sampling_steps": p.sampling_steps}}

    @r.post("/interrupt")
    def interrupt():
        engine.jobs.interrupt()
        return {}

    @r.post("/skip")
    def skip():
        engine.jobs.skip()
        return {}

    @r.get("/options")
    def get_options():
        values = settings.as_dict()
        try:   # as A1111: the title of the checkpoint jobs use, also when none was ever chosen
            values["sd_model_checkpoint"] = models.find(values.get("sd_model_checkpoint") or None).title
        except StudioError:
            pass   # no usable checkpoint: the stored value
        return values

    @r.post("/options")
    def set_options(body: dict[str, Any]):
        if not isinstance(body, dict):
            raise BadRequest("options must be a JSON object")
        ckpt = body.get("sd_model_checkpoint")
        if body.get("sd_vae"):
            models.check_vae_choice(body["sd_vae"])
        if ckpt:
            info = models.find(ckpt)   # NotFound (404) names the valid checkpoints
            engine.jobs.run(lambda job: models.get(info.title), "load checkpoint")
            body = {**body, "sd_model_checkpoint": info.title}
        try:
            settings.update(body)
        except ValueError as e:
            raise InvalidField(str(e).split(" ")[0], str(e)) from None
        return None

    @r.get("/cmd-flags")
    def flags():
        return cmd_flags

    @r.get("/sd-models")
    def sd_models():
        return [{"title": c.title, "model_name": c.model_name, "hash": c.shorthash, "sha256": c.sha256,
                 "filename": str(c.filename), "config": None, "error": c.error} for c in models.checkpoints]

    @r.post("/refresh-checkpoints")
    def refresh_checkpoints():
        models.refresh()
        return None

    @r.post("/unload-checkpoint")
    def unload_checkpoint():
        engine.jobs.run(lambda job: models.unload(), "unload")
        return {}

    @r.post("/reload-checkpoint")
    def reload_checkpoint():
        engine.jobs.run(lambda job: models.get(None), "load checkpoint")
        return {}

    @r.get("/samplers")
    def samplers():
        out = []
        for s in core_samplers.SAMPLERS:
            if s.name in engine_samplers.available():
                out.append({"name": s.name, "aliases": list(s.aliases), "options": s.api_options()})
        return out

    @r.get("/schedulers")
    def schedulers():
        # as A1111's: the setting rho (Schedule rho) applies where default_rho is not -1
        return [{"name": name, "label": label, "aliases": None, "default_rho": 7.0 if name == "karras" else -1,
                 "need_inner_model": False} for name, label in core_samplers.SCHEDULES]

    @r.get("/latent-upscale-modes")
    def latent_upscale_modes():
        return [{"name": m} for m in sampling.LATENT_UPSCALE_MODES]

    @r.get("/upscalers")
    def upscalers():
        models.refresh_upscalers()
        builtin = [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                   for n in ("None", "Lanczos", "Nearest")]
        return builtin + [f.api_item() for f in models.upscalers]

    @r.get("/realesrgan-models")
    def realesrgan_models():
        models.refresh_upscalers()
        return [{"name": f.name, "path": str(f.path), "scale": f.scale} for f in models.upscalers
                if f.folder == "RealESRGAN"]

    @r.get("/hypernetworks")
    def hypernetworks():
        return [i.api_item() for i in models.refresh_hypernetworks()]

    # A1111 clients list it at start-up: the studio has no face restorers (their models are downloads)

    @r.get("/face-restorers")
    def face_restorers():
        return []

    @r.post("/interrogate")
    def interrogate(body: InterrogateRequest):
        """A1111's image captioning. Its models (BLIP + CLIP, DeepDanbooru) are downloads, so after checking the
        request as A1111 does this answers 501 with the reason, not a caption."""
        if body.model not in ("clip", "deepdanbooru"):
            raise NotFound(f"interrogate model {body.model!r} not found; A1111's are 'clip' and 'deepdanbooru'")
        decode_image(body.image, "image")
        raise NotAvailable(f"interrogation with {body.model!r} is not available in this studio: its model weights "
                           "(BLIP and CLIP, or DeepDanbooru) cannot be downloaded here")

    @r.post("/extra-single-image")
    def extra_single_image(body: ExtrasSingleImageApiRequest):
        req = to_request(body, ExtrasSingleImage)
        image = decode_image(req.image, "image")
        # as A1111's API: the result comes back in the response and is not written to extras-images
        result = extras_engine.extras(engine, req, [("", image)], save=False)
        return {"html_info": result.html_info(),
                "image": encode_png(result.images[0], None) if result.images and req.show_extras_results else ""}

    @r.post("/extra-batch-images")
    def extra_batch_images(body: ExtrasBatchImagesApiRequest):
        req = to_request(body, ExtrasBatchImages)
        if not req.imageList:
            raise InvalidField("imageList", "at least one image is needed ({data: base64, name})")
        images = [(item.name or "", decode_image(item.data, f"imageList[{i}].data"))
                  for i, item in enumerate(req.imageList)]
        result = extras_engine.extras(engine, req, images, save=False)
        return {"html_info": result.html_info(),
                "images": [encode_png(im, None) for im in result.images] if req.show_extras_results else []}

    @r.get("/sd-vae")
    def sd_vae():
        return [v.api_item() for v in models.vaes]

    @r.post("/refresh-vae")
    def refresh_vae():
        models.refresh_vaes()
        return None

    @r.get("/loras")
    def loras():
        return [i.api_item() for i in models.loras]

    @r.post("/refresh-loras")
    def refresh_loras():
        models.refresh_loras()
        return None

    @r.get("/embeddings")
    def embeddings():
        loaded, skipped = models.embeddings()
        return {"loaded": {n: e.api_item() for n, e in loaded.items()},
                "skipped": {n: {"reason": reason} for n, reason in skipped.items()}}

    @r.post("/refresh-embeddings")
    def refresh_embeddings():
        models.refresh_embeddings()
        return None

    @r.post("/create/embedding")
    def create_embedding(body: CreateEmbeddingApiRequest):
        path = engine.create_embedding(to_request(body, CreateEmbeddingRequest))
        return {"info": f"create embedding filename: {path}"}

    @r.post("/train/embedding")
    def train_embedding(body: TrainEmbeddingApiRequest):
        # as A1111's: the call returns when training has ended (POST /interrupt stops it, keeping what was learnt)
        result = engine.submit_train_embedding(to_request(body, TrainEmbeddingRequest)).wait()
        return {"info": f"{result.info()} error: None"}

    @r.post("/create/hypernetwork")
    def create_hypernetwork(body: CreateHypernetworkApiRequest):
        path = engine.create_hypernetwork(to_request(body, CreateHypernetworkRequest))
        return {"info": f"Created: {path}"}

    @r.post("/train/hypernetwork")
    def train_hypernetwork(body: TrainHypernetworkApiRequest):
        result = engine.submit_train_hypernetwork(to_request(body, TrainHypernetworkRequest)).wait()
        return {"info": f"{result.info()} error: None"}

    @r.get("/prompt-styles")
    def prompt_styles():
        return [s.api_item() for s in engine.styles.styles.values()]

    @r.get("/memory")
    def memory():
        return models.memory()

    @r.post("/png-info")
    def png_info(body: PngInfoRequest):
        image = decode_image(body.image)
        text, items = saving.read_infotext(image)
        # as A1111's: the keys an older infotext leaves out come with the values they meant (Clip skip 1, ...)
        parsed = infotext_fmt.parse_infotext(text, defaults=True) if text else {}
        return {"info": text or "", "items": items, "parameters": parsed}

    return r


def _resolvable(models, name: str) -> bool:
    try:
        models.find(name)
        return True
    except StudioError:
        return False


def mount_api(app: FastAPI, engine: Engine, cmd_flags: dict[str, Any], scripts: ScriptRunner | None = None) -> None:
    install_error_handlers(app)
    app.include_router(build_controlnet_router(engine))
    app.include_router(build_router(engine, cmd_flags, scripts))
