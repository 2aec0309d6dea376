"""A1111 hypernetworks (webui/models/hypernetworks.py): files in A1111's layout load, the key and value MLPs act
on a real diffusers attention as A1111's formula says, and on the bundled model a hypernetwork that blanks the
prompt's keys and values makes the picture ignore the prompt, in proportion to its multiplier."""
from __future__ import annotations

import math
from pathlib import Path

import httpx
import hypernetwork_factory as hf
import numpy as np
import pytest
import torch

from webui.core.errors import InvalidField, ModelLoadError
from webui.core.request import GenerationRequest
from webui.models import hypernetworks as hn

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "Stable-diffusion" / "shapes-tiny-v1.safetensors"
D = 8


def load(path: Path) -> hn.Hypernetwork:
    return hn.load_hypernetwork(hn.HypernetworkInfo(path.stem, path))


def manual_mlp(x, state, layers, act=torch.relu):
    """The MLP as the layout list says: ("linear", index) | ("act",) | ("norm", index)."""
    for kind, *index in layers:
        if kind == "linear":
            x = x @ state[f"linear.{index[0]}.weight"].T + state[f"linear.{index[0]}.bias"]
        elif kind == "act":
            x = act(x)
        else:
            w, b = state[f"linear.{index[0]}.weight"], state[f"linear.{index[0]}.bias"]
            x = torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, 1e-5)
    return x


# (options as A1111 saves them, the state's layout: (index, kind, in, out), how the MLP computes)
LAYOUTS = {
    "relu, no output activation": (
        {"layer_structure": [1, 2, 1], "activation_func": "relu", "activate_output": False},
        [(0, "linear", D, 2 * D), (2, "linear", 2 * D, D)],
        [("linear", 0), ("act",), ("linear", 2)]),
    "relu, activated output (A1111's default when the key is missing)": (
        {"layer_structure": [1, 2, 1], "activation_func": "relu"},
        [(0, "linear", D, 2 * D), (2, "linear", 2 * D, D)],
        [("linear", 0), ("act",), ("linear", 2), ("act",)]),
    "layer norm after every linear": (
        {"layer_structure": [1, 2, 1], "activation_func": "relu", "is_layer_norm": True, "activate_output": False},
        [(0, "linear", D, 2 * D), (2, "norm", 2 * D, 2 * D), (3, "linear", 2 * D, D), (4, "norm", D, D)],
        [("linear", 0), ("act",), ("norm", 2), ("linear", 3), ("norm", 4)]),
    "dropout holds an index": (
        {"layer_structure": [1, 2, 2, 1], "activation_func": "relu", "use_dropout": True,
         "activate_output": False, "last_layer_dropout": False},
        [(0, "linear", D, 2 * D), (3, "linear", 2 * D, 2 * D), (5, "linear", 2 * D, D)],
        [("linear", 0), ("act",), ("linear", 3), ("act",), ("linear", 5)]),
    "linear (no activation)": (
        {"layer_structure": [1, 1.5, 1], "activation_func": "linear"},
        [(0, "linear", D, 12), (1, "linear", 12, D)],
        [("linear", 0), ("linear", 1)]),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a1111_layouts_load_and_compute_as_written(tmp_path, name):
    options, layout, compute = LAYOUTS[name]
    g = torch.Generator().manual_seed(1)
    k_state, v_state = hf.mlp_state(D, layout, g, scale=0.5), hf.mlp_state(D, layout, g, scale=0.5)
    net = load(hf.write(tmp_path / "net.pt", {D: (k_state, v_state)}, **options))
    net.set_multiplier(0.7)
    x = torch.randn(3, 5, D, generator=g)
    mk, mv = net.layers[D]
    torch.testing.assert_close(mk(x), x + manual_mlp(x, k_state, compute) * 0.7)
    torch.testing.assert_close(mv(x), x + manual_mlp(x, v_state, compute) * 0.7)


def test_first_files_key_names_load(tmp_path):
    """A1111's first hypernetworks named their two linears linear1 / linear2 and saved no options."""
    g = torch.Generator().manual_seed(2)
    old = {"linear1.weight": torch.randn(2 * D, D, generator=g), "linear1.bias": torch.randn(2 * D, generator=g),
           "linear2.weight": torch.randn(D, 2 * D, generator=g), "linear2.bias": torch.randn(D, generator=g)}
    path = tmp_path / "old.pt"
    torch.save({D: (old, old), "step": 10, "name": "old"}, path)
    net = load(path)
    x = torch.randn(2, D, generator=g)
    want = x + (x @ old["linear1.weight"].T + old["linear1.bias"]) @ old["linear2.weight"].T + old["linear2.bias"]
    torch.testing.assert_close(net.layers[D][0](x), want)


def test_files_that_are_not_hypernetworks_are_refused_clearly(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="hypernetwork junk: cannot read"):
        load(tmp_path / "junk.pt")
    layout = LAYOUTS["layer norm after every linear"][1]
    state = hf.mlp_state(D, layout)
    path = hf.write(tmp_path / "mismatch.pt", {D: (state, state)}, layer_structure=[1, 2, 1],
                    activation_func="relu")   # the file says no layer norm: its keys do not fit
    with pytest.raises(ModelLoadError, match="do not match its layer_structure"):
        load(path)


def test_attention_keys_and_values_go_through_the_mlps(tmp_path):
    """On a diffusers Attention: a cross-attention's keys are to_k(c + mlp_k(c) m), its values to_v(c + mlp_v(c) m)
    (computed here by hand); a self-attention's input is its hidden states, so a file with that width acts there;
    the hooks go when the block ends."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=D, heads=2, dim_head=8).eval()
    self_attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    g = torch.Generator().manual_seed(3)
    lay = [(0, "linear", D, D)]
    k_state, v_state = hf.mlp_state(D, lay, g, scale=0.5), hf.mlp_state(D, lay, g, scale=0.5)
    s_lay = [(0, "linear", 16, 16)]
    sk, sv = hf.mlp_state(16, s_lay, g, scale=0.5), hf.mlp_state(16, s_lay, g, scale=0.5)
    net = load(hf.write(tmp_path / "n.pt", {D: (k_state, v_state), 16: (sk, sv)}, layer_structure=[1, 1],
                        activation_func="linear"))
    x, c = torch.randn(2, 6, 16, generator=g), torch.randn(2, 4, D, generator=g)

    def by_hand(module, hidden, ctx, ks, vs, m):
        q = module.to_q(hidden)
        k = module.to_k(ctx + manual_mlp(ctx, ks, [("linear", 0)]) * m)
        v = module.to_v(ctx + manual_mlp(ctx, vs, [("linear", 0)]) * m)
        q, k, v = (t.view(2, -1, 2, 8).transpose(1, 2) for t in (q, k, v))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
        return module.to_out[0]((w @ v).transpose(1, 2).reshape(2, -1, 16))

    holder = torch.nn.ModuleList([attn, self_attn])
    with torch.no_grad():
        plain = attn(x, encoder_hidden_states=c)
        want_cross, want_self = by_hand(attn, x, c, k_state, v_state, 0.6), by_hand(self_attn, x, x, sk, sv, 0.6)
        with hn.apply_hypernetworks(holder, [(net, 0.6)]):
            torch.testing.assert_close(attn(x, encoder_hidden_states=c), want_cross)
            torch.testing.assert_close(self_attn(x), want_self)
        torch.testing.assert_close(attn(x, encoder_hidden_states=c), plain)
    assert float((want_cross - plain).abs().max()) > 0.05


def test_lookup_by_name_then_closest(tmp_path):
    for name in ("anime-style", "anime", "None"):
        hf.write(tmp_path / f"{name}.pt", {D: (hf.mlp_state(D, [(0, "linear", D, D)]),) * 2})
    items = hn.scan_hypernetworks(tmp_path)
    assert [i.name for i in items] == ["anime", "anime-style"]   # "None" is not a name, as in A1111
    assert hn.find_hypernetwork(items, "anime").name == "anime"
    assert hn.find_hypernetwork(items, "STYLE").name == "anime-style"
    assert hn.find_hypernetwork(items, "cat") is None


def blind(folder: Path, dim: int = 64) -> Path:
    """A hypernetwork whose key and value MLPs send the prompt's embedding to zero (x + (-x) * 1)."""
    state = hf.linear_map(dim, -torch.eye(dim), torch.zeros(dim))
    return hf.write(folder / "blind.pt", {dim: (state, state)}, layer_structure=[1, 1], activation_func="linear")


needs_model = pytest.mark.skipif(not MODEL.exists(), reason=f"the bundled model is not there yet: {MODEL}")


@needs_model
def test_on_the_bundled_model_the_multiplier_sets_how_much_the_prompt_is_lost(engine, data_dir):
    blind(data_dir / "models" / "hypernetworks")
    settings = {"sd_model_checkpoint": MODEL.name, "live_previews_enable": False}

    def image(prompt, seed=4):
        req = GenerationRequest(prompt=prompt, steps=12, width=128, height=128, cfg_scale=7, seed=seed,
                                override_settings=settings)
        res = engine.txt2img(req, save=False)
        return np.asarray(res.images[0], dtype=np.int16), res

    red, blue = "a large red circle on the left, blue background", "a small yellow star at the top, purple background"
    a, _ = image(red)
    b, _ = image(blue)
    a1, res = image(red + " <hypernet:blind:1>")
    b1, _ = image(blue + " <hypernet:blind:1>")
    a0, _ = image(red + " <hypernet:blind:0>")
    half, _ = image(red + " <hypernet:blind:0.5>")
    half_b, _ = image(blue + " <hypernet:blind:0.5>")
    missing, res_missing = image(red + " <hypernet:nosuch:1>")
    apart = float(np.abs(a - b).mean())
    half_apart = float(np.abs(half - half_b).mean())
    print(f"two prompts apart: {apart:.1f}; with the hypernetwork at 0.5: {half_apart:.1f}, at 1: "
          f"{float(np.abs(a1 - b1).mean()):.1f}; at 0.5 from the plain picture: {float(np.abs(half - a).mean()):.1f}")
    assert apart > 20
    assert np.array_equal(a1, b1), "with the prompt's keys and values at zero, the prompt must not matter"
    assert np.array_equal(a0, a)
    # at 0.5 the prompt's embedding is halved: it still steers the picture, which is not the plain one
    assert half_apart > 10 and float(np.abs(half - a).mean()) > 1
    assert "<hypernet:blind:1>" in res.infotexts[0]   # the tag stays in the prompt, as A1111's infotext has it
    assert np.array_equal(missing, a) and any("hypernetwork not found: nosuch" in n for n in res_missing.notes)
    with pytest.raises(InvalidField, match="multiplier is not a number"):
        image(red + " <hypernet:blind:lots>")


def test_api_lists_hypernetworks_and_refuses_a_broken_one(server, data_dir):
    folder = data_dir / "models" / "hypernetworks"
    hf.write(folder / "listed.pt", {768: (hf.mlp_state(768, [(0, "linear", 768, 768)]),) * 2},
             layer_structure=[1, 1])
    (folder / "broken.pt").write_bytes(b"\x00" * 10)
    listed = httpx.get(server + "/sdapi/v1/hypernetworks", timeout=30).json()
    assert {"name": "listed", "path": str(folder / "listed.pt")} in listed
    r = httpx.post(server + "/sdapi/v1/txt2img", json={"prompt": "a cat <hypernet:broken:1>", "steps": 2,
                                                       "width": 64, "height": 64,
                                                       "override_settings": {"sd_model_checkpoint":
                                                                             "tiny-sd1.safetensors"}}, timeout=300)
    assert r.status_code == 422 and "hypernetwork broken: cannot read" in r.json()["detail"]
    ok = httpx.post(server + "/sdapi/v1/txt2img", json={"prompt": "a cat <hypernet:listed:0.5>", "steps": 2,
                                                        "width": 64, "height": 64, "override_settings": {
                                                            "sd_model_checkpoint": "tiny-sd1.safetensors"}},
                    timeout=300)
    assert ok.status_code == 200, ok.text


def test_old_infotexts_hypernet_key_becomes_a_tag():
    from webui.core.infotext import parse_infotext
    old = "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Hypernet: anime, " \
          "Hypernet strength: 0.8"
    assert parse_infotext(old)["Prompt"] == "a castle<hypernet:anime:0.8>"
    assert parse_infotext(old.replace(", Hypernet strength: 0.8", ""))["Prompt"] == "a castle<hypernet:anime:1.0>"


@needs_model
def test_add_network_to_prompt_settings_and_the_default_multiplier(engine, data_dir):
    """A1111's "Add network to prompt" (sd_hypernetwork, sd_lora): the tag goes at every prompt's end at the
    "Default multiplier for extra networks", unless the prompt names that network already."""
    blind(data_dir / "models" / "hypernetworks")
    settings = {"sd_model_checkpoint": MODEL.name, "live_previews_enable": False}

    def image(prompt, **opts):
        req = GenerationRequest(prompt=prompt, steps=8, width=128, height=128, cfg_scale=7, seed=9,
                                override_settings={**settings, **opts})
        res = engine.txt2img(req, save=False)
        return np.asarray(res.images[0], dtype=np.int16), res

    prompt = "a large red circle on the left, blue background"
    tagged, _ = image(prompt + "<hypernet:blind:0.5>")
    added, res = image(prompt, sd_hypernetwork="blind", extra_networks_default_multiplier=0.5)
    assert res.infotexts[0].startswith(prompt + "<hypernet:blind:0.5>\n")
    assert np.array_equal(added, tagged)
    named, res = image(prompt + " <hypernet:blind:0>", sd_hypernetwork="blind")   # named already: not added
    assert "<hypernet:blind:1>" not in res.infotexts[0]
    plain, res = image(prompt, sd_hypernetwork="nosuch")   # a name not found adds nothing
    assert np.array_equal(named, plain) and "<hypernet" not in res.infotexts[0]


def test_a_lora_tag_without_a_weight_takes_the_default_multiplier(engine, data_dir):
    from lora_factory import make_kohya_lora, tiny_pipeline
    pipe = tiny_pipeline(data_dir / "tmp-lora-default", "sd1", seed=1)
    make_kohya_lora(data_dir / "models" / "Lora" / "defaultw.safetensors", pipe, rank=2, seed=5, scale=4.0)
    engine.models.refresh_loras()

    def image(prompt, **opts):
        req = GenerationRequest(prompt=prompt, steps=4, width=64, height=64, seed=3,
                                override_settings={"sd_model_checkpoint": "tiny-sd1.safetensors", **opts})
        return np.asarray(engine.txt2img(req, save=False).images[0], dtype=np.int16)

    half = image("a cat <lora:defaultw:0.5>")
    assert np.array_equal(image("a cat <lora:defaultw>", extra_networks_default_multiplier=0.5), half)
    assert not np.array_equal(image("a cat <lora:defaultw>"), half)
    added = image("a cat", sd_lora="defaultw", extra_networks_default_multiplier=0.5)
    assert np.array_equal(added, image("a cat<lora:defaultw:0.5>"))
