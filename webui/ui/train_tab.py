"""The Train tab (A1111's): "Create embedding" makes embeddings/NAME.pt from words, "Create hypernetwork"
models/hypernetworks/NAME.pt; "Train" trains either on a folder of images as a job of the engine's queue, with
progress and Interrupt."""
from __future__ import annotations

import gradio as gr

from webui.core.errors import StudioError
from webui.core.training import (
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
)
from webui.engine.processing import Engine
from webui.engine.train_embedding import LATENT_SAMPLING, template_names
from webui.models.hypernetworks import ACTIVATIONS, WEIGHT_INITS
from webui.ui.common import error_html, info_html, progress_html


def _embedding_names(engine: Engine) -> list[str]:
    folder = engine.paths.embeddings
    return sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []


def _hypernetwork_names(engine: Engine) -> list[str]:
    return [i.name for i in engine.models.refresh_hypernetworks()]


def build(engine: Engine) -> None:
    templates = template_names(engine.paths.ti_templates)
    with gr.Tab("Create embedding", id="train_create_embedding"):
        name = gr.Textbox(label="Name", elem_id="train_new_embedding_name")
        init_text = gr.Textbox(label="Initialization text", value="*", elem_id="train_initialization_text")
        vectors = gr.Slider(1, 75, value=1, step=1, label="Number of vectors per token", elem_id="train_nvpt")
        overwrite = gr.Checkbox(False, label="Overwrite Old Embedding", elem_id="train_overwrite_old_embedding")
        create = gr.Button("Create embedding", variant="primary", elem_id="train_create_embedding")
        created = gr.HTML("", elem_id="train_create_result")
    with gr.Tab("Create hypernetwork", id="train_create_hypernetwork"):
        hn_name = gr.Textbox(label="Name", elem_id="train_new_hypernetwork_name")
        hn_sizes = gr.Textbox(label="Modules", value="768, 320, 640, 1024, 1280",
                              elem_id="train_new_hypernetwork_sizes",
                              info="attention widths: 768 (SD1's prompt), 1024 (SD2's), 320 / 640 / 1280 (the "
                                   "UNet's levels); the bundled model's: 64, 128")
        hn_structure = gr.Textbox(label="Hypernetwork layer structure", value="1, 2, 1",
                                  elem_id="train_hypernetwork_layer_structure")
        with gr.Row():
            hn_activation = gr.Dropdown(list(ACTIVATIONS), value="linear", label="Activation function",
                                        elem_id="train_hypernetwork_activation_func")
            hn_init = gr.Dropdown(list(WEIGHT_INITS), value="Normal", label="Layer weights initialization",
                                  elem_id="train_hypernetwork_weight_init")
        with gr.Row():
            hn_norm = gr.Checkbox(False, label="Add layer normalization", elem_id="train_hypernetwork_add_layer_norm")
            hn_dropout = gr.Checkbox(False, label="Use dropout", elem_id="train_hypernetwork_use_dropout")
            hn_overwrite = gr.Checkbox(False, label="Overwrite Old Hypernetwork",
                                       elem_id="train_overwrite_old_hypernetwork")
        hn_create = gr.Button("Create hypernetwork", variant="primary", elem_id="train_create_hypernetwork")
        hn_created = gr.HTML("", elem_id="train_create_hypernetwork_result")
    with gr.Tab("Train", id="train_train"):
        gr.HTML("<p>Train an embedding's vectors on a folder of images (the checkpoint's weights stay as they "
                "are). Prompts come from the template: [name] is the embedding, [filewords] the caption in the "
                "image's .txt file (or its file name).</p>")
        with gr.Row():
            embedding = gr.Dropdown(_embedding_names(engine), label="Embedding", elem_id="train_embedding")
            refresh = gr.Button("🔄", elem_id="train_refresh_embeddings", size="sm", min_width=40, scale=0)
        with gr.Row():
            hypernetwork = gr.Dropdown(_hypernetwork_names(engine), label="Hypernetwork", elem_id="train_hypernetwork")
            hn_refresh = gr.Button("🔄", elem_id="train_refresh_hypernetwork", size="sm", min_width=40, scale=0)
        with gr.Row():
            learn_rate = gr.Textbox(label="Embedding Learning rate", value="0.005",
                                    elem_id="train_embedding_learn_rate")
            hn_rate = gr.Textbox(label="Hypernetwork Learning rate", value="0.00001",
                                 elem_id="train_hypernetwork_learn_rate")
        with gr.Row():
            batch_size = gr.Number(label="Batch size", value=1, precision=0, elem_id="train_batch_size")
            gradient_step = gr.Number(label="Gradient accumulation steps", value=1, precision=0,
                                      elem_id="train_gradient_step")
        data_root = gr.Textbox(label="Dataset directory", placeholder="Path to directory with input images",
                               elem_id="train_dataset_directory")
        log_directory = gr.Textbox(label="Log directory", value="textual_inversion", elem_id="train_log_directory")
        template = gr.Dropdown(templates, value="subject_filewords.txt" if "subject_filewords.txt" in templates
                               else (templates[0] if templates else None), label="Prompt template",
                               elem_id="train_template_file")
        with gr.Row():
            width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="train_training_width")
            height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="train_training_height")
        varsize = gr.Checkbox(False, label="Do not resize images", elem_id="train_varsize")
        steps = gr.Number(label="Max steps", value=100000, precision=0, elem_id="train_steps")
        with gr.Row():
            image_every = gr.Number(label="Save an image to log directory every N steps, 0 to disable", value=500,
                                    precision=0, elem_id="train_create_image_every")
            save_every = gr.Number(label="Save a copy of embedding to log directory every N steps, 0 to disable",
                                   value=500, precision=0, elem_id="train_save_embedding_every")
        with gr.Row():
            shuffle_tags = gr.Checkbox(False, label="Shuffle tags by ',' when creating prompts",
                                       elem_id="train_shuffle_tags")
            tag_drop_out = gr.Slider(0.0, 0.95, value=0.0, step=0.05, label="Drop out tags when creating prompts",
                                     elem_id="train_tag_drop_out")
        with gr.Row():
            clip_mode = gr.Dropdown(["disabled", "value", "norm"], value="disabled", label="Gradient Clipping",
                                    elem_id="train_clip_grad_mode")
            clip_value = gr.Textbox(value="0.1", label="Clip value", elem_id="train_clip_grad_value")
        latent_method = gr.Radio(list(LATENT_SAMPLING), value="once", label="Choose latent sampling method",
                                 elem_id="train_latent_sampling_method")
        use_weight = gr.Checkbox(False, label="Use PNG alpha channel as loss weight", elem_id="train_use_weight")
        with gr.Row():
            go = gr.Button("Train Embedding", variant="primary", elem_id="train_train_embedding")
            go_hn = gr.Button("Train Hypernetwork", variant="primary", elem_id="train_train_hypernetwork")
            stop = gr.Button("Interrupt", elem_id="train_interrupt")
        progress = gr.HTML("", elem_id="train_progress")
        result = gr.HTML("", elem_id="train_result")

    def do_create(n, text, count, over):
        try:
            path = engine.create_embedding(CreateEmbeddingRequest(n or "", int(count), bool(over), text or ""))
        except StudioError as e:
            return error_html(e), gr.update()
        return info_html(f"Created: {path}"), gr.Dropdown(choices=_embedding_names(engine), value=path.stem)

    def do_create_hn(n, sizes, structure, activation, init, norm, dropout, over):
        try:
            widths = [int(x) for x in str(sizes or "").replace(",", " ").split()]
        except ValueError:
            return error_html(StudioError("Modules: whole numbers, e.g. 768, 320, 640")), gr.update()
        try:
            path = engine.create_hypernetwork(CreateHypernetworkRequest(
                n or "", widths, bool(over), structure or "", activation or "linear", init or "Normal",
                bool(norm), bool(dropout)))
        except StudioError as e:
            return error_html(e), gr.update()
        return info_html(f"Created: {path}"), gr.Dropdown(choices=_hypernetwork_names(engine), value=path.stem)

    def do_train(name_, rate, batch, grad, root, log_dir, tpl, w, h, vs, n_steps, image_n, every, shuffle, drop,
                 cmode, cvalue, method, weight, kind="embedding"):
        try:
            fields = dict(
                learn_rate=str(rate), batch_size=int(batch or 1), gradient_step=int(grad or 1),
                data_root=str(root or ""), log_directory=str(log_dir or ""), training_width=int(w),
                training_height=int(h), varsize=bool(vs), steps=int(n_steps or 0), clip_grad_mode=str(cmode),
                clip_grad_value=str(cvalue), shuffle_tags=bool(shuffle), tag_drop_out=float(drop),
                latent_sampling_method=str(method), use_weight=bool(weight), create_image_every=int(image_n or 0),
                save_embedding_every=int(every or 0), template_filename=str(tpl or ""))
            if kind == "hypernetwork":
                job = engine.submit_train_hypernetwork(TrainHypernetworkRequest(
                    hypernetwork_name=name_ or "", save_hypernetwork_every=int(every or 0), **fields))
            else:
                job = engine.submit_train_embedding(TrainEmbeddingRequest(embedding_name=name_ or "", **fields))
        except StudioError as e:
            yield "", error_html(e)
            return
        while not job.done.wait(0.25):
            yield progress_html(job.progress.fraction, job.progress.textinfo), ""
        try:
            res = job.wait()
        except Exception as e:  # noqa: BLE001 - shown to the user; the server keeps serving
            yield "", error_html(e)
            return
        yield "", info_html(res.info())

    create.click(do_create, [name, init_text, vectors, overwrite], [created, embedding])
    refresh.click(lambda: gr.Dropdown(choices=_embedding_names(engine)), None, embedding)
    inputs = [embedding, learn_rate, batch_size, gradient_step, data_root, log_directory, template, width, height,
              varsize, steps, image_every, save_every, shuffle_tags, tag_drop_out, clip_mode, clip_value, latent_method,
              use_weight]
    go.click(do_train, inputs, [progress, result], concurrency_limit=None, show_progress="hidden")
    def do_train_hypernetwork(*values):
        yield from do_train(*values, kind="hypernetwork")

    go_hn.click(do_train_hypernetwork, [hypernetwork, hn_rate, *inputs[2:]], [progress, result],
                concurrency_limit=None, show_progress="hidden")
    hn_create.click(do_create_hn, [hn_name, hn_sizes, hn_structure, hn_activation, hn_init, hn_norm, hn_dropout,
                                   hn_overwrite], [hn_created, hypernetwork])
    hn_refresh.click(lambda: gr.Dropdown(choices=_hypernetwork_names(engine)), None, hypernetwork)
    stop.click(lambda: engine.jobs.interrupt(), None, None, queue=False)
