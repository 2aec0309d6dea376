"""The original single-file layout writer is the exact inverse of diffusers' single-file converters; the shipped
tokenizer and family templates match the real models."""

from __future__ import annotations

import json

import pytest
import torch

import checkpoint_factory as cf
from webui.models import original_layout as ol

FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")
OPENCLIP_PREFIX = {"sd2": ol.SD2_OPENCLIP_PREFIX, "sd2-v": ol.SD2_OPENCLIP_PREFIX}


def _forward(family: str, orig: dict, models: dict) -> dict[str, dict]:
    """Read an original-layout state dict back the way diffusers' from_single_file does."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    cfg = cf.TINY_CONFIGS[family]
    back = {"unet": convert_ldm_unet_checkpoint(orig, cfg["unet"]),
            "vae": convert_ldm_vae_checkpoint(orig, cfg["vae"])}
    if family in ("sd1", "sdxl"):
        te = convert_ldm_clip_checkpoint(orig)
    else:
        # diffusers drops SD2's 24th resblock by a fixed key list (resblocks.23.*); the tiny file's extra
        # resblock is number num_hidden_layers, dropped here the same way.
        extra = f"{ol.SD2_OPENCLIP_PREFIX}transformer.resblocks.{cfg['text_encoder']['num_hidden_layers']}."
        te = convert_open_clip_checkpoint(models["text_encoder"], {k: v for k, v in orig.items()
                                                                   if not k.startswith(extra)},
                                          prefix=ol.SD2_OPENCLIP_PREFIX)
        assert "text_projection.weight" not in te  # on diffusers' ignore list for SD2 (CLIPTextModel has none)
    # transformers >= 5.6: CLIPTextModel keys have no "text_model." prefix (diffusers strips it the same way)
    back["text_encoder"] = {k.removeprefix("text_model."): v for k, v in te.items()}
    if family == "sdxl":
        back["text_encoder_2"] = convert_open_clip_checkpoint(models["text_encoder_2"], orig,
                                                              prefix=ol.SDXL_OPENCLIP_PREFIX)
    return back


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_exact(family):
    models = cf.tiny_models(family, seed=3)
    ref = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in models.items()}
    orig = ol.pipeline_to_original(family, ref["unet"], ref["vae"], ref["text_encoder"], ref.get("text_encoder_2"))
    back = _forward(family, orig, models)
    for name, model in models.items():
        assert set(back[name]) == set(ref[name]), name
        for key, value in ref[name].items():
            assert back[name][key].shape == value.shape, (name, key)
            assert torch.equal(back[name][key], value), (name, key)
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        model.load_state_dict(back[name], strict=True)
        assert all(torch.equal(v, ref[name][k]) for k, v in model.state_dict().items()), name


def test_original_key_layout_details():
    sds = cf.tiny_state_dicts("sd2")
    orig = ol.pipeline_to_original("sd2", sds["unet"], sds["vae"], sds["text_encoder"], extra_keys=True)
    layers = cf.TINY_CONFIGS["sd2"]["text_encoder"]["num_hidden_layers"]
    p = ol.SD2_OPENCLIP_PREFIX
    # one more resblock than diffusers' encoder, a copy of the last one (own storage, so safetensors can save it)
    extra, last = f"{p}transformer.resblocks.{layers}.", f"{p}transformer.resblocks.{layers - 1}."
    extra_keys = sorted(k for k in orig if k.startswith(extra))
    assert len(extra_keys) == 12
    for k in extra_keys:
        twin = orig[k.replace(extra, last)]
        assert torch.equal(orig[k], twin) and orig[k].data_ptr() != twin.data_ptr()
    hidden = sds["text_encoder"]["embeddings.token_embedding.weight"].shape[1]
    assert orig[f"{last}attn.in_proj_weight"].shape == (3 * hidden, hidden)
    assert torch.equal(orig[f"{p}text_projection"], torch.eye(hidden))
    assert f"{p}logit_scale" in orig and f"{p}positional_embedding" in orig and f"{p}ln_final.weight" in orig
    # VAE attention projections are 1x1 convs; SD2 UNet projections are linear
    assert orig["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    assert orig["first_stage_model.decoder.mid.attn_1.proj_out.weight"].ndim == 4
    assert orig["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2

    zeros = ol.open_clip_to_original(sds["text_encoder"], extra_resblock="zeros")
    assert all(not v.any() for k, v in zeros.items() if k.startswith(extra))

    sds1 = cf.tiny_state_dicts("sd1")
    orig1 = ol.pipeline_to_original("sd1", sds1["unet"], sds1["vae"], sds1["text_encoder"], extra_keys=True)
    assert orig1["cond_stage_model.transformer.text_model.embeddings.position_ids"].tolist() == [list(range(77))]
    assert orig1["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 4  # SD1: conv projections

    sdxl = cf.tiny_state_dicts("sdxl")
    orig_xl = ol.pipeline_to_original("sdxl", sdxl["unet"], sdxl["vae"], sdxl["text_encoder"], sdxl["text_encoder_2"])
    te2 = cf.TINY_CONFIGS["sdxl"]["text_encoder_2"]
    assert orig_xl[f"{ol.SDXL_OPENCLIP_PREFIX}text_projection"].shape == (te2["hidden_size"], te2["projection_dim"])
    assert f"{ol.SDXL_OPENCLIP_PREFIX}transformer.resblocks.{te2['num_hidden_layers']}.ln_1.weight" not in orig_xl
    assert "model.diffusion_model.label_emb.0.0.weight" in orig_xl
    assert "model.diffusion_model.output_blocks.1.2.conv.weight" in orig_xl  # upsampler after an attention


def test_unknown_keys_are_refused():
    sds = cf.tiny_state_dicts("sd1")
    with pytest.raises(ol.LayoutError):
        ol.unet_to_original({**sds["unet"], "mystery.weight": torch.zeros(1)})
    with pytest.raises(ol.LayoutError):
        ol.vae_to_original({**sds["vae"], "encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError):
        ol.pipeline_to_original("sd3", sds["unet"], sds["vae"], sds["text_encoder"])
    with pytest.raises(ValueError):
        ol.pipeline_to_original("sdxl", sds["unet"], sds["vae"], sds["text_encoder"])


@pytest.mark.parametrize("family,fmt", [("sd1", "ckpt"), ("sd2-v", "safetensors"), ("sdxl", "safetensors")])
def test_make_tiny_checkpoint(tmp_path, family, fmt):
    path = cf.make_tiny_checkpoint(tmp_path / f"tiny.{fmt}", family, seed=5, fmt=fmt)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, weights_only=True)["state_dict"]
    sds = cf.tiny_state_dicts(family, seed=5)
    want = ol.pipeline_to_original(family, sds["unet"], sds["vae"], sds["text_encoder"], sds.get("text_encoder_2"))
    assert set(sd) == set(want)
    assert all(v.dtype == torch.float32 and torch.equal(v, want[k]) for k, v in sd.items())
    yaml = path.with_suffix(".yaml")
    if family == "sd2-v":
        assert yaml.read_text() == 'model:\n  params:\n    parameterization: "v"\n'
    else:
        assert not yaml.exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_configs_follow_the_loader_rules(family):
    cfg = cf.TINY_CONFIGS[family]
    unet, templates = cfg["unet"], {p.stem: json.loads(p.read_text()) for p in (cf.CONFIG_DIR / family).glob("*.json")}
    assert set(cfg) == set(templates)
    channels = unet["block_out_channels"]
    if family == "sd1":
        assert unet["attention_head_dim"] == 8 and all(c % 8 == 0 for c in channels)
    else:
        assert unet["attention_head_dim"] == [max(1, c // 64) for c in channels]
        assert unet["use_linear_projection"] is True
    for part in ("text_encoder", "text_encoder_2"):
        if part in cfg:
            te = cfg[part]
            assert te["num_attention_heads"] == max(1, te["hidden_size"] // 64)
            assert te["vocab_size"] == 49408 and te["max_position_embeddings"] == 77
            assert te["hidden_act"] == templates[part]["hidden_act"]
    for part in ("unet", "vae", "scheduler"):  # what the weights cannot tell comes from the templates
        for key in ("sample_size", "scaling_factor", "force_upcast", "prediction_type", "upcast_attention",
                    "_class_name"):
            assert cfg[part].get(key) == templates[part].get(key), (part, key)
    if family == "sdxl":
        te, te2 = cfg["text_encoder"], cfg["text_encoder_2"]
        assert unet["down_block_types"][0] == "DownBlock2D"
        assert unet["cross_attention_dim"] == te["hidden_size"] + te2["hidden_size"]
        assert unet["projection_class_embeddings_input_dim"] == 6 * unet["addition_time_embed_dim"] + te2[
            "projection_dim"]
        assert te["hidden_size"] != te2["hidden_size"]  # else diffusers loads CLIP-L weights into text_encoder_2


def test_tokenizer_ids():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(cf.TOKENIZER_DIR))
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("an astronaut riding a horse on mars").input_ids == [49406, 550, 18376, 6765, 320, 4558, 525, 7496,
                                                                   49407]
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 49407


def test_templates_full_size_on_meta_device():
    """Parameter counts of the shipped templates equal the real models', and their full-size original layout has
    the key counts of the real files (SD1.5 1,131 keys, SDXL base 2,515) and is recognised by diffusers."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(model):
        return sum(p.numel() for p in model.parameters())

    expected = {
        "sd1": {"unet": 859_520_964, "text_encoder": 123_060_480, "keys": 1131, "type": "v1"},
        "sd2": {"unet": 865_910_724, "text_encoder": 340_387_840, "keys": 1228, "type": "v2"},
        "sdxl": {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "keys": 2515,
                 "type": "xl_base"},
    }
    for family, want in expected.items():
        t = {p.stem: json.loads(p.read_text()) for p in (cf.CONFIG_DIR / family).glob("*.json")}
        with init_empty_weights():
            models = {"unet": UNet2DConditionModel.from_config(t["unet"]), "vae": AutoencoderKL.from_config(t["vae"]),
                      "text_encoder": CLIPTextModel(CLIPTextConfig(**t["text_encoder"]))}
            if family == "sdxl":
                models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**t["text_encoder_2"]))
        assert count(models["vae"]) == 83_653_863
        for part, model in models.items():
            if part != "vae":
                assert count(model) == want[part], (family, part)
        sds = {k: m.state_dict() for k, m in models.items()}
        orig = ol.pipeline_to_original(family, sds["unet"], sds["vae"], sds["text_encoder"],
                                       sds.get("text_encoder_2"), extra_keys=True)
        assert len(orig) == want["keys"], family
        assert infer_diffusers_model_type(orig) == want["type"]
    sd2v = json.loads((cf.CONFIG_DIR / "sd2-v" / "unet.json").read_text())
    assert sd2v["sample_size"] == 96
    assert json.loads((cf.CONFIG_DIR / "sd2-v" / "scheduler.json").read_text())["prediction_type"] == "v_prediction"
