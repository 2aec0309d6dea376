"""example-hello: the smallest extension that uses every kind of extension point.

- a setting (on_ui_settings): the greeting word, in Settings > Hello example;
- a tab (on_ui_tabs): type a name, get a greeting;
- an always-visible script: when its checkbox is on, it writes "Hello: <greeting>" into each image's infotext;
- an API route (on_app_started): GET /hello/v1/greet?name=Ada -> {"greeting": "Hello, Ada!"}.

docs/extensions.md walks through this file.
"""
import gradio as gr

from webui.extensions.api import AlwaysVisible, OptionInfo, Script, on_app_started, on_ui_settings, on_ui_tabs

# The settings object on_ui_settings receives; kept so the tab and the route read the current greeting.
SETTINGS = {}


def greeting() -> str:
    opts = SETTINGS.get("opts")
    return opts.get("hello_greeting", "Hello") if opts is not None else "Hello"


@on_ui_settings
def add_settings(opts):
    SETTINGS["opts"] = opts
    opts.add_option("hello_greeting", OptionInfo("Hello", "Greeting used by the Hello example",
                                                 section=("hello", "Hello example")))


@on_ui_tabs
def hello_tab():
    with gr.Blocks(analytics_enabled=False) as tab:
        name = gr.Textbox(label="Your name", elem_id="hello_name")
        button = gr.Button("Greet", variant="primary", elem_id="hello_button")
        out = gr.HTML(elem_id="hello_output")
        button.click(lambda n: f"<p>{greeting()}, {n or 'stranger'}!</p>", name, out)
    return [(tab, "Hello", "hello")]


@on_app_started
def add_route(demo, app):
    @app.get("/hello/v1/greet")
    def greet(name: str = "stranger"):
        return {"greeting": f"{greeting()}, {name}!"}


class HelloStamp(Script):
    """Always visible: a checkbox under the generation settings of txt2img and img2img."""

    def title(self):
        return "Hello stamp"

    def show(self, is_img2img):
        return AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Checkbox(False, label="Stamp the greeting into the infotext", elem_id=self.elem_id("enabled"))]

    def process(self, p, enabled=False):
        if enabled:
            p.extra_generation_params["Hello"] = p.opts.get("hello_greeting", "Hello")
