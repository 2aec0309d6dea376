"""Seeds: variation seeds (slerp), seed resize, noise source, clip skip, every sampler and schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.core.request import GenerationRequest
from webui.engine import noise
from webui.engine import samplers as engine_samplers
from webui.engine.samplers import supports

CKPT = {"sd_model_checkpoint": "tiny-sd1.safetensors"}


def image(engine, **kw):
    base = dict(prompt="a red circle", steps=5, width=64, height=64, seed=5, override_settings=CKPT)
    res = engine.txt2img(GenerationRequest(**{**base, **kw}), save=False)
    return np.asarray(res.images[0], dtype=np.int16), res


def test_variation_strength_ends(engine):
    base, _ = image(engine, seed=10)
    var, _ = image(engine, seed=20)
    s0, r0 = image(engine, seed=10, subseed=20, subseed_strength=0.0)
    s1, r1 = image(engine, seed=10, subseed=20, subseed_strength=1.0)
    mid, rm = image(engine, seed=10, subseed=20, subseed_strength=0.5)
    assert np.array_equal(s0, base)
    assert np.abs(s1 - var).max() <= 1
    assert np.abs(mid - base).mean() > 1 and np.abs(mid - var).mean() > 1
    assert "Variation seed: 20, Variation seed strength: 0.5" in rm.infotexts[0]


def test_seed_resize_keeps_centre_noise():
    dev = torch.device("cpu")
    small, _ = noise.initial_noise([7], (4, 8, 8), dev)
    big, _ = noise.initial_noise([7], (4, 12, 12), dev, resize_from=(8, 8))
    assert torch.equal(big[..., 2:10, 2:10], small)
    plain, _ = noise.initial_noise([7], (4, 12, 12), dev)
    assert not torch.equal(big, plain)


def test_seed_resize_in_infotext(engine):
    _, res = image(engine, width=96, height=96, seed_resize_from_w=64, seed_resize_from_h=64)
    assert "Seed resize from: 64x64" in res.infotexts[0]


def test_ensd_changes_ancestral_noise_only(engine):
    a, _ = image(engine, sampler_name="Euler a")
    b, _ = image(engine, sampler_name="Euler a", override_settings={**CKPT, "eta_noise_seed_delta": 31337})
    c, _ = image(engine, sampler_name="Euler")
    d, _ = image(engine, sampler_name="Euler", override_settings={**CKPT, "eta_noise_seed_delta": 31337})
    assert np.abs(a - b).mean() > 0.5
    assert np.array_equal(c, d)


def test_clip_skip_changes_result_and_is_recorded(engine):
    a, _ = image(engine)
    b, res = image(engine, override_settings={**CKPT, "CLIP_stop_at_last_layers": 2})
    assert "Clip skip: 2" in res.infotexts[0]
    assert np.abs(a - b).mean() > 0.5


def test_clip_skip_is_ignored_for_sdxl_as_in_a1111(engine):
    """SDXL takes the penultimate layer of both encoders whatever Clip skip says; the setting is still recorded."""
    sdxl = {"sd_model_checkpoint": "tiny-sdxl.safetensors"}
    a, _ = image(engine, override_settings=sdxl)
    b, res = image(engine, override_settings={**sdxl, "CLIP_stop_at_last_layers": 2})
    assert "Clip skip: 2" in res.infotexts[0]
    assert np.array_equal(a, b)


def _pairs():
    out = []
    for s in engine_samplers.available():
        for sched in ("automatic", "karras", "exponential", "sgm_uniform", "beta", "uniform"):
            if supports(s, sched) or sched == "automatic":
                out.append((s, sched))
    return out


@pytest.mark.parametrize("sampler,schedule", _pairs())
def test_every_sampler_and_schedule_runs(engine, sampler, schedule):
    img, res = image(engine, sampler_name=sampler, scheduler=schedule, steps=4, cfg_scale=3)
    assert img.std() > 0
    assert f"Sampler: {sampler}," in res.infotexts[0]
