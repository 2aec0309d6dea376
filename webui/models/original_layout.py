"""diffusers/transformers state dicts -> the original single-file layout (CompVis / Stability / A1111).

This is the exact inverse of diffusers' single-file converters in ``diffusers.loaders.single_file_utils``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint`` and
``convert_open_clip_checkpoint``. Writing a diffusers model with :func:`pipeline_to_original` and reading the file
back with those converters gives the same tensors (tests/test_original_layout.py checks this for every family).

Layout of an original checkpoint, by family:

======  ==============================================  ==================================================
part    key prefix                                      notes
======  ==============================================  ==================================================
UNet    ``model.diffusion_model.``                      input_blocks / middle_block / output_blocks
VAE     ``first_stage_model.``                          mid-block attention q/k/v/proj_out are 1x1 convs
SD1     ``cond_stage_model.transformer.text_model.``    HF CLIP layout (transformers < 5.6 key names)
SD2     ``cond_stage_model.model.``                     OpenCLIP: fused in_proj, transposed text_projection,
                                                        one more resblock than diffusers' 23-layer encoder
SDXL    ``conditioner.embedders.0.transformer.text_model.``  CLIP-L, HF layout
SDXL    ``conditioner.embedders.1.model.``              OpenCLIP bigG with its text_projection
======  ==============================================  ==================================================

Used to write test checkpoints, the bundled model and merged models; the studio reads checkpoints with diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

Tensor = torch.Tensor
StateDict = Mapping[str, Tensor]

FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

# ---------------------------------------------------------------------------------------------------------- UNet

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL "text_time" (and class_embed_type timestep/projection)
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "class_embedding": "label_emb",  # num_class_embeds (the x4 upscaler)
}

# Inside a ResBlock: diffusers name -> original name.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


class LayoutError(ValueError):
    """A state dict has keys this converter does not know (so writing it would silently drop weights)."""


def _split_param(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def _unet_resnet_key(rest: str) -> str:
    """'norm1.weight' -> 'in_layers.0.weight' (rest is the key inside one diffusers ResnetBlock2D)."""
    module, param = _split_param(rest)
    if module not in _UNET_RESNET:
        raise LayoutError(f"unknown UNet resnet parameter {rest!r}")
    return f"{_UNET_RESNET[module]}.{param}"


def _unet_layers_per_block(keys: list[str]) -> int:
    """layers_per_block from the down blocks' resnets (diffusers' forward converter assumes it is uniform)."""
    counts: dict[int, set[int]] = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] == "down_blocks" and parts[2] == "resnets":
            counts.setdefault(int(parts[1]), set()).add(int(parts[3]))
    if not counts:
        raise LayoutError("UNet state dict has no down_blocks.*.resnets.* keys")
    sizes = {len(v) for v in counts.values()}
    if len(sizes) != 1:
        raise LayoutError(f"UNet blocks have different numbers of resnets {sorted(sizes)}: not representable")
    return sizes.pop()


def unet_key_map(keys: list[str] | tuple[str, ...]) -> dict[str, str]:
    """diffusers UNet2DConditionModel key -> original key (without the ``model.diffusion_model.`` prefix)."""
    keys = list(keys)
    lpb = _unet_layers_per_block(keys)
    up_with_attention = {int(k.split(".")[1]) for k in keys if k.startswith("up_blocks.") and ".attentions." in k}
    out: dict[str, str] = {}
    for key in keys:
        module, param = _split_param(key)
        parts = key.split(".")
        if module in _UNET_TOP:
            out[key] = f"{_UNET_TOP[module]}.{param}"
        elif parts[0] == "down_blocks":
            block, kind = int(parts[1]), parts[2]
            rest = ".".join(parts[4:])
            if kind == "resnets":
                idx = 1 + block * (lpb + 1) + int(parts[3])
                out[key] = f"input_blocks.{idx}.0.{_unet_resnet_key(rest)}"
            elif kind == "attentions":
                idx = 1 + block * (lpb + 1) + int(parts[3])
                out[key] = f"input_blocks.{idx}.1.{rest}"
            elif kind == "downsamplers" and parts[3] == "0" and rest.startswith("conv."):
                idx = 1 + block * (lpb + 1) + lpb
                out[key] = f"input_blocks.{idx}.0.op.{param}"
            else:
                raise LayoutError(f"unknown UNet key {key!r}")
        elif parts[0] == "mid_block":
            kind, n, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                # forward: middle_block.0 -> resnets.0, middle_block.2 -> resnets.1
                out[key] = f"middle_block.{0 if n == 0 else n + 1}.{_unet_resnet_key(rest)}"
            elif kind == "attentions":
                out[key] = f"middle_block.{n + 1}.{rest}"
            else:
                raise LayoutError(f"unknown UNet key {key!r}")
        elif parts[0] == "up_blocks":
            block, kind = int(parts[1]), parts[2]
            rest = ".".join(parts[4:])
            if kind == "resnets":
                out[key] = f"output_blocks.{block * (lpb + 1) + int(parts[3])}.0.{_unet_resnet_key(rest)}"
            elif kind == "attentions":
                out[key] = f"output_blocks.{block * (lpb + 1) + int(parts[3])}.1.{rest}"
            elif kind == "upsamplers" and parts[3] == "0" and rest.startswith("conv."):
                slot = 2 if block in up_with_attention else 1
                out[key] = f"output_blocks.{block * (lpb + 1) + lpb}.{slot}.conv.{param}"
            else:
                raise LayoutError(f"unknown UNet key {key!r}")
        else:
            raise LayoutError(f"unknown UNet key {key!r}")
    return out


def unet_to_original(unet: StateDict, prefix: str = UNET_PREFIX) -> dict[str, Tensor]:
    """A diffusers UNet2DConditionModel state dict (SD1, SD2, SDXL) in the original layout."""
    mapping = unet_key_map(list(unet))
    return {prefix + mapping[k]: v for k, v in unet.items()}


# ----------------------------------------------------------------------------------------------------------- VAE

_VAE_TOP = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# Mid-block attention: new diffusers names and the pre-0.14 ones (query/key/value/proj_attn).
_VAE_ATTN = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",
}
_VAE_ATTN_LINEAR = {"q", "k", "v", "proj_out"}  # Linear in diffusers, 1x1 Conv2d in the original


def vae_key_map(keys: list[str] | tuple[str, ...]) -> dict[str, str]:
    """diffusers AutoencoderKL key -> original key (without the ``first_stage_model.`` prefix)."""
    keys = list(keys)
    n_up = len({int(k.split(".")[2]) for k in keys if k.startswith("decoder.up_blocks.")})
    out: dict[str, str] = {}
    for key in keys:
        module, param = _split_param(key)
        parts = key.split(".")
        if module in _VAE_TOP:
            out[key] = f"{_VAE_TOP[module]}.{param}"
            continue
        side = parts[0]
        if side not in ("encoder", "decoder"):
            raise LayoutError(f"unknown VAE key {key!r}")
        if parts[1] in ("down_blocks", "up_blocks"):
            block = int(parts[2])
            orig_block = f"down.{block}" if parts[1] == "down_blocks" else f"up.{n_up - 1 - block}"
            kind, n = parts[3], parts[4]
            inner = ".".join(parts[5:-1])
            if kind == "resnets" and inner in _VAE_RESNET:
                out[key] = f"{side}.{orig_block}.block.{n}.{_VAE_RESNET[inner]}.{param}"
            elif kind == "downsamplers" and n == "0" and inner == "conv":
                out[key] = f"{side}.{orig_block}.downsample.conv.{param}"
            elif kind == "upsamplers" and n == "0" and inner == "conv":
                out[key] = f"{side}.{orig_block}.upsample.conv.{param}"
            else:
                raise LayoutError(f"unknown VAE key {key!r}")
        elif parts[1] == "mid_block":
            kind, n = parts[2], int(parts[3])
            inner = ".".join(parts[4:-1])
            if kind == "resnets" and inner in _VAE_RESNET:
                out[key] = f"{side}.mid.block_{n + 1}.{_VAE_RESNET[inner]}.{param}"
            elif kind == "attentions" and n == 0 and inner in _VAE_ATTN:
                out[key] = f"{side}.mid.attn_1.{_VAE_ATTN[inner]}.{param}"
            else:
                raise LayoutError(f"unknown VAE key {key!r}")
        else:
            raise LayoutError(f"unknown VAE key {key!r}")
    return out


def vae_to_original(vae: StateDict, prefix: str = VAE_PREFIX) -> dict[str, Tensor]:
    """A diffusers AutoencoderKL state dict in the original layout (attention projections as 1x1 convs)."""
    mapping = vae_key_map(list(vae))
    out: dict[str, Tensor] = {}
    for key, value in vae.items():
        new = mapping[key]
        module = new.rsplit(".", 2)[-2]
        if ".mid.attn_1." in new and module in _VAE_ATTN_LINEAR and new.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[prefix + new] = value
    return out


# ---------------------------------------------------------------------------------------------- text encoders

def _strip_text_model(sd: StateDict) -> dict[str, Tensor]:
    """Key names without ``text_model.`` (transformers >= 5.6 CLIPTextModel has none; older ones and
    CLIPTextModelWithProjection have it). ``text_projection.weight`` stays as it is."""
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def clip_to_original(text_encoder: StateDict, prefix: str = SD1_CLIP_PREFIX,
                     position_ids: bool = False) -> dict[str, Tensor]:
    """A transformers CLIPTextModel state dict in the HF-CLIP layout SD1 (and SDXL's first encoder) files use:
    ``<prefix>text_model.<key>``. ``position_ids`` adds the ``embeddings.position_ids`` buffer real files carry
    (diffusers ignores it)."""
    sd = _strip_text_model(text_encoder)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key == "text_projection.weight":
            raise LayoutError("a CLIP-L text encoder in the original layout has no text_projection")
        if not key.startswith(("embeddings.", "encoder.layers.", "final_layer_norm.")):
            raise LayoutError(f"unknown CLIP text encoder key {key!r}")
        out[f"{prefix}text_model.{key}"] = value
    if position_ids:
        n = sd["embeddings.position_embedding.weight"].shape[0]
        out[f"{prefix}text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64).unsqueeze(0)
    return out


_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def open_clip_to_original(
    text_encoder: StateDict,
    prefix: str = SD2_OPENCLIP_PREFIX,
    extra_resblock: Literal["copy", "zeros"] | None = None,
    logit_scale: bool = False,
) -> dict[str, Tensor]:
    """A transformers CLIPTextModel(WithProjection) state dict in OpenCLIP's text-tower layout under ``prefix``.

    q/k/v projections are fused into ``attn.in_proj_weight``/``in_proj_bias``; ``text_projection`` is stored
    transposed ([hidden, projection_dim]); when the encoder has none (SD2's CLIPTextModel) an identity
    [hidden, hidden] is written, as OpenCLIP-H's embed_dim equals its width.

    ``extra_resblock``: SD2 files hold all 24 OpenCLIP-H resblocks while diffusers keeps 23 (SD2 conditions on
    the penultimate layer, so the last one is never used). ``"copy"`` appends a copy of the last layer,
    ``"zeros"`` a zero-filled one, ``None`` nothing (SDXL's bigG keeps all its layers).
    ``logit_scale`` adds the scalar real OpenCLIP files carry (diffusers ignores it).
    """
    sd = _strip_text_model(text_encoder)
    out: dict[str, Tensor] = {}
    layers: dict[int, dict[str, Tensor]] = {}
    for key, value in sd.items():
        if key in _OPENCLIP_TOP:
            out[prefix + _OPENCLIP_TOP[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key.startswith("encoder.layers."):
            parts = key.split(".")
            layers.setdefault(int(parts[2]), {})[".".join(parts[3:])] = value
        else:
            raise LayoutError(f"unknown OpenCLIP text encoder key {key!r}")

    hidden = sd["embeddings.token_embedding.weight"].shape[1]
    if prefix + "text_projection" not in out:
        out[prefix + "text_projection"] = torch.eye(hidden, dtype=sd["embeddings.token_embedding.weight"].dtype)

    def resblock(i: int, layer: dict[str, Tensor], fill: str | None = None) -> None:
        base = f"{prefix}transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            qkv = [layer[f"self_attn.{p}_proj.{param}"] for p in ("q", "k", "v")]
            out[base + f"attn.in_proj_{param}"] = torch.cat(qkv, dim=0)
        for key, value in layer.items():
            module, param = _split_param(key)
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                continue
            if module not in _OPENCLIP_LAYER:
                raise LayoutError(f"unknown OpenCLIP layer key {key!r}")
            out[base + f"{_OPENCLIP_LAYER[module]}.{param}"] = value
        if fill == "copy":
            for k in [k for k in out if k.startswith(base)]:
                out[k] = out[k].clone()
        elif fill == "zeros":
            for k in [k for k in out if k.startswith(base)]:
                out[k] = torch.zeros_like(out[k])

    for i in sorted(layers):
        resblock(i, layers[i])
    if extra_resblock is not None:
        if extra_resblock not in ("copy", "zeros"):
            raise ValueError(f"extra_resblock must be 'copy', 'zeros' or None, not {extra_resblock!r}")
        last = max(layers)
        resblock(last + 1, layers[last], fill=extra_resblock)
    if logit_scale:
        out[prefix + "logit_scale"] = torch.tensor(4.6052, dtype=out[prefix + "text_projection"].dtype)
    return out


# --------------------------------------------------------------------------------------------------- pipeline

def pipeline_to_original(
    family: str,
    unet: StateDict,
    vae: StateDict,
    text_encoder: StateDict,
    text_encoder_2: StateDict | None = None,
    *,
    extra_keys: bool = False,
    sd2_extra_resblock: Literal["copy", "zeros"] = "copy",
) -> dict[str, torch.Tensor]:
    """One single-file checkpoint (original layout) from diffusers/transformers state dicts.

    family: ``sd1``, ``sd2``, ``sd2-v`` (same layout as sd2) or ``sdxl`` (needs ``text_encoder_2``, the
    CLIPTextModelWithProjection state dict). ``extra_keys`` also writes keys real files carry that diffusers
    ignores (CLIP ``position_ids``, OpenCLIP ``logit_scale``). ``sd2_extra_resblock`` fills SD2's 24th
    OpenCLIP resblock (see :func:`open_clip_to_original`).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    out = unet_to_original(unet)
    out.update(vae_to_original(vae))
    if family == "sd1":
        out.update(clip_to_original(text_encoder, SD1_CLIP_PREFIX, position_ids=extra_keys))
    elif family in ("sd2", "sd2-v"):
        out.update(open_clip_to_original(text_encoder, SD2_OPENCLIP_PREFIX, extra_resblock=sd2_extra_resblock,
                                         logit_scale=extra_keys))
    else:
        if text_encoder_2 is None:
            raise ValueError("sdxl needs text_encoder_2 (the OpenCLIP bigG CLIPTextModelWithProjection)")
        out.update(clip_to_original(text_encoder, SDXL_CLIP_PREFIX, position_ids=extra_keys))
        out.update(open_clip_to_original(text_encoder_2, SDXL_OPENCLIP_PREFIX, logit_scale=extra_keys))
    if family != "sdxl" and text_encoder_2 is not None:
        raise ValueError(f"{family} has one text encoder; text_encoder_2 was given")
    return out
