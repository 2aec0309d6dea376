"""ControlNet through the engine, on tiny random-weight models: units change the image the way their fields say
(weight 0 is no control, exactly; two units both act; the guidance range and the control mode matter), the
img2img image stands in for a missing unit image, hires fix runs with control, and bad units fail clearly."""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.core import controlnet as cn_core
from webui.core import infotext as infotext_fmt
from webui.core.errors import InvalidField, NotFound
from webui.core.request import GenerationRequest, Img2ImgRequest


def control_image(kind: str = "square", size: int = 64) -> Image.Image:
    im = Image.new("RGB", (size, size), (20, 20, 120))
    d = ImageDraw.Draw(im)
    if kind == "square":
        d.rectangle([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=(240, 200, 30))
    else:
        d.ellipse([size // 8, size // 3, size // 2, 5 * size // 6], fill=(230, 40, 40))
    return im


@pytest.fixture(scope="module")
def cn_dir(tmp_path_factory):
    from controlnet_factory import make_cn_data_dir

    return make_cn_data_dir(tmp_path_factory.mktemp("cn-data"))


@pytest.fixture(scope="module")
def cn_engine(cn_dir):
    from app import build_engine
    from webui.config.flags import parse_args

    return build_engine(parse_args(["--data-dir", str(cn_dir)]))


def unit(**kw) -> dict:
    base = {"enabled": True, "module": "none", "model": "control_tiny_canny", "image": control_image()}
    base.update(kw)
    return base


def run(engine, units, ckpt="tiny-sd1.safetensors", **kw) -> tuple[np.ndarray, object]:
    fields = dict(prompt="a red square", steps=6, width=64, height=64, cfg_scale=5.0, seed=7,
                  sampler_name="Euler", override_settings={"sd_model_checkpoint": ckpt})
    fields.update(kw)
    req = GenerationRequest(**fields, alwayson_scripts={"controlnet": {"args": units}} if units is not None else {})
    res = engine.txt2img(req, save=False)
    return np.asarray(res.images[0], dtype=np.int16), res


def test_listing_detects_layouts_and_refuses_other_files(cn_engine):
    items = {i.name: i for i in cn_engine.models.controlnets.items}
    assert "annotators/not-listed.safetensors" not in items
    for name in ("control_tiny_canny.safetensors", "sub/control_tiny_depth.safetensors", "tiny-diffusers-folder"):
        assert items[name].error is None and items[name].kind == "SD1.x", items[name]
    assert items["controlnet-tiny-sdxl.safetensors"].kind == "SDXL"
    assert "LoRA" in items["a-lora.safetensors"].error
    assert "Stable Diffusion checkpoint" in items["a-checkpoint.safetensors"].error
    title = items["control_tiny_canny.safetensors"].title
    assert title.startswith("control_tiny_canny [") and len(title.split("[")[1]) == 9   # 8 hex + "]"
    assert cn_engine.models.controlnets.find(title).name == "control_tiny_canny.safetensors"


def test_weight_zero_is_no_control_exactly(cn_engine):
    plain, _ = run(cn_engine, None)
    zero, _ = run(cn_engine, [unit(weight=0.0)])
    one, res = run(cn_engine, [unit(weight=1.0)])
    assert np.array_equal(plain, zero)
    assert np.abs(one - plain).mean() > 1.0
    assert res.images[-1].size == (64, 64)      # the detected map is appended, as the extension does


def test_two_units_both_act(cn_engine):
    a = unit(image=control_image("square"))
    b = unit(image=control_image("circle"), model="control_tiny_depth")
    only_a, _ = run(cn_engine, [a])
    only_b, _ = run(cn_engine, [b])
    both, res = run(cn_engine, [a, b])
    assert np.abs(both - only_a).mean() > 0.5 and np.abs(both - only_b).mean() > 0.5
    text = res.infotexts[0]
    parsed = infotext_fmt.parse_infotext(text)
    units = cn_core.units_from_infotext(parsed)
    assert sorted(units) == [0, 1]
    assert units[1]["model"].startswith("control_tiny_depth [") and units[0]["module"] == "none"
    assert units[0]["weight"] == 1.0 and units[0]["control_mode"] == "Balanced"
    assert 'ControlNet 0: "Module: none, Model: control_tiny_canny [' in text


def test_guidance_range_and_control_mode_matter(cn_engine):
    plain, _ = run(cn_engine, None)
    full, _ = run(cn_engine, [unit()])
    early, _ = run(cn_engine, [unit(guidance_end=0.3)])
    late, _ = run(cn_engine, [unit(guidance_start=0.5)])
    for img in (early, late):
        assert np.abs(img - full).mean() > 0.3 and np.abs(img - plain).mean() > 0.3
    prompt, _ = run(cn_engine, [unit(control_mode="My prompt is more important")])
    control, _ = run(cn_engine, [unit(control_mode=2)])
    assert np.abs(prompt - full).mean() > 0.3 and np.abs(control - full).mean() > 0.3
    # soft injection shrinks the shallow blocks' residuals, so the image moves less from the plain one
    assert np.abs(prompt - plain).mean() < np.abs(full - plain).mean()


def test_preprocessor_and_resize_modes(cn_engine):
    canny, res = run(cn_engine, [unit(module="canny", image=control_image().resize((96, 64)),
                                      resize_mode="Crop and Resize", threshold_a=50, threshold_b=150)])
    fill, fill_res = run(cn_engine, [unit(module="canny", image=control_image().resize((96, 64)),
                                          resize_mode="Resize and Fill", threshold_a=50, threshold_b=150)])
    detected = np.asarray(res.images[-1])
    # cropping cuts the square's sides off, filling keeps all of it with bands above and below
    assert not np.array_equal(detected, np.asarray(fill_res.images[-1]))
    assert np.abs(canny - fill).mean() > 0.03
    assert set(np.unique(detected)) <= {0, 255} and (detected > 0).any()
    assert "Threshold A: 50.0, Threshold B: 150.0" in res.infotexts[0]
    assert "Processor Res: 512" in res.infotexts[0]
    _, pp = run(cn_engine, [unit(module="canny", pixel_perfect=True, image=control_image(size=128))])
    assert "Processor Res: 64, " in pp.infotexts[0] and "Pixel Perfect: True" in pp.infotexts[0]


def test_layouts_give_the_same_model(cn_engine):
    """The bare-key file and the diffusers folder load into working ControlNets, each with its own effect."""
    folder, _ = run(cn_engine, [unit(model="tiny-diffusers-folder")])
    canny, _ = run(cn_engine, [unit()])
    assert np.abs(folder - canny).mean() > 0.3


def test_sdxl_controlnet_runs(cn_engine):
    plain, _ = run(cn_engine, None, ckpt="tiny-sdxl.safetensors")
    ctrl, _ = run(cn_engine, [unit(model="controlnet-tiny-sdxl")], ckpt="tiny-sdxl.safetensors")
    assert np.abs(ctrl - plain).mean() > 0.3
    with pytest.raises(InvalidField, match="another model family"):
        run(cn_engine, [unit(model="control_tiny_canny")], ckpt="tiny-sdxl.safetensors")


def test_a_controlnet_for_other_unet_widths_is_a_clear_error(cn_engine):
    """The bundled shapes ControlNet is SD1.x too, but for a UNet of widths 96/128/128: on the tiny SD1 checkpoint
    its residuals would not add up (a RuntimeError deep in the UNet); the unit's model field is named instead."""
    with pytest.raises(InvalidField, match=r"other widths \[96, 128, 128\] than the checkpoint's \[64, 128\]"):
        run(cn_engine, [unit(model="control_shapes-tiny-v1_canny")])


def test_hires_fix_second_pass_uses_control(cn_engine):
    kw = dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.6)
    plain, _ = run(cn_engine, None, **kw)
    ctrl, res = run(cn_engine, [unit(hr_option="High res only")], **kw)
    assert plain.shape == ctrl.shape == (128, 128, 3)
    assert np.abs(ctrl - plain).mean() > 0.3
    assert not any(im.size == (64, 64) for im in res.images)   # no first-pass map: the unit skipped it


def test_img2img_uses_the_init_image_when_a_unit_has_none(cn_engine):
    init = control_image("circle")
    fields = dict(prompt="x", steps=6, width=64, height=64, cfg_scale=5.0, seed=3, sampler_name="Euler",
                  denoising_strength=0.8, override_settings={"sd_model_checkpoint": "tiny-sd1.safetensors"})
    implicit = Img2ImgRequest(**fields, alwayson_scripts={"controlnet": {"args": [unit(image=None)]}})
    explicit = Img2ImgRequest(**fields, alwayson_scripts={"controlnet": {"args": [unit(image=init)]}})
    plain = Img2ImgRequest(**fields)
    a = np.asarray(cn_engine.img2img(implicit, [init], save=False).images[0])
    b = np.asarray(cn_engine.img2img(explicit, [init], save=False).images[0])
    c = np.asarray(cn_engine.img2img(plain, [init], save=False).images[0])
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 0.3


def test_inpaint_module_needs_a_mask_and_marks_it(cn_engine):
    with pytest.raises(InvalidField, match="needs a mask"):
        run(cn_engine, [unit(module="inpaint_only")])
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle([0, 0, 31, 63], fill=255)
    _, res = run(cn_engine, [unit(module="inpaint_only", mask=mask)])
    shown = np.asarray(res.images[-1])
    assert (shown[:, :28] == 0).all() and shown[:, 36:].any()


def test_bad_units_fail_before_work_with_clear_messages(cn_engine):
    with pytest.raises(InvalidField, match=r"controlnet\[0\]\.module: unknown module 'nope'; valid: none, canny"):
        run(cn_engine, [unit(module="nope")])
    with pytest.raises(NotFound, match=r"unknown ControlNet model 'nope'; valid: .*control_tiny_canny \["):
        run(cn_engine, [unit(model="nope")])
    with pytest.raises(InvalidField, match=r"controlnet\[1\]\.image: base64 decoded, but it is not an image"):
        run(cn_engine, [unit(), unit(image="aGVsbG8gd29ybGQ=")])
    with pytest.raises(InvalidField, match=r"controlnet\[0\]\.image: this ControlNet unit has no image"):
        run(cn_engine, [unit(image=None)])
    with pytest.raises(InvalidField, match="weight must be between 0 and 2"):
        run(cn_engine, [unit(weight=3)])
    with pytest.raises(InvalidField, match="guidance_start"):
        run(cn_engine, [unit(guidance_start=0.8, guidance_end=0.2)])
    t0 = time.perf_counter()
    with pytest.raises(InvalidField, match=r"sk_model\.pth.*models/ControlNet/annotators|annotators.*sk_model"):
        run(cn_engine, [unit(module="lineart")])
    assert time.perf_counter() - t0 < 2.0     # a clear message at once: no download attempt, no hang
    # a disabled unit is ignored, whatever it holds
    plain, _ = run(cn_engine, None)
    off, _ = run(cn_engine, [unit(enabled=False, module="nope")])
    assert np.array_equal(plain, off)


def test_only_masked_inpaint_crops_the_control_map_to_the_region(cn_engine):
    # A1111's ControlNet extension cuts the unit's image to the "Only masked" box, so the map lines up with the
    # cropped picture the model denoises. Square edges at x = 15 and 48 of a 64 px image; mask box 24..40 with
    # padding 12 -> region 12..52 (40 px) shown at 64 px: the edges move to (15 - 12) * 1.6 and (48 - 12) * 1.6.
    init = Image.new("RGB", (64, 64), (20, 20, 120))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle([24, 24, 39, 39], fill=255)
    fields = dict(prompt="x", steps=4, width=64, height=64, cfg_scale=5.0, seed=3, sampler_name="Euler",
                  denoising_strength=0.8, mask_blur=0, inpaint_full_res_padding=12,
                  override_settings={"sd_model_checkpoint": "tiny-sd1.safetensors"})
    units = {"controlnet": {"args": [unit(module="canny", image=control_image("square"))]}}

    def edge_columns(full_res: bool) -> np.ndarray:
        req = Img2ImgRequest(**fields, inpaint_full_res=full_res, alwayson_scripts=units)
        shown = np.asarray(cn_engine.img2img(req, [init], mask=mask, save=False).images[-1])[:, :, 0]
        assert shown.shape == (64, 64)
        return np.flatnonzero(shown[32] > 127)

    whole = edge_columns(False)
    assert whole.min() in range(14, 18) and whole.max() in range(46, 51)    # the square as drawn
    cropped = edge_columns(True)
    assert cropped.min() in range(3, 9) and cropped.max() in range(55, 61)
    assert not ((cropped > 12) & (cropped < 52)).any()


def test_controlnet_dir_flag_and_the_bundled_folder_are_scanned_too(cn_dir, tmp_path):
    """--controlnet-dir (sd-webui-controlnet's flag) adds a folder; the repository's models/ControlNet (the bundled
    ControlNet) is seen from any data dir; a name in the data dir's folder hides the same name further on."""
    from controlnet_factory import make_tiny_controlnet

    from app import build_engine
    from webui.config.flags import parse_args
    from webui.config.paths import REPO_ROOT

    extra = tmp_path / "more-controlnets"
    make_tiny_controlnet(extra / "control_extra_lineart.safetensors", "sd1", seed=21, unet_seed=1)
    make_tiny_controlnet(extra / "control_tiny_canny.safetensors", "sd1", seed=22, unet_seed=1)
    engine = build_engine(parse_args(["--data-dir", str(cn_dir), "--controlnet-dir", str(extra)]))
    store = engine.models.controlnets
    names = [i.name for i in store.usable()]
    assert "control_extra_lineart.safetensors" in names and names.count("control_tiny_canny.safetensors") == 1
    assert store.find("control_tiny_canny").path.parent == cn_dir.resolve() / "models" / "ControlNet"
    assert store.find("control_extra_lineart").path.parent == extra.resolve()
    bundled = REPO_ROOT / "models" / "ControlNet" / "control_shapes-tiny-v1_canny.safetensors"
    if bundled.exists():
        assert store.find("control_shapes-tiny-v1_canny").path == bundled.resolve()
    shown, models, module, model = engine.controlnet.control_type("Lineart")
    assert module == "lineart_standard" and model.startswith("control_extra_lineart [")
