"""Upscalers: ESRGAN files in the layouts people download, loaded through spandrel; tiled inference; the Extras
engine and API (extra-single-image, extra-batch-images, upscalers); model upscalers in hires fix."""
from __future__ import annotations

import base64
import io
import sys

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, PngImagePlugin
from upscaler_factory import make_esrgan

from webui.core.errors import InvalidField, ModelLoadError
from webui.core.extras import ExtrasRequest
from webui.core.request import GenerationRequest
from webui.engine import extras as extras_engine
from webui.engine import upscaling
from webui.engine.hires import hires_upscalers
from webui.models import upscalers as up_lib

CKPT = {"sd_model_checkpoint": "tiny-sd1.safetensors"}
# name -> (layout, up-samplings, scale, folder)
FILES = {
    "2x-tiny-old": ("old", 1, 2, "ESRGAN"),
    "4x-tiny-new": ("new", 2, 4, "ESRGAN"),
    "RealESRGAN_x2plus-tiny": ("unshuffle", 2, 2, "RealESRGAN"),
    "x2-tiny-st": ("safetensors", 1, 2, "ESRGAN"),
}


@pytest.fixture(scope="module")
def nets(data_dir):
    """The reference modules, their files written into the shared data dir's model folders."""
    out = {}
    for i, (name, (layout, ups, _, folder)) in enumerate(FILES.items()):
        ext = ".safetensors" if layout == "safetensors" else ".pth"
        out[name] = make_esrgan(data_dir / "models" / folder / f"{name}{ext}", layout, ups, seed=10 + i)
    return out


def picture(w=40, h=32) -> Image.Image:
    im = Image.new("RGB", (w, h), (30, 90, 200))
    d = ImageDraw.Draw(im)
    d.ellipse((w // 5, h // 5, 4 * w // 5, 4 * h // 5), fill=(230, 40, 30))
    d.line((0, h - 1, w - 1, 0), fill=(250, 250, 250), width=2)
    return im


def arr(im) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32)


@pytest.mark.parametrize("name", list(FILES))
def test_model_file_loads_through_spandrel_and_computes_the_same(engine, nets, name):
    layout, _, scale, folder = FILES[name]
    engine.models.refresh_upscalers()
    assert name in engine.models.upscaler_names()
    loaded = engine.models.get_upscaler(name)
    assert loaded.architecture == "ESRGAN" and loaded.scale == scale and loaded.file.folder == folder
    x = torch.rand(1, 3, 12, 16)
    with torch.no_grad():
        ref = nets[name](x)
        got = loaded.model(x)
    assert got.shape == (1, 3, 12 * scale, 16 * scale)
    assert torch.allclose(got, ref, atol=1e-5), "spandrel built another network than the file holds"
    image = upscaling.upscale(engine.models, picture(), scale, name, {"ESRGAN_tile": 0})
    assert image.size == (40 * scale, 32 * scale)
    expected = (ref_image(nets[name], picture()))
    assert np.abs(arr(image) - arr(expected)).max() <= 1


def ref_image(net, im: Image.Image) -> Image.Image:
    x = torch.from_numpy(arr(im) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return Image.fromarray((y * 255).round().astype(np.uint8))


def test_tiled_equals_untiled_within_tolerance(engine, nets):
    src = Image.fromarray((np.random.default_rng(0).random((32, 40, 3)) * 255).astype(np.uint8))
    whole = upscaling.upscale(engine.models, src, 2, "2x-tiny-old", {"ESRGAN_tile": 0})
    seen = []
    tiled = upscaling.upscale(engine.models, src, 2, "2x-tiny-old", {"ESRGAN_tile": 20, "ESRGAN_tile_overlap": 8},
                              lambda done, total: seen.append((done, total)))
    assert whole.size == tiled.size == (80, 64)
    diff = np.abs(arr(whole) - arr(tiled))
    assert diff.max() <= 3 and diff.mean() < 0.5, (diff.max(), diff.mean())
    # the tiles really are smaller than the image: 3 x 2 of them, progress reported per tile
    assert seen[-1] == (6, 6)


def test_tile_starts_cover_with_overlap():
    for length, tile, overlap in [(100, 32, 8), (33, 32, 8), (32, 32, 8), (500, 192, 8), (70, 24, 0)]:
        starts = up_lib.tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + min(tile, length) == length
        for a, b in zip(starts, starts[1:]):
            assert tile - (b - a) >= overlap


def test_cached_counted_and_refreshed(engine, nets, data_dir):
    a = engine.models.get_upscaler("4x-tiny-new")
    assert engine.models.get_upscaler("4x-tiny-new") is a
    assert a.title in engine.models.memory()["upscalers"]
    # a file dropped in later is found by name without an explicit refresh
    make_esrgan(data_dir / "models" / "DAT" / "2x-late.pth", "old", 1, seed=3)
    assert engine.models.get_upscaler("2x-late").scale == 2
    (data_dir / "models" / "DAT" / "2x-late.pth").unlink()
    engine.models.refresh_upscalers()
    assert "2x-late" not in engine.models.upscaler_names()


def test_builtin_upscalers_are_pil_resizes(engine):
    src = picture()
    assert np.array_equal(arr(upscaling.upscale(engine.models, src, 2.5, "Lanczos")),
                          arr(src.resize((100, 80), Image.Resampling.LANCZOS)))
    assert np.array_equal(arr(upscaling.upscale(engine.models, src, 3, "Nearest")),
                          arr(src.resize((120, 96), Image.Resampling.NEAREST)))


def test_model_passes_then_exact_size(engine, nets):
    # 3x with a 2x model: two passes (4x) then Lanczos down to exactly 3x, as A1111 does
    out = upscaling.upscale(engine.models, picture(), 3, "2x-tiny-old")
    assert out.size == (120, 96)


def test_unreadable_and_foreign_files_fail_clearly(engine, data_dir):
    folder = data_dir / "models" / "SwinIR"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "garbage.pth").write_bytes(b"this is not a pickle" * 10)
    torch.save({"encoder.weight": torch.zeros(3, 3)}, folder / "not-an-upscaler.pth")
    try:
        engine.models.refresh_upscalers()
        with pytest.raises(ModelLoadError, match="garbage.*cannot be read"):
            engine.models.get_upscaler("garbage")
        with pytest.raises(ModelLoadError, match="not-an-upscaler.*does not recognise"):
            engine.models.get_upscaler("not-an-upscaler")
    finally:
        for p in folder.iterdir():
            p.unlink()
        engine.models.refresh_upscalers()


def test_spandrel_imports_without_leaving_a_torchvision_stand_in():
    up_lib.import_spandrel()
    assert "spandrel" in sys.modules
    tv = sys.modules.get("torchvision")
    assert tv is None or getattr(tv, "__file__", None), "the torchvision stand-in leaked into sys.modules"


def test_scan_names_and_api_items(tmp_path):
    for folder, name in [("ESRGAN", "4x-UltraSharp.pth"), ("RealESRGAN", "4x-UltraSharp.pth"),
                         ("DAT", "DAT_x2.safetensors"), ("SwinIR", "notes.txt")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(b"x")
    files = up_lib.scan_upscalers({k: tmp_path / k for k in up_lib.UPSCALER_FOLDERS})
    assert [f.name for f in files] == ["4x-UltraSharp", "4x-UltraSharp [RealESRGAN]", "DAT_x2"]
    assert [f.scale for f in files] == [4, 4, 2]
    item = files[2].api_item()
    assert item == {"name": "DAT_x2", "model_name": "DAT", "model_path": str(files[2].path), "model_url": None,
                    "scale": 2}


# -- the Extras engine ------------------------------------------------------------------------------------------
def test_extras_scale_to_crop_and_second_upscaler_blend(engine, nets):
    src = picture(40, 32)
    req = ExtrasRequest(resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64, upscaling_crop=True,
                        upscaler_1="Lanczos")
    res = extras_engine.extras(engine, req, [("a.png", src)], save=False)
    assert res.images[0].size == (64, 64)
    assert "Postprocess upscale to: 64x64" in res.infotexts[0] and "Postprocess crop to: 64x64" in res.infotexts[0]
    nocrop = extras_engine.extras(engine, ExtrasRequest(**{**req.__dict__, "upscaling_crop": False}),
                                  [("a.png", src)], save=False)
    assert nocrop.images[0].size == (80, 64)   # by max(64/40, 64/32) = 2, aspect kept
    half = ExtrasRequest(upscaling_resize=2, upscaler_1="Lanczos", upscaler_2="Nearest",
                         extras_upscaler_2_visibility=0.5)
    blended = arr(extras_engine.extras(engine, half, [("", src)], save=False).images[0])
    lanczos = arr(src.resize((80, 64), Image.Resampling.LANCZOS))
    nearest = arr(src.resize((80, 64), Image.Resampling.NEAREST))
    assert np.abs(blended - (lanczos + nearest) / 2).max() <= 1
    assert "Postprocess upscaler 2: Nearest" in extras_engine.extras(engine, half, [("", src)], save=False).infotexts[0]


def test_extras_batch_from_folder_saves_with_names_never_overwriting(engine, nets, tmp_path):
    out = tmp_path / "out"
    images = [("first.png", picture()), ("second.jpg", picture(24, 24))]
    req = ExtrasRequest(upscaling_resize=2, upscaler_1="2x-tiny-old")
    res = extras_engine.extras(engine, req, images, output_dir=out)
    again = extras_engine.extras(engine, req, images, output_dir=out)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["first.png", "first_1.png", "second.png", "second_1.png"]   # A1111's names, never overwriting
    assert [p.name for p in res.saved + again.saved] == [names[0], names[2], names[1], names[3]]
    with Image.open(out / "second.png") as saved:
        assert saved.size == (48, 48)
        assert "Postprocess upscaler: 2x-tiny-old" in saved.text["extras"]


def test_extras_folder_items_are_opened_in_turn_and_bad_files_skipped(engine, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    picture().save(good)
    bad.write_bytes(b"not a png at all")
    items = [("good.png", good), ("bad.png", bad), ("again.png", good)]
    res = extras_engine.extras(engine, ExtrasRequest(upscaling_resize=2, upscaler_1="Nearest"), items,
                               output_dir=tmp_path / "out", show_limit=1)
    assert res.processed == 2 and len(res.images) == 1 and res.images[0].size == (80, 64)
    assert len(res.saved) == 2 and any("bad.png: skipped" in n for n in res.notes)


def test_extras_keeps_the_source_parameters_chunk(engine, tmp_path):
    src = picture()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red circle\nSteps: 5, Sampler: Euler, Seed: 7")
    path = tmp_path / "src.png"
    src.save(path, pnginfo=info)
    with Image.open(path) as im:
        im.load()
        res = extras_engine.extras(engine, ExtrasRequest(upscaler_1="Lanczos"), [("src.png", im)],
                                   output_dir=tmp_path / "o")
    with Image.open(res.saved[0]) as saved:
        assert saved.text["parameters"].startswith("a red circle")
        assert saved.text["extras"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"


@pytest.mark.parametrize("kw,field,words", [
    ({"upscaler_1": "Superres 9000"}, "upscaler_1", "valid: None, Lanczos, Nearest"),
    ({"upscaler_2": "nope", "extras_upscaler_2_visibility": 0.3}, "upscaler_2", "unknown upscaler"),
    ({"upscaling_resize": 0}, "upscaling_resize", "above 0"),
    ({"upscaling_resize": 8, "upscaler_1": "Lanczos"}, "upscaling_resize", "larger than 256"),
    ({"resize_mode": 1, "upscaling_resize_w": 100000}, "upscaling_resize_w", "from 1 to 256"),
    ({"resize_mode": 3}, "resize_mode", "0 (scale by"),
    ({"gfpgan_visibility": 1}, "gfpgan_visibility", "not available"),
    ({"extras_upscaler_2_visibility": 2}, "extras_upscaler_2_visibility", "between 0 and 1"),
])
def test_extras_bad_input(engine, kw, field, words):
    old = engine.settings["upscale_max_side"]
    engine.settings.update({"upscale_max_side": 256}, save=False)
    try:
        with pytest.raises(InvalidField) as e:
            extras_engine.submit_extras(engine, ExtrasRequest(**kw), [("", picture())], save=False)
    finally:
        engine.settings.update({"upscale_max_side": old}, save=False)
    assert e.value.field == field and words in str(e.value)


# -- hires fix with a model upscaler ---------------------------------------------------------------------------
def test_hires_fix_offers_and_uses_model_upscalers(engine, nets):
    assert "2x-tiny-old" in hires_upscalers(engine.models)
    base = dict(prompt="a red circle", steps=3, width=64, height=64, seed=5, override_settings=CKPT,
                enable_hr=True, hr_scale=2, denoising_strength=0.34)
    model = engine.txt2img(GenerationRequest(**base, hr_upscaler="2x-tiny-old"), save=False)
    lanczos = engine.txt2img(GenerationRequest(**base, hr_upscaler="Lanczos"), save=False)
    assert model.images[0].size == (128, 128)
    assert "Hires upscaler: 2x-tiny-old" in model.infotexts[0]
    assert np.abs(arr(model.images[0]) - arr(lanczos.images[0])).mean() > 0.5, "the model upscaler was not used"


# -- the HTTP API -----------------------------------------------------------------------------------------------
def b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def unb64(s: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(s)))


def test_api_upscalers_and_extras(server, nets, data_dir):
    listed = httpx.get(server + "/sdapi/v1/upscalers", timeout=60).json()
    by_name = {u["name"]: u for u in listed}
    assert [u["name"] for u in listed[:3]] == ["None", "Lanczos", "Nearest"]
    assert by_name["4x-tiny-new"]["scale"] == 4 and by_name["4x-tiny-new"]["model_path"].endswith("4x-tiny-new.pth")
    assert by_name["RealESRGAN_x2plus-tiny"]["model_name"] == "RealESRGAN"
    realesrgan = httpx.get(server + "/sdapi/v1/realesrgan-models", timeout=60).json()
    assert [(m["name"], m["scale"]) for m in realesrgan] == [("RealESRGAN_x2plus-tiny", 2)]
    assert realesrgan[0]["path"].endswith(".pth")

    src = picture()
    body = {"image": "data:image/png;base64," + b64(src), "upscaling_resize": 2, "upscaler_1": "2x-tiny-old"}
    before = set((data_dir / "outputs" / "extras-images").rglob("*.png"))
    r = httpx.post(server + "/sdapi/v1/extra-single-image", json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = unb64(r.json()["image"])
    assert out.size == (80, 64)
    assert np.abs(arr(out) - arr(ref_image(nets["2x-tiny-old"], src))).max() <= 1
    assert "Postprocess upscaler: 2x-tiny-old" in r.json()["html_info"]
    saved = set((data_dir / "outputs" / "extras-images").rglob("*.png")) - before
    assert not saved, "as A1111's API, extras results come back in the response and are not saved"

    to = httpx.post(server + "/sdapi/v1/extra-single-image", json={
        **body, "resize_mode": 1, "upscaling_resize_w": 72, "upscaling_resize_h": 40, "upscaler_1": "4x-tiny-new"},
        timeout=300)
    assert unb64(to.json()["image"]).size == (72, 40)

    batch = httpx.post(server + "/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": b64(src), "name": "a.png"}, {"data": b64(picture(16, 16)), "name": "b.png"}],
        "upscaling_resize": 3, "upscaler_1": "Nearest"}, timeout=300)
    assert batch.status_code == 200, batch.text
    assert [unb64(s).size for s in batch.json()["images"]] == [(120, 96), (48, 48)]
    assert set((data_dir / "outputs" / "extras-images").rglob("*.png")) == before

    bad = httpx.post(server + "/sdapi/v1/extra-single-image", json={**body, "upscaler_1": "Superres"}, timeout=60)
    assert bad.status_code == 422 and bad.json()["field"] == "upscaler_1"
    assert "4x-tiny-new" in bad.json()["detail"] and "Lanczos" in bad.json()["detail"]
    notimg = httpx.post(server + "/sdapi/v1/extra-single-image",
                        json={**body, "image": base64.b64encode(b"hello, not an image").decode()}, timeout=60)
    assert notimg.status_code == 422 and "not an image" in notimg.json()["detail"]
    huge = httpx.post(server + "/sdapi/v1/extra-single-image", json={**body, "upscaling_resize": 8,
                                                                     "image": b64(picture(1200, 40))}, timeout=60)
    assert huge.status_code == 422 and "upscale_max_side" in huge.json()["detail"]
    empty = httpx.post(server + "/sdapi/v1/extra-batch-images", json={"imageList": []}, timeout=60)
    assert empty.status_code == 422 and empty.json()["field"] == "imageList"
    assert httpx.get(server + "/sdapi/v1/options", timeout=30).status_code == 200   # still serving
