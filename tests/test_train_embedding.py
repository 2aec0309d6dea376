"""The Train tab (A1111's textual-inversion training) on the bundled model: an embedding created from "red" draws
red; trained for 100 steps on pictures of green shapes it draws green; the file is A1111's .pt with its step, copies
land in the log directory every N steps, Interrupt keeps what was learnt, bad input is a 4xx; through the engine,
the HTTP API and the browser."""
from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import start_server
from PIL import Image
from tool_modules import load_tool

import shape_checker as sc
from webui.core.errors import InvalidField
from webui.core.request import GenerationRequest
from webui.core.training import CreateEmbeddingRequest, TrainEmbeddingRequest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted((ROOT / "models" / "Stable-diffusion").glob("shapes-*.safetensors"))
pytestmark = pytest.mark.skipif(not BUNDLED, reason="the bundled model is not in models/Stable-diffusion")
PROMPT = "a large {} circle in the centre, blue background"
TEMPLATE = "a large [name] [filewords]\n"


def make_data(folder: Path) -> tuple[Path, Path]:
    """(dataset folder, templates folder): green shapes at four places on blue, each with its caption file."""
    ds = load_tool("shapes_dataset")
    data, templates = folder / "dataset", folder / "templates"
    data.mkdir(parents=True)
    templates.mkdir()
    (templates / "colour.txt").write_text(TEMPLATE)
    where = {"left": "on the left", "right": "on the right", "centre": "in the centre", "top": "at the top"}
    k = 0
    for shape in ("circle", "square"):
        for position, words in where.items():
            img = np.empty((128, 128, 3), np.uint8)
            img[:] = ds.COLOURS["blue"]
            cx, cy = ds.ANCHORS[position]
            ds.draw_shape(img, shape, cx, cy, ds.RADIUS["large"], ds.COLOURS["green"])
            Image.fromarray(img).save(data / f"{k:02d}.png")
            (data / f"{k:02d}.txt").write_text(f"{shape} {words}, blue background")
            k += 1
    return data, templates


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from app import build_engine
    from webui.config.flags import parse_args
    d = tmp_path_factory.mktemp("train-embedding")
    data, templates = make_data(d)
    engine = build_engine(parse_args(["--data-dir", str(d), "--textual-inversion-templates-dir", str(templates)]))
    engine.settings.update({"live_previews_enable": False}, save=False)
    engine.dataset = data
    yield engine
    engine.jobs.stop()


def draw(engine, word: str, seed: int = 3) -> sc.Analysis:
    req = GenerationRequest(prompt=PROMPT.format(word), steps=20, width=128, height=128, cfg_scale=7,
                            sampler_name="Euler a", seed=seed)
    return sc.analyse(np.asarray(engine.txt2img(req, save=False).images[0]))


def train_req(engine, name: str, **kw) -> TrainEmbeddingRequest:
    base = dict(embedding_name=name, learn_rate="0.005", batch_size=4, data_root=str(engine.dataset),
                training_width=128, training_height=128, steps=100, template_filename="colour.txt",
                save_embedding_every=50, create_image_every=0)
    return TrainEmbeddingRequest(**{**base, **kw})


def test_create_writes_a1111s_file_from_the_words_and_refuses_to_overwrite(engine):
    path = engine.create_embedding(CreateEmbeddingRequest("fromred", 2, False, "red"))
    assert path == engine.paths.embeddings / "fromred.pt"
    data = torch.load(path, weights_only=True)
    vectors = data["string_to_param"]["*"]
    pipe = engine.models.get(BUNDLED[0].name).pipe
    red = pipe.tokenizer("red", add_special_tokens=False)["input_ids"]
    table = pipe.text_encoder.get_input_embeddings().weight.float()
    assert vectors.shape == (2, table.shape[1]) and data["step"] == 0 and data["name"] == "fromred"
    assert torch.equal(vectors[0], table[red[0]]) and torch.equal(vectors[1], table[red[0]])
    assert data["sd_checkpoint"] == engine.models.get(BUNDLED[0].name).info.shorthash
    loaded, _ = engine.models.embeddings()
    assert loaded["fromred"].n_vectors == 2, "usable at once, without a refresh"
    assert draw(engine, "fromred").colour == "red", "an embedding made from 'red' draws red"
    with pytest.raises(InvalidField, match="already exists"):
        engine.create_embedding(CreateEmbeddingRequest("fromred", 1, False, "green"))
    engine.create_embedding(CreateEmbeddingRequest("fromred", 1, True, "green"))
    assert torch.load(path, weights_only=True)["string_to_param"]["*"].shape[0] == 1
    with pytest.raises(InvalidField):
        engine.create_embedding(CreateEmbeddingRequest("../escape", 1, False, "red"))


def test_training_on_green_pictures_turns_red_into_green(engine):
    engine.create_embedding(CreateEmbeddingRequest("mycolour", 1, False, "red"))
    before = [draw(engine, "mycolour", seed) for seed in (3, 4)]
    res = engine.submit_train_embedding(train_req(engine, "mycolour", create_image_every=50)).wait()
    after = [draw(engine, "mycolour", seed) for seed in (3, 4)]
    print(f"\n[train embedding] 100 steps: loss {res.loss:.4f}; colours before {[a.colour for a in before]}, "
          f"after {[a.colour for a in after]}")
    assert [a.colour for a in before] == ["red", "red"]
    assert [a.colour for a in after] == ["green", "green"]
    assert all(a.shape == "circle" and a.background == "blue" for a in after), "the rest of the prompt still holds"
    assert res.steps == 100 and not res.interrupted
    assert torch.load(res.path, weights_only=True)["step"] == 100
    assert [p.name for p in res.saved] == ["mycolour-50.pt", "mycolour-100.pt"]
    assert all(p.exists() and engine.paths.data / "textual_inversion" in p.parents for p in res.saved)
    loaded, _ = engine.models.embeddings()
    assert loaded["mycolour"].step == 100
    assert [p.name for p in res.images] == ["mycolour-50.png", "mycolour-100.png"]
    last = Image.open(res.images[-1])
    assert "mycolour" in last.info["parameters"] and sc.analyse(np.asarray(last.convert("RGB"))).colour == "green", \
        "the preview draws with the vectors trained so far"


def test_interrupt_keeps_what_was_learnt_and_bad_input_is_refused(engine):
    engine.create_embedding(CreateEmbeddingRequest("stopped", 1, False, "red"))
    job = engine.submit_train_embedding(train_req(engine, "stopped", steps=100000, save_embedding_every=0))
    while job.progress.sampling_step < 3:
        job.done.wait(0.05)
    job.interrupt()
    res = job.wait(120)
    assert res.interrupted and 3 <= res.steps < 100000
    assert torch.load(res.path, weights_only=True)["step"] == res.steps
    for kw, field in (({"learn_rate": "fast"}, "learn_rate"), ({"data_root": "/nowhere"}, "data_root"),
                      ({"template_filename": "missing.txt"}, "template_filename"),
                      ({"embedding_name": "nosuch"}, "embedding_name"), ({"training_width": 100}, "training_width"),
                      ({"latent_sampling_method": "sometimes"}, "latent_sampling_method")):
        with pytest.raises(InvalidField) as e:
            engine.submit_train_embedding(train_req(engine, "stopped", **kw))
        assert e.value.field == field


def test_learning_rate_schedule_is_a1111s():
    from webui.engine.train_embedding import learn_rate_schedule, rate_at
    schedule = learn_rate_schedule("0.005:100, 1e-3:1000, 1e-5", 5000)
    assert [rate_at(schedule, s) for s in (1, 100, 101, 1000, 1001, 5000)] == [0.005, 0.005, 1e-3, 1e-3, 1e-5, 1e-5]
    assert rate_at(learn_rate_schedule("0.01:10", 50), 11) is None, "training ends with its schedule"


# -- the HTTP API and the browser ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    d = tmp_path_factory.mktemp("train-embedding-server")
    data, templates = make_data(d)
    proc, url = start_server(d, "--textual-inversion-templates-dir", str(templates))
    yield url, d, data
    proc.terminate()
    proc.wait(10)


def api_colour(url: str, word: str) -> str:
    r = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": PROMPT.format(word), "steps": 20, "width": 128,
                                                   "height": 128, "sampler_name": "Euler a", "seed": 3}, timeout=120)
    assert r.status_code == 200, r.text
    return sc.analyse(np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"))).colour


def test_api_create_and_train(studio):
    url, d, data = studio
    r = httpx.post(url + "/sdapi/v1/create/embedding", json={"name": "apicolour", "init_text": "red"}, timeout=120)
    assert r.status_code == 200 and r.json()["info"].endswith("apicolour.pt")
    assert api_colour(url, "apicolour") == "red"
    again = httpx.post(url + "/sdapi/v1/create/embedding", json={"name": "apicolour"}, timeout=60)
    assert again.status_code == 422 and "already exists" in again.text
    body = {"embedding_name": "apicolour", "learn_rate": "0.005", "batch_size": 4, "data_root": str(data),
            "training_width": 128, "training_height": 128, "steps": 100, "template_filename": "colour.txt",
            "save_embedding_every": 0, "create_image_every": 0}
    r = httpx.post(url + "/sdapi/v1/train/embedding", json=body, timeout=600)
    assert r.status_code == 200 and "train embedding complete" in r.json()["info"], r.text
    assert api_colour(url, "apicolour") == "green"
    bad = httpx.post(url + "/sdapi/v1/train/embedding", json={**body, "learn_rate": "fast"}, timeout=60)
    assert bad.status_code == 422 and "learn_rate" in bad.text
    assert "apicolour" in httpx.get(url + "/sdapi/v1/embeddings", timeout=60).json()["loaded"]


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium not installed")
def test_train_tab_in_the_browser(studio):
    from playwright.sync_api import sync_playwright
    url, d, data = studio
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=flags, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("tab", name="Train").first.click()
        page.locator("#train_new_embedding_name textarea, #train_new_embedding_name input").first.fill("uicolour")
        page.locator("#train_initialization_text textarea, #train_initialization_text input").first.fill("red")
        page.click("#train_create_embedding")
        page.wait_for_function("() => document.querySelector('#train_create_result').innerText.includes("
                               "'uicolour.pt')")
        page.click("#train_create_embedding")   # a second time: the name is taken
        page.wait_for_function("() => document.querySelector('#train_create_result').innerText.includes("
                               "'already exists')")
        page.get_by_role("tab", name="Train", exact=True).last.click()
        page.locator("#train_dataset_directory textarea").fill(str(data))
        page.click("#train_template_file input")
        page.get_by_role("option", name="colour.txt").click()
        for eid, value in (("train_training_width", 128), ("train_training_height", 128), ("train_steps", 10),
                           ("train_batch_size", 2), ("train_create_image_every", 5)):
            box = page.locator(f"#{eid} input[type=number]").first
            box.fill(str(value))
            box.press("Enter")
        page.click("#train_train_embedding")
        page.wait_for_function("() => document.querySelector('#train_result').innerText.includes("
                               "'train embedding complete')", timeout=180_000)
        assert "steps: 10" in page.locator("#train_result").inner_text()
        # a hypernetwork, created and trained from the same tab (the bundled model's widths: 64, 128)
        page.get_by_role("tab", name="Create hypernetwork").first.click()
        page.locator("#train_new_hypernetwork_name textarea, #train_new_hypernetwork_name input").first.fill("uihn")
        sizes = page.locator("#train_new_hypernetwork_sizes textarea, #train_new_hypernetwork_sizes input").first
        sizes.fill("64, 128")
        page.click("#train_create_hypernetwork")
        page.wait_for_function("() => document.querySelector('#train_create_hypernetwork_result').innerText"
                               ".includes('uihn.pt')")
        page.get_by_role("tab", name="Train", exact=True).last.click()
        page.wait_for_function("() => document.querySelector('#train_hypernetwork input').value === 'uihn'")
        page.click("#train_train_hypernetwork")
        page.wait_for_function("() => document.querySelector('#train_result').innerText.includes("
                               "'train hypernetwork complete')", timeout=180_000)
        assert "steps: 10" in page.locator("#train_result").inner_text()
        browser.close()
    assert torch.load(d / "embeddings" / "uicolour.pt", weights_only=True)["step"] == 10
    assert torch.load(d / "models" / "hypernetworks" / "uihn.pt", weights_only=True)["step"] == 10
    assert sorted(p.name for p in (d / "textual_inversion").rglob("*.png")) == ["uicolour-10.png", "uicolour-5.png",
                                                                                 "uihn-10.png", "uihn-5.png"]
