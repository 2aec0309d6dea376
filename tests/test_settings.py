"""Settings: config.json, GET/POST /sdapi/v1/options, the Settings tab (search, apply, reset) after a restart,
and per-request override_settings that never persist."""
from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest
from conftest import start_server

from webui.config.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_settings_validate_all_or_nothing_and_overrides_copy(tmp_path):
    s = Settings(tmp_path / "config.json")
    with pytest.raises(ValueError, match="jpeg_quality"):
        s.update({"samples_format": "webp", "jpeg_quality": 500})
    assert s["samples_format"] == "png" and not (tmp_path / "config.json").exists()
    opts = s.with_overrides({"jpeg_quality": 10})
    assert opts["jpeg_quality"] == 10 and s["jpeg_quality"] == 80
    s.update({"jpeg_quality": 55, "some_extension_key": "kept"})
    again = Settings(tmp_path / "config.json")
    assert again["jpeg_quality"] == 55 and again.get("some_extension_key") == "kept"


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A fresh data dir (the repository's placeholder checkpoint is visible from it); the server is started
    by the test that needs it."""
    return tmp_path_factory.mktemp("settings-data")


def test_api_change_persists_across_restart_and_shows_in_ui(studio):
    config = studio / "config.json"
    proc, url = start_server(studio)
    try:
        r = httpx.post(url + "/sdapi/v1/options", json={"jpeg_quality": 55, "samples_format": "webp"}, timeout=30)
        assert r.status_code == 200, r.text
        bad = httpx.post(url + "/sdapi/v1/options", json={"jpeg_quality": 0}, timeout=30)
        assert bad.status_code == 422 and "jpeg_quality" in bad.json()["detail"]
        # an override for one request changes that request only, never the saved settings
        before = config.read_text()
        r = httpx.post(url + "/sdapi/v1/txt2img", timeout=300, json={
            "prompt": "x", "steps": 1, "width": 64, "height": 64, "seed": 1,
            "override_settings": {"jpeg_quality": 10, "CLIP_stop_at_last_layers": 2}})
        assert r.status_code == 200, r.text
        assert "Clip skip: 2" in json.loads(r.json()["info"])["infotexts"][0]
        opts = httpx.get(url + "/sdapi/v1/options", timeout=30).json()
        assert opts["jpeg_quality"] == 55 and opts["CLIP_stop_at_last_layers"] == 1
        assert config.read_text() == before
    finally:
        stop(proc)
    saved = json.loads(config.read_text())
    assert saved["jpeg_quality"] == 55 and saved["samples_format"] == "webp"

    proc, url = start_server(studio)
    try:
        assert httpx.get(url + "/sdapi/v1/options", timeout=30).json()["jpeg_quality"] == 55
        if not shutil.which("chromium"):
            pytest.skip("Debian chromium not installed")
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.click("#tab_settings-button")
            quality = page.locator("#setting_jpeg_quality input[type=number]").first
            quality.wait_for()
            assert quality.input_value() == "55"
            assert page.locator("#setting_samples_format input").first.input_value() == "webp"
            # search: only matching settings (and their sections) stay visible
            page.locator("#settings_search textarea, #settings_search input").first.fill("jpeg")
            page.locator("#setting_samples_save").wait_for(state="hidden")
            assert page.locator("#setting_jpeg_quality").is_visible()
            assert page.locator("#settings_section_live_previews").is_hidden()
            page.locator("#settings_search textarea, #settings_search input").first.fill("")
            page.locator("#setting_samples_save").wait_for(state="visible")
            # reset shows the defaults; apply saves them
            page.click("#settings_reset_defaults")
            page.wait_for_function("() => document.querySelector('#setting_jpeg_quality input[type=number]')"
                                   ".value === '80'")
            page.click("#settings_submit")
            page.wait_for_function("() => document.querySelector('#settings_result').innerText"
                                   ".includes('jpeg_quality')")
            browser.close()
        saved = json.loads((studio / "config.json").read_text())
        assert saved["jpeg_quality"] == 80 and saved["samples_format"] == "png"
    finally:
        stop(proc)
