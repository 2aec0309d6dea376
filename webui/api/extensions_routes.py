"""GET /sdapi/v1/extensions: the installed extensions with A1111's fields (name, remote, branch, commit_hash,
version, commit_date, enabled) and the studio's (status, scripts, callbacks, errors with tracebacks)."""
from __future__ import annotations

from fastapi import APIRouter

from webui.extensions.loader import Extensions


def build_router(extensions: Extensions) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1")

    @r.get("/extensions")
    def list_extensions():
        items = []
        for e in extensions.all:
            item = e.api_item()
            item["errors"] = item["errors"] + extensions.script_errors(e)
            items.append(item)
        return items

    return r
