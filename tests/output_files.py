"""The files a job wrote, told apart from earlier ones by what the folder held before it started, not by a
modification-time window (which a file written a moment earlier by the test before would also pass)."""
from __future__ import annotations

from pathlib import Path


def pngs(folder: Path) -> set[Path]:
    """Every PNG under ``folder`` (none when it does not exist yet)."""
    return set(folder.rglob("*.png")) if folder.exists() else set()


def newest_new_png(folder: Path, before: set[Path]) -> Path | None:
    """The most recently written PNG under ``folder`` that was not in ``before``."""
    new = pngs(folder) - before
    return max(new, key=lambda f: f.stat().st_mtime) if new else None
