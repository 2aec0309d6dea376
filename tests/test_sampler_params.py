"""A1111's sampler parameters on the bundled model: NGMS and Skip Early CFG skip the negative prompt's UNet pass
(skipping it on every step is exactly CFG 1), sigma churn changes what Euler draws and nothing for samplers that do
not take it, the infotext keys come and paste back as A1111's, and the X/Y/Z axes set them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import shape_checker as sc
from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, fields_from_infotext

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted((ROOT / "models" / "Stable-diffusion").glob("shapes-*.safetensors"))
pytestmark = pytest.mark.skipif(not BUNDLED, reason="the bundled model is not in models/Stable-diffusion")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from app import build_engine
    from webui.config.flags import parse_args
    engine = build_engine(parse_args(["--data-dir", str(tmp_path_factory.mktemp("sampler-params"))]))
    yield engine
    engine.jobs.stop()


def run(engine, sampler="Euler a", cfg=7.0, **opts):
    req = GenerationRequest(prompt="a large yellow star on the right, purple background", steps=12, width=128,
                            height=128, cfg_scale=cfg, sampler_name=sampler, seed=11,
                            override_settings={"sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False,
                                               **opts})
    rows = []
    unet = engine.models.get(BUNDLED[0].name).pipe.unet
    hook = unet.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        res = engine.txt2img(req, save=False)
    finally:
        hook.remove()
    return np.asarray(res.images[0]).astype(np.int16), parse_infotext(res.infotexts[0]), sum(rows)


def test_skipping_the_negative_prompt_everywhere_is_cfg_1(engine):
    cfg1, p1, rows1 = run(engine, cfg=1.0)
    ngms, p, rows = run(engine, s_min_uncond=15.0, s_min_uncond_all=True)
    assert rows == rows1 == 12, "one UNet row per step: the negative prompt's pass never ran"
    assert np.array_equal(ngms, cfg1)
    assert (p["NGMS"], p["NGMS all steps"]) == ("15", "True") and "NGMS" not in p1
    early, p, _ = run(engine, skip_early_cond=1.0)
    assert np.array_equal(early, cfg1) and p["Skip Early CFG"] == "1"


def test_ngms_skips_late_steps_and_keeps_the_picture(engine):
    plain, p0, rows0 = run(engine)
    late, p, rows = run(engine, s_min_uncond=2.0)
    print(f"\n[sampler params] NGMS 2.0: {rows} UNet rows instead of {rows0}")
    assert rows0 == 24 and 12 < rows < 24, "every other step below sigma 2 runs without the negative prompt"
    assert p["NGMS"] == "2" and "NGMS all steps" not in p and "NGMS" not in p0
    a, b = sc.analyse(plain.astype(np.uint8)), sc.analyse(late.astype(np.uint8))
    assert (b.colour, b.shape, b.background) == (a.colour, a.shape, a.background) == ("yellow", "star", "purple")
    assert not np.array_equal(plain, late)
    early, p, rows = run(engine, skip_early_cond=0.25)
    assert p["Skip Early CFG"] == "0.25" and rows == 24 - 4, "steps 0-3 of 12 (step / steps <= 0.25)"


def test_sigma_churn_is_euler_s_and_pastes_back(engine):
    euler, p0, _ = run(engine, sampler="Euler")
    churned, p, _ = run(engine, sampler="Euler", s_churn=1.0, s_noise=0.9)
    assert not np.array_equal(euler, churned)
    assert (p["Sigma churn"], p["Sigma noise"]) == ("1", "0.9") and "Sigma churn" not in p0
    ancestral, pa, _ = run(engine, sampler="Euler a")
    ancestral_churn, pac, _ = run(engine, sampler="Euler a", s_churn=1.0)
    assert np.array_equal(ancestral, ancestral_churn) and "Sigma churn" not in pac, "Euler a takes no churn"
    fields = fields_from_infotext({**p, "NGMS": "0.5", "NGMS all steps": "True", "Skip Early CFG": "0.1"})
    assert fields["override_settings"].items() >= {"s_churn": 1.0, "s_noise": 0.9, "s_min_uncond": 0.5,
                                                    "s_min_uncond_all": True, "skip_early_cond": 0.1}.items()


def test_a_request_field_wins_over_the_setting(engine):
    by_setting, _, rows_setting = run(engine, s_min_uncond=15.0, s_min_uncond_all=True)
    req_rows = []
    unet = engine.models.get(BUNDLED[0].name).pipe.unet
    hook = unet.register_forward_pre_hook(lambda m, args: req_rows.append(args[0].shape[0]))
    try:
        engine.txt2img(GenerationRequest(prompt="a large yellow star on the right, purple background", steps=12,
                                         width=128, height=128, cfg_scale=7, sampler_name="Euler a", seed=11,
                                         s_min_uncond=0.0, override_settings={
                                             "sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False,
                                             "s_min_uncond": 15.0, "s_min_uncond_all": True}), save=False)
    finally:
        hook.remove()
    assert rows_setting == 12 and sum(req_rows) == 24, "s_min_uncond 0 in the request turns NGMS off"


def test_xyz_axes_set_the_parameters(engine):
    from webui.extensions.runner import ScriptRunner
    from webui.scripts import builtin_registry
    runner = ScriptRunner(engine, builtin_registry())
    flags = [True, True, False, False, False, False, 0, False]
    req = GenerationRequest(prompt="a large yellow star on the right, purple background", steps=12, width=128,
                            height=128, cfg_scale=7, sampler_name="Euler", seed=11,
                            override_settings={"sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False},
                            script_name="X/Y/Z plot", script_args=["Sigma Churn", "0, 1", [], "Negative Guidance "
                                                                   "minimum sigma", "0, 15", [], "Nothing", "", [],
                                                                   *flags])
    res = runner.run(req, save=False)
    texts = [parse_infotext(t) for t in res.infotexts[res.index_of_first_image:]]
    assert [t.get("Sigma churn") for t in texts] == [None, "1", None, "1"]
    assert [t.get("NGMS") for t in texts] == [None, None, "15", "15"]
