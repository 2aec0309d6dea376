"""A1111's ``p`` (processing parameters), ``Processed`` and ``process_images(p)`` on top of the engine.

``p`` carries the request's fields under their A1111 names (they are the GenerationRequest's field names:
p.prompt, p.seed, p.steps, p.cfg_scale, p.width, p.sampler_name, p.override_settings ...), the per-image lists
once set up (p.all_prompts, p.all_negative_prompts, p.all_seeds, p.all_subseeds), what scripts add
(p.extra_generation_params, written into each image's infotext) and, for img2img, p.init_images / p.image_mask
as PIL images. ``process_images(p)`` turns p into a request and runs it through the engine's one sampling loop
inside the current job; scripts call it as often as they need (copy.copy(p) gives an independent copy).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.core.errors import StudioError
from webui.core.request import GenerationRequest, Img2ImgRequest, resolve_seed
from webui.engine.color_correction import apply_color_correction as apply_color_correction  # A1111's name
from webui.engine.color_correction import correction_target
from webui.engine.hooks import JobHooks
from webui.engine.processing import Engine, GenerationResult, job_seeds
from webui.extensions.script import PostprocessImageArgs

# alwayson_scripts names the engine itself serves (features that ride that field in A1111's API, e.g. the
# ControlNet extension's units): not Script classes; they travel on with every run of p.
ENGINE_ALWAYSON = frozenset({"controlnet", "soft inpainting"})


@dataclass
class RunContext:
    """What every copy of one job's ``p`` shares: the engine, the job, and what the runs produced."""

    engine: Engine
    job: Any
    save: bool = True
    saved: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runs: int = 0


class StableDiffusionProcessing:
    """A1111's ``p``. Build it from a request (``StableDiffusionProcessing(req)``) or from keyword fields."""

    request_type: type[GenerationRequest] = GenerationRequest
    is_img2img = False

    def __init__(self, request: GenerationRequest | None = None, **fields: Any):
        request = request if request is not None else self.request_type()
        for f in dataclasses.fields(self.request_type):
            if hasattr(request, f.name):
                value = copy.deepcopy(getattr(request, f.name))
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                value = f.default_factory()  # type: ignore[misc]
            else:
                value = f.default
            setattr(self, f.name, value)
        if not self.sampler_name:
            self.sampler_name = self.sampler_index or "Euler"
        self.extra_generation_params: dict[str, Any] = {}
        self.all_prompts: list[str] | None = None
        self.all_negative_prompts: list[str] | None = None
        self.all_seeds: list[int] | None = None
        self.all_subseeds: list[int] | None = None
        self.prompts: list[str] = []
        self.negative_prompts: list[str] = []
        self.seeds: list[int] = []
        self.subseeds: list[int] = []
        self.iteration = 0
        self.scripts: ScriptRun | None = None     # the always-on scripts of this job
        self.script_args: tuple = ()
        self.init_images: list = []
        self.image_mask: Any = None
        # A1111's: colour-correction targets (setup_color_correction) the results are corrected towards, image i
        # by target i; None: the setting img2img_color_correction corrects towards each init image
        self.color_corrections: list | None = None
        self._run: RunContext | None = None
        for key, value in fields.items():
            setattr(self, key, value)

    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        # one level deeper than a plain copy: a cell's override or extra param must not leak into p
        for key in ("override_settings", "extra_generation_params", "styles", "init_images", "comments"):
            value = getattr(self, key, None)
            if isinstance(value, (dict, list)):
                setattr(new, key, copy.copy(value))
        return new

    # -- what A1111 scripts look at -----------------------------------------------------------------------
    @property
    def job(self):
        """The running job (progress, interrupted, skipped); None outside a job."""
        return self._run.job if self._run else None

    @property
    def interrupted(self) -> bool:
        return bool(self._run and self._run.job is not None and self._run.job.interrupted)

    @property
    def engine(self) -> Engine | None:
        return self._run.engine if self._run else None

    @property
    def opts(self) -> dict[str, Any]:
        """The settings with this p's override_settings applied (read-only view for scripts)."""
        if self._run is None:
            raise StudioError("this p is not attached to a job (use a copy of the p your script was given)")
        return self._run.engine.settings.with_overrides(self.override_settings)

    def report_progress(self, run_no: int, run_count: int, label: str = "") -> None:
        """Progress of a script making several runs: run ``run_no`` (0-based) of ``run_count``; ``label``
        prefixes the step text ("Cell 3 of 6")."""
        job = self.job
        if job is None:
            return
        job.progress.run_no, job.progress.run_count = run_no, run_count
        job.progress.stage = f"{label}: " if label else ""

    def setup_prompts(self) -> None:
        """The per-image lists, as the engine makes them, unless the script set them (or gave p.prompt /
        p.seed as lists, as A1111's prompt matrix does)."""
        total = int(self.batch_size) * int(self.n_iter)
        if self.all_prompts is None:
            self.all_prompts = list(self.prompt) if isinstance(self.prompt, list) else [self.prompt] * total
        if self.all_negative_prompts is None:
            neg = self.negative_prompt
            self.all_negative_prompts = list(neg) if isinstance(neg, list) else [neg] * len(self.all_prompts)
            styles = getattr(self.engine, "styles", None)
            if self.styles and styles is not None and len(self.all_negative_prompts) == len(self.all_prompts):
                # the request's styles apply to every prompt of the job, as the engine (and A1111) do
                pairs = [styles.apply(pr, ng, self.styles) for pr, ng in zip(self.all_prompts,
                                                                            self.all_negative_prompts)]
                self.all_prompts = [pr for pr, _ in pairs]
                self.all_negative_prompts = [ng for _, ng in pairs]
        if self.all_seeds is None or self.all_subseeds is None:
            req = self.to_request()
            req.seed, req.subseed = self._first(self.seed), self._first(self.subseed)
            seeds, subseeds = job_seeds(req, total)
            if isinstance(self.seed, list):
                seeds = [resolve_seed(s) for s in self.seed]
            if isinstance(self.subseed, list):
                subseeds = [resolve_seed(s) for s in self.subseed]
            if self.all_seeds is None:
                self.all_seeds = seeds
            if self.all_subseeds is None:
                self.all_subseeds = subseeds

    @staticmethod
    def _first(value: Any) -> Any:
        return value[0] if isinstance(value, list) and value else value

    def to_request(self) -> GenerationRequest:
        """The request this p describes (lists in p.prompt / p.seed give their first item)."""
        data = {}
        for f in dataclasses.fields(self.request_type):
            value = getattr(self, f.name)
            if f.name in ("prompt", "negative_prompt", "seed", "subseed"):
                value = self._first(value)
            data[f.name] = copy.copy(value) if isinstance(value, (dict, list)) else value
        engine_side = {k: v for k, v in (data["alwayson_scripts"] or {}).items()
                       if str(k).strip().lower() in ENGINE_ALWAYSON}
        data["script_name"], data["script_args"], data["alwayson_scripts"] = None, [], engine_side
        if self.is_img2img:
            data["init_images"], data["mask"] = [], None     # the PIL images travel beside the request
        return self.request_type(**data)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    request_type = GenerationRequest


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    request_type = Img2ImgRequest
    is_img2img = True


def processing_for(request: GenerationRequest, **fields: Any) -> StableDiffusionProcessing:
    cls = StableDiffusionProcessingImg2Img if isinstance(request, Img2ImgRequest) else StableDiffusionProcessingTxt2Img
    return cls(request, **fields)


class Processed:
    """A1111's Processed: the images of a run (or of a script's many runs) with their infotexts."""

    def __init__(self, p: StableDiffusionProcessing, images_list: list, seed: int = -1, info: str = "",
                 subseed: int | None = None, all_prompts: list | None = None,
                 all_negative_prompts: list | None = None, all_seeds: list | None = None,
                 all_subseeds: list | None = None, index_of_first_image: int = 0, infotexts: list | None = None,
                 comments: str = ""):
        self.images = list(images_list)
        self.prompt = p._first(p.prompt)
        self.negative_prompt = p._first(p.negative_prompt)
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = p.subseed_strength
        self.info = info
        self.comments = comments
        self.width, self.height = p.width, p.height
        self.sampler_name = p.sampler_name
        self.scheduler = p.scheduler
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.denoising_strength = p.denoising_strength
        self.extra_generation_params = dict(p.extra_generation_params)
        self.index_of_first_image = index_of_first_image
        self.styles = list(p.styles or [])
        self.all_prompts = list(all_prompts or [self.prompt])
        self.all_negative_prompts = list(all_negative_prompts or [self.negative_prompt])
        self.all_seeds = list(all_seeds or [seed])
        self.all_subseeds = list(all_subseeds or [subseed])
        self.infotexts = list(infotexts) if infotexts is not None else [info] * len(self.images)
        self.notes: list[str] = []
        self.interrupted = False
        self.result: GenerationResult | None = None    # the engine's result behind it, when there is one
        self._p = p

    @classmethod
    def from_result(cls, p: StableDiffusionProcessing, res: GenerationResult) -> Processed:
        first = res.infotexts[res.index_of_first_image] if res.infotexts else ""
        out = cls(p, res.images, res.seeds[0] if res.seeds else -1, first,
                  res.subseeds[0] if res.subseeds else None, res.prompts, res.negative_prompts, res.seeds,
                  res.subseeds, res.index_of_first_image, res.infotexts)
        out.notes = list(res.notes)
        out.interrupted = res.interrupted
        out.result = res
        return out

    def js(self) -> str:
        return json.dumps(self.to_result().info(), ensure_ascii=False, default=str)

    def to_result(self) -> GenerationResult:
        """The engine's result type with this Processed's images and texts (what the faces show)."""
        base = self.result
        if base is None:
            base = GenerationResult([], [], [], [], [], [], self._p.to_request(), "", None,
                                    str(self.sampler_name or ""), str(self.scheduler or "Automatic"))
        return dataclasses.replace(
            base, images=list(self.images), infotexts=list(self.infotexts), seeds=list(self.all_seeds),
            subseeds=list(self.all_subseeds), prompts=list(self.all_prompts),
            negative_prompts=list(self.all_negative_prompts), index_of_first_image=self.index_of_first_image,
            notes=list(self.notes), interrupted=self.interrupted, extra_params=dict(self.extra_generation_params),
            saved=list(base.saved))


class ScriptRun:
    """The always-on scripts of one job with their args; ``p.scripts`` in A1111's terms. An exception in a
    hook (other than a StudioError, which fails the request with its message) goes to the notes."""

    def __init__(self, scripts: list[tuple[Any, tuple]] | None = None):
        self.scripts = scripts or []
        self.notes: list[str] = []

    def _call(self, hook: str, p, *pre: Any, **kwargs: Any) -> None:
        for script, args in self.scripts:
            try:
                getattr(script, hook)(p, *pre, *args, **kwargs)
            except StudioError:
                raise
            except Exception as e:  # noqa: BLE001 - a broken extension hook must not take the job down
                traceback.print_exc()
                self.notes.append(f"script {script.title()!r} failed in {hook}: {type(e).__name__}: {e}")

    def setup(self, p) -> None:
        self._call("setup", p)

    def before_process(self, p) -> None:
        self._call("before_process", p)

    def process(self, p) -> None:
        self._call("process", p)

    def before_process_batch(self, p, **kwargs: Any) -> None:
        self._call("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs: Any) -> None:
        self._call("process_batch", p, **kwargs)

    def postprocess_image(self, p, pp: PostprocessImageArgs) -> None:
        self._call("postprocess_image", p, pp)

    def postprocess(self, p, processed: Processed) -> None:
        self._call("postprocess", p, processed)


class _ScriptHooks(JobHooks):
    """The engine's hook points wired to p and its always-on scripts."""

    def __init__(self, p: StableDiffusionProcessing):
        self.p = p

    def begin(self, res: GenerationResult) -> None:
        p = self.p
        res.prompts[:] = p.all_prompts or res.prompts
        res.negative_prompts[:] = p.all_negative_prompts or res.negative_prompts
        res.seeds[:] = p.all_seeds or res.seeds
        res.subseeds[:] = p.all_subseeds or res.subseeds

    def before_batch(self, n: int, res: GenerationResult, sl: slice) -> None:
        p = self.p
        p.iteration = n
        p.prompts, p.negative_prompts = res.prompts[sl], res.negative_prompts[sl]
        p.seeds, p.subseeds = res.seeds[sl], res.subseeds[sl]
        if p.scripts is not None:
            kw = dict(batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.scripts.before_process_batch(p, **kw)
            p.scripts.process_batch(p, **kw)

    def postprocess_image(self, i: int, image: Any) -> Any:
        if self.p.scripts is None:
            return image
        pp = PostprocessImageArgs(image)
        self.p.scripts.postprocess_image(self.p, pp)
        return pp.image

    def extra_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.p.extra_generation_params.items() if v is not None and not callable(v)}


def setup_color_correction(image) -> Any:
    """A1111's name: the colour-correction target of a picture (for ``p.color_corrections``)."""
    return correction_target(image)


def fix_seed(p: StableDiffusionProcessing) -> None:
    """Replace -1 (random) seeds by the drawn numbers, so copies of p share them (A1111's fix_seed)."""
    p.seed = resolve_seed(p.seed) if not isinstance(p.seed, list) else p.seed
    p.subseed = resolve_seed(p.subseed) if not isinstance(p.subseed, list) else p.subseed


def process_images(p: StableDiffusionProcessing) -> Processed:
    """Run ``p`` through the engine's sampling loop inside the current job and return its Processed.
    Always-on scripts' hooks run around it. An interrupted job returns what was made so far."""
    run = p._run
    if run is None:
        raise StudioError("process_images needs a p given by the script runner (or a copy.copy of it)")
    if p.scripts is not None:
        p.scripts.before_process(p)
    p.setup_prompts()
    if p.scripts is not None:
        p.scripts.process(p)
    req = p.to_request()
    images = [im.convert("RGB") for im in p.init_images] if p.is_img2img else None
    save = run.save and not getattr(p, "do_not_save_samples", False)
    res = run.engine.run_in_job(run.job, req, images, p.image_mask if p.is_img2img else None, save=save,
                                hooks=_ScriptHooks(p),
                                color_corrections=p.color_corrections if p.is_img2img else None)
    run.runs += 1
    run.saved.extend(res.saved)
    processed = Processed.from_result(p, res)
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
        processed.notes.extend(n for n in p.scripts.notes if n not in processed.notes)
    return processed


def save_grid(p: StableDiffusionProcessing, grid, infotext: str | None, basename: str = "grid") -> Path | None:
    """Save a script's grid like the engine saves its grids (settings grid_save, grid_format; the img2img or
    txt2img grids folder) as ``<basename>-NNNN`` (A1111's: xyz_grid, prompt_matrix, ...); None when saving is
    off."""
    run = p._run
    if run is None or not run.save or p.do_not_save_grid:
        return None
    opts = p.opts
    if not opts.get("grid_save"):
        return None
    path = run.engine.save_grid(grid, infotext, opts, img2img=p.is_img2img, basename=basename)
    run.saved.append(path)
    return path
