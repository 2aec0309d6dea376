"""X/Y/Z plot: one image per combination of up to three axes' values, laid out in a labelled grid (Z makes
sub-grids side by side). run()'s arguments follow A1111's order, so API clients written for A1111 work:

    x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
    z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
    vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode

An axis type is its label ("CFG Scale", case-insensitive) or its index in this tab's list, which is A1111's
list in A1111's order (so an API client's indices mean the same axes). Every value of every axis, and every
cell, is checked before the first image is made; the number of cells is capped by the setting xyz_max_cells.
Cells run in A1111's order (X fastest, Z slowest, an axis dearer than the others outermost). A1111's axes with no
counterpart in this studio's sampler (Image CFG Scale, Face restore, Token merging, FP8) are listed to keep the
indices and refused with a message.
"""
from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webui.core import infotext as infotext_fmt
from webui.core import samplers as core_samplers
from webui.core.errors import InvalidField, StudioError
from webui.core.grids import GridAnnotation
from webui.core.request import MAX_SEED
from webui.engine import samplers as engine_samplers
from webui.engine.saving import labelled_grid
from webui.extensions.api import Processed, Script, StableDiffusionProcessing, fix_seed, process_images, save_grid
from webui.scripts import axis_values

TITLE = "X/Y/Z plot"


# -- what each axis does to a copy of p ---------------------------------------------------------------------
def _field(name: str) -> Callable:
    def apply(p: StableDiffusionProcessing, value: Any, values: list) -> None:
        setattr(p, name, value)
    return apply


def _override(key: str) -> Callable:
    def apply(p: StableDiffusionProcessing, value: Any, values: list) -> None:
        p.override_settings[key] = value
    return apply


def _override_bool(key: str) -> Callable:
    def apply(p: StableDiffusionProcessing, value: Any, values: list) -> None:
        p.override_settings[key] = str(value).strip().lower() == "true"
    return apply


def _booleans(engine) -> list[str]:
    return ["False", "True"]


def _prompt_sr(p: StableDiffusionProcessing, value: str, values: list) -> None:
    """Prompt S/R: the first value is searched for; each value (the first included) replaces it."""
    p.prompt = p.prompt.replace(values[0], value)
    p.negative_prompt = p.negative_prompt.replace(values[0], value)


def _prompt_order(p: StableDiffusionProcessing, order: list[str], values: list) -> None:
    """Prompt order: the given tokens, wherever they are in the prompt, put back in this order."""
    found = sorted((p.prompt.find(t), t) for t in order)
    parts, rest = [], p.prompt
    for _, token in found:
        at = rest.find(token)
        parts.append(rest[:at])
        rest = rest[at + len(token):]
    p.prompt = "".join(part + token for part, token in zip(parts, order)) + rest


def _checkpoint(p: StableDiffusionProcessing, value: str, values: list) -> None:
    p.override_settings["sd_model_checkpoint"] = value


def _size(p: StableDiffusionProcessing, value: tuple[int, int], values: list) -> None:
    p.width, p.height = value


def _nothing(p: StableDiffusionProcessing, value: Any, values: list) -> None:
    pass


def _label(axis: Axis, value: Any) -> str:
    if axis.show == "none":
        return ""
    if axis.kind == "size":
        text = f"{value[0]}x{value[1]}"
    elif axis.kind == "permutations":
        text = ", ".join(value)
    elif isinstance(value, float):
        text = str(round(value, 8))   # as A1111's labels: "CFG Scale: 5.0"
    else:
        text = str(value)
    if axis.show == "path":
        return os.path.basename(text)
    return text if axis.show == "value" else f"{axis.label}: {text}"


@dataclass(frozen=True)
class Axis:
    label: str
    kind: str                                  # int, float, str, size, permutations
    apply: Callable
    show: str = "label"                        # label ("Label: value"), value, path (basename), none
    cost: float = 0.0                          # expensive axes change least often (checkpoints load once)
    choices: Callable[[Any], list[str]] | None = None
    tab: str | None = None                     # "txt2img" / "img2img" only, or both
    supported: bool = True                     # False: one of A1111's axes kept only for its index


def _checkpoints(engine) -> list[str]:
    return sorted(engine.models.titles(), key=str.casefold)


def _vaes(engine) -> list[str]:
    return list(engine.models.vae_names())


def _samplers(engine) -> list[str]:
    return list(engine_samplers.available())


def _schedules(engine) -> list[str]:
    return core_samplers.schedule_labels()


def _hires_upscalers(engine) -> list[str]:
    from webui.engine.hires import hires_upscalers
    try:
        return list(hires_upscalers(engine.models))   # with model upscalers, where the engine lists them
    except TypeError:
        return list(hires_upscalers())


def _rng(engine) -> list[str]:
    d = engine.settings.defs.get("randn_source")
    return list(d.choices) if d is not None and d.choices else ["GPU", "CPU"]


def _styles(p: StableDiffusionProcessing, value: str, values: list) -> None:
    p.styles = [*(p.styles or []), *[s.strip() for s in value.split(",") if s.strip()]]


def _style_names(engine) -> list[str]:
    return list(engine.styles.names())


def _unsupported(label: str, tab: str | None = None, kind: str = "float") -> Axis:
    """One of A1111's axes that this studio's sampling has no counterpart for: listed so that every axis keeps
    A1111's index (API clients send indices), refused with a message before any work."""
    return Axis(label, kind, _nothing, tab=tab, supported=False)


# A1111's axes in A1111's order (txt2img and img2img lists differ by the tab-only ones), so an index an API
# client sends means the same axis here as there.
AXES: tuple[Axis, ...] = (
    Axis("Nothing", "str", _nothing, show="none"),
    Axis("Seed", "int", _field("seed")),
    Axis("Var. seed", "int", _field("subseed")),
    Axis("Var. strength", "float", _field("subseed_strength")),
    Axis("Steps", "int", _field("steps")),
    Axis("Hires steps", "int", _field("hr_second_pass_steps"), tab="txt2img"),
    Axis("CFG Scale", "float", _field("cfg_scale")),
    _unsupported("Image CFG Scale", tab="img2img"),            # instruct-pix2pix models only
    Axis("Prompt S/R", "str", _prompt_sr, show="value"),
    Axis("Prompt order", "permutations", _prompt_order, show="value"),
    Axis("Sampler", "str", _field("sampler_name"), show="value", choices=_samplers, tab="txt2img"),
    Axis("Hires sampler", "str", _field("hr_sampler_name"), choices=_samplers, tab="txt2img"),
    Axis("Sampler", "str", _field("sampler_name"), show="value", choices=_samplers, tab="img2img"),
    Axis("Checkpoint name", "str", _checkpoint, show="path", cost=1.0, choices=_checkpoints),
    Axis("Negative Guidance minimum sigma", "float", _override("s_min_uncond")),
    Axis("Sigma Churn", "float", _override("s_churn")),
    Axis("Sigma min", "float", _override("s_tmin")),
    Axis("Sigma max", "float", _override("s_tmax")),
    Axis("Sigma noise", "float", _override("s_noise")),
    Axis("Schedule type", "str", _field("scheduler"), choices=_schedules),
    Axis("Schedule min sigma", "float", _override("sigma_min")),
    Axis("Schedule max sigma", "float", _override("sigma_max")),
    Axis("Schedule rho", "float", _override("rho")),
    Axis("Eta", "float", _field("eta")),
    Axis("Clip skip", "int", _override("CLIP_stop_at_last_layers")),
    Axis("Denoising", "float", _field("denoising_strength")),
    Axis("Initial noise multiplier", "float", _field("initial_noise_multiplier")),
    Axis("Extra noise", "float", _override("img2img_extra_noise")),
    Axis("Hires upscaler", "str", _field("hr_upscaler"), choices=_hires_upscalers, tab="txt2img"),
    Axis("Cond. Image Mask Weight", "float", _override("inpainting_mask_weight"), tab="img2img"),
    Axis("VAE", "str", _override("sd_vae"), cost=0.7, choices=_vaes),
    Axis("Styles", "str", _styles, show="value", choices=_style_names),
    Axis("UniPC Order", "int", _override("uni_pc_order"), cost=0.5),
    _unsupported("Face restore", kind="str"),
    _unsupported("Token merging ratio"),
    _unsupported("Token merging ratio high-res"),
    Axis("Always discard next-to-last sigma", "str", _override_bool("always_discard_next_to_last_sigma"),
         choices=_booleans),
    Axis("SGM noise multiplier", "str", _override_bool("sgm_noise_multiplier"), choices=_booleans),
    Axis("Refiner checkpoint", "str", _field("refiner_checkpoint"), show="path", cost=1.0,
         choices=lambda engine: ["None", *_checkpoints(engine)]),
    Axis("Refiner switch at", "float", _field("refiner_switch_at")),
    Axis("RNG source", "str", _override("randn_source"), choices=_rng),
    _unsupported("FP8 mode", kind="str"),
    Axis("Size", "size", _size),
)


def axes_for(is_img2img: bool) -> list[Axis]:
    tab = "img2img" if is_img2img else "txt2img"
    return [a for a in AXES if a.tab in (None, tab)]


def find_axis(kind: Any, is_img2img: bool, name: str) -> Axis:
    """An axis by its index in this tab's list or by its label (case-insensitive)."""
    axes = axes_for(is_img2img)
    if isinstance(kind, (int, float)) and not isinstance(kind, bool) and float(kind).is_integer():
        if 0 <= int(kind) < len(axes):
            return axes[int(kind)]
    elif isinstance(kind, str):
        text = kind.strip()
        if text.isdigit() and int(text) < len(axes):
            return axes[int(text)]
        for a in axes:
            if a.label.lower() == text.lower():
                return a
    valid = ", ".join(f"{i} {a.label}" for i, a in enumerate(axes))
    raise InvalidField("script_args", f"{name}: unknown axis type {kind!r}; valid: {valid}")


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


@dataclass
class PlotAxis:
    axis: Axis
    values: list
    text: str                                  # the values as given (the grid's infotext keeps them)
    name: str                                  # "X", "Y" or "Z"


class XYZPlot(Script):
    def title(self) -> str:
        return TITLE

    def ui(self, is_img2img: bool) -> list:
        import gradio as gr

        axes = axes_for(is_img2img)
        labels = [a.label if a.supported else f"{a.label} (not available)" for a in axes]
        engine = self.engine
        rows = []
        for name, default in (("x", 1), ("y", 0), ("z", 0)):
            with gr.Row():
                kind = gr.Dropdown(labels, value=labels[default], type="index", label=f"{name.upper()} type",
                                   elem_id=self.elem_id(f"{name}_type"), scale=1)
                text = gr.Textbox(label=f"{name.upper()} values", lines=1, elem_id=self.elem_id(f"{name}_values"),
                                  scale=3)
                drop = gr.Dropdown([], value=[], multiselect=True, label=f"{name.upper()} values", visible=False,
                                   elem_id=self.elem_id(f"{name}_values_dropdown"), scale=3)
                fill = gr.Button("📒", visible=False, size="sm", min_width=40, scale=0,
                                 elem_id=self.elem_id(f"fill_{name}"))
            rows.append((kind, text, drop, fill))
        with gr.Row():
            draw_legend = gr.Checkbox(True, label="Draw legend", elem_id=self.elem_id("draw_legend"))
            no_fixed_seeds = gr.Checkbox(False, label="Keep -1 for seeds", elem_id=self.elem_id("no_fixed_seeds"))
            include_lone_images = gr.Checkbox(False, label="Include Sub Images",
                                              elem_id=self.elem_id("include_lone_images"))
            include_sub_grids = gr.Checkbox(False, label="Include Sub Grids",
                                            elem_id=self.elem_id("include_sub_grids"))
            csv_mode = gr.Checkbox(False, label="Use text inputs instead of dropdowns",
                                   elem_id=self.elem_id("csv_mode"))
        with gr.Row():
            vary_x = gr.Checkbox(False, label="Vary seeds for X", elem_id=self.elem_id("vary_seeds_x"))
            vary_y = gr.Checkbox(False, label="Vary seeds for Y", elem_id=self.elem_id("vary_seeds_y"))
            vary_z = gr.Checkbox(False, label="Vary seeds for Z", elem_id=self.elem_id("vary_seeds_z"))
            margin = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)", elem_id=self.elem_id("margin_size"))
        with gr.Row():
            swaps = [gr.Button(f"Swap {a}/{b} axes", size="sm", elem_id=self.elem_id(f"swap_{a}{b}".lower()))
                     for a, b in (("X", "Y"), ("Y", "Z"), ("X", "Z"))]

        def choices_of(index: int) -> list[str] | None:
            axis = axes[index] if index is not None and 0 <= index < len(axes) else axes[0]
            return axis.choices(engine) if axis.choices and engine is not None else None

        def select(index, text, chosen, csv):
            choices = choices_of(index)
            if choices is None:
                return gr.Textbox(visible=True, value=text), gr.Dropdown(visible=False), gr.Button(visible=False)
            if csv:
                return (gr.Textbox(visible=True, value=text or axis_values.to_csv(chosen or [])),
                        gr.Dropdown(visible=False, choices=choices, value=[]), gr.Button(visible=True))
            picked = [c for c in (chosen or axis_values.split_csv(text or "")) if c in choices]
            return (gr.Textbox(visible=False, value=""), gr.Dropdown(visible=True, choices=choices, value=picked),
                    gr.Button(visible=True))

        def fill(index, csv):
            choices = choices_of(index) or []
            return (axis_values.to_csv(choices), []) if csv else (gr.Textbox(), choices)

        for kind, text, drop, fill_btn in rows:
            kind.change(select, [kind, text, drop, csv_mode], [text, drop, fill_btn], queue=False)
            fill_btn.click(fill, [kind, csv_mode], [text, drop], queue=False)
        for kind, text, drop, fill_btn in rows:
            csv_mode.change(select, [kind, text, drop, csv_mode], [text, drop, fill_btn], queue=False)
        for btn, (a, b) in zip(swaps, ((0, 1), (1, 2), (0, 2))):
            ra, rb = rows[a][:3], rows[b][:3]
            btn.click(lambda *v: (*v[3:], *v[:3]), [*ra, *rb], [*ra, *rb], queue=False)

        (xk, xt, xd, _), (yk, yt, yd, _), (zk, zt, zd, _) = rows
        return [xk, xt, xd, yk, yt, yd, zk, zt, zd, draw_legend, include_lone_images, include_sub_grids,
                no_fixed_seeds, vary_x, vary_y, vary_z, margin, csv_mode]

    # -- checking --------------------------------------------------------------------------------------------
    def _axis(self, p, name: str, kind: Any, text: Any, dropdown: Any, csv_mode: bool) -> PlotAxis:
        axis = find_axis(kind, p.is_img2img, f"{name} type")
        if axis.label == "Nothing":
            return PlotAxis(axis, [None], "", name)
        if not axis.supported:
            usable = ", ".join(a.label for a in axes_for(p.is_img2img) if a.supported and a.label != "Nothing")
            raise InvalidField("script_args", f"{name} type: A1111's axis {axis.label!r} has no counterpart in "
                                              f"this studio's sampler; usable axes: {usable}")
        use_dropdown = bool(axis.choices) and not csv_mode and bool(dropdown)
        items = list(dropdown) if use_dropdown and isinstance(dropdown, (list, tuple)) else None
        try:
            values = axis_values.parse_values(axis.kind, None if items else str(text or ""), items)
        except ValueError as e:
            raise InvalidField("script_args", f"{name} values ({axis.label}): {e}") from None
        if axis.label == "Prompt S/R" and values[0] not in p.prompt and values[0] not in p.negative_prompt:
            raise InvalidField("script_args", f"{name} values (Prompt S/R): {values[0]!r} is not in the prompt "
                                              "or the negative prompt (the first value is what gets replaced)")
        if axis.label == "Checkpoint name":
            values = [self._checkpoint_title(name, v) for v in values]
        if axis.label == "Refiner checkpoint":   # "None": no refiner, as A1111's
            values = [v if str(v).strip().lower() == "none" else self._checkpoint_title(name, v, axis.label)
                      for v in values]
        shown = axis_values.to_csv(items) if items else str(text or "")
        return PlotAxis(axis, values, shown, name)

    def _checkpoint_title(self, name: str, value: str, label: str = "Checkpoint name") -> str:
        try:
            return self.engine.models.find(value).title
        except StudioError as e:
            raise InvalidField("script_args", f"{name} values ({label}): {e}") from None

    def _check_cell(self, pc: StableDiffusionProcessing, what: str) -> None:
        """The engine's own checks on a cell's request, so a bad value fails before any image is made."""
        engine = self.engine
        req = pc.to_request()
        try:
            opts, sampler, schedule = engine.prepare(req)
            if not pc.is_img2img:
                engine.hires_plan(req, opts, sampler, schedule)
        except StudioError as e:
            raise InvalidField("script_args", f"{what}: {e}") from None

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, p, x_type=1, x_values="", x_values_dropdown=None, y_type=0, y_values="", y_values_dropdown=None,
            z_type=0, z_values="", z_values_dropdown=None, draw_legend=True, include_lone_images=False,
            include_sub_grids=False, no_fixed_seeds=False, vary_seeds_x=False, vary_seeds_y=False,
            vary_seeds_z=False, margin_size=0, csv_mode=False):
        csv_mode, no_fixed_seeds = _truthy(csv_mode), _truthy(no_fixed_seeds)
        axes = [self._axis(p, "X", x_type, x_values, x_values_dropdown, csv_mode),
                self._axis(p, "Y", y_type, y_values, y_values_dropdown, csv_mode),
                self._axis(p, "Z", z_type, z_values, z_values_dropdown, csv_mode)]
        xs, ys, zs = (a.values for a in axes)
        count = len(xs) * len(ys) * len(zs)
        opts = p.opts
        limit = int(opts.get("xyz_max_cells", 256))
        if count > limit:
            raise InvalidField("script_args", f"the plot has {count} cells ({len(xs)}x{len(ys)}x{len(zs)}); the "
                                              f"setting xyz_max_cells allows {limit}")
        try:
            margin = max(0, int(float(margin_size or 0)))
        except (TypeError, ValueError):
            raise InvalidField("script_args", f"margin_size must be a number of pixels, got {margin_size!r}") from None
        if not no_fixed_seeds:
            fix_seed(p)
            for a in axes:
                if a.axis.label in ("Seed", "Var. seed"):
                    a.values[:] = [random.randrange(MAX_SEED) if v in (None, "", -1) else v for v in a.values]
        vary = (_truthy(vary_seeds_x), _truthy(vary_seeds_y), _truthy(vary_seeds_z))

        def cell_p(ix: int, iy: int, iz: int) -> StableDiffusionProcessing:
            pc = copy.copy(p)
            for a, i in zip(axes, (ix, iy, iz)):
                a.axis.apply(pc, a.values[i], a.values)
            if any(vary) and isinstance(pc.seed, int) and pc.seed != -1:
                # as A1111: an index counts in units of the axes before it only where those vary seeds too
                nx, ny = (len(xs) if vary[0] else 1), (len(ys) if vary[1] else 1)
                pc.seed += (ix if vary[0] else 0) + (iy * nx if vary[1] else 0) + (iz * nx * ny if vary[2] else 0)
            return pc

        # every value alone, then every cell: bad input fails here, before the first image
        for a in axes:
            for v in a.values:
                if a.axis.label == "Nothing":
                    continue
                q = copy.copy(p)
                a.axis.apply(q, v, a.values)
                self._check_cell(q, f"{a.name} values ({a.axis.label}) {_label(a.axis, v) or v!r}")
        cells = [(ix, iy, iz) for iz in range(len(zs)) for iy in range(len(ys)) for ix in range(len(xs))]
        for ix, iy, iz in cells:
            self._check_cell(cell_p(ix, iy, iz), f"cell x={ix + 1}, y={iy + 1}, z={iz + 1}")
        per_cell = max(1, p.batch_size * p.n_iter)
        mp = count * p.width * p.height * per_cell / 1_000_000
        if mp > float(opts.get("img_max_size_mp", 200)):
            raise InvalidField("script_args", f"the grid would be {mp:.0f} megapixels; the setting img_max_size_mp "
                                              f"allows {opts.get('img_max_size_mp')}")

        # A1111's order: Z outermost, then Y, X changing fastest; an axis dearer than both others (checkpoints,
        # VAEs) goes outermost instead, so each of its values loads once
        costs = [a.axis.cost for a in axes]
        first, second = 2, 1
        for k in range(3):
            a, b = [o for o in range(3) if o != k]
            if costs[k] > costs[a] and costs[k] > costs[b]:
                first, second = k, (a if costs[a] > costs[b] else b)
        inner = 3 - first - second
        cells.sort(key=lambda c: (c[first], c[second], c[inner]))
        results: dict[tuple[int, int, int], Processed] = {}
        notes: list[str] = []
        for k, (ix, iy, iz) in enumerate(cells):
            if p.interrupted:
                break
            p.report_progress(k, count, f"Cell {k + 1} of {count}")
            res = process_images(cell_p(ix, iy, iz))
            results[(ix, iy, iz)] = res
            notes += [n for n in res.notes if n not in notes]
            if res.interrupted or p.interrupted:
                break
        if not results:
            out = Processed(p, [])
            out.interrupted = True
            out.notes.append(f"{TITLE} interrupted before the first cell")
            return out
        if len(results) < count:
            notes.append(f"{TITLE} interrupted after {len(results)} of {count} cells")
        # as A1111: the margin belongs to the legend (no legend, no margin)
        return self._assemble(p, axes, results, draw_legend=_truthy(draw_legend),
                              margin=margin if _truthy(draw_legend) else 0,
                              include_lone_images=_truthy(include_lone_images),
                              include_sub_grids=_truthy(include_sub_grids), notes=notes,
                              fixed_seeds=not no_fixed_seeds)

    def _assemble(self, p, axes: list[PlotAxis], results: dict, *, draw_legend: bool, margin: int,
                  include_lone_images: bool, include_sub_grids: bool, notes: list[str],
                  fixed_seeds: bool = True) -> Processed:
        from PIL import Image

        xs, ys, zs = (a.values for a in axes)
        done = [r for r in results.values() if r.images]
        size = done[0].images[0].size if done else (p.width, p.height)
        cells, texts, seeds, prompts = [], [], [], []
        for iz in range(len(zs)):
            for iy in range(len(ys)):
                for ix in range(len(xs)):
                    r = results.get((ix, iy, iz))
                    if r is not None and r.images:
                        cells.append(r.images[0])
                        texts.append(r.infotexts[0] if r.infotexts else "")
                        seeds.append(r.all_seeds[0] if r.all_seeds else None)
                        prompts.append(r.all_prompts[0] if r.all_prompts else p.prompt)
                    else:   # interrupted or skipped: an empty cell keeps the layout
                        cells.append(Image.new("RGB", size, "black"))
                        texts.append("")
                        seeds.append(None)
                        prompts.append(None)

        def labels(a: PlotAxis) -> list[list[GridAnnotation]]:
            return [[GridAnnotation(_label(a.axis, v))] for v in a.values] if draw_legend else []

        per = len(xs) * len(ys)
        sub_grids = [labelled_grid(cells[z * per:(z + 1) * per], len(xs), labels(axes[0]), labels(axes[1]),
                                   margin=margin) for z in range(len(zs))]
        if len(zs) > 1:
            grid = labelled_grid(sub_grids, len(zs), labels(axes[2]), None, margin=margin)
        else:
            grid = sub_grids[0]
        first = next((t for t in texts if t), "")
        grid_text = _grid_infotext(first, axes, with_z=True, fixed_seeds=fixed_seeds)
        out_images, out_texts = [grid], [grid_text]
        saved_grid = save_grid(p, grid, grid_text, "xyz_grid")
        if len(zs) > 1 and include_sub_grids:
            for z, sg in enumerate(sub_grids):
                text = _grid_infotext(texts[z * per] or first, axes, with_z=False, fixed_seeds=fixed_seeds)
                out_images.append(sg)
                out_texts.append(text)
                if saved_grid is not None:
                    save_grid(p, sg, text, "xyz_grid")
        grids = len(out_images)
        # as A1111: infotexts hold the grids' then every made cell's, all_seeds / all_prompts every made cell's
        # (no grid entries), also when the cell images themselves are left out of the response
        keep = [i for i, t in enumerate(texts) if t]
        out_texts += [texts[i] for i in keep]
        out_seeds, out_prompts = [seeds[i] for i in keep], [prompts[i] for i in keep]
        if include_lone_images:
            out_images += [cells[i] for i in keep]
        out = Processed(p, out_images, out_seeds[0] if out_seeds else -1, grid_text,
                        all_prompts=out_prompts, all_seeds=out_seeds, infotexts=out_texts,
                        index_of_first_image=grids)
        out.notes = notes
        out.interrupted = len(results) < len(xs) * len(ys) * len(zs)
        out.result = next(iter(results.values())).result
        out.cells = cells           # every cell in grid order (x fastest, then y, then z)
        out.cell_infotexts = texts
        return out


def _grid_infotext(first: str, axes: list[PlotAxis], *, with_z: bool, fixed_seeds: bool = True) -> str:
    """The first cell's infotext with A1111's plot keys added (Script, X Type, X Values ...; "Fixed X Values"
    for a seed axis whose -1s were fixed, not with "Keep -1 for seeds")."""
    extra: dict[str, Any] = {"Script": TITLE}
    for a in axes:
        if a.axis.label == "Nothing" or (a.name == "Z" and not with_z):
            continue
        extra[f"{a.name} Type"] = a.axis.label
        extra[f"{a.name} Values"] = a.text
        if a.axis.label in ("Seed", "Var. seed") and fixed_seeds:
            extra[f"Fixed {a.name} Values"] = ", ".join(str(v) for v in a.values)
    if not first:
        return infotext_fmt.format_params(extra)
    head, sep, last = first.rpartition("\n")
    params = infotext_fmt.parse_params(last)
    if len(params) < 3:
        return first + "\n" + infotext_fmt.format_params(extra)
    addition = infotext_fmt.format_params(extra)
    at = last.rfind(", Version: ")
    line = f"{last[:at]}, {addition}{last[at:]}" if at >= 0 else f"{last}, {addition}"
    return f"{head}{sep}{line}"
