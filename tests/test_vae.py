"""VAE library: A1111 listing and hash, loading every layout, swapping in and back out exactly."""
from __future__ import annotations

import hashlib
import pickle

import pytest
import torch
from lora_factory import make_kohya_lora, tiny_pipeline
from safetensors.torch import save_file

from checkpoint_factory import make_tiny_checkpoint, tiny_state_dicts
from webui.models.original_layout import vae_to_original
from webui.models.vae import find_vae, load_vae, scan_vaes, swap_vae, vae_near_checkpoint


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("vae-sd1"), "sd1", seed=31)


@pytest.fixture(scope="module")
def other_vae():
    """diffusers weights of another tiny VAE (same architecture, other values)."""
    return tiny_state_dicts("sd1", seed=99)["vae"]


def decode(pipe):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample


def assert_weights(vae, sd):
    got = vae.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


def test_scan_names_hash_and_lookup(tmp_path, other_vae):
    vae_dir, ckpt_dir = tmp_path / "VAE", tmp_path / "Stable-diffusion"
    orig = vae_to_original(other_vae, prefix="")
    vae_dir.mkdir()
    save_file(orig, str(vae_dir / "kl-f8-10.safetensors"))
    save_file(orig, str(vae_dir / "kl-f8-9.safetensors"))
    (vae_dir / "sub").mkdir()
    torch.save({"state_dict": orig}, vae_dir / "sub" / "Old.pt")
    ckpt_dir.mkdir()
    save_file(orig, str(ckpt_dir / "model.vae.safetensors"))
    save_file(orig, str(ckpt_dir / "not-a-vae.safetensors"))        # a checkpoint, not *.vae.*
    (vae_dir / "readme.txt").write_text("x")
    vaes = scan_vaes(vae_dir, [ckpt_dir])
    assert [v.name for v in vaes] == ["kl-f8-9.safetensors", "kl-f8-10.safetensors", "model.vae.safetensors",
                                      "Old.pt"]
    v = vaes[0]
    assert v.sha256 == hashlib.sha256(v.path.read_bytes()).hexdigest() and v.shorthash == v.sha256[:10]
    assert v.api_item() == {"model_name": "kl-f8-9.safetensors", "filename": str(v.path)}
    assert find_vae(vaes, "Old.pt").name == "Old.pt"
    assert find_vae(vaes, "old").name == "Old.pt"                       # stem, case-insensitive
    assert find_vae(vaes, "sub/Old.pt").name == "Old.pt"
    assert find_vae(vaes, "Automatic") is None and find_vae(vaes, "") is None
    assert vae_near_checkpoint(vaes, ckpt_dir / "model.safetensors").name == "model.vae.safetensors"
    assert vae_near_checkpoint(vaes, ckpt_dir / "kl-f8.safetensors") is None    # "kl-f8-9" is another model
    again = scan_vaes(vae_dir, [ckpt_dir], previous=vaes)
    assert again[0]._sha256 == v.sha256


@pytest.mark.parametrize("layout", ["original", "prefixed-ckpt", "diffusers", "whole-checkpoint", "fp16"])
def test_load_every_layout(tmp_path, sd1, other_vae, layout):
    want = other_vae
    if layout == "original":
        path = tmp_path / "a.safetensors"
        save_file(vae_to_original(other_vae, prefix=""), str(path))
    elif layout == "prefixed-ckpt":       # a training .ckpt: prefix, loss and EMA bookkeeping keys
        sd = vae_to_original(other_vae)
        sd.update({"loss.logvar": torch.zeros(()), "model_ema.decay": torch.tensor(0.999)})
        path = tmp_path / "a.ckpt"
        torch.save({"state_dict": sd, "global_step": 10}, path)
    elif layout == "diffusers":
        path = tmp_path / "diffusion_pytorch_model.safetensors"
        save_file({k: v.contiguous() for k, v in other_vae.items()}, str(path))
    elif layout == "whole-checkpoint":
        path = make_tiny_checkpoint(tmp_path / "full.safetensors", "sd1", seed=99)
    else:
        path = tmp_path / "half.safetensors"
        save_file({k: v.half() for k, v in vae_to_original(other_vae, prefix="").items()}, str(path))
        want = {k: v.half().float() for k, v in other_vae.items()}
    vae = load_vae(path, sd1.vae)
    assert vae.dtype == sd1.vae.dtype and vae.config.scaling_factor == sd1.vae.config.scaling_factor
    assert_weights(vae, want)
    assert not any(p.requires_grad for p in vae.parameters())


def test_swap_and_restore_exactly(tmp_path, sd1, other_vae):
    path = tmp_path / "v.safetensors"
    save_file(vae_to_original(other_vae, prefix=""), str(path))
    vae = load_vae(path, sd1.vae)
    original, base = sd1.vae, decode(sd1)
    with swap_vae(sd1, vae) as active:
        assert active is vae and sd1.vae is vae
        assert not torch.equal(decode(sd1), base)
    assert sd1.vae is original and torch.equal(decode(sd1), base)
    with pytest.raises(RuntimeError), swap_vae(sd1, vae):
        raise RuntimeError("job failed")
    assert sd1.vae is original
    with swap_vae(sd1, None) as active:                 # "None"/"Automatic" without a file: the model's own
        assert active is original


def test_refusals_name_the_file(tmp_path, sd1):
    narrow = tiny_state_dicts("sd1", seed=1)["vae"]
    bad_shape = {k: (v[..., :1] if k == "decoder.conv_out.weight" else v) for k, v in narrow.items()}
    save_file({k: v.contiguous() for k, v in bad_shape.items()}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match=r"shape\.safetensors.*other shapes"):
        load_vae(tmp_path / "shape.safetensors", sd1.vae)
    lora = make_kohya_lora(tmp_path / "lora.safetensors", sd1)
    with pytest.raises(ValueError, match=r"lora\.safetensors"):
        load_vae(lora, sd1.vae)
    (tmp_path / "cut.safetensors").write_bytes(lora.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut\.safetensors"):
        load_vae(tmp_path / "cut.safetensors", sd1.vae)

    class Evil:
        def __reduce__(self):
            return (print, ("never",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"state_dict": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.pt.*refused"):
        load_vae(tmp_path / "evil.pt", sd1.vae)


def test_sdxl_keeps_its_scaling_factor(tmp_path, other_vae):
    xl = tiny_pipeline(tmp_path, "sdxl", seed=32)
    path = tmp_path / "xl-vae.safetensors"
    save_file(vae_to_original(other_vae, prefix=""), str(path))
    vae = load_vae(path, xl.vae)
    assert vae.config.scaling_factor == xl.vae.config.scaling_factor
    assert_weights(vae, other_vae)
    base = decode(xl)
    with swap_vae(xl, vae):
        assert not torch.equal(decode(xl), base)
    assert torch.equal(decode(xl), base)
