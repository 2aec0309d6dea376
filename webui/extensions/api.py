"""The Script API: the one module scripts and extensions import (A1111's names, so a simple A1111 script ports
by changing its imports to ``from webui.extensions.api import ...``).

A script is a file (built-in: webui/scripts/*.py; extension: extensions/NAME/scripts/*.py) defining a subclass
of ``Script``::

    import copy
    from webui.extensions.api import Script, process_images, Processed

    class MyScript(Script):
        def title(self):                       # the Script dropdown's label; the API's script_name
            return "My script"

        def show(self, is_img2img):            # True: in the dropdown; AlwaysVisible: hooks on every job
            return True

        def ui(self, is_img2img):              # gradio components; their values become run()'s args
            import gradio as gr
            return [gr.Slider(1, 4, value=2, step=1, label="Count")]

        def run(self, p, count=2):             # defaults fill args an API call leaves out
            images, texts = [], []
            for i in range(int(count)):
                q = copy.copy(p)               # a copy per run: p itself stays as the user sent it
                q.seed = p.seed + i
                q.extra_generation_params["My script"] = i   # lands in the image's infotext
                res = process_images(q)        # the engine's sampling loop, inside this job
                images += res.images
                texts += res.infotexts
            return Processed(p, images, p.seed, texts[0] if texts else "", infotexts=texts)

``p`` has the request's fields under A1111's names (p.prompt, p.negative_prompt, p.seed, p.subseed,
p.subseed_strength, p.steps, p.cfg_scale, p.width, p.height, p.sampler_name, p.scheduler, p.batch_size,
p.n_iter, p.denoising_strength, p.override_settings, p.enable_hr ...; img2img: p.init_images and p.image_mask
as PIL images), p.all_prompts / p.all_seeds ... once set up, and p.extra_generation_params. Always-on scripts
(show() returns ``AlwaysVisible``) get the hooks setup, before_process, process, before_process_batch,
process_batch, postprocess_image(p, pp) and postprocess(p, processed), each with the values of their own ui().
Over the API: ``script_name`` + ``script_args`` (positional args of run()), and
``alwayson_scripts: {"<title>": {"args": [...]}}``. Raise ``InvalidField`` (webui.core.errors, re-exported here)
for bad arguments: the API answers 422 with that message and nothing is generated.
A loader registers classes with ``ScriptRegistry.register(cls)`` or ``ScriptRegistry.load_file(path)``.

Extensions (extensions/NAME/scripts/*.py) also find here A1111's callbacks (webui/extensions/callbacks.py):
on_app_started, on_model_loaded, on_ui_tabs, on_ui_settings (with OptionInfo), on_before_image_saved,
on_image_saved (ImageSaveParams), on_cfg_denoiser (CFGDenoiserParams), and basedir(). docs/extensions.md is the
tutorial.
"""
from __future__ import annotations

from webui.core.errors import BadRequest, InvalidField, StudioError
from webui.engine.events import CFGDenoiserParams, ImageSaveParams
from webui.extensions.callbacks import (
    OptionInfo,
    basedir,
    on_app_started,
    on_before_image_saved,
    on_cfg_denoiser,
    on_image_saved,
    on_model_loaded,
    on_ui_settings,
    on_ui_tabs,
)
from webui.extensions.processing import (
    Processed,
    StableDiffusionProcessing,
    StableDiffusionProcessingImg2Img,
    StableDiffusionProcessingTxt2Img,
    apply_color_correction,
    fix_seed,
    process_images,
    save_grid,
    setup_color_correction,
)
from webui.extensions.runner import ScriptRegistry, ScriptRunner
from webui.extensions.script import AlwaysVisible, PostprocessImageArgs, Script

__all__ = [
    "CFGDenoiserParams", "ImageSaveParams", "OptionInfo", "basedir", "on_app_started", "on_before_image_saved",
    "on_cfg_denoiser", "on_image_saved", "on_model_loaded", "on_ui_settings", "on_ui_tabs",
    "AlwaysVisible", "BadRequest", "InvalidField", "PostprocessImageArgs", "Processed", "Script",
    "ScriptRegistry", "ScriptRunner", "StableDiffusionProcessing", "StableDiffusionProcessingImg2Img",
    "StableDiffusionProcessingTxt2Img", "StudioError", "apply_color_correction", "fix_seed", "process_images",
    "save_grid", "setup_color_correction",
]
