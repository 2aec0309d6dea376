"""The txt2img and img2img tabs: one builder that turns widgets into a request, submits it to the engine and
follows the job's progress. img2img adds A1111's sub-tabs (img2img, sketch, inpaint, inpaint sketch, inpaint
upload) and the inpainting options."""
from __future__ import annotations

from dataclasses import astuple

import gradio as gr

from webui.core import samplers as core_samplers
from webui.core import soft_inpainting as soft_settings
from webui.core.errors import InvalidField, StudioError
from webui.core.request import MASKED_CONTENT, RESIZE_MODES, GenerationRequest, Img2ImgRequest
from webui.engine import samplers as engine_samplers
from webui.engine.batch import PNG_INFO_PROPS, BatchResult
from webui.engine.exports import save_gallery
from webui.engine.hires import hires_upscalers
from webui.engine.images import scaled_size
from webui.engine.processing import Engine
from webui.extensions.runner import ScriptRunner
from webui.ui import styles_ui
from webui.ui.common import error_html, info_html, progress_html
from webui.ui.controlnet_ui import ControlNetSection
from webui.ui.pnginfo_tab import SOFT_FIELDS, USE_SAME
from webui.ui.scripts_ui import ScriptsUI


class GenerationTab:
    """Widgets with A1111's element ids; `fields` maps request field names to their components."""

    def __init__(self, engine: Engine, mode: str = "txt2img", scripts: ScriptRunner | None = None):
        self.engine = engine
        self.mode = mode
        self.scripts = scripts
        self.scripts_ui: ScriptsUI | None = None
        self.controlnet: ControlNetSection | None = None
        self.fields: dict[str, gr.components.Component] = {}
        self.init_inputs: list = []

    def build(self) -> None:
        e = self.engine
        m = self.mode
        if m == "img2img":
            self._build_init_images()
        with gr.Row():
            with gr.Column(scale=6):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{m}_prompt",
                                    placeholder="a large red circle on the left, blue background")
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{m}_neg_prompt")
                with gr.Row():
                    token_counter = gr.HTML("0/75", elem_id=f"{m}_token_counter")
                    neg_token_counter = gr.HTML("0/75", elem_id=f"{m}_negative_token_counter")
                styles = styles_ui.build(e.styles, m, prompt, negative)
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button("Generate", variant="primary", elem_id=f"{m}_generate")
                with gr.Row():
                    interrupt = gr.Button("Interrupt", elem_id=f"{m}_interrupt", size="sm")
                    skip = gr.Button("Skip", elem_id=f"{m}_skip", size="sm")
                # A1111's "Read generation parameters from prompt": an infotext pasted into the prompt box
                with gr.Row():
                    paste = gr.Button("↙ Read parameters from prompt", elem_id=f"{m}_paste", size="sm", scale=4)
                    clear = gr.Button("🗑️", elem_id=f"{m}_clear_prompt", size="sm", min_width=40, scale=1)
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    sampler = gr.Dropdown(engine_samplers.available(), value="Euler a", label="Sampling method",
                                          elem_id=f"{m}_sampling")
                    schedule = gr.Dropdown(core_samplers.schedule_labels(), value="Automatic",
                                           label="Schedule type", elem_id=f"{m}_scheduler")
                steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{m}_steps")
                size = native_size(e)
                with gr.Row():
                    width = gr.Slider(64, 2048, value=size, step=8, label="Width", elem_id=f"{m}_width")
                    height = gr.Slider(64, 2048, value=size, step=8, label="Height", elem_id=f"{m}_height")
                with gr.Row():
                    batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count",
                                            elem_id=f"{m}_batch_count")
                    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{m}_batch_size")
                cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id=f"{m}_cfg_scale")
                if m == "img2img":
                    self._build_img2img_options()
                with gr.Accordion("Hires. fix", open=False, elem_id=f"{m}_hr", visible=m == "txt2img") as hr_box:
                    enable_hr = gr.Checkbox(False, label="Enable", elem_id=f"{m}_enable_hr")
                    with gr.Row():
                        hr_upscaler = gr.Dropdown(hires_upscalers(e.models), value="Latent", label="Upscaler",
                                                  elem_id=f"{m}_hr_upscaler")
                        hr_steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                             elem_id=f"{m}_hires_steps")
                        # img2img_denoising_strength is img2img's own slider (A1111's id); this one is hidden there
                        denoise = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength",
                                            elem_id="txt2img_denoising_strength" if m == "txt2img"
                                            else f"{m}_hr_denoising_strength")
                    with gr.Row():
                        hr_scale = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id=f"{m}_hr_scale")
                        hr_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                         elem_id=f"{m}_hr_resize_x")
                        hr_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                         elem_id=f"{m}_hr_resize_y")
                    with gr.Row():
                        hr_checkpoint = gr.Dropdown([USE_SAME["hr_checkpoint_name"], *e.models.titles()],
                                                    value=USE_SAME["hr_checkpoint_name"], label="Hires checkpoint",
                                                    elem_id=f"{m}_hr_checkpoint")
                        hr_sampler = gr.Dropdown([USE_SAME["hr_sampler_name"], *engine_samplers.available()],
                                                 value=USE_SAME["hr_sampler_name"], label="Hires sampling method",
                                                 elem_id=f"{m}_hr_sampler")
                        hr_schedule = gr.Dropdown([USE_SAME["hr_scheduler"], *core_samplers.schedule_labels()],
                                                  value=USE_SAME["hr_scheduler"], label="Hires schedule type",
                                                  elem_id=f"{m}_hr_scheduler")
                    with gr.Row():
                        hr_prompt = gr.Textbox(label="Hires prompt", lines=2, elem_id=f"{m}_hires_prompt",
                                               placeholder="empty: the same prompt as the first pass")
                        hr_negative = gr.Textbox(label="Hires negative prompt", lines=2,
                                                 elem_id=f"{m}_hires_neg_prompt",
                                                 placeholder="empty: the same negative prompt as the first pass")
                with gr.Accordion("Refiner", open=False, elem_id=f"{m}_refiner") as refiner_box:
                    refiner_enabled = gr.Checkbox(False, label="Enable refiner", elem_id=f"{m}_enable_refiner")
                    with gr.Row():
                        refiner_ckpt = gr.Dropdown(e.models.titles(), value=None, label="Checkpoint",
                                                   elem_id=f"{m}_checkpoint")
                        refiner_at = gr.Slider(0.01, 1.0, value=0.8, step=0.01, label="Switch at",
                                               elem_id=f"{m}_switch_at")
                with gr.Row():
                    seed = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{m}_seed")
                    random_seed = gr.Button("🎲", elem_id=f"{m}_random_seed", size="sm", min_width=40)
                    reuse_seed = gr.Button("♻️", elem_id=f"{m}_reuse_seed", size="sm", min_width=40)
                    subseed_show = gr.Checkbox(False, label="Extra", elem_id=f"{m}_subseed_show", min_width=80)
                with gr.Group(visible=False, elem_id=f"{m}_seed_extras") as seed_extras:
                    with gr.Row():
                        subseed = gr.Number(value=-1, precision=0, label="Variation seed", elem_id=f"{m}_subseed")
                        random_subseed = gr.Button("🎲", elem_id=f"{m}_random_subseed", size="sm", min_width=40)
                        reuse_subseed = gr.Button("♻️", elem_id=f"{m}_reuse_subseed", size="sm", min_width=40)
                        subseed_strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                                     elem_id=f"{m}_subseed_strength")
                    with gr.Row():
                        seed_resize_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                                  elem_id=f"{m}_seed_resize_from_w")
                        seed_resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                                  elem_id=f"{m}_seed_resize_from_h")
                self.controlnet = ControlNetSection(e, m)
                self.controlnet.build()
                if self.scripts is not None:
                    self.scripts_ui = ScriptsUI(self.scripts, m == "img2img")
                    self.scripts_ui.build()
            with gr.Column():
                progress = gr.HTML("", elem_id=f"{m}_progress")
                gallery = gr.Gallery(label="Output", elem_id=f"{m}_gallery", columns=4, height="auto",
                                     format="png", interactive=False)
                info = gr.HTML("", elem_id=f"html_info_{m}")
                error = gr.HTML("", elem_id=f"{m}_error")
                with gr.Row():
                    save_button = gr.Button("💾", size="sm", elem_id=f"save_{m}", min_width=40,
                                            elem_classes="tool-button")
                    zip_button = gr.Button("🗃️", size="sm", elem_id=f"save_zip_{m}", min_width=40,
                                           elem_classes="tool-button")
                    upscale_button = (gr.Button("✨", size="sm", elem_id=f"{m}_upscale", min_width=40,
                                                elem_classes="tool-button") if m == "txt2img" else None)
                    self.send_img2img = gr.Button("Send to img2img", size="sm", elem_id=f"{m}_send_to_img2img")
                    self.send_inpaint = gr.Button("Send to inpaint", size="sm", elem_id=f"{m}_send_to_inpaint")
                    # shown by wire_send_to_extras once the page has an Extras tab
                    self.send_extras = gr.Button("Send to extras", size="sm", elem_id=f"{m}_send_to_extras",
                                                 visible=False)
                download_files = gr.File(None, file_count="multiple", interactive=False, show_label=False,
                                         visible=False, elem_id=f"download_files_{m}")
                html_log = gr.HTML("", elem_id=f"html_log_{m}")
        last_seed = gr.State(-1)
        # selected: the gallery index the user clicked, -1 until then; a job's new result clears it (as A1111's),
        # in the job's own last update, so it can never land after the user's next click
        self.gallery, self.selected, self.infotexts = gallery, gr.State(-1), gr.State([])
        first_image = gr.State(0)   # the index of the first picture after any grid

        def on_select(evt: gr.SelectData) -> int:
            return evt.index

        gallery.select(on_select, None, self.selected, queue=False)

        def save(gallery_value, selected, infotexts, first, make_zip):
            try:
                saved = save_gallery(gallery_images(gallery_value), list(infotexts or []), int(selected),
                                     make_zip=make_zip, opts=e.settings.as_dict(), data_dir=e.paths.data,
                                     index_of_first_image=int(first or 0))
            except (StudioError, OSError) as err:
                return gr.File(visible=False), error_html(err)
            return gr.File(value=[str(f) for f in saved.files], visible=True), info_html(saved.message)

        save_inputs = [gallery, self.selected, self.infotexts, first_image]
        save_button.click(lambda *a: save(*a, False), save_inputs, [download_files, html_log], show_progress="hidden")
        zip_button.click(lambda *a: save(*a, True), save_inputs, [download_files, html_log], show_progress="hidden")
        self.fields = {"prompt": prompt, "negative_prompt": negative, "sampler_name": sampler,
                       "scheduler": schedule, "steps": steps, "width": width, "height": height,
                       "n_iter": batch_count, "batch_size": batch_size, "cfg_scale": cfg, "seed": seed,
                       "enable_hr": enable_hr, "hr_upscaler": hr_upscaler, "hr_second_pass_steps": hr_steps,
                       "denoising_strength": denoise, "hr_scale": hr_scale, "hr_resize_x": hr_x,
                       "hr_resize_y": hr_y, "styles": styles, "hr_checkpoint_name": hr_checkpoint,
                       "hr_sampler_name": hr_sampler, "hr_scheduler": hr_schedule, "hr_prompt": hr_prompt,
                       "hr_negative_prompt": hr_negative, "subseed_show": subseed_show, "subseed": subseed,
                       "subseed_strength": subseed_strength, "seed_resize_from_w": seed_resize_w,
                       "seed_resize_from_h": seed_resize_h, "refiner_enabled": refiner_enabled,
                       "refiner_checkpoint": refiner_ckpt, "refiner_switch_at": refiner_at}
        if m == "img2img":
            self.fields["denoising_strength"] = self.i2i_denoise
            self.fields.update(self.i2i_fields)
            self.fields.update(self.soft_fields)
            self.fields.update(scale_by_tab=self.scale_tab, scale_by=self.scale)
        cn_inputs = self.controlnet.inputs if self.controlnet else []
        inputs = list(self.fields.values()) + self.init_inputs + cn_inputs
        script_inputs = self.scripts_ui.inputs if self.scripts_ui else []
        inputs += script_inputs

        def run(*values):
            for update in run_job(values):   # a new result (its infotexts given) clears the selection
                yield (*update, -1 if isinstance(update[5], list) else gr.update())

        def upscale(gallery_value, selected, infotexts, first, *values):
            """A1111's ✨: the selected picture through the hires fix as the form now sets it, with its own seed;
            the result takes its place in the gallery."""
            shown, texts = gallery_images(gallery_value), list(infotexts or [])
            index = max(int(selected), int(first or 0))
            if not shown or index >= len(shown):
                yield (gr.update(), gr.update(), gr.update(), error_html("there is no image to upscale: generate "
                       "one first"), gr.update(), gr.update(), gr.update(), gr.update())
                return
            for update in run_job(values, (shown, index, texts)):   # the selection stays on the upscaled one
                yield (*update, gr.update())

        def run_job(values, upscaling=None):
            kw = dict(zip(self.fields, values))
            init_values = values[len(self.fields):len(self.fields) + len(self.init_inputs)]
            script_values = values[len(values) - len(script_inputs):] if script_inputs else ()
            cn_start = len(self.fields) + len(self.init_inputs)
            cn_values = values[cn_start:cn_start + len(cn_inputs)]
            try:
                cls = Img2ImgRequest if m == "img2img" else GenerationRequest
                extra = {k: int(kw[k]) for k in self.i2i_fields} if m == "img2img" else {}
                req = cls(**extra,
                    prompt=kw["prompt"] or "", negative_prompt=kw["negative_prompt"] or "",
                    sampler_name=kw["sampler_name"], scheduler=kw["scheduler"], steps=int(kw["steps"]),
                    width=int(kw["width"]), height=int(kw["height"]), n_iter=int(kw["n_iter"]),
                    batch_size=int(kw["batch_size"]), cfg_scale=float(kw["cfg_scale"]),
                    seed=int(kw["seed"]) if kw["seed"] not in (None, "") else -1,
                    enable_hr=bool(kw["enable_hr"]), hr_upscaler=kw["hr_upscaler"],
                    hr_second_pass_steps=int(kw["hr_second_pass_steps"]),
                    denoising_strength=float(kw["denoising_strength"]), hr_scale=float(kw["hr_scale"]),
                    hr_resize_x=int(kw["hr_resize_x"]), hr_resize_y=int(kw["hr_resize_y"]),
                    styles=list(kw["styles"] or []), **_extra_fields(kw))
                save = bool(e.settings.get("samples_save", True))
                if self.scripts_ui is not None:
                    for key, value in self.scripts_ui.request_fields(script_values).items():
                        setattr(req, key, value)
                if m == "img2img" and (soft := soft_request_args(kw)) is not None:
                    req.alwayson_scripts = {**(req.alwayson_scripts or {}), soft_settings.SCRIPT_KEY: {"args": soft}}
                if self.controlnet is not None:
                    req.alwayson_scripts = {**(req.alwayson_scripts or {}),
                                            "controlnet": {"args": self.controlnet.units_for_request(list(cn_values))}}
                if upscaling is not None:
                    shown, index, texts = upscaling
                    upscale_request(req, shown[index], texts[index] if index < len(texts) else "")
                if m == "img2img" and init_values[0] == "batch":
                    (batch_in, batch_out, batch_masks, source, files, use_png, props,
                     info_dir) = init_values[7:]
                    uploaded = [getattr(f, "name", f) for f in files or []] if source == "upload" else None
                    if source == "upload" and not uploaded:
                        raise InvalidField("batch", "upload the images to process first (or use From directory)")
                    job = e.submit_img2img_batch(
                        req, None if uploaded else batch_in, batch_out, batch_masks, files=uploaded,
                        scale_by=float(kw["scale_by"]) if kw["scale_by_tab"] else None,
                        use_png_info=bool(use_png), png_info_props=list(props or []), png_info_dir=info_dir)
                elif m == "img2img":
                    images, mask = init_from_editors(*init_values[:7])
                    if kw["scale_by_tab"]:   # "Resize by": the size is the input image's times the scale
                        req.width, req.height = scaled_size(images[0], kw["scale_by"])
                    job = (self.scripts.submit(req, images, mask, save=save) if self.scripts is not None
                           else e.submit_img2img(req, images, mask, save=save))
                else:
                    job = (self.scripts.submit(req, save=save) if self.scripts is not None
                           else e.submit_txt2img(req, save=save))
            except (StudioError, ValueError, TypeError) as err:
                yield gr.update(), gr.update(), "", error_html(err), gr.update(), gr.update(), gr.update()
                return
            shown = -1
            while not job.done.wait(0.25):
                p = job.progress
                preview = gr.update()
                if p.preview is not None and p.preview_id != shown:
                    shown = p.preview_id
                    preview = [p.preview]
                yield (preview, progress_html(p.fraction, p.textinfo), gr.update(), "", gr.update(), gr.update(),
                       gr.update())
            try:
                result = job.wait()
            except Exception as err:  # noqa: BLE001 - shown to the user; the server keeps serving
                yield gr.update(), "", "", error_html(err), gr.update(), gr.update(), gr.update()
                return
            notes = ("\n" + "\n".join(result.notes)) if result.notes else ""
            if isinstance(result, BatchResult):
                yield (result.images, "", info_html(result.summary() + notes), "", gr.update(), result.infotexts,
                       0)
                return
            text = result.infotexts[result.index_of_first_image] if result.infotexts else "Interrupted"
            if upscaling is not None and result.images:   # the upscaled picture replaces the one it came from
                shown, index, texts = upscaling
                texts = texts + [""] * (len(shown) - len(texts))
                new = result.images[result.index_of_first_image:]
                new_texts = result.infotexts[result.index_of_first_image:]
                yield (shown[:index] + new + shown[index + 1:], "", info_html(text + notes), "", gr.update(),
                       texts[:index] + new_texts + texts[index + 1:], gr.update())
                return
            yield (result.images, "", info_html(text + notes), "",
                   result.seeds[0] if result.seeds else -1, result.infotexts, result.index_of_first_image)

        outputs = [gallery, progress, info, error, last_seed, self.infotexts, first_image, self.selected]
        generate.click(run, inputs, outputs,
                       concurrency_limit=None, show_progress="hidden")
        if upscale_button is not None:
            upscale_button.click(upscale, [gallery, self.selected, self.infotexts, first_image, *inputs], outputs,
                                 concurrency_limit=None, show_progress="hidden")
        prompt.submit(run, inputs, outputs, concurrency_limit=None,
                      show_progress="hidden")
        def count(text: str) -> str:
            n, cap = e.token_count(text or "")
            return f"<span class='token-counter'>{n}/{cap}</span>"

        prompt.change(count, prompt, token_counter, queue=False, show_progress="hidden")
        negative.change(count, negative, neg_token_counter, queue=False, show_progress="hidden")
        interrupt.click(lambda: e.jobs.interrupt(), None, None, queue=False)
        skip.click(lambda: e.jobs.skip(), None, None, queue=False)
        paste_fields = {k: v for k, v in self.fields.items() if k != "styles"}
        if m == "img2img":   # the img2img image's own settings are not in a txt2img infotext
            paste_fields = {k: v for k, v in paste_fields.items()
                            if k not in self.i2i_fields and k not in ("scale_by_tab", "scale_by")}

            def preview(scale_value, *editors):
                try:
                    image = init_from_editors(*editors)[0][0]
                except StudioError:
                    return ""
                w, h = scaled_size(image, scale_value)
                return f"<span class='studio-info'>resize: from {image.width}x{image.height} to {w}x{h}</span>"

            editors = self.init_inputs[:7]
            for trigger in (self.scale.change, *(c.change for c in editors[1:])):
                trigger(preview, [self.scale, *editors], self.scale_preview, queue=False, show_progress="hidden")
        cn_outputs = self.controlnet.inputs if self.controlnet else []

        def read_prompt(text: str):
            from webui.ui.pnginfo_tab import paste_values
            if "Steps: " not in (text or ""):
                return [*[gr.update() for _ in paste_fields], *[gr.update() for _ in cn_outputs],
                        error_html("paste a generation's parameters (its infotext) into the prompt box first")]
            values = paste_values(text, paste_fields, e.models)
            cn = paste_controlnet(self.controlnet, text) if self.controlnet else []
            return [*values, *cn, ""]

        paste.click(read_prompt, prompt, [*paste_fields.values(), *cn_outputs, error], queue=False)
        # A1111's 🗑️: both prompt boxes, once the user confirms
        clear.click(None, [prompt, negative], [prompt, negative], queue=False,
                    js="(p, n) => confirm('Delete prompt?') ? ['', ''] : [p, n]")
        random_seed.click(lambda: -1, None, seed, queue=False)
        random_subseed.click(lambda: -1, None, subseed, queue=False)
        subseed_show.change(lambda v: gr.Group(visible=bool(v)), subseed_show, seed_extras, queue=False)
        # as A1111: ♻️ takes the seed (variation seed) of the image selected in the gallery
        reuse_seed.click(lambda *a: reused_seed(*a, "Seed"), [self.infotexts, self.selected, last_seed], seed,
                         queue=False)
        reuse_subseed.click(lambda *a: reused_seed(*a, "Variation seed"), [self.infotexts, self.selected, subseed],
                            subseed, queue=False)
        # a pasted infotext that turns hires fix or the refiner on shows their settings (A1111 ticks the box in the
        # accordion's header)
        for box, accordion in ((enable_hr, hr_box), (refiner_enabled, refiner_box)):
            box.change(lambda v: gr.Accordion(open=True) if v else gr.update(), box, accordion, queue=False)
        for dropdown in (refiner_ckpt, hr_checkpoint):   # files dropped in since the page was built
            first = [USE_SAME["hr_checkpoint_name"]] if dropdown is hr_checkpoint else []
            dropdown.focus(lambda first=first: gr.Dropdown(choices=[*first, *e.models.titles()]), None, dropdown,
                           queue=False)

    def _build_init_images(self) -> None:
        mode = gr.State("img2img")
        copy_buttons: list[tuple[gr.Button, str, str]] = []   # (button, from sub-tab, to sub-tab)

        def copy_row(here: str) -> None:
            """A1111's "Copy image to:" row under a sub-tab's picture."""
            with gr.Row(elem_id=f"img2img_copy_to_{here}"):
                gr.HTML("Copy image to:", elem_id=f"img2img_label_copy_to_{here}")
                for there, title in COPY_TARGETS.items():
                    if there != here:
                        copy_buttons.append((gr.Button(title, size="sm", elem_id=f"img2img_copy_{here}_to_{there}"),
                                             here, there))

        with gr.Tabs(elem_id="mode_img2img") as self.subtabs:
            with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as t1:
                plain = gr.Image(label="Image for img2img", type="pil", format="png",
                                 elem_id="img2img_image", sources=["upload"])
                copy_row("img2img")
            with gr.Tab("Sketch", id="sketch", elem_id="img2img_img2img_sketch_tab") as t2:
                sketch = gr.ImageEditor(label="Sketch", type="pil", format="png", elem_id="img2img_sketch",
                                        brush=gr.Brush(colors=["#dc1e1e", "#1e9f32", "#2346dc", "#f5dc23",
                                                               "#000000", "#ffffff"]))
                copy_row("sketch")
            with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as t3:
                inpaint = gr.ImageEditor(label="Image for inpainting with mask", type="pil", format="png",
                                         elem_id="img2maskimg",
                                         brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
                copy_row("inpaint")
            with gr.Tab("Inpaint sketch", id="inpaint_sketch", elem_id="img2img_inpaint_sketch_tab") as t4:
                inpaint_sketch = gr.ImageEditor(label="Inpaint sketch", type="pil", format="png",
                                                elem_id="inpaint_sketch")
                copy_row("inpaint_sketch")
            with gr.Tab("Inpaint upload", elem_id="img2img_inpaint_upload_tab") as t5:
                upload_image = gr.Image(label="Image", type="pil", format="png",
                                        elem_id="img_inpaint_base", sources=["upload"])
                upload_mask = gr.Image(label="Mask", type="pil", format="png",
                                       elem_id="img_inpaint_mask", sources=["upload"])
            with gr.Tab("Batch", id="batch", elem_id="img2img_batch_tab") as t6:
                gr.Markdown("Process every uploaded image, or every image (.png .jpg .jpeg .webp .tif .tiff .bmp) "
                            "of a folder on the server, sub-folders included. With a masks folder: one file there "
                            "is the mask of every image, else each image takes the mask with its own name. Outputs "
                            "are named after the inputs and never overwrite a file; without an output folder they "
                            "are saved as usual. Unreadable files are listed and skipped.")
                batch_source = gr.State("upload")
                with gr.Tabs(elem_id="img2img_batch_source"):
                    with gr.Tab("Upload", elem_id="img2img_batch_upload_tab") as upload_tab:
                        batch_files = gr.File(label="Images", file_count="multiple", file_types=["image"],
                                              elem_id="img2img_batch_upload")
                    with gr.Tab("From directory", elem_id="img2img_batch_from_dir_tab") as dir_tab:
                        batch_in = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
                upload_tab.select(lambda: "upload", None, batch_source, queue=False)
                dir_tab.select(lambda: "directory", None, batch_source, queue=False)
                batch_out = gr.Textbox(label="Output directory", elem_id="img2img_batch_output_dir")
                batch_masks = gr.Textbox(label="Inpaint batch mask directory (required for inpaint batch "
                                         "processing only)", elem_id="img2img_batch_inpaint_mask_dir")
                with gr.Accordion("PNG info", open=False, elem_id="img2img_batch_png_info"):
                    use_png_info = gr.Checkbox(False, label="Append png info to prompts",
                                               elem_id="img2img_batch_use_png_info")
                    png_info_props = gr.CheckboxGroup(list(PNG_INFO_PROPS), value=[],
                                                      label="Parameters to take from png info",
                                                      info="Prompts from png info will be appended to prompts "
                                                           "set in ui.", elem_id="img2img_batch_png_info_props")
                    png_info_dir = gr.Textbox(label="PNG info directory",
                                              placeholder="Leave empty to use input directory",
                                              elem_id="img2img_batch_png_info_dir")
        for tab, name in ((t1, "img2img"), (t2, "sketch"), (t3, "inpaint"), (t4, "inpaint sketch"),
                          (t5, "inpaint upload"), (t6, "batch")):
            tab.select(lambda n=name: n, None, mode, queue=False)
        components = {"img2img": plain, "sketch": sketch, "inpaint": inpaint, "inpaint_sketch": inpaint_sketch}
        for button, here, there in copy_buttons:
            def copy(value, here=here, there=there):
                image = picture_of(value, drawn=here != "inpaint")   # the inpaint mask's strokes stay behind
                if image is None:
                    return gr.update(), gr.update(), gr.update()
                editor = there != "img2img"
                new = {"background": image, "layers": [], "composite": image} if editor else image
                return new, gr.Tabs(selected=there), there.replace("_", " ")
            button.click(copy, components[here], [components[there], self.subtabs, mode], queue=False)
        self.init_inputs = [mode, plain, sketch, inpaint, inpaint_sketch, upload_image, upload_mask,
                            batch_in, batch_out, batch_masks, batch_source, batch_files, use_png_info,
                            png_info_props, png_info_dir]
        self.mode_state, self.plain_image, self.inpaint_editor = mode, plain, inpaint

    def _build_img2img_options(self) -> None:
        with gr.Row():
            resize = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], type="index", label="Resize mode",
                              elem_id="resize_mode")
        # A1111's "Resize to" (the width and height above) / "Resize by" (a scale of the input image)
        scale_tab = gr.State(False)
        with gr.Tabs(elem_id="img2img_tabs_resize"):
            with gr.Tab("Resize to", elem_id="img2img_tab_resize_to") as to_tab:
                gr.Markdown("The width and height above.")
            with gr.Tab("Resize by", elem_id="img2img_tab_resize_by") as by_tab:
                scale = gr.Slider(0.05, 4.0, value=1.0, step=0.05, label="Scale", elem_id="img2img_scale")
                self.scale_preview = gr.HTML(elem_id="img2img_scale_resolution_preview")
        to_tab.select(lambda: False, None, scale_tab, queue=False)
        by_tab.select(lambda: True, None, scale_tab, queue=False)
        self.scale_tab, self.scale = scale_tab, scale
        self.i2i_denoise = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength",
                                     elem_id="img2img_denoising_strength")
        with gr.Accordion("Inpainting", open=True, elem_id="img2img_inpaint_controls"):
            with gr.Row():
                blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
                invert = gr.Radio(["Inpaint masked", "Inpaint not masked"], value="Inpaint masked", type="index",
                                  label="Mask mode", elem_id="img2img_mask_mode")
            with gr.Row():
                fill = gr.Radio(list(MASKED_CONTENT), value="original", type="index", label="Masked content",
                                elem_id="img2img_inpainting_fill")
                area = gr.Radio(["Whole picture", "Only masked"], value="Whole picture", type="index",
                                label="Inpaint area", elem_id="img2img_inpaint_full_res")
                padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                    elem_id="img2img_inpaint_full_res_padding")
            with gr.Accordion("Soft inpainting", open=False, elem_id="soft_inpainting"):
                soft_on = gr.Checkbox(False, label="Soft inpainting", elem_id="soft_inpainting_enabled",
                                      info="Blend the inpainted content into the original by the mask's shades; "
                                           "a high mask blur is recommended")
                soft_values = [gr.Slider(low, high, value=default, step=step, label=label, info=info, elem_id=eid)
                               for (low, high), default, step, label, info, eid in zip(
                                   soft_settings.RANGES, astuple(soft_settings.SoftInpainting()), SOFT_STEPS,
                                   SOFT_LABELS, SOFT_INFO, SOFT_IDS)]
        self.i2i_fields = {"resize_mode": resize, "mask_blur": blur, "inpainting_mask_invert": invert,
                           "inpainting_fill": fill, "inpaint_full_res": area,
                           "inpaint_full_res_padding": padding}
        self.soft_fields = {"soft_inpainting": soft_on, **dict(zip(SOFT_FIELDS, soft_values))}


# soft inpainting's sliders, as A1111's script shows them (labels, hints, element ids)
SOFT_STEPS = (0.1, 0.05, 0.5, 0.05, 0.25, 0.25)
SOFT_LABELS = ("Schedule bias", "Preservation strength", "Transition contrast boost", "Mask influence",
               "Difference threshold", "Difference contrast")
SOFT_INFO = ("Shifts when preservation of original content occurs during denoising.",
             "How strongly partially masked content should be preserved.",
             "Amplifies the contrast that may be lost in partially masked regions.",
             "How strongly the original mask should bias the difference threshold.",
             "How much an image region can change before the original pixels are not blended in anymore.",
             "How sharp the transition should be between blended and not blended.")
SOFT_IDS = ("mask_blend_power", "mask_blend_scale", "inpaint_detail_preservation", "composite_mask_influence",
            "composite_difference_threshold", "composite_difference_contrast")


def soft_request_args(kw: dict) -> list | None:
    """The alwayson args of the form's soft inpainting, or None while it is off."""
    if not kw.get("soft_inpainting"):
        return None
    return [True, *(float(kw[k]) for k in SOFT_FIELDS)]


def _extra_fields(kw: dict) -> dict:
    """Request fields of the seed extras, the refiner and hires fix's own choices, as A1111's UI sends them: the
    seed extras only while "Extra" is ticked, the refiner only while enabled, "Use same ..." as None."""
    extra = bool(kw["subseed_show"])
    resize = (int(kw["seed_resize_from_w"] or 0), int(kw["seed_resize_from_h"] or 0))
    use_resize = extra and resize[0] > 0 and resize[1] > 0
    return {
        "subseed": int(kw["subseed"]) if extra and kw["subseed"] not in (None, "") else -1,
        "subseed_strength": float(kw["subseed_strength"] or 0) if extra else 0.0,
        "seed_resize_from_w": resize[0] if use_resize else -1,
        "seed_resize_from_h": resize[1] if use_resize else -1,
        "refiner_checkpoint": kw["refiner_checkpoint"] if kw["refiner_enabled"] and kw["refiner_checkpoint"]
        else None,
        "refiner_switch_at": float(kw["refiner_switch_at"]),
        **{k: None if kw[k] in (None, "", same) else kw[k] for k, same in USE_SAME.items()},
        "hr_prompt": kw["hr_prompt"] or "", "hr_negative_prompt": kw["hr_negative_prompt"] or "",
    }


COPY_TARGETS = {"img2img": "img2img", "sketch": "sketch", "inpaint": "inpaint", "inpaint_sketch": "inpaint sketch"}


def picture_of(value, drawn: bool = True):
    """The PIL picture of an image or image-editor value: with ``drawn``, an editor's composite (its strokes
    painted in), else its background; None when empty."""
    if isinstance(value, dict):
        value = (value.get("composite") if drawn else None) or value.get("background")
    return value.convert("RGB") if value is not None else None


def upscale_request(req: GenerationRequest, image, text: str) -> None:
    """Turn a txt2img request into A1111's ✨ upscale of ``image``: one image, hires fix on, the picture (at its own
    size) as the first pass, and the seed and variation seed its infotext records."""
    import base64

    from webui.core import infotext as infotext_fmt
    from webui.engine.saving import encode_image
    req.enable_hr, req.n_iter, req.batch_size = True, 1, 1
    req.width, req.height = image.width, image.height   # the picture at its own size, whatever the form says now
    req.firstpass_image = base64.b64encode(encode_image(image.convert("RGB"), None)).decode()
    params = infotext_fmt.parse_infotext(text) if "Steps: " in text else {}
    for key, name in (("Seed", "seed"), ("Variation seed", "subseed")):
        value = infotext_fmt.parse_number(params.get(key))
        if value is not None:
            setattr(req, name, int(value))


def reused_seed(infotexts: list, index, fallback, key: str) -> int:
    """The seed (``key``: "Seed" or "Variation seed") of the selected gallery image's infotext; ``fallback`` when
    there is none (nothing generated yet, or an image without it)."""
    from webui.core import infotext as infotext_fmt
    texts = list(infotexts or [])
    if not texts:
        return fallback
    text = texts[min(max(int(index or 0), 0), len(texts) - 1)] or ""
    value = infotext_fmt.parse_infotext(text).get(key) if "Steps: " in text else None
    try:
        return int(float(value)) if value not in (None, "") else fallback
    except ValueError:
        return fallback


def native_size(engine: Engine) -> int:
    """The width/height the UI starts with: the bundled shapes model draws at 128 px, others at SD1's 512."""
    try:
        return 128 if engine.models.default_checkpoint().name.startswith("shapes-") else 512
    except StudioError:
        return 512


def paste_controlnet(section: ControlNetSection, text: str) -> list:
    """Updates for a ControlNet section's widgets from the "ControlNet N" keys of an infotext."""
    from webui.core import infotext as infotext_fmt
    from webui.core.controlnet import units_from_infotext
    return section.paste_updates(units_from_infotext(infotext_fmt.parse_infotext(text)))


def _layers_mask(value) -> object:
    """A white-on-black mask from an image editor's painted layers (any painted pixel is masked)."""
    import numpy as np
    from PIL import Image
    layers = [lay for lay in (value or {}).get("layers") or [] if lay is not None]
    if not layers:
        return None
    alpha = np.zeros(layers[0].size[::-1], dtype=bool)
    for lay in layers:
        alpha |= np.asarray(lay.convert("RGBA"))[..., 3] > 0
    return Image.fromarray((alpha * 255).astype("uint8"))


def init_from_editors(mode, plain, sketch, inpaint, inpaint_sketch, upload_image, upload_mask):
    """(init images, mask) from the img2img sub-tab in use, as A1111 reads them."""
    from webui.core.errors import InvalidField

    def need(image, what):
        if image is None:
            raise InvalidField("init_images", f"no image in the {what} tab: upload one first")
        return image

    if mode == "sketch":
        return [need((sketch or {}).get("composite"), "Sketch").convert("RGB")], None
    if mode == "inpaint":
        base = need((inpaint or {}).get("background"), "Inpaint")
        return [base.convert("RGB")], _layers_mask(inpaint)
    if mode == "inpaint sketch":
        comp = need((inpaint_sketch or {}).get("composite"), "Inpaint sketch")
        return [comp.convert("RGB")], _layers_mask(inpaint_sketch)
    if mode == "inpaint upload":
        return [need(upload_image, "Inpaint upload").convert("RGB")], need(upload_mask, "Inpaint upload (mask)")
    return [need(plain, "img2img").convert("RGB")], None


def wire_send_to(source: GenerationTab, target: GenerationTab, tabs: gr.Tabs) -> None:
    """"Send to img2img / inpaint": the selected gallery image and its parameters go to the img2img tab."""
    from webui.ui.pnginfo_tab import paste_values

    def pick(gallery, index, infotexts):
        if not gallery:
            return None, ""
        index = min(max(int(index or 0), 0), len(gallery) - 1)
        text = infotexts[index] if infotexts and index < len(infotexts) else ""
        return selected_image(gallery, index), text

    skipped = ("enable_hr", "hr_upscaler", "hr_second_pass_steps", "hr_scale", "hr_resize_x", "hr_resize_y",
               "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt")
    if source.mode == "txt2img":   # its denoising strength is the hires fix's
        skipped += ("denoising_strength",)
    fields = {k: target.fields[k] for k in source.fields if k in target.fields and k not in skipped}

    def to_img2img(gallery, index, infotexts):
        image, text = pick(gallery, index, infotexts)
        return [image, "img2img", gr.Tabs(selected="img2img"), gr.Tabs(selected="tab_img2img"),
                *paste_values(text, fields)]

    def to_inpaint(gallery, index, infotexts):
        image, text = pick(gallery, index, infotexts)
        editor = {"background": image, "layers": [], "composite": image} if image is not None else None
        return [editor, "inpaint", gr.Tabs(selected="inpaint"), gr.Tabs(selected="tab_img2img"),
                *paste_values(text, fields)]

    inputs = [source.gallery, source.selected, source.infotexts]
    tail = [target.mode_state, target.subtabs, tabs, *fields.values()]
    source.send_img2img.click(to_img2img, inputs, [target.plain_image, *tail])
    source.send_inpaint.click(to_inpaint, inputs, [target.inpaint_editor, *tail])


def selected_image(gallery, index):
    """The PIL image selected in a gallery value (the first when none is selected; None when it is empty)."""
    if not gallery:
        return None
    return _gallery_item(gallery[min(max(int(index or 0), 0), len(gallery) - 1)]).convert("RGB")


def gallery_images(gallery) -> list:
    """The PIL images of a gallery value."""
    return [_gallery_item(item) for item in gallery or []]


def _gallery_item(item):
    """One gallery item as a PIL image (items are images or file paths, alone or with a caption)."""
    from PIL import Image
    image = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(image, dict):   # a FileData-like dict
        image = image.get("path") or (image.get("image") or {}).get("path")
    return Image.open(image) if isinstance(image, str) else image


def wire_send_to_extras(source: GenerationTab, image: gr.components.Component, tabs: gr.Tabs,
                        tab_id: str = "tab_extras") -> None:
    """"Send to extras": the selected gallery image goes to the Extras tab's input image (``image``, a PIL
    gr.Image) and that tab is selected. The button stays hidden on pages without an Extras tab."""
    source.send_extras.visible = True
    source.send_extras.click(lambda gallery, index: [selected_image(gallery, index), gr.Tabs(selected=tab_id)],
                             [source.gallery, source.selected], [image, tabs])
