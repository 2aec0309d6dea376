"""Prompt matrix: "a cat | red | wearing a hat" makes every combination of the parts after the first (which is
always kept): 2^(n-1) images in one job, laid out in a grid whose column and row labels show which parts are
on (parts that are off are struck through). Like A1111's, with two sane differences: the first part is
stripped of surrounding spaces too (A1111 leaves "a cat , red"), and a batch size that does not divide the
number of images falls back to batch size 1 (A1111 would make extra images)."""
from __future__ import annotations

import copy
import math

from webui.core.errors import InvalidField
from webui.core.grids import GridAnnotation
from webui.engine.saving import labelled_grid
from webui.extensions.api import Processed, Script, fix_seed, process_images, save_grid

TITLE = "Prompt matrix"


def matrix_prompts(prompt: str, put_at_start: bool = False, delimiter: str = ", ") -> tuple[list[str], list[str]]:
    """(the parts, the 2^(n-1) prompts): bit i of image k's index says whether part i+1 is in its prompt."""
    parts = [p.strip().strip(",").strip() for p in prompt.split("|")]
    prompts = []
    for k in range(2 ** (len(parts) - 1)):
        chosen = [text for i, text in enumerate(parts[1:]) if k & (1 << i)]
        words = [*chosen, parts[0]] if put_at_start else [parts[0], *chosen]
        prompts.append(delimiter.join(w for w in words if w))
    return parts, prompts


def matrix_labels(parts: list[str]) -> tuple[list[list[GridAnnotation]], list[list[GridAnnotation]]]:
    """Column and row labels: the first half of the variable parts across, the rest down."""
    variable = parts[1:]
    across, down = variable[:math.ceil(len(variable) / 2)], variable[math.ceil(len(variable) / 2):]

    def labels(texts: list[str]) -> list[list[GridAnnotation]]:
        return [[GridAnnotation(t, is_active=bool(pos & (1 << i))) for i, t in enumerate(texts)]
                for pos in range(1 << len(texts))]
    return labels(across), labels(down)


class PromptMatrix(Script):
    def title(self) -> str:
        return TITLE

    def ui(self, is_img2img: bool) -> list:
        import gradio as gr

        with gr.Row():
            put_at_start = gr.Checkbox(False, label="Put variable parts at start of prompt",
                                       elem_id=self.elem_id("put_at_start"))
            different_seeds = gr.Checkbox(False, label="Use different seed for each picture",
                                          elem_id=self.elem_id("different_seeds"))
        with gr.Row():
            prompt_type = gr.Radio(["positive", "negative"], value="positive", label="Select prompt",
                                   elem_id=self.elem_id("prompt_type"))
            delimiter = gr.Radio(["comma", "space"], value="comma", label="Select joining char",
                                 elem_id=self.elem_id("variations_delimiter"))
        margin = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)", elem_id=self.elem_id("margin_size"))
        return [put_at_start, different_seeds, prompt_type, delimiter, margin]

    def run(self, p, put_at_start=False, different_seeds=False, prompt_type="positive",
            variations_delimiter="comma", margin_size=0):
        if prompt_type not in ("positive", "negative"):
            raise InvalidField("script_args", f"prompt_type must be 'positive' or 'negative', got {prompt_type!r}")
        if variations_delimiter not in ("comma", "space"):
            raise InvalidField("script_args", f"variations_delimiter must be 'comma' or 'space', "
                                              f"got {variations_delimiter!r}")
        source = p.prompt if prompt_type == "positive" else p.negative_prompt
        source = source[0] if isinstance(source, list) else source
        if "|" not in source:
            raise InvalidField("prompt" if prompt_type == "positive" else "negative_prompt",
                               "a prompt matrix needs parts separated by | (e.g. 'a cat | red | with a hat')")
        parts, prompts = matrix_prompts(source, bool(put_at_start), ", " if variations_delimiter == "comma" else " ")
        limit = int(p.opts.get("xyz_max_cells", 256))
        if len(prompts) > limit:
            raise InvalidField("prompt", f"{len(parts) - 1} variable parts make {len(prompts)} images; the setting "
                                         f"xyz_max_cells allows {limit}")
        fix_seed(p)
        q = copy.copy(p)
        if len(prompts) % max(1, q.batch_size):
            q.batch_size = 1
        q.n_iter = len(prompts) // q.batch_size
        q.do_not_save_grid = True          # the engine's plain batch grid: the labelled one replaces it
        if prompt_type == "positive":
            q.prompt = prompts
        else:
            q.negative_prompt = prompts
        q.seed = [p.seed + (i if different_seeds else 0) for i in range(len(prompts))]
        processed = process_images(q)
        images = processed.images[processed.index_of_first_image:]
        texts = processed.infotexts[processed.index_of_first_image:]
        across, down = matrix_labels(parts)
        grid = labelled_grid(images, len(across), across, down, margin=max(0, int(float(margin_size or 0))))
        save_grid(p, grid, texts[0] if texts else None, "prompt_matrix")
        # as A1111: the grid leads images and infotexts; all_prompts / all_seeds are the images' alone
        out = Processed(p, [grid, *images], processed.seed, texts[0] if texts else "",
                        all_prompts=list(processed.all_prompts),
                        all_negative_prompts=list(processed.all_negative_prompts),
                        all_seeds=list(processed.all_seeds), all_subseeds=list(processed.all_subseeds),
                        index_of_first_image=1, infotexts=[texts[0] if texts else "", *texts])
        out.result, out.notes, out.interrupted = processed.result, processed.notes, processed.interrupted
        return out
