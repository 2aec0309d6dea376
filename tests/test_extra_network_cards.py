"""Extra-network cards: what lies beside a model file (preview, description, user metadata, as A1111 writes them),
what a card puts into the prompts and takes out again, search and order."""
from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from webui.core.card_prompts import card_texts, contains, toggle, toggle_negative
from webui.models import cards, user_metadata


def test_preview_description_and_metadata_beside_the_file(tmp_path):
    model = tmp_path / "style_v1.0.safetensors"
    model.write_bytes(b"x")
    assert user_metadata.find_preview(model) is None and user_metadata.find_description(model) == ""
    assert user_metadata.read(model) == {}
    Image.new("RGB", (8, 8), "red").save(tmp_path / "style_v1.0.preview.jpg")
    assert user_metadata.find_preview(model) == tmp_path / "style_v1.0.preview.jpg"
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "style_v1.0.png")        # name.png comes first
    assert user_metadata.find_preview(model) == tmp_path / "style_v1.0.png"
    (tmp_path / "style_v1.0.txt").write_text("a watercolour style\n")
    assert user_metadata.find_description(model) == "a watercolour style"
    # a file A1111's editor wrote is read as it is, and saving keeps keys the editor does not show
    (tmp_path / "style_v1.0.json").write_text(json.dumps({"activation text": "wtrcolor", "sd version": "SD1",
                                                          "modelId": 1234}))
    assert user_metadata.read(model)["activation text"] == "wtrcolor"
    path = user_metadata.write(model, {"preferred weight": 0.6, "activation text": "watercolour"})
    assert path == tmp_path / "style_v1.0.json"
    assert json.loads(path.read_text()) == {"activation text": "watercolour", "sd version": "SD1", "modelId": 1234,
                                            "preferred weight": 0.6}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []      # no temp file left
    (tmp_path / "broken.json").write_text("[1, 2")
    assert user_metadata.read(tmp_path / "broken.safetensors") == {}
    user_metadata.save_preview(model, Image.new("RGB", (8, 8), (0, 200, 0)), "a cat\nSteps: 4, Seed: 1")
    with Image.open(tmp_path / "style_v1.0.png") as im:
        assert im.getpixel((4, 4)) == (0, 200, 0) and im.info["parameters"] == "a cat\nSteps: 4, Seed: 1"


def test_card_texts():
    md = {"preferred weight": 0.6, "activation text": "wtrcolor, soft", "negative text": "photo"}
    assert card_texts("lora", "style", md, 1.0) == ("<lora:style:0.6> wtrcolor, soft", "(photo:1)")
    assert card_texts("lora", "style", {}, 0.8) == ("<lora:style:0.8>", "")
    assert card_texts("lora", "style", {"preferred weight": 0}, 1.0) == ("<lora:style:1>", "")
    assert card_texts("lora", "style", {"preferred weight": "oops"}, 1.0) == ("<lora:style:1>", "")
    assert card_texts("hypernetwork", "h", md, 0.5) == ("<hypernet:h:0.5>", "")   # LoRA fields only on LoRAs
    assert card_texts("embedding", "goodhands", md, 1.0) == ("goodhands", "")
    with pytest.raises(ValueError):
        card_texts("checkpoint", "x", {}, 1.0)


def test_a_click_adds_the_text_and_a_second_click_takes_it_out():
    text = "<lora:style:0.6> wtrcolor"
    prompt, added = toggle("a cat", "lora", "style", text)
    assert (prompt, added) == ("a cat <lora:style:0.6> wtrcolor", True)
    assert contains(prompt, "lora", "style", text)
    assert toggle(prompt, "lora", "style", text) == ("a cat", False)
    # the user changed the weight by hand: the tag still comes out, the rest of the prompt stays
    assert toggle("a cat <lora:style:1.2>, sunset", "lora", "style", text) == ("a cat, sunset", False)
    assert toggle("", "lora", "style", text) == (text, True)
    assert toggle("a cat", "lora", "style", text, separator=", ") == (f"a cat, {text}", True)
    assert toggle("a <lora:styles:1> cat", "lora", "style", text)[1] is True      # another LoRA's name
    assert toggle("goodhands, a cat", "embedding", "goodhands", "goodhands") == (", a cat", False)
    assert toggle_negative("blurry", "(photo:1)", True) == "blurry (photo:1)"
    assert toggle_negative("blurry (photo:1)", "(photo:1)", True) == "blurry (photo:1)"   # not twice
    assert toggle_negative("blurry (photo:1)", "(photo:1)", False) == "blurry"
    assert toggle_negative("blurry", "", True) == "blurry"


def test_search_and_order(tmp_path):
    def card(name, rel, mtime, **md):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
        if md:
            user_metadata.write(path, md)
        return cards.make_card("lora", name, path, rel)

    found = [card("zeta", "a/zeta.safetensors", 300), card("alpha", "b/alpha.safetensors", 100,
                                                              **{"activation text": "wtrcolor"}),
             card("mid", "c/mid.safetensors", 200, notes="my favourite")]
    assert [c.name for c in cards.select(found)] == ["zeta", "alpha", "mid"]                 # by path
    assert [c.name for c in cards.select(found, order="Name")] == ["alpha", "mid", "zeta"]
    assert [c.name for c in cards.select(found, order="Date Modified", descending=True)] == ["zeta", "mid", "alpha"]
    assert [c.name for c in cards.select(found, "WTRCOLOR")] == ["alpha"]                   # activation text
    assert [c.name for c in cards.select(found, "favourite")] == ["mid"]                    # notes
    assert [c.name for c in cards.select(found, "b/ alpha")] == ["alpha"]                   # every word
    assert cards.select(found, "nothing") == []
    assert cards.folders(found + [cards.make_card("lora", "deep", None, "a/x/deep.safetensors")]) == ["a", "a/x", "b",
                                                                                                      "c"]
    assert [c.name for c in cards.select(found, folder="b")] == ["alpha"]
    assert cards.select(found, folder="a/x") == []
    with pytest.raises(ValueError, match="valid: Path, Name"):
        cards.select(found, order="Size")
    assert found[1].metadata["activation text"] == "wtrcolor"


def test_lora_page_shows_the_loaded_models_sd_version_unless_show_all(tmp_path):
    """A1111's Lora page: the version from the trainer's metadata (sdxl_*, ss_v2, any other metadata: SD1; none:
    Unknown, always shown), a card's "sd version" overriding it; lora_show_all shows every LoRA."""
    from types import SimpleNamespace

    from webui.models.lora import LoraInfo, sd_version

    def lora(name, **metadata):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(b"x")
        return LoraInfo(name, path, path.name, name, metadata)

    loras = [lora("xl", ss_base_model_version="sdxl_base_v1-0"), lora("v2", ss_v2="True"),
             lora("v1", ss_base_model_version="sd_v1"), lora("bare"), lora("marked", ss_v2="True")]
    assert [sd_version(i) for i in loras] == ["SDXL", "SD2", "SD1", "Unknown", "SD2"]
    user_metadata.write(loras[-1].path, {"sd version": "SDXL"})        # the card says otherwise
    models = SimpleNamespace(loras=loras, current=SimpleNamespace(family="sdxl"))
    assert [c.name for c in cards.list_cards(models, "lora", show_all=False)] == ["xl", "bare", "marked"]
    models.current = SimpleNamespace(family="sd1")
    assert [c.name for c in cards.list_cards(models, "lora", show_all=False)] == ["v1", "bare"]
    assert len(cards.list_cards(models, "lora", show_all=True)) == 5
    models.current = None                                              # nothing loaded yet: all
    assert len(cards.list_cards(models, "lora", show_all=False)) == 5
