"""The bundled canny ControlNet through the studio's engine (units in the request, the one loop): the generated
shape follows the control edges, weight 0 is no control exactly, stopping the control early weakens it, and
"ControlNet is more important" follows the map more than "My prompt is more important". Figures are printed
(run with -s); skipped until the bundled model and its ControlNet are in models/."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tool_modules import load_tool

import shape_checker as sc
from webui.core.request import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "Stable-diffusion" / "shapes-tiny-v1.safetensors"
CONTROLNET = ROOT / "models" / "ControlNet" / "control_shapes-tiny-v1_canny.safetensors"
pytestmark = pytest.mark.skipif(not (CHECKPOINT.exists() and CONTROLNET.exists()),
                                reason="the bundled model and its canny ControlNet are not in models/ yet")
CASES = 12  # 3 cases swung the mean by one hard case (0.406 there vs 0.491 over 12 with the previous files)


def _shapes_dataset():
    return load_tool("shapes_dataset")


def control_case(k: int):
    """(prompt, control image, target edges): a large shape off its usual anchor, drawn and canny-mapped."""
    ds = _shapes_dataset()
    shape, colour = ds.SHAPES[k % 4], ds.COLOUR_NAMES[(k + 2) % 8]
    background = ds.COLOUR_NAMES[(3 * k + 5) % 8]
    if background == colour:
        background = ds.COLOUR_NAMES[(3 * k + 6) % 8]
    position = ds.POSITIONS[(k + 1) % 5]
    ax, ay = ds.ANCHORS[position]
    spec = ds.ShapeSpec(shape, colour, "large", position, ax - 4, ay + 3, ds.RADIUS["large"], ds.COLOURS[colour])
    drawn = ds.render(ds.COLOURS[background], [spec])
    edges = ds.canny_map(drawn)
    return ds.canonical_caption(shape, colour, None, None, background), Image.fromarray(drawn), edges[:, :, 0] > 0


@pytest.fixture(scope="module")
def bundled_engine(tmp_path_factory):
    from app import build_engine
    from webui.config.flags import parse_args

    data = tmp_path_factory.mktemp("bundled-cn")
    (data / "models" / "ControlNet").mkdir(parents=True)
    (data / "models" / "ControlNet" / CONTROLNET.name).symlink_to(CONTROLNET)
    return build_engine(parse_args(["--data-dir", str(data)]))


def generate(engine, prompt: str, seed: int, units: list | None) -> np.ndarray:
    req = GenerationRequest(prompt=prompt, steps=20, width=128, height=128, cfg_scale=7.0, sampler_name="Euler a",
                            seed=seed,
                            override_settings={"sd_model_checkpoint": CHECKPOINT.name, "live_previews_enable": False},
                            alwayson_scripts={"controlnet": {"args": units}} if units else {})
    return np.asarray(engine.txt2img(req, save=False).images[0])


def unit(image, **kw) -> dict:
    return {"enabled": True, "module": "canny", "model": CONTROLNET.stem, "image": image,
            "threshold_a": 100, "threshold_b": 200, "processor_res": 128, "resize_mode": "Just Resize", **kw}


@pytest.fixture(scope="module")
def measured(bundled_engine):
    """Edge IoU with the control map, per case, for each way of running the unit (and the images of two)."""
    out: dict[str, list] = {k: [] for k in ("none", "full", "zero", "early_stop", "prompt", "control")}
    placed: dict[str, int] = {"none": 0, "full": 0}
    same = []
    ds = _shapes_dataset()
    for k in range(CASES):
        prompt, image, target = control_case(k)
        seed = 900 + k
        runs = {"none": None, "full": [unit(image)], "zero": [unit(image, weight=0.0)],
                "early_stop": [unit(image, guidance_end=0.2)],
                "prompt": [unit(image, control_mode="My prompt is more important")],
                "control": [unit(image, control_mode="ControlNet is more important")]}
        images = {name: generate(bundled_engine, prompt, seed, u) for name, u in runs.items()}
        same.append(np.array_equal(images["none"], images["zero"]))
        for name, img in images.items():
            out[name].append(sc.edge_iou(sc.edge_map(img), target))
        for name in placed:   # the prompt names no position: only the control can say where the shape goes
            placed[name] += sc.analyse(images[name]).position == ds.POSITIONS[(k + 1) % 5]
    means = {k: float(np.mean(v)) for k, v in out.items()}
    print("\n[bundled ControlNet] mean edge IoU: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items())
          + f"; shape placed where the control draws it: {placed['full']}/{CASES} with control, "
          f"{placed['none']}/{CASES} without")
    return means, same, placed


def test_control_has_a_measurable_effect(measured):
    """The shipped ControlNet as measured over the 12 cases: IoU 0.522 with control, 0.124 without (4.2 times),
    0.490 "ControlNet is more important"."""
    means, _, _ = measured
    assert means["full"] >= 3 * means["none"]
    assert means["full"] >= means["none"] + 0.25
    assert means["control"] >= means["none"] + 0.25


def test_control_places_the_shape(measured):
    """Where the control draws the shape, the shape goes (12/12 measured; 3/12 without control, where the prompt's
    shape lands there by chance)."""
    _, _, placed = measured
    assert placed["full"] == CASES and placed["none"] <= CASES // 2


def test_generated_shape_follows_the_control_edges(measured):
    """Issue 4's bar: edge IoU 0.522 measured over the 12 cases (0.508 over 48 others through the diffusers
    pipeline). The files before the `controlnet-cfg` stage reached 0.491 here."""
    means, _, _ = measured
    assert means["full"] >= 0.5
    assert means["full"] >= 3 * means["none"]


def test_weight_zero_equals_no_control(measured):
    _, same, _ = measured
    assert all(same)


def test_stopping_early_weakens_control(measured):
    """Control for the first 20 % of the steps only: measured 0.289 vs 0.522 over the 12 cases (0.314 vs 0.491
    before the `controlnet-cfg` stage; with the UNet of one training cycle, 0.211 vs 0.238 on 3 cases)."""
    means, _, _ = measured
    assert means["early_stop"] < means["full"] - 0.05


def test_controlnet_more_important_follows_the_map_more(measured):
    """Measured 0.490 vs 0.474 over the 12 cases (0.495 vs 0.453 before the `controlnet-cfg` stage, which
    calibrates the control in the prompt's pass, the only one this mode controls; a ControlNet trained on t >= 300
    only, before, did not keep the order over 6 cases: 0.141 vs 0.152)."""
    means, _, _ = measured
    assert means["control"] > means["prompt"]
