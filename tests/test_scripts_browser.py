"""Scripts in the real UI: the X/Y/Z plot tab makes a labelled grid, and the txt2img Script dropdown runs the
prompt matrix (Playwright + Debian's chromium)."""
from __future__ import annotations

import shutil

import pytest
from output_files import newest_new_png, pngs
from page_helpers import pick_checkpoint, set_number
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]

pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium not installed")


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        pg.goto(server)
        pg.wait_for_selector("#txt2img_prompt textarea")
        pick_checkpoint(pg, "tiny-sd1.safetensors")
        yield pg
        browser.close()


def test_xyz_tab_makes_a_labelled_grid(page, data_dir):
    page.get_by_role("tab", name="X/Y/Z plot").click()
    for eid, v in (("xyz_plot_steps", 2), ("xyz_plot_width", 64), ("xyz_plot_height", 64), ("xyz_plot_seed", 77)):
        set_number(page, eid, v)
    page.locator("#xyz_plot_prompt textarea").fill("a red circle")
    page.locator("#xyz_plot_x_values textarea, #xyz_plot_x_values input").first.fill("1, 2, 3")
    before = pngs(data_dir / "outputs" / "txt2img-grids")
    page.click("#xyz_plot_generate")
    page.wait_for_function("() => (document.querySelector('#html_info_xyz_plot') || {innerText: ''})"
                           ".innerText.includes('X Type: Seed')", timeout=180_000)
    grid = newest_new_png(data_dir / "outputs" / "txt2img-grids", before)
    assert grid is not None
    im = Image.open(grid)
    assert im.width > 3 * 64 - 1 and im.height > 64
    assert "Fixed X Values: \"1, 2, 3\"" in im.info["parameters"]


def test_script_dropdown_runs_prompt_matrix(page, data_dir):
    page.get_by_role("tab", name="txt2img").first.click()
    for eid, v in (("txt2img_steps", 2), ("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_seed", 5)):
        set_number(page, eid, v)
    page.locator("#tab_txt2img #script_list input").click()
    page.get_by_role("option", name="Prompt matrix", exact=True).click()
    page.wait_for_selector("#script_txt2img_prompt_matrix_put_at_start", state="visible")
    page.locator("#txt2img_prompt textarea").fill("a circle | red")
    before = pngs(data_dir / "outputs" / "txt2img-grids")
    page.click("#txt2img_generate")
    page.wait_for_function("() => document.querySelector('#html_info_txt2img').innerText.includes('Seed: 5')",
                           timeout=180_000)
    page.wait_for_timeout(500)
    assert page.locator("#txt2img_gallery img").count() >= 3      # the labelled grid, then both images
    grid = newest_new_png(data_dir / "outputs" / "txt2img-grids", before)
    assert grid is not None and Image.open(grid).size[1] > 64          # a header band above the cells
