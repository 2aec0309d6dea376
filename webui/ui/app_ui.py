"""The whole page: the checkpoint picker on top, then one tab per feature."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from gradio.context import Context

from webui.core.errors import StudioError
from webui.engine.processing import Engine
from webui.extensions.runner import ScriptRunner
from webui.extensions.runtime import ExtensionRuntime
from webui.ui import controlnet_ui, extensions_tab, extra_networks, merger_tab, pnginfo_tab, settings_tab, train_tab
from webui.ui.common import error_html
from webui.ui.generation_tab import GenerationTab, wire_send_to, wire_send_to_extras


@dataclass
class CheckpointBar:
    """The checkpoint dropdown at the top, its status line, and the switch a user's choice runs."""
    dropdown: gr.Dropdown
    status: gr.HTML
    choose: Callable[[str], str]


def _checkpoint_bar(engine: Engine) -> CheckpointBar:
    models, settings = engine.models, engine.settings

    def current_title() -> str | None:
        try:
            return models.find(settings.get("sd_model_checkpoint") or None).title
        except StudioError:
            return None

    with gr.Row():
        ckpt = gr.Dropdown(models.titles(), value=current_title(), label="Stable Diffusion checkpoint",
                           elem_id="setting_sd_model_checkpoint", scale=4)
        refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", size="sm", min_width=40, scale=0)
        status = gr.HTML(elem_id="sd_checkpoint_status", scale=4)

    def choose(title: str):
        if not title:
            return ""
        try:
            info = models.find(title)
            if info.title == current_title():   # the page opening shows the current one: nothing to load
                return ""
            engine.jobs.run(lambda job: models.get(info.title), "load checkpoint")
            settings.update({"sd_model_checkpoint": info.title})
        except StudioError as e:
            return error_html(e)
        unusable = [c for c in models.checkpoints if c.error]
        return "".join(f"<div style='color:#a60'>Unusable: {c.name}: {c.error}</div>" for c in unusable)

    def do_refresh():
        models.refresh()
        unusable = "".join(f"<div style='color:#a60'>Unusable: {c.name}: {c.error}</div>"
                           for c in models.checkpoints if c.error)
        return gr.Dropdown(choices=models.titles(), value=current_title()), unusable

    # a user's choice switches (input: the page's own updates below must never switch the server back)
    ckpt.input(choose, ckpt, status)
    refresh.click(do_refresh, None, [ckpt, status])
    built = (models.titles(), current_title())

    def on_open():
        """Each page opens on the checkpoint in use now (another page or the API may have changed it); an update
        only when something changed since the page was built, so an open list is not redrawn under the mouse."""
        now = (models.titles(), current_title())
        return gr.update() if now == built else gr.Dropdown(choices=now[0], value=now[1])

    root = Context.root_block
    if root is not None:
        root.load(on_open, None, ckpt, queue=False, show_progress="hidden")
    return CheckpointBar(ckpt, status, choose)


def build_ui(engine: Engine, scripts: ScriptRunner | None = None,
             extensions: ExtensionRuntime | None = None) -> gr.Blocks:
    if scripts is None:
        from webui.scripts import default_runner
        scripts = default_runner(engine)
    ext_tabs = extensions.ui_tabs() if extensions else []   # their Blocks are made outside the page's
    with gr.Blocks(title="Studio", analytics_enabled=False) as demo:
        ckpt = _checkpoint_bar(engine)
        settings_tab.build_quicksettings(engine.settings, dynamic_choices(engine))
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="tab_txt2img", elem_id="tab_txt2img"):
                t2i = GenerationTab(engine, "txt2img", scripts)
                t2i.build()
                extra_networks.build(engine, t2i.fields["prompt"], t2i.fields["negative_prompt"], ckpt, "txt2img",
                                     t2i.gallery, t2i.selected, t2i.infotexts)
            with gr.Tab("img2img", id="tab_img2img", elem_id="tab_img2img"):
                i2i = GenerationTab(engine, "img2img", scripts)
                i2i.build()
                extra_networks.build(engine, i2i.fields["prompt"], i2i.fields["negative_prompt"], ckpt, "img2img",
                                     i2i.gallery, i2i.selected, i2i.infotexts)
            wire_send_to(t2i, i2i, tabs)
            wire_send_to(i2i, i2i, tabs)
            from webui.ui import extras_tab, upscale_tab
            with gr.Tab("Extras", id="tab_extras", elem_id="tab_extras"):
                extras = extras_tab.ExtrasTab(engine)
                extras.build()
            wire_send_to_extras(t2i, extras.image, tabs)
            wire_send_to_extras(i2i, extras.image, tabs)
            with gr.Tab("ControlNet", id="tab_controlnet", elem_id="tab_controlnet"):
                cn_tab = controlnet_ui.build_tab(engine)
                with gr.Row():
                    to_t2i = gr.Button("Send the map to txt2img ControlNet unit 0", elem_id="controlnet_send_txt2img")
                    to_i2i = gr.Button("Send the map to img2img ControlNet unit 0", elem_id="controlnet_send_img2img")
            controlnet_ui.wire_send_map(cn_tab, t2i.controlnet, to_t2i, tabs, "tab_txt2img")
            controlnet_ui.wire_send_map(cn_tab, i2i.controlnet, to_i2i, tabs, "tab_img2img")
            from webui.ui import script_tabs
            with gr.Tab("X/Y/Z plot", id="tab_xyz_plot", elem_id="tab_xyz_plot"):
                script_tabs.build(scripts, "X/Y/Z plot", "xyz_plot")
            with gr.Tab("Prompt matrix", id="tab_prompt_matrix", elem_id="tab_prompt_matrix"):
                script_tabs.build(scripts, "Prompt matrix", "prompt_matrix")
            with gr.Tab("SD upscale", id="tab_sd_upscale", elem_id="tab_sd_upscale"):
                upscale_tab.build(scripts)
            with gr.Tab("PNG Info", id="tab_pnginfo", elem_id="tab_pnginfo"):
                pnginfo_tab.build(t2i.fields, tabs, t2i.controlnet, engine.models, img2img=i2i,
                                  extras_image=extras.image)
            with gr.Tab("Checkpoint Merger", id="tab_modelmerger", elem_id="tab_modelmerger"):
                merger_tab.build(engine, ckpt.dropdown)
            with gr.Tab("Train", id="tab_train", elem_id="tab_train"):
                train_tab.build(engine)
            for tab in ext_tabs:
                with gr.Tab(tab.title, id=tab.elem_id, elem_id=f"tab_{tab.elem_id}"):
                    extensions.render_tab(tab)
            with gr.Tab("Settings", id="tab_settings", elem_id="tab_settings"):
                settings_tab.build(engine.settings, dynamic_choices(engine))
            if extensions is not None:
                with gr.Tab("Extensions", id="tab_extensions", elem_id="tab_extensions"):
                    extensions_tab.build(extensions.extensions, engine.settings, extensions.flags,
                                         extensions.restart)
    demo.queue(default_concurrency_limit=None)
    return demo


def head_html() -> str:
    """The studio's own page scripts (webui/ui/javascript/*.js: keyboard shortcuts) as <script> tags."""
    folder = Path(__file__).parent / "javascript"
    return "\n".join(f"<script data-studio=\"{f.name}\">\n{f.read_text(encoding='utf-8')}\n</script>"
                     for f in sorted(folder.glob("*.js")))


def dynamic_choices(engine) -> dict:
    """The settings whose choices are files found now: the VAE, and the networks "Add network to prompt" adds."""
    models = engine.models
    return {"sd_vae": models.vae_names,
            "sd_lora": lambda: ["None", *(i.name for i in models.refresh_loras())],
            "sd_hypernetwork": lambda: ["None", *(i.name for i in models.refresh_hypernetworks())]}
