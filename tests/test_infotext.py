"""Infotext write/parse: A1111 layout, quoting, round trips and real-world samples."""

from __future__ import annotations

import pytest

from webui.core.infotext import (
    PASTE_DEFAULTS,
    format_infotext,
    format_number,
    format_value,
    parse_infotext,
    parse_number,
)

BASE = {"Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7.0, "Seed": 123,
        "Size": "512x768", "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly"}

ROUND_TRIPS = [
    ("plain", "a cat", "", BASE),
    ("commas and colons", "a cat, (masterpiece:1.2), [dog:cat:0.5]", "blurry, lowres", BASE),
    ("multi-line prompt", "line one,\nline two\n\nline four", "neg", BASE),
    ("multi-line negative", "p", "bad hands,\nbad feet\nugly", BASE),
    ("quotes", 'a "quoted" word, it\'s', 'no "text"', {**BASE, "Note": 'say "hi"'}),
    ("unicode", "猫, café, emoji 🐱", "ничего", {**BASE, "Model": "モデル"}),
    ("emphasis and networks", "((best)), (a:1.1) <lora:foo:0.8> AND b :1.2", "", BASE),
    ("empty prompt", "", "only negative", BASE),
    ("lora hashes", "x <lora:foo:1> <lora:bar:0.5>", "",
     {**BASE, "Lora hashes": "foo: 0123456789ab, bar: ba9876543210", "TI hashes": "emb: abcdef012345"}),
    ("values with commas, newlines, backslashes", "p", "n",
     {**BASE, "Hires prompt": "a, b\nc", "Path": "C:\\models\\x", "Wildcard": "{a|b}", "Spaced": " lead"}),
    ("floats", "p", "", {**BASE, "CFG scale": 7.5, "Denoising strength": 0.75, "Hires upscale": 2.0,
                         "Variation seed strength": 1e-05}),
    ("booleans and version", "p", "", {**BASE, "Tiling": True, "Version": "v1.10.1"}),
    ("prompt looking like params", "a: b, c: d, e: f", "g: h, i: j, k: l", BASE),
]


@pytest.mark.parametrize(("name", "prompt", "negative", "params"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip(name: str, prompt: str, negative: str, params: dict[str, object]) -> None:
    text = format_infotext(prompt, negative, params)
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    for key, value in params.items():
        assert parsed[key] == format_value(value), key


def test_layout_matches_a1111() -> None:
    text = format_infotext("a cat", "ugly", {**BASE, "Clip skip": None, "Lora hashes": "foo: 0123456789ab",
                                              "Version": "v1.10.1"})
    assert text == (
        "a cat\nNegative prompt: ugly\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768, "
        'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "foo: 0123456789ab", Version: v1.10.1'
    )


def test_no_negative_line_when_empty() -> None:
    assert format_infotext("p", "", {"Steps": 1, "Seed": 2, "Size": "8x8"}) == "p\nSteps: 1, Seed: 2, Size: 8x8"


def test_bad_key_rejected() -> None:
    with pytest.raises(ValueError):
        format_infotext("p", "", {"Bad, key": 1})


@pytest.mark.parametrize(("value", "text"), [(7.0, "7"), (0.75, "0.75"), (7, "7"), (1e-05, "1e-05"),
                                             (2.5, "2.5"), (-1.0, "-1"), (float("inf"), "inf")])
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


def test_parse_number() -> None:
    assert parse_number("7") == 7 and isinstance(parse_number("7"), int)
    assert parse_number("7.5") == 7.5
    assert parse_number("Euler a") is None
    assert parse_number("nan") is None


def test_size_split() -> None:
    parsed = parse_infotext("p\nSteps: 20, Size: 512x768, Hires resize: 1024x1536, Seed: 1")
    assert parsed["Size"] == "512x768"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == ("1024", "1536")


@pytest.mark.parametrize("defaults", [False, True])
def test_pre_1_9_sampler_with_its_schedule_splits_for_the_dropdowns(defaults: bool) -> None:
    """Infotexts written before A1111 1.9 name the schedule in the sampler; pasted, they must give values that the
    UI's Sampling method and Schedule type dropdowns hold (Gradio refuses any other value on Generate)."""
    from webui.core.request import fields_from_infotext
    from webui.core.samplers import sampler_names, schedule_labels
    text = ("a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
            "Hires upscale: 2, Hires sampler: DPM++ SDE Karras")
    out = fields_from_infotext(parse_infotext(text, defaults=defaults))
    assert (out["sampler_name"], out["scheduler"]) == ("DPM++ 2M", "Karras")
    assert (out["hr_sampler_name"], out["hr_scheduler"]) == ("DPM++ SDE", "Karras")
    assert out["sampler_name"] in sampler_names() and out["scheduler"] in schedule_labels()
    plain = fields_from_infotext(parse_infotext("a\nSteps: 20, Sampler: Euler a, Seed: 1", defaults=defaults))
    assert plain["sampler_name"] == "Euler a" and plain.get("scheduler", "Automatic") == "Automatic"
    odd = fields_from_infotext(parse_infotext("a\nSteps: 20, Sampler: Mystery 3, Seed: 1", defaults=defaults))
    assert odd["sampler_name"] == "Mystery 3"   # unknown: left for the request's check to name the valid ones


def test_fewer_than_three_params_is_prompt() -> None:
    parsed = parse_infotext("a cat\nSteps: 20, Seed: 1")
    assert parsed == {"Prompt": "a cat\nSteps: 20, Seed: 1", "Negative prompt": ""}


def test_defaults() -> None:
    text = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
    assert "Clip skip" not in parse_infotext(text)
    parsed = parse_infotext(text, defaults=True)
    assert parsed["Clip skip"] == "1" and parsed["Schedule type"] == "Automatic" and parsed["RNG"] == "GPU"
    assert set(PASTE_DEFAULTS) <= set(parsed)
    assert parse_infotext(text + ", Clip skip: 2", defaults=True)["Clip skip"] == "2"


SAMPLE_V110 = """\
masterpiece, best quality, 1girl, solo, (looking at viewer:1.2), <lora:add_detail:0.6>, \
cherry blossoms, depth of field
Negative prompt: (worst quality, low quality:1.4), easynegative, bad-hands-5
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3727381910, Size: 512x768, \
Model hash: 7f96a1a9ca, Model: anything-v5, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, \
Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+ Anime6B, \
Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "easynegative: c74b4e810b03, bad-hands-5: aa7651be154c", \
Version: v1.10.1"""

SAMPLE_OLD = """\
girl with an artist's beret, determined, blue eyes, desert scene, ((eyeshadow)), (coquettish), detailed
Negative prompt: ugly, fat, (((deformed))), [blurry], bad anatomy
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"""

SAMPLE_CONTROLNET = """\
a house on a hill
Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 42, Size: 768x512, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, ControlNet 0: "Module: canny, Model: \
control_v11p_sd15_canny [d14c016b], Weight: 1.0, Resize Mode: Crop and Resize, Low Vram: False, \
Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, \
Pixel Perfect: False, Control Mode: Balanced", Version: v1.10.1"""

SAMPLE_IMG2IMG_CRLF = (
    "portrait of a man\r\nwearing a hat\r\nNegative prompt: cartoon\r\n"
    "Steps: 30, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 640x640, Denoising strength: 0.6, "
    "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32\r\n"
)


def test_sample_v110() -> None:
    p = parse_infotext(SAMPLE_V110)
    assert p["Prompt"].endswith("cherry blossoms, depth of field")
    assert p["Negative prompt"] == "(worst quality, low quality:1.4), easynegative, bad-hands-5"
    assert p["Schedule type"] == "Karras" and p["CFG scale"] == "6.5" and p["Seed"] == "3727381910"
    assert (p["Size-1"], p["Size-2"]) == ("512", "768")
    assert p["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"
    assert p["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert p["TI hashes"] == "easynegative: c74b4e810b03, bad-hands-5: aa7651be154c"
    assert p["Version"] == "v1.10.1" and p["Clip skip"] == "2"


def test_sample_old() -> None:
    p = parse_infotext(SAMPLE_OLD)
    assert p["Prompt"].startswith("girl with an artist's beret")
    assert p["Sampler"] == "Euler a" and p["Model hash"] == "45dee52b" and p["Seed"] == "965400086"


def test_sample_controlnet() -> None:
    p = parse_infotext(SAMPLE_CONTROLNET)
    assert p["Negative prompt"] == ""
    assert str(p["ControlNet 0"]).startswith("Module: canny, Model: control_v11p_sd15_canny [d14c016b]")
    assert p["Version"] == "v1.10.1" and p["Size-1"] == "768"


def test_sample_crlf_multiline() -> None:
    p = parse_infotext(SAMPLE_IMG2IMG_CRLF)
    assert p["Prompt"] == "portrait of a man\nwearing a hat"
    assert p["Negative prompt"] == "cartoon"
    assert p["Inpaint area"] == "Only masked" and p["Denoising strength"] == "0.6"


def test_samples_survive_rewrite() -> None:
    for sample in (SAMPLE_V110, SAMPLE_OLD, SAMPLE_CONTROLNET):
        p = parse_infotext(sample)
        params = {k: v for k, v in p.items() if k not in ("Prompt", "Negative prompt") and k[-2:] not in ("-1", "-2")}
        assert format_infotext(str(p["Prompt"]), str(p["Negative prompt"]), params) == sample
