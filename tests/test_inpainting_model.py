"""Inpainting checkpoints (9-channel UNet, as sd-v1-5-inpainting): detected from the weights, loaded offline, and
fed the mask + masked-image latents in the one loop; the same pixels as diffusers' StableDiffusionInpaintPipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from webui.core import infotext as infotext_fmt
from webui.core.request import GenerationRequest, Img2ImgRequest, fields_from_infotext

NAME = "tiny-sd1-inpainting.safetensors"
CKPT = {"sd_model_checkpoint": NAME}


@pytest.fixture(scope="module")
def inpaint_engine(engine, data_dir):
    from checkpoint_factory import make_tiny_checkpoint
    path = data_dir / "models" / "Stable-diffusion" / NAME
    if not path.exists():
        make_tiny_checkpoint(path, "sd1-inpainting", seed=5)
        engine.models.refresh()
    return engine


def picture() -> Image.Image:
    im = Image.new("RGB", (64, 64), (40, 60, 200))
    ImageDraw.Draw(im).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    return im


def box_mask() -> Image.Image:
    m = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(m).rectangle((16, 16, 39, 39), fill=255)   # even edges: the same at latent size either way
    return m


def mask_weight(text: str) -> float:
    return float(infotext_fmt.parse_infotext(text)["Conditional mask weight"])


def euler_inpaint_pipe(model):
    from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline
    comps = dict(model.pipe.components)
    comps["scheduler"] = EulerDiscreteScheduler.from_config(model.pipe.scheduler.config)
    pipe = StableDiffusionInpaintPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def mode_latents(vae, pixels01: torch.Tensor) -> torch.Tensor:
    """VAE latents (distribution mode, scaled) of images in [0, 1]: diffusers' own encoder, used directly."""
    return vae.encode(pixels01 * 2 - 1).latent_dist.mode() * vae.config.scaling_factor


def test_detected_from_the_weights_and_loaded_offline(inpaint_engine, data_dir):
    from webui.models import families
    from webui.models.loader import read_state_dict
    sd = read_state_dict(data_dir / "models" / "Stable-diffusion" / NAME)
    assert families.is_inpainting(sd) and families.detect(sd.keys()).name == "sd1"
    plain = data_dir / "models" / "Stable-diffusion" / "tiny-sd1.safetensors"
    assert not families.is_inpainting(read_state_dict(plain))
    model = inpaint_engine.models.get(NAME)
    assert model.inpainting and model.pipe.unet.config.in_channels == 9
    assert model.pipe.unet.config.out_channels == 4
    assert not inpaint_engine.models.get("tiny-sd1.safetensors").inpainting


def test_txt2img_on_inpainting_model_equals_diffusers_with_full_mask(inpaint_engine):
    """A1111: txt2img on an inpainting model = everything masked over a blank picture."""
    e = inpaint_engine
    res = e.txt2img(GenerationRequest(prompt="a green star", negative_prompt="red", steps=5, width=64, height=64,
                                      seed=21, sampler_name="Euler", cfg_scale=6, override_settings=CKPT), save=False)
    assert mask_weight(res.infotexts[0]) == 1.0
    assert res.info()["is_using_inpainting_conditioning"] is True
    model = e.models.get(NAME)
    pipe = euler_inpaint_pipe(model)
    blank = mode_latents(model.pipe.vae, torch.full((1, 3, 64, 64), 0.5))
    ref = pipe("a green star", negative_prompt="red", image=Image.new("RGB", (64, 64), (128, 128, 128)),
               mask_image=Image.new("L", (64, 64), 255), masked_image_latents=blank, num_inference_steps=5,
               guidance_scale=6, height=64, width=64, strength=1.0,
               generator=torch.Generator("cpu").manual_seed(21), output_type="np").images[0]
    diff = np.abs(np.asarray(res.images[0]).astype(int) - (ref * 255).round().astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.5, (diff.max(), diff.mean())   # float rounding, one level at most places


def test_inpaint_on_inpainting_model_equals_diffusers_inside_and_keeps_outside(inpaint_engine):
    e = inpaint_engine
    src, mask = picture(), box_mask()
    req = Img2ImgRequest(prompt="a yellow square", steps=5, width=64, height=64, seed=8, sampler_name="Euler",
                         cfg_scale=5, denoising_strength=1.0, mask_blur=0, inpainting_fill=1,
                         inpaint_full_res=False, override_settings=CKPT)
    res = e.img2img(req, [src], mask, save=False)
    out = np.asarray(res.images[0]).astype(int)
    inside = np.asarray(mask) > 0
    assert np.array_equal(out[~inside], np.asarray(src).astype(int)[~inside])
    assert mask_weight(res.infotexts[0]) == 1.0

    # diffusers' pipeline from the same start: init latents noised to the first sigma, the same mask and
    # masked-image latents (the picture with the masked box blanked to 0 in [-1, 1])
    model = e.models.get(NAME)
    pipe = euler_inpaint_pipe(model)
    x = torch.from_numpy(np.asarray(src, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    m = torch.from_numpy(inside.astype(np.float32))[None, None]
    masked = mode_latents(model.pipe.vae, ((x * 2 - 1) * (1 - m) + 1) / 2)
    pipe.scheduler.set_timesteps(5)
    from diffusers.utils.torch_utils import randn_tensor
    noise = randn_tensor((1, 4, 16, 16), generator=torch.Generator("cpu").manual_seed(8))
    start = mode_latents(model.pipe.vae, x) + noise * pipe.scheduler.sigmas[0]
    ref = pipe("a yellow square", image=src, mask_image=mask, masked_image_latents=masked,
               latents=start / pipe.scheduler.init_noise_sigma, num_inference_steps=5, guidance_scale=5,
               height=64, width=64, strength=1.0, output_type="np").images[0]
    theirs = (ref * 255).round().astype(int)
    diff = np.abs(out[inside] - theirs[inside])
    assert diff.max() <= 2 and diff.mean() < 0.2, (diff.max(), diff.mean())


def test_conditioning_mask_strength_setting(inpaint_engine):
    """inpainting_mask_weight (per request through override_settings) changes what the model sees; the infotext
    records it as "Conditional mask weight" and pasting it back restores the setting."""
    e = inpaint_engine
    src, mask = picture(), box_mask()
    outs = {}
    for w in (1.0, 0.0):
        req = Img2ImgRequest(prompt="a yellow square", steps=4, width=64, height=64, seed=3, mask_blur=0,
                             denoising_strength=0.9, inpaint_full_res=False,
                             override_settings={**CKPT, "inpainting_mask_weight": w})
        res = e.img2img(req, [src], mask, save=False)
        outs[w] = np.asarray(res.images[0]).astype(int)
        assert mask_weight(res.infotexts[0]) == w
    inside = np.asarray(mask) > 0
    assert np.abs(outs[1.0] - outs[0.0])[inside].mean() > 0.5
    parsed = infotext_fmt.parse_infotext(res.infotexts[0])
    assert fields_from_infotext(parsed)["override_settings"]["inpainting_mask_weight"] == 0.0


def test_plain_img2img_and_hires_run_on_inpainting_model(inpaint_engine):
    e = inpaint_engine
    a = e.img2img(Img2ImgRequest(prompt="x", steps=3, width=64, height=64, seed=2, denoising_strength=0.6,
                                 override_settings=CKPT), [picture()], None, save=False)
    b = e.img2img(Img2ImgRequest(prompt="x", steps=3, width=64, height=64, seed=2, denoising_strength=0.6,
                                 override_settings=CKPT), [picture()], None, save=False)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    for weight in (1.0, 0.5):
        hr = e.txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=4, enable_hr=True,
                                         hr_scale=1.5, hr_upscaler="Latent",
                                         override_settings={**CKPT, "inpainting_mask_weight": weight}), save=False)
        assert hr.images[0].size == (96, 96)


def test_ordinary_model_has_no_inpainting_conditioning(inpaint_engine):
    res = inpaint_engine.txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=1,
                                                   override_settings={"sd_model_checkpoint": "tiny-sd1.safetensors"}),
                                 save=False)
    assert "Conditional mask weight" not in res.infotexts[0]
    assert res.info()["is_using_inpainting_conditioning"] is False


def test_soft_inpainting_on_an_inpainting_model_keeps_what_is_far_from_the_mask(inpaint_engine):
    """Soft inpainting blends inpainting checkpoints' latents too (A1111 blends every model's): away from the
    mask (the composite's filters reach two latent pixels, 16 px, past what changed) the picture is the
    original's."""
    src = picture().resize((128, 128), Image.Resampling.NEAREST)
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rectangle((48, 48, 79, 79), fill=255)
    req = Img2ImgRequest(prompt="a cat", steps=4, width=128, height=128, seed=3, denoising_strength=0.9,
                         mask_blur=4, inpaint_full_res=False, inpainting_fill=1, override_settings=CKPT,
                         alwayson_scripts={"soft inpainting": {"args": [True, 1, 0.5, 4, 0, 0.5, 2]}})
    out = np.asarray(inpaint_engine.img2img(req, [src], mask, save=False).images[0], dtype=np.int16)
    src_px = np.asarray(src, dtype=np.int16)
    far = np.ones((128, 128), bool)
    far[16:112, 16:112] = False
    assert np.array_equal(out[far], src_px[far])
    assert np.abs(out[52:76, 52:76] - src_px[52:76, 52:76]).mean() > 3   # the random model redrew the box
