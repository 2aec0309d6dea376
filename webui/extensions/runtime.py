"""Extensions at run time: app.py builds one ExtensionRuntime after the engine (load the extensions' scripts and
callbacks, wire the callbacks into the engine's events and the model manager, let them add settings); the UI
asks it for the extensions' tabs; app.py fires on_app_started through it."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webui.engine.processing import Engine
from webui.extensions.callbacks import Callbacks, Registered, SettingsRegistrar
from webui.extensions.loader import Extension, Extensions


@dataclass
class ExtensionTab:
    owner: Extension | None
    blocks: Any                  # a gr.Blocks built by the extension
    title: str
    elem_id: str


@dataclass
class ExtensionRuntime:
    extensions: Extensions
    callbacks: Callbacks
    flags: argparse.Namespace
    restart: Callable[[], str] | None = None     # schedules a restart; returns a message

    @classmethod
    def start(cls, engine: Engine, registry, extensions: Extensions, flags: argparse.Namespace,
              restart: Callable[[], str] | None = None) -> ExtensionRuntime:
        callbacks = Callbacks(report=extensions.report)
        extensions.load(registry, callbacks)
        rt = cls(extensions, callbacks, flags, restart)
        rt.attach(engine)
        callbacks.call("ui_settings", SettingsRegistrar(engine.settings, "Extensions"))
        return rt

    def attach(self, engine: Engine) -> None:
        """The engine's events and the model manager call the extensions' callbacks (only kinds in use)."""
        cb = self.callbacks
        for kind, target in (("before_image_saved", engine.events.before_image_saved),
                             ("image_saved", engine.events.image_saved),
                             ("cfg_denoiser", engine.events.cfg_denoiser),
                             ("model_loaded", engine.models.on_model_loaded)):
            if cb.count(kind):
                target.append(cb.listener(kind))

    def ui_tabs(self) -> list[ExtensionTab]:
        """Each on_ui_tabs callback's [(blocks, title, elem_id)]; call before the page's Blocks is opened (a
        Blocks made inside another would render in place)."""
        tabs: list[ExtensionTab] = []
        for item in list(self.callbacks.items["ui_tabs"]):
            result = self._call_one(item)
            if result is None:
                continue
            try:
                for blocks, title, elem_id in result:
                    tabs.append(ExtensionTab(item.owner, blocks, str(title), str(elem_id)))
            except (TypeError, ValueError) as e:
                self._fail(item, TypeError(f"on_ui_tabs must return [(gr.Blocks, title, elem_id)], got "
                                           f"{result!r} ({e})"))
        return tabs

    def render_tab(self, tab: ExtensionTab) -> None:
        """Render an extension's Blocks inside the current tab; a failure is reported, not raised."""
        try:
            tab.blocks.render()
        except Exception as e:  # noqa: BLE001 - one broken tab must not take the page down
            if tab.owner is not None:
                self.extensions.report(tab.owner, f"rendering tab {tab.title!r}", e)
            else:
                raise

    def app_started(self, demo, app) -> None:
        app.state.cmd_opts = self.flags
        self.callbacks.call("app_started", demo, app)

    def _call_one(self, item: Registered):
        if item.owner is not None and item.owner.failed:
            return None
        try:
            return item.fn()
        except Exception as e:  # noqa: BLE001 - reported, the extension disabled for the run
            self._fail(item, e)
            return None

    def _fail(self, item: Registered, exc: BaseException) -> None:
        if item.owner is None:
            raise exc
        self.extensions.report(item.owner, f"on_{item.kind} ({getattr(item.fn, '__qualname__', item.fn)})", exc)
