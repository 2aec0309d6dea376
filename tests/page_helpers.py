"""Helpers for browser tests that drive the studio's page."""
from __future__ import annotations

import time
from urllib.parse import urlsplit


def pick_checkpoint(page, name: str, timeout: float = 120.0) -> None:
    """Choose ``name`` in the checkpoint dropdown at the top of the page and wait until the server has switched
    to it (the switch loads the model first, so a fixed pause can let the next job run on the old one)."""
    page.click("#setting_sd_model_checkpoint input")
    page.get_by_role("option", name=name, exact=False).first.click()
    parts = urlsplit(page.url)
    url = f"{parts.scheme}://{parts.netloc}/sdapi/v1/options"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if name in str(page.request.get(url).json().get("sd_model_checkpoint")):
            return
        time.sleep(0.2)
    raise AssertionError(f"the server did not switch to {name}")
