"""The "SD upscale" tab: tiled upscaling as a tab of its own. A compact img2img form (source image, prompt,
sampler, steps, CFG, denoising, seed, tile size) plus the "SD upscale" script's own ui(), submitted through the
script runner exactly as the img2img tab's Script dropdown and the API's script_name are."""
from __future__ import annotations

import gradio as gr

from webui.core import samplers as core_samplers
from webui.core.errors import InvalidField, StudioError
from webui.core.request import Img2ImgRequest
from webui.engine import samplers as engine_samplers
from webui.extensions.runner import ScriptRunner
from webui.ui.common import error_html, info_html, progress_html
from webui.ui.scripts_ui import ScriptsUI

TITLE = "SD upscale"
PREFIX = "sd_upscale"


def build(scripts: ScriptRunner) -> gr.Image | None:
    """The tab's widgets; returns the source image component (None when the script is not there)."""
    found = [s for s in scripts.selectable(True) if s.title() == TITLE]
    if not found:
        gr.HTML(f"<p>The script {TITLE!r} is not available.</p>")
        return None
    script = type(found[0])()                 # this tab's own instance: its own widgets and element ids
    script.engine, script.is_img2img, script.tabname = scripts.engine, True, "img2img"
    script.name = TITLE.lower()
    script.elem_id = lambda item: f"{PREFIX}_{item}"       # type: ignore[method-assign]
    engine = scripts.engine
    with gr.Row():
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id=f"{PREFIX}_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1, elem_id=f"{PREFIX}_neg_prompt")
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Upscale", variant="primary", elem_id=f"{PREFIX}_generate")
            interrupt = gr.Button("Interrupt", size="sm", elem_id=f"{PREFIX}_interrupt")
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="Source", type="pil", format="png",
                             elem_id=f"{PREFIX}_image", sources=["upload", "clipboard"])
            with gr.Row():
                sampler = gr.Dropdown(engine_samplers.available(), value="Euler a", label="Sampling method",
                                      elem_id=f"{PREFIX}_sampling")
                schedule = gr.Dropdown(core_samplers.schedule_labels(), value="Automatic", label="Schedule type",
                                       elem_id=f"{PREFIX}_scheduler")
            steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{PREFIX}_steps")
            with gr.Row():
                width = gr.Slider(64, 2048, value=512, step=8, label="Tile width", elem_id=f"{PREFIX}_width")
                height = gr.Slider(64, 2048, value=512, step=8, label="Tile height", elem_id=f"{PREFIX}_height")
            with gr.Row():
                cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id=f"{PREFIX}_cfg_scale")
                denoise = gr.Slider(0, 1, value=0.3, step=0.01, label="Denoising strength",
                                    elem_id=f"{PREFIX}_denoising_strength")
                seed = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{PREFIX}_seed")
            ui = ScriptsUI(scripts, True)
            ui.build(fixed=script)
        with gr.Column():
            progress = gr.HTML("", elem_id=f"{PREFIX}_progress")
            gallery = gr.Gallery(label="Output", elem_id=f"{PREFIX}_gallery", columns=2, height="auto",
                                 format="png", interactive=False)
            info = gr.HTML("", elem_id=f"html_info_{PREFIX}")
            error = gr.HTML("", elem_id=f"{PREFIX}_error")
    fields = [image, prompt, negative, sampler, schedule, steps, width, height, cfg, denoise, seed]

    def run(*values):
        im, p, n, smp, sch, st, w, h, c, d, sd = values[:len(fields)]
        try:
            if im is None:
                raise InvalidField("init_images", "choose an image to upscale")
            req = Img2ImgRequest(prompt=p or "", negative_prompt=n or "", sampler_name=smp, scheduler=sch,
                                 steps=int(st), width=int(w), height=int(h), cfg_scale=float(c),
                                 denoising_strength=float(d), seed=int(sd) if sd not in (None, "") else -1,
                                 **ui.request_fields(values[len(fields):]))
            job = scripts.submit(req, [im.convert("RGB")], save=bool(engine.settings.get("samples_save", True)))
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
        size = f"\n{result.images[0].width}x{result.images[0].height}" if result.images else ""
        yield result.images, "", info_html(text + size + notes), ""

    generate.click(run, fields + ui.inputs, [gallery, progress, info, error], concurrency_limit=None,
                   show_progress="hidden")
    interrupt.click(lambda: engine.jobs.interrupt(), None, None, queue=False)
    return image
