"""Model families (SD1.x, SD2.x, SDXL): detection from state-dict keys, and diffusers configs rebuilt from the
shipped templates plus the shapes in the weights (so tiny, pruned and full-size files of one family load alike).

The attention head count is not stored in the weights, so each family fixes it by its own rule:
SD1 UNets use 8 heads per block; SD2/SDXL UNets and every CLIP text encoder use 64-wide heads.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from webui.config.paths import SHIPPED_CONFIGS

UNET = "model.diffusion_model."


@dataclass(frozen=True)
class Family:
    name: str            # "sd1", "sd2", "sdxl"
    label: str           # shown to users
    marker: str          # a key only this family's files have
    te_prefix: str       # original-layout prefix of the first text encoder
    te_kind: str         # "clip" (HF CLIP layout) or "openclip"
    te2_prefix: str | None = None

    def templates(self, variant: str | None = None) -> dict[str, dict]:
        return load_templates(variant or self.name)


FAMILIES: tuple[Family, ...] = (
    Family("sdxl", "SDXL", "conditioner.embedders.1.model.ln_final.weight",
           "conditioner.embedders.0.transformer.", "clip", "conditioner.embedders.1.model."),
    Family("sd2", "SD2.x", "cond_stage_model.model.ln_final.weight", "cond_stage_model.model.", "openclip"),
    Family("sd1", "SD1.x", "cond_stage_model.transformer.", "cond_stage_model.transformer.", "clip"),
)


class UnknownArchitecture(ValueError):
    pass


def detect(keys: set[str] | list[str]) -> Family:
    """The family of an original-layout state dict, or UnknownArchitecture with what was looked for."""
    keys = set(keys)
    if UNET + "input_blocks.0.0.weight" not in keys:
        raise UnknownArchitecture(
            "not a Stable Diffusion checkpoint: no UNet weights (model.diffusion_model.input_blocks.*) found")
    for fam in FAMILIES:
        if fam.marker in keys or any(k.startswith(fam.marker) for k in keys if fam.marker.endswith(".")):
            return fam
    raise UnknownArchitecture("UNet found but no text encoder of SD1.x (CLIP-L), SD2.x (OpenCLIP-H) "
                              "or SDXL (CLIP-L + OpenCLIP-bigG) was recognised")


# Inpainting checkpoints (sd-v1-5-inpainting, 512-inpainting-ema, SDXL inpainting 0.1) take the noisy latents (4)
# plus the mask (1) and the masked image's latents (4) as UNet input: 9 channels instead of 4.
INPAINT_IN_CHANNELS = 9


def unet_in_channels(sd: dict) -> int:
    """The UNet's input channels, read from the first convolution's weights (original layout)."""
    return int(sd[UNET + "input_blocks.0.0.weight"].shape[1])


def is_inpainting(sd: dict) -> bool:
    """True for an inpainting checkpoint (9-channel UNet input): the weights alone tell, no config needed."""
    return unet_in_channels(sd) == INPAINT_IN_CHANNELS


@cache
def _read_templates(name: str) -> str:
    folder = SHIPPED_CONFIGS / name
    out = {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}
    return json.dumps(out)


def load_templates(name: str) -> dict[str, dict]:
    """Fresh copies of a family's shipped diffusers configs (unet, vae, text_encoder[_2], scheduler)."""
    return json.loads(_read_templates(name))


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {m.group(1) for k in keys if (m := rx.match(k))}
    return len(found)


def unet_config(fam: Family, sd: dict, template: dict, pooled_dim: int | None = None) -> dict:
    keys = [k for k in sd if k.startswith(UNET)]
    k = {key[len(UNET):]: key for key in keys}

    def shape(name):
        return tuple(sd[k[name]].shape)

    n_input = _count(k, r"input_blocks\.(\d+)\.")
    downs = [i for i in range(n_input) if f"input_blocks.{i}.0.op.weight" in k
             or f"input_blocks.{i}.0.op.bias" in k]
    levels = len(downs) + 1
    per_level = (n_input - 1 - len(downs)) // levels
    channels, attn_depth = [], []
    idx = 1
    for _level in range(levels):
        channels.append(shape(f"input_blocks.{idx}.0.out_layers.3.weight")[0])
        attn_depth.append(_count(k, rf"input_blocks\.{idx}\.1\.transformer_blocks\.(\d+)\."))
        idx += per_level + 1
    cfg = dict(template)
    cfg["in_channels"] = shape("input_blocks.0.0.weight")[1]
    cfg["out_channels"] = shape("out.2.weight")[0]
    cfg["block_out_channels"] = channels
    cfg["layers_per_block"] = per_level
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in attn_depth]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(attn_depth)]
    mid_depth = _count(k, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    depths = [d or 1 for d in attn_depth]
    depths[-1] = mid_depth or depths[-1]
    cfg["transformer_layers_per_block"] = depths if len(set(depths)) > 1 else depths[0]
    attn2 = next((name for name in k if name.endswith("attn2.to_k.weight")), None)
    if attn2:
        cfg["cross_attention_dim"] = shape(attn2)[1]
    proj_in = next((name for name in k if name.endswith(".proj_in.weight")), None)
    if proj_in:
        cfg["use_linear_projection"] = len(shape(proj_in)) == 2
    cfg["attention_head_dim"] = 8 if fam.name == "sd1" else [max(1, c // 64) for c in channels]
    cfg.pop("num_attention_heads", None)
    if "label_emb.0.0.weight" in k:
        in_dim = shape("label_emb.0.0.weight")[1]
        cfg["projection_class_embeddings_input_dim"] = in_dim
        if pooled_dim:
            cfg["addition_time_embed_dim"] = (in_dim - pooled_dim) // 6
    return cfg


def vae_config(sd: dict, template: dict) -> dict:
    p = next(pre for pre in ("first_stage_model.", "vae.", "") if pre + "encoder.conv_in.weight" in sd)
    # read from the decoder: every decoder level has layers_per_block + 1 resnets, while an encoder level may have
    # none (layers_per_block 0, as the bundled model's VAE)
    levels = _count(sd, rf"{re.escape(p)}decoder\.up\.(\d+)\.")
    channels = [sd[f"{p}decoder.up.{i}.block.0.conv2.weight"].shape[0] for i in range(levels)]
    cfg = dict(template)
    cfg["block_out_channels"] = channels
    cfg["layers_per_block"] = _count(sd, rf"{re.escape(p)}decoder\.up\.0\.block\.(\d+)\.") - 1
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * levels
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * levels
    cfg["latent_channels"] = sd[f"{p}post_quant_conv.weight"].shape[0]
    cfg["in_channels"] = sd[f"{p}encoder.conv_in.weight"].shape[1]
    cfg["out_channels"] = sd[f"{p}decoder.conv_out.weight"].shape[0]
    return cfg


def text_config(sd: dict, prefix: str, kind: str, template: dict, drop_last: bool = False) -> dict:
    """CLIPTextConfig dict for the encoder under prefix; drop_last for SD2 (which uses the penultimate layer)."""
    cfg = dict(template)
    if kind == "clip":
        base = prefix + ("text_model." if prefix + "text_model.embeddings.token_embedding.weight" in sd else "")
        emb = sd[base + "embeddings.token_embedding.weight"]
        pos = sd[base + "embeddings.position_embedding.weight"]
        layers = _count(sd, rf"{re.escape(base)}encoder\.layers\.(\d+)\.")
        inter = sd[base + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    else:
        emb = sd[prefix + "token_embedding.weight"]
        pos = sd[prefix + "positional_embedding"]
        layers = _count(sd, rf"{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
        inter = sd[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        if prefix + "text_projection" in sd and "projection_dim" in cfg:
            cfg["projection_dim"] = sd[prefix + "text_projection"].shape[1]
    hidden = emb.shape[1]
    cfg.update(vocab_size=emb.shape[0], hidden_size=hidden, intermediate_size=inter,
               max_position_embeddings=pos.shape[0], num_attention_heads=max(1, hidden // 64),
               num_hidden_layers=layers - 1 if drop_last else layers)
    return cfg
