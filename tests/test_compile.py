"""The setting torch_compile: the UNet sampled through torch.compile (inductor, frozen weights) draws the same picture
as the plain UNet, is compiled once and reused, and never serves a job that applies a LoRA (its frozen graph holds
the weights without the LoRA). Speed is measured by bench/txt2img.py --compile, not here.

One engine on the bundled model for the whole module: the compile (about a minute on a 2-core CPU) happens once.
"""
from __future__ import annotations

import numpy as np
import pytest
from tool_modules import load_tool

import shape_checker as sc

tb = load_tool("train_bundled")
CHECKPOINT = tb.CHECKPOINT_PATH

pytestmark = pytest.mark.skipif(not CHECKPOINT.exists(), reason=f"bundled model not built: {CHECKPOINT}")

PROMPT = "a large red circle on the left, blue background"


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from app import build_engine
    from webui.config.flags import parse_args

    data = tmp_path_factory.mktemp("compile")
    engine = build_engine(parse_args(["--data-dir", str(data)]))
    engine.settings.update({"live_previews_enable": False}, save=False)
    model = engine.models.get(CHECKPOINT.name)
    from lora_factory import make_kohya_lora
    (data / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    make_kohya_lora(data / "models" / "Lora" / "recolour.safetensors", model.pipe, rank=4, seed=5, scale=3.0,
                    include_te=False)
    engine.models.refresh_loras()
    yield engine, model
    engine.jobs.stop()


def _run(engine, prompt=PROMPT, compiled=False, seed=42, **fields):
    from webui.core.request import GenerationRequest
    req = GenerationRequest(prompt=prompt, steps=20, cfg_scale=7, width=128, height=128, sampler_name="Euler a",
                            seed=seed, override_settings={"sd_model_checkpoint": CHECKPOINT.name,
                                                          "torch_compile": compiled}, **fields)
    res = engine.txt2img(req, save=False)
    return np.asarray(res.images[0].convert("RGB")).astype(np.int16), res


def _need_compiler(model) -> None:
    from webui.models.manager import compiler_missing
    why = compiler_missing(model.placement.device)
    if why:
        pytest.skip(f"torch.compile cannot build kernels here: {why}")


def test_compiled_unet_draws_the_same_picture_and_is_reused(studio):
    import torch._dynamo

    engine, model = studio
    _need_compiler(model)
    plain, res_plain = _run(engine)
    compiled, res = _run(engine, compiled=True)
    assert model.compiled_unet is not None
    diff = np.abs(plain - compiled)
    print(f"\n[compile] compiled vs plain UNet: max pixel difference {diff.max()}, mean {diff.mean():.4f}")
    assert diff.max() <= 3 and diff.mean() < 0.05
    found = sc.analyse(compiled.astype(np.uint8))
    assert (found.colour, found.shape, found.position, found.background) == ("red", "circle", "left", "blue")
    assert res.infotexts[0] == res_plain.infotexts[0]   # the setting does not change what the image records
    assert not any("torch.compile" in n for n in res.notes)

    frames = torch._dynamo.utils.counters["frames"]["ok"]
    again, _ = _run(engine, compiled=True)
    assert torch._dynamo.utils.counters["frames"]["ok"] == frames, "the second job recompiled"
    assert np.array_equal(again, compiled)
    other_seed, _ = _run(engine, compiled=True, seed=43)
    assert not np.array_equal(other_seed, compiled)   # the compiled graph follows its inputs

    # hires fix's second pass samples with the same (compiled) UNet; scale 1 keeps the size, so no recompile
    hires = {"enable_hr": True, "hr_scale": 1.0, "hr_upscaler": "Latent", "denoising_strength": 0.5,
             "hr_second_pass_steps": 5}
    plain_hr, _ = _run(engine, **hires)
    compiled_hr, res = _run(engine, compiled=True, **hires)
    assert np.abs(plain_hr - compiled_hr).max() <= 3 and not np.array_equal(plain_hr, plain)
    assert torch._dynamo.utils.counters["frames"]["ok"] == frames


def test_a_lora_job_runs_the_plain_unet_and_the_next_job_compiled_again(studio):
    engine, model = studio
    _need_compiler(model)
    with_lora = f"{PROMPT} <lora:recolour:1>"
    plain_lora, _ = _run(engine, with_lora)
    compiled_lora, res = _run(engine, with_lora, compiled=True)
    assert np.array_equal(plain_lora, compiled_lora)
    assert any("torch.compile not used: a LoRA is applied" in n for n in res.notes)
    assert res.infotexts[0].count("Lora hashes") == 1

    no_lora, _ = _run(engine)
    assert np.abs(plain_lora - no_lora).mean() > 1.0, "the test LoRA does not change the picture"
    from webui.models.lora import loaded_adapters
    assert loaded_adapters(model.pipe)          # cached after the LoRA job ...
    compiled, res = _run(engine, compiled=True)
    assert not loaded_adapters(model.pipe)      # ... and unloaded for the compiled graph
    diff = np.abs(compiled - no_lora)
    assert diff.max() <= 3 and diff.mean() < 0.05, "the compiled UNet kept the LoRA's weights"
    assert not any("torch.compile" in n for n in res.notes)
    again, _ = _run(engine, with_lora)          # and a later LoRA job loads the file again
    assert np.array_equal(again, plain_lora)


def test_without_a_compiler_the_job_runs_plain_and_says_why(studio, tmp_path, monkeypatch):
    engine, _ = studio
    plain, _ = _run(engine, seed=7)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))     # no g++ / c++ / clang++ to be found
    image, res = _run(engine, compiled=True, seed=7)
    assert np.array_equal(image, plain)
    assert any("torch.compile not used: no C++ compiler found" in n for n in res.notes)
