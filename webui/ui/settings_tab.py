"""The Settings tab: one widget per setting (the studio's and those extensions add), grouped by section, with a
search box; Apply saves to config.json, Reset shows the defaults (Apply then saves them). The widgets are
refreshed from the saved settings whenever the page loads, so a change made through POST /sdapi/v1/options shows
here too."""
from __future__ import annotations

import re
from collections.abc import Callable

import gradio as gr
from gradio.context import Context

from webui.config.settings import Setting, Settings
from webui.ui.common import error_html, info_html

HIDDEN = frozenset({"sd_model_checkpoint"})   # chosen from the dropdown at the top of the page


def section_id(section: str) -> str:
    return "settings_section_" + re.sub(r"[^a-z0-9]+", "_", section.lower()).strip("_")


def matches(query: str, key: str, d: Setting) -> bool:
    """Every word of the query appears in the setting's label, key or section (case-insensitive)."""
    haystack = f"{d.label} {key} {d.section}".lower()
    return all(word in haystack for word in query.lower().split())


def _coerce(d: Setting, value):
    """A widget's value in the setting's type (gr.Number gives floats, a cleared box None)."""
    if isinstance(d.default, bool) or value is None:
        return value
    if isinstance(d.default, int) and isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    return value


def _widget(key: str, d: Setting, value, choices: list | None) -> gr.components.Component:
    eid = f"setting_{key}"
    info = key   # the name the API and config.json use
    if isinstance(d.default, bool):
        return gr.Checkbox(value=value, label=d.label, info=info, elem_id=eid)
    if choices is not None:
        return gr.Dropdown(choices, value=value, label=d.label, info=info, elem_id=eid, allow_custom_value=True,
                           multiselect=isinstance(d.default, list))
    if isinstance(d.default, (int, float)):
        if d.minimum is not None and d.maximum is not None and d.maximum - d.minimum <= 1000:
            step = 1 if isinstance(d.default, int) else (d.maximum - d.minimum) / 100
            return gr.Slider(d.minimum, d.maximum, value=value, step=step, label=d.label, info=info, elem_id=eid)
        return gr.Number(value=value, label=d.label, info=info, elem_id=eid,
                         precision=0 if isinstance(d.default, int) else None, minimum=d.minimum, maximum=d.maximum)
    return gr.Textbox(value=value, label=d.label, info=info, elem_id=eid)


def quick_keys(settings: Settings) -> list[str]:
    """The settings of the quicksettings bar (setting quicksettings_list; the checkpoint has its own picker)."""
    listed = settings.get("quicksettings_list") or []
    return [k for k in listed if k in settings.defs and k not in HIDDEN]


def build_quicksettings(settings: Settings, dynamic_choices: dict[str, Callable[[], list]] | None = None) -> dict:
    """A1111's quicksettings: the listed settings as widgets at the top of the page, each saved as soon as it
    changes (an invalid value is shown, not saved). Returns the widgets by setting key."""
    dynamic_choices = dynamic_choices or {}
    keys = quick_keys(settings)
    if not keys:
        return {}
    components: dict[str, gr.components.Component] = {}
    with gr.Row(elem_id="quicksettings"):
        for key in keys:
            d = settings.defs[key]
            choices = list(dynamic_choices[key]()) if key in dynamic_choices else \
                (list(d.choices) if d.choices else None)
            components[key] = _widget(key, d, settings.get(key), choices)
    status = gr.HTML(elem_id="quicksettings_status")

    def saver(key: str):
        def save(value):
            try:
                settings.update({key: _coerce(settings.defs[key], value)})
            except ValueError as e:
                return error_html(e)
            return ""
        return save

    for key, widget in components.items():
        widget.change(saver(key), widget, status, queue=False, show_progress="hidden")
        if key in dynamic_choices:   # files dropped in since the page was built
            widget.focus(lambda k=key: gr.Dropdown(choices=list(dynamic_choices[k]())), None, widget, queue=False)
    root = Context.root_block
    if root is not None:   # the saved values each time the page opens (the API may have changed them)
        root.load(lambda: [settings.get(k) for k in components], None, list(components.values()), queue=False,
                  show_progress="hidden")
    return components


def build(settings: Settings, dynamic_choices: dict[str, Callable[[], list]] | None = None) -> dict:
    """Build the tab inside the current Blocks. dynamic_choices: setting key -> callable giving its current
    choices (e.g. the VAE files). Returns the widgets by setting key. The quicksettings are not repeated here."""
    dynamic_choices = {"quicksettings_list": lambda: sorted(settings.defs), **(dynamic_choices or {})}
    hidden = HIDDEN | set(quick_keys(settings))

    def choices_of(key: str, d: Setting) -> list | None:
        if key in dynamic_choices:
            return list(dynamic_choices[key]())
        return list(d.choices) if d.choices else None

    with gr.Row():
        search = gr.Textbox(placeholder="Search settings (label or name)", show_label=False, scale=4,
                            elem_id="settings_search")
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=1)
        reset = gr.Button("Reset to defaults", elem_id="settings_reset_defaults", scale=1)
    result = gr.HTML(elem_id="settings_result")
    sections: dict[str, list[str]] = {}
    for key, d in settings.defs.items():
        if key not in hidden:
            sections.setdefault(d.section, []).append(key)
    components: dict[str, gr.components.Component] = {}
    accordions: dict[str, gr.Accordion] = {}
    for section, keys in sections.items():
        with gr.Accordion(section, open=True, elem_id=section_id(section)) as acc:
            accordions[section] = acc
            for key in keys:
                d = settings.defs[key]
                components[key] = _widget(key, d, settings.get(key), choices_of(key, d))
    keys = list(components)

    def save(*values):
        changes = {k: _coerce(settings.defs[k], v) for k, v in zip(keys, values)}
        try:
            changed = settings.update(changes)
        except ValueError as e:
            return error_html(e)
        return info_html(f"{len(changed)} settings changed: {', '.join(changed)}" if changed else "Nothing changed.")

    def defaults():
        return [info_html("Defaults shown for every setting: press Apply settings to save them.")] + \
            [settings.defs[k].default for k in keys]

    def current():
        out = []
        for k in keys:
            if k in dynamic_choices:
                out.append(gr.Dropdown(choices=list(dynamic_choices[k]()), value=settings.get(k)))
            else:
                out.append(settings.get(k))
        return out

    def search_settings(query: str):
        query = (query or "").strip()
        shown = {k: not query or matches(query, k, settings.defs[k]) for k in keys}
        section_shown = {s: any(shown[k] for k in ks) for s, ks in sections.items()}
        return [gr.update(visible=shown[k]) for k in keys] + [gr.update(visible=section_shown[s])
                                                                for s in accordions]

    apply.click(save, list(components.values()), result)
    reset.click(defaults, None, [result, *components.values()])
    search.change(search_settings, search, [*components.values(), *accordions.values()], queue=False,
                  show_progress="hidden")
    root = Context.root_block    # the whole page: refresh the values each time it is opened
    if root is not None:
        root.load(current, None, list(components.values()), queue=False, show_progress="hidden")
    return components
