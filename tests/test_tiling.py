"""Tiling (A1111's "tiling" field): the picture wraps around at its edges, so it tiles without a seam; the
infotext says "Tiling: True" and pasting it turns tiling on; the models' padding is back to normal after the job."""
from __future__ import annotations

import numpy as np
import torch

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, fields_from_infotext

CKPT = {"sd_model_checkpoint": "tiny-sd1.safetensors"}


def _image(engine, tiling: bool, shift: int = 0, monkeypatch=None) -> np.ndarray:
    """A deterministic sampler (Euler: no noise after the first), its starting noise rolled by ``shift`` latent
    pixels in x and y."""
    if shift:
        from webui.engine import noise
        real = noise.initial_noise

        def rolled(*args, **kwargs):
            latents, gens = real(*args, **kwargs)
            return torch.roll(latents, (shift, shift), dims=(-2, -1)), gens
        monkeypatch.setattr(noise, "initial_noise", rolled)
    req = GenerationRequest(prompt="a red circle", steps=6, width=64, height=64, seed=3, sampler_name="Euler",
                            tiling=tiling, override_settings=CKPT)
    res = engine.txt2img(req, save=False)
    if shift:
        monkeypatch.undo()
    assert ("Tiling: True" in res.infotexts[0]) == tiling
    return np.asarray(res.images[0].convert("RGB"), dtype=np.int16)


def test_tiling_makes_the_picture_wrap_around(engine, monkeypatch):
    """With every convolution padding circularly the UNet and VAE see a torus: rolling the starting noise rolls
    the picture by the same amount (times the VAE's scale), pixel for pixel, which is what "tiles without a seam"
    means. Without tiling the edges are edges and the rolled noise makes another picture."""
    model = engine.models.get(CKPT["sd_model_checkpoint"])
    scale = 2 ** (len(model.pipe.vae.config.block_out_channels) - 1)
    shift = 4   # a multiple of the UNet's downsampling, so the strided convolutions see the same grid
    tiled, tiled_rolled = _image(engine, True), _image(engine, True, shift, monkeypatch)
    plain, plain_rolled = _image(engine, False), _image(engine, False, shift, monkeypatch)
    back = np.roll(tiled_rolled, (-shift * scale, -shift * scale), axis=(0, 1))
    back_plain = np.roll(plain_rolled, (-shift * scale, -shift * scale), axis=(0, 1))
    print(f"\n[tiling] rolled noise, rolled back: largest pixel difference tiled {np.abs(back - tiled).max()}, "
          f"plain {np.abs(back_plain - plain).max()} (mean {np.abs(back_plain - plain).mean():.1f})")
    assert np.abs(back - tiled).max() <= 2
    assert np.abs(back_plain - plain).mean() > 5
    assert np.abs(tiled - plain).mean() > 1
    modes = {m.padding_mode for part in (model.pipe.unet, model.pipe.vae) for m in part.modules()
             if isinstance(m, torch.nn.Conv2d)}
    assert modes == {"zeros"}, "the padding is restored after the job"


def test_tiling_pastes_from_the_infotext():
    text = "a tile\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Tiling: True"
    assert fields_from_infotext(parse_infotext(text))["tiling"] is True
    assert "tiling" not in fields_from_infotext(parse_infotext(text.replace(", Tiling: True", "")))
