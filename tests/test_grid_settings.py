"""A1111's grid settings on a real job: "Grid row count" (n_rows), "Prevent empty spots in grid" and "Do not save
grids consisting of one picture" (grid_only_if_multiple)."""
from __future__ import annotations

import numpy as np
import pytest

from webui.core.request import GenerationRequest

CKPT = {"sd_model_checkpoint": "tiny-sd1.safetensors", "live_previews_enable": False}


def job(engine, n_iter: int, batch_size: int = 1, **opts):
    req = GenerationRequest(prompt="a red circle", steps=2, width=64, height=64, seed=3, n_iter=n_iter,
                            batch_size=batch_size, override_settings={**CKPT, **opts})
    return engine.txt2img(req, save=False)


@pytest.mark.parametrize("opts,size", [
    ({}, (128, 128)),                                         # 3 pictures: round(sqrt 3) = 2 rows of 2
    ({"n_rows": 1}, (192, 64)),
    ({"n_rows": 3}, (64, 192)),
    ({"grid_prevent_empty_spots": True}, (192, 64)),          # 3 has no divisor <= sqrt 3 but 1: one row
])
def test_row_count_settings_shape_the_grid(engine, opts, size):
    res = job(engine, 3, **opts)
    grid, cells = res.images[0], res.images[1:]
    assert res.index_of_first_image == 1 and grid.size == size
    cols = size[0] // 64
    for k, cell in enumerate(cells):      # each picture in its place, row by row
        x, y = k % cols * 64, k // cols * 64
        assert np.array_equal(np.asarray(grid.crop((x, y, x + 64, y + 64))), np.asarray(cell))


def test_zero_rows_means_one_row_per_batch(engine):
    res = job(engine, 1, batch_size=3, n_rows=0)
    assert res.images[0].size == (64, 192)         # a batch of 3 -> 3 rows (automatic would give 2 rows of 2)


def test_a_grid_of_one_picture_only_when_asked(engine):
    assert len(job(engine, 1).images) == 1
    res = job(engine, 1, grid_only_if_multiple=False)
    assert len(res.images) == 2 and res.index_of_first_image == 1
    assert np.array_equal(np.asarray(res.images[0]), np.asarray(res.images[1]))
