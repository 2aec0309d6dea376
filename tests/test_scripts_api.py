"""The Script API core: dropdown scripts and always-on hooks run through the engine's one loop, with A1111's
names, and their extra params reach the infotext."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from webui.core import infotext
from webui.core.errors import InvalidField
from webui.core.request import GenerationRequest
from webui.extensions.api import AlwaysVisible, Script, ScriptRegistry, ScriptRunner

CKPT = {"sd_model_checkpoint": "tiny-sd1.safetensors"}

SCRIPT_FILE = '''
import copy
from webui.extensions.api import Script, Processed, process_images

class TwoSeeds(Script):
    def title(self):
        return "Two seeds"

    def run(self, p, offset=1, label="two"):
        images, texts, seeds = [], [], []
        for i in (0, int(offset)):
            q = copy.copy(p)
            q.seed = p.seed + i
            q.extra_generation_params["Two seeds"] = label
            res = process_images(q)
            images += res.images
            texts += res.infotexts
            seeds += res.all_seeds
        assert "Two seeds" not in p.extra_generation_params   # copies do not leak into p
        return Processed(p, images, seeds[0], texts[0], all_seeds=seeds, infotexts=texts)
'''


class Recorder(Script):
    """Always-on: records the hooks' order and arguments, inverts every image, adds an infotext key."""

    calls: list = []

    def title(self):
        return "Recorder"

    def show(self, is_img2img):
        return AlwaysVisible

    def setup(self, p, tag="x"):
        self.calls.append(("setup", tag))

    def before_process(self, p, tag="x"):
        self.calls.append(("before_process", tag))

    def process(self, p, tag="x"):
        self.calls.append(("process", tag, list(p.all_seeds)))
        p.extra_generation_params["Recorder"] = tag

    def process_batch(self, p, tag="x", **kw):
        self.calls.append(("process_batch", kw["batch_number"], list(kw["seeds"])))

    def postprocess_image(self, p, pp, tag="x"):
        from PIL import ImageOps
        self.calls.append(("postprocess_image",))
        pp.image = ImageOps.invert(pp.image)

    def postprocess(self, p, processed, tag="x"):
        self.calls.append(("postprocess", len(processed.images)))


class Broken(Script):
    def title(self):
        return "Broken"

    def show(self, is_img2img):
        return AlwaysVisible

    def process(self, p):
        raise RuntimeError("boom")


def req(**kw) -> GenerationRequest:
    base = dict(prompt="a red circle", steps=3, width=64, height=64, seed=11, override_settings=CKPT)
    return GenerationRequest(**{**base, **kw})


@pytest.fixture(scope="module")
def runner(engine, tmp_path_factory):
    registry = ScriptRegistry()
    path = tmp_path_factory.mktemp("ext") / "two_seeds.py"
    path.write_text(textwrap.dedent(SCRIPT_FILE))
    assert [c.__name__ for c in registry.load_file(path, origin="test-ext")] == ["TwoSeeds"]
    return ScriptRunner(engine, registry)


def test_dropdown_script_from_file_equals_single_runs(engine, runner):
    res = runner.run(req(script_name="TWO SEEDS", script_args=[2]), save=False)
    single = [engine.txt2img(req(seed=s), save=False).images[0] for s in (11, 13)]
    assert len(res.images) == 2 and res.seeds == [11, 13]
    for got, want in zip(res.images, single):
        assert np.array_equal(np.asarray(got), np.asarray(want))
    p = infotext.parse_infotext(res.infotexts[1])
    assert p["Two seeds"] == "two" and p["Seed"] == "13"
    listing = runner.api_scripts()
    assert listing["txt2img"] == ["two seeds"] and listing["img2img"] == ["two seeds"]
    info = [i for i in runner.api_script_info() if not i["is_img2img"]][0]
    assert info["name"] == "two seeds" and [a["label"] for a in info["args"]] == ["offset", "label"]


def test_unknown_script_and_bad_args_fail_before_work(runner):
    with pytest.raises(InvalidField) as e:
        runner.submit(req(script_name="nope"))
    assert e.value.field == "script_name" and "'Two seeds'" in str(e.value)
    with pytest.raises(InvalidField) as e:
        runner.submit(req(script_name="two seeds", script_args=[1, "a", "extra"]))
    assert e.value.field == "script_args"
    with pytest.raises(InvalidField) as e:
        runner.submit(req(alwayson_scripts={"missing": {"args": []}}))
    assert e.value.field == "alwayson_scripts"


def test_alwayson_hooks_order_infotext_and_image(engine):
    registry = ScriptRegistry()
    registry.register(Recorder)
    registry.register(Broken)
    runner = ScriptRunner(engine, registry)
    Recorder.calls.clear()
    res = runner.run(req(n_iter=2, alwayson_scripts={"recorder": {"args": ["hi"]}}), save=False)
    names = [c[0] for c in Recorder.calls]
    assert names == ["setup", "before_process", "process", "process_batch", "postprocess_image",
                     "process_batch", "postprocess_image", "postprocess"]
    assert Recorder.calls[2] == ("process", "hi", [11, 12])
    assert Recorder.calls[3] == ("process_batch", 0, [11]) and Recorder.calls[5] == ("process_batch", 1, [12])
    plain = engine.txt2img(req(n_iter=2), save=False)
    got = np.asarray(res.images[res.index_of_first_image]).astype(int)
    want = np.asarray(plain.images[plain.index_of_first_image]).astype(int)
    assert np.array_equal(got, 255 - want)
    assert infotext.parse_infotext(res.infotexts[-1])["Recorder"] == "hi"
    assert any("Broken" in n and "boom" in n for n in res.notes)   # reported, the job carried on


def test_styles_apply_to_script_runs_as_to_plain_ones(engine, runner):
    from webui.core.styles import PromptStyle
    engine.styles.save_style(PromptStyle("scripts-test-style", "{prompt}, oil painting", "blurry"))
    res = runner.run(req(styles=["scripts-test-style"], script_name="two seeds", script_args=[1]), save=False)
    plain = engine.txt2img(req(styles=["scripts-test-style"], seed=12), save=False)
    p = infotext.parse_infotext(res.infotexts[1])
    assert p["Prompt"] == "a red circle, oil painting" and p["Negative prompt"] == "blurry"
    assert np.array_equal(np.asarray(res.images[1]), np.asarray(plain.images[0]))
