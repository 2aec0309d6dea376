"""The gallery's 💾 Save and 🗃️ Zip buttons (engine side): which images are saved, under which names, the
log.csv row, the archive's contents, and that nothing is ever overwritten."""
from __future__ import annotations

import csv
import zipfile

import numpy as np
import pytest
from PIL import Image

from webui.core.errors import InvalidField
from webui.core.infotext import format_infotext
from webui.engine.exports import LOG_COLUMNS, save_gallery

OPTS = {"outdir_save": "log/images", "save_selected_only": True, "samples_format": "png",
        "samples_filename_pattern": "", "save_images_add_number": True, "enable_pnginfo": True,
        "use_save_to_dirs_for_ui": False, "save_txt": False, "grid_zip_filename_pattern": "", "jpeg_quality": 80}


def text(seed: int, prompt: str = "a red circle") -> str:
    return format_infotext(prompt, "blue background", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7,
                                                       "Seed": seed, "Size": "64x48", "Model": "shapes-v1"})


@pytest.fixture()
def shown():
    """What a batch of two looks like in the gallery: the grid (with the first image's text), then the images."""
    a = Image.new("RGB", (64, 48), (200, 20, 20))
    b = Image.new("RGB", (64, 48), (20, 200, 20))
    grid = Image.new("RGB", (128, 48))
    grid.paste(a, (0, 0))
    grid.paste(b, (64, 0))
    return [grid, a, b], [text(11), text(11), text(12)]


def read_log(folder):
    with open(folder / "log.csv", encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_save_selected_image_with_its_infotext_and_a_log_row(tmp_path, shown):
    images, texts = shown
    saved = save_gallery(images, texts, 2, make_zip=False, opts=OPTS, data_dir=tmp_path, index_of_first_image=1)
    folder = tmp_path / "log" / "images"
    assert saved.files == [folder / "00000-12-a red circle.png"]
    assert saved.message == "Saved: 00000-12-a red circle.png"
    with Image.open(saved.files[0]) as im:
        assert im.info["parameters"] == texts[2]
        assert np.array_equal(np.asarray(im), np.asarray(images[2]))
    rows = read_log(folder)
    assert rows[0] == list(LOG_COLUMNS)
    assert rows[1] == ["a red circle", "12", "64", "48", "Euler a", "7", "20", "00000-12-a red circle.png",
                       "blue background"]


def test_no_selection_or_the_grid_selected_saves_everything_and_never_overwrites(tmp_path, shown):
    images, texts = shown
    first = save_gallery(images, texts, -1, make_zip=False, opts=OPTS, data_dir=tmp_path, index_of_first_image=1)
    names = [f.name for f in first.files]
    assert names == ["grid-0000.png", "00000-11-a red circle.png", "00001-12-a red circle.png"]
    again = save_gallery(images, texts, 0, make_zip=False, opts=OPTS, data_dir=tmp_path, index_of_first_image=1)
    assert [f.name for f in again.files] == ["grid-0001.png", "00002-11-a red circle.png",
                                             "00003-12-a red circle.png"]
    assert all(f.exists() for f in first.files + again.files)
    rows = read_log(tmp_path / "log" / "images")
    assert len(rows) == 3 and rows[0] == list(LOG_COLUMNS)       # one header, one row per click
    assert [r[7] for r in rows[1:]] == ["grid-0000.png", "grid-0001.png"]
    # the setting off: every image even with one selected
    all_of = save_gallery(images, texts, 2, make_zip=False, opts={**OPTS, "save_selected_only": False},
                          data_dir=tmp_path, index_of_first_image=1)
    assert len(all_of.files) == 3


def test_zip_holds_what_was_saved_named_after_the_model_and_seeds(tmp_path, shown):
    images, texts = shown
    saved = save_gallery(images, texts, -1, make_zip=True, opts=OPTS, data_dir=tmp_path, index_of_first_image=1)
    archive = saved.files[0]
    assert archive.suffix == ".zip" and archive.name.endswith("_[shapes-v1]_11-12.zip")
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == sorted(f.name for f in saved.files[1:])
        for f in saved.files[1:]:
            assert z.read(f.name) == f.read_bytes()
    second = save_gallery(images, texts, -1, make_zip=True, opts=OPTS, data_dir=tmp_path, index_of_first_image=1)
    assert second.files[0] != archive and archive.exists()        # the same second's name gets "_1"
    one = save_gallery(images, texts, 1, make_zip=True, opts={**OPTS, "grid_zip_filename_pattern": "[seed]-only"},
                       data_dir=tmp_path, index_of_first_image=1)
    assert one.files[0].name == "11-only.zip"
    with zipfile.ZipFile(one.files[0]) as z:
        assert z.namelist() == [one.files[1].name]


def test_settings_folder_subdirectories_format_and_text_files(tmp_path, shown):
    images, texts = shown
    opts = {**OPTS, "outdir_save": str(tmp_path / "elsewhere"), "use_save_to_dirs_for_ui": True,
            "directories_filename_pattern": "[model_name]", "samples_format": "jpg", "save_txt": True,
            "samples_filename_pattern": "[seed]-[steps]"}
    saved = save_gallery(images, texts, 1, make_zip=False, opts=opts, data_dir=tmp_path, index_of_first_image=1)
    assert saved.files == [tmp_path / "elsewhere" / "shapes-v1" / "00000-11-20.jpg",
                           tmp_path / "elsewhere" / "shapes-v1" / "00000-11-20.txt"]
    assert saved.files[1].read_text().strip() == texts[1]
    assert saved.message == "Saved: shapes-v1/00000-11-20.jpg"
    assert read_log(tmp_path / "elsewhere")[1][7] == "shapes-v1/00000-11-20.jpg"


def test_nothing_to_save_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidField, match="no images to save"):
        save_gallery([], [], -1, make_zip=False, opts=OPTS, data_dir=tmp_path)
