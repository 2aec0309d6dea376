"""Prompt styles: A1111's styles.csv and "{prompt}" rule, applied by the engine (the infotext records the styled
prompt, pixels equal the styled prompt typed in), GET /sdapi/v1/prompt-styles, save and apply in the UI."""
from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest

from webui.core.errors import InvalidField
from webui.core.request import GenerationRequest
from webui.core.styles import PromptStyle, StyleDatabase, apply_styles, merge_prompts, parse_csv, to_csv

# As A1111 writes it (csv module, minimal quoting), with a "{prompt}" style and an appended one.
A1111_CSV = ('name,prompt,negative_prompt\n'
             'framed,"a photo of {prompt}, framed","blurry, {prompt}"\n'
             'warm,"warm light, golden",cold\n'
             'empty,,\n')


def test_prompt_placeholder_and_appending():
    assert merge_prompts("a photo of {prompt}, framed", "a cat") == "a photo of a cat, framed"
    assert merge_prompts("warm light", "a cat") == "a cat, warm light"
    assert merge_prompts("warm light", "  ") == "warm light"
    assert merge_prompts("", "a cat") == "a cat"
    styles = parse_csv(A1111_CSV)
    assert list(styles) == ["framed", "warm", "empty"]
    both = [styles["framed"], styles["warm"]]
    assert apply_styles("a cat", both) == "a photo of a cat, framed, warm light, golden"
    assert apply_styles("", both, negative=True) == "blurry,, cold"   # A1111 strips, then joins
    assert apply_styles("ugly", both, negative=True) == "blurry, ugly, cold"
    assert parse_csv(to_csv(list(styles.values()))) == styles


def test_database_reads_saves_and_rejects_unknown(tmp_path):
    path = tmp_path / "styles.csv"
    db = StyleDatabase(path)
    assert db.names() == []
    path.write_text(A1111_CSV)
    assert db.names() == ["framed", "warm", "empty"]        # re-read when the file changes
    db.save_style(PromptStyle("new, with comma", 'say "hi" to {prompt}', ""))
    assert StyleDatabase(path).styles["new, with comma"].prompt == 'say "hi" to {prompt}'
    assert path.read_text().splitlines()[0] == "name,prompt,negative_prompt"
    assert db.apply("x", "y", ["warm"]) == ("x, warm light, golden", "y, cold")
    with pytest.raises(InvalidField, match="unknown style 'nope'; valid: framed, warm"):
        db.apply("x", "", ["nope"])


def test_engine_applies_styles_and_records_the_styled_prompt(engine, data_dir):
    (data_dir / "styles.csv").write_text(A1111_CSV)
    base = dict(steps=2, width=64, height=64, seed=77, sampler_name="Euler",
                override_settings={"sd_model_checkpoint": "tiny-sd1.safetensors"})
    styled = engine.txt2img(GenerationRequest(prompt="a red circle", negative_prompt="noise",
                                              styles=["framed", "warm"], **base), save=False)
    text = styled.infotexts[0]
    assert text.startswith("a photo of a red circle, framed, warm light, golden\n"
                           "Negative prompt: blurry, noise, cold\n")
    assert styled.info()["styles"] == ["framed", "warm"] and styled.info()["prompt"] == "a red circle"
    typed = engine.txt2img(GenerationRequest(prompt="a photo of a red circle, framed, warm light, golden",
                                             negative_prompt="blurry, noise, cold", **base), save=False)
    assert np.array_equal(np.asarray(styled.images[0]), np.asarray(typed.images[0]))
    with pytest.raises(InvalidField, match="styles"):
        engine.txt2img(GenerationRequest(prompt="x", styles=["missing"], **base), save=False)


def test_api_lists_styles_and_refuses_unknown(server, data_dir):
    (data_dir / "styles.csv").write_text(A1111_CSV)
    items = httpx.get(server + "/sdapi/v1/prompt-styles", timeout=30).json()
    assert items[0] == {"name": "framed", "prompt": "a photo of {prompt}, framed",
                        "negative_prompt": "blurry, {prompt}"}
    assert [i["name"] for i in items] == ["framed", "warm", "empty"]
    r = httpx.post(server + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "x", "steps": 1, "width": 64, "height": 64, "styles": ["missing"]})
    assert r.status_code == 422 and r.json()["field"] == "styles"


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium not installed")
def test_save_and_apply_style_in_the_browser(server, data_dir):
    from playwright.sync_api import sync_playwright
    (data_dir / "styles.csv").write_text(A1111_CSV)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(server)
        prompt = page.locator("#txt2img_prompt textarea")
        prompt.fill("oil painting of {prompt}, thick strokes")
        page.click("#txt2img_style_save_box")
        page.locator("#txt2img_style_name input, #txt2img_style_name textarea").first.fill("oil")
        page.click("#txt2img_style_create")
        page.wait_for_function("() => document.querySelector('#txt2img_style_status').innerText.includes('saved')")
        assert "oil,\"oil painting of {prompt}, thick strokes\"," in (data_dir / "styles.csv").read_text()
        prompt.fill("a blue square")
        page.click("#txt2img_styles input")
        page.get_by_role("option", name="oil", exact=True).click()
        page.keyboard.press("Escape")
        page.click("#txt2img_style_apply")
        page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value"
                               ".startsWith('oil painting of a blue square')")
        browser.close()
