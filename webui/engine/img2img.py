"""img2img and inpainting as options of the one sampling loop: init latents, a partial schedule, the mask
blended in after every step, and the result pasted over the original so the unmasked area is unchanged."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.core import soft_inpainting as soft_settings
from webui.core.request import MASKED_CONTENT, RESIZE_MODES
from webui.engine import images as geo
from webui.engine import sampling, saving
from webui.engine import soft_inpainting as soft_inp
from webui.engine.color_correction import apply_color_correction, correction_target
from webui.engine.sampler_params import sigma_at


@dataclass
class InitImages:
    images: list                    # PIL RGB
    mask: Any                       # PIL or None; white = repaint
    denoise: float
    notes: list[str] = field(default_factory=list)
    color_targets: list | None = None   # given correction targets (a script's), image i by target i

    def blur(self, req) -> tuple[int, int]:
        if req.mask_blur is not None:
            return req.mask_blur, req.mask_blur
        return req.mask_blur_x, req.mask_blur_y

    def hard_mask_empty(self, req) -> bool:
        hard, _ = geo.prepare_mask(self.mask, bool(req.inpainting_mask_invert), 0, 0, self.mask.size, 0)
        return hard.getbbox() is None

    def masks(self, req) -> tuple[Image.Image, Image.Image]:
        """(hard, blurred) mask at the output size."""
        bx, by = self.blur(req)
        return geo.prepare_mask(self.mask, bool(req.inpainting_mask_invert), bx, by, (req.width, req.height),
                                req.resize_mode)

    @staticmethod
    def _region_of(hard: Image.Image, req) -> tuple[int, int, int, int] | None:
        if not req.inpaint_full_res:
            return None
        return geo.masked_region(hard, req.inpaint_full_res_padding, req.width, req.height)

    def region(self, req) -> tuple[int, int, int, int] | None:
        """The "Only masked" box (padding included, at the output's aspect ratio) in output coordinates; None
        for the whole picture."""
        if self.mask is None or not req.inpaint_full_res:
            return None
        return self._region_of(self.masks(req)[0], req)

    def overlay_mask(self, req) -> Image.Image | None:
        """The (blurred) mask the result is pasted through, at the output size; None without a mask."""
        if self.mask is None:
            return None
        return self.masks(req)[1]

    def save_extras(self, req, opts: dict, index: int, seed: int, outdir: Callable[[dict, str], Path]) -> list[Path]:
        """A1111's "save_init_img" (the init image in outdir_init_images, named by its MD5, once) and "save_mask"
        (the greyscale mask beside the image, "<seed>-mask"). Returns the files written."""
        written = []
        if opts.get("save_init_img"):
            image = self.images[index % len(self.images)]
            name = hashlib.md5(image.tobytes()).hexdigest()
            folder = outdir({**opts, "save_to_dirs": False}, "outdir_init_images")   # no date folders (A1111)
            if not (folder / f"{name}.png").exists():   # the same content is saved once
                written.append(saving.save_named(image, folder, name, None, fmt="png"))
        mask = self.overlay_mask(req) if opts.get("save_mask") else None
        if mask is not None:
            fmt = str(opts.get("samples_format") or "png").lower()
            written.append(saving.save_image(mask, outdir(opts, "outdir_img2img_samples"), None,
                                             tokens={"seed": seed}, pattern="[seed]-mask",
                                             fmt="jpg" if fmt == "jpeg" else fmt,
                                             jpeg_quality=int(opts.get("jpeg_quality", 80))))
        return written

    def soft(self, req) -> soft_settings.SoftInpainting | None:
        """The soft inpainting settings of an inpainting request (None: off, or no mask)."""
        if self.mask is None:
            return None
        return soft_settings.from_request(getattr(req, "alwayson_scripts", None))

    def infotext(self, req) -> dict[str, Any]:
        p: dict[str, Any] = {}
        if req.resize_mode:
            p["Resize mode"] = RESIZE_MODES[req.resize_mode]
        if self.mask is not None:
            p["Mask blur"] = max(self.blur(req))
            if req.inpainting_mask_invert:
                p["Mask mode"] = "Inpaint not masked"
            p["Masked content"] = MASKED_CONTENT[req.inpainting_fill]
            p["Inpaint area"] = "Only masked" if req.inpaint_full_res else "Whole picture"
            if req.inpaint_full_res:
                p["Masked area padding"] = req.inpaint_full_res_padding
            if (settings := self.soft(req)) is not None:
                p.update(soft_settings.infotext(settings))
        return p

    def start(self, req, model, scheduler, plan: sampling.SamplingPlan, noise: torch.Tensor, indices: range,
              mask_weight: float = 1.0, color_correction: bool = False):
        """(timesteps, start latents, finisher of decoded images). Sets the plan's after-step mask blend
        (ordinary checkpoints) or its extra UNet input (inpainting checkpoints: mask + masked-image latents).
        The finisher returns (final images, the images before colour correction or None)."""
        pipe = model.pipe
        device = noise.device
        per_image = device.type == "cpu"
        w, h = req.width, req.height
        mode = req.resize_mode
        bases = [geo.resize_image(mode, self.images[i % len(self.images)], w, h) for i in indices]
        work, regions, soft, latent_mask, work_mask = bases, None, None, None, None
        settings = self.soft(req)
        if self.mask is not None:
            bx, by = self.blur(req)
            hard, soft = self.masks(req)
            work_mask = hard
            region = self._region_of(hard, req)
            if region is not None:
                regions = region
                work = [b.crop(region).resize((w, h), Image.Resampling.LANCZOS) for b in bases]
                work_mask = hard.crop(region).resize((w, h), Image.Resampling.NEAREST)
            if req.inpainting_fill == 0:
                work = [geo.fill_masked(im, work_mask) for im in work]
            # soft inpainting blends by the mask's shades, so it is not rounded (as A1111's script)
            latent_mask = self._latent_mask(work_mask, bx, by, noise.shape[-2:],
                                            req.mask_round and settings is None).to(device)
        # as A1111: each result is corrected towards the picture it was drawn from (the masked area's crop), or
        # towards the targets a script gave (none past their count)
        if self.color_targets is not None:
            targets = [self.color_targets[i] if i < len(self.color_targets) else None for i in indices]
        else:
            targets = [correction_target(im) for im in work] if color_correction else None
        pixels = sampling.to_tensor(work)
        init = sampling.encode(pipe.vae, pixels, per_image=per_image).to(device)
        if latent_mask is not None and req.inpainting_fill == 2:
            init = init * (1 - latent_mask) + noise * latent_mask
        elif latent_mask is not None and req.inpainting_fill == 3:
            init = init * (1 - latent_mask)
        timesteps = sampling.partial_timesteps(scheduler, req.steps, self.denoise, device, plan.params)
        start = sampling.noised_start(scheduler, init, noise, timesteps, plan.params, img2img=True)
        if model.inpainting:
            # The model sees the unmasked picture through its extra input channels, so (as diffusers'
            # inpainting pipeline) the latents are not hard-blended back each step.
            hard_mask = None if work_mask is None else \
                torch.from_numpy(np.asarray(work_mask, dtype=np.float32) / 255.0)[None, None]
            plan.unet_concat = inpaint_conditioning(pipe.vae, pixels, hard_mask, mask_weight, (h, w),
                                                    len(work), per_image).to(device)
        if latent_mask is not None and settings is not None:
            # soft inpainting blends inpainting checkpoints too, as A1111 blends every model
            def soft_blend(i: int, latents: torch.Tensor) -> None:
                # weighted by the noise level of the step just taken, as A1111's blend in its denoiser; the last
                # step too (the unmasked part ends as the original's latents), not followed by a hard blend
                if i + 1 < len(timesteps):
                    keep = scheduler.add_noise(init, noise, timesteps[i + 1:i + 2].repeat(len(init)))
                else:
                    keep = init
                weight = soft_inp.blend_weight(settings, latent_mask, sigma_at(scheduler, timesteps[i]))
                latents.copy_(soft_inp.latent_blend(settings, keep, latents, weight))

            plan.after_step.insert(0, soft_blend)
        elif latent_mask is not None and not model.inpainting:
            def blend(i: int, latents: torch.Tensor) -> None:
                if i + 1 < len(timesteps):
                    keep = scheduler.add_noise(init, noise, timesteps[i + 1:i + 2].repeat(len(init)))
                else:
                    keep = init
                latents.mul_(latent_mask).add_(keep * (1 - latent_mask))

            plan.after_step.insert(0, blend)
        final: dict[str, torch.Tensor] = {}
        if settings is not None and latent_mask is not None:
            def keep_final(i: int, latents: torch.Tensor) -> None:
                if i + 1 == len(timesteps):
                    final["latents"] = latents.detach().clone()

            plan.after_step.append(keep_final)

        def finish(generated: list) -> tuple[list, list | None]:
            before = None
            if targets is not None:
                before = list(generated)
                generated = [gen if t is None else apply_color_correction(t, gen) for t, gen in zip(targets, generated)]
            if self.mask is None:
                return generated, before
            shown_through = [soft] * len(bases)
            if "latents" in final:   # soft inpainting: the original goes back where the latents hardly moved
                shown_through = soft_inp.composite_masks(settings, latent_mask.expand(len(init), -1, -1, -1),
                                                         init, final["latents"], (w, h))
                if regions is not None:
                    shown_through = [_uncrop(m, bases[0].size, regions) for m in shown_through]
            out = []
            for base, gen, through in zip(bases, generated, shown_through):
                if regions is not None:
                    x1, y1, x2, y2 = regions
                    pasted = base.copy()
                    pasted.paste(gen.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
                    gen = pasted
                out.append(geo.composite(base, gen, through))
            return out, before

        return timesteps, start, finish

    @staticmethod
    def _latent_mask(mask: Image.Image, bx: int, by: int, size, round_it: bool) -> torch.Tensor:
        """The mask at latent resolution (blurred like the pixel mask; rounded to 0/1 as A1111's default)."""
        _, soft = geo.prepare_mask(mask, False, bx, by, mask.size, 0)
        small = soft.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(small, dtype=np.float32) / 255.0
        if round_it:
            arr = np.around(arr)
        return torch.from_numpy(arr)[None, None]


def _uncrop(mask: Image.Image, size: tuple[int, int], region: tuple[int, int, int, int]) -> Image.Image:
    """A mask made for the "Only masked" crop, placed in a black picture of the whole size."""
    x1, y1, x2, y2 = region
    full = Image.new("L", size, 0)
    full.paste(mask.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
    return full


def inpaint_conditioning(vae, images: torch.Tensor | None, mask: torch.Tensor | None, weight: float,
                         size: tuple[int, int], batch: int, per_image: bool = False) -> torch.Tensor:
    """The extra UNet input of an inpainting (9-channel) checkpoint: the mask at latent size, then the latents
    of the image with the masked area blanked (0 in the VAE's [-1, 1] space, as the model was trained).

    images: (B, 3, H, W) in [0, 1], or None for a blank picture (txt2img on an inpainting model);
    mask: (1 or B, 1, H, W) in {0, 1}, or None for "everything masked" (txt2img, plain img2img).
    weight: A1111's "inpainting conditioning mask strength" (setting inpainting_mask_weight): 1 blanks the
    masked area fully, lower values let the original show through it to the model.
    """
    h, w = size
    x = images * 2 - 1 if images is not None else torch.zeros(batch, 3, h, w)
    m = mask if mask is not None else torch.ones(1, 1, h, w)
    blanked = x * (1 - m * float(weight))           # = lerp(x, x * (1 - m), weight)
    latents = sampling.encode(vae, (blanked + 1) / 2, per_image=per_image)
    small = torch.nn.functional.interpolate(m, size=latents.shape[-2:])     # nearest, as A1111
    return torch.cat([small.expand(len(latents), -1, -1, -1), latents], dim=1)
