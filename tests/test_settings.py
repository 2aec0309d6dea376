"""Settings: config.json, GET/POST /sdapi/v1/options, per-request override_settings that never persist, and the
Settings tab (values refreshed from the saved settings, search, reset, apply). A change surviving a restart of
the studio is checked in tests/test_extensions.py, whose studio restarts anyway ("Apply and restart UI")."""
from __future__ import annotations

import json
import shutil

import httpx
import pytest

from webui.config.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
SD1 = {"sd_model_checkpoint": "tiny-sd1.safetensors"}


def test_settings_validate_all_or_nothing_and_overrides_copy(tmp_path):
    s = Settings(tmp_path / "config.json")
    with pytest.raises(ValueError, match="jpeg_quality"):
        s.update({"samples_format": "webp", "jpeg_quality": 500})
    assert s["samples_format"] == "png" and not (tmp_path / "config.json").exists()
    opts = s.with_overrides({"jpeg_quality": 10})
    assert opts["jpeg_quality"] == 10 and s["jpeg_quality"] == 80
    s.update({"jpeg_quality": 55, "some_extension_key": "kept"})
    again = Settings(tmp_path / "config.json")     # what a restart reads
    assert again["jpeg_quality"] == 55 and again.get("some_extension_key") == "kept"


def options(server) -> dict:
    return httpx.get(server + "/sdapi/v1/options", timeout=30).json()


def test_api_change_is_saved_and_overrides_are_not(server, data_dir):
    config = data_dir / "config.json"
    before = options(server)
    try:
        r = httpx.post(server + "/sdapi/v1/options", json={"jpeg_quality": 55}, timeout=30)
        assert r.status_code == 200, r.text
        assert json.loads(config.read_text())["jpeg_quality"] == 55 and options(server)["jpeg_quality"] == 55
        bad = httpx.post(server + "/sdapi/v1/options", json={"jpeg_quality": 0, "samples_format": "webp"},
                         timeout=30)
        assert bad.status_code == 422 and "jpeg_quality" in bad.json()["detail"]
        assert options(server)["samples_format"] == before["samples_format"]     # nothing of a bad batch applied
        saved = config.read_text()
        r = httpx.post(server + "/sdapi/v1/txt2img", timeout=300, json={
            "prompt": "x", "steps": 1, "width": 64, "height": 64, "seed": 1,
            "override_settings": {**SD1, "jpeg_quality": 10, "CLIP_stop_at_last_layers": 2}})
        assert r.status_code == 200, r.text
        assert "Clip skip: 2" in json.loads(r.json()["info"])["infotexts"][0]
        after = options(server)
        assert after["jpeg_quality"] == 55 and after["CLIP_stop_at_last_layers"] == before["CLIP_stop_at_last_layers"]
        assert after["sd_model_checkpoint"] == before["sd_model_checkpoint"]
        assert config.read_text() == saved
    finally:
        httpx.post(server + "/sdapi/v1/options", json={"jpeg_quality": before["jpeg_quality"]}, timeout=30)


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium not installed")
def test_settings_tab_shows_saved_values_search_reset_apply(server, data_dir):
    from playwright.sync_api import sync_playwright
    before = options(server)
    httpx.post(server + "/sdapi/v1/options", json={"jpeg_quality": 55, "samples_format": "webp"}, timeout=30)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(server)      # the page was built before the change: values come from the saved settings
            page.click("#tab_settings-button")
            quality = page.locator("#setting_jpeg_quality input[type=number]").first
            quality.wait_for()
            page.wait_for_function("() => document.querySelector('#setting_jpeg_quality input[type=number]')"
                                   ".value === '55'")
            assert page.locator("#setting_samples_format input").first.input_value() == "webp"
            # search: only matching settings (and their sections) stay visible
            search = page.locator("#settings_search textarea, #settings_search input").first
            search.fill("jpeg")
            page.locator("#setting_samples_save").wait_for(state="hidden")
            assert page.locator("#setting_jpeg_quality").is_visible()
            assert page.locator("#settings_section_live_previews").is_hidden()
            search.fill("")
            page.locator("#setting_samples_save").wait_for(state="visible")
            # reset shows the defaults; apply saves them
            page.click("#settings_reset_defaults")
            page.wait_for_function("() => document.querySelector('#setting_jpeg_quality input[type=number]')"
                                   ".value === '80'")
            assert options(server)["jpeg_quality"] == 55          # not saved until Apply
            page.click("#settings_submit")
            page.wait_for_function("() => document.querySelector('#settings_result').innerText"
                                   ".includes('jpeg_quality')")
            browser.close()
        saved = json.loads((data_dir / "config.json").read_text())
        assert saved["jpeg_quality"] == 80 and saved["samples_format"] == "png"
    finally:
        httpx.post(server + "/sdapi/v1/options", timeout=30, json={
            k: before[k] for k in ("jpeg_quality", "samples_format", "sd_model_checkpoint", "sd_vae")})


@pytest.mark.parametrize("period, expected", [(2, 2), (10, 0), (0, 0), (-1, 0)])
def test_live_preview_period(engine, period, expected):
    """show_progress_every_n_steps as A1111 reads it: a preview every N steps (none at the last step, the image
    itself comes then); -1 ("only after a batch") and 0 make none while sampling."""
    from webui.core.request import GenerationRequest

    req = GenerationRequest(prompt="a red circle", steps=6, width=64, height=64, seed=1,
                            override_settings={**SD1, "live_previews_enable": True,
                                               "show_progress_every_n_steps": period})
    engine.txt2img(req, save=False)
    assert engine.jobs.last.progress.preview_id == expected
