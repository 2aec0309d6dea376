"""The engine: typed requests in, images with their infotext out. The UI and the API both call this."""
from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from webui.config.paths import Paths
from webui.config.settings import Settings
from webui.core import infotext as infotext_fmt
from webui.core import prompt_parser, soft_inpainting
from webui.core import samplers as core_samplers
from webui.core.errors import InvalidField, NotFound, StudioError
from webui.core.request import (
    MASKED_CONTENT,
    RESIZE_MODES,
    VERSION,
    GenerationRequest,
    Img2ImgRequest,
    Limits,
    infotext_params,
    resolve_seed,
    validate,
)
from webui.core.styles import StyleDatabase
from webui.core.training import (
    CreateEmbeddingRequest,
    CreateHypernetworkRequest,
    TrainEmbeddingRequest,
    TrainHypernetworkRequest,
)
from webui.engine import batch, conditioning, noise, refiner, sampling, saving, seamless
from webui.engine import controlnet as cn_engine
from webui.engine import images as images_lib
from webui.engine import samplers as engine_samplers
from webui.engine import train_embedding as train_emb
from webui.engine import train_hypernetwork as train_hn
from webui.engine.events import EngineEvents, ImageSaveParams
from webui.engine.hires import HiresPlan, hires_upscalers
from webui.engine.hooks import JobHooks
from webui.engine.img2img import InitImages, inpaint_conditioning
from webui.engine.jobs import Job, JobQueue
from webui.engine.prompts import ExtraNetworks, JobPrompts
from webui.engine.refiner import OtherModels
from webui.engine.sampler_params import SamplerParams
from webui.models.embeddings import ti_hashes_infotext
from webui.models.hypernetworks import apply_hypernetworks, find_hypernetwork
from webui.models.lora import apply_loras, find_lora, lora_hashes_infotext
from webui.models.manager import LoadedModel, ModelManager
from webui.models.vae import swap_vae


@dataclass
class GenerationResult:
    images: list                    # PIL images; the grid first when one was made
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    request: GenerationRequest
    model: str
    model_hash: str | None
    sampler: str
    schedule: str
    index_of_first_image: int = 0
    saved: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    job_timestamp: str = ""
    clip_skip: int = 1
    interrupted: bool = False
    hires: HiresPlan | None = None
    vae: Any = None               # VaeInfo of a VAE file in use, None for the checkpoint's own
    extra_params: dict[str, Any] = field(default_factory=dict)
    init: Any = None              # InitImages of an img2img job
    inpainting_conditioning: float | None = None   # the conditional mask weight, when an inpainting model ran
    switch_params: dict[str, Any] = field(default_factory=dict)   # the refiner's infotext keys, once it ran

    def info(self) -> dict[str, Any]:
        """The API's "info" object (A1111's js())."""
        r = self.request
        return {
            "prompt": r.prompt, "all_prompts": self.prompts, "negative_prompt": r.negative_prompt,
            "all_negative_prompts": self.negative_prompts, "seed": self.seeds[0] if self.seeds else r.seed,
            "all_seeds": self.seeds, "subseed": self.subseeds[0] if self.subseeds else r.subseed,
            "all_subseeds": self.subseeds, "subseed_strength": r.subseed_strength,
            "width": r.width, "height": r.height, "sampler_name": self.sampler,
            "scheduler": self.schedule, "cfg_scale": r.cfg_scale, "steps": r.steps,
            "batch_size": r.batch_size, "restore_faces": False, "face_restoration_model": None,
            "sd_model_name": self.model, "sd_model_hash": self.model_hash,
            "sd_vae_name": self.vae.name if self.vae else None,
            "sd_vae_hash": self.vae.shorthash if self.vae else None, "seed_resize_from_w": r.seed_resize_from_w,
            "seed_resize_from_h": r.seed_resize_from_h, "denoising_strength": r.denoising_strength,
            "extra_generation_params": dict(self.extra_params), "index_of_first_image": self.index_of_first_image,
            "infotexts": self.infotexts, "styles": r.styles, "job_timestamp": self.job_timestamp,
            "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": self.inpainting_conditioning is not None,
            "version": VERSION, "notes": self.notes,
            "interrupted": self.interrupted,
        }


class Engine:
    def __init__(self, settings: Settings, paths: Paths, models: ModelManager, jobs: JobQueue | None = None,
                 styles: StyleDatabase | None = None, events: EngineEvents | None = None):
        self.settings = settings
        self.paths = paths
        self.models = models
        self.jobs = jobs or JobQueue()
        self.controlnet = cn_engine.ControlNetSupport(models, paths.controlnet / "annotators")
        self.styles = styles or StyleDatabase(paths.styles_file)
        self.events = events or EngineEvents()   # extensions' callbacks (image saved, cfg denoiser)

    # -- faces call these ------------------------------------------------------------------------------------
    def submit_txt2img(self, req: GenerationRequest, *, save: bool = True) -> Job:
        """Validate now (so bad input fails before queueing), then queue the job."""
        opts, sampler, schedule = self.prepare(req)
        hires = self.hires_plan(req, opts, sampler, schedule)
        return self.jobs.submit(lambda job: self._txt2img(job, req, opts, sampler, schedule, save, hires),
                                "txt2img")

    def txt2img(self, req: GenerationRequest, *, save: bool = True) -> GenerationResult:
        return self.submit_txt2img(req, save=save).wait()

    def submit_img2img(self, req: Img2ImgRequest, images: list, mask=None, *, save: bool = True) -> Job:
        """img2img / inpainting with decoded PIL images (the faces decode base64 or take uploads)."""
        opts, sampler, schedule = self.prepare(req)
        init = self.init_images(req, images, mask, opts)
        return self.jobs.submit(lambda job: self._txt2img(job, req, opts, sampler, schedule, save, None, init),
                                "img2img")

    # -- the Train tab: textual-inversion embeddings, on the worker like every job ------------------------------
    def create_embedding(self, req: CreateEmbeddingRequest) -> Path:
        """A new embedding for the current checkpoint's text encoder (embeddings/NAME.pt), usable at once."""
        def run(job: Job) -> Path:
            model = self.models.get(self.settings.get("sd_model_checkpoint") or None)
            path = train_emb.create_embedding(model, self.paths.embeddings, req.name, req.num_vectors_per_token,
                                              req.init_text, req.overwrite_old)
            self.models.refresh_embeddings()
            return path
        return self.jobs.submit(run, "create-embedding").wait()

    def submit_train_embedding(self, req: TrainEmbeddingRequest) -> Job:
        """Validate now (InvalidField before queueing), then train on the worker; the job's result is a
        TrainResult and the embedding is usable when it ends."""
        train_emb.check_train_request(req, self.paths.embeddings, self.paths.ti_templates)

        def preview(job: Job, prompt: str):
            self.models.refresh_embeddings()   # the embedding as just saved
            return self._training_preview(job, req, prompt)

        def run(job: Job) -> train_emb.TrainResult:
            model = self.models.get(self.settings.get("sd_model_checkpoint") or None)
            try:
                return train_emb.train_embedding(job, model, req, self.paths.embeddings,
                                                 self.paths.data / req.log_directory, self.paths.ti_templates,
                                                 lambda prompt: preview(job, prompt))
            finally:
                self.models.refresh_embeddings()
        return self.jobs.submit(run, "train-embedding")

    def _training_preview(self, job: Job, req: TrainEmbeddingRequest, prompt: str) -> tuple[Image.Image, str]:
        """A training run's preview (image, infotext): the prompt, 20 steps of Euler a at the training size."""
        res = self.run_in_job(job, GenerationRequest(
            prompt=prompt, steps=20, width=req.training_width, height=req.training_height, cfg_scale=7.0,
            sampler_name="Euler a", seed=req.seed, override_settings={"live_previews_enable": False}), save=False)
        return res.images[0], res.infotexts[0]

    def create_hypernetwork(self, req: CreateHypernetworkRequest) -> Path:
        """A new hypernetwork (models/hypernetworks/NAME.pt), usable at once."""
        def run(job: Job) -> Path:
            model = self.models.get(self.settings.get("sd_model_checkpoint") or None)
            path = train_hn.create_hypernetwork(model, self.paths.hypernetworks, req)
            self.models.refresh_hypernetworks()
            return path
        return self.jobs.submit(run, "create-hypernetwork").wait()

    def submit_train_hypernetwork(self, req: TrainHypernetworkRequest) -> Job:
        """As submit_train_embedding, for a hypernetwork; its previews draw with what it has learnt so far."""
        train_hn.check_train_request(req, self.paths.hypernetworks, self.paths.ti_templates)

        def run(job: Job) -> train_emb.TrainResult:
            model = self.models.get(self.settings.get("sd_model_checkpoint") or None)
            try:
                return train_hn.train_hypernetwork(job, model, req, self.paths.hypernetworks,
                                                   self.paths.data / req.log_directory, self.paths.ti_templates,
                                                   lambda prompt: self._training_preview(job, req, prompt))
            finally:
                self.models.refresh_hypernetworks()
        return self.jobs.submit(run, "train-hypernetwork")

    def init_images(self, req: Img2ImgRequest, images: list, mask, opts: dict) -> InitImages:
        """The checked init images and mask of an img2img request (InvalidField before any work)."""
        if not images:
            raise InvalidField("init_images", "at least one init image is needed")
        if req.resize_mode not in range(4):
            raise InvalidField("resize_mode", f"resize_mode must be 0-3 ({', '.join(RESIZE_MODES)})")
        if req.inpainting_fill not in range(4):
            raise InvalidField("inpainting_fill", f"inpainting_fill must be 0-3 ({', '.join(MASKED_CONTENT)})")
        denoise = 0.75 if req.denoising_strength is None else float(req.denoising_strength)
        if not 0.0 <= denoise <= 1.0:
            raise InvalidField("denoising_strength", "denoising_strength must be between 0 and 1")
        side = int(opts["max_image_side"])
        for name, im in [*(("init_images", im) for im in images), *([("mask", mask)] if mask is not None else [])]:
            if max(im.size) > side * 2:
                raise InvalidField(name, f"an input image of {im.width}x{im.height} is larger than "
                                         f"{side * 2} px (twice the setting max_image_side)")
        notes = []
        if mask is not None and mask.size != images[0].size:
            notes.append(f"mask resized from {mask.width}x{mask.height} to the image's "
                         f"{images[0].width}x{images[0].height}")
            mask = mask.resize(images[0].size)
        init = InitImages([im.convert("RGB") for im in images], mask, denoise, notes)
        if mask is not None and init.hard_mask_empty(req):
            init.mask = None
            init.notes.append("the mask is empty: processed as plain img2img (as A1111 does)")
        return init

    def img2img(self, req: Img2ImgRequest, images: list, mask=None, *, save: bool = True) -> GenerationResult:
        return self.submit_img2img(req, images, mask, save=save).wait()

    def submit_img2img_batch(self, req: Img2ImgRequest, input_dir: str | None, output_dir: str = "",
                             mask_dir: str = "", **options) -> Job:
        """A1111's img2img "Batch" tab: every image of a folder (or the uploaded ``files``; with an optional masks
        folder) through img2img, written to output_dir (or saved as usual when it is empty). ``options``: those of
        batch.check_folders (files, scale_by, use_png_info, png_info_props, png_info_dir). The job's result is a
        batch.BatchResult."""
        self.prepare(req)
        folders = batch.check_folders(input_dir, output_dir, mask_dir, **options)
        return self.jobs.submit(lambda job: batch.run_batch(self, job, req, folders), "img2img batch")

    def run_in_job(self, job: Job, req: GenerationRequest, images: list | None = None, mask=None, *,
                   save: bool = True, hooks: JobHooks | None = None,
                   color_corrections: list | None = None) -> GenerationResult:
        """Run one request inside a job that is already running (scripts: many runs in one job).
        img2img when ``images`` is given, its result i colour-corrected towards ``color_corrections[i]`` when
        given (loopback: towards the first picture). Checks the request first, as the submit_* methods do."""
        opts, sampler, schedule = self.prepare(req)
        if images is not None:
            init = self.init_images(req, images, mask, opts)   # type: ignore[arg-type]
            init.color_targets = color_corrections
            return self._txt2img(job, req, opts, sampler, schedule, save, None, init, hooks)
        hires = self.hires_plan(req, opts, sampler, schedule)
        return self._txt2img(job, req, opts, sampler, schedule, save, hires, None, hooks)

    def prepare(self, req: GenerationRequest) -> tuple[dict, str, str]:
        """Checks that need no model: fields, settings overrides, sampler and schedule, checkpoint name."""
        try:
            opts = self.settings.with_overrides(req.override_settings)
        except ValueError as e:
            raise InvalidField("override_settings", str(e)) from None
        limits = Limits(int(opts["max_batch_size"]), int(opts["max_batch_count"]), int(opts["max_image_side"]))
        sampler, schedule = validate(req, limits)
        soft_inpainting.from_request(getattr(req, "alwayson_scripts", None))   # its args, before queueing
        self.styles.resolve(req.styles)   # an unknown style fails before queueing
        if sampler not in engine_samplers.available():
            raise InvalidField("sampler_name", f"unknown sampler {sampler!r}; valid: "
                                               f"{', '.join(engine_samplers.available())}")
        if not engine_samplers.supports(sampler, engine_samplers.effective_schedule(sampler, schedule)):
            engine_samplers.make_scheduler(sampler, schedule, {})  # raises the message naming valid choices
        if any(float(opts.get(k, 0) or 0) for k in ("sigma_min", "sigma_max", "rho")):   # min below max
            engine_samplers.make_scheduler(sampler, schedule, engine_samplers.SD_NOISE, opts, req.steps)
        try:
            self.models.find(opts.get("sd_model_checkpoint") or None)
        except NotFound as e:
            raise InvalidField("sd_model_checkpoint", str(e)) from None
        try:
            self.models.check_vae_choice(opts.get("sd_vae"))
        except NotFound as e:
            raise InvalidField("sd_vae", str(e)) from None
        self.controlnet.check(req.alwayson_scripts, img2img=isinstance(req, Img2ImgRequest))   # bad units fail now
        if refiner.chosen(req.refiner_checkpoint):
            self._checkpoint_field(str(req.refiner_checkpoint), "refiner_checkpoint")
            if req.refiner_switch_at is not None and not 0.0 <= float(req.refiner_switch_at) <= 1.0:
                raise InvalidField("refiner_switch_at", "refiner_switch_at must be between 0 and 1")
        return opts, sampler, schedule

    def hires_plan(self, req: GenerationRequest, opts: dict, sampler: str, schedule: str) -> HiresPlan | None:
        """The second pass of hires fix, checked before any work starts; None when it is off."""
        if not req.enable_hr:
            return None
        upscaler = req.hr_upscaler or "Latent"
        if upscaler not in hires_upscalers(self.models):
            raise InvalidField("hr_upscaler", f"unknown upscaler {upscaler!r}; valid: "
                                              f"{', '.join(hires_upscalers(self.models))}")
        if req.hr_resize_x or req.hr_resize_y:
            w = req.hr_resize_x or round(req.hr_resize_y * req.width / req.height)
            h = req.hr_resize_y or round(req.hr_resize_x * req.height / req.width)
        else:
            if not 1.0 <= req.hr_scale <= 8.0:
                raise InvalidField("hr_scale", f"hr_scale must be between 1 and 8, got {req.hr_scale!r}")
            w, h = int(req.width * req.hr_scale), int(req.height * req.hr_scale)
        w, h = w // 8 * 8, h // 8 * 8
        side = int(opts["max_image_side"])
        if not (64 <= w <= side and 64 <= h <= side):
            raise InvalidField("hr_scale", f"the hires size {w}x{h} must be within 64..{side} on each side")
        denoise = 0.7 if req.denoising_strength is None else float(req.denoising_strength)
        if not 0.0 <= denoise <= 1.0:
            raise InvalidField("denoising_strength", "denoising_strength must be between 0 and 1")
        if req.hr_second_pass_steps < 0:
            raise InvalidField("hr_second_pass_steps", "hr_second_pass_steps must be 0 (same as steps) or more")
        hr_sampler, hr_schedule = sampler, schedule
        # the UI's "Use same sampler" / "Use same scheduler" (also in A1111's pasted parameters) mean: the first's
        hr_sampler_name = None if req.hr_sampler_name == "Use same sampler" else req.hr_sampler_name
        hr_scheduler = None if req.hr_scheduler == "Use same scheduler" else req.hr_scheduler
        if hr_sampler_name or hr_scheduler:
            from webui.core.samplers import split_sampler
            try:
                hr_sampler, hr_schedule = split_sampler(hr_sampler_name or sampler, hr_scheduler or None)
            except ValueError as e:
                raise InvalidField("hr_sampler_name", str(e)) from None
            if hr_sampler not in engine_samplers.available():
                raise InvalidField("hr_sampler_name", f"unknown sampler {hr_sampler!r}")
        checkpoint = refiner.chosen(req.hr_checkpoint_name)
        info = self._checkpoint_field(checkpoint, "hr_checkpoint_name") if checkpoint else None
        first = None
        if req.firstpass_image:   # as A1111: the hires pass starts from this image, resized to width x height
            first = images_lib.decode_image(req.firstpass_image, "firstpass_image", 2 * side).convert("RGB")
            first = first.resize((req.width, req.height), Image.Resampling.LANCZOS)
        return HiresPlan(w, h, upscaler, req.hr_second_pass_steps or req.steps, denoise, hr_sampler, hr_schedule,
                         info.name if info else None, info.short_title if info else None,
                         bool(hr_sampler_name or hr_scheduler), first)

    def _checkpoint_field(self, name: str, field_name: str):
        """The checkpoint a request field names (InvalidField naming the valid ones when there is none)."""
        try:
            return self.models.find(name)
        except NotFound as e:
            raise InvalidField(field_name, str(e)) from None

    def token_count(self, text: str) -> tuple[int, int]:
        """(tokens, capacity) of a prompt as the UI shows it next to the prompt box ("12/75")."""
        from webui.models.loader import tokenizer
        return conditioning.token_count(tokenizer(), text)

    # -- the job ---------------------------------------------------------------------------------------------
    def _txt2img(self, job: Job, req: GenerationRequest, opts: dict, sampler: str, schedule: str,
                 save: bool, hires: HiresPlan | None = None, init: InitImages | None = None,
                 hooks: JobHooks | None = None) -> GenerationResult:
        model = self.models.get(opts.get("sd_model_checkpoint") or None)
        vae_info, vae = self.models.vae_for(model, opts)
        networks = self._extra_networks(req, opts)
        others = None
        try:
            with ExitStack() as stack:
                self.enter_model(stack, model, vae, networks, req)
                others = OtherModels(self, stack, model, opts, networks, req)
                res = self._txt2img_body(job, req, opts, sampler, schedule, save, hires, model, vae_info,
                                         networks, init, hooks or JobHooks(), others)
        finally:
            if others is not None:
                others.close()
        return res

    @staticmethod
    def enter_model(stack: ExitStack, model: LoadedModel, vae, networks: ExtraNetworks,
                     req: GenerationRequest) -> None:
        """What a job changes in a checkpoint for its time: the chosen VAE, its LoRAs and hypernetworks, tiling's
        padding."""
        stack.enter_context(swap_vae(model.pipe, vae))
        stack.enter_context(apply_loras(model.pipe, networks.items))
        stack.enter_context(apply_hypernetworks(model.pipe.unet, networks.hypernets))
        stack.enter_context(seamless.circular_padding(model.pipe.unet, model.pipe.vae, enabled=bool(req.tiling)))

    def styled_prompts(self, req: GenerationRequest, opts: dict | None = None) -> tuple[str, str, str, str]:
        """(prompt, negative prompt, hires prompt, hires negative prompt) with the request's styles applied, as
        A1111 applies them to every prompt of a job (the infotext records the styled text); an empty hires prompt
        stays empty (it means: the same as the first pass)."""
        prompt, negative = self.styles.apply(req.prompt, req.negative_prompt, req.styles)
        prompt = self._added_networks(prompt, opts or {}, req)
        hr_prompt, hr_negative = (self.styles.apply(req.hr_prompt, req.hr_negative_prompt, req.styles)
                                  if req.styles else (req.hr_prompt, req.hr_negative_prompt))
        return prompt, negative, hr_prompt if req.hr_prompt else "", hr_negative if req.hr_negative_prompt else ""

    def _added_networks(self, prompt: str, opts: dict, req: GenerationRequest) -> str:
        """A1111's "Add network to prompt" settings (sd_lora, sd_hypernetwork): that network's tag at the prompt's
        end, at the default multiplier, unless the prompt names it already or extra networks are off."""
        if req.disable_extra_networks:
            return prompt
        multiplier = f"{float(opts.get('extra_networks_default_multiplier', 1.0)):g}"
        _, tags = prompt_parser.parse_extra_networks(prompt)
        for kind, key, names in (("lora", "sd_lora", [i.name for i in self.models.loras]),
                                 ("hypernet", "sd_hypernetwork", [i.name for i in self.models.hypernetworks])):
            name = str(opts.get(key) or "None")
            if name != "None" and name in names and not any(p.name == name for p in tags.get(kind, [])):
                prompt = f"{prompt}<{kind}:{name}:{multiplier}>"
        return prompt

    def _extra_networks(self, req: GenerationRequest, opts: dict | None = None) -> ExtraNetworks:
        """The <lora:...> and <hypernet:...> tags of the prompt (and hires prompt): what to apply, what was not
        found."""
        found = ExtraNetworks()
        if req.disable_extra_networks:
            return found
        for text in filter(None, set(self.styled_prompts(req, opts)[::2])):
            _, tags = prompt_parser.parse_extra_networks(text)
            for kind, params_list in tags.items():
                for params in params_list:
                    if kind == "hypernet":
                        self._hypernet_tag(params, found)
                        continue
                    if kind not in ("lora", "lyco"):
                        found.warnings.append(f"extra network type {kind!r} is not supported: <{kind}:"
                                              f"{':'.join(params.items)}> ignored")
                        continue
                    info = find_lora(self.models.loras, params.name)
                    if info is None:
                        found.warnings.append(f"LoRA not found: {params.name}")
                        continue
                    m = prompt_parser.lora_multipliers(params, float((opts or {}).get(
                        "extra_networks_default_multiplier", 1.0)))
                    found.items.append((info, m.te, m.unet))
                    found.used.append((params.name, info))
        return found

    def _hypernet_tag(self, params, found: ExtraNetworks) -> None:
        info = find_hypernetwork(self.models.hypernetworks, params.name)
        if info is None:   # a file dropped in since the last listing is found without a restart
            info = find_hypernetwork(self.models.refresh_hypernetworks(), params.name)
        if info is None:
            found.warnings.append(f"hypernetwork not found: {params.name}")
            return
        try:
            multiplier = float(params.positional[1]) if len(params.positional) > 1 else 1.0
        except ValueError:
            raise InvalidField("prompt", f"<hypernet:{':'.join(params.items)}>: the multiplier is not a "
                                         "number") from None
        found.hypernets.append((self.models.hypernetwork(info), multiplier))

    def _txt2img_body(self, job: Job, req: GenerationRequest, opts: dict, sampler: str, schedule: str,
                      save: bool, hires: HiresPlan | None, model: LoadedModel, vae_info,
                      networks: ExtraNetworks, init: InitImages | None = None,
                      hooks: JobHooks | None = None, others: OtherModels | None = None) -> GenerationResult:
        hooks = hooks or JobHooks()
        pipe = model.pipe
        device = model.placement.device
        clip_skip = int(opts.get("CLIP_stop_at_last_layers", 1))
        total = req.batch_size * req.n_iter
        seeds, subseeds = job_seeds(req, total)
        styled, styled_negative, hr_prompt, hr_negative = self.styled_prompts(req, opts)
        prompts = [styled] * total
        negatives = [styled_negative] * total
        res = GenerationResult([], [], seeds, subseeds, prompts, negatives, req, model.info.model_name,
                               model.info.shorthash, sampler, schedule,
                               job_timestamp=time.strftime("%Y%m%d%H%M%S"), clip_skip=clip_skip)
        hooks.begin(res)   # scripts may give their own per-image prompts and seeds
        prompts, negatives, seeds, subseeds = res.prompts, res.negative_prompts, res.seeds, res.subseeds
        if not len(prompts) == len(negatives) == len(seeds) == len(subseeds) == total:
            raise InvalidField("prompt", f"a script gave {len(prompts)} prompts, {len(negatives)} negative prompts, "
                                         f"{len(seeds)} seeds for {total} images (batch_size x n_iter)")
        res.notes.extend(model.notes)
        res.notes.extend(networks.warnings)
        if req.restore_faces:
            res.notes.append("restore_faces ignored: no face restoration model (GFPGAN, CodeFormer) is available "
                             "offline")
        if init is not None:
            res.notes.extend(init.notes)
            res.init = init
        res.hires = hires
        res.vae = vae_info
        loaded, _skipped = self.models.embeddings(model)
        encoder = conditioning.PromptEncoder(pipe, model.family, clip_skip, str(opts.get("emphasis", "Original")),
                                             loaded)
        job.progress.job = "img2img" if init else "txt2img"
        job.progress.job_count = req.n_iter
        first_steps = 0 if hires is not None and hires.first_pass is not None else req.steps
        job.progress.sampling_steps = first_steps + (int(hires.steps * hires.denoising) if hires else 0)
        scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        latent_shape = (pipe.vae.config.latent_channels, req.height // scale, req.width // scale)
        mask_weight = float(opts.get("inpainting_mask_weight", 1.0))
        if model.inpainting:
            res.inpainting_conditioning = mask_weight
        resize_from = None
        if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
            resize_from = (req.seed_resize_from_w // scale, req.seed_resize_from_h // scale)
        # A1111's -1 ("only after a batch") and 0 both mean: no previews while sampling
        preview_every = max(0, int(opts.get("show_progress_every_n_steps", 10))) \
            if opts.get("live_previews_enable") else 0
        hr_steps = hires.steps if hires else None
        first = JobPrompts(encoder, prompts, negatives, req.steps)
        hr_texts = ([hr_prompt or p for p in prompts], [hr_negative or p for p in negatives])
        second = JobPrompts(encoder, *hr_texts, req.steps, hr_steps) if hires else None
        counts = [first.chunk_counts(), *([second.chunk_counts()] if second else [])]
        n_chunks = (max(c[0] for c in counts), max(c[1] for c in counts))
        if opts.get("pad_cond_uncond"):   # A1111's option: one length for both sides, one UNet call per step
            n_chunks = (max(n_chunks), max(n_chunks))
        control = self._control_passes(req, model, init, hires, seeds)
        unet = self.sampling_unet(model, opts, networks, res, req)
        params = SamplerParams.of(req, opts)
        skipped: set[str] = set()   # why steps ran without the negative prompt (NGMS, Skip Early CFG)
        refiner_name = refiner.chosen(req.refiner_checkpoint)
        first_latent = None   # firstpass_image's latents, when the request gives one
        # A1111's "save a copy of image before applying highres fix" (not of a given firstpass_image)
        keep_first_pass = save and not req.do_not_save_samples and bool(opts.get("save_images_before_highres_fix"))
        refine_first, refine_second = refiner.refiner_passes(str(opts.get("hires_fix_refiner_pass")), bool(hires))
        images: list = []
        for n in range(req.n_iter):
            if job.interrupted:
                res.interrupted = True
                break
            job.skipped = False
            job.progress.job_no = n
            job.progress.sampling_step = 0
            sl = slice(n * req.batch_size, (n + 1) * req.batch_size)
            hooks.before_batch(n, res, sl)
            if others is not None and others.loaded:   # a refiner or hires checkpoint may hold the device
                unet = others.unet(model, res)
            latents, gens = noise.initial_noise(seeds[sl], latent_shape, device, str(opts.get("randn_source")),
                                                subseeds[sl], req.subseed_strength, resize_from)
            noise.reseed(gens, seeds[sl], int(opts.get("eta_noise_seed_delta", 0)))
            scheduler = engine_samplers.make_scheduler(sampler, schedule, dict(pipe.scheduler.config), opts,
                                                       req.steps, req.eta)
            plan = sampling.SamplingPlan(
                scheduler=scheduler, steps=req.steps, cfg_scale=req.cfg_scale,
                conditioning=first.conditioning(sl, n_chunks), generators=gens, per_image=device.type == "cpu",
                eta=engine_samplers.step_eta(scheduler, req.eta, opts), params=params, skipped=skipped)
            if model.is_sdxl:
                ids = torch.tensor([[req.height, req.width, 0, 0, req.height, req.width]], dtype=torch.float32)
                plan.added_time_ids = ids.repeat(req.batch_size, 1).to(device)
            plan.after_step.append(self._progress_hook(job, pipe, preview_every, opts, plan))
            plan.on_cfg_denoiser = self.events.cfg_denoiser
            if control[0] is not None:
                plan.unet_residuals = control[0].provider()
            finish = None
            if init is not None:
                timesteps, latents, finish = init.start(req, model, scheduler, plan, latents.to(device),
                                                        range(sl.start, sl.stop), mask_weight,
                                                        bool(opts.get("img2img_color_correction")))
            else:
                params.set_timesteps(scheduler, req.steps, device)
                timesteps = scheduler.timesteps
                sgm = params.start_noise_sigma(scheduler)
                latents = latents.to(device) * (scheduler.init_noise_sigma if sgm is None else sgm)
                if model.inpainting:   # as A1111: everything masked, a blank picture behind the mask
                    plan.unet_concat = inpaint_conditioning(pipe.vae, None, None, mask_weight,
                                                            (req.height, req.width), req.batch_size,
                                                            device.type == "cpu").to(device)
            stopped = False
            state = {"model": model}   # the checkpoint sampling ends with: its VAE decodes
            if others is not None and refiner_name and refine_first:
                plan.switch = others.switch(refiner_name, res, state, lambda enc, sl=sl: JobPrompts(
                    enc, prompts, negatives, req.steps).conditioning(sl, n_chunks))
            try:
                first_images = before_hires = None
                if hires is not None and hires.first_pass is not None:   # the request's image is the first pass
                    first_images = [hires.first_pass] * (sl.stop - sl.start)
                    if first_latent is None:   # encoded once for every batch
                        first_latent = sampling.encode(pipe.vae, sampling.to_tensor([hires.first_pass])).to(device)
                    latents = first_latent.repeat(len(first_images), 1, 1, 1)
                else:
                    latents = sampling.sample(unet, plan, latents, timesteps)
                    if hires and keep_first_pass:   # decoded now for the copy, and reused by an image upscaler
                        decoded_first, _ = sampling.decode(state["model"].pipe.vae, latents,
                                                           per_image=device.type == "cpu")
                        first_images = before_hires = sampling.to_pil(decoded_first)
                if hires:
                    first_model, hr_unet, hr_cond = state["model"], unet, second.conditioning(sl, n_chunks)
                    hr_other = others.get(hires.checkpoint, "hr_checkpoint_name") \
                        if others is not None and hires.checkpoint else None
                    state["model"] = model
                    if hr_other is not None:
                        state["model"] = hr_other.model
                        hr_unet = others.unet(hr_other.model, res)
                        hr_cond = JobPrompts(hr_other.encoder, *hr_texts, req.steps, hr_steps).conditioning(
                            sl, n_chunks)
                    elif others is not None and others.loaded:   # back from the refiner: the job's own UNet,
                        hr_unet = others.unet(model, res)        # on the device again (a GPU holds one)
                    switch = others.switch(refiner_name, res, state, lambda enc, sl=sl: JobPrompts(
                        enc, *hr_texts, req.steps, hr_steps).conditioning(sl, n_chunks)) \
                        if others is not None and refiner_name and refine_second else None
                    latents = self._hires_pass(job, req, hires, first_model, state["model"], latents, gens, hr_cond,
                                               sl, opts, preview_every, hr_unet, control=control[1], switch=switch,
                                               params=params, skipped=skipped, first_images=first_images)
            except sampling.StopSampling as stop:
                # interrupted or skipped: as A1111, the batch comes back as far as it got (the last step's
                # prediction of the clean image), saved only with the setting save_incomplete_images
                stopped = True
                latents = stop.latents
                if latents is None:
                    if job.interrupted:
                        res.interrupted = True
                        break
                    continue
            decoded, upcast = sampling.decode(state["model"].pipe.vae, latents, per_image=device.type == "cpu")
            if upcast:
                res.notes.append("VAE produced NaN in half precision; decoded again in fp32 (use --no-half-vae)")
            if torch.isnan(decoded).any():
                raise StudioError("the model produced NaN (a black image); try --precision full / --no-half")
            batch_images, before_cc = sampling.to_pil(decoded), None
            if finish is not None:
                batch_images, before_cc = finish(batch_images)
            extra = {**params.infotext(scheduler), **params.skip_infotext(skipped),
                     **params.noise_infotext(init is not None, bool(hires)),
                     **engine_samplers.schedule_overrides(scheduler, sampler, schedule, opts),
                     **params.discard_infotext(scheduler),
                     **engine_samplers.ancestral_infotext(scheduler, sampler, opts, plan.eta)}
            if networks.used:
                extra["Lora hashes"] = lora_hashes_infotext(networks.used)
            if encoder.used_embeddings:
                extra["TI hashes"] = ti_hashes_infotext(encoder.used_embeddings.values())
            if control[0] is not None:
                extra.update(cn_engine.infotext_params(control[0].units))
            emphasis = str(opts.get("emphasis", "Original"))
            if emphasis != "Original" and any("(" in t or "[" in t for t in [*prompts[sl], *negatives[sl]]):
                extra["Emphasis"] = emphasis   # as A1111: only where the mode changes what brackets do
            res.extra_params = {**extra, **res.switch_params, **hooks.extra_params()}
            for j, image in enumerate(batch_images):
                i = n * req.batch_size + j
                image = hooks.postprocess_image(i, image)
                text = self._infotext(req, res, i, model, clip_skip)
                res.infotexts.append(text)
                images.append(image)
                if save and not req.do_not_save_samples and (not stopped or opts.get("save_incomplete_images")):
                    label = core_samplers.schedule_label(engine_samplers.effective_schedule(sampler, schedule))
                    tokens = {"prompt": prompts[i], "negative_prompt": negatives[i], "seed_first": seeds[0],
                              "seed_last": seeds[-1], "batch_number": j + 1, "generation_number": i + 1,
                              "clip_skip": clip_skip, "job_timestamp": res.job_timestamp, "sampler": sampler,
                              "scheduler": label, "sampler_scheduler": sampler if label == "Automatic"
                              else f"{sampler} {label}",
                              "denoising": req.denoising_strength if (init is not None or hires) else None}
                    if before_cc is not None and opts.get("save_images_before_color_correction"):
                        res.saved.append(self._save(before_cc[j], text, seeds[i], req, model, opts,
                                                    "outdir_img2img_samples", tokens,
                                                    suffix="-before-color-correction"))
                    if before_hires is not None:   # setting save_images_before_highres_fix
                        res.saved.append(self._save(before_hires[j], text, seeds[i], req, model, opts,
                                                    "outdir_txt2img_samples", tokens, suffix="-before-highres-fix"))
                    res.saved.append(self._save(image, text, seeds[i], req, model, opts,
                                                "outdir_img2img_samples" if init else "outdir_txt2img_samples",
                                                tokens))
                    if init is not None:   # settings save_init_img, save_mask
                        res.saved.extend(init.save_extras(req, opts, i, seeds[i], self._outdir))
            if stopped and job.interrupted:
                res.interrupted = True
                break
        res.images = images
        # as A1111: a grid of one picture only with grid_only_if_multiple off
        grid_wanted = (len(images) > 1 or (len(images) == 1 and not opts.get("grid_only_if_multiple", True))) \
            and bool(opts.get("return_grid") or opts.get("grid_save"))
        if grid_wanted:
            rows = int(opts.get("n_rows", -1))
            grid = saving.make_grid(images, rows if rows >= 0 else None, batch_size=req.batch_size,
                                    prevent_empty_spots=bool(opts.get("grid_prevent_empty_spots")))
            if save and opts.get("grid_save") and not req.do_not_save_grid:
                res.saved.append(self.save_grid(grid, res.infotexts[0], opts, img2img=init is not None,
                                                 tokens={"seed": seeds[0], "prompt": prompts[0],
                                                         "negative_prompt": negatives[0], "steps": req.steps,
                                                         "cfg": req.cfg_scale, "styles": req.styles,
                                                         "model_name": Path(model.info.filename).stem}))
            if opts.get("return_grid"):
                res.images = [grid, *images]
                res.infotexts = [res.infotexts[0], *res.infotexts]
                res.index_of_first_image = 1
        if control[0] is not None and not opts.get("control_net_no_detectmap"):
            from PIL import Image
            maps = [Image.fromarray(m) for u in control[0].units if u.checked.unit.save_detected_map
                    for m in u.detected]
            res.images, res.infotexts = [*res.images, *maps], [*res.infotexts, *[""] * len(maps)]
        job.progress.sampling_step = req.steps
        res.notes = list(dict.fromkeys(res.notes))   # each batch may repeat a note (compile not used ...)
        return res

    def _control_passes(self, req: GenerationRequest, model: LoadedModel, init: InitImages | None,
                        hires: HiresPlan | None, seeds: list[int]) -> tuple:
        """The ControlNet units of the first pass and of hires fix's second pass (None when there are none)."""
        checked = self.controlnet.check(req.alwayson_scripts, img2img=init is not None)
        if not checked:
            return None, None
        kw = {"init_images": init.images if init else None, "init_mask": init.mask if init else None,
              "seed": seeds[0] if seeds else 0, "region": init.region(req) if init else None}
        first = cn_engine.make_pass(self.controlnet, checked, model.pipe.unet, req.height, req.width, **kw)
        second = cn_engine.make_pass(self.controlnet, checked, model.pipe.unet, hires.height, hires.width,
                                     hires=True, **kw) if hires else None
        return first, second

    def _hires_pass(self, job: Job, req: GenerationRequest, hr: HiresPlan, first_model: LoadedModel,
                    model: LoadedModel, latents: torch.Tensor, gens: list, cond, sl: slice, opts: dict,
                    preview_every: int, unet, control: cn_engine.ControlPass | None = None, switch=None,
                    params: SamplerParams | None = None, skipped: set | None = None, first_images: list | None = None):
        """Hires fix: upscale the first pass (in latent space, or as an image decoded by ``first_model``, the
        checkpoint that ended it) and denoise it again with ``model``'s ``unet`` (plain or compiled), switching to
        the refiner where ``switch`` says."""
        pipe = model.pipe
        device = model.placement.device
        scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        lh, lw = hr.height // scale, hr.width // scale
        if hr.upscaler in sampling.LATENT_UPSCALE_MODES:
            init = sampling.upscale_latents(latents.float(), hr.upscaler, lh, lw)
        else:
            from webui.engine.upscaling import upscale_to
            if first_images is None:
                first, _ = sampling.decode(first_model.pipe.vae, latents, per_image=device.type == "cpu")
                first_images = sampling.to_pil(first)
            big = [upscale_to(self.models, im, (hr.width, hr.height), hr.upscaler, opts) for im in first_images]
            init = sampling.encode(pipe.vae, sampling.to_tensor(big)).to(device)
        scheduler = engine_samplers.make_scheduler(hr.sampler, hr.schedule, dict(pipe.scheduler.config), opts,
                                                   hr.steps, req.eta)
        timesteps = sampling.partial_timesteps(scheduler, hr.steps, hr.denoising, device, params)
        from diffusers.utils.torch_utils import randn_tensor
        noise = torch.cat([randn_tensor((1, init.shape[1], lh, lw), generator=g, device=device) for g in gens])
        start = sampling.noised_start(scheduler, init.to(device), noise, timesteps, params)
        n = sl.stop - sl.start
        plan = sampling.SamplingPlan(scheduler=scheduler, steps=hr.steps, cfg_scale=req.cfg_scale,
                                     conditioning=cond, generators=gens, per_image=device.type == "cpu",
                                     eta=engine_samplers.step_eta(scheduler, req.eta, opts),
                                     switch=switch, params=params, skipped=set() if skipped is None else skipped)
        if model.is_sdxl:
            ids = torch.tensor([[hr.height, hr.width, 0, 0, hr.height, hr.width]], dtype=torch.float32)
            plan.added_time_ids = ids.repeat(n, 1).to(device)
        offset = 0 if hr.first_pass is not None else req.steps
        plan.after_step.append(self._progress_hook(job, pipe, preview_every, opts, plan, offset=offset))
        plan.on_cfg_denoiser = self.events.cfg_denoiser
        if control is not None:
            plan.unet_residuals = control.provider()
        if model.inpainting:
            # as A1111: with the full mask strength the model sees a blank picture, else the upscaled one
            weight = float(opts.get("inpainting_mask_weight", 1.0))
            pixels = sampling.decode(pipe.vae, init.to(device), per_image=device.type == "cpu")[0] \
                if weight < 1 else None
            plan.unet_concat = inpaint_conditioning(pipe.vae, pixels, None, weight, (hr.height, hr.width), n,
                                                    device.type == "cpu").to(device)
        return sampling.sample(unet, plan, start, timesteps)

    def sampling_unet(self, model: LoadedModel, opts: dict, networks: ExtraNetworks, res: GenerationResult,
                       req: GenerationRequest):
        """The UNet this job samples with: the compiled one where the setting torch_compile asks for it and it can
        serve (not for a job that applies a LoRA: the compiled graph holds the weights without it)."""
        if not opts.get("torch_compile"):
            return model.pipe.unet
        # the compiled graph holds the weights, hooks and padding it was made with
        if networks.items or networks.hypernets or req.tiling:
            compiled, why_not = None, ("a LoRA is applied" if networks.items else
                                       "a hypernetwork is applied" if networks.hypernets else "tiling is on")
        else:
            compiled, why_not = self.models.compiled_unet(model)
        if compiled is None:
            res.notes.append(f"torch.compile not used: {why_not}")
            return model.pipe.unet
        return compiled

    def _progress_hook(self, job: Job, pipe, every: int, opts: dict, plan: sampling.SamplingPlan,
                       offset: int = 0):
        def hook(i: int, latents: torch.Tensor) -> None:
            i += offset
            job.progress.sampling_step = i + 1
            job.progress.textinfo = f"{job.progress.stage}Step {i + 1}/{job.progress.sampling_steps}"
            if every and (i + 1) % every == 0 and i + 1 < job.progress.sampling_steps:
                # as A1111's, the preview shows the step's prediction of the clean image, not the noisy latents
                shown = plan.denoised if plan.denoised is not None else latents
                job.progress.preview = self.preview(pipe, shown[:1], opts.get("show_progress_type", "Full"))
                job.progress.preview_id += 1
            if job.interrupted or job.skipped:
                raise sampling.StopSampling()
        return hook

    @staticmethod
    def preview(pipe, latents: torch.Tensor, method: str = "Full"):
        """A preview image of in-progress latents: the full VAE, or a cheap linear map (approximate colours)."""
        if method == "Approx cheap" and latents.shape[1] == 4:
            coeffs = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173],
                                   [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]], dtype=torch.float32)
            rgb = torch.einsum("bchw,cr->brhw", latents.float().cpu(), coeffs)
            return sampling.to_pil(((rgb + 1) / 2).clamp(0, 1))[0]
        images, _ = sampling.decode(pipe.vae, latents)
        return sampling.to_pil(images)[0]

    def _infotext(self, req: GenerationRequest, res: GenerationResult, i: int, model: LoadedModel,
                  clip_skip: int) -> str:
        params = infotext_params(req, sampler=res.sampler, schedule=engine_samplers.effective_schedule(
            res.sampler, res.schedule), seed=res.seeds[i], subseed=res.subseeds[i],
            model_name=model.info.model_name, model_hash=model.info.shorthash, clip_skip=clip_skip,
            denoising=res.init.denoise if res.init else (res.hires.denoising if res.hires else None),
            mask_weight=res.inpainting_conditioning,
            vae_name=res.vae.name if res.vae else None, vae_hash=res.vae.shorthash if res.vae else None,
            extra={**(res.hires.infotext(req) if res.hires else {}),
                   **(res.init.infotext(req) if res.init else {}), **res.extra_params})
        return infotext_fmt.format_infotext(res.prompts[i], res.negative_prompts[i], params)

    def save_grid(self, grid, text: str | None, opts: dict, *, img2img: bool = False,
                  tokens: dict | None = None, basename: str = "grid") -> Path:
        """Save a grid (a job's or a script's) into the txt2img or img2img grids folder, in the grid format, as
        ``<basename>-NNNN``."""
        folder = self._outdir(opts, "outdir_img2img_grids" if img2img else "outdir_txt2img_grids", tokens)
        return saving.save_grid(grid, folder, text if opts.get("enable_pnginfo", True) else None,
                                fmt=_ext(opts.get("grid_format")), jpeg_quality=int(opts.get("jpeg_quality", 80)),
                                basename=basename)

    def _outdir(self, opts: dict, key: str, tokens: dict | None = None) -> Path:
        """The folder for ``key``'s outputs; with save_to_dirs, the sub-folders directories_filename_pattern
        names ("/" in it nests them), filled from ``tokens`` as the file name is."""
        base = opts.get("outdir_samples") if key.endswith("_samples") and opts.get("outdir_samples") else opts[key]
        folder = Path(base)
        if not folder.is_absolute():
            folder = self.paths.data / folder
        if opts.get("save_to_dirs"):
            pattern = str(opts.get("directories_filename_pattern") or "[prompt_words]")   # A1111's fallback
            for part in pattern.replace("\\", "/").split("/"):
                name = saving.expand_pattern(part, tokens or {}, max_prompt_words=int(
                    opts.get("directories_max_prompt_words", 8)))
                if name and name not in (".", ".."):
                    folder = folder / name
        return folder

    def _save(self, image, text: str, seed: int, req: GenerationRequest, model: LoadedModel, opts: dict,
              folder_key: str = "outdir_txt2img_samples", tokens: dict | None = None, suffix: str = "") -> Path:
        """Save one image as the settings say (file name pattern, sub-folders, format, infotext inside or not,
        a .txt beside it); ``tokens``: the image's own values for the name (its prompt, batch number, ...);
        ``suffix`` goes after the pattern's name ("-before-highres-fix")."""
        tokens = {"seed": seed, "prompt": req.prompt, "prompt_no_styles": req.prompt,
                  "negative_prompt": req.negative_prompt, "steps": req.steps, "cfg": req.cfg_scale,
                  "styles": req.styles, "sampler": req.sampler_name, "model_name": Path(model.info.filename).stem,
                  "model_hash": model.info.shorthash, "width": image.width, "height": image.height,
                  "batch_size": req.batch_size, "image": image, **(tokens or {})}
        folder = self._outdir(opts, folder_key, tokens)
        params = ImageSaveParams(image, req, str(folder), {"parameters": text})
        for listener in self.events.before_image_saved:
            listener(params)
        pattern = opts.get("samples_filename_pattern") or ("[seed]" if opts.get("save_to_dirs")
                                                           else "[seed]-[prompt_spaces]")
        path = saving.save_image(params.image, folder, params.pnginfo.get("parameters"), tokens=tokens,
                                 pattern=str(pattern) + suffix, fmt=_ext(opts.get("samples_format")),
                                 jpeg_quality=int(opts.get("jpeg_quality", 80)),
                                 sidecar_txt=bool(opts.get("save_txt")),
                                 add_number=bool(opts.get("save_images_add_number", True)),
                                 embed_infotext=bool(opts.get("enable_pnginfo", True)))
        params.filename = str(path)
        for listener in self.events.image_saved:
            listener(params)
        return path


def job_seeds(req: GenerationRequest, total: int) -> tuple[list[int], list[int]]:
    """The seed and variation seed of each image of a job: -1 drawn once, then seed + i (image i can be
    remade alone); variation seeds count up only when a variation strength is set."""
    seed = resolve_seed(req.seed)
    subseed = resolve_seed(req.subseed)
    seeds = [seed + i for i in range(total)]
    subseeds = [subseed + i for i in range(total)] if req.subseed_strength > 0 else [subseed] * total
    return seeds, subseeds


def _ext(fmt: object) -> str:
    f = str(fmt or "png").lower()
    return "jpg" if f == "jpeg" else f


def result_json(res: GenerationResult) -> str:
    return json.dumps(res.info(), ensure_ascii=False, default=str)
