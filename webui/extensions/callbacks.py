"""Extension callbacks with A1111's names (script_callbacks): on_app_started, on_model_loaded, on_ui_tabs,
on_ui_settings, on_before_image_saved, on_image_saved, on_cfg_denoiser.

An extension's script calls them at import time, as in A1111 (``on_ui_tabs(make_tab)``, or as decorators). They
only mark the function in the calling module (``__studio_callbacks__``); nothing global is kept. The extension
loader reads the marks of the modules an extension imported and adds the functions to the one ``Callbacks``
registry that app.py builds, owned by their extension. A callback that raises is reported with its traceback
(console and Extensions tab) and its extension is disabled for the rest of the run; the job or page goes on.

Call signatures (A1111's, where they can be the same):
- on_app_started(demo, app): demo is the gradio Blocks (None with --nowebui), app the FastAPI app (add routes
  there; ``app.state.cmd_opts`` holds the parsed command-line flags, extensions' own included).
- on_model_loaded(model): the loaded checkpoint (``model.pipe`` the diffusers pipeline, ``model.info.title``).
- on_ui_tabs(): returns [(gr.Blocks, title, elem_id)]; each becomes a tab of the page.
- on_ui_settings(opts): ``opts.add_option(key, OptionInfo(default, label, section=("id", "Section")))``
  (A1111 passes nothing and uses a global; here the settings come as the argument).
- on_before_image_saved(params) / on_image_saved(params): an ImageSaveParams.
- on_cfg_denoiser(params): a CFGDenoiserParams, at each sampling step before the UNet.
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.config.settings import Setting, Settings
from webui.core.errors import StudioError

KINDS = ("app_started", "model_loaded", "ui_tabs", "ui_settings", "before_image_saved", "image_saved",
         "cfg_denoiser")
MARK = "__studio_callbacks__"


def _mark(kind: str, fn: Callable) -> Callable:
    if not callable(fn):
        raise TypeError(f"on_{kind} needs a function, got {fn!r}")
    caller = sys._getframe(2).f_globals    # the module that called on_<kind>(fn)
    caller.setdefault(MARK, []).append((kind, fn))
    return fn


def on_app_started(fn: Callable) -> Callable:
    return _mark("app_started", fn)


def on_model_loaded(fn: Callable) -> Callable:
    return _mark("model_loaded", fn)


def on_ui_tabs(fn: Callable) -> Callable:
    return _mark("ui_tabs", fn)


def on_ui_settings(fn: Callable) -> Callable:
    return _mark("ui_settings", fn)


def on_before_image_saved(fn: Callable) -> Callable:
    return _mark("before_image_saved", fn)


def on_image_saved(fn: Callable) -> Callable:
    return _mark("image_saved", fn)


def on_cfg_denoiser(fn: Callable) -> Callable:
    return _mark("cfg_denoiser", fn)


def basedir() -> Path:
    """The folder of the extension whose script calls this (extensions/NAME for extensions/NAME/scripts/x.py)."""
    file = Path(sys._getframe(1).f_globals.get("__file__", "."))
    return file.parent.parent if file.parent.name == "scripts" else file.parent


@dataclass
class OptionInfo:
    """A setting an extension adds (A1111's shared.OptionInfo). ``section`` is ("id", "Title") or a title;
    choices / minimum / maximum may also come in component_args as A1111 passes them."""

    default: Any = None
    label: str = ""
    component: Any = None
    component_args: dict | Callable | None = None
    section: tuple[str, str] | str | None = None
    choices: tuple | list | None = None
    minimum: float | None = None
    maximum: float | None = None

    def to_setting(self, fallback_section: str) -> Setting:
        args = self.component_args() if callable(self.component_args) else (self.component_args or {})
        section = self.section[-1] if isinstance(self.section, (tuple, list)) else (self.section or fallback_section)
        choices = self.choices if self.choices is not None else args.get("choices")
        return Setting(self.default, self.label, str(section), tuple(choices) if choices else None,
                       self.minimum if self.minimum is not None else args.get("minimum"),
                       self.maximum if self.maximum is not None else args.get("maximum"))


class SettingsRegistrar:
    """What on_ui_settings callbacks get: add_option() registers a setting (shown in the Settings tab, saved
    in config.json, readable through GET /sdapi/v1/options and p.opts)."""

    def __init__(self, settings: Settings, section: str):
        self._settings = settings
        self._section = section

    def add_option(self, key: str, info: OptionInfo) -> None:
        self._settings.add(key, info.to_setting(self._section))

    def get(self, key: str, default: Any = None) -> Any:
        return self._settings.get(key, default)


@dataclass
class Registered:
    kind: str
    fn: Callable
    owner: Any = None           # the Extension (has .failed and .name), None for the studio's own


@dataclass
class Callbacks:
    """The studio's callback registry, built once by app.py. ``report(owner, where, exc)`` records a failure
    (the extension loader's; it disables the owner for the run)."""

    report: Callable[[Any, str, BaseException], None] | None = None
    items: dict[str, list[Registered]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def add(self, kind: str, fn: Callable, owner: Any = None) -> None:
        if kind not in self.items:
            raise ValueError(f"unknown callback {kind!r}; known: {', '.join(KINDS)}")
        self.items[kind].append(Registered(kind, fn, owner))

    def call(self, kind: str, *args: Any) -> list[Any]:
        """Call every live callback of a kind; returns their results. A failing one is reported, its owner
        disabled, and the others still run."""
        results = []
        for item in list(self.items[kind]):
            if item.owner is not None and getattr(item.owner, "failed", False):
                continue
            try:
                results.append(item.fn(*args))
            except StudioError:
                if item.owner is None:
                    raise
                self._fail(item, sys.exc_info()[1])
            except Exception as e:  # noqa: BLE001 - an extension's bug must not take the studio or the job down
                self._fail(item, e)
        return results

    def _fail(self, item: Registered, exc: BaseException | None) -> None:
        where = f"on_{item.kind} ({getattr(item.fn, '__qualname__', item.fn)})"
        if self.report is not None and item.owner is not None:
            self.report(item.owner, where, exc)
        else:
            traceback.print_exception(exc)

    def listener(self, kind: str) -> Callable[..., None]:
        """One function that calls every callback of a kind (what the engine's event lists hold)."""
        def call(*args: Any) -> None:
            self.call(kind, *args)
        call.__name__ = f"on_{kind}"
        return call

    def count(self, kind: str) -> int:
        return len(self.items[kind])
