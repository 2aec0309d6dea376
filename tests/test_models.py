"""The model manager with the network cut off: detection, offline loading, safety, caching, bad files."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

from webui.core.errors import ModelLoadError, NotFound, UnsafeCheckpoint
from webui.core.request import GenerationRequest
from webui.models import hashes
from webui.models.loader import build_pipeline, read_state_dict


@pytest.mark.parametrize("name,family,variant,pred", [
    ("tiny-sd1.safetensors", "sd1", "sd1", "epsilon"),
    ("v2/tiny-sd2v.safetensors", "sd2", "sd2-v", "v_prediction"),
    ("tiny-sdxl.safetensors", "sdxl", "sdxl", "epsilon"),
    ("tiny-sd1-pickle.ckpt", "sd1", "sd1", "epsilon"),
])
def test_each_family_loads_offline_and_generates(engine, name, family, variant, pred):
    model = engine.models.get(name)
    assert (model.family, model.variant) == (family, variant)
    assert model.pipe.scheduler.config.prediction_type == pred
    res = engine.txt2img(GenerationRequest(prompt="a blue square", steps=3, width=64, height=64, seed=11,
                                           override_settings={"sd_model_checkpoint": name}), save=False)
    img = np.asarray(res.images[0])
    assert img.shape == (64, 64, 3) and img.std() > 0
    assert f"Model: {model.info.model_name}" in res.infotexts[0]


def test_weights_equal_the_files(engine, data_dir):
    """What the manager loaded is exactly what the file holds (round trip through our reverse layout)."""
    from checkpoint_factory import tiny_state_dicts
    model = engine.models.get("tiny-sd1.safetensors")
    want = tiny_state_dicts("sd1", seed=1)
    got = model.pipe.unet.state_dict()
    assert set(got) == set(want["unet"])
    assert all(torch.equal(got[k], want["unet"][k]) for k in got)
    te = {k.removeprefix("text_model."): v for k, v in want["text_encoder"].items()}
    got_te = model.pipe.text_encoder.state_dict()
    assert all(torch.equal(got_te[k], te[k]) for k in te if k in got_te)


def test_convolutions_run_channels_last_on_a_cpu(engine):
    """On a CPU the UNet's and VAE's convolution weights are placed channels-last (oneDNN's own layout: the VAE
    decodes 15-22 % faster), with the same values as the file."""
    from checkpoint_factory import tiny_state_dicts
    model = engine.models.get("tiny-sd1.safetensors")
    assert model.placement.device.type == "cpu"
    for module in (model.pipe.unet, model.pipe.vae):
        convs = [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        assert not all(w.is_contiguous() for w in convs)   # really reordered, not only 1x1 kernels
    want = tiny_state_dicts("sd1", seed=1)["unet"]["conv_in.weight"]
    assert torch.equal(model.pipe.unet.conv_in.weight, want)


def test_engine_matches_plain_diffusers(engine):
    """The studio's loop gives the same pixels as diffusers' own pipeline on the same weights and seeds."""
    from diffusers import EulerDiscreteScheduler
    model = engine.models.get("tiny-sd1.safetensors")
    res = engine.txt2img(GenerationRequest(prompt="a green star", negative_prompt="red", steps=6, width=64,
                                           height=64, seed=21, batch_size=2, sampler_name="Euler",
                                           cfg_scale=6, override_settings={"sd_model_checkpoint":
                                                                           "tiny-sd1.safetensors"}), save=False)
    pipe = model.pipe
    original = pipe.scheduler
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    try:
        gens = [torch.Generator("cpu").manual_seed(s) for s in (21, 22)]
        ref = pipe(["a green star"] * 2, negative_prompt=["red"] * 2, num_inference_steps=6, guidance_scale=6,
                   width=64, height=64, generator=gens, output_type="np").images
    finally:
        pipe.scheduler = original
    ours = np.stack([np.asarray(im) for im in res.images[res.index_of_first_image:]]).astype(int)
    theirs = (ref * 255).round().astype(int)
    assert np.abs(ours - theirs).max() <= 1, np.abs(ours - theirs).max()


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": Evil()}}, f)
    with pytest.raises(UnsafeCheckpoint) as e:
        read_state_dict(path)
    assert "refused" in str(e.value) and "safetensors" in str(e.value)
    assert not marker.exists()
    # the same through torch's zip format
    torch_path = tmp_path / "evil2.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, torch_path)
    with pytest.raises(UnsafeCheckpoint):
        read_state_dict(torch_path)
    assert not marker.exists()


def test_truncated_file_is_listed_unusable_not_fatal(engine):
    broken = [c for c in engine.models.checkpoints if c.name == "broken-truncated.safetensors"]
    assert broken and broken[0].error
    assert broken[0].title not in engine.models.titles()
    with pytest.raises(ModelLoadError) as e:
        engine.models.find("broken-truncated.safetensors")
    assert "unusable" in str(e.value)


def test_unknown_architecture_and_unknown_name(engine, tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "weird.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
               "something.else": torch.zeros(2)}, str(path))
    with pytest.raises(ModelLoadError) as e:
        build_pipeline(path, read_state_dict(path))
    assert "architecture not recognised" in str(e.value)
    save_file({"foo": torch.zeros(2)}, str(path))
    with pytest.raises(ModelLoadError) as e:
        build_pipeline(path, read_state_dict(path))
    assert "not a Stable Diffusion checkpoint" in str(e.value)
    with pytest.raises(NotFound) as e:
        engine.models.find("does-not-exist")
    assert "tiny-sd1.safetensors [" in str(e.value)


def test_hashes_are_cached(engine, data_dir, monkeypatch):
    calls = []
    real = hashes.file_sha256
    monkeypatch.setattr(hashes, "file_sha256", lambda p, *a: calls.append(p) or real(p, *a))
    engine.models.refresh()
    assert calls == [], "unchanged files were hashed again"
    extra = data_dir / "models" / "Stable-diffusion" / "copy.safetensors"
    shutil.copy(data_dir / "models" / "Stable-diffusion" / "tiny-sd1.safetensors", extra)
    try:
        engine.models.refresh()
        assert calls == [extra]
        assert (data_dir / "cache.json").read_text().count("checkpoint/copy.safetensors") == 1
    finally:
        extra.unlink()
        engine.models.refresh()


def test_hub_is_unreachable_here():
    """The guard in conftest really cuts the network: a hub download fails at once."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    with pytest.raises((LocalEntryNotFoundError, OSError)):
        hf_hub_download("openai/clip-vit-large-patch14", "config.json")


def test_sd2_parameterization_from_yaml(tmp_path):
    from checkpoint_factory import make_tiny_checkpoint
    path = make_tiny_checkpoint(tmp_path / "base.safetensors", "sd2", seed=5)
    path.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    comps = build_pipeline(path, read_state_dict(path))
    assert comps.variant == "sd2" and comps.pipe.scheduler.config.prediction_type == "epsilon"
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    comps = build_pipeline(path, read_state_dict(path))
    assert comps.variant == "sd2-v" and comps.pipe.scheduler.config.prediction_type == "v_prediction"


def test_ram_cache_keeps_recent_models(engine):
    engine.settings.update({"sd_checkpoints_limit": 2}, save=False)
    try:
        a = engine.models.get("tiny-sd1.safetensors")
        b = engine.models.get("tiny-sdxl.safetensors")
        assert engine.models.get("tiny-sd1.safetensors") is a, "a cached model was loaded again"
        assert engine.models.get("tiny-sdxl.safetensors") is b
        engine.models.get("v2/tiny-sd2v.safetensors")   # evicts the least recently used (sd1)
        assert engine.models.get("tiny-sd1.safetensors") is not a
    finally:
        engine.settings.update({"sd_checkpoints_limit": 1}, save=False)


def test_training_ckpt_with_lightning_record_loads(tmp_path):
    """Old SD1.x .ckpt files carry a pytorch_lightning ModelCheckpoint record: read as data, not refused."""
    import sys
    import types
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_score = 0.5

    ModelCheckpoint.__module__ = mod.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__):
        sys.modules.setdefault(name, types.ModuleType(name) if name != mod.__name__ else mod)
    try:
        path = tmp_path / "old.ckpt"
        torch.save({"state_dict": {"w": torch.ones(3)}, "global_step": 470000,
                    "callbacks": {"ModelCheckpoint": ModelCheckpoint()}}, path)
    finally:
        for name in ("pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__):
            sys.modules.pop(name, None)
    sd = read_state_dict(path)
    assert list(sd) == ["w"] and torch.equal(sd["w"], torch.ones(3))
