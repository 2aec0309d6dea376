"""The Checkpoint Merger tab: pick A, B (and C), a method and M, then merge into models/Stable-diffusion as a job
of the engine's queue (so it never runs beside a generation), with progress."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from webui.core.errors import StudioError
from webui.engine.processing import Engine
from webui.models import merge
from webui.ui.common import error_html, info_html, progress_html


def run_merge(engine: Engine, primary: str, secondary: str | None, tertiary: str | None, method: str,
              multiplier: float, custom_name: str, half: bool, vae: str | None, discard: str):
    """Submit the merge; returns the job (its result is the new checkpoint's title)."""
    models = engine.models

    def path_of(title: str | None, field: str) -> Path | None:
        if not title:
            return None
        try:
            return models.find(title).filename
        except StudioError as e:
            raise merge.MergeError(field, str(e)) from None

    if not primary:
        raise merge.MergeError("primary_model", "choose the primary model (A)")
    req = merge.MergeRequest(
        primary=path_of(primary, "primary_model"),
        secondary=path_of(secondary, "secondary_model") if method != "No interpolation" else None,
        tertiary=path_of(tertiary, "tertiary_model") if method == "Add difference" else None,
        mode=method, multiplier=float(multiplier), half=bool(half), discard=discard or "")
    if vae and vae not in ("None", "Automatic"):
        from webui.models.vae import find_vae
        info = find_vae(models.vaes, vae)
        if info is None:
            raise merge.MergeError("bake_in_vae", f"unknown VAE {vae!r}; valid: {', '.join(models.vae_names())}")
        req.vae = info.path
    folder = engine.paths.checkpoints[0]
    output = merge.output_path(folder, custom_name or merge.default_name(req))
    for title, key in ((primary, "primary"), (secondary, "secondary"), (tertiary, "tertiary")):
        if title:
            info = models.find(title)
            req.metadata[f"sd_merge_{key}_hash"] = info.sha256 or ""

    def job_fn(job):
        job.progress.job = "model merge"
        job.progress.job_count = 1

        def progress(done: int, total: int, text: str) -> None:
            job.progress.sampling_steps = max(total, 1)
            job.progress.sampling_step = done
            job.progress.textinfo = f"tensor {done}/{total}: {text}"

        merge.merge_checkpoints(req, output, progress, lambda: job.interrupted)
        models.refresh()
        return next((c.title for c in models.checkpoints if c.filename == output.resolve()), output.name)

    return engine.jobs.submit(job_fn, "model merge")


def build(engine: Engine, checkpoint_dropdown: gr.Dropdown | None = None) -> None:
    models = engine.models
    gr.HTML("<p>A new checkpoint from 2-3 others of one architecture: <b>Weighted sum</b> (1-M)·A + M·B, "
            "<b>Add difference</b> A + M·(B-C), or <b>No interpolation</b> (A alone, e.g. to save it as fp16 or "
            "with a VAE baked in). Saved as .safetensors into models/Stable-diffusion.</p>")
    with gr.Row():
        primary = gr.Dropdown(models.titles(), label="Primary model (A)", elem_id="modelmerger_primary_model_name")
        secondary = gr.Dropdown(models.titles(), label="Secondary model (B)",
                                elem_id="modelmerger_secondary_model_name")
        tertiary = gr.Dropdown(models.titles(), label="Tertiary model (C)", elem_id="modelmerger_tertiary_model_name")
        refresh = gr.Button("🔄", elem_id="modelmerger_refresh", size="sm", min_width=40, scale=0)
    custom_name = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name")
    multiplier = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A",
                           elem_id="modelmerger_interp_amount")
    method = gr.Radio(list(merge.MODES), value="Weighted sum", label="Interpolation Method",
                      elem_id="modelmerger_interp_method")
    with gr.Row():
        half = gr.Checkbox(False, label="Save as float16", elem_id="modelmerger_save_as_half")
        vae = gr.Dropdown(["None", *[v.name for v in models.vaes]], value="None", label="Bake in VAE",
                          elem_id="modelmerger_bake_in_vae")
    discard = gr.Textbox(label="Discard weights with matching name (regular expression)",
                         elem_id="modelmerger_discard_weights")
    go = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
    progress = gr.HTML("", elem_id="modelmerger_progress")
    result = gr.HTML("", elem_id="modelmerger_result")

    def choices():
        titles = models.titles()
        return [gr.Dropdown(choices=titles)] * 3 + [gr.Dropdown(choices=["None", *[v.name for v in models.vaes]])]

    def do_refresh():
        models.refresh()
        models.refresh_vaes()
        return choices()

    def do_merge(*values):
        try:
            job = run_merge(engine, *values)
        except StudioError as e:
            yield "", error_html(e), *[gr.update()] * 3
            return
        while not job.done.wait(0.25):
            p = job.progress
            yield progress_html(p.fraction, p.textinfo), "", *[gr.update()] * 3
        try:
            title = job.wait()
        except Exception as e:  # noqa: BLE001 - shown to the user; the server keeps serving
            yield "", error_html(e), *[gr.update()] * 3
            return
        titles = models.titles()
        yield ("", info_html(f"Checkpoint saved: {title}"), *[gr.Dropdown(choices=titles)] * 3)

    refresh.click(do_refresh, None, [primary, secondary, tertiary, vae])
    outputs = [progress, result, primary, secondary, tertiary]
    go.click(do_merge, [primary, secondary, tertiary, method, multiplier, custom_name, half, vae, discard], outputs,
             concurrency_limit=None, show_progress="hidden")
    if checkpoint_dropdown is not None:
        result.change(lambda: gr.Dropdown(choices=models.titles()), None, checkpoint_dropdown)
