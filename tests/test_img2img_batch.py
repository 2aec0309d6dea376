"""img2img from a folder (A1111's Batch tab) through the engine: every image processed as a single img2img run
would process it, bad files reported and skipped, masks matched by name, outputs named after the inputs and
never overwritten."""
from __future__ import annotations

import numpy as np
import pytest
from output_files import pngs
from PIL import Image, ImageDraw

from webui.core.errors import InvalidField
from webui.core.request import Img2ImgRequest

CKPT = {"sd_model_checkpoint": "tiny-sd1.safetensors"}


def req(**kw) -> Img2ImgRequest:
    base = dict(prompt="a green square", steps=3, width=64, height=64, seed=5, denoising_strength=0.6,
                mask_blur=0, inpaint_full_res=False, override_settings=CKPT)
    return Img2ImgRequest(**{**base, **kw})


def drawn(colour, size=(64, 64)) -> Image.Image:
    im = Image.new("RGB", size, (40, 60, 200))
    ImageDraw.Draw(im).ellipse((12, 12, 50, 50), fill=colour)
    return im


@pytest.fixture()
def folder(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    drawn((220, 30, 30)).save(src / "a.png")
    drawn((30, 160, 50)).save(src / "b.jpg", quality=95)
    drawn((245, 220, 35), (80, 64)).save(src / "sub" / "c.webp", lossless=True)
    (src / "bad.png").write_bytes(b"this is not a picture")
    good = (src / "a.png").read_bytes()
    (src / "truncated.png").write_bytes(good[: len(good) // 3])
    (src / "notes.txt").write_text("not an image, ignored")
    return tmp_path


def run(engine, r, src, out="", masks=""):
    job = engine.submit_img2img_batch(r, str(src), str(out), str(masks))
    stages = set()
    while not job.done.wait(0.05):
        stages.add((job.progress.stage, job.progress.run_count))
    return job.wait(), stages


def test_batch_processes_good_files_skips_bad_ones_and_never_overwrites(engine, folder):
    src, out = folder / "in", folder / "out"
    res, stages = run(engine, req(), src, out)
    assert res.processed == ["a.png", "b.jpg", "sub/c.webp"]
    assert sorted(n for n, _ in res.skipped) == ["bad.png", "truncated.png"]
    assert all("not a readable image" in why for _, why in res.skipped)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert any(stage.endswith("out of 5: ") and count == 5 for stage, count in stages), stages
    assert "2 skipped" in res.summary() and "bad.png" in res.summary()
    # each output is what a single img2img run of that file gives, with its infotext
    for name, path in (("a.png", src / "a.png"), ("b.png", src / "b.jpg"), ("c.png", src / "sub" / "c.webp")):
        single = engine.img2img(req(), [Image.open(path)], save=False)
        written = Image.open(out / name)
        assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(single.images[0]))
        assert written.info["parameters"] == single.infotexts[0]
    # a second run into the same folder adds files and leaves the first ones untouched
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    run(engine, req(seed=6), src, out)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_1.png", "b.png", "b_1.png", "c.png", "c_1.png"]
    assert all((out / n).read_bytes() == data for n, data in before.items())


def test_batch_masks_matched_by_stem_and_one_mask_for_all(engine, folder):
    src, out = folder / "in", folder / "out"
    masks = folder / "masks"
    masks.mkdir()
    m = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(m).rectangle((8, 8, 31, 31), fill=255)
    m.save(masks / "a.png")
    m.save(masks / "b.png")
    res, _ = run(engine, req(denoising_strength=0.9), src, out, masks)
    assert res.processed == ["a.png", "b.jpg"]
    reasons = dict(res.skipped)
    assert "no mask named c.*" in reasons["sub/c.webp"]
    outside = np.asarray(m) == 0
    a = np.asarray(Image.open(out / "a.png").convert("RGB"))
    assert np.array_equal(a[outside], np.asarray(drawn((220, 30, 30)))[outside])
    assert np.abs(a[~outside].astype(int) - np.asarray(drawn((220, 30, 30)))[~outside]).mean() > 1
    assert "Mask blur: 0" in Image.open(out / "a.png").info["parameters"]

    # one file in the masks folder: the mask of every image (c is 80x64: the mask is resized, with a note)
    (masks / "b.png").unlink()
    out2 = folder / "out2"
    res, _ = run(engine, req(denoising_strength=0.9), src, out2, masks)
    assert res.processed == ["a.png", "b.jpg", "sub/c.webp"]
    assert any("mask resized from 64x64 to the image's 80x64" in n for n in res.notes)
    b = np.asarray(Image.open(out2 / "b.png").convert("RGB")).astype(int)
    b_src = np.asarray(Image.open(src / "b.jpg").convert("RGB")).astype(int)
    assert np.array_equal(b[outside], b_src[outside])


def test_batch_without_output_folder_saves_like_img2img(engine, folder, data_dir):
    only = folder / "one"
    only.mkdir()
    drawn((135, 45, 170)).save(only / "p.png")
    before = pngs(data_dir / "outputs" / "img2img-images")
    res, _ = run(engine, req(seed=777, n_iter=2), only, "")
    assert res.processed == ["p.png"] and len(res.written) == 2
    for path in res.written:
        assert path.is_relative_to(data_dir / "outputs" / "img2img-images") and path not in before
    assert len(res.images) == 2 and "Seed: 777" in res.infotexts[0] and "Seed: 778" in res.infotexts[1]


def test_batch_several_images_per_input_are_numbered(engine, folder):
    only = folder / "one"
    only.mkdir()
    drawn((135, 45, 170)).save(only / "p.png")
    res, _ = run(engine, req(batch_size=2), only, folder / "o")
    assert sorted(p.name for p in (folder / "o").iterdir()) == ["p-1.png", "p-2.png"]


def test_batch_bad_folders_are_named(engine, folder):
    with pytest.raises(InvalidField) as e:
        engine.submit_img2img_batch(req(), str(folder / "missing"), str(folder / "out"))
    assert e.value.field == "input_dir"
    with pytest.raises(InvalidField) as e:
        engine.submit_img2img_batch(req(), "", str(folder / "out"))
    assert e.value.field == "input_dir"
    with pytest.raises(InvalidField) as e:
        engine.submit_img2img_batch(req(), str(folder / "in"), str(folder / "out"), str(folder / "nomasks"))
    assert e.value.field == "mask_dir"
    (folder / "afile").write_text("x")
    with pytest.raises(InvalidField) as e:
        engine.submit_img2img_batch(req(), str(folder / "in"), str(folder / "afile"))
    assert e.value.field == "output_dir"


def with_infotext(image: Image.Image, path, text: str) -> None:
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    image.save(path, pnginfo=info)


def wait(job):
    while not job.done.wait(0.05):
        pass
    return job.wait()


def test_uploaded_files_resize_by_and_one_random_seed_for_all(engine, folder):
    """A1111 1.10's Upload source (files, not a folder), "Resize by" from each image's own size, and a seed of -1
    drawn once for the whole batch."""
    src, out = folder / "in", folder / "up"
    files = [src / "a.png", src / "sub" / "c.webp", src / "bad.png"]
    res = wait(engine.submit_img2img_batch(req(seed=-1), None, str(out), files=files, scale_by=1.5))
    assert res.processed == ["a.png", "c.webp"] and [n for n, _ in res.skipped] == ["bad.png"]
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert sizes == {"a.png": (96, 96), "c.png": (120, 96)}         # 64x64 and 80x64 times 1.5
    seeds = {Image.open(p).info["parameters"].split("Seed: ")[1].split(",")[0] for p in out.iterdir()}
    assert len(seeds) == 1
    with pytest.raises(InvalidField) as e:
        engine.submit_img2img_batch(req(), None, str(out))
    assert e.value.field == "input_dir" and "uploaded" in str(e.value)


def test_png_info_is_appended_to_the_prompts_and_replaces_the_chosen_parameters(engine, folder):
    """"Append png info to prompts": the chosen keys of each image's infotext; the output is what a single img2img
    run with those values gives. An image without an infotext keeps the form's values."""
    only = folder / "info"
    only.mkdir()
    other = next(c for c in engine.models.usable() if c.name == "tiny-sd1-pickle.ckpt")
    text = (f"a red circle\nNegative prompt: blurry\nSteps: 4, Sampler: Euler, CFG scale: 3, Seed: 77, "
            f"Size: 64x64, Model hash: {other.shorthash}, Model: tiny-sd1-pickle")
    with_infotext(drawn((220, 30, 30)), only / "x.png", text)
    drawn((30, 160, 50)).save(only / "y.png")
    props = ["Prompt", "Seed", "Steps", "Sampler", "Model hash"]
    res = wait(engine.submit_img2img_batch(req(negative_prompt="dark"), str(only), str(folder / "o"),
                                           use_png_info=True, png_info_props=props))
    assert res.processed == ["x.png", "y.png"]
    x = Image.open(folder / "o" / "x.png")
    info = x.info["parameters"]
    assert info.startswith("a green square a red circle\nNegative prompt: dark\n")   # negative not chosen
    assert "Steps: 4," in info and "Sampler: Euler," in info and "Seed: 77," in info and "CFG scale: 7," in info
    assert "Model: tiny-sd1-pickle," in info
    single = engine.img2img(req(prompt="a green square a red circle", negative_prompt="dark", steps=4,
                                sampler_name="Euler", seed=77,
                                override_settings={"sd_model_checkpoint": other.title}),
                            [Image.open(only / "x.png")], save=False)
    assert np.array_equal(np.asarray(x.convert("RGB")), np.asarray(single.images[0]))
    y = Image.open(folder / "o" / "y.png").info["parameters"]
    assert y.startswith("a green square\n") and "Seed: 5," in y and "Model: tiny-sd1," in y

    # the infotext from a PNG info folder's file of the same name; the inputs carry none
    plain, infos = folder / "plain", folder / "infos"
    plain.mkdir()
    infos.mkdir()
    drawn((220, 30, 30)).save(plain / "x.png")
    with_infotext(drawn((0, 0, 0)), infos / "x.png", "a yellow star\nSteps: 3, Seed: 91, Size: 64x64")
    res = wait(engine.submit_img2img_batch(req(), str(plain), str(folder / "o2"), use_png_info=True,
                                           png_info_props=["Prompt", "Seed"], png_info_dir=str(infos)))
    info = Image.open(folder / "o2" / "x.png").info["parameters"]
    assert info.startswith("a green square a yellow star\n") and "Seed: 91," in info
    with pytest.raises(InvalidField) as e:
        engine.submit_img2img_batch(req(), str(plain), "", use_png_info=True, png_info_props=["Size"])
    assert e.value.field == "png_info_props" and "valid: Prompt, Negative prompt" in str(e.value)
    with pytest.raises(InvalidField) as e:
        engine.submit_img2img_batch(req(), str(plain), "", use_png_info=True, png_info_dir=str(folder / "none"))
    assert e.value.field == "png_info_dir"
