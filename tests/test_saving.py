"""Saving: counters, never overwriting, concurrency, infotext in PNG/JPEG/WebP, folders, grids."""

from __future__ import annotations

import os
import threading
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from webui.core.errors import InvalidField
from webui.core.grids import grid_shape
from webui.core.infotext import format_infotext, parse_infotext
from webui.engine import saving
from webui.engine.saving import (
    date_folder,
    encode_image,
    expand_pattern,
    make_grid,
    next_counter,
    read_infotext,
    save_grid,
    save_image,
)

INFOTEXT = format_infotext(
    "a cat, (masterpiece:1.2), 猫 🐱\nsecond line", "ugly, blurry",
    {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": 1234, "Size": "64x48",
     "Lora hashes": "foo: 0123456789ab, bar: ba9876543210", "Version": "v1.10.1"},
)


def image(color: str = "red", size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_counter_increments(tmp_path: Path) -> None:
    names = [save_image(image(), tmp_path, INFOTEXT, tokens={"seed": s}).name for s in (5, 6, 7)]
    assert names == ["00000-5.png", "00001-6.png", "00002-7.png"]


def test_counter_follows_highest_existing(tmp_path: Path) -> None:
    for name in ("00041-1.png", "00007-2.jpg", "notes.txt", "grid-0099.png", "abc-00500.png"):
        (tmp_path / name).write_bytes(b"x")
    assert next_counter(tmp_path) == 42
    assert save_image(image(), tmp_path, None, tokens={"seed": 9}).name == "00042-9.png"
    assert next_counter(tmp_path / "missing") == 0


def test_never_overwrites_existing_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "00000-7.png").write_bytes(b"keep me")
    monkeypatch.setattr(saving, "next_counter", lambda folder, prefix="": 0)  # a stale scan, as in a race
    path = save_image(image(), tmp_path, INFOTEXT, tokens={"seed": 7})
    assert path.name == "00001-7.png"
    assert (tmp_path / "00000-7.png").read_bytes() == b"keep me"
    assert read_infotext(path)[0] == INFOTEXT


def test_never_overwrites_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise PermissionError("hard links not supported")

    (tmp_path / "00000-7.png").write_bytes(b"keep me")
    monkeypatch.setattr(saving.os, "link", no_link)
    monkeypatch.setattr(saving, "next_counter", lambda folder, prefix="": 0)
    path = save_image(image(), tmp_path, INFOTEXT, tokens={"seed": 7})
    assert path.name == "00001-7.png"
    assert (tmp_path / "00000-7.png").read_bytes() == b"keep me"
    assert read_infotext(path)[0] == INFOTEXT


def test_no_temp_files_left(tmp_path: Path) -> None:
    save_image(image(), tmp_path, INFOTEXT, tokens={"seed": 1}, sidecar_txt=True)
    assert sorted(os.listdir(tmp_path)) == ["00000-1.png", "00000-1.txt"]
    assert (tmp_path / "00000-1.txt").read_text(encoding="utf-8") == INFOTEXT + "\n"


def test_concurrent_saves_get_distinct_counters(tmp_path: Path) -> None:
    paths: list[Path] = []
    barrier = threading.Barrier(16)

    def worker(seed: int) -> None:
        barrier.wait()
        for _ in range(4):
            paths.append(save_image(image(), tmp_path, INFOTEXT, tokens={"seed": seed}))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counters = sorted(int(p.name[:5]) for p in paths)
    assert counters == list(range(64))
    assert len(os.listdir(tmp_path)) == 64


@pytest.mark.parametrize("fmt", ["png", "jpg", "jpeg", "webp"])
def test_infotext_round_trip(tmp_path: Path, fmt: str) -> None:
    path = save_image(image(), tmp_path, INFOTEXT, tokens={"seed": 1234}, fmt=fmt)
    assert path.suffix == f".{fmt}"
    text, items = read_infotext(path)
    assert text == INFOTEXT
    assert parse_infotext(text)["Lora hashes"] == "foo: 0123456789ab, bar: ba9876543210"
    assert "parameters" not in items and "exif" not in items
    with Image.open(path) as loaded:
        assert read_infotext(loaded)[0] == INFOTEXT
        assert loaded.size == (64, 48)


def test_png_extra_info_and_no_infotext(tmp_path: Path) -> None:
    path = save_image(image(), tmp_path, INFOTEXT, tokens={"seed": 1}, extra_info={"postprocessing": "x, y"})
    text, items = read_infotext(path)
    assert text == INFOTEXT and items["postprocessing"] == "x, y"
    assert read_infotext(save_image(image(), tmp_path, None))[0] is None


def test_rgba_to_jpeg_and_webp(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 128))
    assert read_infotext(save_image(rgba, tmp_path, "p", fmt="jpg"))[0] == "p"
    with Image.open(save_image(rgba, tmp_path, "p", fmt="webp")) as webp:
        assert webp.mode == "RGBA"


def test_bad_format() -> None:
    with pytest.raises(InvalidField) as error:
        encode_image(image(), "p", "bmp")
    assert error.value.field == "samples_format" and error.value.status_code == 422


def test_pattern_tokens() -> None:
    now = datetime(2024, 5, 1, 13, 14, 15)
    tokens = {"seed": 42, "prompt": "A cat, sitting: on/a mat!", "steps": 20, "cfg": 7.0, "sampler": "DPM++ 2M",
              "model_name": "v1-5"}
    assert expand_pattern("[seed]-[prompt_words]", tokens, now) == "42-A cat sitting on a mat"
    assert expand_pattern("[STEPS]_[cfg]_[sampler]_[model_name]", tokens, now) == "20_7.0_DPM++ 2M_v1-5"
    assert expand_pattern("[date] [datetime] [datetime<%H-%M>]", tokens, now) == "2024-05-01 20240501131415 13-14"
    assert expand_pattern("[prompt]", tokens, now) == "A_cat,_sitting__on_a_mat!"
    assert len(expand_pattern("[prompt_hash]", tokens, now)) == 8
    assert expand_pattern("[seed]-[steps]", {}, now) == ""  # known tokens without a value vanish
    assert expand_pattern("[unknown]", tokens, now) == "[unknown]"
    assert expand_pattern("[prompt_words]", {"prompt": "x " * 100}, now, max_prompt_words=3) == "x x x"
    long = expand_pattern("[prompt_spaces]", {"prompt": "é" * 500}, now)
    assert len(long.encode()) <= 200
    assert "/" not in expand_pattern("../../[seed]", tokens, now)


def test_more_of_a1111s_tokens() -> None:
    now = datetime(2024, 5, 1, 13, 14, 15)
    t = {"seed": 5, "seed_first": 5, "seed_last": 8, "prompt": "a red fox, golden hour", "negative_prompt": "blur",
         "prompt_no_styles": "a red fox", "styles": [], "batch_size": 1, "batch_number": 1}
    assert expand_pattern("[seed_first]-[seed_last]-[none]", t, now) == "5-8"
    assert expand_pattern("[styles]", t, now) == "None"
    assert expand_pattern("[prompt_words]", {**t, "prompt": "!!"}, now) == "empty"
    assert expand_pattern("[prompt_no_styles]", t, now) == "a red fox"
    assert len(expand_pattern("[prompt_hash<12>]", t, now)) == 12
    assert expand_pattern("[negative_prompt_hash]", t, now) != expand_pattern("[full_prompt_hash]", t, now)
    assert expand_pattern("[hasprompt<Fox|nofox><cat|nocat><dog>]", t, now) == "foxnocat"
    assert expand_pattern("[seed]-b[batch_number]", t, now) == "5", "a batch of one: no number, nor its lead-in"
    assert expand_pattern("[seed]-b[batch_number]", {**t, "batch_size": 2, "batch_number": 2}, now) == "5-b2"
    # each value is capped, so a long prompt cannot push the seed out of the name
    assert expand_pattern("[prompt_spaces]-[seed]", {**t, "prompt": "word " * 100}, now).endswith("-5")
    assert "#" not in expand_pattern("[prompt_spaces]", {"prompt": "#1 fox"}, now)
    pic = image()
    assert len(expand_pattern("[image_hash]", {"image": pic}, now)) == 8


def test_pattern_file_name(tmp_path: Path) -> None:
    path = save_image(image(), tmp_path, None, tokens={"seed": 3, "prompt": "a red fox"},
                      pattern="[seed]-[prompt_words]")
    assert path.name == "00000-3-a red fox.png"
    assert save_image(image(), tmp_path, None, pattern="").name == "00001.png"


def test_date_folder(tmp_path: Path) -> None:
    folder = date_folder(tmp_path, "txt2img-images", datetime(2024, 1, 2, 3, 4))
    assert folder == tmp_path / "txt2img-images" / "2024-01-02"
    assert save_image(image(), folder, "p", tokens={"seed": 1}).parent == folder  # created as needed
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError):
            date_folder(tmp_path, bad)


def test_save_grid(tmp_path: Path) -> None:
    (tmp_path / "00009-1.png").write_bytes(b"x")
    grid = make_grid([image(c) for c in ("red", "green", "blue", "white")])
    names = [save_grid(grid, tmp_path, INFOTEXT).name for _ in range(2)]
    assert names == ["grid-0000.png", "grid-0001.png"]
    assert read_infotext(tmp_path / names[0])[0] == INFOTEXT
    assert next_counter(tmp_path) == 10  # grids do not advance the images' counter


@pytest.mark.parametrize(("count", "shape"), [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3)),
                                              (6, (2, 3)), (7, (3, 3)), (9, (3, 3)), (12, (3, 4)), (16, (4, 4))])
def test_grid_shape_auto(count: int, shape: tuple[int, int]) -> None:
    assert grid_shape(count) == shape
    assert grid_shape(count, -1) == shape


def test_grid_shape_options() -> None:
    assert grid_shape(6, 3) == (3, 2)
    assert grid_shape(2, 5) == (2, 1)  # never more rows than images
    assert grid_shape(8, 0, batch_size=4) == (4, 2)
    assert grid_shape(6, prevent_empty_spots=True) == (2, 3)
    assert grid_shape(7, prevent_empty_spots=True) == (1, 7)
    with pytest.raises(ValueError):
        grid_shape(0)


def test_make_grid_layout() -> None:
    grid = make_grid([image("red"), image("green"), image("blue", (32, 24))])
    assert grid.size == (128, 96)
    assert grid.getpixel((0, 0)) == (255, 0, 0)
    assert grid.getpixel((64, 0)) == (0, 128, 0)
    assert grid.getpixel((32, 72)) == (0, 0, 255)  # smaller image centred in its cell
    assert grid.getpixel((1, 49)) == (0, 0, 0)
    assert grid.getpixel((100, 60)) == (0, 0, 0)  # empty spot


def test_saving_settings_through_the_engine(engine, data_dir) -> None:
    """A1111's saving settings at work on real jobs: no infotext inside with enable_pnginfo off, a .txt beside with
    save_txt, no counter with save_images_add_number off (never overwriting), sub-folders from tokens with "/",
    and each image's own values in its name ([width] is the image's size after hires fix, [batch_number])."""
    from webui.core.request import GenerationRequest
    base = {"sd_model_checkpoint": "tiny-sd1.safetensors", "save_to_dirs": True}

    def run(opts, **kw):
        req = GenerationRequest(prompt="a red fox", steps=2, width=64, height=64, seed=77,
                                override_settings={**base, **opts}, **kw)
        return engine.txt2img(req, save=True)

    res = run({"enable_pnginfo": False, "save_txt": True, "directories_filename_pattern": "saving-[seed]/[model_name]",
               "samples_filename_pattern": "[seed]-[width]x[height]-b[batch_number]"})
    path = res.saved[0]
    assert path.parent == data_dir / "outputs" / "txt2img-images" / "saving-77" / "tiny-sd1"
    assert path.name.endswith("-77-64x64.png"), path.name   # a batch of one: no "-b1"
    assert read_infotext(path)[0] is None
    assert path.with_suffix(".txt").read_text().strip() == res.infotexts[0]

    opts = {"save_images_add_number": False, "directories_filename_pattern": "saving-nonumber",
            "samples_filename_pattern": "[seed]-[width]-b[batch_number]"}
    opts["grid_save"] = False
    first_res = run(opts, batch_size=2)
    first, again = first_res.saved, run(opts, batch_size=2).saved
    assert [p.name for p in first] == ["77-64-b1.png", "78-64-b2.png"]
    assert [p.name for p in again] == ["77-64-b1_1.png", "78-64-b2_1.png"], "a taken name is never overwritten"
    assert read_infotext(first[1])[0] == first_res.infotexts[-1]   # the infotext is inside by default
    hires = run({**opts, "samples_filename_pattern": "[width]x[height]-hr"}, enable_hr=True, hr_scale=1.5,
                hr_upscaler="Latent", denoising_strength=0.5, hr_second_pass_steps=1)
    assert hires.saved[0].name == "96x96-hr.png"
