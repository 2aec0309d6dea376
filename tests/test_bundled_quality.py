"""Quality of the bundled model (shapes-tiny-v1), judged by the classical checker in tests/shape_checker.py.

Deterministic prompts and seeds; every test prints its figures (run with ``-s`` to see them). Thresholds (issue 4):

- CFG 7, 20 steps, Euler a, on 48 prompt x seed pairs covering every colour, shape and position:
  colour >= 90 %, shape >= 80 %, position >= 80 %; CFG 7 beats CFG 1 on colour by a clear margin;
- a negative prompt naming the background colour that a prompt produced moves the background away from it in most
  cases;
- the canny ControlNet: the generated shape's edges overlap the control edges (IoU >= 0.5) and several times more
  than the same prompt and seed without control (tests/test_controlnet_bundled.py).

Where the shipped model falls short of a target, the target is a strict xfail (it fails the suite the day it
passes, so the marker goes) and a guard at the measured level keeps it from getting worse.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tool_modules import load_tool

import shape_checker as sc

ROOT = Path(__file__).resolve().parents[1]


ds = load_tool("shapes_dataset")
tb = load_tool("train_bundled")

CHECKPOINT = tb.CHECKPOINT_PATH
CONTROLNET = tb.CONTROLNET_PATH

pytestmark = pytest.mark.skipif(not CHECKPOINT.exists(), reason=f"bundled model not built: {CHECKPOINT}")


def _components():
    """The bundled model's diffusers components, read from the shipped single-file checkpoints."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_controlnet_checkpoint,
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )
    from safetensors.torch import load_file

    sd = {k: v.float() for k, v in load_file(str(CHECKPOINT)).items()}
    unet = UNet2DConditionModel(**tb.UNET_CONFIG)
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, dict(unet.config)), strict=True)
    vae = AutoencoderKL(**tb.VAE_CONFIG)
    vae.load_state_dict(convert_ldm_vae_checkpoint(sd, dict(vae.config)), strict=True)
    te = tb.make_text_encoder()
    te_sd = convert_ldm_clip_checkpoint(sd, remove_prefix="cond_stage_model.transformer.")
    if not hasattr(te, "text_model"):  # transformers >= 5.6 dropped the text_model. prefix
        te_sd = {k.removeprefix("text_model."): v for k, v in te_sd.items()}
    te_sd = {k: v for k, v in te_sd.items() if k in te.state_dict()}
    te.load_state_dict(te_sd, strict=True)
    cn = None
    if CONTROLNET.exists():
        cn_sd = {k: v.float() for k, v in load_file(str(CONTROLNET)).items()}
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tb.CONTROLNET_COND_CHANNELS)
        cn.load_state_dict(convert_controlnet_checkpoint(cn_sd, dict(cn.config)), strict=True)
        cn.eval()
    return vae.eval(), te.eval(), unet.eval(), cn


@pytest.fixture(scope="module")
def generate(tmp_path_factory):
    """generate(prompt, negative_prompt, seed, cfg_scale, steps=20, control_image=None) -> PIL.Image, through the
    studio's engine: txt2img, sampler "Euler a", 128x128, the bundled checkpoint; a control image goes in as a
    ControlNet unit (module "none": the image is the canny map) with the bundled canny ControlNet."""
    from app import build_engine
    from webui.config.flags import parse_args
    from webui.core.request import GenerationRequest

    data = tmp_path_factory.mktemp("bundled-quality")
    if CONTROLNET.exists():
        (data / "models" / "ControlNet").mkdir(parents=True)
        (data / "models" / "ControlNet" / CONTROLNET.name).symlink_to(CONTROLNET)
    engine = build_engine(parse_args(["--data-dir", str(data)]))
    engine.settings.update({"live_previews_enable": False}, save=False)
    timings = []

    def _generate(prompt, negative_prompt="", seed=0, cfg_scale=7.0, steps=20, control_image=None):
        scripts = {}
        if control_image is not None:
            assert CONTROLNET.exists(), "bundled ControlNet missing"
            scripts = {"controlnet": {"args": [{"enabled": True, "module": "none", "model": CONTROLNET.stem,
                                                "image": control_image, "resize_mode": "Just Resize"}]}}
        req = GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, steps=steps, cfg_scale=cfg_scale,
                                width=tb.IMAGE_SIZE, height=tb.IMAGE_SIZE, sampler_name="Euler a", seed=seed,
                                override_settings={"sd_model_checkpoint": CHECKPOINT.name},
                                alwayson_scripts=scripts)
        t0 = time.perf_counter()
        image = engine.txt2img(req, save=False).images[0]
        if control_image is None and cfg_scale > 1:
            timings.append(time.perf_counter() - t0)
        return image

    yield _generate
    engine.jobs.stop()
    if timings:
        print(f"\n[bundled] studio txt2img 128x128, 20 steps, Euler a, CFG 7: {np.mean(timings):.2f} s/image "
              f"over {len(timings)} images (a loaded test machine; bench/txt2img.py measures speed)")


def prompt_cases(n: int = 48):
    """(prompt, colour, shape, position, background, seed): every colour, shape and position, in several mixes."""
    rng = np.random.default_rng(2024)
    cases = []
    for k in range(n):
        colour = ds.COLOUR_NAMES[k % 8]
        shape = ds.SHAPES[(k // 8 + k) % 4]
        position = ds.POSITIONS[k % 5]
        size = ds.SIZES[(k // 5) % 2]
        background = ds.COLOUR_NAMES[int(rng.integers(8))]
        while background == colour:
            background = ds.COLOUR_NAMES[int(rng.integers(8))]
        cases.append((ds.canonical_caption(shape, colour, size, position, background), colour, shape, position,
                      background, 100 + k))
    return cases


def test_prompt_cases_cover_the_vocabulary():
    cases = prompt_cases()
    assert len(cases) >= 48
    assert {c[1] for c in cases} == set(ds.COLOUR_NAMES)
    assert {c[2] for c in cases} == set(ds.SHAPES)
    assert {c[3] for c in cases} == set(ds.POSITIONS)


def _hits(generate, cfg, cases):
    """Per case: (colour, shape, position, background) right or not."""
    out = []
    for prompt, colour, shape, position, background, seed in cases:
        a = sc.analyse(generate(prompt, "", seed, cfg))
        out.append((a.colour == colour, a.shape == shape, a.position == position, a.background == background))
    return np.array(out, dtype=float)


def _rates(hits) -> dict[str, float]:
    return dict(zip(("colour", "shape", "position", "background"), hits.mean(axis=0).tolist()))


@pytest.fixture(scope="module")
def scores(generate):
    """CFG 7 and CFG 1 on all 48 pairs (on 24 of them, one pair was worth 4 points of the guidance margin: it read
    21 points there against 31 over the 48)."""
    cases = prompt_cases()
    cfg7, cfg1 = _rates(_hits(generate, 7.0, cases)), _rates(_hits(generate, 1.0, cases))
    for name, r in (("CFG 7, 48 pairs", cfg7), ("CFG 1, 48 pairs", cfg1)):
        print(f"\n[bundled] {name}: " + ", ".join(f"{k} {v:.0%}" for k, v in r.items()))
    return cfg7, cfg1


def test_prompt_following_meets_the_colour_and_position_targets(scores):
    """Issue 4's colour and position targets at CFG 7 (measured: colour 98 %, position 98 %, background 100 %)."""
    cfg7, _ = scores
    assert cfg7["colour"] >= 0.90
    assert cfg7["position"] >= 0.80
    assert cfg7["background"] >= 0.90


def test_guidance_clearly_improves_colour(scores):
    """CFG 7 beats CFG 1 on colour by a clear margin on the same 48 pairs: the guidance fine-tune of the recipe
    calibrates the conditional prediction for guidance, as real SD models are."""
    cfg7, cfg1 = scores
    assert cfg7["colour"] - cfg1["colour"] >= 0.20, "guidance must clearly improve colour accuracy"


def test_shape_meets_the_issue_target(scores):
    """Issue 4's shape target at CFG 7 (measured 81 %, 39 of 48; 37 of 48 on 48 other pairs: docs/bundled-model.md).
    The misses are mostly triangles that come out three-armed, which the checker calls stars."""
    cfg7, _ = scores
    assert cfg7["shape"] >= 0.80


def test_negative_prompt_moves_background(generate):
    """The prompt names no background; the background the model picked for a seed, named in the negative prompt,
    goes away with the same seed."""
    moved = total = 0
    for k in range(10):
        colour, shape = ds.COLOUR_NAMES[k % 8], ds.SHAPES[k % 4]
        prompt = ds.canonical_caption(shape, colour, "large", ds.POSITIONS[k % 5], None)
        seed = 300 + k
        before = sc.analyse(generate(prompt, "", seed, 7.0)).background
        after = sc.analyse(generate(prompt, f"{before} background", seed, 7.0)).background
        total += 1
        moved += after != before
    print(f"\n[bundled] negative prompt '<colour> background' moved the background in {moved}/{total} cases")
    assert moved / total >= 0.75


def test_shipped_files_layout_and_size():
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    sd = load_file(str(CHECKPOINT))
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in sd)
    assert any(k.startswith("first_stage_model.encoder.") for k in sd)
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in sd
    assert sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].shape[0] == 49408
    assert sd["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"].shape[0] == 77
    sizes = {CHECKPOINT.name: CHECKPOINT.stat().st_size}
    if CONTROLNET.exists():
        cn_sd = load_file(str(CONTROLNET))
        assert all(k.startswith("control_model.") for k in cn_sd)
        for part in ("input_blocks.", "zero_convs.", "input_hint_block.", "middle_block.", "middle_block_out."):
            assert any(k.startswith("control_model." + part) for k in cn_sd), part
        # round trip: original layout -> diffusers (diffusers' own converter) -> original layout, tensor for tensor
        unet_like = tb.make_unet()
        cn = ControlNetModel.from_unet(unet_like, conditioning_embedding_out_channels=tb.CONTROLNET_COND_CHANNELS)
        converted = convert_controlnet_checkpoint(cn_sd, dict(cn.config))
        assert set(converted) == set(cn.state_dict())
        cn.load_state_dict(converted, strict=True)
        back = tb.controlnet_to_original(converted, tb.UNET_CONFIG["layers_per_block"])
        assert set(back) == set(cn_sd)
        assert all(torch.equal(back[k], cn_sd[k]) for k in cn_sd)
        sizes[CONTROLNET.name] = CONTROLNET.stat().st_size
    total = sum(sizes.values())
    print("\n[bundled] shipped files: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items())
          + f"; total {total / 1e6:.1f} MB")
    assert total <= 40e6


def test_studio_loader_reads_the_bundled_checkpoint():
    """The studio's model manager path (architecture and configs from the weights) gives the same UNet output."""
    try:
        from safetensors.torch import load_file

        from webui.models import loader
    except ImportError as e:  # pragma: no cover - the studio's loader is another module's job
        pytest.skip(f"studio loader not importable: {e}")
    sd = load_file(str(CHECKPOINT))
    loaded = loader.build_pipeline(CHECKPOINT, sd)
    assert loaded.family.name == "sd1"
    vae, te, unet, _ = _components()
    pipe = loaded.pipe
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = pipe.tokenizer(["a large red circle on the left, blue background"], padding="max_length",
                         max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        h_ref = te(ids).last_hidden_state
        h = pipe.text_encoder(ids).last_hidden_state
        assert torch.allclose(h, h_ref, atol=1e-5)
        out_ref = unet(z, 500, h_ref).sample
        out = pipe.unet(z, 500, h).sample
        assert torch.allclose(out, out_ref, atol=1e-4)
        assert torch.allclose(pipe.vae.decode(z).sample, vae.decode(z).sample, atol=1e-4)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)
