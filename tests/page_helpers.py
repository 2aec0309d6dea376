"""Helpers for browser tests that drive the studio's page."""
from __future__ import annotations

import time
from urllib.parse import urlsplit


def set_number(page, elem_id: str, value) -> None:
    """Type ``value`` into the number box of the component ``elem_id`` and commit it (Enter)."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def pick_checkpoint(page, name: str, timeout: float = 120.0) -> None:
    """Choose ``name`` in the checkpoint dropdown at the top of the page, check the dropdown shows it (a list
    redrawn while open could take the click elsewhere: then choose again) and wait until the server has switched
    to it (the switch loads the model first, so a fixed pause can let the next job run on the old one)."""
    parts = urlsplit(page.url)
    url = f"{parts.scheme}://{parts.netloc}/sdapi/v1/options"
    current = str(page.request.get(url).json().get("sd_model_checkpoint"))
    # the page's opening brings the dropdown to the model in use: wait for that first, or the update could
    # arrive after the choice below (choosing what the dropdown shows already starts no switch)
    page.wait_for_function("(t) => document.querySelector('#setting_sd_model_checkpoint input')?.value === t",
                           arg=current, timeout=timeout * 1000)
    if current.startswith(name):
        return
    box = page.locator("#setting_sd_model_checkpoint input")
    for _ in range(3):
        box.click()
        page.get_by_role("option", name=name, exact=False).first.click()
        page.wait_for_timeout(300)
        if box.input_value().startswith(name):
            break
    else:
        raise AssertionError(f"the dropdown shows {box.input_value()!r}, not {name}")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if str(page.request.get(url).json().get("sd_model_checkpoint")).startswith(name):
            return
        time.sleep(0.2)
    raise AssertionError(f"the server did not switch to {name}")
