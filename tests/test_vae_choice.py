"""Choosing a VAE file (settings and override_settings) through the engine and the API's listing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.core.errors import InvalidField
from webui.core.request import GenerationRequest


@pytest.fixture(scope="module")
def vae_file(engine, data_dir):
    """A VAE file: the tiny SD1 model's own VAE with its decoder's output layer changed."""
    from safetensors.torch import save_file

    from webui.models.original_layout import vae_to_original
    model = engine.models.get("tiny-sd1.safetensors")
    sd = {k: v.clone() for k, v in model.pipe.vae.state_dict().items()}
    sd["decoder.conv_out.bias"] = sd["decoder.conv_out.bias"] + torch.tensor([1.5, -1.5, 0.0])
    path = data_dir / "models" / "VAE" / "warm.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae_to_original(sd, prefix="").items()}, str(path))
    engine.models.refresh_vaes()
    return path


def run(engine, vae=None, **settings):
    o = {"sd_model_checkpoint": "tiny-sd1.safetensors", **settings}
    if vae:
        o["sd_vae"] = vae
    res = engine.txt2img(GenerationRequest(prompt="a red circle", steps=4, width=64, height=64, seed=3,
                                           override_settings=o), save=False)
    return np.asarray(res.images[0], dtype=np.float32), res


def test_vae_file_is_used_and_recorded_then_put_back(engine, vae_file):
    base, r0 = run(engine)
    warm, r1 = run(engine, "warm.safetensors")
    assert "VAE:" not in r0.infotexts[0]
    assert "VAE: warm.safetensors" in r1.infotexts[0] and "VAE hash: " in r1.infotexts[0]
    # the shifted output bias makes red up and green down
    assert warm[..., 0].mean() > base[..., 0].mean() + 10
    assert warm[..., 1].mean() < base[..., 1].mean() - 10
    again, _ = run(engine, "None")
    assert np.array_equal(again, base), "the checkpoint's own VAE was not put back"
    assert "warm.safetensors" in engine.models.vae_names()


def test_unknown_vae_is_a_clear_error(engine, vae_file):
    with pytest.raises(InvalidField) as e:
        engine.submit_txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64,
                                                override_settings={"sd_vae": "nope.safetensors"}))
    assert e.value.field == "sd_vae" and "warm.safetensors" in str(e.value)


def test_a_checkpoint_cards_preferred_vae(engine, vae_file):
    """A1111's order: a VAE named in the setting wins while it overrides per-model preferences (the default);
    otherwise, and for "Automatic", the checkpoint card's Preferred VAE (its user metadata "vae") is used."""
    from webui.models import user_metadata

    ckpt = engine.models.find("tiny-sd1.safetensors").filename
    base, _ = run(engine, "None")
    warm, _ = run(engine, "warm.safetensors")
    try:
        user_metadata.write(ckpt, {"vae": "warm.safetensors"})
        auto, res = run(engine, "Automatic")
        assert np.array_equal(auto, warm) and "VAE: warm.safetensors" in res.infotexts[0]
        assert np.array_equal(run(engine, "None")[0], base)
        assert np.array_equal(run(engine, "None", sd_vae_overrides_per_model_preferences=False)[0], warm)
        user_metadata.write(ckpt, {"vae": "None"})     # the checkpoint's own VAE, even over a named setting
        own, res = run(engine, "warm.safetensors", sd_vae_overrides_per_model_preferences=False)
        assert np.array_equal(own, base) and "VAE:" not in res.infotexts[0]
        assert np.array_equal(run(engine, "warm.safetensors")[0], warm)
    finally:
        user_metadata.metadata_file(ckpt).unlink(missing_ok=True)
