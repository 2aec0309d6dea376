"""The Extras tab: upscale a single image, several uploads, or every image of a folder, with upscaler 1 (and
upscaler 2 blended in), scale by or scale to; results in a gallery, saved to outputs/extras-images (or the
chosen output folder). Element ids follow A1111's (extras_image, extras_upscaler_1, ...)."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
from PIL import Image

from webui.core.errors import InvalidField, StudioError
from webui.core.extras import FLIPS, OBJECTIVES, ExtrasRequest
from webui.engine import batch as batch_files
from webui.engine import extras as extras_engine
from webui.engine.processing import Engine
from webui.ui.common import error_html, info_html, progress_html

SHOW_LIMIT = 32


class ExtrasTab:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.image: gr.Image | None = None   # the single-image input ("Send to extras" targets it)

    def build(self) -> None:
        e = self.engine
        names = e.models.upscaler_names()
        mode = gr.State("single")
        with gr.Row():
            with gr.Column():
                with gr.Tabs(elem_id="mode_extras"):
                    with gr.Tab("Single Image", id="single", elem_id="extras_single_tab") as t1:
                        self.image = gr.Image(label="Source", type="pil", format="png", elem_id="extras_image",
                                              sources=["upload", "clipboard"], image_mode="RGBA")
                    with gr.Tab("Batch Process", id="batch", elem_id="extras_batch_process_tab") as t2:
                        files = gr.File(label="Batch Process", file_count="multiple", elem_id="extras_image_batch",
                                        file_types=["image"])
                    with gr.Tab("Batch from Directory", id="dir", elem_id="extras_batch_directory_tab") as t3:
                        input_dir = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir")
                        output_dir = gr.Textbox(label="Output directory (empty: outputs/extras-images)",
                                                elem_id="extras_batch_output_dir")
                        show = gr.Checkbox(True, label="Show result images", elem_id="extras_show_extras_results")
                for tab, name in ((t1, "single"), (t2, "batch"), (t3, "dir")):
                    tab.select(lambda n=name: n, None, mode, queue=False, show_progress="hidden")
                generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
                resize_mode = gr.State(0)
                with gr.Tabs(elem_id="extras_resize_mode"):
                    with gr.Tab("Scale by", elem_id="extras_scale_by_tab") as by_tab:
                        resize = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Resize",
                                           elem_id="extras_upscaling_resize")
                    with gr.Tab("Scale to", elem_id="extras_scale_to_tab") as to_tab:
                        with gr.Row():
                            width = gr.Slider(64, 8192, value=512, step=8, label="Width",
                                              elem_id="extras_upscaling_resize_w")
                            height = gr.Slider(64, 8192, value=512, step=8, label="Height",
                                               elem_id="extras_upscaling_resize_h")
                            crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
                by_tab.select(lambda: 0, None, resize_mode, queue=False, show_progress="hidden")
                to_tab.select(lambda: 1, None, resize_mode, queue=False, show_progress="hidden")
                with gr.Row():
                    up1 = gr.Dropdown(names, value="Lanczos" if "Lanczos" in names else names[0], label="Upscaler 1",
                                      elem_id="extras_upscaler_1")
                    refresh = gr.Button("🔄", elem_id="extras_refresh_upscalers", size="sm", min_width=40, scale=0)
                with gr.Row():
                    up2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                    vis2 = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                     elem_id="extras_upscaler_2_visibility")
                # A1111's options for preparing training pictures
                with gr.Accordion("Split oversized images", open=False, elem_id="extras_split_oversized"):
                    split = gr.Checkbox(False, label="Split oversized images into pieces of the \"Scale to\" size",
                                        elem_id="extras_split_enable")
                    with gr.Row():
                        split_threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Threshold",
                                                    elem_id="postprocess_split_threshold")
                        split_overlap = gr.Slider(0.0, 0.9, value=0.2, step=0.05, label="Overlap ratio",
                                                  elem_id="postprocess_overlap_ratio")
                with gr.Accordion("Auto focal point crop", open=False, elem_id="extras_focal_crop"):
                    focal = gr.Checkbox(False, label="Crop to the target size around the point of interest",
                                        elem_id="extras_focal_crop_enable")
                    focal_face = gr.Slider(0.0, 1.0, value=0.9, step=0.05, label="Focal point face weight",
                                           elem_id="postprocess_focal_crop_face_weight")
                    focal_entropy = gr.Slider(0.0, 1.0, value=0.15, step=0.05, label="Focal point entropy weight",
                                              elem_id="postprocess_focal_crop_entropy_weight")
                    focal_edges = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Focal point edges weight",
                                            elem_id="postprocess_focal_crop_edges_weight")
                    focal_debug = gr.Checkbox(False, label="Create debug image",
                                              elem_id="train_process_focal_crop_debug")
                with gr.Accordion("Auto-sized crop", open=False, elem_id="extras_autosized_crop"):
                    autosized = gr.Checkbox(False, label="Crop to the best size within these bounds",
                                            elem_id="extras_autosized_crop_enable")
                    with gr.Row():
                        auto_min_dim = gr.Slider(64, 2048, value=384, step=64, label="Dimension lower bound",
                                                 elem_id="postprocess_multicrop_mindim")
                        auto_max_dim = gr.Slider(64, 2048, value=768, step=64, label="Dimension upper bound",
                                                 elem_id="postprocess_multicrop_maxdim")
                    with gr.Row():
                        auto_min_area = gr.Slider(64 * 64, 2048 * 2048, value=64 * 64, step=1,
                                                  label="Area lower bound", elem_id="postprocess_multicrop_minarea")
                        auto_max_area = gr.Slider(64 * 64, 2048 * 2048, value=640 * 640, step=1,
                                                  label="Area upper bound", elem_id="postprocess_multicrop_maxarea")
                    with gr.Row():
                        auto_objective = gr.Radio(list(OBJECTIVES), value=OBJECTIVES[0], label="Resizing objective",
                                                  elem_id="postprocess_multicrop_objective")
                        auto_threshold = gr.Slider(0, 1, value=0.1, step=0.01, label="Error threshold",
                                                   elem_id="postprocess_multicrop_threshold")
                with gr.Accordion("Create flipped copies", open=False, elem_id="extras_flipped_copies"):
                    flip = gr.Checkbox(False, label="Create flipped copies", elem_id="extras_flip_enable")
                    flip_options = gr.CheckboxGroup(list(FLIPS), value=["Horizontal"], label="Flips",
                                                    elem_id="extras_flip_options")
            with gr.Column():
                progress = gr.HTML("", elem_id="extras_progress")
                gallery = gr.Gallery(label="Result", elem_id="extras_gallery", columns=3, height="auto",
                                     format="png", interactive=False)
                info = gr.HTML("", elem_id="html_info_extras")
                error = gr.HTML("", elem_id="extras_error")

        def do_refresh():
            e.models.refresh_upscalers()
            choices = e.models.upscaler_names()
            return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices)

        refresh.click(do_refresh, None, [up1, up2], queue=False)
        inputs = [mode, self.image, files, input_dir, output_dir, show, resize_mode, resize, width, height, crop,
                  up1, up2, vis2, split, split_threshold, split_overlap, flip, flip_options, focal, focal_face,
                  focal_entropy, focal_edges, focal_debug, autosized, auto_min_dim, auto_max_dim, auto_min_area,
                  auto_max_area, auto_objective, auto_threshold]
        generate.click(self.run, inputs, [gallery, progress, info, error], concurrency_limit=None,
                       show_progress="hidden")

    def run(self, mode, image, files, input_dir, output_dir, show, resize_mode, resize, width, height, crop, up1,
            up2, vis2, split=False, split_threshold=0.5, split_overlap=0.2, flip=False, flip_options=(),
            focal=False, focal_face=0.9, focal_entropy=0.15, focal_edges=0.5, focal_debug=False, autosized=False,
            auto_min_dim=384, auto_max_dim=768, auto_min_area=64 * 64, auto_max_area=640 * 640,
            auto_objective=OBJECTIVES[0], auto_threshold=0.1):
        e = self.engine
        try:
            req = ExtrasRequest(resize_mode=int(resize_mode), upscaling_resize=float(resize),
                                upscaling_resize_w=int(width), upscaling_resize_h=int(height),
                                upscaling_crop=bool(crop), upscaler_1=up1 or "None", upscaler_2=up2 or "None",
                                extras_upscaler_2_visibility=float(vis2), split_oversized=bool(split),
                                split_threshold=float(split_threshold), split_overlap_ratio=float(split_overlap),
                                flipped_copies=list(flip_options or []) if flip else [],
                                focal_crop=bool(focal), focal_crop_face_weight=float(focal_face),
                                focal_crop_entropy_weight=float(focal_entropy),
                                focal_crop_edges_weight=float(focal_edges), focal_crop_debug=bool(focal_debug),
                                autosized_crop=bool(autosized), autosized_crop_min_dim=int(auto_min_dim),
                                autosized_crop_max_dim=int(auto_max_dim), autosized_crop_min_area=int(auto_min_area),
                                autosized_crop_max_area=int(auto_max_area),
                                autosized_crop_objective=str(auto_objective),
                                autosized_crop_threshold=float(auto_threshold))
            out_dir, limit = None, None
            if mode == "batch":
                paths = [Path(f if isinstance(f, str) else f.name) for f in (files or [])]
                if not paths:
                    raise InvalidField("image", "upload one or more images to process")
                images = [(p.name, p) for p in paths]
            elif mode == "dir":
                folders = batch_files.check_folders(input_dir, output_dir)
                found = batch_files.list_images(folders.input_dir)
                if not found:
                    raise InvalidField("input_dir", f"no images in {str(folders.input_dir)!r}")
                images = [(p.relative_to(folders.input_dir).as_posix(), p) for p in found]
                out_dir, limit = folders.output_dir, SHOW_LIMIT if show else 0
            else:
                if image is None:
                    raise InvalidField("image", "choose an image to upscale")
                images = [("", image if isinstance(image, Image.Image) else Image.open(image))]
            job = extras_engine.submit_extras(e, req, images, save=True, output_dir=out_dir, show_limit=limit)
        except (StudioError, ValueError, TypeError, OSError) as err:
            yield gr.update(), "", gr.update(), error_html(err)
            return
        while not job.done.wait(0.25):
            yield gr.update(), progress_html(job.progress.fraction, job.progress.textinfo), gr.update(), ""
        try:
            result = job.wait()
        except Exception as err:  # noqa: BLE001 - shown to the user; the server keeps serving
            yield gr.update(), "", "", error_html(err)
            return
        lines = [result.infotexts[0]] if result.infotexts else []
        lines.append(f"{result.processed} image(s) done" + (f", saved to {result.saved[0].parent}"
                                                             if result.saved else ""))
        lines += result.notes
        yield result.images, "", info_html("\n".join(lines)), ""
