"""Extensions: metadata.ini order, install from a local git repository (and its refusal when listening publicly),
and a real studio started with the test extension (tests/extension_fixtures/test-ext: every hook and callback)
plus three broken ones: hooks fire in order with their arguments, the infotext key lands in the saved PNG, broken
extensions are reported with their tracebacks and the studio still generates; in the browser the extension's tab,
setting, JavaScript and CSS are there, installing works, and "Apply and restart UI" disables an extension."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import OFFLINE_ENV, ROOT, free_port
from PIL import Image

from webui.config.flags import parse_args
from webui.core.errors import BadRequest, InvalidField
from webui.extensions.loader import Extensions
from webui.extensions.manage import access_allowed, install_extension

FIXTURES = Path(__file__).resolve().parent / "extension_fixtures"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def make_extension(folder: Path, name: str, metadata: str = "", script: str = "") -> Path:
    path = folder / name
    (path / "scripts").mkdir(parents=True)
    if metadata:
        (path / "metadata.ini").write_text(metadata)
    if script:
        (path / "scripts" / "main.py").write_text(script)
    return path


def test_metadata_order_requires_and_cycles(tmp_path):
    make_extension(tmp_path, "a", "[Extension]\nName = a\nAfter = c\n")
    make_extension(tmp_path, "b", "[Extension]\nBefore = a\n")
    make_extension(tmp_path, "c")
    make_extension(tmp_path, "d", "[Extension]\nRequires = missing-one, c\n")
    make_extension(tmp_path, "e", "[Extension]\nRequires = off\n")
    make_extension(tmp_path, "off")
    exts = Extensions(tmp_path, disabled=["off"])
    assert [e.name for e in exts.all] == ["b", "c", "a", "d", "off", "e"]   # Requires implies After
    assert [e.name for e in exts.active()] == ["b", "c", "a"]
    assert "requires missing-one" in exts.find("d").errors[0]
    assert exts.find("e").status == "failed" and exts.find("off").status == "disabled"
    cyc = tmp_path / "cycle"
    make_extension(cyc, "x", "[Extension]\nAfter = y\n")
    make_extension(cyc, "y", "[Extension]\nAfter = x\n")
    exts = Extensions(cyc)
    assert [e.name for e in exts.all] == ["x", "y"] and "cycle" in exts.find("x").notes[0]


def git(*args: str, cwd: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def local_repo(tmp_path: Path, name: str = "hello-repo") -> Path:
    """A git repository holding a small extension, made here (no network)."""
    repo = make_extension(tmp_path, name, script="from webui.extensions.api import on_app_started\n")
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "first", cwd=repo)
    return repo


@pytest.mark.skipif(not shutil.which("git"), reason="git not installed")
def test_install_from_local_git_repo_and_refusals(tmp_path):
    repo = local_repo(tmp_path / "src")
    target = tmp_path / "extensions"
    path = install_extension(str(repo), target, allowed=access_allowed(parse_args([])))
    assert path == target / "hello-repo" and (path / "scripts" / "main.py").is_file() and (path / ".git").is_dir()
    info = Extensions(target).find("hello-repo").read_git_info()
    assert info["remote"] == str(repo) and info["branch"] == "main" and len(info["commit_hash"]) == 40
    with pytest.raises(InvalidField, match="already exists"):
        install_extension(str(repo), target)
    copied = install_extension(str(FIXTURES / "broken-hook"), target, "copied")   # a plain folder is copied
    assert (copied / "scripts" / "hook.py").is_file()
    with pytest.raises(InvalidField, match="neither a git URL"):
        install_extension(str(tmp_path / "nowhere"), target)
    for flags in (["--listen"], ["--share"]):
        assert not access_allowed(parse_args(flags))
        with pytest.raises(BadRequest, match="--enable-insecure-extension-access"):
            install_extension(str(repo), target, "other", allowed=access_allowed(parse_args(flags)))
    assert not (target / "other").exists()
    assert access_allowed(parse_args(["--listen", "--enable-insecure-extension-access"]))


# ------------------------------------------------------------------------------------------- a real studio

def start_studio(data: Path, *extra: str, log_name: str = "studio.log", timeout: float = 180.0):
    """The studio run as `python app.py` (no --skip-install: extensions' install.py runs)."""
    port = free_port()
    log = data / log_name
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--data-dir", str(data), "--port", str(port),
                             *extra], stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1"})
    wait_ready(proc, log, 1, timeout)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc, log: Path, times: int, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"studio exited: {log.read_text()[-3000:]}")
        if log.read_text().count("Running on local URL") >= times:
            return
        time.sleep(0.2)
    raise RuntimeError(f"studio not ready in time: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from checkpoint_factory import make_tiny_checkpoint
    data = tmp_path_factory.mktemp("ext-studio")
    for name in ("test-ext", "broken-import", "broken-hook", "broken-callback"):
        shutil.copytree(FIXTURES / name, data / "extensions" / name)
    shutil.copytree(ROOT / "extensions" / "example-hello", data / "extensions" / "example-hello")   # shipped
    make_tiny_checkpoint(data / "models" / "Stable-diffusion" / "tiny-sd1.safetensors", "sd1", seed=1)
    proc, url = start_studio(data, "--test-ext-greeting", "hi")
    yield data, url, proc
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def extensions_by_name(url: str) -> dict:
    return {e["name"]: e for e in httpx.get(url + "/sdapi/v1/extensions", timeout=30).json()}


def test_startup_install_preload_and_listing(studio):
    data, url, _ = studio
    log = (data / "studio.log").read_text()
    assert "Extension test-ext: running install.py" in log and "test-ext install ok (1)" in log
    assert "Extension test-ext: install.py done in" in log
    assert (data / "extensions" / "test-ext" / "installed.txt").read_text() == "1"
    assert "ModuleNotFoundError: No module named 'module_that_does_not_exist_anywhere'" in log
    exts = extensions_by_name(url)
    test = exts["test-ext"]
    assert test["enabled"] and test["status"] == "loaded" and test["scripts"] == ["TestExtScript"]
    assert set(test["callbacks"]) == {"on_app_started", "on_model_loaded", "on_ui_tabs", "on_ui_settings",
                                      "on_cfg_denoiser", "on_before_image_saved", "on_image_saved"}
    broken = exts["broken-import"]
    assert broken["status"] == "failed" and "ModuleNotFoundError" in broken["errors"][0]
    assert "bad.py" in broken["errors"][0]
    # the flag preload.py added was parsed; on_app_started saw it, and its API route answers
    events = httpx.get(url + "/test-ext/events", timeout=30).json()
    assert events[0] == ["app_started", "Blocks", "FastAPI", "hi", "test-ext"]
    assert httpx.get(url + "/sdapi/v1/cmd-flags", timeout=30).json()["test_ext_greeting"] == "hi"
    # on_ui_settings: a new setting with its default, saved like any other
    assert httpx.get(url + "/sdapi/v1/options", timeout=30).json()["test_ext_word"] == "zebra"
    info = httpx.get(url + "/sdapi/v1/script-info", timeout=30).json()
    assert any(s["name"] == "test ext" and s["is_alwayson"] for s in info)
    # the shipped example: its route and its setting
    assert httpx.get(url + "/hello/v1/greet", params={"name": "Ada"}, timeout=30).json() == {"greeting": "Hello, Ada!"}
    assert httpx.get(url + "/sdapi/v1/options", timeout=30).json()["hello_greeting"] == "Hello"
    assert extensions_by_name(url)["example-hello"]["status"] == "loaded"


def test_hooks_fire_in_order_and_broken_extensions_do_not_stop_the_job(studio):
    data, url, _ = studio
    n0 = len(httpx.get(url + "/test-ext/events", timeout=30).json())
    body = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 5, "save_images": True,
            "override_settings": {"sd_model_checkpoint": "tiny-sd1.safetensors"}}
    r = httpx.post(url + "/sdapi/v1/txt2img", timeout=300,
                   json={**body, "alwayson_scripts": {"Hello stamp": {"args": [True]}}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "Test ext: zebra" in info["infotexts"][0] and "Hello: Hello" in info["infotexts"][0]
    assert any("broken-hook" in n and "boom in process" in n for n in info["notes"])
    events = httpx.get(url + "/test-ext/events", timeout=30).json()[n0:]
    kinds = [e[0] for e in events]
    assert kinds == ["setup", "before_process", "process", "model_loaded", "before_process_batch", "process_batch",
                     "cfg_denoiser", "cfg_denoiser", "cfg_denoiser", "postprocess_image", "before_image_saved",
                     "image_saved", "postprocess"]
    assert events[0] == ["setup", "a red circle"]
    assert events[1] == ["before_process", True]                # per-image seeds not drawn yet
    assert events[2] == ["process", "a red circle", 3, [5]]
    assert events[3] == ["model_loaded", "tiny-sd1.safetensors"]
    assert events[4] == ["before_process_batch", 0, ["a red circle"]]
    assert events[5] == ["process_batch", 0, [5]]
    cfg = events[6:9]
    assert [e[1:3] for e in cfg] == [[0, 3], [1, 3], [2, 3]]          # step, total steps
    assert cfg[0][3] == [1, 4, 16, 16] and cfg[0][4] == 1 and cfg[0][5]   # latents, one cond, an uncond
    assert events[9] == ["postprocess_image", [64, 64]]
    before, saved = events[10], events[11]
    assert before[2] is True and before[3] == "a red circle"      # the infotext already has the script's key
    png = Path(saved[1])
    assert png.is_file() and Path(before[1]) == png.parent
    text = Image.open(png).info["parameters"]
    assert "Test ext: zebra" in text and "Hello: Hello" in text and text.endswith(", Saved by: test-ext")
    exts = extensions_by_name(url)
    for name, where, message in (("broken-hook", "BrokenHook.process()", "RuntimeError: boom in process"),
                                 ("broken-callback", "on_cfg_denoiser (explode)", "ValueError: boom in cfg_denoiser")):
        assert exts[name]["status"] == "failed"
        assert len(exts[name]["errors"]) == 1
        assert exts[name]["errors"][0].startswith(where) and message in exts[name]["errors"][0]
        assert "Traceback (most recent call last)" in exts[name]["errors"][0]
    # disabled for the rest of the run: a second job runs without them and records no new error
    r = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "seed": 6}, timeout=300)
    assert r.status_code == 200 and not json.loads(r.json()["info"])["notes"]
    assert "Hello:" not in json.loads(r.json()["info"])["infotexts"][0]    # the example's stamp is opt-in
    assert all(len(e["errors"]) == 1 for n, e in extensions_by_name(url).items() if n.startswith("broken"))


@pytest.mark.skipif(not shutil.which("chromium") or not shutil.which("git"), reason="chromium or git missing")
def test_browser_tab_setting_page_assets_install_and_disable(studio, tmp_path):
    from playwright.sync_api import sync_playwright
    data, url, proc = studio
    repo = local_repo(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})   # 14 tabs with the two test extensions' own
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("#txt2img_prompt textarea")
        # javascript/*.js ran (and onUiLoaded fired); the tab exists and style.css applies to it
        assert page.evaluate("window.testExtJs") == "ran"
        page.wait_for_function("() => document.body.getAttribute('data-test-ext') === 'ui-loaded'")
        page.click("#tab_test_ext-button")
        marker = page.locator("#test_ext_marker")
        marker.wait_for()
        assert marker.evaluate("el => getComputedStyle(el).color") == "rgb(1, 2, 3)"
        page.locator("#test_ext_box textarea").fill("quiet")
        page.click("#test_ext_button")
        page.wait_for_function("() => document.querySelector('#test_ext_box textarea').value === 'QUIET'")
        # the shipped example's tab
        page.click("#tab_hello-button")
        page.locator("#hello_name textarea, #hello_name input").first.fill("Ada")
        page.click("#hello_button")
        page.wait_for_function("() => document.querySelector('#hello_output').innerText.includes('Hello, Ada!')")
        # the setting on_ui_settings added is in the Settings tab
        page.click("#tab_settings-button")
        word = page.locator("#setting_test_ext_word textarea, #setting_test_ext_word input").first
        word.wait_for()
        assert word.input_value() == "zebra"
        # the Extensions tab: statuses and the import error's traceback
        page.click("#tab_extensions-button")
        page.locator("#extension_row_broken-import").wait_for()
        assert "failed" in page.locator("#extension_row_broken-import .extension-status").inner_text()
        row = page.locator("#extension_row_broken-import")
        assert "importing scripts/bad.py: ModuleNotFoundError: No module named" in row.inner_text()
        row.locator("summary").click()
        assert "Traceback (most recent call last)" in row.locator("pre").inner_text()
        assert "loaded" in page.locator("#extension_row_test-ext .extension-status").inner_text()
        # install from a local git repository (the server listens on 127.0.0.1 only)
        page.get_by_role("tab", name="Install from URL").click()
        page.locator("#extension_install_url textarea, #extension_install_url input").first.fill(str(repo))
        page.click("#extension_install_button")
        page.wait_for_function("() => document.querySelector('#extension_install_result').innerText"
                               ".includes('Installed into')")
        assert (data / "extensions" / "hello-repo" / "scripts" / "main.py").is_file()
        # a setting changed through the API survives the restart (config.json) and shows in the UI after it
        assert httpx.post(url + "/sdapi/v1/options", json={"jpeg_quality": 55}, timeout=30).status_code == 200
        # disable test-ext, apply and restart: the studio comes back without its tab, the new one loaded
        page.get_by_role("tab", name="Installed").click()
        page.locator("#extensions_enabled label", has_text="test-ext").click()
        page.click("#extensions_apply")
        wait_ready(proc, data / "studio.log", 2)
        page.wait_for_selector("#txt2img_prompt textarea", timeout=120_000)
        page.wait_for_timeout(1000)
        assert page.locator("#tab_test_ext-button").count() == 0
        page.click("#tab_settings-button")
        page.wait_for_function("() => document.querySelector('#setting_jpeg_quality input[type=number]')"
                               ".value === '55'")
        assert page.locator("#setting_test_ext_word").count() == 0       # its setting went with it
        browser.close()
    config = json.loads((data / "config.json").read_text())
    assert config["disabled_extensions"] == ["test-ext"] and config["jpeg_quality"] == 55
    assert httpx.get(url + "/sdapi/v1/options", timeout=30).json()["jpeg_quality"] == 55
    exts = extensions_by_name(url)
    assert exts["test-ext"]["status"] == "disabled" and not exts["test-ext"]["enabled"]
    assert exts["hello-repo"]["status"] == "loaded" and exts["hello-repo"]["remote"] == str(repo)
    log = (data / "studio.log").read_text()
    assert log.count("Extension test-ext: running install.py") == 1    # disabled: not installed again
