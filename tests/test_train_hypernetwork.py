"""The Train tab's hypernetworks (A1111's): created in A1111's layout; trained on pictures of green shapes whose
prompts say "red", a hypernetwork makes "red" draw green, which the model alone does not; copies and previews in
the log directory; bad input refused; the HTTP API."""
from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import start_server
from test_train_embedding import make_data

import shape_checker as sc
from webui.core.errors import InvalidField
from webui.core.request import GenerationRequest
from webui.core.training import CreateHypernetworkRequest, TrainHypernetworkRequest
from webui.models import hypernetworks as hn

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted((ROOT / "models" / "Stable-diffusion").glob("shapes-*.safetensors"))
pytestmark = pytest.mark.skipif(not BUNDLED, reason="the bundled model is not in models/Stable-diffusion")
PROMPT = "a large red circle in the centre, blue background"
# the bundled model's attention widths: 64 (the prompt's embedding), 128 (its attention levels)
SIZES = [64, 128]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from app import build_engine
    from webui.config.flags import parse_args
    d = tmp_path_factory.mktemp("train-hypernetwork")
    data, templates = make_data(d)
    (templates / "red.txt").write_text("a large red [filewords]\n")
    engine = build_engine(parse_args(["--data-dir", str(d), "--textual-inversion-templates-dir", str(templates)]))
    engine.settings.update({"live_previews_enable": False}, save=False)
    engine.dataset = data
    yield engine
    engine.jobs.stop()


def draw(engine, prompt: str, seed: int) -> sc.Analysis:
    req = GenerationRequest(prompt=prompt, steps=20, width=128, height=128, cfg_scale=7, sampler_name="Euler a",
                            seed=seed)
    return sc.analyse(np.asarray(engine.txt2img(req, save=False).images[0]))


def test_create_writes_a1111s_layout_and_refuses_bad_input(engine):
    path = engine.create_hypernetwork(CreateHypernetworkRequest("made", SIZES, False, "1, 2, 1", "relu", "Normal",
                                                                True, False))
    assert path == engine.paths.hypernetworks / "made.pt"
    sd = torch.load(path, weights_only=True)
    assert sorted(k for k in sd if isinstance(k, int)) == SIZES
    k_state, v_state = sd[64]
    assert sorted(k_state) == ["linear.0.bias", "linear.0.weight", "linear.2.bias", "linear.2.weight",
                               "linear.3.bias", "linear.3.weight", "linear.4.bias", "linear.4.weight"]
    assert k_state["linear.0.weight"].shape == (128, 64) and float(k_state["linear.0.weight"].std()) < 0.02
    assert float(k_state["linear.0.bias"].abs().max()) == 0
    assert sd["layer_structure"] == [1.0, 2.0, 1.0] and sd["activation_func"] == "relu" and sd["step"] == 0
    assert sd["is_layer_norm"] is True and sd["sd_checkpoint_name"] == BUNDLED[0].stem
    assert [i.name for i in engine.models.hypernetworks] == ["made"], "listed at once"
    with pytest.raises(InvalidField, match="already exists"):
        engine.create_hypernetwork(CreateHypernetworkRequest("made", SIZES))
    for fields, name in (({"layer_structure": "2, 1"}, "layer_structure"), ({"activation_func": "wiggle"},
                         "activation_func"), ({"weight_init": "Random"}, "weight_init"),
                         ({"enable_sizes": []}, "enable_sizes"), ({"name": "../x"}, "name")):
        with pytest.raises(InvalidField) as err:
            engine.create_hypernetwork(CreateHypernetworkRequest(**{"name": "bad", **fields}))
        assert err.value.field == name


def test_training_teaches_red_to_draw_green(engine):
    engine.create_hypernetwork(CreateHypernetworkRequest("greener", SIZES, False, "1, 2, 1", "linear",
                                                         "XavierNormal"))
    before = [draw(engine, PROMPT + " <hypernet:greener:1>", seed).colour for seed in (3, 4)]
    req = TrainHypernetworkRequest(hypernetwork_name="greener", learn_rate="0.001", batch_size=4,
                                   data_root=str(engine.dataset), training_width=128, training_height=128, steps=100,
                                   template_filename="red.txt", save_hypernetwork_every=50, create_image_every=100)
    res = engine.submit_train_hypernetwork(req).wait()
    after = [draw(engine, PROMPT + " <hypernet:greener:1>", seed) for seed in (3, 4)]
    plain = [draw(engine, PROMPT, seed).colour for seed in (3, 4)]
    print(f"\n[train hypernetwork] 100 steps: loss {res.loss:.4f}; with it before {before}, after "
          f"{[a.colour for a in after]}; the model alone {plain}")
    assert plain == ["red", "red"] and before == ["red", "red"]
    assert [a.colour for a in after] == ["green", "green"]
    assert res.steps == 100 and not res.interrupted and "train hypernetwork complete" in res.info()
    assert torch.load(res.path, weights_only=True)["step"] == 100
    assert [p.name for p in res.saved] == ["greener-50.pt", "greener-100.pt"]
    assert [p.name for p in res.images] == ["greener-100.png"]
    assert hn.load_hypernetwork(hn.HypernetworkInfo("greener", res.path)).step == 100
    with pytest.raises(InvalidField) as err:
        engine.submit_train_hypernetwork(TrainHypernetworkRequest(hypernetwork_name="nosuch",
                                                                  data_root=str(engine.dataset)))
    assert err.value.field == "hypernetwork_name"


def test_api_create_and_train_hypernetwork(tmp_path):
    data, templates = make_data(tmp_path)
    proc, url = start_server(tmp_path, "--nowebui", "--textual-inversion-templates-dir", str(templates))
    try:
        r = httpx.post(url + "/sdapi/v1/create/hypernetwork", json={"name": "viaapi", "enable_sizes": SIZES,
                                                                    "layer_structure": [1, 1]}, timeout=120)
        assert r.status_code == 200 and "viaapi.pt" in r.json()["info"]
        assert {"name": "viaapi", "path": str(tmp_path / "models" / "hypernetworks" / "viaapi.pt")} in \
            httpx.get(url + "/sdapi/v1/hypernetworks", timeout=30).json()
        r = httpx.post(url + "/sdapi/v1/train/hypernetwork", json={
            "hypernetwork_name": "viaapi", "learn_rate": "0.0001", "batch_size": 2, "data_root": str(data),
            "training_width": 128, "training_height": 128, "steps": 3, "template_filename": "colour.txt",
            "save_hypernetwork_every": 0, "create_image_every": 0}, timeout=300)
        assert r.status_code == 200 and "steps: 3" in r.json()["info"]
        bad = httpx.post(url + "/sdapi/v1/create/hypernetwork", json={"name": "x", "layer_structure": "2, 2"},
                         timeout=60)
        assert bad.status_code == 422 and bad.json()["field"] == "layer_structure"
    finally:
        proc.terminate()
        proc.wait(10)
