"""Loopback (img2img): each output becomes the next loop's input, the seed counts up by one per loop, and the
denoising strength moves from the request's value to the final one along a curve:

    Linear      s0 + (s1 - s0) * t
    Aggressive  s0 + (s1 - s0) * sin(t * pi / 2)      (most of the change early)
    Lazy        s0 + (s1 - s0) * (1 - cos(t * pi / 2)) (most of the change late)

with t = loop / (loops - 1). With a batch count above one, each batch loops from the original image and only
the last image of each is kept, as A1111 does. No interrogation (CLIP/DeepBooru weights are not available
offline)."""
from __future__ import annotations

import copy
import math

from webui.core.errors import InvalidField
from webui.engine.saving import make_grid
from webui.extensions.api import Processed, Script, fix_seed, process_images, save_grid, setup_color_correction

TITLE = "Loopback"
CURVES = ("Aggressive", "Linear", "Lazy")


def denoising_schedule(start: float, final: float, loops: int, curve: str) -> list[float]:
    """The denoising strength of each loop."""
    if loops == 1:
        return [start]
    out = []
    for i in range(loops):
        t = i / (loops - 1)
        if curve == "Aggressive":
            t = math.sin(t * math.pi / 2)
        elif curve == "Lazy":
            t = 1 - math.cos(t * math.pi / 2)
        out.append(round(start + (final - start) * t, 6))
    return out


class Loopback(Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> bool:
        return is_img2img

    def ui(self, is_img2img: bool) -> list:
        import gradio as gr

        loops = gr.Slider(1, 32, value=4, step=1, label="Loops", elem_id=self.elem_id("loops"))
        final = gr.Slider(0, 1, value=0.5, step=0.01, label="Final denoising strength",
                          elem_id=self.elem_id("final_denoising_strength"))
        curve = gr.Dropdown(list(CURVES), value="Linear", label="Denoising strength curve",
                            elem_id=self.elem_id("denoising_curve"))
        interrogation = gr.Dropdown(["None"], value="None", label="Append interrogated prompt at each iteration",
                                    elem_id=self.elem_id("append_interrogation"), visible=False)
        return [loops, final, curve, interrogation]

    def run(self, p, loops=4, final_denoising_strength=0.5, denoising_curve="Linear", append_interrogation="None"):
        try:
            loops = int(loops)
            final = float(final_denoising_strength)
        except (TypeError, ValueError):
            raise InvalidField("script_args", "loops must be a whole number and the final denoising strength a "
                                              "number") from None
        if not 1 <= loops <= 100:
            raise InvalidField("script_args", f"loops must be from 1 to 100, got {loops}")
        if not 0 <= final <= 1:
            raise InvalidField("script_args", f"final denoising strength must be between 0 and 1, got {final}")
        if denoising_curve not in CURVES:
            raise InvalidField("script_args", f"unknown denoising curve {denoising_curve!r}; valid: "
                                              f"{', '.join(CURVES)}")
        if append_interrogation not in (None, "", "None"):
            raise InvalidField("script_args", "interrogation (CLIP/DeepBooru) is not available: its weights cannot "
                                              "be had offline; use 'None'")
        fix_seed(p)
        start = 0.75 if p.denoising_strength is None else float(p.denoising_strength)
        strengths = denoising_schedule(start, final, loops, denoising_curve)
        batches = int(p.n_iter)
        p.extra_generation_params["Final denoising strength"] = final
        p.extra_generation_params["Denoising curve"] = denoising_curve
        history, texts, seeds, notes = [], [], [], []
        first = None
        seed = p.seed
        total = loops * batches
        # as A1111's loopback: with colour correction on, every loop is corrected towards the first picture, so the
        # colours cannot drift a little further each loop
        if p.opts.get("img2img_color_correction") and p.init_images:
            p.color_corrections = [setup_color_correction(p.init_images[0])]
        for n in range(batches):
            image = p.init_images[0] if p.init_images else None
            fill = p.inpainting_fill
            last = None
            for i in range(loops):
                if p.interrupted:
                    break
                p.report_progress(n * loops + i, total, f"Loop {i + 1}/{loops}, batch {n + 1}/{batches}")
                q = copy.copy(p)
                q.batch_size, q.n_iter, q.do_not_save_grid = 1, 1, True
                q.init_images = [image]
                q.seed = seed
                q.denoising_strength = strengths[i]
                q.inpainting_fill = fill
                res = process_images(q)
                if not res.images:
                    break
                first = first or res
                notes += [x for x in res.notes if x not in notes]
                seed = res.all_seeds[0] + 1
                image = res.images[0]
                fill = 1            # later loops keep what the masked area became ("original")
                last = (image, res.infotexts[0], res.all_seeds[0])
                if batches == 1:
                    history.append(last)
            if batches > 1 and last is not None:
                history.append(last)
            if p.interrupted:
                break
        images = [h[0] for h in history]
        texts = [h[1] for h in history]
        seeds = [h[2] for h in history]
        out_images, out_texts, out_seeds = images, texts, seeds
        if len(images) > 1:
            grid = make_grid(images, rows=1)
            save_grid(p, grid, texts[0])
            if p.opts.get("return_grid", True):
                out_images, out_texts, out_seeds = [grid, *images], [texts[0], *texts], [seeds[0], *seeds]
        out = Processed(p, out_images, seeds[0] if seeds else p.seed, texts[0] if texts else "",
                        all_seeds=out_seeds, infotexts=out_texts,
                        index_of_first_image=1 if len(out_images) > len(images) else 0)
        out.result = first.result if first else None
        out.notes = notes
        out.interrupted = p.interrupted
        return out
