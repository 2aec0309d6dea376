"""The refiner and hires fix's own checkpoint (A1111's refiner_checkpoint / refiner_switch_at and
hr_checkpoint_name) on the bundled model. The second checkpoints are written to disk in the A1111 layout:

- "shapes-copy": the bundled file's bytes under another name. Handing over to it must not change one pixel: the
  sampler's state, noise and schedule go on as if nothing happened.
- "shapes-swapped": the bundled model with the text encoder's token embeddings of "red" and "blue" exchanged, so it
  reads "red" as "blue". Whatever it samples is blue where the prompt says red: the picture shows which checkpoint
  drew it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import shape_checker as sc
from webui.core.errors import InvalidField
from webui.core.request import GenerationRequest, fields_from_infotext

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted((ROOT / "models" / "Stable-diffusion").glob("shapes-*.safetensors"))
pytestmark = pytest.mark.skipif(not BUNDLED, reason="the bundled model is not in models/Stable-diffusion")
PROMPT = "a large red circle in the centre, green background"
SEED = 5
TOKENS = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"


def _swapped_checkpoint(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file

    from webui.models.loader import tokenizer
    sd = load_file(str(src))
    red, blue = (tokenizer()(w, add_special_tokens=False).input_ids for w in ("red", "blue"))
    assert len(red) == len(blue) == 1, "red and blue are one token each in CLIP's vocabulary"
    emb = sd[TOKENS].clone()
    emb[red[0]], emb[blue[0]] = sd[TOKENS][blue[0]], sd[TOKENS][red[0]]
    sd[TOKENS] = emb
    save_file(sd, str(dst))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from app import build_engine
    from checkpoint_factory import make_tiny_checkpoint
    from webui.config.flags import parse_args

    data = tmp_path_factory.mktemp("refiner")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copyfile(BUNDLED[0], folder / "shapes-copy.safetensors")
    _swapped_checkpoint(BUNDLED[0], folder / "shapes-swapped.safetensors")
    make_tiny_checkpoint(folder / "tiny-sdxl.safetensors", "sdxl", seed=3)
    engine = build_engine(parse_args(["--data-dir", str(data)]))
    yield engine
    engine.jobs.stop()


def request(**kw) -> GenerationRequest:
    opts = {"sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False, **kw.pop("opts", {})}
    return GenerationRequest(**{"prompt": PROMPT, "steps": 12, "width": 128, "height": 128, "cfg_scale": 7,
                                "sampler_name": "Euler a", "seed": SEED, "override_settings": opts, **kw})


def colour(image) -> str | None:
    return sc.analyse(image).colour


def params(infotext: str) -> dict:
    from webui.core.infotext import parse_infotext
    return parse_infotext(infotext)


@pytest.fixture(scope="module")
def plain(engine):
    res = engine.txt2img(request(), save=False)
    assert colour(res.images[0]) == "red"
    return res


def test_handing_over_to_the_same_weights_changes_nothing(engine, plain):
    res = engine.txt2img(request(refiner_checkpoint="shapes-copy", refiner_switch_at=0.5), save=False)
    assert np.array_equal(np.asarray(res.images[0]), np.asarray(plain.images[0])), \
        "the sampler's state must carry over the switch unchanged"
    p = params(res.infotexts[0])
    title = engine.models.find("shapes-copy").short_title
    assert p["Refiner"] == title and title.startswith("shapes-copy [")
    assert float(p["Refiner switch at"]) == 0.5
    assert "Refiner" not in params(plain.infotexts[0])


def test_the_refiner_draws_from_the_switch_on(engine, plain):
    early = engine.txt2img(request(refiner_checkpoint="shapes-swapped", refiner_switch_at=0.05), save=False)
    late = engine.txt2img(request(refiner_checkpoint="shapes-swapped", refiner_switch_at=0.9), save=False)
    found = colour(early.images[0]), colour(late.images[0])
    print(f"\n[refiner] red-reads-blue refiner from 5 % on: {found[0]}; from 90 % on: {found[1]}")
    assert found == ("blue", "red"), "the refiner's text encoder and UNet sample from the switch on"
    # switching by steps instead of by noise level: 1 of 12 steps done is over 5 %, so it starts at step 2
    by_steps = engine.txt2img(request(refiner_checkpoint="shapes-swapped", refiner_switch_at=0.05,
                                      opts={"refiner_switch_by_sample_steps": True}), save=False)
    assert colour(by_steps.images[0]) == "blue"
    assert params(by_steps.infotexts[0])["Refiner switch by sampling steps"] == "True"


def test_a_refiner_that_is_the_job_checkpoint_is_no_switch(engine, plain):
    res = engine.txt2img(request(refiner_checkpoint=BUNDLED[0].name, refiner_switch_at=0.2), save=False)
    assert np.array_equal(np.asarray(res.images[0]), np.asarray(plain.images[0]))
    assert "Refiner" not in params(res.infotexts[0])
    off = engine.txt2img(request(refiner_checkpoint="None", refiner_switch_at=0.2), save=False)
    assert np.array_equal(np.asarray(off.images[0]), np.asarray(plain.images[0]))


def test_hires_checkpoint_and_the_refiner_pass_setting(engine):
    hires = {"enable_hr": True, "hr_scale": 1.0, "hr_upscaler": "Latent", "denoising_strength": 0.9}
    own = engine.txt2img(request(**hires), save=False)
    other = engine.txt2img(request(**hires, hr_checkpoint_name="shapes-swapped"), save=False)
    p = params(other.infotexts[0])
    assert p["Hires checkpoint"] == engine.models.find("shapes-swapped").short_title
    # with hires fix the refiner runs in the second pass by default (A1111's "second pass")
    refined = engine.txt2img(request(**hires, refiner_checkpoint="shapes-swapped", refiner_switch_at=0.05),
                             save=False)
    first_only = engine.txt2img(request(**hires, refiner_checkpoint="shapes-swapped", refiner_switch_at=0.05,
                                        opts={"hires_fix_refiner_pass": "first pass"}), save=False)
    found = [colour(r.images[0]) for r in (own, other, refined, first_only)]
    print(f"\n[refiner] hires pass (denoise 0.9): own checkpoint {found[0]}, red-reads-blue hires checkpoint "
          f"{found[1]}, refiner in the second pass {found[2]}, refiner in the first pass only {found[3]}")
    assert found[:3] == ["red", "blue", "blue"]
    assert found[3] == "red", "the second pass went back to the job's checkpoint, which reads red"
    assert "Hires refiner" not in params(refined.infotexts[0])
    assert params(first_only.infotexts[0])["Hires refiner"] == "first pass"


def test_pasting_brings_the_checkpoints_back(engine):
    res = engine.txt2img(request(refiner_checkpoint="shapes-swapped", refiner_switch_at=0.6, enable_hr=True,
                                 hr_scale=1.0, hr_upscaler="Latent", hr_checkpoint_name="shapes-copy",
                                 opts={"hires_fix_refiner_pass": "both passes"}), save=False)
    fields = fields_from_infotext(params(res.infotexts[0]))
    assert engine.models.find(fields["refiner_checkpoint"]).name == "shapes-swapped.safetensors"
    assert fields["refiner_switch_at"] == 0.6
    assert engine.models.find(fields["hr_checkpoint_name"]).name == "shapes-copy.safetensors"
    assert fields["override_settings"]["hires_fix_refiner_pass"] == "both passes"


def test_bad_refiners_are_refused_with_the_reason(engine):
    with pytest.raises(InvalidField) as e:
        engine.txt2img(request(refiner_checkpoint="no-such-model", refiner_switch_at=0.5), save=False)
    assert e.value.field == "refiner_checkpoint" and "no-such-model" in str(e.value)
    with pytest.raises(InvalidField) as e:
        engine.txt2img(request(enable_hr=True, hr_checkpoint_name="missing.safetensors"), save=False)
    assert e.value.field == "hr_checkpoint_name"
    with pytest.raises(InvalidField) as e:
        engine.txt2img(request(refiner_checkpoint="shapes-copy", refiner_switch_at=1.5), save=False)
    assert e.value.field == "refiner_switch_at"
    with pytest.raises(InvalidField) as e:   # SDXL latents are not SD1's
        engine.txt2img(request(refiner_checkpoint="tiny-sdxl", refiner_switch_at=0.5, steps=4), save=False)
    assert e.value.field == "refiner_checkpoint" and "latent spaces differ" in str(e.value)
    assert colour(engine.txt2img(request(), save=False).images[0]) == "red", "the engine goes on serving"


def test_the_job_checkpoint_stays_loaded_and_the_cache_keeps_its_limit(engine):
    engine.txt2img(request(refiner_checkpoint="shapes-swapped", refiner_switch_at=0.5), save=False)
    memory = engine.models.memory()
    assert memory["loaded"] == [engine.models.find(BUNDLED[0].name).title], \
        "sd_checkpoints_limit 1: the refiner is let go after the job, the job's checkpoint stays"


def test_xyz_plot_refiner_axes(engine):
    """A1111's "Refiner checkpoint" and "Refiner switch at" axes: "None" is no refiner; a late switch keeps the
    first checkpoint's colour, an early one takes the refiner's."""
    from webui.extensions.runner import ScriptRunner
    from webui.scripts import builtin_registry
    runner = ScriptRunner(engine, builtin_registry())
    flags = [True, True, False, False, False, False, 0, False]   # legend, lone images, sub-grids, seeds, margin, csv
    args = ["Refiner checkpoint", "None, shapes-swapped", [], "Refiner switch at", "0.05, 0.9", [], "Nothing", "",
            [], *flags]
    res = runner.run(request(script_name="X/Y/Z plot", script_args=args, refiner_switch_at=0.5), save=False)
    cells = [colour(im) for im in res.images[res.index_of_first_image:]]
    assert cells == ["red", "blue", "red", "red"], cells   # x fastest: (None, .05) (swapped, .05) (None, .9) ...
    with pytest.raises(InvalidField, match="Refiner checkpoint"):
        runner.run(request(script_name="X/Y/Z plot", script_args=["Refiner checkpoint", "nope", [], "Nothing", "",
                                                                  [], "Nothing", "", [], *flags]), save=False)
