"""Styles next to the prompt: pick styles (applied by the engine when generating, as A1111 does), copy them into
the prompt text (📋), or save the current prompt and negative prompt as a style (💾)."""
from __future__ import annotations

import gradio as gr

from webui.core.errors import StudioError
from webui.core.styles import PromptStyle, StyleDatabase
from webui.ui.common import error_html, info_html


def build(styles: StyleDatabase, mode: str, prompt: gr.Textbox, negative: gr.Textbox) -> gr.Dropdown:
    """The styles row under the prompts of one tab; returns the dropdown whose value is the request's styles."""
    m = mode
    with gr.Row(elem_id=f"{m}_styles_row"):
        chosen = gr.Dropdown(styles.names(), value=[], multiselect=True, label="Styles", elem_id=f"{m}_styles",
                             scale=6)
        apply = gr.Button("📋", elem_id=f"{m}_style_apply", size="sm", min_width=40, scale=0)
        refresh = gr.Button("🔄", elem_id=f"{m}_style_refresh", size="sm", min_width=40, scale=0)
    with gr.Accordion("Save prompt as style", open=False, elem_id=f"{m}_style_save_box"):
        with gr.Row():
            name = gr.Textbox(label="Style name", elem_id=f"{m}_style_name", scale=4)
            save = gr.Button("💾 Save style", elem_id=f"{m}_style_create", scale=1)
        status = gr.HTML(elem_id=f"{m}_style_status")

    def copy_into_prompt(names, p, n):
        """The styles written into the prompt boxes; the selection is cleared so they do not apply twice."""
        try:
            p2, n2 = styles.apply(p or "", n or "", list(names or []))
        except StudioError as e:
            return gr.update(), gr.update(), gr.update(), error_html(e)
        return p2, n2, gr.Dropdown(value=[]), ""

    def save_style(style_name, p, n, names):
        try:
            styles.save_style(PromptStyle((style_name or "").strip(), p or "", n or ""))
        except StudioError as e:
            return gr.update(), error_html(e)
        return (gr.Dropdown(choices=styles.names(), value=list(names or [])),
                info_html(f"Style {style_name.strip()!r} saved to {styles.path.name if styles.path else 'memory'}"))

    apply.click(copy_into_prompt, [chosen, prompt, negative], [prompt, negative, chosen, status])
    refresh.click(lambda names: gr.Dropdown(choices=styles.names(), value=[x for x in names or []
                                                                           if x in styles.names()]),
                  chosen, chosen, queue=False)
    save.click(save_style, [name, prompt, negative, chosen], [chosen, status])
    return chosen
