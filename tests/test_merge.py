"""The checkpoint merger (webui/models/merge.py): exact recipes, architecture checks, fp16, baked VAE, bounded
memory, and a merged file that the studio loads and generates with."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from checkpoint_factory import make_tiny_checkpoint
from webui.core.errors import Interrupted, InvalidField
from webui.models.merge import MergeError, MergeRequest, merge_checkpoints, output_path


def tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge-inputs")
    return {name: make_tiny_checkpoint(d / f"{name}.safetensors", fam, seed=seed)
            for name, fam, seed in (("a", "sd1", 11), ("b", "sd1", 12), ("c", "sd1", 13), ("xl", "sdxl", 14))}


def test_weighted_sum_ends_equal_the_inputs_tensor_for_tensor(tiny, tmp_path):
    a, b = tensors(tiny["a"]), tensors(tiny["b"])
    for m, expected in ((0.0, a), (1.0, b)):
        out = merge_checkpoints(MergeRequest(tiny["a"], tiny["b"], mode="Weighted sum", multiplier=m),
                                tmp_path / f"ws-{m}.safetensors")
        got = tensors(out)
        assert got.keys() == a.keys()
        for k, t in got.items():
            assert t.dtype == expected[k].dtype
            assert torch.equal(t, expected[k]), f"M={m}: {k} differs"
    mid = tensors(merge_checkpoints(MergeRequest(tiny["a"], tiny["b"], multiplier=0.25), tmp_path / "ws.safetensors"))
    k = "model.diffusion_model.input_blocks.0.0.weight"
    assert torch.allclose(mid[k], 0.75 * a[k] + 0.25 * b[k], atol=1e-7)
    assert not torch.equal(mid[k], a[k])
    with safe_open(str(tmp_path / "ws.safetensors"), framework="pt") as f:
        recipe = json.loads(f.metadata()["sd_merge_recipe"])
    assert recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.25


def test_add_difference_on_a_tensor(tiny, tmp_path):
    out = tensors(merge_checkpoints(MergeRequest(tiny["a"], tiny["b"], tiny["c"], mode="Add difference",
                                                 multiplier=0.7), tmp_path / "ad.safetensors"))
    a, b, c = tensors(tiny["a"]), tensors(tiny["b"]), tensors(tiny["c"])
    for k in ("model.diffusion_model.out.2.weight", "cond_stage_model.transformer.text_model.final_layer_norm.bias"):
        assert torch.allclose(out[k], a[k] + 0.7 * (b[k] - c[k]), atol=1e-6)
    # integer tensors (CLIP position ids, when present) are copied from A, never interpolated
    assert all(torch.equal(out[k], a[k]) for k in a if not a[k].is_floating_point())


def test_mismatched_architectures_are_refused_before_writing(tiny, tmp_path):
    target = tmp_path / "bad.safetensors"
    with pytest.raises(MergeError, match=r"SD1\.x.*SDXL.*one architecture"):
        merge_checkpoints(MergeRequest(tiny["a"], tiny["xl"]), target)
    assert not target.exists() and not list(tmp_path.glob(".merge-*"))
    # same family, other shapes (a wider layer): named key and shapes in the message
    sd = tensors(tiny["b"])
    k = "model.diffusion_model.out.2.weight"
    sd[k] = torch.zeros(sd[k].shape[0], sd[k].shape[1] * 2, *sd[k].shape[2:])
    wide = tmp_path / "wide.safetensors"
    save_file(sd, str(wide))
    with pytest.raises(MergeError, match=r"different architectures: model\.diffusion_model\.out\.2\.weight"):
        merge_checkpoints(MergeRequest(tiny["a"], wide), target)
    assert not target.exists()
    with pytest.raises(InvalidField, match="tertiary"):
        merge_checkpoints(MergeRequest(tiny["a"], tiny["b"], mode="Add difference"), target)
    with pytest.raises(InvalidField, match="already exists"):
        output_path(tiny["a"].parent, "a")


def test_fp16_and_baked_vae(tiny, tmp_path):
    # a VAE file without the first_stage_model. prefix (as VAE files are), taken from checkpoint C
    c = tensors(tiny["c"])
    vae = {k.removeprefix("first_stage_model."): v for k, v in c.items() if k.startswith("first_stage_model.")}
    vae_file = tmp_path / "other.vae.safetensors"
    save_file(vae, str(vae_file))
    out = tensors(merge_checkpoints(MergeRequest(tiny["a"], tiny["b"], multiplier=0.5, half=True, vae=vae_file),
                                    tmp_path / "half.safetensors"))
    a, b = tensors(tiny["a"]), tensors(tiny["b"])
    for k, t in out.items():
        if a[k].is_floating_point():
            assert t.dtype == torch.float16, k
        if k.startswith("first_stage_model."):
            assert torch.equal(t, c[k].half()), k
    k = "model.diffusion_model.out.2.bias"
    assert torch.equal(out[k], (0.5 * a[k] + 0.5 * b[k]).half())
    # a VAE of another architecture does not fit
    xl_vae = {k.removeprefix("first_stage_model."): v.reshape(-1)
              for k, v in tensors(tiny["xl"]).items() if k.startswith("first_stage_model.")}
    save_file(xl_vae, str(tmp_path / "flat.safetensors"))
    with pytest.raises(MergeError, match="does not fit"):
        merge_checkpoints(MergeRequest(tiny["a"], tiny["b"], vae=tmp_path / "flat.safetensors"),
                          tmp_path / "x.safetensors")


def test_interrupt_leaves_nothing_and_ckpt_inputs_merge(tiny, tmp_path):
    target = tmp_path / "stopped.safetensors"
    seen = []
    with pytest.raises(Interrupted):
        merge_checkpoints(MergeRequest(tiny["a"], tiny["b"]), target, progress=lambda d, t, s: seen.append(d),
                          should_stop=lambda: len(seen) > 5)
    assert not target.exists() and not list(tmp_path.glob(".merge-*"))
    ckpt = make_tiny_checkpoint(tmp_path / "b.ckpt", "sd1", seed=12, fmt="ckpt")
    got = tensors(merge_checkpoints(MergeRequest(tiny["a"], ckpt, multiplier=1.0), tmp_path / "fromckpt.safetensors"))
    b = tensors(tiny["b"])
    assert all(torch.equal(got[k], b[k]) for k in b)


def test_merger_tab_job_saves_a_checkpoint_that_loads_and_generates(tiny, tmp_path):
    import shutil

    import numpy as np

    from app import build_engine
    from webui.config.flags import parse_args
    from webui.core.request import GenerationRequest
    from webui.ui.merger_tab import run_merge

    data = tmp_path / "data"
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for name in ("a", "b"):
        shutil.copy(tiny[name], folder / f"{name}.safetensors")
    engine = build_engine(parse_args(["--data-dir", str(data)]))
    try:
        job = run_merge(engine, "a.safetensors", "b.safetensors", None, "Weighted sum", 0.5, "merged-ab", False,
                        "None", "")
        title = job.wait(120)
        assert title.startswith("merged-ab.safetensors [")
        assert job.progress.sampling_step == job.progress.sampling_steps > 100   # one step per tensor
        assert (folder / "merged-ab.safetensors").is_file()
        req = GenerationRequest(prompt="a red circle", steps=2, width=64, height=64, seed=5,
                                override_settings={"sd_model_checkpoint": "merged-ab"})
        res = engine.txt2img(req, save=False)
        assert "Model: merged-ab," in res.infotexts[0]
        assert np.asarray(res.images[0]).std() > 0
        with pytest.raises(InvalidField, match="already exists"):
            run_merge(engine, "a.safetensors", "b.safetensors", None, "Weighted sum", 0.5, "merged-ab", False,
                      "None", "")
    finally:
        engine.jobs.stop()


MEMORY_PROBE = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from webui.models.merge import MergeRequest, merge_checkpoints
    d = Path(sys.argv[1])
    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    base = anon()
    peak = [0]
    done = threading.Event()
    def sample():                     # anonymous memory (not the inputs' memory-mapped pages)
        while not done.is_set():
            peak[0] = max(peak[0], anon() - base)
            done.wait(0.0005)
    t = threading.Thread(target=sample)
    t.start()
    merge_checkpoints(MergeRequest(d / "a.safetensors", d / "b.safetensors", d / "c.safetensors",
                                   mode="Add difference", multiplier=0.5), d / "out.safetensors",
                      lambda done, total, text: peak.__setitem__(0, max(peak[0], anon() - base)))
    done.set()
    t.join()
    print(peak[0])
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_stays_bounded_by_a_few_tensors(tmp_path):
    from conftest import ROOT
    n, size = 24, 1_000_000          # 24 tensors of 4 MB: 96 MB per model, written here (the probe starts clean)
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        g = torch.Generator().manual_seed(seed)
        sd = {f"model.diffusion_model.input_blocks.{i}.0.weight": torch.randn(size, generator=g) for i in range(n)}
        sd["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(8)
        save_file(sd, str(tmp_path / f"{name}.safetensors"))
        del sd
    res = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path), str(ROOT)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    peak = int(res.stdout.strip().splitlines()[-1])
    model = n * size * 4
    # three inputs of 96 MB each: the merge holds a few 4 MB tensors at a time, not a model
    assert peak < model / 2, f"anonymous memory grew by {peak / 1e6:.0f} MB during the merge"
    assert (tmp_path / "out.safetensors").stat().st_size > model
