"""Prompts from file or textbox: one job per non-empty line. A line is a prompt, or "--key value" options as in
A1111 (--prompt "a cat" --steps 10 --seed 5 --sd_model name ...). Every line is read and checked before the
first image is made; a bad line fails the request with its line number."""
from __future__ import annotations

import copy
import random
import shlex
from collections.abc import Callable
from typing import Any

from webui.core.errors import InvalidField, StudioError
from webui.core.request import MAX_SEED
from webui.extensions.api import Processed, Script, process_images

TITLE = "Prompts from file or textbox"


def _bool(v: str) -> bool:
    low = v.lower()
    if low not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"{v!r} is not true or false")
    return low in ("true", "1", "yes")


def _styles(v: str) -> list[str]:
    return [s.strip() for s in v.split(",") if s.strip()]


OPTIONS: dict[str, Callable[[str], Any]] = {
    "sd_model": str, "prompt": str, "negative_prompt": str, "styles": _styles, "seed": int, "subseed": int,
    "subseed_strength": float, "seed_resize_from_h": int, "seed_resize_from_w": int, "sampler_index": str,
    "sampler_name": str, "scheduler": str, "batch_size": int, "n_iter": int, "steps": int, "cfg_scale": float,
    "width": int, "height": int, "restore_faces": _bool, "tiling": _bool, "do_not_save_samples": _bool,
    "do_not_save_grid": _bool, "denoising_strength": float, "clip_skip": int,
}


def _sampler_from_index(value: str) -> str:
    from webui.core.samplers import sampler_names
    names = sampler_names()
    text = str(value).strip()
    if text.isdigit():
        if int(text) >= len(names):
            raise InvalidField("script_args", f"prompts: --sampler_index {text} is past the last sampler "
                                              f"({len(names) - 1} {names[-1]})")
        return names[int(text)]
    return text


def parse_line(line: str) -> dict[str, Any]:
    """The options of one line ("--key value ..."), or {"prompt": line} for a plain prompt."""
    if not line.lstrip().startswith("--"):
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise ValueError(f"cannot split the line ({e}); check its quotes") from None
    out: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise ValueError(f"expected an option such as --prompt, got {word!r}")
        key = word[2:]
        if key not in OPTIONS:
            raise ValueError(f"unknown option --{key}; valid: {', '.join('--' + k for k in OPTIONS)}")
        values = []
        i += 1
        while i < len(words) and not words[i].startswith("--"):
            values.append(words[i])
            i += 1
        if not values:
            raise ValueError(f"--{key} needs a value")
        text = " ".join(values)
        try:
            out[key] = OPTIONS[key](text)
        except ValueError:
            kind = {int: "a whole number", float: "a number"}.get(OPTIONS[key], "a valid value")  # type: ignore[call-overload]
            raise ValueError(f"--{key} must be {kind}, got {text!r}") from None
    return out


def parse_lines(text: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, options) of each non-empty line; ValueError listing every bad line by number."""
    jobs, bad = [], []
    for number, raw in enumerate(str(text or "").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            jobs.append((number, parse_line(line)))
        except ValueError as e:
            bad.append(f"line {number}: {e}")
    if bad:
        raise ValueError("; ".join(bad))
    return jobs


class PromptsFromFile(Script):
    def title(self) -> str:
        return TITLE

    def ui(self, is_img2img: bool) -> list:
        import gradio as gr

        with gr.Row():
            iterate = gr.Checkbox(False, label="Iterate seed every line", elem_id=self.elem_id("checkbox_iterate"))
            same_seed = gr.Checkbox(False, label="Use same random seed for all lines",
                                    elem_id=self.elem_id("checkbox_iterate_batch"))
            position = gr.Radio(["start", "end"], value="start", label="Insert prompts at the",
                                elem_id=self.elem_id("prompt_position"))
        text = gr.Textbox(label="List of prompt inputs", lines=4, elem_id=self.elem_id("prompt_txt"))
        upload = gr.File(label="Upload prompt inputs", type="binary", file_types=[".txt"],
                         elem_id=self.elem_id("file"))
        upload.change(lambda b: b.decode("utf-8", errors="replace") if b else gr.Textbox(), upload, text,
                      queue=False)
        return [iterate, same_seed, position, text]

    def run(self, p, checkbox_iterate=False, checkbox_iterate_batch=False, prompt_position="start",
            prompt_txt=""):
        try:
            jobs = parse_lines(prompt_txt)
        except ValueError as e:
            raise InvalidField("script_args", f"prompts: {e}") from None
        if not jobs:
            raise InvalidField("script_args", "prompts: the list of prompts is empty")
        if prompt_position not in ("start", "end"):
            raise InvalidField("script_args", f"prompt_position must be 'start' or 'end', got {prompt_position!r}")
        if (checkbox_iterate or checkbox_iterate_batch) and p.seed == -1:
            p.seed = random.randrange(MAX_SEED)
        copies = []
        seed = p.seed
        for number, options in jobs:     # check every line before the first image
            q = self._copy(p, options, prompt_position)
            q.do_not_save_grid = True    # as A1111: no grid per line
            if checkbox_iterate:
                # as A1111: the running seed steps by the request's batch, and a line's own --seed wins
                if "seed" not in options:
                    q.seed = seed
                seed += p.batch_size * p.n_iter
            try:
                self.engine.prepare(q.to_request())
            except StudioError as e:
                raise InvalidField("script_args", f"prompts: line {number}: {e}") from None
            copies.append(q)
        images, texts, prompts, seeds, notes = [], [], [], [], []
        first = None
        for k, q in enumerate(copies):
            if p.interrupted:
                break
            p.report_progress(k, len(copies), f"Line {k + 1} of {len(copies)}")
            res = process_images(q)
            first = first or res
            start = res.index_of_first_image
            images += res.images[start:]
            texts += res.infotexts[start:]
            prompts += res.all_prompts
            seeds += res.all_seeds
            notes += [n for n in res.notes if n not in notes]
        out = Processed(p, images, seeds[0] if seeds else p.seed, texts[0] if texts else "", all_prompts=prompts,
                        all_seeds=seeds, infotexts=texts)
        out.result = first.result if first else None
        out.notes = notes
        out.interrupted = len(images) == 0 or p.interrupted
        return out

    @staticmethod
    def _copy(p, options: dict[str, Any], position: str):
        q = copy.copy(p)
        for key, value in options.items():
            if key == "sd_model":
                q.override_settings["sd_model_checkpoint"] = value
            elif key == "clip_skip":
                q.override_settings["CLIP_stop_at_last_layers"] = value
            elif key == "sampler_index":   # A1111: an index into the sampler list (a name is taken too)
                q.sampler_name = _sampler_from_index(value)
            else:
                setattr(q, key, value)
        for key in ("prompt", "negative_prompt"):
            if options.get(key) and getattr(p, key):
                given, base = options[key], getattr(p, key)
                setattr(q, key, f"{given} {base}" if position == "start" else f"{base} {given}")
        return q
