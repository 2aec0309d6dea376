"""Small helpers shared by the tabs."""
from __future__ import annotations

import html

from webui.core.errors import StudioError


def error_html(e: Exception) -> str:
    text = str(e) if isinstance(e, StudioError) else f"{type(e).__name__}: {e}"
    return f"<div class='studio-error' style='color:#c00;font-weight:600'>Error: {html.escape(text)}</div>"


def info_html(text: str) -> str:
    return f"<div class='studio-info'><p>{html.escape(text).replace(chr(10), '<br>')}</p></div>"


def progress_html(fraction: float, text: str) -> str:
    pct = max(0.0, min(1.0, fraction)) * 100
    return ("<div class='studio-progress'><div style='background:#ddd;border-radius:4px;height:14px'>"
            f"<div class='studio-progress-bar' style='width:{pct:.0f}%;background:#f97316;height:14px;"
            f"border-radius:4px'></div></div><span>{pct:.0f}% {html.escape(text)}</span></div>")
