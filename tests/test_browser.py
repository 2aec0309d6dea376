"""The real UI in a real browser (Playwright + Debian's chromium): generate, find the PNG, paste it back."""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]

pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium not installed "
                                "(apt-get install chromium); .ci/run installs it")


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        pg.goto(server)
        pg.wait_for_selector("#txt2img_prompt textarea")
        yield pg
        browser.close()


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def newest_png(folder, after: float):
    files = [f for f in folder.rglob("*.png") if f.stat().st_mtime >= after]
    return max(files, key=lambda f: f.stat().st_mtime) if files else None


def generate(page, data_dir, prompt: str):
    page.locator("#txt2img_prompt textarea").fill(prompt)
    started = time.time() - 1
    before = page.locator("#txt2img_gallery img").count()
    page.click("#txt2img_generate")
    page.wait_for_function(
        "() => document.querySelector('#html_info_txt2img') && "
        "document.querySelector('#html_info_txt2img').innerText.includes('Seed:')", timeout=120_000)
    assert page.locator("#txt2img_gallery img").count() >= max(before, 1)
    saved = newest_png(data_dir / "outputs" / "txt2img-images", started)
    assert saved is not None, "the generated image was not saved under outputs/txt2img-images"
    return saved


def test_generate_in_browser_then_paste_back(page, data_dir, server):
    # pick the tiny SD1 model from the checkpoint dropdown at the top
    page.click("#setting_sd_model_checkpoint input")
    page.get_by_role("option", name="tiny-sd1.safetensors", exact=False).first.click()
    page.wait_for_timeout(1500)
    for eid, v in (("txt2img_steps", 4), ("txt2img_width", 64), ("txt2img_height", 64),
                   ("txt2img_seed", 4242)):
        set_number(page, eid, v)
    saved = generate(page, data_dir, "a yellow triangle at the top")
    assert page.locator("#txt2img_token_counter").inner_text().strip() == "6/75"
    text = Image.open(saved).info["parameters"]
    assert text.startswith("a yellow triangle at the top\n")
    assert "Steps: 4" in text and "Seed: 4242" in text and "Size: 64x64" in text and "Model: tiny-sd1" in text
    assert saved.name.endswith("-4242.png")
    shown = page.locator("#html_info_txt2img").inner_text()
    assert "Seed: 4242" in shown

    # the same request through the API path gives the same infotext and the same pixels
    import base64
    import io
    import json

    import httpx
    r = httpx.post(server + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "a yellow triangle at the top", "steps": 4, "width": 64, "height": 64, "seed": 4242,
        "sampler_name": "Euler a", "cfg_scale": 7, "override_settings": {"sd_model_checkpoint": "tiny-sd1"}})
    assert json.loads(r.json()["info"])["infotexts"][0] == text
    api_image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert np.array_equal(np.asarray(api_image), np.asarray(Image.open(saved)))

    # PNG Info: drop the file, read its parameters, send them to txt2img, generate again -> same pixels
    set_number(page, "txt2img_seed", 1)
    page.locator("#txt2img_prompt textarea").fill("something else")
    page.click("#tab_pnginfo-button") if page.locator("#tab_pnginfo-button").count() else \
        page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved))
    page.wait_for_function("() => document.querySelector('#pnginfo_generation_info textarea')"
                           ".value.includes('Seed: 4242')")
    page.click("#txt2img_tab")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value"
                           " === 'a yellow triangle at the top'")
    assert page.locator("#txt2img_seed input[type=number]").first.input_value() == "4242"
    page.wait_for_timeout(500)
    started = time.time() - 1
    page.click("#txt2img_generate")
    page.wait_for_function("() => document.querySelector('#html_info_txt2img').innerText.includes('Seed: 4242')"
                           " && document.querySelector('#txt2img_progress').innerText === ''")
    deadline = time.time() + 30
    again = None
    while again is None and time.time() < deadline:
        again = newest_png(data_dir / "outputs" / "txt2img-images", started)
        time.sleep(0.2)
    assert again is not None and again != saved
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(saved)))


def test_bad_input_shows_error_and_ui_keeps_working(page, data_dir):
    page.get_by_role("tab", name="txt2img").click()
    set_number(page, "txt2img_width", 68)   # not a multiple of 8
    page.locator("#txt2img_prompt textarea").fill("x")
    page.click("#txt2img_generate")
    page.wait_for_function("() => document.querySelector('#txt2img_error').innerText.includes('width')")
    assert "multiple of 8" in page.locator("#txt2img_error").inner_text()
    set_number(page, "txt2img_width", 64)
    generate(page, data_dir, "a red circle")
    assert page.locator("#txt2img_error").inner_text() == ""


def test_progress_preview_and_interrupt_in_browser(page, data_dir):
    page.get_by_role("tab", name="txt2img").click()
    for eid, v in (("txt2img_steps", 40), ("txt2img_width", 64), ("txt2img_height", 64),
                   ("txt2img_batch_count", 30), ("txt2img_seed", 99)):
        set_number(page, eid, v)
    page.locator("#txt2img_prompt textarea").fill("a blue star")
    page.click("#txt2img_generate")
    # the progress bar moves and a live preview shows in the gallery while the job runs
    page.wait_for_function("() => document.querySelector('#txt2img_progress .studio-progress-bar') !== null")
    page.wait_for_function("() => document.querySelectorAll('#txt2img_gallery img').length > 0")
    started = time.time()
    page.click("#txt2img_interrupt")
    page.wait_for_function("() => document.querySelector('#txt2img_progress').innerText === ''", timeout=60_000)
    assert time.time() - started < 30, "interrupt did not stop the 30-batch job promptly"
    assert page.locator("#txt2img_error").inner_text() == ""
    set_number(page, "txt2img_batch_count", 1)
    set_number(page, "txt2img_steps", 4)


def test_extra_networks_cards_insert_tags(page, data_dir, server):
    from lora_factory import make_kohya_lora, tiny_pipeline
    pipe = tiny_pipeline(data_dir / "tmp-lora", "sd1", seed=1)
    make_kohya_lora(data_dir / "models" / "Lora" / "cardtest.safetensors", pipe, rank=2, seed=3)
    page.get_by_role("tab", name="txt2img").click()
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    page.click("#txt2img_extra_networks button, #txt2img_extra_networks .label-wrap")
    page.click("#txt2img_extra_refresh")
    page.wait_for_function("() => document.querySelector('#txt2img_lora_cards').innerText.includes('cardtest')")
    page.locator("#txt2img_lora_cards").get_by_text("cardtest").click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value"
                           " === 'a red circle <lora:cardtest:1>'")


def test_inpaint_upload_in_browser(page, data_dir, tmp_path):
    from PIL import ImageDraw
    src = Image.new("RGB", (64, 64), (40, 60, 200))
    ImageDraw.Draw(src).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 28, 28), fill=255)
    src.save(tmp_path / "src.png")
    mask.save(tmp_path / "mask.png")
    page.get_by_role("tab", name="img2img").first.click()
    page.locator("#img2img_inpaint_upload_tab-button").click() if page.locator(
        "#img2img_inpaint_upload_tab-button").count() else page.get_by_role("tab", name="Inpaint upload").click()
    page.locator("#img_inpaint_base input[type=file]").set_input_files(str(tmp_path / "src.png"))
    page.locator("#img_inpaint_mask input[type=file]").set_input_files(str(tmp_path / "mask.png"))
    page.wait_for_timeout(1000)
    for eid, v in (("img2img_steps", 4), ("img2img_width", 64), ("img2img_height", 64), ("img2img_seed", 5),
                   ("img2img_mask_blur", 0)):
        set_number(page, eid, v)
    page.locator("#img2img_prompt textarea").fill("a green square")
    started = time.time() - 1
    page.click("#img2img_generate")
    page.wait_for_function("() => document.querySelector('#html_info_img2img').innerText.includes('Seed: 5')",
                           timeout=120_000)
    assert page.locator("#img2img_error").inner_text() == ""
    saved = newest_png(data_dir / "outputs" / "img2img-images", started)
    assert saved is not None
    out = np.asarray(Image.open(saved).convert("RGB"))
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(src)[outside])
    assert "Mask blur: 0" in Image.open(saved).info["parameters"]


def test_send_to_img2img_carries_image_and_parameters(page, data_dir):
    page.get_by_role("tab", name="txt2img").first.click()
    set_number(page, "txt2img_steps", 4)
    set_number(page, "txt2img_batch_count", 1)
    set_number(page, "txt2img_seed", 777)
    generate(page, data_dir, "a purple star on the left")
    page.click("#txt2img_send_to_img2img")
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea').value"
                           " === 'a purple star on the left'")
    page.wait_for_function("() => document.querySelector('#img2img_image img') !== null")
    assert page.locator("#img2img_seed input[type=number]").first.input_value() == "777"
