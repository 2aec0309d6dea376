"""The Script base class of the Script API (A1111's modules/scripts.Script names and call order)."""
from __future__ import annotations

import re
from typing import Any


class _AlwaysVisibleType:
    """The marker show() returns for a script that is always on (it has no run(), only hooks)."""

    def __repr__(self) -> str:
        return "AlwaysVisible"


AlwaysVisible = _AlwaysVisibleType()


class PostprocessImageArgs:
    """What postprocess_image() gets: replace ``pp.image`` to change the image that is saved and returned."""

    def __init__(self, image: Any):
        self.image = image


class Script:
    """Subclass it, give it a title(), and either:

    - a dropdown script: show() returns True; ui() returns the components whose values become run()'s
      arguments; run(p, *args) does the work, usually with process_images(p) on copies of ``p``, and returns
      a Processed;
    - an always-on script: show() returns AlwaysVisible; its hooks run on every generation of that tab with
      the values of its own ui() components: setup, before_process, process, before_process_batch,
      process_batch, postprocess_image, postprocess (in that order).

    A hook that raises a StudioError (e.g. InvalidField) fails the request with that message; any other
    exception in an always-on hook is reported in the result's notes and the job carries on.
    """

    name: str | None = None            # title().lower(), set when the runner builds the script
    section: str | None = None
    filename: str | None = None        # the file the class came from (extensions), None for built-ins
    alwayson: bool = False
    is_txt2img: bool = False
    is_img2img: bool = False
    tabname: str | None = None
    group: Any = None                  # the gr.Group holding the script's UI, set by the UI
    controls: list | None = None       # what ui() returned, set by the UI
    infotext_fields: list | None = None
    paste_field_names: list | None = None
    sorting_priority: int = 0
    engine: Any = None                 # the studio's Engine (settings, models, jobs), set by the runner

    def title(self) -> str:
        """The name shown in the Script dropdown; the API's script_name matches it case-insensitively."""
        raise NotImplementedError

    def show(self, is_img2img: bool) -> bool | _AlwaysVisibleType:
        """False: not in this tab; True: in the Script dropdown; AlwaysVisible: always on."""
        return True

    def ui(self, is_img2img: bool) -> list:
        """Gradio components (the only place a script imports gradio); their values become the args."""
        return []

    def run(self, p, *args):
        """A dropdown script's work; returns a Processed (or None: the runner then runs ``p`` as it is)."""
        return None

    def setup(self, p, *args) -> None:
        """Always-on: when ``p`` is made, before anything else."""

    def before_process(self, p, *args) -> None:
        """Always-on: early, before the per-image prompts and seeds are set up."""

    def process(self, p, *args) -> None:
        """Always-on: p.all_prompts / p.all_seeds are set; change fields of ``p`` or add
        p.extra_generation_params (written into every image's infotext)."""

    def before_process_batch(self, p, *args, **kwargs) -> None:
        """Always-on: before each batch; kwargs batch_number, prompts, seeds, subseeds."""

    def process_batch(self, p, *args, **kwargs) -> None:
        """Always-on: before each batch is sampled; kwargs batch_number, prompts, seeds, subseeds."""

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args) -> None:
        """Always-on: every image after decoding; set ``pp.image`` to replace it."""

    def postprocess(self, p, processed, *args) -> None:
        """Always-on: after the job, with the Processed result (its images and infotexts may be changed)."""

    def describe(self) -> str:
        return ""

    def elem_id(self, item_id: str) -> str:
        """An HTML id for a component of this script, as A1111 builds it: script_[tab_]<title>_<item>."""
        need_tab = self.show(True) == self.show(False)
        tab = ("img2img_" if self.is_img2img else "txt2img_") if need_tab else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tab}{title}_{item_id}"
