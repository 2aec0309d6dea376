"""The one request type: its fields are the API schema, the infotext keys and the UI's paste targets."""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from webui.core import samplers, soft_inpainting
from webui.core.errors import InvalidField

VERSION = "studio-0.1.0"
MAX_SEED = 4294967294


@dataclass
class GenerationRequest:
    """A txt2img request with A1111's field names and API defaults (the UI sets its own, e.g. steps=20)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    tiling: bool | None = None
    restore_faces: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = 0.75
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = field(default_factory=dict)
    infotext: str | None = None

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.repr]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d


@dataclass
class Img2ImgRequest(GenerationRequest):
    """img2img / inpaint: the txt2img fields plus A1111's img2img fields and API defaults. Images are base64
    strings (PNG, JPEG or WebP; data-URL prefixes allowed) so the request stays plain data."""

    init_images: list[str] = field(default_factory=list)
    resize_mode: int = 0              # 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale
    image_cfg_scale: float | None = None
    mask: str | None = None           # white = repaint
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0          # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = True     # "only masked"
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    include_init_images: bool = False


RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")


@dataclass(frozen=True)
class Limits:
    max_batch_size: int = 8
    max_batch_count: int = 100
    max_side: int = 2048


def resolve_seed(seed: int | float | None) -> int:
    """-1 (or None) draws a random seed in [0, 4294967294) as A1111 does."""
    if seed is None or int(seed) == -1:
        return random.randrange(MAX_SEED)
    return int(seed)


def validate(req: GenerationRequest, limits: Limits) -> tuple[str, str]:
    """Check the fields; returns the (sampler, schedule) pair. Raises InvalidField naming what is allowed."""
    for name in ("width", "height"):
        v = getattr(req, name)
        if not isinstance(v, int) or v % 8 or not 64 <= v <= limits.max_side:
            raise InvalidField(name, f"{name} must be a multiple of 8 between 64 and {limits.max_side}, got {v!r}")
    if not isinstance(req.steps, int) or not 1 <= req.steps <= 500:
        raise InvalidField("steps", f"steps must be a whole number from 1 to 500, got {req.steps!r}")
    if not 0 <= req.cfg_scale <= 100:
        raise InvalidField("cfg_scale", f"cfg_scale must be between 0 and 100, got {req.cfg_scale!r}")
    if not 1 <= req.batch_size <= limits.max_batch_size:
        raise InvalidField("batch_size",
                           f"batch_size must be from 1 to {limits.max_batch_size} (setting max_batch_size), "
                           f"got {req.batch_size!r}")
    if not 1 <= req.n_iter <= limits.max_batch_count:
        raise InvalidField("n_iter", f"n_iter must be from 1 to {limits.max_batch_count}, got {req.n_iter!r}")
    if not 0 <= req.subseed_strength <= 1:
        raise InvalidField("subseed_strength", "subseed_strength must be between 0 and 1")
    for name in ("seed", "subseed"):
        v = getattr(req, name)
        if not -1 <= v <= 2**32 - 1:
            raise InvalidField(name, f"{name} must be -1 (random) or from 0 to {2**32 - 1}, got {v!r}")
    name = req.sampler_name or req.sampler_index or "Euler"
    field_name = "sampler_name" if req.sampler_name else "sampler_index"
    try:
        return samplers.split_sampler(name, req.scheduler)
    except ValueError as e:
        bad_field = "scheduler" if "schedule" in str(e) else field_name
        raise InvalidField(bad_field, str(e)) from None


def infotext_params(req: GenerationRequest, *, sampler: str, schedule: str, seed: int, subseed: int,
                    model_name: str, model_hash: str | None, clip_skip: int = 1,
                    denoising: float | None = None, vae_name: str | None = None, vae_hash: str | None = None,
                    extra: dict[str, Any] | None = None, mask_weight: float | None = None) -> dict[str, Any]:
    """The "Key: value" pairs of one image's infotext, in A1111's order. mask_weight: the conditional mask
    weight of an inpainting checkpoint's run (None for ordinary checkpoints)."""
    p: dict[str, Any] = {
        "Steps": req.steps,
        "Sampler": sampler,
        "Schedule type": samplers.schedule_label(schedule),
        "CFG scale": req.cfg_scale,
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model hash": model_hash,
        "Model": model_name,
        "VAE hash": vae_hash,
        "VAE": vae_name,
    }
    if req.subseed_strength > 0:
        p["Variation seed"] = subseed
        p["Variation seed strength"] = req.subseed_strength
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        p["Seed resize from"] = f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
    if denoising is not None:
        p["Denoising strength"] = denoising
    if mask_weight is not None:
        p["Conditional mask weight"] = mask_weight
    if clip_skip > 1:
        p["Clip skip"] = clip_skip
    if req.tiling:
        p["Tiling"] = "True"
    p.update(extra or {})
    p["Version"] = VERSION
    return p


# Infotext key -> (request field, type) for "paste parameters" and the API's infotext field.
_INFOTEXT_FIELDS: dict[str, tuple[str, type]] = {
    "Steps": ("steps", int),
    "Sampler": ("sampler_name", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Denoising strength": ("denoising_strength", float),
    "Hires upscale": ("hr_scale", float),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str),
    "Hires sampler": ("hr_sampler_name", str),
    "Hires schedule type": ("hr_scheduler", str),
    "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str),
    "Hires checkpoint": ("hr_checkpoint_name", str),
    "Refiner": ("refiner_checkpoint", str),
    "Refiner switch at": ("refiner_switch_at", float),
}


def _size(value: Any, negative: bool = False) -> tuple[int, int] | None:
    """"512x768" -> (512, 768); None when the value is not of that form ("-1x-1" only with negative)."""
    w, sep, h = str(value or "").partition("x")
    def ok(t: str) -> bool:
        return (t.strip().lstrip("-") if negative else t.strip()).isdigit()
    return (int(w), int(h)) if sep and ok(w) and ok(h) else None


def _split_sampler_field(out: dict[str, Any], name_key: str, sched_key: str) -> None:
    """Infotexts from before A1111 1.9 name the schedule in the sampler ("DPM++ 2M Karras", no "Schedule type"):
    split it into the sampler and schedule the UI's dropdowns offer; an unknown name is left as it is."""
    if not out.get(name_key):
        return
    try:
        name, sched = samplers.split_sampler(str(out[name_key]), out.get(sched_key) or None)
    except ValueError:
        return
    out[name_key] = name
    if sched != "automatic" or out.get(sched_key):
        out[sched_key] = samplers.schedule_label(sched)


def fields_from_infotext(parsed: dict[str, Any],
                         relink: Callable[[str, str], str] | None = None) -> dict[str, Any]:
    """Request fields (and override_settings) from a parsed infotext dict. ``relink(prompt, lora_hashes)``, when
    given, points the prompts' LoRA tags at the local files with the hashes the infotext records."""
    out: dict[str, Any] = {}
    if "Prompt" in parsed:
        out["prompt"] = parsed["Prompt"]
    if "Negative prompt" in parsed:
        out["negative_prompt"] = parsed["Negative prompt"]
    for key, (name, kind) in _INFOTEXT_FIELDS.items():
        if key in parsed and parsed[key] not in (None, ""):
            try:
                out[name] = kind(float(parsed[key])) if kind is int else kind(parsed[key])
            except ValueError:
                continue
    for name_key, sched_key in (("sampler_name", "scheduler"), ("hr_sampler_name", "hr_scheduler")):
        _split_sampler_field(out, name_key, sched_key)
    if size := _size(parsed.get("Size")):
        out["width"], out["height"] = size
    if str(parsed.get("Tiling", "")).lower() == "true":
        out["tiling"] = True
    out["enable_hr"] = any(k in parsed for k in ("Hires upscaler", "Hires upscale", "Hires resize"))
    if size := _size(parsed.get("Hires resize")):
        out["hr_resize_x"], out["hr_resize_y"] = size
    if size := _size(parsed.get("Seed resize from"), negative=True):
        out["seed_resize_from_w"], out["seed_resize_from_h"] = size
    overrides: dict[str, Any] = {}
    if parsed.get("Clip skip"):
        try:
            overrides["CLIP_stop_at_last_layers"] = int(parsed["Clip skip"])
        except ValueError:
            pass
    if parsed.get("Model"):
        overrides["sd_model_checkpoint"] = str(parsed["Model"])
    if parsed.get("VAE"):
        overrides["sd_vae"] = str(parsed["VAE"])
    if parsed.get("Emphasis"):
        overrides["emphasis"] = str(parsed["Emphasis"])
    for key, setting, kind in (("Sigma churn", "s_churn", float), ("Sigma tmin", "s_tmin", float),
                               ("Sigma tmax", "s_tmax", float), ("Sigma noise", "s_noise", float),
                               ("NGMS", "s_min_uncond", float), ("Skip Early CFG", "skip_early_cond", float),
                               ("Noise multiplier", "initial_noise_multiplier", float),
                               ("Extra noise", "img2img_extra_noise", float), ("UniPC order", "uni_pc_order", int),
                               ("UniPC variant", "uni_pc_variant", str), ("Schedule min sigma", "sigma_min", float),
                               ("Schedule max sigma", "sigma_max", float), ("Schedule rho", "rho", float),
                               ("Eta", "eta_ancestral", float), ("Eta DDIM", "eta_ddim", float),
                               ("ENSD", "eta_noise_seed_delta", int)):
        if parsed.get(key) not in (None, ""):
            try:
                overrides[setting] = kind(parsed[key])
            except ValueError:
                pass
    if str(parsed.get("NGMS all steps", "")).lower() == "true":
        overrides["s_min_uncond_all"] = True
    if str(parsed.get("SGM noise multiplier", "")).lower() == "true":
        overrides["sgm_noise_multiplier"] = True
    if str(parsed.get("Discard penultimate sigma", "")).lower() == "true":
        overrides["always_discard_next_to_last_sigma"] = True
    if parsed.get("Hires refiner"):
        overrides["hires_fix_refiner_pass"] = str(parsed["Hires refiner"])
    if str(parsed.get("Refiner switch by sampling steps", "")).lower() == "true":
        overrides["refiner_switch_by_sample_steps"] = True
    if parsed.get("Conditional mask weight") not in (None, ""):
        try:
            overrides["inpainting_mask_weight"] = float(parsed["Conditional mask weight"])
        except ValueError:
            pass
    if overrides:
        out["override_settings"] = overrides
    if (soft := soft_inpainting.from_infotext(parsed)) is not None:
        out["alwayson_scripts"] = {soft_inpainting.SCRIPT_KEY: {"args": soft}}
    if relink is not None and parsed.get("Lora hashes"):
        for key in ("prompt", "hr_prompt"):
            if out.get(key):
                out[key] = relink(out[key], str(parsed["Lora hashes"]))
    return out
