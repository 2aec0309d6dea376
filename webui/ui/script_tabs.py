"""Tabs of their own for scripts users go to directly (X/Y/Z plot, Prompt matrix): a compact txt2img form plus
the script's ui(), submitted through the same runner as the Script dropdown and the API's script_name."""
from __future__ import annotations

import gradio as gr

from webui.core import samplers as core_samplers
from webui.core.errors import StudioError
from webui.core.request import GenerationRequest
from webui.engine import samplers as engine_samplers
from webui.extensions.runner import ScriptRunner
from webui.ui.common import error_html, info_html, progress_html
from webui.ui.scripts_ui import ScriptsUI


def build(scripts: ScriptRunner, title: str, prefix: str) -> None:
    """The tab's widgets (element ids start with ``prefix``); nothing when no such txt2img script exists."""
    found = [s for s in scripts.selectable(False) if s.title() == title]
    if not found:
        gr.HTML(f"<p>The script {title!r} is not available.</p>")
        return
    script = type(found[0])()                 # this tab's own instance: its own widgets and element ids
    script.engine, script.is_txt2img, script.tabname = scripts.engine, True, "txt2img"
    script.name = title.lower()
    script.elem_id = lambda item: f"{prefix}_{item}"       # type: ignore[method-assign]
    engine = scripts.engine
    with gr.Row():
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{prefix}_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_neg_prompt")
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
            interrupt = gr.Button("Interrupt", size="sm", elem_id=f"{prefix}_interrupt")
    with gr.Row():
        with gr.Column():
            with gr.Row():
                sampler = gr.Dropdown(engine_samplers.available(), value="Euler a", label="Sampling method",
                                      elem_id=f"{prefix}_sampling")
                schedule = gr.Dropdown(core_samplers.schedule_labels(), value="Automatic", label="Schedule type",
                                       elem_id=f"{prefix}_scheduler")
            steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{prefix}_steps")
            with gr.Row():
                width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{prefix}_width")
                height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{prefix}_height")
            with gr.Row():
                cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id=f"{prefix}_cfg_scale")
                seed = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{prefix}_seed")
            ui = ScriptsUI(scripts, False)
            ui.build(fixed=script)
        with gr.Column():
            progress = gr.HTML("", elem_id=f"{prefix}_progress")
            gallery = gr.Gallery(label="Output", elem_id=f"{prefix}_gallery", columns=4, height="auto",
                                 format="png", interactive=False)
            info = gr.HTML("", elem_id=f"html_info_{prefix}")
            error = gr.HTML("", elem_id=f"{prefix}_error")
    fields = [prompt, negative, sampler, schedule, steps, width, height, cfg, seed]

    def run(*values):
        p, n, smp, sch, st, w, h, c, sd = values[:len(fields)]
        try:
            req = GenerationRequest(prompt=p or "", negative_prompt=n or "", sampler_name=smp, scheduler=sch,
                                    steps=int(st), width=int(w), height=int(h), cfg_scale=float(c),
                                    seed=int(sd) if sd not in (None, "") else -1,
                                    **ui.request_fields(values[len(fields):]))
            job = scripts.submit(req, save=bool(engine.settings.get("samples_save", True)))
        except (StudioError, ValueError, TypeError) as err:
            yield gr.update(), "", gr.update(), error_html(err)
            return
        while not job.done.wait(0.25):
            yield gr.update(), progress_html(job.progress.fraction, job.progress.textinfo), gr.update(), ""
        try:
            result = job.wait()
        except Exception as err:  # noqa: BLE001 - shown to the user; the server keeps serving
            yield gr.update(), "", "", error_html(err)
            return
        notes = ("\n" + "\n".join(result.notes)) if result.notes else ""
        text = result.infotexts[0] if result.infotexts else "Interrupted"
        yield result.images, "", info_html(text + notes), ""

    generate.click(run, fields + ui.inputs, [gallery, progress, info, error], concurrency_limit=None,
                   show_progress="hidden")
    interrupt.click(lambda: engine.jobs.interrupt(), None, None, queue=False)
