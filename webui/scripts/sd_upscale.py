"""SD upscale (img2img script, A1111's title and first four args): upscale the init image by the scale factor
with an upscaler, then redraw it in tiles of the generation size (p.width x p.height) overlapping by
``overlap`` px, blended with gradient masks (webui/engine/tiled_upscale.py holds the tiling; each tile is one
process_images run of a copy of p, so always-on scripts apply to every tile and tiles are not saved).

script_args: [info (ignored), overlap=64, upscaler (index into GET /sdapi/v1/upscalers, or its name),
scale_factor=2.0], then the Ultimate SD Upscale options: tile_width=0 and tile_height=0 (0: p.width / p.height),
padding=0, mask_blur=0, redraw ("Linear", "Chess", "None"), seams_fix ("None", "Band pass", "Half tile offset
pass", "Half tile offset pass + intersections"), seams_fix_denoise=0.35, seams_fix_width=64,
seams_fix_padding=16, seams_fix_mask_blur=4.
"""
from __future__ import annotations

import copy

from webui.core.errors import InvalidField
from webui.engine import tiled_upscale as tiled
from webui.extensions.api import Processed, Script, fix_seed, process_images

TITLE = "SD upscale"


def upscaler_name(engine, value) -> str:
    """An upscaler given by index (A1111's radio has type="index") or by name."""
    names = engine.models.upscaler_names() if engine is not None else ["None", "Lanczos", "Nearest"]
    if isinstance(value, bool):
        raise InvalidField("script_args", f"the upscaler must be an index or a name; valid: {', '.join(names)}")
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        i = int(value)
        if not 0 <= i < len(names):
            raise InvalidField("script_args", f"upscaler index {i} is out of range 0..{len(names) - 1}; "
                                              f"upscalers: {', '.join(names)}")
        return names[i]
    return str(value or "None")


def _number(value, name: str, kind=float):
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise InvalidField("script_args", f"{name} must be a number, got {value!r}") from None


class SDUpscale(Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> bool:
        return is_img2img

    def ui(self, is_img2img: bool) -> list:
        import gradio as gr

        names = self.engine.models.upscaler_names() if self.engine is not None else ["None", "Lanczos", "Nearest"]
        info = gr.HTML("<p>Upscales the image by the scale factor, then redraws it in tiles of the width x height "
                       "above (or the tile size below), blended where they overlap.</p>")
        overlap = gr.Slider(0, 256, value=64, step=8, label="Tile overlap", elem_id=self.elem_id("overlap"))
        upscaler = gr.Radio(names, value=names[0], label="Upscaler", type="index", elem_id=self.elem_id("upscaler"))
        scale = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Scale Factor", elem_id=self.elem_id("scale_factor"))
        with gr.Accordion("Tiles and seams (Ultimate SD upscale options)", open=False):
            with gr.Row():
                tile_w = gr.Slider(0, 2048, value=0, step=8, label="Tile width (0 = width)",
                                   elem_id=self.elem_id("tile_width"))
                tile_h = gr.Slider(0, 2048, value=0, step=8, label="Tile height (0 = height)",
                                   elem_id=self.elem_id("tile_height"))
            with gr.Row():
                padding = gr.Slider(0, 256, value=0, step=8, label="Padding", elem_id=self.elem_id("padding"))
                blur = gr.Slider(0, 64, value=0, step=1, label="Mask blur", elem_id=self.elem_id("mask_blur"))
                redraw = gr.Dropdown(list(tiled.REDRAW_MODES), value="Linear", label="Redraw order",
                                     elem_id=self.elem_id("redraw"))
            seams = gr.Dropdown(list(tiled.SEAMS_FIX_MODES), value="None", label="Seams fix",
                                elem_id=self.elem_id("seams_fix"))
            with gr.Row():
                s_denoise = gr.Slider(0, 1, value=0.35, step=0.01, label="Seams fix denoise",
                                      elem_id=self.elem_id("seams_fix_denoise"))
                s_width = gr.Slider(8, 256, value=64, step=8, label="Seams fix width",
                                    elem_id=self.elem_id("seams_fix_width"))
                s_padding = gr.Slider(0, 128, value=16, step=8, label="Seams fix padding",
                                      elem_id=self.elem_id("seams_fix_padding"))
                s_blur = gr.Slider(0, 64, value=4, step=1, label="Seams fix mask blur",
                                   elem_id=self.elem_id("seams_fix_mask_blur"))
        return [info, overlap, upscaler, scale, tile_w, tile_h, padding, blur, redraw, seams, s_denoise, s_width,
                s_padding, s_blur]

    def options(self, p, overlap, upscaler_index, scale_factor, tile_width, tile_height, padding, mask_blur,
                redraw, seams_fix, seams_fix_denoise, seams_fix_width, seams_fix_padding, seams_fix_mask_blur
                ) -> tuple[tiled.TiledUpscaleOptions, int, int]:
        """Checked options and the tile size; InvalidField before any work."""
        engine = p.engine
        o = tiled.TiledUpscaleOptions(
            scale=_number(scale_factor, "scale_factor"), upscaler=upscaler_name(engine, upscaler_index),
            overlap=_number(overlap, "overlap", int), tile_width=_number(tile_width, "tile_width", int),
            tile_height=_number(tile_height, "tile_height", int), padding=_number(padding, "padding", int),
            mask_blur=_number(mask_blur, "mask_blur", int), redraw=str(redraw), seams_fix=str(seams_fix),
            seams_fix_width=_number(seams_fix_width, "seams_fix_width", int),
            seams_fix_denoise=_number(seams_fix_denoise, "seams_fix_denoise"),
            seams_fix_padding=_number(seams_fix_padding, "seams_fix_padding", int),
            seams_fix_mask_blur=_number(seams_fix_mask_blur, "seams_fix_mask_blur", int))
        tw, th = o.tile_width or int(p.width), o.tile_height or int(p.height)
        max_side = int(p.opts.get("max_image_side", 2048))
        for name, v in (("tile_width", tw), ("tile_height", th)):
            if v % 8 or not 64 <= v <= max_side:
                raise InvalidField("script_args", f"{name} must be a multiple of 8 from 64 to {max_side}, got {v}")
        if not p.init_images:
            raise InvalidField("init_images", "SD upscale needs an init image")
        init = p.init_images[0]
        o = tiled.check_options(o, engine.models, tw, th, init.width, init.height,
                                int(p.opts.get("upscale_max_side", 8192)))
        return o, tw, th

    def run(self, p, _info="", overlap=64, upscaler_index="None", scale_factor=2.0, tile_width=0, tile_height=0,
            padding=0, mask_blur=0, redraw="Linear", seams_fix="None", seams_fix_denoise=0.35, seams_fix_width=64,
            seams_fix_padding=16, seams_fix_mask_blur=4):
        o, tw, th = self.options(p, overlap, upscaler_index, scale_factor, tile_width, tile_height, padding,
                                 mask_blur, redraw, seams_fix, seams_fix_denoise, seams_fix_width, seams_fix_padding,
                                 seams_fix_mask_blur)
        engine, opts = p.engine, p.opts
        fix_seed(p)
        p.extra_generation_params.update(o.infotext())
        denoise = 0.75 if p.denoising_strength is None else float(p.denoising_strength)
        upscaled = tiled.upscale_first(engine, p.init_images[0], o, opts, p.job)
        plan = tiled.plan_tiles(upscaled.width, upscaled.height, tw, th, o)
        batches = max(1, int(p.n_iter))
        first = None
        notes: list[str] = []
        images, texts, seeds = [], [], []
        for n in range(batches):
            runs: list = []

            def redraw_tile(tile, w, h, seed, strength, runs=runs):
                q = copy.copy(p)
                q.init_images, q.image_mask, q.resize_mode = [tile], None, 0
                q.width, q.height, q.seed, q.denoising_strength = w, h, seed, strength
                q.batch_size, q.n_iter, q.do_not_save_samples, q.do_not_save_grid = 1, 1, True, True
                q.all_prompts = q.all_negative_prompts = q.all_seeds = q.all_subseeds = None
                res = process_images(q)
                if not runs:   # the first tile's result describes the run (model, sampler, infotext)
                    runs.append(res)
                notes.extend(x for x in res.notes if x not in notes)
                return res.images[res.index_of_first_image] if res.images else None

            def progress(k: int, total: int, n: int = n) -> bool:
                p.report_progress(n * total + k, total * batches, f"Tile {k + 1} of {total}, batch {n + 1}/{batches}")
                return not p.interrupted

            done = tiled.tiled_redraw(upscaled, plan, denoise, p.seed + n, redraw_tile, progress)
            text = tiled.final_infotext([r.result for r in runs[:1] if r.result is not None], o, p.to_request(),
                                        p.seed + n, upscaled, denoise)
            first = first or (runs[0] if runs else None)
            images.append(done.image)
            texts.append(text)
            seeds.append(p.seed + n)
            run = getattr(p, "_run", None)
            if run is not None and run.save and not p.do_not_save_samples and opts.get("samples_save", True):
                run.saved.append(tiled.save_result(engine, done.image, text, p.seed + n, p.to_request(), opts))
            if p.interrupted:
                break
        if denoise <= 0 or o.redraw == "None":
            notes.append("denoising strength 0 or redraw None: tiles were not redrawn, the image is the upscale")
        out = Processed(p, images, p.seed, texts[0] if texts else "", all_seeds=seeds, infotexts=texts)
        out.result = first.result if first is not None else None
        out.notes = notes
        out.interrupted = p.interrupted
        return out
