"""The Extras tab and the SD upscale tab in a real browser (Playwright + Debian's chromium): upload, pick an
upscaler, run, and find the saved PNG at the right size."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from output_files import newest_new_png, pngs
from page_helpers import pick_checkpoint, set_number
from PIL import Image, ImageDraw

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


def choose(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=True).first.click()


def source(tmp_path, w=40, h=30):
    im = Image.new("RGB", (w, h), (20, 60, 200))
    ImageDraw.Draw(im).ellipse((8, 6, 30, 24), fill=(230, 30, 30))
    path = tmp_path / "src.png"
    im.save(path)
    return im, path


def test_extras_tab_upscales_and_saves(page, data_dir, tmp_path):
    im, path = source(tmp_path)
    page.get_by_role("tab", name="Extras", exact=True).click()
    page.locator("#extras_image input[type=file]").set_input_files(str(path))
    page.wait_for_timeout(1000)
    choose(page, "extras_upscaler_1", "Nearest")
    set_number(page, "extras_upscaling_resize", 3)
    before = pngs(data_dir / "outputs" / "extras-images")
    page.click("#extras_generate")
    page.wait_for_function("() => document.querySelector('#html_info_extras') && "
                           "document.querySelector('#html_info_extras').innerText.includes('Postprocess upscaler')",
                           timeout=120_000)
    assert "Postprocess upscale by: 3" in page.locator("#html_info_extras").inner_text()
    saved = newest_new_png(data_dir / "outputs" / "extras-images", before)
    assert saved is not None, "the Extras result was not saved under outputs/extras-images"
    with Image.open(saved) as out:
        assert out.size == (120, 90)
        expected = im.resize((120, 90), Image.Resampling.NEAREST)
        assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(expected))
    assert page.locator("#extras_gallery img").count() >= 1


def test_sd_upscale_tab_runs_the_script(page, data_dir, tmp_path):
    im, path = source(tmp_path, 32, 32)
    page.get_by_role("tab", name="SD upscale", exact=True).click()
    page.locator("#sd_upscale_image input[type=file]").set_input_files(str(path))
    page.wait_for_timeout(1000)
    pick_checkpoint(page, "tiny-sd1.safetensors")
    for eid, v in (("sd_upscale_steps", 3), ("sd_upscale_width", 64), ("sd_upscale_height", 64),
                   ("sd_upscale_denoising_strength", 0), ("sd_upscale_overlap", 16), ("sd_upscale_seed", 7)):
        set_number(page, eid, v)
    page.locator("#sd_upscale_upscaler").get_by_text("Lanczos", exact=True).click()
    before = pngs(data_dir / "outputs" / "img2img-images")
    page.click("#sd_upscale_generate")
    page.wait_for_function("() => document.querySelector('#html_info_sd_upscale') && "
                           "document.querySelector('#html_info_sd_upscale').innerText.includes('SD upscale')",
                           timeout=180_000)
    text = page.locator("#html_info_sd_upscale").inner_text()
    assert "SD upscale upscaler: Lanczos" in text and "64x64" in text
    saved = newest_new_png(data_dir / "outputs" / "img2img-images", before)
    assert saved is not None
    with Image.open(saved) as out:
        assert out.size == (64, 64)
        # denoising 0: the plain Lanczos upscale
        expected = im.resize((64, 64), Image.Resampling.LANCZOS)
        assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(expected))


def test_extras_tab_flipped_copies_and_split(page, data_dir, tmp_path):
    """Extras' "Create flipped copies" and "Split oversized images" from the tab: the copies and pieces are shown
    and saved."""
    im = Image.new("RGB", (60, 180), (20, 60, 200))
    ImageDraw.Draw(im).rectangle((0, 0, 59, 59), fill=(230, 30, 30))
    path = tmp_path / "tall.png"
    im.save(path)
    page.get_by_role("tab", name="Extras", exact=True).click()
    page.locator("#extras_image input[type=file]").set_input_files(str(path))
    page.wait_for_timeout(1000)
    page.get_by_role("tab", name="Scale to").click()
    set_number(page, "extras_upscaling_resize_w", 64)
    set_number(page, "extras_upscaling_resize_h", 64)
    choose(page, "extras_upscaler_1", "Lanczos")
    page.locator("#extras_split_oversized").get_by_text("Split oversized images").first.click()
    page.locator("#extras_split_enable input").check()
    page.locator("#extras_flipped_copies").get_by_text("Create flipped copies").first.click()
    page.locator("#extras_flip_enable input").check()
    before = pngs(data_dir / "outputs" / "extras-images")
    page.click("#extras_generate")
    page.wait_for_function("() => (document.querySelector('#html_info_extras') || {innerText: ''})"
                           ".innerText.includes('Postprocess split: 4')", timeout=120_000)
    made = sorted(pngs(data_dir / "outputs" / "extras-images") - before)
    assert len(made) == 8                       # 4 pieces (192 px long at 64 wide), each with its mirror
    first, mirror = (np.asarray(Image.open(f).convert("RGB")).astype(int) for f in made[:2])
    assert first.shape == (64, 64, 3) and first[..., 0].mean() > 150          # the top piece is the red one
    assert np.array_equal(mirror, first[:, ::-1])
