"""A1111's sampler parameters on the bundled model: NGMS and Skip Early CFG skip the negative prompt's UNet pass
(skipping it on every step is exactly CFG 1), sigma churn changes what Euler draws and nothing for samplers that do
not take it, img2img's start noise (noise multiplier, extra noise, SGM noise multiplier) and UniPC's order, the
infotext keys come and paste back as A1111's, and the X/Y/Z axes set them."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import shape_checker as sc
from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, Img2ImgRequest, fields_from_infotext

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


def red_circle_on_blue() -> Image.Image:
    im = Image.new("RGB", (128, 128), tuple(sc.NAMED_COLOURS["blue"]))
    ImageDraw.Draw(im).ellipse((30, 30, 98, 98), fill=tuple(sc.NAMED_COLOURS["red"]))
    return im


def img2img(engine, sampler="Euler", denoise=0.4, seed=21, **opts):
    req = Img2ImgRequest(prompt="a large red circle in the centre, blue background", steps=12, width=128, height=128,
                         cfg_scale=7, sampler_name=sampler, seed=seed, denoising_strength=denoise,
                         override_settings={"sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False,
                                            **opts})
    res = engine.img2img(req, [red_circle_on_blue()], None, save=False)
    return np.asarray(res.images[0]).astype(np.int16), parse_infotext(res.infotexts[0])


def test_start_noise_is_a1111s_in_sigma_space_for_every_kind_of_scheduler():
    """A1111 noises img2img's start in k-diffusion's sigma space: x + m * noise * sigma (sqrt(1 + sigma^2) with
    the SGM multiplier), then + m * noise * extra; schedulers that work in alpha space (DDIM) get the same point
    scaled by sqrt(alpha), as A1111's timestep samplers."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from webui.engine.sampler_params import SamplerParams
    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
    x, noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), \
        torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for cls in (EulerDiscreteScheduler, DDIMScheduler):
        sch = cls.from_config(config)
        sch.set_timesteps(10)
        t = sch.timesteps[4:5]
        a = float(sch.alphas_cumprod[int(t)])
        sigma = ((1 - a) / a) ** 0.5
        cx = 1.0 if cls is EulerDiscreteScheduler else a ** 0.5
        plain = SamplerParams().noised(sch, x, noise, t, img2img=True)
        assert torch.allclose(plain, sch.add_noise(x, noise, t))
        got = SamplerParams(noise_multiplier=0.5, extra_noise=0.3).noised(sch, x, noise, t, img2img=True)
        assert torch.allclose(got, (x + 0.5 * noise * (sigma + 0.3)) * cx, atol=1e-5), cls.__name__
        hires = SamplerParams(noise_multiplier=0.5, extra_noise=0.3).noised(sch, x, noise, t, img2img=False)
        assert torch.allclose(hires, (x + noise * (sigma + 0.3)) * cx, atol=1e-5), "the multiplier is img2img's"
        sgm = SamplerParams(sgm_noise=True).noised(sch, x, noise, t, img2img=True)
        assert torch.allclose(sgm, (x + noise * (1 + sigma ** 2) ** 0.5) * cx, atol=1e-5), cls.__name__


def test_img2img_noise_multiplier_extra_noise_and_sgm_change_the_picture_and_paste_back(engine):
    """With no start noise (multiplier 0) Euler's img2img no longer depends on the seed; extra noise moves the
    picture further from the init image the more there is; each setting writes A1111's key only when it is on, and
    the keys paste back as the settings."""
    init = np.asarray(red_circle_on_blue()).astype(np.int16)
    plain, p = img2img(engine)
    quiet, pq = img2img(engine, initial_noise_multiplier=0.0)
    quiet_other_seed, _ = img2img(engine, seed=22, initial_noise_multiplier=0.0)
    plain_other_seed, _ = img2img(engine, seed=22)
    assert np.array_equal(quiet, quiet_other_seed) and not np.array_equal(plain, plain_other_seed)
    assert not np.array_equal(quiet, plain)
    some, _ = img2img(engine, img2img_extra_noise=0.5)
    loud, pl = img2img(engine, img2img_extra_noise=1.0)
    sgm, ps = img2img(engine, sgm_noise_multiplier=True)
    d = {name: float(np.abs(im - init).mean()) for name, im in
         (("plain", plain), ("extra noise 0.5", some), ("extra noise 1", loud), ("sgm", sgm))}
    print("\n[start noise] mean distance from the init image: " + ", ".join(f"{k} {v:.1f}" for k, v in d.items()))
    assert d["plain"] + 2 < d["extra noise 0.5"] < d["extra noise 1"] - 2
    assert d["sgm"] > d["plain"] + 2, "sqrt(1 + sigma^2) is more start noise than sigma"
    assert not ({"Noise multiplier", "Extra noise", "SGM noise multiplier"} & p.keys())
    assert (pq["Noise multiplier"], pl["Extra noise"], ps["SGM noise multiplier"]) == ("0", "1", "True")
    fields = fields_from_infotext({**pq, **pl, **ps})
    assert fields["override_settings"].items() >= {"initial_noise_multiplier": 0.0, "img2img_extra_noise": 1.0,
                                                    "sgm_noise_multiplier": True}.items()
    by_field = engine.img2img(Img2ImgRequest(
        prompt="a large red circle in the centre, blue background", steps=12, width=128, height=128, cfg_scale=7,
        sampler_name="Euler", seed=21, denoising_strength=0.4, initial_noise_multiplier=0.0,
        override_settings={"sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False}),
        [red_circle_on_blue()], None, save=False)
    assert np.array_equal(np.asarray(by_field.images[0]).astype(np.int16), quiet), "A1111's API field works too"


def test_extra_noise_reaches_the_hires_pass_only(engine):
    def hires(**opts):
        req = GenerationRequest(prompt="a large yellow star on the right, purple background", steps=6, width=64,
                                height=64, cfg_scale=7, sampler_name="Euler", seed=11, enable_hr=True, hr_scale=2,
                                hr_upscaler="Latent", denoising_strength=0.5, override_settings={
                                    "sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False, **opts})
        res = engine.txt2img(req, save=False)
        return np.asarray(res.images[0]), parse_infotext(res.infotexts[0])
    plain, p = hires()
    extra, pe = hires(img2img_extra_noise=0.5, initial_noise_multiplier=0.0)
    assert pe["Extra noise"] == "0.5" and "Extra noise" not in p
    assert "Noise multiplier" not in pe, "txt2img's hires pass has no noise multiplier (img2img's)"
    assert not np.array_equal(plain, extra)


def test_unipc_order_is_a1111s_setting_and_stays_below_the_steps(engine):
    third, _, _ = run(engine, sampler="UniPC")
    first, _, _ = run(engine, sampler="UniPC", uni_pc_order=1)
    assert not np.array_equal(first, third), "A1111's default order is 3"
    assert sc.analyse(third.astype(np.uint8)).colour == "yellow"
    req = dict(prompt="a large yellow star on the right, purple background", steps=2, width=128, height=128,
               cfg_scale=7, sampler_name="UniPC", seed=11)
    two = [np.asarray(engine.txt2img(GenerationRequest(**req, override_settings={
        "sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False, "uni_pc_order": order}),
        save=False).images[0]) for order in (1, 3)]
    assert np.array_equal(*two), "with 2 steps the order is at most 1"
    assert fields_from_infotext({"UniPC order": "2"})["override_settings"]["uni_pc_order"] == 2


def test_xyz_noise_and_unipc_axes(engine):
    from webui.extensions.runner import ScriptRunner
    from webui.scripts import builtin_registry
    runner = ScriptRunner(engine, builtin_registry())
    flags = [True, True, False, False, False, False, 0, False]
    req = Img2ImgRequest(prompt="a large red circle in the centre, blue background", steps=6, width=64, height=64,
                         cfg_scale=7, sampler_name="UniPC", seed=21, denoising_strength=0.5,
                         override_settings={"sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False},
                         script_name="X/Y/Z plot", script_args=["Extra noise", "0, 0.5", [], "SGM noise multiplier",
                                                                "False, True", [], "UniPC Order", "1, 2", [],
                                                                *flags])
    res = runner.run(req, images=[red_circle_on_blue()], save=False)
    cells = res.images[res.index_of_first_image:]
    texts = [parse_infotext(t) for t in res.infotexts[res.index_of_first_image:]]
    assert [t.get("Extra noise") for t in texts] == [None, "0.5"] * 4
    assert [t.get("SGM noise multiplier") for t in texts] == [None, None, "True", "True"] * 2
    arrays = [np.asarray(c) for c in cells]
    assert not np.array_equal(arrays[0], arrays[4]), "the UniPC order axis changes the picture"


def test_schedule_min_max_sigma_and_rho_shape_karras_and_exponential_schedules(engine):
    """A1111's schedule settings: the Karras schedule runs from max to min sigma with the rho's curve, the
    Exponential one between the same bounds; the Automatic (uniform) schedule has none of them, so they change
    nothing there and write no key."""
    from webui.core.errors import InvalidField
    from webui.engine import samplers as engine_samplers
    opts = {"sigma_min": 0.1, "sigma_max": 5.0, "rho": 3.0}
    karras = engine_samplers.make_scheduler("Euler", "karras", engine_samplers.SD_NOISE, opts, 10)
    karras.set_timesteps(10)
    ramp = np.linspace(0, 1, 10)
    expected = (5.0 ** (1 / 3) + ramp * (0.1 ** (1 / 3) - 5.0 ** (1 / 3))) ** 3
    assert np.allclose(karras.sigmas[:-1].numpy(), expected, rtol=1e-4)
    expo = engine_samplers.make_scheduler("DPM++ 2M", "exponential", engine_samplers.SD_NOISE, opts, 10)
    expo.set_timesteps(10)
    assert np.isclose(float(expo.sigmas[0]), 5.0, rtol=1e-3) and np.isclose(float(expo.sigmas[-2]), 0.1, rtol=1e-3)

    plain, _, _ = run(engine, sampler="Euler")
    uniform, pu, _ = run(engine, sampler="Euler", **opts)
    assert np.array_equal(plain, uniform) and not ({"Schedule min sigma", "Schedule rho"} & pu.keys())
    req = GenerationRequest(prompt="a large yellow star on the right, purple background", steps=12, width=128,
                            height=128, cfg_scale=7, sampler_name="Euler", scheduler="Karras", seed=11,
                            override_settings={"sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False})
    default = engine.txt2img(req, save=False)
    steep = engine.txt2img(dataclasses.replace(req, override_settings={**req.override_settings, "rho": 3.0,
                                                                        "sigma_max": 10.0}), save=False)
    ps = parse_infotext(steep.infotexts[0])
    assert (ps["Schedule rho"], ps["Schedule max sigma"]) == ("3", "10") and "Schedule min sigma" not in ps
    assert "Schedule rho" not in parse_infotext(default.infotexts[0])
    assert not np.array_equal(np.asarray(default.images[0]), np.asarray(steep.images[0]))
    assert sc.analyse(np.asarray(steep.images[0])).colour == "yellow"
    assert fields_from_infotext(ps)["override_settings"].items() >= {"rho": 3.0, "sigma_max": 10.0}.items()
    with pytest.raises(InvalidField, match="min sigma"):
        engine.submit_txt2img(dataclasses.replace(req, override_settings={**req.override_settings, "sigma_min": 3.0,
                                                                          "sigma_max": 2.0}), save=False)
    from webui.extensions.runner import ScriptRunner
    from webui.scripts import builtin_registry
    grid = ScriptRunner(engine, builtin_registry()).run(dataclasses.replace(
        req, steps=4, width=64, height=64, script_name="X/Y/Z plot",
        script_args=["Schedule rho", "7, 2", [], "Schedule min sigma", "0, 0.5", [], "Nothing", "", [],
                     True, True, False, False, False, False, 0, False]), save=False)
    texts = [parse_infotext(t) for t in grid.infotexts[grid.index_of_first_image:]]
    assert [(t.get("Schedule rho"), t.get("Schedule min sigma")) for t in texts] == [
        (None, None), ("2", None), (None, "0.5"), ("2", "0.5")], "rho 7 is Karras's own: no key"


def test_schedule_types_reach_the_scheduler_of_a_loaded_model(engine):
    """A checkpoint's scheduler config lists the keys it left at their defaults (diffusers' _use_default_values,
    which from_config resets): the schedule type must still reach the scheduler (Karras was silently dropped)."""
    from webui.engine.samplers import make_scheduler
    cfg = dict(engine.models.get(BUNDLED[0].name).pipe.scheduler.config)
    assert "use_karras_sigmas" in cfg.get("_use_default_values", []), "the case this test is about"
    for sampler, schedule, flag in (("Euler", "karras", "use_karras_sigmas"),
                                    ("Euler", "exponential", "use_exponential_sigmas"),
                                    ("DPM++ 2M", "beta", "use_beta_sigmas")):
        assert getattr(make_scheduler(sampler, schedule, cfg).config, flag) is True, schedule
    assert make_scheduler("Euler", "sgm_uniform", cfg).config.timestep_spacing == "trailing"
    assert make_scheduler("UniPC", "automatic", cfg, {}, 12).config.final_sigmas_type == "sigma_min"
    assert make_scheduler("DDIM", "automatic", cfg).config.timestep_spacing == "leading", "DDIM's own default"
    plain, _, _ = run(engine, sampler="Euler")
    karras = engine.txt2img(GenerationRequest(
        prompt="a large yellow star on the right, purple background", steps=12, width=128, height=128, cfg_scale=7,
        sampler_name="Euler", scheduler="Karras", seed=11,
        override_settings={"sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False}), save=False)
    assert not np.array_equal(plain, np.asarray(karras.images[0]).astype(np.int16))


def test_always_discard_next_to_last_sigma(engine):
    """A1111's setting: a schedule of steps + 1 sigmas with the next-to-last dropped (Euler and the other
    one-sigma-per-step samplers); samplers that cannot drop one run as usual and say so by leaving the key out."""
    from webui.engine.sampler_params import SamplerParams
    from webui.engine.samplers import SD_NOISE, make_scheduler
    plain = make_scheduler("Euler", "automatic", SD_NOISE)
    plain.set_timesteps(11)
    dropped = make_scheduler("Euler", "automatic", SD_NOISE)
    SamplerParams(discard_penultimate=True).set_timesteps(dropped, 10, "cpu")
    assert len(dropped.timesteps) == 10
    assert torch.equal(dropped.sigmas, torch.cat([plain.sigmas[:-2], plain.sigmas[-1:]]))
    euler, p0, _ = run(engine, sampler="Euler")
    discard, p, rows = run(engine, sampler="Euler", always_discard_next_to_last_sigma=True)
    assert rows == 24 and p["Discard penultimate sigma"] == "True" and "Discard penultimate sigma" not in p0
    assert not np.array_equal(euler, discard) and sc.analyse(discard.astype(np.uint8)).colour == "yellow"
    heun, _, _ = run(engine, sampler="Heun")
    heun_on, ph, _ = run(engine, sampler="Heun", always_discard_next_to_last_sigma=True)
    assert np.array_equal(heun, heun_on) and "Discard penultimate sigma" not in ph
    assert fields_from_infotext(p)["override_settings"]["always_discard_next_to_last_sigma"] is True
    from webui.extensions.runner import ScriptRunner
    from webui.scripts import builtin_registry
    grid = ScriptRunner(engine, builtin_registry()).run(GenerationRequest(
        prompt="a large yellow star on the right, purple background", steps=4, width=64, height=64, cfg_scale=7,
        sampler_name="DPM++ 2M", seed=11, script_name="X/Y/Z plot",
        override_settings={"sd_model_checkpoint": BUNDLED[0].name, "live_previews_enable": False},
        script_args=["Always discard next-to-last sigma", "False, True", [], "Nothing", "", [], "Nothing", "", [],
                     True, True, False, False, False, False, 0, False]), save=False)
    texts = [parse_infotext(t) for t in grid.infotexts[grid.index_of_first_image:]]
    assert [t.get("Discard penultimate sigma") for t in texts] == [None, "True"]
