"""The test extension: every hook and callback records what it got into EVENTS (served at /test-ext/events)."""
import gradio as gr

from webui.extensions.api import (
    AlwaysVisible,
    OptionInfo,
    Script,
    basedir,
    on_app_started,
    on_before_image_saved,
    on_cfg_denoiser,
    on_image_saved,
    on_model_loaded,
    on_ui_settings,
    on_ui_tabs,
)

EVENTS: list = []
BASEDIR = basedir().name


class TestExtScript(Script):
    def title(self):
        return "Test ext"

    def show(self, is_img2img):
        return AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Textbox("", label="Test ext word override", elem_id=self.elem_id("word"))]

    def setup(self, p, word=""):
        EVENTS.append(["setup", p.prompt])

    def before_process(self, p, word=""):
        EVENTS.append(["before_process", p.all_seeds is None])

    def process(self, p, word=""):
        word = word or p.opts.get("test_ext_word", "?")
        EVENTS.append(["process", p.prompt, p.steps, list(p.all_seeds)])
        p.extra_generation_params["Test ext"] = word

    def before_process_batch(self, p, word="", **kwargs):
        EVENTS.append(["before_process_batch", kwargs.get("batch_number"), list(kwargs.get("prompts", []))])

    def process_batch(self, p, word="", **kwargs):
        EVENTS.append(["process_batch", kwargs.get("batch_number"), list(kwargs.get("seeds", []))])

    def postprocess_image(self, p, pp, word=""):
        EVENTS.append(["postprocess_image", list(pp.image.size)])

    def postprocess(self, p, processed, word=""):
        EVENTS.append(["postprocess", len(processed.images)])


def started(demo, app):
    EVENTS.append(["app_started", type(demo).__name__, type(app).__name__, app.state.cmd_opts.test_ext_greeting,
                   BASEDIR])

    @app.get("/test-ext/events")
    def events():
        return EVENTS


on_app_started(started)


@on_model_loaded
def loaded(model):
    EVENTS.append(["model_loaded", model.info.name])


@on_ui_tabs
def tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.HTML("<div id='test_ext_marker'>test ext tab</div>")
        box = gr.Textbox(elem_id="test_ext_box")
        gr.Button("Shout", elem_id="test_ext_button").click(lambda t: (t or "").upper(), box, box)
    return [(tab, "Test Ext", "test_ext")]


@on_ui_settings
def settings(opts):
    opts.add_option("test_ext_word", OptionInfo("zebra", "Word the test extension writes",
                                                section=("test-ext", "Test extension")))


@on_cfg_denoiser
def denoiser(params):
    EVENTS.append(["cfg_denoiser", params.sampling_step, params.total_sampling_steps, list(params.x.shape),
                   len(params.text_cond), params.text_uncond is not None])


@on_before_image_saved
def before_saved(params):
    EVENTS.append(["before_image_saved", params.filename, "Test ext: " in params.pnginfo["parameters"],
                   params.p.prompt])
    params.pnginfo["parameters"] += ", Saved by: test-ext"


@on_image_saved
def saved(params):
    EVENTS.append(["image_saved", params.filename])
