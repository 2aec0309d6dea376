"""The txt2img tab: builds a GenerationRequest from its widgets and follows the job's progress."""
from __future__ import annotations

import gradio as gr

from webui.core import samplers as core_samplers
from webui.core.errors import StudioError
from webui.core.request import GenerationRequest
from webui.engine import samplers as engine_samplers
from webui.engine.hires import hires_upscalers
from webui.engine.processing import Engine
from webui.ui.common import error_html, info_html, progress_html


class Txt2ImgTab:
    """Widgets with A1111's element ids; `fields` maps request field names to their components."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.fields: dict[str, gr.components.Component] = {}

    def build(self) -> None:
        e = self.engine
        with gr.Row():
            with gr.Column(scale=6):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt",
                                    placeholder="a large red circle on the left, blue background")
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
                with gr.Row():
                    token_counter = gr.HTML("0/75", elem_id="txt2img_token_counter")
                    neg_token_counter = gr.HTML("0/75", elem_id="txt2img_negative_token_counter")
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
                with gr.Row():
                    interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt", size="sm")
                    skip = gr.Button("Skip", elem_id="txt2img_skip", size="sm")
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    sampler = gr.Dropdown(engine_samplers.available(), value="Euler a", label="Sampling method",
                                          elem_id="txt2img_sampling")
                    schedule = gr.Dropdown(core_samplers.schedule_labels(), value="Automatic",
                                           label="Schedule type", elem_id="txt2img_scheduler")
                steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
                with gr.Row():
                    width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="txt2img_width")
                    height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="txt2img_height")
                with gr.Row():
                    batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count",
                                            elem_id="txt2img_batch_count")
                    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
                cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
                with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
                    enable_hr = gr.Checkbox(False, label="Enable", elem_id="txt2img_enable_hr")
                    with gr.Row():
                        hr_upscaler = gr.Dropdown(hires_upscalers(), value="Latent", label="Upscaler",
                                                  elem_id="txt2img_hr_upscaler")
                        hr_steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                             elem_id="txt2img_hires_steps")
                        denoise = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength",
                                            elem_id="txt2img_denoising_strength")
                    with gr.Row():
                        hr_scale = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
                        hr_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                         elem_id="txt2img_hr_resize_x")
                        hr_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                         elem_id="txt2img_hr_resize_y")
                with gr.Row():
                    seed = gr.Number(value=-1, precision=0, label="Seed", elem_id="txt2img_seed")
                    random_seed = gr.Button("🎲", elem_id="txt2img_random_seed", size="sm", min_width=40)
                    reuse_seed = gr.Button("♻️", elem_id="txt2img_reuse_seed", size="sm", min_width=40)
            with gr.Column():
                progress = gr.HTML("", elem_id="txt2img_progress")
                gallery = gr.Gallery(label="Output", elem_id="txt2img_gallery", columns=4, height="auto",
                                     format="png", interactive=False)
                info = gr.HTML("", elem_id="html_info_txt2img")
                error = gr.HTML("", elem_id="txt2img_error")
        last_seed = gr.State(-1)
        self.fields = {"prompt": prompt, "negative_prompt": negative, "sampler_name": sampler,
                       "scheduler": schedule, "steps": steps, "width": width, "height": height,
                       "n_iter": batch_count, "batch_size": batch_size, "cfg_scale": cfg, "seed": seed,
                       "enable_hr": enable_hr, "hr_upscaler": hr_upscaler, "hr_second_pass_steps": hr_steps,
                       "denoising_strength": denoise, "hr_scale": hr_scale, "hr_resize_x": hr_x,
                       "hr_resize_y": hr_y}
        inputs = list(self.fields.values())

        def run(*values):
            kw = dict(zip(self.fields, values))
            try:
                req = GenerationRequest(
                    prompt=kw["prompt"] or "", negative_prompt=kw["negative_prompt"] or "",
                    sampler_name=kw["sampler_name"], scheduler=kw["scheduler"], steps=int(kw["steps"]),
                    width=int(kw["width"]), height=int(kw["height"]), n_iter=int(kw["n_iter"]),
                    batch_size=int(kw["batch_size"]), cfg_scale=float(kw["cfg_scale"]),
                    seed=int(kw["seed"]) if kw["seed"] not in (None, "") else -1,
                    enable_hr=bool(kw["enable_hr"]), hr_upscaler=kw["hr_upscaler"],
                    hr_second_pass_steps=int(kw["hr_second_pass_steps"]),
                    denoising_strength=float(kw["denoising_strength"]), hr_scale=float(kw["hr_scale"]),
                    hr_resize_x=int(kw["hr_resize_x"]), hr_resize_y=int(kw["hr_resize_y"]))
                job = e.submit_txt2img(req, save=bool(e.settings.get("samples_save", True)))
            except (StudioError, ValueError, TypeError) as err:
                yield gr.update(), gr.update(), "", error_html(err), gr.update()
                return
            shown = -1
            while not job.done.wait(0.25):
                p = job.progress
                preview = gr.update()
                if p.preview is not None and p.preview_id != shown:
                    shown = p.preview_id
                    preview = [p.preview]
                yield preview, progress_html(p.fraction, p.textinfo), gr.update(), "", gr.update()
            try:
                result = job.wait()
            except Exception as err:  # noqa: BLE001 - shown to the user; the server keeps serving
                yield gr.update(), "", "", error_html(err), gr.update()
                return
            notes = ("\n" + "\n".join(result.notes)) if result.notes else ""
            text = result.infotexts[result.index_of_first_image] if result.infotexts else "Interrupted"
            yield (result.images, "", info_html(text + notes), "",
                   result.seeds[0] if result.seeds else -1)

        generate.click(run, inputs, [gallery, progress, info, error, last_seed],
                       concurrency_limit=None, show_progress="hidden")
        prompt.submit(run, inputs, [gallery, progress, info, error, last_seed], concurrency_limit=None,
                      show_progress="hidden")
        def count(text: str) -> str:
            n, cap = e.token_count(text or "")
            return f"<span class='token-counter'>{n}/{cap}</span>"

        prompt.change(count, prompt, token_counter, queue=False, show_progress="hidden")
        negative.change(count, negative, neg_token_counter, queue=False, show_progress="hidden")
        interrupt.click(lambda: e.jobs.interrupt(), None, None, queue=False)
        skip.click(lambda: e.jobs.skip(), None, None, queue=False)
        random_seed.click(lambda: -1, None, seed, queue=False)
        reuse_seed.click(lambda s: s, last_seed, seed, queue=False)
