"""The one sampling loop. txt2img, img2img, inpainting and ControlNet are options of it, plugged in
through hooks (before each step, conditioning per step, after each step), not separate pipelines."""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from webui.engine.conditioning import Cond
from webui.engine.events import CFGDenoiserParams
from webui.engine.sampler_params import SamplerParams, sigma_at


class StopSampling(Exception):
    """Raised by a step hook to end sampling early (interrupt or skip). ``sample`` fills in ``latents``: the last
    step's estimate of the clean latents, which an interrupted or skipped image shows (as A1111)."""

    latents: torch.Tensor | None = None


# (AND parts with their weights, uncond) for one step; a weight is a number, or one per image (B, 1, 1, 1) when the
# prompts of a batch weigh their parts differently
Conditioning = tuple[list[tuple[Cond, float | torch.Tensor]], Cond]


@dataclass
class SamplingPlan:
    scheduler: object
    steps: int
    cfg_scale: float
    conditioning: Callable[[int], Conditioning]   # per step: prompt editing and alternation change it
    generators: list[torch.Generator]
    eta: float | None = None
    added_time_ids: torch.Tensor | None = None    # SDXL size/crop conditioning, (B, 6)
    # Run the UNet image by image: on a CPU this costs nothing and makes image i of a batch bit-identical
    # to the same seed made alone (batched BLAS kernels round differently); on a GPU batching is kept.
    per_image: bool = False
    # Extra UNet input channels concatenated to the (scaled) latents at every step: an inpainting checkpoint's
    # mask + masked-image latents, (B, C, h, w).
    unet_concat: torch.Tensor | None = None
    # Residuals added inside the UNet (ControlNet): called before each UNet call as
    # f(step, steps, x, t, embeds, added_cond, cond_rows, image_rows) -> (down residuals, mid residual) or None;
    # cond_rows says which rows of the call are conditional, image_rows which image of the batch each row is.
    unet_residuals: Callable | None = None
    before_step: list[Callable[[int, torch.Tensor], torch.Tensor]] = field(default_factory=list)
    after_step: list[Callable[[int, torch.Tensor], None]] = field(default_factory=list)
    # Extensions' on_cfg_denoiser: see the latents and conditioning of each step before the UNet, may replace them.
    on_cfg_denoiser: list[Callable[[CFGDenoiserParams], None]] = field(default_factory=list)
    # Set by ``sample`` at each step, before the after_step hooks: that step's prediction of the clean latents
    # (what live previews and an interrupted image show, as A1111's).
    denoised: torch.Tensor | None = None
    # Another checkpoint takes over part-way (refiner.ModelSwitch: due(i, t, steps), load()); None: no switch.
    switch: object | None = None
    # A1111's sampler parameters (sampler_params.SamplerParams): sigma churn etc., NGMS and Skip Early CFG; the
    # reasons a step ran without the negative prompt are added to ``skipped`` (shared by a job's passes).
    params: object | None = None
    skipped: set = field(default_factory=set)


def fixed(cond: Cond, uncond: Cond) -> Callable[[int], Conditioning]:
    """Conditioning that does not change over the steps."""
    value = ([(cond, 1.0)], uncond)
    return lambda step: value


def _step_kwargs(scheduler, generators, eta) -> dict:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kw = {}
    if "generator" in accepted:
        kw["generator"] = generators
    if "eta" in accepted and eta is not None:
        kw["eta"] = eta
    return kw


@torch.no_grad()
def sample(unet, plan: SamplingPlan, latents: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
    """Denoise latents (already noised for the first timestep) over the plan's timesteps."""
    sch = plan.scheduler
    if timesteps is None:
        (plan.params or SamplerParams()).set_timesteps(sch, plan.steps, latents.device)
        timesteps = sch.timesteps
    step_kw = _step_kwargs(sch, plan.generators if len(plan.generators) > 1 else plan.generators[0], plan.eta)
    if plan.params is not None:
        step_kw.update(plan.params.step_kwargs(sch))
    dtype = unet.dtype   # once per job: diffusers finds it by walking every module (12 ms for an SDXL UNet)
    # DDIM CFG++ guides at CFG / 12.5 and steps along the unconditional prediction
    cfg_scale = plan.cfg_scale * getattr(sch, "cfg_scale_multiplier", 1.0)
    wants_uncond = getattr(sch, "wants_uncond", False)
    for i, t in enumerate(timesteps):
        if plan.switch is not None and plan.switch.due(i, t, len(timesteps)):
            unet, plan.conditioning = plan.switch.load()
            plan.switch = None
            dtype = unet.dtype
        conds, uncond = plan.conditioning(i)
        for hook in plan.before_step:
            latents = hook(i, latents)
        if plan.on_cfg_denoiser:
            params = CFGDenoiserParams(latents, plan.unet_concat, t, i, len(timesteps), conds, uncond)
            for listener in plan.on_cfg_denoiser:
                listener(params)
            latents, conds, uncond = params.x, params.text_cond, params.text_uncond
        residuals = None
        if plan.unet_residuals is not None:
            residuals = functools.partial(plan.unet_residuals, i, len(timesteps))
        skip = None
        if plan.params is not None:
            skip = plan.params.skip_uncond(i, len(timesteps), sigma_at(sch, t))
            if skip:
                plan.skipped.add(skip)
        uncond_out: list | None = [] if wants_uncond else None
        out = _denoise(unet, dtype, sch, latents, t, conds, uncond, cfg_scale, plan.added_time_ids,
                       plan.per_image, plan.unet_concat, residuals, skip_uncond=bool(skip), uncond_out=uncond_out)
        extra = {"noise_uncond": torch.cat(uncond_out)} if uncond_out else {}
        stepped = sch.step(out, t, latents, **step_kw, **extra)
        latents = stepped.prev_sample
        plan.denoised = _denoised(sch, stepped, latents)
        try:
            for hook in plan.after_step:
                hook(i, latents)
        except StopSampling as stop:
            stop.latents = plan.denoised
            raise
    return latents


def _denoised(sch, stepped, latents: torch.Tensor) -> torch.Tensor:
    """The step's prediction of the clean latents where the scheduler has one (Euler, DDIM, LMS, LCM ... give it;
    DPM-Solver++ and UniPC keep it as their last model output), else the step's latents."""
    pred = getattr(stepped, "pred_original_sample", None)
    if pred is None:
        pred = getattr(stepped, "denoised", None)   # LCM
    if pred is None:
        outs = getattr(sch, "model_outputs", None)
        predicts_x0 = sch.config.get("algorithm_type", "") in ("dpmsolver++", "sde-dpmsolver++") \
            or sch.config.get("predict_x0", False)
        if outs and outs[-1] is not None and predicts_x0:
            pred = outs[-1]
    return latents if pred is None else pred


def _denoise(unet, dtype, sch, latents, t, conds, uncond, cfg_scale, time_ids, per_image, concat=None,
             residuals=None, rows=None, skip_uncond=False, uncond_out: list | None = None):
    """The guided noise prediction for the whole batch: uncond + cfg * sum_j w_j (cond_j - uncond)
    (composable diffusion when the prompt has AND parts). With ``skip_uncond`` the negative prompt's pass is not
    run and the first AND part stands in for it (A1111's NGMS / Skip Early CFG). ``uncond_out``, when given, gets
    the unconditional prediction appended (DDIM CFG++: it runs at any scale). Otherwise at CFG 1 with one part, only
    the prompt's pass runs."""
    guided = cfg_scale != 1.0 or len(conds) > 1 or uncond_out is not None
    with_uncond = guided and not skip_uncond
    groups = ([uncond] if with_uncond else []) + [c for c, _ in conds]
    b = latents.shape[0]
    if per_image and b > 1:
        parts = []
        for i in range(b):
            sub = [Cond(g.embeds[i:i + 1], None if g.pooled is None else g.pooled[i:i + 1]) for g in groups]
            sub_conds = list(zip(sub[1:] if with_uncond else sub,
                                 [w[i:i + 1] if torch.is_tensor(w) else w for _, w in conds]))
            parts.append(_denoise(unet, dtype, sch, latents[i:i + 1], t, sub_conds, sub[0] if with_uncond else None,
                                  cfg_scale, None if time_ids is None else time_ids[i:i + 1], False,
                                  None if concat is None else concat[i:i + 1], residuals, [i], skip_uncond,
                                  uncond_out))
        return torch.cat(parts)
    scaled = sch.scale_model_input(latents, t)
    cond_flags = ([False] if with_uncond else []) + [True] * len(conds)
    outs: list = [None] * len(groups)
    # one UNet call for all groups of one length; a negative prompt of another chunk count than the prompt runs
    # apart, as A1111 does unless its setting pad_cond_uncond is on
    lengths = sorted({g.embeds.shape[1] for g in groups})
    for length in lengths:
        idx = [k for k, g in enumerate(groups) if g.embeds.shape[1] == length]
        out = _unet_call(unet, dtype, scaled, t, [groups[k] for k in idx], [cond_flags[k] for k in idx],
                         time_ids, concat, residuals, rows)
        for k, o in zip(idx, out.chunk(len(idx))):
            outs[k] = o
    if not guided:
        return outs[0]
    u = outs[0]   # the negative prompt's prediction, or the first part's standing in for it
    if uncond_out is not None:
        uncond_out.append(u)
    total = u
    for o, (_, w) in zip(outs[1:] if with_uncond else outs, conds):   # w: a number, or one per image (B,1,1,1)
        total = total + cfg_scale * (w.to(o) if torch.is_tensor(w) else w) * (o - u)
    return total


def _unet_call(unet, dtype, scaled, t, groups, cond_flags, time_ids, concat, residuals, rows):
    """One UNet call over the batch repeated once per conditioning group (all of one sequence length)."""
    n, b = len(groups), scaled.shape[0]
    x = torch.cat([scaled] * n) if n > 1 else scaled
    if concat is not None:
        x = torch.cat([x, torch.cat([concat.to(x)] * n)], dim=1)
    embeds = torch.cat([g.embeds for g in groups])
    added = None
    if groups[0].pooled is not None:
        pooled = torch.cat([g.pooled for g in groups])
        added = {"text_embeds": pooled, "time_ids": torch.cat([time_ids] * n).to(pooled.device, pooled.dtype)}
    extra = {}
    if residuals is not None:
        image_rows = list(rows if rows is not None else range(b)) * n
        cond_rows = [flag for flag in cond_flags for _ in range(b)]
        res = residuals(x, t, embeds, added, cond_rows, image_rows)
        if res is not None:
            extra = {"down_block_additional_residuals": [r.to(dtype) for r in res[0]],
                     "mid_block_additional_residual": res[1].to(dtype)}
    return unet(x.to(dtype), t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False,
                **extra)[0]


@torch.no_grad()
def decode(vae, latents: torch.Tensor, per_image: bool = False) -> tuple[torch.Tensor, bool]:
    """Latents -> images in [0, 1], (B, 3, H, W) float32 on the CPU. Returns (images, upcast_happened):
    a half-precision VAE that produces NaN (black images) is retried in fp32."""
    if per_image and latents.shape[0] > 1:
        parts = [decode(vae, one) for one in latents.split(1)]
        return torch.cat([p[0] for p in parts]), any(p[1] for p in parts)
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latents / scale + shift
    img = vae.decode(z.to(vae.dtype), return_dict=False)[0]
    upcast = False
    if vae.dtype != torch.float32 and torch.isnan(img).any():
        original = vae.dtype
        vae.to(torch.float32)
        img = vae.decode(z.float(), return_dict=False)[0]
        vae.to(original)
        upcast = True
    return (img.float() / 2 + 0.5).clamp(0, 1).cpu(), upcast


def to_pil(images: torch.Tensor) -> list:
    from PIL import Image
    arr = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in arr]


def partial_timesteps(scheduler, steps: int, strength: float, device, params: SamplerParams | None = None
                      ) -> torch.Tensor:
    """The tail of a `steps`-step schedule that img2img-style passes run: int(steps * strength) steps."""
    (params or SamplerParams()).set_timesteps(scheduler, steps, device)
    run = min(int(steps * strength), steps)
    if hasattr(scheduler, "tail_timesteps"):   # model evaluations not a fixed number per step (k_samplers)
        return scheduler.tail_timesteps(run)
    start = (steps - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def noised_start(scheduler, init_latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                 params: SamplerParams | None = None, img2img: bool = False) -> torch.Tensor:
    """Init latents noised to the first timestep of the partial schedule (unchanged when nothing runs), with the
    job's start-noise settings (``params``: noise multiplier for img2img, extra noise, SGM noise multiplier)."""
    if len(timesteps) == 0:
        return init_latents
    t = timesteps[:1].repeat(len(init_latents))
    noise = noise.to(init_latents.dtype)
    if params is None:
        return scheduler.add_noise(init_latents, noise, t)
    return params.noised(scheduler, init_latents, noise, t, img2img)


LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def upscale_latents(latents: torch.Tensor, mode: str, height: int, width: int) -> torch.Tensor:
    interp, antialias = LATENT_UPSCALE_MODES[mode]
    kw = {"antialias": antialias} if interp in ("bilinear", "bicubic") else {}
    return torch.nn.functional.interpolate(latents, size=(height, width), mode=interp, **kw)


@torch.no_grad()
def encode(vae, images: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W) -> scaled latents (the distribution's mode: deterministic).
    per_image: one image at a time, so a batch's latents equal each image's own (as decode)."""
    if per_image and images.shape[0] > 1:
        return torch.cat([encode(vae, one) for one in images.split(1)])
    x = (images * 2 - 1).to(device=vae.device, dtype=vae.dtype)
    z = vae.encode(x).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((z - shift) * vae.config.scaling_factor).float()


def to_tensor(images: list) -> torch.Tensor:
    import numpy as np
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2)
