"""A1111's --api-server-stop routes: without the flag they do not exist; with it, restart brings the same studio
back on its port, stop ends the process cleanly, kill ends it at once."""
from __future__ import annotations

import time

import httpx
from conftest import start_server


def _wait_up(url: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url + "/sdapi/v1/options", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the studio did not come back")


def test_without_the_flag_there_are_no_such_routes(server):
    for route in ("server-kill", "server-restart", "server-stop"):
        assert httpx.post(server + f"/sdapi/v1/{route}", timeout=30).status_code == 404


def test_restart_then_stop_then_kill(tmp_path):
    proc, url = start_server(tmp_path, "--api-server-stop", "--nowebui")
    try:
        httpx.post(url + "/sdapi/v1/options", json={"samples_format": "jpg"}, timeout=30).raise_for_status()
        r = httpx.post(url + "/sdapi/v1/server-restart", timeout=30)
        assert r.status_code == 200 and "Restarting" in r.json()["message"]
        time.sleep(2)
        _wait_up(url)
        assert proc.poll() is None   # the same process, re-executed
        assert httpx.get(url + "/sdapi/v1/options", timeout=30).json()["samples_format"] == "jpg"
        assert httpx.post(url + "/sdapi/v1/server-stop", timeout=30).status_code == 200
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, url = start_server(tmp_path, "--api-server-stop", "--nowebui")
    try:
        assert httpx.post(url + "/sdapi/v1/server-kill", timeout=30).status_code == 200
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
