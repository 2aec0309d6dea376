"""LoRA library: listing and hashes as A1111 shows them, and reversible application on tiny pipelines."""
from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from lora_factory import kohya_state_dict, make_kohya_lora, tiny_pipeline
from safetensors.torch import save_file

from webui.models import lora as lora_mod
from webui.models.lora import (
    addnet_hash,
    apply_loras,
    find_lora,
    load_lora,
    loaded_adapters,
    lora_hashes_infotext,
    scan_loras,
    unload_loras,
)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("lora-sd1"), "sd1", seed=11)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("lora-sdxl"), "sdxl", seed=12)


def image(pipe, prompt="a red circle"):
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return pipe(prompt, num_inference_steps=2, height=32, width=32, output_type="np", generator=g,
                    guidance_scale=5.0).images


def hidden(pipe, name="text_encoder"):
    ids = torch.tensor([pipe.tokenizer("a red circle", padding="max_length", max_length=77)["input_ids"]])
    with torch.no_grad():
        return getattr(pipe, name)(ids)[0]


def unet_out(pipe):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=g)
    kw = {}
    if getattr(pipe, "text_encoder_2", None) is not None:
        proj = pipe.text_encoder_2.config.projection_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, proj, generator=g),
                                   "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}
    with torch.no_grad():
        return pipe.unet(x, 500, ctx, **kw).sample


# ------------------------------------------------------------------------------------------------- listing

def test_scan_names_aliases_metadata_and_subfolders(tmp_path, sd1):
    root = tmp_path / "Lora"
    make_kohya_lora(root / "ink.safetensors", sd1, metadata={"ss_output_name": "InkStyle"})
    make_kohya_lora(root / "chars" / "hero.safetensors", sd1, seed=1)
    make_kohya_lora(root / "old.pt", sd1, seed=2, fmt="pt")
    (root / "notes.txt").write_text("not a lora")
    (root / "empty.safetensors").write_bytes(b"")
    found = scan_loras(root)
    assert [i.name for i in found] == ["hero", "ink", "old"]
    hero, ink, old = found
    assert hero.rel == "chars/hero.safetensors" and hero.alias == "hero"
    assert ink.alias == "InkStyle"
    assert ink.metadata["ss_network_dim"] == "4"
    assert ink.metadata["ss_tag_frequency"] == {"img": {"tiny": 1}}     # JSON values decoded, as A1111
    assert ink.sd_version == "sd1" and old.sd_version == "unknown"
    item = ink.api_item()
    assert set(item) == {"name", "alias", "path", "metadata"} and item["alias"] == "InkStyle"
    json.dumps([i.api_item() for i in found])                            # the API can serialise it
    assert scan_loras(tmp_path / "missing") == []


def test_hashes_are_a1111s(tmp_path, sd1):
    path = make_kohya_lora(tmp_path / "a.safetensors", sd1)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    body_sha = hashlib.sha256(raw[8 + n:]).hexdigest()
    assert addnet_hash(path) == body_sha
    (info,) = scan_loras(tmp_path)
    assert info.sha256 == body_sha and info.shorthash == body_sha[:12]
    # the addnet hash ignores the header: other metadata, same weights -> same hash
    other = make_kohya_lora(tmp_path / "b" / "a.safetensors", sd1, metadata={"ss_output_name": "x"})
    assert addnet_hash(other) == body_sha
    # pickles: sha256 of the whole file
    pt = make_kohya_lora(tmp_path / "c" / "p.pt", sd1, fmt="pt")
    (pinfo,) = scan_loras(tmp_path / "c")
    assert pinfo.sha256 == hashlib.sha256(pt.read_bytes()).hexdigest()


def test_rescan_keeps_hashes_of_unchanged_files(tmp_path, sd1, monkeypatch):
    make_kohya_lora(tmp_path / "a.safetensors", sd1)
    first = scan_loras(tmp_path)
    h = first[0].sha256
    calls = []
    monkeypatch.setattr(lora_mod, "addnet_hash", lambda p: calls.append(p) or "0" * 64)
    again = scan_loras(tmp_path, previous=first)
    assert again[0].sha256 == h and calls == []
    fresh = scan_loras(tmp_path)
    assert fresh[0].sha256 == "0" * 64 and len(calls) == 1


def test_find_lora(tmp_path, sd1):
    root = tmp_path / "Lora"
    make_kohya_lora(root / "ink.safetensors", sd1, metadata={"ss_output_name": "InkStyle"})
    make_kohya_lora(root / "sub" / "Hero.safetensors", sd1, metadata={"ss_output_name": "shared"})
    make_kohya_lora(root / "sub" / "villain.safetensors", sd1, metadata={"ss_output_name": "shared"})
    loras = scan_loras(root)
    assert find_lora(loras, "ink").name == "ink"
    assert find_lora(loras, "InkStyle").name == "ink"
    assert find_lora(loras, "hero").name == "Hero"                 # case-insensitive fallback
    assert find_lora(loras, "sub/villain").name == "villain"       # relative path, no suffix
    assert find_lora(loras, "sub/villain.safetensors").name == "villain"
    assert find_lora(loras, "shared") is None                      # an alias two files share is ambiguous
    assert find_lora(loras, "nope") is None and find_lora(loras, " ") is None


def test_lora_hashes_infotext(tmp_path, sd1):
    make_kohya_lora(tmp_path / "a.safetensors", sd1)
    make_kohya_lora(tmp_path / "b.safetensors", sd1, seed=3)
    a, b = scan_loras(tmp_path)
    text = lora_hashes_infotext([("a", a), ("my:b,x", b), ("a", a)])
    assert text == f"a: {a.shorthash}, myb x: {b.shorthash}".replace("myb x", "mybx")
    assert lora_hashes_infotext([]) == ""


# ------------------------------------------------------------------------------------------------- application

def test_apply_changes_output_and_removes_it_exactly(tmp_path, sd1):
    path = make_kohya_lora(tmp_path / "style.safetensors", sd1, seed=5)
    (info,) = scan_loras(tmp_path)
    base_img, base_te, base_unet = image(sd1), hidden(sd1), unet_out(sd1)
    with apply_loras(sd1, [(info, 1.0, 1.0)]) as names:
        assert len(names) == 1
        lora_img = image(sd1)
        assert not torch.equal(hidden(sd1), base_te) and not torch.equal(unet_out(sd1), base_unet)
    assert abs(lora_img - base_img).max() > 1e-3
    # after the block: bit-for-bit the base output, although the adapter stays cached
    assert (image(sd1) == base_img).all()
    assert torch.equal(hidden(sd1), base_te) and torch.equal(unet_out(sd1), base_unet)
    assert str(path.resolve()) in loaded_adapters(sd1)
    # weight 0: exactly the base output while active
    with apply_loras(sd1, [(info, 0.0, 0.0)]):
        assert (image(sd1) == base_img).all()
    # a job without tags after all that
    with apply_loras(sd1, []):
        assert (image(sd1) == base_img).all()


def test_separate_text_encoder_and_unet_weights(tmp_path, sd1):
    make_kohya_lora(tmp_path / "s.safetensors", sd1, seed=6)
    (info,) = scan_loras(tmp_path)
    base_te, base_unet = hidden(sd1), unet_out(sd1)
    with apply_loras(sd1, [(info, 1.0, 0.0)]):
        assert not torch.equal(hidden(sd1), base_te) and torch.equal(unet_out(sd1), base_unet)
    with apply_loras(sd1, [(info, 0.0, 1.0)]):
        assert torch.equal(hidden(sd1), base_te) and not torch.equal(unet_out(sd1), base_unet)


def test_weight_math_is_kohyas(tmp_path, sd1):
    """A layer's output is base + w * alpha / rank * up @ down x, as A1111 computes it."""
    rank, alpha, w = 4, 2.0, 0.7
    make_kohya_lora(tmp_path / "m.safetensors", sd1, rank=rank, alpha=alpha, seed=7, include_te=False)
    (info,) = scan_loras(tmp_path)
    sd = kohya_state_dict(sd1, rank=rank, alpha=alpha, seed=7, include_te=False)
    prefix = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    down, up = sd[f"{prefix}.lora_down.weight"], sd[f"{prefix}.lora_up.weight"]
    layer = sd1.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    x = torch.randn(3, layer.in_features if hasattr(layer, "in_features") else down.shape[1])
    with torch.no_grad():
        base = layer(x)
        with apply_loras(sd1, [(info, 1.0, w)]):
            got = layer(x)
        want = base + w * (alpha / rank) * (x @ down.T @ up.T)
    assert torch.allclose(got, want, atol=1e-5)


def test_cached_adapter_is_not_reloaded(tmp_path, sd1, monkeypatch):
    make_kohya_lora(tmp_path / "c.safetensors", sd1, seed=8)
    (info,) = scan_loras(tmp_path)
    with apply_loras(sd1, [(info, 1.0, 1.0)]):
        first = image(sd1)
    reads = []
    real = lora_mod._read_lora
    monkeypatch.setattr(lora_mod, "_read_lora", lambda i: reads.append(i) or real(i))
    with apply_loras(sd1, [(info, 1.0, 1.0)]):
        again = image(sd1)
    assert reads == [] and (again == first).all()


def test_several_loras_and_eviction(tmp_path, sd1):
    for s in range(3):
        make_kohya_lora(tmp_path / f"l{s}.safetensors", sd1, seed=20 + s)
    l0, l1, l2 = scan_loras(tmp_path)
    base = image(sd1)
    with apply_loras(sd1, [(l0, 1.0, 1.0)]):
        one = image(sd1)
    with apply_loras(sd1, [(l0, 1.0, 1.0), (l1, 0.5, 1.5)], keep=2):
        two = image(sd1)
    assert not (two == one).all()
    with apply_loras(sd1, [(l2, 1.0, 1.0)], keep=2):
        pass
    cached = loaded_adapters(sd1)
    assert str(l0.path) not in cached and str(l1.path) in cached and str(l2.path) in cached
    assert (image(sd1) == base).all()
    with apply_loras(sd1, [(l0, 1.0, 1.0)]):               # reloaded after eviction: same effect
        assert (image(sd1) == one).all()
    unload_loras(sd1)
    assert loaded_adapters(sd1) == {} and (image(sd1) == base).all()


def test_exception_in_job_still_disables(tmp_path, sd1):
    make_kohya_lora(tmp_path / "e.safetensors", sd1, seed=9)
    (info,) = scan_loras(tmp_path)
    base = image(sd1)
    with pytest.raises(KeyError), apply_loras(sd1, [(info, 1.0, 1.0)]):
        raise KeyError("job failed")
    assert (image(sd1) == base).all()


def test_sdxl_kohya_file_both_encoders(tmp_path, sdxl):
    path = make_kohya_lora(tmp_path / "xl.safetensors", sdxl, seed=4)
    (info,) = scan_loras(tmp_path)
    assert info.sd_version == "sdxl"
    base_img, te1, te2, base_unet = image(sdxl), hidden(sdxl), hidden(sdxl, "text_encoder_2"), unet_out(sdxl)
    with apply_loras(sdxl, [(info, 1.0, 1.0)]) as (name,):
        assert abs(image(sdxl) - base_img).max() > 1e-3
        assert not torch.equal(hidden(sdxl), te1) and not torch.equal(hidden(sdxl, "text_encoder_2"), te2)
        # every layer of the file (SGM-named UNet blocks, te1, te2) found its module
        from safetensors.torch import load_file
        n_file = sum(1 for k in load_file(str(path)) if k.endswith(".lora_down.weight"))
        n_model = sum(lora_mod._count_layers(getattr(sdxl, c), name)
                      for c in ("unet", "text_encoder", "text_encoder_2"))
        assert n_model == n_file
    with apply_loras(sdxl, [(info, 1.0, 0.0)]):
        assert torch.equal(unet_out(sdxl), base_unet)
        assert not torch.equal(hidden(sdxl, "text_encoder_2"), te2)
    assert (image(sdxl) == base_img).all()
    assert torch.equal(hidden(sdxl, "text_encoder_2"), te2)


def test_incompatible_files_raise_naming_the_file(tmp_path, sd1, sdxl):
    make_kohya_lora(tmp_path / "xl" / "for-xl.safetensors", sdxl, seed=1)
    make_kohya_lora(tmp_path / "sd" / "for-sd1.safetensors", sd1, seed=1)
    (xl_info,) = scan_loras(tmp_path / "xl")
    (sd_info,) = scan_loras(tmp_path / "sd")
    base1, basexl = image(sd1), image(sdxl)
    with pytest.raises(ValueError, match="for-xl.safetensors"):
        with apply_loras(sd1, [(xl_info, 1.0, 1.0)]):
            pass
    with pytest.raises(ValueError, match="for-sd1.safetensors"):
        with apply_loras(sdxl, [(sd_info, 1.0, 1.0)]):
            pass
    assert (image(sd1) == base1).all() and (image(sdxl) == basexl).all()
    assert str(xl_info.path) not in loaded_adapters(sd1)
    # a good LoRA still works next to the failures
    with apply_loras(sd1, [(sd_info, 1.0, 1.0)]):
        assert not (image(sd1) == base1).all()


def test_unsupported_and_foreign_files(tmp_path, sd1):
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": torch.ones(4, 4)},
              str(tmp_path / "loha.safetensors"))
    save_file({"model.diffusion_model.out.0.weight": torch.ones(4)}, str(tmp_path / "ckpt.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    loras = {i.name: i for i in scan_loras(tmp_path)}
    assert set(loras) == {"loha", "ckpt", "broken"}
    with pytest.raises(ValueError, match=r"loha\.safetensors.*LoHa"):
        load_lora(sd1, loras["loha"])
    with pytest.raises(ValueError, match=r"ckpt\.safetensors.*not a LoRA"):
        load_lora(sd1, loras["ckpt"])
    with pytest.raises(ValueError, match=r"broken\.safetensors"):
        load_lora(sd1, loras["broken"])


def test_changed_file_is_reloaded(tmp_path, sd1):
    import os

    path = make_kohya_lora(tmp_path / "v.safetensors", sd1, seed=30)
    (info,) = scan_loras(tmp_path)
    with apply_loras(sd1, [(info, 1.0, 1.0)]):
        first = image(sd1)
    make_kohya_lora(path, sd1, seed=31)
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + 5))
    (info2,) = scan_loras(tmp_path)
    with apply_loras(sd1, [(info2, 1.0, 1.0)]):
        second = image(sd1)
    assert not (second == first).all()
    assert len([p for p in loaded_adapters(sd1) if p == str(path.resolve())]) == 1
