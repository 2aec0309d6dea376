"""Prompt styles: styles.csv with A1111's columns (name, prompt, negative_prompt) and its "{prompt}" rule.

Applying a style to a prompt: when the style's text contains "{prompt}", the prompt replaces that placeholder;
otherwise the style's text is appended after ", " (empty parts are left out). Styles apply in the order they are
listed, each to the result of the one before; the negative prompt is styled the same way with the style's
negative_prompt. The file is read again whenever it changes on disk, and written atomically.
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from webui.core.errors import InvalidField

FIELDS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""

    def api_item(self) -> dict[str, str]:
        """An item of GET /sdapi/v1/prompt-styles."""
        return {"name": self.name, "prompt": self.prompt, "negative_prompt": self.negative_prompt}


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111's rule: the prompt goes where "{prompt}" is, else the style's text follows it after ", "."""
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles(prompt: str, styles: list[PromptStyle], negative: bool = False) -> str:
    for style in styles:
        prompt = merge_prompts(style.negative_prompt if negative else style.prompt, prompt)
    return prompt


def parse_csv(text: str) -> dict[str, PromptStyle]:
    """Styles by name from the text of a styles.csv (A1111's old "text" column is read as the prompt)."""
    styles: dict[str, PromptStyle] = {}
    for row in csv.DictReader(io.StringIO(text), skipinitialspace=True):
        name = (row.get("name") or "").strip()
        if not name:
            continue
        prompt = row.get("prompt") if "prompt" in row else row.get("text")
        styles[name] = PromptStyle(name, prompt or "", row.get("negative_prompt") or "")
    return styles


def to_csv(styles: list[PromptStyle]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for s in styles:
        writer.writerow({"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt})
    return out.getvalue()


class StyleDatabase:
    """The styles of one styles.csv; built once by app.py (through the engine) and passed down."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._styles: dict[str, PromptStyle] = {}
        self._stamp: tuple[float, int] | None = None

    def _reload_locked(self) -> None:
        if self.path is None or not self.path.is_file():
            self._styles, self._stamp = {}, None
            return
        st = self.path.stat()
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._stamp:
            self._styles = parse_csv(self.path.read_text(encoding="utf-8-sig"))
            self._stamp = stamp

    @property
    def styles(self) -> dict[str, PromptStyle]:
        with self._lock:
            self._reload_locked()
            return dict(self._styles)

    def names(self) -> list[str]:
        return list(self.styles)

    def resolve(self, names: list[str] | None) -> list[PromptStyle]:
        """The styles named (in that order); InvalidField naming the known ones when one does not exist."""
        known = self.styles
        missing = [n for n in names or [] if n not in known]
        if missing:
            valid = ", ".join(known) or f"none (add rows to {self.path.name if self.path else 'styles.csv'})"
            raise InvalidField("styles", f"unknown style {missing[0]!r}; valid: {valid}")
        return [known[n] for n in names or []]

    def apply(self, prompt: str, negative_prompt: str, names: list[str] | None) -> tuple[str, str]:
        """(prompt, negative prompt) with the named styles applied."""
        styles = self.resolve(names)
        return apply_styles(prompt, styles), apply_styles(negative_prompt, styles, negative=True)

    def save_style(self, style: PromptStyle) -> None:
        """Add a style, or replace the one of that name (keeping its place), and write the file."""
        name = style.name.strip()
        if not name:
            raise InvalidField("name", "a style needs a name")
        with self._lock:
            self._reload_locked()
            self._styles[name] = PromptStyle(name, style.prompt, style.negative_prompt)
            self._write_locked()

    def delete_style(self, name: str) -> None:
        with self._lock:
            self._reload_locked()
            if self._styles.pop(name, None) is None:
                raise InvalidField("name", f"no style named {name!r}")
            self._write_locked()

    def _write_locked(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".styles-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(to_csv(list(self._styles.values())))
        os.replace(tmp, self.path)
        st = self.path.stat()
        self._stamp = (st.st_mtime, st.st_size)
