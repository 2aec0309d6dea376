"""DPM++ 2S a, DPM fast and Restart (webui/engine/k_samplers.py).

The methods are checked where the right answer is known in closed form: for data drawn from a Gaussian N(MU, S^2)
the exact denoiser is MU + S^2 / (S^2 + sigma^2) (x - MU), the probability-flow ODE carries a start point x_T at
sigma_T to MU + S / sqrt(S^2 + sigma_T^2) (x_T - MU), and an ancestral sampler started from N(MU, S^2 + sigma_T^2)
must end with samples of N(MU, S^2). The "model" here is that exact denoiser, given the scheduler's timesteps and
scaled inputs as a UNet is. Then on the bundled model: the picture the prompt asks for, img2img keeping its init,
and the infotext.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import shape_checker as sc
from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, Img2ImgRequest, fields_from_infotext
from webui.engine import k_samplers as ks
from webui.engine import samplers as engine_samplers

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "Stable-diffusion" / "shapes-tiny-v1.safetensors"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
      "steps_offset": 1, "prediction_type": "epsilon", "timestep_spacing": "leading"}
MU, S = 0.3, 0.5
CLASSES = {"DPM++ 2S a": ks.DPMPP2SAncestralScheduler, "DPM fast": ks.DPMFastScheduler,
           "Restart": ks.RestartScheduler}


def pasted(text: str) -> dict:
    return fields_from_infotext(parse_infotext(text))


def gaussian_run(sampler: str | type, steps: int, eta: float, start, karras: bool = True, seed: int = 0):
    """Sample the Gaussian with the scheduler (a name in CLASSES, or a scheduler class) as the engine drives it.
    ``start(sigma_T, generator)`` gives x_T. Returns (x_T, result, sigma_T, scheduler)."""
    cls = CLASSES[sampler] if isinstance(sampler, str) else sampler
    sch = cls.from_config({**SD, "use_karras_sigmas": karras})
    sch.eta = eta
    sch.set_timesteps(steps)
    log_sigmas = np.log(((1 - sch.alphas_cumprod.double()) / sch.alphas_cumprod.double()).sqrt().numpy())
    g = torch.Generator().manual_seed(seed)
    sigma_t = float(sch.sigmas[0])
    x_t = start(sigma_t, g)
    x = x_t.clone()
    for t in sch.timesteps:
        scaled = sch.scale_model_input(x, t)
        sigma = math.exp(float(np.interp(float(t), np.arange(len(log_sigmas)), log_sigmas)))  # what t means
        noisy = scaled * math.sqrt(sigma ** 2 + 1)
        eps = (noisy - (MU + S ** 2 / (S ** 2 + sigma ** 2) * (noisy - MU))) / sigma
        x = sch.step(eps, t, x, generator=g).prev_sample
    return x_t, x, sigma_t, sch


def _plain_noise(n: int = 4000):
    return lambda sigma, g: torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64) * sigma


def _matched_noise(n: int = 4000):
    def start(sigma, g):
        return MU + torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64) * math.sqrt(S ** 2 + sigma ** 2)
    return start


@pytest.mark.parametrize("sampler,steps", [("DPM++ 2S a", (10, 20, 40)), ("DPM fast", (10, 20, 40)),
                                           ("Restart", (5, 10, 19))])
def test_without_noise_the_methods_follow_the_exact_ode(sampler, steps):
    """eta 0 (Restart below 20 steps restarts nothing): every sample ends where the ODE takes it, closer with
    more steps."""
    errors = []
    for n in steps:
        x_t, x, sigma_t, _ = gaussian_run(sampler, n, 0.0, _plain_noise())
        exact = MU + S / math.sqrt(S ** 2 + sigma_t ** 2) * (x_t - MU)
        errors.append(float((x - exact).abs().max()))
    print(f"{sampler}: largest error against the exact ODE at {steps} steps: {errors}")
    assert errors[0] > errors[1] > errors[2]
    assert errors[-1] < 0.02


@pytest.mark.parametrize("sampler,steps", [("DPM++ 2S a", 10), ("DPM++ 2S a", 20), ("DPM fast", 10),
                                           ("DPM fast", 20), ("Restart", 20), ("Restart", 40)])
def test_with_noise_the_samples_have_the_datas_distribution(sampler, steps):
    """eta 1 (and Restart's restarts): the fresh noise keeps the distribution right; without it (eta 0 started
    from the same points) the spread is not what ancestral sampling gives, so the noise really is drawn."""
    _, x, _, _ = gaussian_run(sampler, steps, 1.0, _matched_noise(), seed=steps)
    mean, std = float(x.mean()), float(x.std())
    print(f"{sampler} {steps} steps: mean {mean:.4f} (data {MU}), std {std:.4f} (data {S})")
    assert abs(mean - MU) < 0.04 and abs(std - S) < 0.04
    if sampler != "Restart":
        _, y, _, _ = gaussian_run(sampler, steps, 0.0, _matched_noise(), seed=steps)
        assert float((x - y).abs().mean()) > 0.1


def test_restart_goes_back_up_as_a1111s_does():
    """From 20 steps on, A1111's Restart spends 9 of them (from 36, steps / 4 twice) going back up from about
    sigma 0.1 to about 2 and down again; each step is a Heun step, two evaluations (one for the last)."""
    for steps, rises in ((19, 0), (20, 1), (35, 1), (36, 2)):
        sch = CLASSES["Restart"].from_config({**SD, "use_karras_sigmas": True})
        sch.set_timesteps(steps)
        assert len(sch.timesteps) == 2 * steps - 1
        sig = [float(s) for s in sch.sigmas[:-1]]
        ups = [(a, b) for a, b in zip(sig, sig[1:]) if b > a]
        assert len(ups) == rises
        for low, high in ups:
            assert 0.05 < low < 0.2 and 1.5 < high < 3.0


def test_dpm_fast_makes_as_many_evaluations_as_steps_between_the_models_extremes():
    for steps in (1, 2, 3, 7, 20):
        sch = CLASSES["DPM fast"].from_config(SD)
        sch.set_timesteps(steps)
        assert len(sch.timesteps) == steps
        assert float(sch.timesteps[0]) == pytest.approx(999, abs=0.01)
    tail = sch.tail_timesteps(5)   # img2img's tail: from that part of the schedule's own first noise level
    assert len(tail) == 5 and float(tail[0]) < 300


needs_model = pytest.mark.skipif(not MODEL.exists(), reason=f"the bundled model is not there yet: {MODEL}")
SETTINGS = {"sd_model_checkpoint": MODEL.name, "live_previews_enable": False}


def txt2img(engine, **kw):
    base = dict(prompt="", steps=20, width=128, height=128, cfg_scale=7, seed=1, override_settings=SETTINGS)
    return engine.txt2img(GenerationRequest(**{**base, **kw}), save=False)


@needs_model
@pytest.mark.parametrize("sampler", list(CLASSES))
def test_the_bundled_model_draws_the_prompt(engine, sampler):
    """Colour, position and background right in at least 5 of 6 cases, the shape (the model's weak spot) in 4."""
    cases = [("a large red circle on the left, blue background", ("red", "circle", "left", "blue")),
             ("a large yellow square at the top, purple background", ("yellow", "square", "top", "purple")),
             ("a large green triangle on the right, white background", ("green", "triangle", "right", "white"))]
    placed = shaped = 0
    for prompt, want in cases:
        for seed in (1, 2):
            res = txt2img(engine, prompt=prompt, seed=seed, sampler_name=sampler)
            a = sc.analyse(res.images[0])
            print(f"{sampler} seed {seed} {prompt!r}: {(a.colour, a.shape, a.position, a.background)}")
            placed += (a.colour, a.position, a.background) == (want[0], want[2], want[3])
            shaped += a.shape == want[1]
            assert f"Sampler: {sampler}," in res.infotexts[0]
    print(f"{sampler}: colour, position and background {placed}/6, shape {shaped}/6")
    assert placed >= 5 and shaped >= 4


@needs_model
@pytest.mark.parametrize("sampler", list(CLASSES))
def test_img2img_at_low_strength_keeps_the_picture(engine, sampler):
    from tool_modules import load_tool
    ds = load_tool("shapes_dataset")
    img = np.empty((128, 128, 3), np.uint8)
    img[:] = ds.COLOURS["green"]
    cx, cy = ds.ANCHORS["right"]
    ds.draw_shape(img, "triangle", cx, cy, ds.RADIUS["large"], ds.COLOURS["orange"])
    init = Image.fromarray(img)
    req = Img2ImgRequest(prompt="a large orange triangle on the right, green background", steps=20, width=128,
                         height=128, cfg_scale=7, seed=3, sampler_name=sampler, denoising_strength=0.3,
                         override_settings=SETTINGS)
    out = engine.img2img(req, [init], None, save=False).images[0]
    a, b = sc.analyse(init), sc.analyse(out)
    diff = float(np.abs(np.asarray(out, dtype=np.int16) - img).mean())
    print(f"{sampler} img2img 0.3: {b.colour} {b.shape} {b.position} {b.background}, mean change {diff:.1f}")
    assert (b.colour, b.shape, b.position, b.background) == (a.colour, a.shape, a.position, a.background)
    assert 0.5 < diff < 25


@needs_model
def test_eta_and_ensd_change_the_noise_and_are_recorded(engine):
    base = dict(prompt="a small blue star", seed=5, sampler_name="DPM++ 2S a")
    plain = txt2img(engine, **base)
    again = txt2img(engine, **base)
    half = txt2img(engine, **base, eta=0.5)
    ensd = txt2img(engine, **{**base, "override_settings": {**SETTINGS, "eta_noise_seed_delta": 31337}})
    px = [np.asarray(r.images[0], dtype=np.int16) for r in (plain, again, half, ensd)]
    assert np.array_equal(px[0], px[1])
    assert np.abs(px[0] - px[2]).mean() > 1 and np.abs(px[0] - px[3]).mean() > 1
    assert "Eta" not in plain.infotexts[0] and "ENSD" not in plain.infotexts[0]
    assert "Eta: 0.5," in half.infotexts[0] and "Schedule type: Karras" in half.infotexts[0]
    assert "ENSD: 31337" in ensd.infotexts[0]
    fields = pasted(ensd.infotexts[0])
    assert fields["sampler_name"] == "DPM++ 2S a"
    assert fields["override_settings"]["eta_noise_seed_delta"] == 31337
    assert pasted(half.infotexts[0])["override_settings"]["eta_ancestral"] == 0.5


def test_old_infotext_names_split_into_sampler_and_schedule():
    p = pasted("a cat\nSteps: 20, Sampler: DPM++ 2S a Karras, CFG scale: 7, Seed: 1, Size: 64x64")
    assert (p["sampler_name"], p["scheduler"]) == ("DPM++ 2S a", "Karras")
    assert engine_samplers.effective_schedule("Restart", "automatic") == "karras"
    assert "DPM adaptive" not in engine_samplers.available()


@needs_model
def test_ddim_eta_from_the_setting_or_the_request(engine):
    """A1111's "Eta for DDIM" (eta_ddim, 0 by default: DDIM deterministic); the request's eta wins; infotext
    "Eta DDIM" when not 0, pasted back to the setting."""
    base = dict(prompt="a large green triangle", seed=8, sampler_name="DDIM")
    plain = txt2img(engine, **base)
    setting = txt2img(engine, **{**base, "override_settings": {**SETTINGS, "eta_ddim": 0.7}})
    request = txt2img(engine, **base, eta=0.7)
    zero = txt2img(engine, **{**base, "eta": 0.0, "override_settings": {**SETTINGS, "eta_ddim": 0.7}})
    px = [np.asarray(r.images[0], dtype=np.int16) for r in (plain, setting, request, zero)]
    assert np.abs(px[0] - px[1]).mean() > 1
    assert np.array_equal(px[1], px[2]) and np.array_equal(px[0], px[3])
    assert "Eta" not in plain.infotexts[0] and "Eta DDIM: 0.7," in setting.infotexts[0]
    assert pasted(setting.infotexts[0])["override_settings"]["eta_ddim"] == 0.7


def test_ddim_cfgpp_step_renoises_along_the_unconditional_prediction():
    """One DDIM CFG++ step, by hand: x_prev = sqrt(a_prev) x0(guided) + sqrt(1 - a_prev) eps_uncond (eta 0)."""
    sch = ks.DDIMCFGPlusPlusScheduler.from_config({**SD, "set_alpha_to_one": False, "clip_sample": False})
    sch.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, guided, uncond = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    t = int(sch.timesteps[3])
    prev_t = t - 1000 // 10
    a_t, a_prev = sch.alphas_cumprod[t], sch.alphas_cumprod[prev_t]
    x0 = (x - (1 - a_t) ** 0.5 * guided) / a_t ** 0.5
    want = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * uncond
    torch.testing.assert_close(sch.step(guided, t, x, noise_uncond=uncond).prev_sample, want)
    assert ks.DDIMCFGPlusPlusScheduler.cfg_scale_multiplier == pytest.approx(1 / 12.5)


@needs_model
def test_ddim_cfgpp_on_the_bundled_model(engine):
    """A1111's CFG 7 (guidance 0.56 for CFG++) draws the prompt; CFG 1 (0.08) hardly follows it."""
    cases = [("a large red circle on the left, blue background", ("red", "circle", "left", "blue")),
             ("a large yellow square at the top, purple background", ("yellow", "square", "top", "purple")),
             ("a large green triangle on the right, white background", ("green", "triangle", "right", "white"))]
    right = {}
    for cfg in (7.0, 1.0):
        right[cfg] = 0
        for prompt, want in cases:
            for seed in (1, 2):
                res = txt2img(engine, prompt=prompt, seed=seed, sampler_name="DDIM CFG++", cfg_scale=cfg)
                a = sc.analyse(res.images[0])
                right[cfg] += (a.colour, a.shape, a.position, a.background) == want
        assert "Sampler: DDIM CFG++," in res.infotexts[0]
    print(f"DDIM CFG++: right at CFG 7 {right[7.0]}/6, at CFG 1 {right[1.0]}/6")
    assert right[7.0] >= 4 and right[1.0] <= 2


@needs_model
def test_cfg_below_one_mixes_towards_the_negative_prompt(engine):
    """CFG 0 is the negative prompt's prediction alone (here the empty prompt's picture); between 0 and 1 the
    two mix (the prompt's pass alone is only CFG 1's shortcut)."""
    def px(**kw):
        return np.asarray(txt2img(engine, steps=10, seed=4, sampler_name="Euler", **kw).images[0], dtype=np.int16)
    empty = px(prompt="", cfg_scale=1)
    zero = px(prompt="a large red circle on the left, blue background", cfg_scale=0)
    one = px(prompt="a large red circle on the left, blue background", cfg_scale=1)
    half = px(prompt="a large red circle on the left, blue background", cfg_scale=0.5)
    assert int(np.abs(zero - empty).max()) <= 2 and float(np.abs(zero - empty).mean()) < 0.1
    assert float(np.abs(one - empty).mean()) > 4
    assert float(np.abs(half - one).mean()) > 1 and float(np.abs(half - empty).mean()) > 1


def test_euler_a_with_eta_follows_the_ode_at_zero_and_keeps_the_distribution():
    """Euler a with an eta other than 1 (diffusers' has none): at 0 it is Euler, which converges on the exact
    ODE; at 0.5 the samples keep the data's distribution (given the steps a first-order method needs)."""
    errors = []
    for n in (10, 20, 40):
        x_t, x, sigma_t, _ = gaussian_run(ks.EulerAncestralEtaScheduler, n, 0.0, _plain_noise())
        errors.append(float((x - (MU + S / math.sqrt(S ** 2 + sigma_t ** 2) * (x_t - MU))).abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1   # first order: about half per doubling
    # a first-order method: its spread is still 0.45 at 20 steps, 0.48 at 40, 0.495 at 80
    _, x, _, _ = gaussian_run(ks.EulerAncestralEtaScheduler, 80, 0.5, _matched_noise(), seed=9)
    assert abs(float(x.mean()) - MU) < 0.04 and abs(float(x.std()) - S) < 0.04


@needs_model
def test_eta_ancestral_moves_euler_a(engine):
    base = dict(prompt="a small blue star", seed=5, sampler_name="Euler a")
    plain = txt2img(engine, **base)
    half = txt2img(engine, **{**base, "override_settings": {**SETTINGS, "eta_ancestral": 0.5}})
    again = txt2img(engine, **base, eta=0.5)
    a, b, c = (np.asarray(r.images[0], dtype=np.int16) for r in (plain, half, again))
    assert np.abs(a - b).mean() > 1 and np.array_equal(b, c)
    assert "Eta" not in plain.infotexts[0] and "Eta: 0.5," in half.infotexts[0]


def test_dpm2_a_with_eta_follows_the_ode_at_zero_and_keeps_the_distribution():
    """DPM2 a with an eta other than 1 (diffusers' has none): at 0 it is DPM2, a second-order method (the error
    falls about four-fold per doubling of steps); at 0.5 the samples keep the data's distribution. Its schedule is
    made for one step more with the next-to-last sigma dropped, as A1111's DPM2 samplers'."""
    errors = []
    for n in (10, 20, 40):
        x_t, x, sigma_t, sch = gaussian_run(ks.DPM2AncestralEtaScheduler, n, 0.0, _plain_noise())
        assert len(sch._base) == n + 1 and len(sch.timesteps) == 2 * n - 1     # a midpoint but on the last
        # the exact ODE down to the last sigma, then (as k-diffusion's DPM2) one Euler step to zero
        last = sch._base[-2]
        x_last = MU + math.sqrt(S ** 2 + last ** 2) / math.sqrt(S ** 2 + sigma_t ** 2) * (x_t - MU)
        errors.append(float((x - (MU + S ** 2 / (S ** 2 + last ** 2) * (x_last - MU))).abs().max()))
    assert errors[0] > 3 * errors[1] > 9 * errors[2] and errors[2] < 0.005, errors   # 0.037, 0.010, 0.0027
    _, x, _, _ = gaussian_run(ks.DPM2AncestralEtaScheduler, 20, 0.5, _matched_noise(), seed=9)
    assert abs(float(x.mean()) - MU) < 0.04 and abs(float(x.std()) - S) < 0.04
    full = ks.DPM2AncestralEtaScheduler.from_config({**SD, "use_karras_sigmas": True})
    full.set_timesteps(5)
    plain = ks.EulerAncestralEtaScheduler.from_config({**SD, "use_karras_sigmas": True})
    plain.set_timesteps(6)
    assert full._base == [float(s) for s in plain.sigmas[:-2]] + [0.0]


@needs_model
def test_eta_ancestral_moves_dpm2_a(engine):
    base = dict(prompt="a small blue star", seed=5, sampler_name="DPM2 a")
    plain = txt2img(engine, **base)
    half = txt2img(engine, **base, eta=0.5)
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (plain, half))
    assert np.abs(a - b).mean() > 1
    assert "Eta" not in plain.infotexts[0] and "Eta: 0.5," in half.infotexts[0]
