"""The real UI in a real browser (Playwright + Debian's chromium): generate, find the PNG, paste it back."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from output_files import newest_new_png, pngs
from page_helpers import pick_checkpoint, set_number
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]

pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium not installed "
                                "(apt-get install chromium); .ci/run installs it")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page per test: a page that has shown Gradio's image editors keeps the CPU busy drawing them, which
    slowed every later test of the module (and the server beside it) three- to five-fold."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(60_000)
    pg.goto(server)
    pg.wait_for_selector("#txt2img_prompt textarea")
    yield pg
    pg.close()


def generate(page, data_dir, prompt: str):
    page.locator("#txt2img_prompt textarea").fill(prompt)
    before_files = pngs(data_dir / "outputs" / "txt2img-images")
    before = page.locator("#txt2img_gallery img").count()
    page.click("#txt2img_generate")
    page.wait_for_function(
        "() => document.querySelector('#html_info_txt2img') && "
        "document.querySelector('#html_info_txt2img').innerText.includes('Seed:')", timeout=120_000)
    assert page.locator("#txt2img_gallery img").count() >= max(before, 1)
    # the info box may still show an earlier job's "Seed:" (an interrupted job returns its image too): the new
    # file is what says this job is done
    deadline = time.time() + 120
    while (saved := newest_new_png(data_dir / "outputs" / "txt2img-images", before_files)) is None \
            and time.time() < deadline:
        time.sleep(0.2)
    assert saved is not None, "the generated image was not saved under outputs/txt2img-images"
    page.wait_for_function(f"() => document.querySelector('#html_info_txt2img').innerText.includes("
                           f"'Seed: {saved.stem.split('-')[-1]}')", timeout=60_000)
    return saved


def test_generate_in_browser_then_paste_back(page, data_dir, server):
    # pick the tiny SD1 model from the checkpoint dropdown at the top
    pick_checkpoint(page, "tiny-sd1.safetensors")
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
    before_files = pngs(data_dir / "outputs" / "txt2img-images")
    page.click("#txt2img_generate")
    page.wait_for_function("() => document.querySelector('#html_info_txt2img').innerText.includes('Seed: 4242')"
                           " && document.querySelector('#txt2img_progress').innerText === ''")
    deadline = time.time() + 30
    again = None
    while again is None and time.time() < deadline:
        again = newest_new_png(data_dir / "outputs" / "txt2img-images", before_files)
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
    """Cards with A1111's sidecar files: the preview picture is shown, search finds the activation text, a click
    puts the LoRA's preferred weight and activation text into the prompt and its negative text into the negative
    prompt, a second click takes them out; the editor saves name.json; Replace preview saves the selected result
    as name.png; a hypernetwork card adds its tag, a checkpoint card switches the server's checkpoint."""
    import json

    from lora_factory import make_kohya_lora, tiny_pipeline
    pipe = tiny_pipeline(data_dir / "tmp-lora", "sd1", seed=1)
    lora_dir = data_dir / "models" / "Lora"
    make_kohya_lora(lora_dir / "cardtest.safetensors", pipe, rank=2, seed=3)
    make_kohya_lora(lora_dir / "plaincard.safetensors", pipe, rank=2, seed=4)
    make_kohya_lora(lora_dir / "styles" / "subcard.safetensors", pipe, rank=2, seed=5)
    Image.new("RGB", (40, 50), (220, 20, 20)).save(lora_dir / "cardtest.preview.png")
    (lora_dir / "cardtest.json").write_text(json.dumps({"activation text": "cardword", "preferred weight": 0.7,
                                                        "negative text": "ugly", "modelId": 77}))
    import hypernetwork_factory as hf
    hf.write(data_dir / "models" / "hypernetworks" / "cardnet.pt",
             {768: (hf.mlp_state(768, [(0, "linear", 768, 768)]),) * 2}, layer_structure=[1, 1])
    page.get_by_role("tab", name="txt2img").click()
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    page.locator("#txt2img_neg_prompt textarea").fill("blurry")
    page.click("#txt2img_extra_networks button, #txt2img_extra_networks .label-wrap")
    page.click("#txt2img_extra_refresh")
    card = page.locator("#txt2img_lora_cards .thumbnail-item", has_text="cardtest")
    card.wait_for()
    # the preview file is the card's picture (40 px wide); a card without one shows the 192-px placeholder
    widths = {}
    for name in ("cardtest", "plaincard"):
        img = page.locator("#txt2img_lora_cards .thumbnail-item", has_text=name).locator("img")
        page.wait_for_function("(im) => im.complete && im.naturalWidth > 0", arg=img.element_handle())
        widths[name] = img.evaluate("(im) => im.naturalWidth")
    assert widths == {"cardtest": 40, "plaincard": 192}
    # the Folder choice shows the cards of a sub-folder (A1111's folder buttons)
    page.locator("#txt2img_extra_folder input").click()
    page.get_by_role("option", name="styles", exact=True).click()
    page.wait_for_function("() => document.querySelectorAll('#txt2img_lora_cards .thumbnail-item').length === 1")
    assert "subcard" in page.locator("#txt2img_lora_cards").inner_text()
    page.locator("#txt2img_extra_folder input").click()
    page.get_by_role("option", name="All", exact=True).click()
    page.wait_for_function("() => document.querySelectorAll('#txt2img_lora_cards .thumbnail-item').length >= 3")
    search = page.locator("#txt2img_extra_search textarea, #txt2img_extra_search input").first
    search.fill("cardword")
    search.press("Enter")
    page.wait_for_function("() => document.querySelectorAll('#txt2img_lora_cards .thumbnail-item').length === 1")
    card.click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value"
                           " === 'a red circle <lora:cardtest:0.7> cardword'")
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "blurry (ugly:1)"
    card.click()             # a second click takes the card's text out of both prompts
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a red circle'")
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "blurry"
    # the editor shows the last card clicked: a new preferred weight is saved beside the file and used
    page.click("#txt2img_card_editor .label-wrap")
    assert page.locator("#txt2img_card_activation textarea, #txt2img_card_activation input").first.input_value() \
        == "cardword"
    weight = page.locator("#txt2img_card_weight input[type=number]")
    # the slider takes the typed number a moment later (a Save before that would send the old weight), and a number
    # typed while the freshly opened editor is still drawing can be lost: type it again until the slider has it
    for _ in range(5):
        weight.fill("0.4")
        weight.press("Enter")
        try:
            page.wait_for_function(
                "() => document.querySelector('#txt2img_card_weight input[type=range]').value === '0.4'", timeout=3000)
            break
        except PlaywrightTimeoutError:
            pass
    page.click("#txt2img_card_save")
    page.wait_for_function("() => document.querySelector('#txt2img_card_status').innerText.includes('cardtest.json')")
    saved = json.loads((lora_dir / "cardtest.json").read_text())
    assert saved["preferred weight"] == 0.4 and saved["activation text"] == "cardword" and saved["modelId"] == 77
    card.click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value"
                           " === 'a red circle <lora:cardtest:0.4> cardword'")
    # Replace preview: the selected result becomes cardtest.png, which the card then shows
    page.locator("#txt2img_prompt textarea").fill("a green square")
    folder = data_dir / "outputs" / "txt2img-images"
    before = pngs(folder)
    page.click("#txt2img_generate")
    page.wait_for_function("() => document.querySelector('#html_info_txt2img').innerText.includes('a green square')"
                           " && document.querySelector('#txt2img_progress').innerText.trim() === ''",
                           timeout=120_000)
    result = newest_new_png(folder, before)
    page.click("#txt2img_card_replace_preview")
    page.wait_for_function("() => document.querySelector('#txt2img_card_status').innerText.includes('cardtest.png')")
    with Image.open(lora_dir / "cardtest.png") as a, Image.open(result) as b:
        assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
        assert a.info["parameters"] == b.info["parameters"]           # the picture's infotext comes along
        result_width = b.size[0]
    search.fill("")
    search.press("Enter")
    page.wait_for_function("() => document.querySelectorAll('#txt2img_lora_cards .thumbnail-item').length >= 2")
    img = card.locator("img")
    page.wait_for_function(f"(im) => im.complete && im.naturalWidth === {result_width}", arg=img.element_handle())
    page.get_by_role("tab", name="Hypernetworks").first.click()
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    page.locator("#txt2img_hypernetwork_cards .thumbnail-item", has_text="cardnet").click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value"
                           " === 'a red circle <hypernet:cardnet:1>'")
    # a checkpoint card switches the server's checkpoint and the dropdown at the top
    import httpx
    current = httpx.get(server + "/sdapi/v1/options", timeout=30).json()["sd_model_checkpoint"]
    other = "tiny-sd1.safetensors" if "tiny-sd1." not in current else "shapes-tiny-v1.safetensors"
    page.get_by_role("tab", name="Checkpoints").first.click()
    page.locator("#txt2img_checkpoint_cards .thumbnail-item", has_text=other).first.click()
    deadline = time.time() + 60
    while other not in httpx.get(server + "/sdapi/v1/options", timeout=30).json()["sd_model_checkpoint"]:
        assert time.time() < deadline, "the checkpoint card did not switch the model"
        time.sleep(0.2)
    assert page.locator("#setting_sd_model_checkpoint input").input_value().startswith(other)


def upload_for_inpaint(page, folder, src: Image.Image, mask: Image.Image) -> None:
    """img2img's Inpaint upload sub-tab with ``src`` and ``mask`` uploaded (both previews shown)."""
    src.save(folder / "src.png")
    mask.save(folder / "mask.png")
    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Inpaint upload").click()
    page.locator("#img_inpaint_base input[type=file]").set_input_files(str(folder / "src.png"))
    page.locator("#img_inpaint_mask input[type=file]").set_input_files(str(folder / "mask.png"))
    page.wait_for_function("() => document.querySelector('#img_inpaint_base img')"
                           " && document.querySelector('#img_inpaint_mask img')")
    page.wait_for_timeout(1000)   # as before: the upload's change event settles


def test_inpaint_upload_in_browser(page, data_dir, tmp_path):
    from PIL import ImageDraw
    src = Image.new("RGB", (64, 64), (40, 60, 200))
    ImageDraw.Draw(src).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 28, 28), fill=255)
    upload_for_inpaint(page, tmp_path, src, mask)
    for eid, v in (("img2img_steps", 4), ("img2img_width", 64), ("img2img_height", 64), ("img2img_seed", 5),
                   ("img2img_mask_blur", 0)):
        set_number(page, eid, v)
    page.locator("#img2img_prompt textarea").fill("a green square")
    before_files = pngs(data_dir / "outputs" / "img2img-images")
    page.click("#img2img_generate")
    page.wait_for_function("() => document.querySelector('#html_info_img2img').innerText.includes('Seed: 5')",
                           timeout=120_000)
    assert page.locator("#img2img_error").inner_text() == ""
    saved = newest_new_png(data_dir / "outputs" / "img2img-images", before_files)
    assert saved is not None
    out = np.asarray(Image.open(saved).convert("RGB"))
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(src)[outside])
    assert "Mask blur: 0" in Image.open(saved).info["parameters"]



def test_img2img_batch_upload_with_png_info(page, data_dir, tmp_path):
    """The Batch tab's Upload source with "Append png info to prompts": both uploaded pictures are processed into
    the output folder; the one carrying an infotext gets its prompt appended and its seed, the other the form's."""
    from PIL import ImageDraw, PngImagePlugin
    pick_tiny_sd1(page)
    for name, colour, text in (("first", (220, 30, 30), "a red circle\nSteps: 3, Seed: 91, Size: 64x64"),
                               ("second", (30, 160, 50), None)):
        im = Image.new("RGB", (64, 64), (40, 60, 200))
        ImageDraw.Draw(im).ellipse((12, 12, 50, 50), fill=colour)
        info = PngImagePlugin.PngInfo()
        if text:
            info.add_text("parameters", text)
        im.save(tmp_path / f"{name}.png", pnginfo=info)
    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Batch", exact=True).first.click()
    page.get_by_role("tab", name="Upload", exact=True).first.click()
    page.locator("#img2img_batch_upload input[type=file]").set_input_files(
        [str(tmp_path / "first.png"), str(tmp_path / "second.png")])
    page.wait_for_function("() => document.querySelector('#img2img_batch_upload').innerText.includes('second')")
    out = tmp_path / "out"
    page.locator("#img2img_batch_output_dir textarea, #img2img_batch_output_dir input").first.fill(str(out))
    page.click("#img2img_batch_png_info .label-wrap")
    page.locator("#img2img_batch_use_png_info input[type=checkbox]").check()
    for prop in ("Prompt", "Seed"):
        page.locator("#img2img_batch_png_info_props").get_by_label(prop, exact=True).check()
    for eid, v in (("img2img_steps", 3), ("img2img_width", 64), ("img2img_height", 64), ("img2img_seed", 5)):
        set_number(page, eid, v)
    page.locator("#img2img_prompt textarea").fill("a green square")
    page.click("#img2img_generate")
    page.wait_for_function("() => document.querySelector('#html_info_img2img').innerText.includes("
                           "'2 image(s) processed')", timeout=120_000)
    assert page.locator("#img2img_error").inner_text() == ""
    first = Image.open(out / "first.png").info["parameters"]
    second = Image.open(out / "second.png").info["parameters"]
    assert first.startswith("a green square a red circle\n") and "Seed: 91," in first and "Steps: 3," in first
    assert second.startswith("a green square\n") and "Seed: 5," in second

def test_send_to_img2img_carries_image_and_parameters(page, data_dir):
    page.get_by_role("tab", name="txt2img").first.click()
    set_number(page, "txt2img_steps", 4)
    set_number(page, "txt2img_batch_count", 1)
    set_number(page, "txt2img_seed", 777)
    generate(page, data_dir, "a purple star on the left")
    page.click("#txt2img_send_to_img2img")
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea')?.value"
                           " === 'a purple star on the left'")   # null-safe: the tab renders after the click
    page.wait_for_function("() => document.querySelector('#img2img_image img') !== null")
    assert page.locator("#img2img_seed input[type=number]").first.input_value() == "777"


def pick_tiny_sd1(page) -> None:
    pick_checkpoint(page, "tiny-sd1.safetensors")


def paint_stroke(page, editor_id: str, image_path) -> None:
    """Upload a background into a Gradio ImageEditor and paint one horizontal stroke across its middle with the
    mouse (the brush tool is active after an upload), as a user does."""
    page.locator(f"#{editor_id} canvas").first.wait_for(state="visible")
    loaded = f"() => document.querySelector('#{editor_id} button[aria-label=\"Brush Size\"]') !== null"
    for attempt in range(3):   # the editor shows the brush size button once the background is in
        page.locator(f"#{editor_id} input[type=file]").set_input_files(str(image_path))
        try:
            page.wait_for_function(loaded, timeout=10_000)
            break
        except Exception:  # noqa: BLE001 - an upload the editor missed while it was still mounting: again
            if attempt == 2:
                raise
    page.wait_for_timeout(500)
    box = page.locator(f"#{editor_id} canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy)
    page.mouse.down()
    for k in range(1, 3):   # few pointer events: the software-rendered canvas takes ~0.35 s to redraw each one
        page.mouse.move(cx - 40 + k * 40, cy)
    page.mouse.up()
    page.wait_for_timeout(300)


def generate_img2img(page, data_dir, seed: int, **numbers):
    for eid, v in (("img2img_steps", 3), ("img2img_width", 64), ("img2img_height", 64), ("img2img_seed", seed),
                   *numbers.items()):
        set_number(page, eid, v)
    folder, init_folder = data_dir / "outputs" / "img2img-images", data_dir / "outputs" / "init-images"
    before, before_inits = pngs(folder), pngs(init_folder)
    page.click("#img2img_generate")
    page.wait_for_function(f"() => document.querySelector('#html_info_img2img').innerText.includes('Seed: {seed}')"
                           " || document.querySelector('#img2img_error .studio-error') !== null", timeout=240_000)
    assert page.locator("#img2img_error .studio-error").count() == 0, page.locator("#img2img_error").inner_text()
    saved = sorted(pngs(folder) - before)
    out = [f for f in saved if not f.stem.endswith("-mask")]
    masks = [f for f in saved if f.stem.endswith("-mask")]
    inits = sorted(pngs(init_folder) - before_inits)
    assert len(out) == 1, saved
    return out[0], (masks[0] if masks else None), inits


def test_sketch_inpaint_and_inpaint_sketch_painted_in_browser(page, data_dir, server, tmp_path):
    """The editors' painted layers, drawn with the mouse: Sketch's drawing becomes the init image, Inpaint's
    painted layer the mask, Inpaint sketch's both. The settings save_init_img / save_mask show what the engine
    got; the API given that init image (and mask) makes the same pixels."""
    import base64
    import io
    import json

    import httpx
    from PIL import ImageDraw
    blue = Image.new("RGB", (64, 64), (35, 70, 220))
    blue.save(tmp_path / "blue.png")
    circle = blue.copy()
    ImageDraw.Draw(circle).ellipse((16, 16, 48, 48), fill=(245, 220, 35))
    circle.save(tmp_path / "circle.png")

    def b64(path_or_image) -> str:
        im = Image.open(path_or_image) if not isinstance(path_or_image, Image.Image) else path_or_image
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return base64.b64encode(buf.getvalue()).decode()

    for old in (data_dir / "outputs" / "init-images").glob("*.png"):
        old.unlink()   # an init image is saved once per content: start from none
    opts = {"save_init_img": True, "save_mask": True}
    assert httpx.post(server + "/sdapi/v1/options", json=opts, timeout=60).status_code == 200
    try:
        pick_tiny_sd1(page)
        page.get_by_role("tab", name="img2img").first.click()
        page.locator("#img2img_prompt textarea").fill("a red blob")

        # Sketch: the red stroke (the first brush colour) is part of the init image
        page.locator("#img2img_img2img_sketch_tab-button").click()
        paint_stroke(page, "img2img_sketch", tmp_path / "blue.png")
        out, _, inits = generate_img2img(page, data_dir, 11, img2img_denoising_strength=0.6)
        assert len(inits) == 1
        init = np.asarray(Image.open(inits[0]).convert("RGB")).astype(int)
        red = np.abs(init - [220, 30, 30]).sum(-1) < 60
        assert red[32, 28:36].all() and not red[0].any() and (init[0] == [35, 70, 220]).all()
        r = httpx.post(server + "/sdapi/v1/img2img", timeout=120, json={
            "prompt": "a red blob", "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler a",
            "cfg_scale": 7, "denoising_strength": 0.6, "init_images": [b64(inits[0])],
            "override_settings": {"sd_model_checkpoint": "tiny-sd1"}})
        api = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert np.array_equal(np.asarray(api), np.asarray(Image.open(out)))
        assert json.loads(r.json()["info"])["infotexts"][0] == Image.open(out).info["parameters"]

        # Inpaint: the white stroke is the mask; outside it the picture comes back unchanged
        page.locator("#img2img_inpaint_tab-button").click()
        paint_stroke(page, "img2maskimg", tmp_path / "circle.png")
        out, mask_file, _ = generate_img2img(page, data_dir, 12, img2img_mask_blur=0,
                                             img2img_denoising_strength=0.9)
        mask = np.asarray(Image.open(mask_file).convert("L")) > 127
        assert mask[32, 28:36].all() and not mask[0].any() and mask.mean() < 0.9
        got, src = np.asarray(Image.open(out).convert("RGB")).astype(int), np.asarray(circle).astype(int)
        assert np.array_equal(got[~mask], src[~mask])
        assert np.abs(got[mask] - src[mask]).mean() > 1

        # Inpaint sketch: the coloured stroke is in the init image and is the mask
        page.locator("#img2img_inpaint_sketch_tab-button").click()
        paint_stroke(page, "inpaint_sketch", tmp_path / "circle.png")
        out, mask_file, inits = generate_img2img(page, data_dir, 13, img2img_mask_blur=0)
        mask = np.asarray(Image.open(mask_file).convert("L")) > 127
        init = np.asarray(Image.open(inits[0]).convert("RGB")).astype(int)
        assert mask[32, 28:36].all() and not mask[0].any()
        assert np.abs(init[mask] - src[mask]).sum(-1).mean() > 30, "the painted colour is in the init image"
        assert np.array_equal(init[~mask], src[~mask])
        got = np.asarray(Image.open(out).convert("RGB")).astype(int)
        assert np.array_equal(got[~mask], src[~mask])

        # the img2img gallery sends its image on to inpaint, and to extras
        page.click("#img2img_send_to_inpaint")
        page.wait_for_function("() => document.querySelector('#img2img_inpaint_tab-button')"
                               ".getAttribute('aria-selected') === 'true'")
        page.click("#img2img_send_to_extras")
        page.wait_for_function("() => document.querySelector('#extras_image img') !== null")
        assert page.locator("#tab_extras-button").get_attribute("aria-selected") == "true"
    finally:
        httpx.post(server + "/sdapi/v1/options", json={"save_init_img": False, "save_mask": False}, timeout=60)


def test_seed_extras_refiner_and_hires_checkpoint_go_from_pasted_text_to_the_job(page, data_dir, server):
    """An infotext with a variation seed, a refiner and a hires checkpoint, pasted into the prompt box (↙), sets
    "Extra", the refiner and hires fields; the job made from them is the API's job with the same fields, pixel for
    pixel; ♻️ takes back the seeds of the image in the gallery."""
    import base64
    import io

    import httpx
    page.get_by_role("tab", name="txt2img").first.click()
    pick_tiny_sd1(page)
    # A1111's short titles, as its infotexts name a refiner or hires checkpoint: the file's stem and short hash
    short = {m["model_name"]: f"{Path(m['filename']).stem} [{m['hash']}]"
             for m in httpx.get(server + "/sdapi/v1/sd-models", timeout=30).json()}
    hires = next(name for name in short if name.endswith("tiny-sd2v"))   # SD2 shares SD1's latent space
    text = ("a green square at the top\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 321, Size: 64x64, "
            "Model: tiny-sd1, Variation seed: 77, Variation seed strength: 0.4, Denoising strength: 0.6, "
            f"Hires upscale: 1, Hires upscaler: Latent, Hires checkpoint: {short[hires]}, "
            f"Refiner: {short['tiny-sd1-pickle']}, Refiner switch at: 0.5")
    page.locator("#txt2img_prompt textarea").fill(text)
    page.click("#txt2img_paste")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value"
                           " === 'a green square at the top'")
    assert page.locator("#txt2img_subseed_show input").is_checked()
    assert page.locator("#txt2img_subseed input[type=number]").first.input_value() == "77"
    assert page.locator("#txt2img_enable_refiner input").is_checked()
    assert page.locator("#txt2img_checkpoint input").input_value().startswith("tiny-sd1-pickle.ckpt [")
    assert page.locator("#txt2img_hr_checkpoint input").input_value().startswith("v2/tiny-sd2v.safetensors [")
    saved = generate(page, data_dir, "a green square at the top")
    made = Image.open(saved).info["parameters"]
    for key in ("Variation seed: 77", "Variation seed strength: 0.4", f"Hires checkpoint: {short[hires]}",
                f"Refiner: {short['tiny-sd1-pickle']}", "Refiner switch at: 0.5"):
        assert key in made, (key, made)
    r = httpx.post(server + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "a green square at the top", "steps": 4, "width": 64, "height": 64, "seed": 321,
        "subseed": 77, "subseed_strength": 0.4, "sampler_name": "Euler a", "enable_hr": True, "hr_scale": 1,
        "hr_upscaler": "Latent", "denoising_strength": 0.6, "hr_checkpoint_name": short[hires],
        "refiner_checkpoint": short["tiny-sd1-pickle"], "refiner_switch_at": 0.5,
        "override_settings": {"sd_model_checkpoint": "tiny-sd1"}})
    assert r.status_code == 200, r.text
    api_image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert np.array_equal(np.asarray(api_image), np.asarray(Image.open(saved)))
    # ♻️ takes the seeds of the image shown
    set_number(page, "txt2img_seed", 1)
    set_number(page, "txt2img_subseed", 2)
    page.click("#txt2img_reuse_seed")
    page.click("#txt2img_reuse_subseed")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input[type=number]').value === '321'"
                           " && document.querySelector('#txt2img_subseed input[type=number]').value === '77'")
    # unticking "Extra" and the refiner turns them off for the next job
    page.locator("#txt2img_subseed_show input").uncheck()
    page.locator("#txt2img_enable_refiner input").uncheck()
    again = generate(page, data_dir, "a green square at the top")
    made = Image.open(again).info["parameters"]
    assert "Variation seed" not in made and "Refiner" not in made and "Hires checkpoint" in made


def test_keyboard_shortcuts_edit_weights_and_generate(page, data_dir):
    """Ctrl+Up/Down weigh the word under the cursor, a selection or a LoRA tag (A1111's steps 0.1 and 0.05; back
    at 1 the brackets go); the edited text is what the job gets, started with Ctrl+Enter."""
    page.get_by_role("tab", name="txt2img").first.click()
    pick_tiny_sd1(page)
    for eid, v in (("txt2img_steps", 3), ("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_seed", 5)):
        set_number(page, eid, v)
    box = page.locator("#txt2img_prompt textarea")

    def press(text: str, caret: tuple[int, int], key: str) -> str:
        box.fill(text)
        box.evaluate("(el, c) => { el.focus(); el.setSelectionRange(c[0], c[1]); }", list(caret))
        box.press(key)
        return box.input_value()

    assert press("a red circle, blue background", (4, 4), "Control+ArrowUp") == "a (red:1.1) circle, blue background"
    assert press("a (red:1.1) circle", (5, 5), "Control+ArrowUp") == "a (red:1.2) circle"
    assert press("a (red:1.1) circle", (5, 5), "Control+ArrowDown") == "a red circle"
    assert press("a red circle, blue background", (2, 12), "Control+ArrowDown") == "a (red circle:0.9), blue background"
    assert press("a (red) circle", (4, 4), "Control+ArrowUp") == "a (red:1.2) circle"
    assert press("<lora:x:0.8> a cat", (3, 3), "Control+ArrowUp") == "<lora:x:0.85> a cat"
    # the last edit reaches the job: Ctrl+Enter generates with it
    assert press("a yellow square", (4, 4), "Control+ArrowUp") == "a (yellow:1.1) square"
    before = pngs(data_dir / "outputs" / "txt2img-images")
    box.press("Control+Enter")
    deadline = time.time() + 120
    while (saved := newest_new_png(data_dir / "outputs" / "txt2img-images", before)) is None \
            and time.time() < deadline:
        time.sleep(0.2)
    assert saved is not None, "Ctrl+Enter started no job"
    assert Image.open(saved).info["parameters"].startswith("a (yellow:1.1) square\n")
    # the first job's progress must be gone, or the Esc below could land before the next job is running
    page.wait_for_function("() => document.querySelector('#txt2img_progress').innerText.trim() === ''")
    # Esc interrupts the running job: a 60-image job (long enough that it cannot end before Esc lands, even on a
    # slow machine) stops early
    outputs = data_dir / "outputs" / "txt2img-images"
    before = pngs(outputs)
    set_number(page, "txt2img_batch_count", 60)
    set_number(page, "txt2img_steps", 20)
    box.press("Control+Enter")
    page.wait_for_function("() => document.querySelector('#txt2img_progress').innerText.trim() !== ''")
    deadline = time.time() + 60   # the job is surely the running one once it has saved a picture
    while not pngs(outputs) - before and time.time() < deadline:
        time.sleep(0.05)
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.querySelector('#txt2img_progress').innerText.trim() === ''",
                           timeout=120_000)
    made = pngs(outputs) - before
    set_number(page, "txt2img_batch_count", 1)
    assert len(made) < 60, f"Esc did not interrupt the job: it made all {len(made)} images"


def test_png_info_sends_to_img2img_inpaint_and_extras(page, tmp_path):
    """PNG Info's other send buttons, as A1111's: the image and its parameters go to img2img or inpaint, the image
    to Extras."""
    from PIL.PngImagePlugin import PngInfo
    meta = PngInfo()
    meta.add_text("parameters", "a white star at the bottom\nNegative prompt: blurry\nSteps: 7, Sampler: Euler a, "
                                "CFG scale: 6, Seed: 4321, Size: 64x64, Model: tiny-sd1")
    path = tmp_path / "made-elsewhere.png"
    Image.new("RGB", (64, 64), (20, 200, 40)).save(path, pnginfo=meta)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    page.wait_for_function("() => document.querySelector('#pnginfo_generation_info textarea')"
                           ".value.includes('Seed: 4321')")
    page.click("#img2img_tab")
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea')?.value"
                           " === 'a white star at the bottom'")
    page.wait_for_function("() => document.querySelector('#img2img_image img') !== null")
    assert page.locator("#img2img_seed input[type=number]").first.input_value() == "4321"
    assert page.locator("#img2img_neg_prompt textarea").input_value() == "blurry"
    assert page.locator("#img2img_steps input[type=number]").first.input_value() == "7"
    set_number(page, "img2img_seed", 1)
    page.get_by_role("tab", name="PNG Info").click()
    page.click("#inpaint_tab")
    page.wait_for_function("() => document.querySelector('#img2maskimg canvas') !== null"
                           " && document.querySelector('#img2maskimg').offsetParent !== null")
    page.wait_for_function("() => document.querySelector('#img2img_seed input[type=number]').value === '4321'")
    page.once("dialog", lambda d: d.dismiss())   # 🗑️ asks first: "no" keeps the prompts
    page.click("#img2img_clear_prompt")
    page.wait_for_timeout(500)
    assert page.locator("#img2img_prompt textarea").input_value() == "a white star at the bottom"
    page.once("dialog", lambda d: d.accept())    # "yes" empties both prompt boxes
    page.click("#img2img_clear_prompt")
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea').value === ''"
                           " && document.querySelector('#img2img_neg_prompt textarea').value === ''")
    page.get_by_role("tab", name="PNG Info").click()
    page.click("#extras_tab")
    page.wait_for_function("() => document.querySelector('#extras_image img') !== null"
                           " && document.querySelector('#extras_image').offsetParent !== null")


def test_generate_forever_from_the_context_menu(page, data_dir):
    """Right-click on Generate: "Generate forever" starts a job whenever the last one ended, "Cancel generate
    forever" stops it; the job running then finishes and no other starts."""
    page.get_by_role("tab", name="txt2img").first.click()
    pick_tiny_sd1(page)
    for eid, v in (("txt2img_steps", 3), ("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_seed", -1),
                   ("txt2img_batch_count", 1)):
        set_number(page, eid, v)
    page.locator("#txt2img_prompt textarea").fill("a blue circle")
    folder = data_dir / "outputs" / "txt2img-images"
    before = pngs(folder)

    def made() -> int:
        return len(pngs(folder) - before)

    page.click("#txt2img_generate", button="right")
    page.get_by_role("menuitem", name="Generate forever", exact=True).click()
    deadline = time.time() + 120
    while made() < 3 and time.time() < deadline:
        time.sleep(0.2)
    assert made() >= 3, "generate forever keeps starting jobs"
    page.click("#txt2img_generate", button="right")
    # the loop's next click on Generate (made while the menu is open) must leave the menu open
    opened = made()
    deadline = time.time() + 60
    while made() <= opened and time.time() < deadline:
        time.sleep(0.2)
    page.get_by_role("menuitem", name="Cancel generate forever").click(timeout=5000)
    page.wait_for_function("() => document.querySelector('#txt2img_progress').innerText.trim() === ''")
    time.sleep(3)
    count = made()
    time.sleep(3)
    assert made() == count, "no job starts after cancelling"


def test_img2img_resize_by_scales_the_input_image(page, data_dir, tmp_path):
    """img2img's "Resize by": the job's size is the input image's times the scale, floored to multiples of 8."""
    pick_tiny_sd1(page)
    page.get_by_role("tab", name="img2img").first.click()
    source = tmp_path / "wide.png"
    Image.new("RGB", (96, 64), (200, 40, 40)).save(source)
    page.locator("#img2img_image input[type=file]").set_input_files(str(source))
    page.wait_for_function("() => document.querySelector('#img2img_image img') !== null")
    page.locator("#img2img_prompt textarea").fill("a red square")
    page.get_by_role("tab", name="Resize by").click()
    set_number(page, "img2img_scale", 1.5)
    page.wait_for_function("() => document.querySelector('#img2img_scale_resolution_preview')"
                           ".innerText.includes('from 96x64 to 144x96')")
    saved, _, _ = generate_img2img(page, data_dir, 6161, img2img_steps=2)
    assert Image.open(saved).size == (144, 96), "the width and height sliders (64x64) are not what Resize by uses"
    assert "Size: 144x96" in Image.open(saved).info["parameters"]


def test_quicksettings_bar_shows_the_vae_and_saves_clip_skip_at_once(page, data_dir, server):
    """The settings of quicksettings_list (A1111's; here the checkpoint, SD VAE and Clip skip by default) sit at the
    top of the page, not in the Settings tab, and a change is saved at once: the next job uses it."""
    import httpx
    assert page.locator("#quicksettings #setting_sd_vae").count() == 1
    assert page.locator("#settings_section_stable_diffusion #setting_CLIP_stop_at_last_layers").count() == 0
    pick_tiny_sd1(page)
    try:
        set_number(page, "setting_CLIP_stop_at_last_layers", 2)
        deadline = time.time() + 30
        while httpx.get(server + "/sdapi/v1/options", timeout=30).json()["CLIP_stop_at_last_layers"] != 2:
            assert time.time() < deadline, "the quicksetting was not saved"
            time.sleep(0.2)
        for eid, v in (("txt2img_steps", 2), ("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_seed", 8)):
            set_number(page, eid, v)
        saved = generate(page, data_dir, "a black square")
        assert "Clip skip: 2" in Image.open(saved).info["parameters"]
    finally:
        httpx.post(server + "/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}, timeout=30)


def test_save_and_zip_buttons_save_the_selected_image_or_all_and_offer_them_for_download(page, data_dir, server):
    """A1111's 💾 and 🗃️ under the gallery: the selected picture (or, with the grid or nothing selected, every
    image) is copied with its infotext into log/images, a row goes into its log.csv, and the files (the zip first)
    are offered for download."""
    import csv
    import io
    import zipfile
    page.get_by_role("tab", name="txt2img").first.click()
    page.click("#save_txt2img")     # nothing generated on this page yet
    page.wait_for_function("() => document.querySelector('#html_log_txt2img').innerText.includes('no images')")
    pick_tiny_sd1(page)
    for eid, v in (("txt2img_steps", 3), ("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_seed", 900),
                   ("txt2img_batch_count", 2)):
        set_number(page, eid, v)
    page.locator("#txt2img_prompt textarea").fill("a green square")
    page.click("#txt2img_generate")
    try:
        page.wait_for_function("() => document.querySelector('#html_info_txt2img').innerText.includes('Seed: 900')"
                               " && document.querySelector('#txt2img_progress').innerText.trim() === ''",
                               timeout=120_000)
    finally:
        set_number(page, "txt2img_batch_count", 1)
    page.wait_for_function("() => document.querySelectorAll('#txt2img_gallery .thumbnail-item').length >= 3")
    page.locator("#txt2img_gallery .thumbnail-item").nth(2).click()        # grid, seed 900, seed 901
    page.click("#save_txt2img")
    page.wait_for_function("() => document.querySelector('#html_log_txt2img').innerText.includes('Saved:')")
    folder = data_dir / "log" / "images"
    saved = sorted(folder.glob("*.png"))
    assert [f.name for f in saved] == ["00000-901-a green square.png"]
    assert page.locator("#html_log_txt2img .studio-info").inner_text().strip() == "Saved: 00000-901-a green square.png"
    made = next((data_dir / "outputs" / "txt2img-images").rglob("*-901.png"))
    with Image.open(saved[0]) as im, Image.open(made) as original:
        assert im.info["parameters"] == original.info["parameters"] and "Seed: 901" in im.info["parameters"]
        assert np.array_equal(np.asarray(im), np.asarray(original))
    rows = list(csv.reader(io.StringIO((folder / "log.csv").read_text(encoding="utf-8"))))
    assert rows[1][:4] == ["a green square", "901", "64", "64"] and rows[1][7] == saved[0].name
    link = page.locator("#download_files_txt2img a").first
    link.wait_for()
    assert page.request.get(link.get_attribute("href")).body() == saved[0].read_bytes()
    # the grid selected: 🗃️ saves all three and packs them
    page.locator("#txt2img_gallery .thumbnail-item").nth(0).click()
    page.click("#save_zip_txt2img")
    page.wait_for_function("() => document.querySelector('#html_log_txt2img').innerText.includes('grid-0000')")
    archive = next(folder.glob("*.zip"))
    assert archive.name.endswith("_[tiny-sd1]_900-901.zip")
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["00001-900-a green square.png", "00002-901-a green square.png",
                                        "grid-0000.png"]
    zipped = page.locator('#download_files_txt2img a[download$=".zip"]')
    zipped.wait_for()
    assert page.request.get(zipped.get_attribute("href")).body() == archive.read_bytes()


def test_upscale_button_runs_the_selected_picture_through_the_hires_fix(page, data_dir):
    """A1111's ✨ on txt2img: the selected gallery picture, with its own seed, goes through the hires fix as the form
    sets it (the first pass is that picture, not sampled again); the result takes its place in the gallery."""
    page.get_by_role("tab", name="txt2img").first.click()
    page.click("#txt2img_upscale")      # nothing generated on this page yet
    page.wait_for_function("() => document.querySelector('#txt2img_error').innerText.includes('no image to upscale')")
    pick_checkpoint(page, "shapes-tiny-v1.safetensors")
    for eid, v in (("txt2img_steps", 10), ("txt2img_width", 128), ("txt2img_height", 128), ("txt2img_seed", 40),
                   ("txt2img_batch_count", 2)):
        set_number(page, eid, v)
    # no colour or place named: the two seeds draw different pictures (mean difference about 40)
    page.locator("#txt2img_prompt textarea").fill("a large circle")
    folder = data_dir / "outputs" / "txt2img-images"
    before = pngs(folder)
    page.click("#txt2img_generate")
    try:
        page.wait_for_function("() => document.querySelector('#html_info_txt2img').innerText.includes('Seed: 40')"
                               " && document.querySelector('#txt2img_progress').innerText.trim() === ''",
                               timeout=120_000)
    finally:
        set_number(page, "txt2img_batch_count", 1)
    firsts = {int(f.stem.split("-")[-1]): f for f in pngs(folder) - before}
    assert sorted(firsts) == [40, 41]
    # the hires settings the ✨ job takes (its Enable box stays off): Lanczos, x2, a light second pass
    page.locator("#txt2img_hr").get_by_text("Hires. fix").first.click()
    page.locator("#txt2img_hr_upscaler input").click()
    page.get_by_role("option", name="Lanczos", exact=True).first.click()
    set_number(page, "txt2img_denoising_strength", 0.3)
    set_number(page, "txt2img_seed", 999)           # ✨ takes the picture's own seed, not the form's
    page.wait_for_function("() => document.querySelectorAll('#txt2img_gallery .thumbnail-item').length === 3")
    page.locator("#txt2img_gallery .thumbnail-item").nth(2).click()          # grid, seed 40, seed 41
    before = pngs(folder)
    page.click("#txt2img_upscale")
    page.wait_for_function("() => document.querySelector('#html_info_txt2img').innerText.includes('Hires upscale')"
                           " && document.querySelector('#txt2img_progress').innerText.trim() === ''",
                           timeout=120_000)
    made = sorted(pngs(folder) - before)
    assert len(made) == 1
    with Image.open(made[0]) as im:
        text = im.info["parameters"]
        big = np.asarray(im.convert("RGB").resize((128, 128), Image.Resampling.BOX)).astype(float)
        assert im.size == (256, 256)
    assert "Seed: 41," in text and "Hires upscale: 2" in text and "Hires upscaler: Lanczos" in text
    assert "Denoising strength: 0.3" in text
    info = page.locator("#html_info_txt2img").inner_text()
    assert "Seed: 41," in info and "Size: 128x128" in info
    # it is the picture of seed 41 made larger, not a new one and not seed 40's
    dist = {s: np.abs(big - np.asarray(Image.open(f).convert("RGB")).astype(float)).mean() for s, f in firsts.items()}
    assert dist[41] < 12 and dist[41] < dist[40] / 2, (dist, text)
    # the gallery keeps the grid and seed 40's picture; the third item is the 256-px result
    thumbs = "[...document.querySelectorAll('#txt2img_gallery .thumbnail-lg img')]"
    page.wait_for_function(f"() => {thumbs}.length === 3 && {thumbs}.every(img => img.complete && img.naturalWidth)")
    widths = page.evaluate(f"() => {thumbs}.map(img => img.naturalWidth)")
    assert widths == [256, 128, 256]          # the grid (two 128-px pictures), seed 40's, the upscaled one
    page.locator("#txt2img_gallery .thumbnail-item").nth(2).click()
    page.click("#txt2img_send_to_img2img")
    page.wait_for_function("() => document.querySelector('#img2img_seed input[type=number]')?.value === '41'")


def test_a_page_opens_on_the_checkpoint_in_use_now(browser, server):
    """The checkpoint dropdown shows the model in use when the page opens, not the one when the server started:
    choosing the one it wrongly showed would otherwise change nothing."""
    import requests
    for name in ("tiny-sd1.safetensors", "shapes-tiny-v1.safetensors"):
        r = requests.post(f"{server}/sdapi/v1/options", json={"sd_model_checkpoint": name}, timeout=120)
        assert r.status_code == 200, r.text
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            pg.goto(server)
            pg.wait_for_function("(n) => document.querySelector('#setting_sd_model_checkpoint input')?.value"
                                 ".startsWith(n)", arg=name, timeout=60_000)
        finally:
            pg.close()


def test_copy_image_to_another_img2img_sub_tab(page, data_dir, server, tmp_path):
    """A1111's "Copy image to:" row: the picture goes to the chosen sub-tab, which opens, and a job from there uses
    it: a stroke painted over the copied picture in Inpaint is the mask, and outside it the picture comes back."""
    import httpx
    from PIL import ImageDraw
    src = Image.new("RGB", (64, 64), (35, 70, 220))
    ImageDraw.Draw(src).rectangle((8, 8, 30, 30), fill=(240, 200, 30))
    src.save(tmp_path / "src.png")
    opts = {"save_init_img": True, "save_mask": True}
    assert httpx.post(server + "/sdapi/v1/options", json=opts, timeout=60).status_code == 200
    try:
        pick_tiny_sd1(page)
        page.get_by_role("tab", name="img2img").first.click()
        page.locator("#img2img_image input[type=file]").set_input_files(str(tmp_path / "src.png"))
        page.wait_for_function("() => document.querySelector('#img2img_image img') !== null")
        page.click("#img2img_copy_img2img_to_inpaint")
        page.wait_for_function("() => document.querySelector('#img2img_inpaint_tab-button')"
                               ".getAttribute('aria-selected') === 'true'")
        page.wait_for_function("() => document.querySelector('#img2maskimg button[aria-label=\"Brush Size\"]')"
                               " !== null")
        page.wait_for_timeout(500)
        box = page.locator("#img2maskimg canvas").first.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx - 40, cy)
        page.mouse.down()
        for k in range(1, 3):
            page.mouse.move(cx - 40 + k * 40, cy)
        page.mouse.up()
        page.wait_for_timeout(300)
        page.locator("#img2img_prompt textarea").fill("a red blob")
        out, mask_file, _ = generate_img2img(page, data_dir, 21, img2img_mask_blur=0, img2img_denoising_strength=0.9)
        assert mask_file is not None, "the job did not run as inpaint"
        mask = np.asarray(Image.open(mask_file).convert("L")) > 127
        assert mask[32, 28:36].all() and not mask[0].any()
        got, want = np.asarray(Image.open(out).convert("RGB")).astype(int), np.asarray(src).astype(int)
        assert np.array_equal(got[~mask], want[~mask])
    finally:
        httpx.post(server + "/sdapi/v1/options", json={"save_init_img": False, "save_mask": False}, timeout=60)


def test_soft_inpainting_settings_paste_and_reach_the_job(page, data_dir, tmp_path):
    """The img2img tab's Soft inpainting: an infotext's keys pasted with ↙ tick it and set its sliders; the
    job then runs with it and writes the keys back."""
    from PIL import ImageDraw
    src = Image.new("RGB", (64, 64), (40, 60, 200))
    ImageDraw.Draw(src).ellipse((8, 16, 40, 48), fill=(220, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((32, 0, 63, 63), fill=255)
    upload_for_inpaint(page, tmp_path, src, mask)
    pasted = ("a red circle\nSteps: 3, Sampler: Euler a, CFG scale: 5, Seed: 11, Size: 64x64, Model: tiny-sd1, "
              "Soft inpainting enabled: True, Soft inpainting schedule bias: 1.5, Soft inpainting preservation "
              "strength: 0.5, Soft inpainting transition contrast boost: 4, Soft inpainting mask influence: 0, "
              "Soft inpainting difference threshold: 0.75, Soft inpainting difference contrast: 2")
    page.locator("#img2img_prompt textarea").fill(pasted)
    page.click("#img2img_paste")
    page.click("#soft_inpainting .label-wrap")   # the accordion draws its contents once opened
    page.wait_for_function("() => document.querySelector('#soft_inpainting_enabled input[type=checkbox]')?.checked")
    page.wait_for_function("() => document.querySelector('#composite_difference_threshold input[type=number]')"
                           "?.value === '0.75'")
    assert page.locator("#mask_blend_power input[type=number]").input_value() == "1.5"
    set_number(page, "img2img_mask_blur", 4)
    page.click("#img2img_generate")
    page.wait_for_function("() => document.querySelector('#html_info_img2img').innerText.includes('Seed: 11')",
                           timeout=120_000)
    info = page.locator("#html_info_img2img").inner_text()
    assert page.locator("#img2img_error").inner_text() == ""
    assert "Soft inpainting enabled: True" in info and "Soft inpainting difference threshold: 0.75" in info
    assert "Soft inpainting schedule bias: 1.5" in info
    # untick: the next job runs without it
    page.locator("#soft_inpainting_enabled input[type=checkbox]").uncheck()
    set_number(page, "img2img_seed", 12)
    page.click("#img2img_generate")
    page.wait_for_function("() => document.querySelector('#html_info_img2img').innerText.includes('Seed: 12')",
                           timeout=120_000)
    assert "Soft inpainting" not in page.locator("#html_info_img2img").inner_text()
