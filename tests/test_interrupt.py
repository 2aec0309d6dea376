"""Interrupt and Skip on the bundled model: as in A1111, the batch being sampled comes back as far as it got (the
last step's prediction of the clean image, which already shows the prompt), is not saved unless the setting
save_incomplete_images says so, and Skip goes on with the next batch. The stop is triggered from an on_cfg_denoiser
listener at a fixed step, so the test is deterministic."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import shape_checker as sc
from webui.core.request import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted((ROOT / "models" / "Stable-diffusion").glob("shapes-*.safetensors"))
pytestmark = pytest.mark.skipif(not BUNDLED, reason="the bundled model is not in models/Stable-diffusion")
PROMPT = "a large red circle on the left, blue background"


def request(seed: int, **kw) -> GenerationRequest:
    return GenerationRequest(prompt=PROMPT, steps=20, width=128, height=128, cfg_scale=7, sampler_name="Euler a",
                             seed=seed, override_settings={"sd_model_checkpoint": BUNDLED[0].name,
                                                           "live_previews_enable": False, **kw.pop("opts", {})},
                             **kw)


def stop_at(engine, action, step: int, times: int = 1):
    """An on_cfg_denoiser listener that interrupts or skips the job when sampling reaches ``step`` (``times``
    times at most); remove it with engine.events.cfg_denoiser.remove."""
    left = [times]

    def listener(params) -> None:
        if params.sampling_step == step and left[0] > 0:
            left[0] -= 1
            action()
    engine.events.cfg_denoiser.append(listener)
    return listener


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_interrupt_returns_the_image_so_far_and_saves_it_only_when_asked(engine, data_dir):
    full = pixels(engine.txt2img(request(3), save=False).images[0])
    listener = stop_at(engine, engine.jobs.interrupt, 8, times=2)
    try:
        res = engine.txt2img(request(3, n_iter=2), save=True)
        kept = engine.txt2img(request(3, opts={"save_incomplete_images": True}), save=True)
    finally:
        engine.events.cfg_denoiser.remove(listener)
    assert res.interrupted and len(res.images) == 1 and len(res.infotexts) == 1, "the second batch never started"
    assert res.saved == [], "an incomplete image is not saved by default"
    partial = pixels(res.images[0])
    found = sc.analyse(partial.astype(np.uint8))
    print(f"\n[interrupt] at step 9 of 20: {found.colour} {found.shape} on {found.background}; mean distance "
          f"to the finished image {np.abs(partial - full).mean():.1f}")
    # the clean-image prediction already shows what the prompt asks (the noisy latents would decode to noise)
    assert (found.colour, found.background) == ("red", "blue")
    assert not np.array_equal(partial, full)
    assert "Seed: 3," in res.infotexts[0]
    assert kept.interrupted and len(kept.saved) == 1 and kept.saved[0].exists()


def test_skip_returns_the_skipped_batch_so_far_and_makes_the_next(engine):
    listener = stop_at(engine, engine.jobs.skip, 5)
    try:
        res = engine.txt2img(request(3, n_iter=2, opts={"return_grid": False}), save=False)
    finally:
        engine.events.cfg_denoiser.remove(listener)
    assert not res.interrupted and len(res.images) == 2
    assert ["Seed: 3," in res.infotexts[0], "Seed: 4," in res.infotexts[1]] == [True, True]
    alone = engine.txt2img(request(4), save=False).images[0]
    assert np.array_equal(pixels(res.images[1]), pixels(alone)), "the batch after the skipped one is made in full"
    full = engine.txt2img(request(3), save=False).images[0]
    assert not np.array_equal(pixels(res.images[0]), pixels(full))


def test_live_preview_shows_the_clean_image_prediction(engine):
    """As A1111's, the preview of a step is its prediction of the finished picture: half-way it already shows the
    prompt's colours (the noisy latents would decode to noise)."""
    seen = []

    def listener(params) -> None:
        if params.sampling_step == 11:   # the preview made after step 10 is up
            seen.append(engine.jobs.current.progress.preview)
    engine.events.cfg_denoiser.append(listener)
    try:
        engine.txt2img(request(3, opts={"live_previews_enable": True, "show_progress_every_n_steps": 10,
                                        "show_progress_type": "Full"}), save=False)
    finally:
        engine.events.cfg_denoiser.remove(listener)
    assert len(seen) == 1 and seen[0] is not None
    found = sc.analyse(np.asarray(seen[0].convert("RGB")))
    print(f"\n[preview] after step 10 of 20: {found.colour} {found.shape} on {found.background}")
    assert (found.colour, found.background) == ("red", "blue")


def test_out_of_memory_fails_that_job_only_with_advice(engine):
    """A job that runs out of memory (here raised by an extension's on_cfg_denoiser at step 2, as torch raises it
    from the UNet) fails with the studio's OutOfMemory (HTTP 503) saying what to lower; the next job runs."""
    import torch

    from webui.core.errors import OutOfMemory

    def oom() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    listener = stop_at(engine, oom, 2)
    try:
        with pytest.raises(OutOfMemory) as e:
            engine.txt2img(request(5), save=False)
    finally:
        engine.events.cfg_denoiser.remove(listener)
    assert e.value.status_code == 503 and "Tried to allocate 20.00 GiB" in str(e.value)
    assert "smaller width/height or batch size" in str(e.value)
    cpu = stop_at(engine, lambda: (_ for _ in ()).throw(RuntimeError("DefaultCPUAllocator: can't allocate memory")),
                  1)
    try:
        with pytest.raises(OutOfMemory):
            engine.txt2img(request(5), save=False)
    finally:
        engine.events.cfg_denoiser.remove(cpu)
    after = engine.txt2img(request(5), save=False)
    assert sc.analyse(np.asarray(after.images[0])).colour == "red", "the worker serves the next job as usual"
    bug = stop_at(engine, lambda: (_ for _ in ()).throw(ValueError("a bug in an extension")), 1)
    try:
        with pytest.raises(ValueError) as e:   # any other error is reported as itself, not as a bad prompt
            engine.txt2img(request(5), save=False)
    finally:
        engine.events.cfg_denoiser.remove(bug)
    assert getattr(e.value, "field", None) is None
