"""The "Script" dropdown under a generation tab: each dropdown script's ui() in its own hidden group, shown when
picked, and the always-on scripts' ui() below it. Their values become script_name / script_args /
alwayson_scripts of the request, the same fields the API takes."""
from __future__ import annotations

from typing import Any

import gradio as gr

from webui.extensions.runner import ScriptRunner
from webui.extensions.script import Script

NONE = "None"


class ScriptsUI:
    def __init__(self, runner: ScriptRunner, is_img2img: bool):
        self.runner = runner
        self.is_img2img = is_img2img
        self.selectable: list[Script] = []
        self.alwayson: list[Script] = []
        self.inputs: list[gr.components.Component] = []
        self.dropdown: gr.Dropdown | None = None
        self._slices: list[tuple[Script, int, int]] = []

    def _controls(self, script: Script) -> list:
        controls = script.ui(self.is_img2img) or []
        controls = list(controls) if isinstance(controls, (list, tuple)) else [controls]
        script.controls = controls
        start = len(self.inputs)
        self.inputs.extend(controls)
        self._slices.append((script, start, len(self.inputs)))
        return controls

    def build(self, fixed: Script | None = None) -> None:
        """The dropdown and the scripts' groups; ``fixed``: only that script, always shown (its own tab)."""
        self.selectable = [fixed] if fixed else self.runner.selectable(self.is_img2img)
        self.alwayson = [] if fixed else self.runner.alwayson(self.is_img2img)
        titles = [s.title() for s in self.selectable]
        self.dropdown = gr.Dropdown([NONE, *titles], value=titles[0] if fixed else NONE, label="Script",
                                    elem_id="script_list", visible=not fixed)
        self.inputs = [self.dropdown]
        groups = []
        for script in self.selectable:
            with gr.Group(visible=bool(fixed), elem_id=script.elem_id("group")) as group:
                script.group = group
                self._controls(script)
            groups.append(group)
        for script in self.alwayson:
            with gr.Group(elem_id=script.elem_id("group")) as group:
                script.group = group
                self._controls(script)

        def show(title: str):
            return [gr.Group(visible=t == title) for t in titles]

        if groups and not fixed:
            self.dropdown.change(show, self.dropdown, groups, queue=False, show_progress="hidden")

    def request_fields(self, values: list | tuple) -> dict[str, Any]:
        """script_name, script_args and alwayson_scripts from the values of ``inputs``."""
        title = values[0] if values else NONE
        out: dict[str, Any] = {"script_name": None, "script_args": [], "alwayson_scripts": {}}
        for script, start, stop in self._slices:
            args = list(values[start:stop])
            if script.alwayson:
                out["alwayson_scripts"][script.title()] = {"args": args}
            elif title and title != NONE and script.title() == title:
                out["script_name"], out["script_args"] = script.title(), args
        return out
