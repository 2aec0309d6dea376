"""The prompt language through the engine: exact equivalences that must hold on any model (tiny random ones
here; the bundled-model tests check the directions colours take)."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from webui.core.request import GenerationRequest

SD1 = {"sd_model_checkpoint": "tiny-sd1.safetensors"}
SDXL = {"sd_model_checkpoint": "tiny-sdxl.safetensors"}


def gen(engine, prompt, ckpt=SD1, **kw):
    base = dict(prompt=prompt, steps=5, width=64, height=64, seed=13, cfg_scale=5, override_settings=ckpt)
    res = engine.txt2img(GenerationRequest(**{**base, **kw}), save=False)
    return np.asarray(res.images[0], dtype=np.int16), res


def same(a, b, tol=0):
    return int(np.abs(a - b).max()) <= tol


@pytest.mark.parametrize("ckpt", [SD1, SDXL])
def test_emphasis_weight_one_is_plain_and_other_weights_change(engine, ckpt):
    plain, _ = gen(engine, "a red circle", ckpt)
    assert same(gen(engine, "a (red:1.0) circle", ckpt)[0], plain)
    up, _ = gen(engine, "a (red:1.6) circle", ckpt)
    down, _ = gen(engine, "a [red] circle", ckpt)
    assert not same(up, plain) and not same(down, plain)


def test_prompt_editing_edges_equal_plain_prompts(engine):
    red, _ = gen(engine, "a red circle")
    blue, _ = gen(engine, "a blue circle")
    assert same(gen(engine, "a [red:blue:1.0] circle")[0], red)     # never switches
    assert same(gen(engine, "a [red:blue:0] circle")[0], blue)      # switches before the first step
    mid, _ = gen(engine, "a [red:blue:0.5] circle")
    assert not same(mid, red) and not same(mid, blue)
    alt, _ = gen(engine, "a [red|blue] circle")
    assert not same(alt, red) and not same(alt, blue)


def test_and_with_zero_weight_part_equals_the_first_part(engine):
    plain, _ = gen(engine, "a red circle")
    assert same(gen(engine, "a red circle AND a green square:0")[0], plain, 2)
    both, _ = gen(engine, "a red circle AND a green square")
    assert not same(both, plain)


def test_break_and_long_prompts(engine):
    plain, _ = gen(engine, "a red circle, blue background")
    broken, _ = gen(engine, "a red circle BREAK blue background")
    assert not same(plain, broken)
    long = ", ".join(["a red circle"] * 40)
    img, res = gen(engine, long, negative_prompt="blurry")
    assert img.std() > 0
    # 159 tokens; the comma rule pushes the end of the first chunk into the second, and the counter counts
    # that padding as A1111's does: 75 + 75 + 11
    assert engine.token_count(long) == (161, 225)


def _unet_seq_lengths(engine, prompt, negative, **opts):
    """(image, [(batch rows, sequence length) of each UNet call of the first step])"""
    unet = engine.models.get(SD1["sd_model_checkpoint"]).pipe.unet
    calls = []

    def record(module, args, kwargs):
        calls.append(tuple(kwargs["encoder_hidden_states"].shape[:2]))
    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        img, _ = gen(engine, prompt, negative_prompt=negative, steps=2, override_settings={**SD1, **opts})
    finally:
        handle.remove()
    return img, calls[:len(calls) // 2]


def test_prompt_and_negative_of_different_lengths_run_apart_unless_padded(engine):
    """As A1111: a 2-chunk prompt and a 1-chunk negative prompt are not padded to each other; the UNet runs each
    at its own length. The setting pad_cond_uncond pads them (one call per step) and changes the picture."""
    long = ", ".join(["a red circle"] * 30)
    apart, calls = _unet_seq_lengths(engine, long, "blurry")
    assert sorted(calls) == [(1, 77), (1, 154)]
    padded, calls = _unet_seq_lengths(engine, long, "blurry", pad_cond_uncond=True)
    assert calls == [(2, 154)]
    assert not same(apart, padded)
    # the other way round, and equal lengths: one call, and the setting changes nothing
    _, calls = _unet_seq_lengths(engine, "a red circle", ", ".join(["blurry"] * 50))
    assert sorted(calls) == [(1, 77), (1, 154)]
    short, calls = _unet_seq_lengths(engine, "a red circle", "blurry")
    assert calls == [(2, 77)]
    assert same(short, _unet_seq_lengths(engine, "a red circle", "blurry", pad_cond_uncond=True)[0])


@pytest.fixture(scope="module")
def lora_file(engine, data_dir):
    from lora_factory import make_kohya_lora
    model = engine.models.get("tiny-sd1.safetensors")
    path = data_dir / "models" / "Lora" / "inky.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    make_kohya_lora(path, model.pipe, rank=4, seed=1, scale=2.0)
    engine.models.refresh_loras()
    return path


def test_lora_changes_at_weight_one_not_zero_and_does_not_leak(engine, lora_file):
    base, _ = gen(engine, "a red circle")
    on, res = gen(engine, "a red circle <lora:inky:1>")
    assert not same(on, base)
    assert "<lora:inky:1>" in res.infotexts[0]
    assert 'Lora hashes: "inky: ' in res.infotexts[0]
    assert same(gen(engine, "a red circle <lora:inky:0>")[0], base)
    te_only, _ = gen(engine, "a red circle <lora:inky:1:0>")
    unet_only, _ = gen(engine, "a red circle <lora:inky:0:1>")
    assert not same(te_only, on) and not same(unet_only, on) and not same(te_only, unet_only)
    assert same(gen(engine, "a red circle")[0], base), "the LoRA leaked into the next job"


def test_missing_lora_warns_and_runs(engine, lora_file):
    base, _ = gen(engine, "a red circle")
    img, res = gen(engine, "a red circle <lora:nope:1>")
    assert same(img, base)
    assert any("LoRA not found: nope" in n for n in res.notes)


def test_emphasis_mode_is_recorded_and_pasted_as_a1111(engine):
    """"Emphasis: <mode>" is written when the mode is not Original and a prompt has brackets; pasting it sets the
    mode for that job, and the picture comes out the same."""
    from webui.core.infotext import parse_infotext
    from webui.core.request import fields_from_infotext
    img, res = gen(engine, "a (red:1.4) circle", override_settings={**SD1, "emphasis": "No norm"})
    assert "Emphasis: No norm" in res.infotexts[0]
    _, plain = gen(engine, "a red circle", override_settings={**SD1, "emphasis": "No norm"})
    assert "Emphasis" not in plain.infotexts[0]
    assert "Emphasis" not in gen(engine, "a (red:1.4) circle")[1].infotexts[0]
    filled = fields_from_infotext(parse_infotext(res.infotexts[0]))
    assert filled["override_settings"]["emphasis"] == "No norm"
    again = engine.txt2img(GenerationRequest(**filled), save=False)
    assert same(np.asarray(again.images[0], dtype=np.int16), img)
    assert not same(gen(engine, "a (red:1.4) circle")[0], img), "the mode changes the picture"


def test_restore_faces_says_it_is_not_available(engine):
    _, res = gen(engine, "a red circle", restore_faces=True)
    assert any("restore_faces ignored" in n for n in res.notes)


def test_lora_tag_in_a_negative_prompt_is_text_as_in_a1111(engine, lora_file):
    """A1111 reads extra-network tags from the prompts only: in the negative prompt the tag is encoded as words."""
    base, _ = gen(engine, "a red circle")
    img, res = gen(engine, "a red circle", negative_prompt="<lora:inky:1>")
    assert "Lora hashes" not in res.infotexts[0] and 'Negative prompt: <lora:inky:1>' in res.infotexts[0]
    assert not same(img, base)


def test_pasted_lora_tag_finds_the_local_file_by_its_hash(engine, lora_file, server):
    """An image made elsewhere with this LoRA saved there as "oldname": pasting its infotext points the tag at the
    local file with the hash "Lora hashes" records (as A1111 does on paste), so the picture comes out the same."""
    from webui.core.infotext import parse_infotext
    from webui.core.request import fields_from_infotext
    from webui.models.lora import relink_loras
    on, res = gen(engine, "a red circle <lora:inky:1>")
    elsewhere = res.infotexts[0].replace("inky", "oldname")
    parsed = parse_infotext(elsewhere)
    assert "<lora:oldname:1>" in fields_from_infotext(parsed)["prompt"]
    relinked = fields_from_infotext(parsed, relink=lambda p, h: relink_loras(p, h, engine.models.loras))
    assert relinked["prompt"] == "a red circle <lora:inky:1>"
    # through the API's infotext field, which fills every field the request leaves out
    assert httpx.post(server + "/sdapi/v1/refresh-loras", timeout=60).status_code == 200
    r = httpx.post(server + "/sdapi/v1/txt2img", json={"infotext": elsewhere}, timeout=300)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["prompt"] == "a red circle <lora:inky:1>"
    import base64
    import io

    from PIL import Image
    api = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"), dtype=np.int16)
    assert same(api, on, tol=1)


@pytest.fixture(scope="module")
def embedding_files(engine, data_dir):
    from embedding_factory import word_vectors, write_embedding
    model = engine.models.get("tiny-sd1.safetensors")
    folder = data_dir / "embeddings"
    red = word_vectors(model.pipe.text_encoder, model.pipe.tokenizer, "red circle")
    write_embedding(folder / "myshape.pt", red, fmt="pt")
    import torch
    write_embedding(folder / "wide.safetensors", torch.ones(2, 99), fmt="safetensors")
    engine.models.refresh_embeddings()
    return folder


def test_textual_inversion_equals_its_words(engine, embedding_files):
    words, _ = gen(engine, "a red circle, blue background")
    emb, res = gen(engine, "a myshape, blue background")
    assert same(emb, words)
    assert 'TI hashes: "myshape: ' in res.infotexts[0]
    weighted, _ = gen(engine, "a (myshape:1.5), blue background")
    assert not same(weighted, words)


def test_embeddings_listing_reports_skipped(server, embedding_files):
    httpx.post(server + "/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1.safetensors"}, timeout=120)
    httpx.post(server + "/sdapi/v1/refresh-embeddings", timeout=60)
    body = httpx.get(server + "/sdapi/v1/embeddings", timeout=60).json()
    assert body["loaded"]["myshape"]["vectors"] == 2
    assert "99" in body["skipped"]["wide"]["reason"]


def test_loras_listing_and_missing_in_api_info(server, lora_file):
    httpx.post(server + "/sdapi/v1/refresh-loras", timeout=60)
    names = [i["name"] for i in httpx.get(server + "/sdapi/v1/loras", timeout=60).json()]
    assert "inky" in names
    r = httpx.post(server + "/sdapi/v1/txt2img", timeout=300, json={
        "prompt": "x <lora:ghost:0.5>", "steps": 2, "width": 64, "height": 64,
        "override_settings": {"sd_model_checkpoint": "tiny-sd1.safetensors"}})
    assert r.status_code == 200
    assert "LoRA not found: ghost" in json.loads(r.json()["info"])["notes"]
