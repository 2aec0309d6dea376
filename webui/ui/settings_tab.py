"""The Settings tab: one widget per setting, grouped by section; Apply saves to config.json."""
from __future__ import annotations

import gradio as gr

from webui.config.settings import Settings
from webui.ui.common import error_html, info_html


def build(settings: Settings, dynamic_choices: dict | None = None) -> None:
    """dynamic_choices: setting key -> callable giving its current choices (e.g. the VAE files)."""
    dynamic_choices = dynamic_choices or {}
    components: dict[str, gr.components.Component] = {}
    apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
    result = gr.HTML(elem_id="settings_result")
    sections: dict[str, list[str]] = {}
    for key, d in settings.defs.items():
        if key == "sd_model_checkpoint":
            continue  # chosen from the dropdown at the top of the page
        sections.setdefault(d.section, []).append(key)
    for section, keys in sections.items():
        with gr.Accordion(section, open=True):
            for key in keys:
                d = settings.defs[key]
                value = settings.get(key)
                eid = f"setting_{key}"
                if isinstance(d.default, bool):
                    c = gr.Checkbox(value=value, label=d.label, elem_id=eid)
                elif d.choices or key in dynamic_choices:
                    choices = list(dynamic_choices[key]()) if key in dynamic_choices else list(d.choices)
                    c = gr.Dropdown(choices, value=value, label=d.label, elem_id=eid, allow_custom_value=True)
                elif isinstance(d.default, (int, float)):
                    c = gr.Number(value=value, label=d.label, elem_id=eid, precision=0 if isinstance(d.default, int)
                                  else None)
                else:
                    c = gr.Textbox(value=value, label=d.label, elem_id=eid)
                components[key] = c

    def save(*values):
        changes = {}
        for key, v in zip(components, values):
            if isinstance(settings.defs[key].default, int) and not isinstance(settings.defs[key].default, bool):
                v = int(v) if v is not None else v
            changes[key] = v
        try:
            changed = settings.update(changes)
        except ValueError as e:
            return error_html(e)
        return info_html(f"{len(changed)} settings changed: {', '.join(changed)}" if changed else "Nothing changed.")

    apply.click(save, list(components.values()), result)
