"""Hires fix: a second pass at a larger size that keeps the first pass's composition."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.core import infotext
from webui.core.errors import InvalidField
from webui.core.request import GenerationRequest, fields_from_infotext

CKPT = {"sd_model_checkpoint": "tiny-sd1.safetensors"}


def run(engine, **kw):
    base = dict(prompt="a red circle", steps=6, width=64, height=64, seed=5, override_settings=CKPT)
    return engine.txt2img(GenerationRequest(**{**base, **kw}), save=False)


def arr(im, size=None):
    if size:
        im = im.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32)


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic antialiased)", "Lanczos", "Nearest"])
def test_hires_size_keeps_composition_and_infotext(engine, upscaler):
    first = run(engine).images[0]
    other = run(engine, seed=6).images[0]
    hr = run(engine, enable_hr=True, hr_scale=2, hr_upscaler=upscaler, denoising_strength=0.3)
    big = hr.images[0]
    assert big.size == (128, 128)
    small = arr(big, (64, 64))
    # closer to its own first pass than to another seed's image
    assert np.abs(small - arr(first)).mean() < np.abs(small - arr(other)).mean()
    p = infotext.parse_infotext(hr.infotexts[0])
    assert p["Size"] == "64x64" and p["Hires upscale"] == "2" and p["Hires upscaler"] == upscaler
    assert p["Denoising strength"] == "0.3"


def test_hires_resize_steps_sampler_and_remake_from_infotext(engine):
    hr = run(engine, enable_hr=True, hr_resize_x=96, hr_second_pass_steps=8, hr_sampler_name="DPM++ 2M Karras",
             denoising_strength=0.6)
    assert hr.images[0].size == (96, 96)
    text = hr.infotexts[0]
    p = infotext.parse_infotext(text)
    assert p["Hires resize"] == "96x96" and p["Hires steps"] == "8"
    assert p["Hires sampler"] == "DPM++ 2M" and p["Hires schedule type"] == "Karras"
    fields = fields_from_infotext(p)
    fields["override_settings"] = CKPT
    again = engine.txt2img(GenerationRequest(**fields), save=False)
    assert again.infotexts[0] == text
    assert np.array_equal(arr(again.images[0]), arr(hr.images[0]))


def test_hires_denoise_changes_more_with_strength(engine):
    first = arr(run(engine).images[0].resize((128, 128), Image.Resampling.BILINEAR))
    d = [np.abs(arr(run(engine, enable_hr=True, denoising_strength=s, hr_upscaler="Lanczos").images[0])
                - first).mean() for s in (0.2, 0.9)]
    assert d[0] < d[1]


@pytest.mark.parametrize("kw,field", [
    ({"hr_upscaler": "Superres 9000"}, "hr_upscaler"),
    ({"hr_scale": 100}, "hr_scale"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"hr_sampler_name": "Nope"}, "hr_sampler_name"),
])
def test_hires_bad_input(engine, kw, field):
    with pytest.raises(InvalidField) as e:
        engine.submit_txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, enable_hr=True,
                                                override_settings=CKPT, **kw))
    assert e.value.field == field


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_save_a_copy_before_highres_fix(engine, upscaler):
    """A1111's save_images_before_highres_fix: the first pass is saved too ("-before-highres-fix"), with the
    job's infotext, before the final image; the final image is the same as without the setting."""
    opts = {**CKPT, "save_images_before_highres_fix": True}
    kw = dict(prompt="a red circle", steps=6, width=64, height=64, seed=5, enable_hr=True, hr_scale=2,
              hr_upscaler=upscaler, denoising_strength=0.3)
    res = engine.txt2img(GenerationRequest(**kw, override_settings=opts), save=True)
    assert [p.stem.endswith("-before-highres-fix") for p in res.saved] == [True, False]
    with Image.open(res.saved[0]) as before:
        assert before.size == (64, 64) and before.info["parameters"] == res.infotexts[0]
        assert np.array_equal(arr(before), arr(run(engine).images[0]))      # the first pass as it was drawn
    assert np.array_equal(arr(res.images[0]), arr(run(engine, **{k: v for k, v in kw.items() if k != "seed"})
                                                  .images[0]))
    given = engine.txt2img(GenerationRequest(**kw, override_settings=opts, firstpass_image=_b64(res.images[0]
                                                                                                .resize((64, 64)))),
                           save=True)
    assert len(given.saved) == 1, "a given firstpass_image is not saved again"


def _b64(im: Image.Image) -> str:
    import base64
    import io
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()
