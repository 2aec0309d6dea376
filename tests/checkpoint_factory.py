"""Tiny random-weight Stable Diffusion checkpoints in the original single-file layout, for tests.

    from checkpoint_factory import make_tiny_checkpoint, TINY_CONFIGS   # pytest puts tests/ on sys.path
    path = make_tiny_checkpoint(tmp_path / "tiny-sd1.safetensors", "sd1", seed=0)

Families: ``sd1``, ``sd2``, ``sd2-v`` (same weights layout as sd2, plus ``<name>.yaml`` saying
``parameterization: "v"`` next to the file, A1111's convention), ``sdxl``, and ``sd1-inpainting`` (the sd1
layout with a 9-channel UNet input, as sd-v1-5-inpainting: latents + mask + masked-image latents).

Each tiny model keeps its family's structure (which blocks have attention, linear vs conv projections, SDXL's
"text_time" embedding and two text encoders, SD2's OpenCLIP layout with its extra resblock) and obeys the rules the
studio's loader uses to rebuild configs from weights, because head counts are not stored in the weights:
UNet heads = 8 for sd1 and ``max(1, channels // 64)`` per block for sd2/sdxl; text encoder heads
``max(1, hidden // 64)``. Fields the weights do not tell (scheduler, sample_size, scaling_factor, upcast, ...) come
from the shipped templates in ``webui/models/configs/<family>/``.

Notes for users of these files:
- The tiny VAE has 3 blocks, so it downsamples by 4 (not 8): latents are image_size / 4.
- SDXL's two tiny text encoders have different widths (64 and 128). diffusers' single-file loader picks the CLIP-L
  branch for text_encoder_2 whenever both widths are equal, so equal widths would load the wrong weights.
- The tokenizer is the real CLIP one (vocab 49,408, 77 positions), shipped in ``webui/models/configs/tokenizer``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` puts tests/ on sys.path, not the repository root
    sys.path.insert(0, str(ROOT))

from webui.models.original_layout import pipeline_to_original  # noqa: E402

CONFIG_DIR = ROOT / "webui" / "models" / "configs"
TOKENIZER_DIR = CONFIG_DIR / "tokenizer"
FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl", "sd1-inpainting")
# Families written in another family's single-file layout.
_LAYOUT = {"sd1-inpainting": "sd1"}
SD2_V_YAML = 'model:\n  params:\n    parameterization: "v"\n'


def _template(family: str, part: str) -> dict:
    return json.loads((CONFIG_DIR / family / f"{part}.json").read_text())


def _heads(width: int) -> int:
    return max(1, width // 64)


def _text_config(family: str, part: str, hidden: int, layers: int = 2, projection_dim: int | None = None) -> dict:
    cfg = _template(family, part)
    cfg.update(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
               num_attention_heads=_heads(hidden), max_position_embeddings=77, vocab_size=49408)
    if projection_dim is not None:
        cfg["projection_dim"] = projection_dim
    return cfg


def _vae_config(family: str) -> dict:
    cfg = _template(family, "vae")
    cfg.update(block_out_channels=[32, 64, 64], layers_per_block=1, latent_channels=4, norm_num_groups=32,
               down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3)
    return cfg


def _build_tiny_configs() -> dict[str, dict[str, dict]]:
    configs: dict[str, dict[str, dict]] = {}

    # SD1: conv (1x1) proj_in/out, 8 heads everywhere, attention in all but the last down block.
    unet = _template("sd1", "unet")
    unet.update(block_out_channels=[64, 128], layers_per_block=1, attention_head_dim=8, cross_attention_dim=64,
                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], use_linear_projection=False,
                transformer_layers_per_block=1)
    configs["sd1"] = {"unet": unet, "vae": _vae_config("sd1"), "text_encoder": _text_config("sd1", "text_encoder", 64),
                      "scheduler": _template("sd1", "scheduler")}

    # SD2 (512 epsilon) and SD2-v (768 v-prediction): linear proj_in/out, 64-wide heads, OpenCLIP text encoder.
    for family in ("sd2", "sd2-v"):
        channels = [64, 128, 128]
        unet = _template(family, "unet")
        unet.update(block_out_channels=channels, layers_per_block=1, attention_head_dim=[_heads(c) for c in channels],
                    cross_attention_dim=64, use_linear_projection=True,
                    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                    transformer_layers_per_block=1)
        # projection_dim is unused by CLIPTextModel; the file's text_projection is [hidden, hidden] as in real
        # SD2 files (whose diffusers config says 512), so the tiny config states what the weights show.
        configs[family] = {"unet": unet, "vae": _vae_config(family),
                           "text_encoder": _text_config(family, "text_encoder", 64, projection_dim=64),
                           "scheduler": _template(family, "scheduler")}

    # SDXL: no attention in the first block, per-block transformer depth, "text_time" added embedding,
    # cross-attention over CLIP-L (64) + bigG (128) hidden states, pooled bigG projection (96).
    channels = [64, 128]
    hidden_l, hidden_g, proj_g, time_dim = 64, 128, 96, 16
    unet = _template("sdxl", "unet")
    unet.update(block_out_channels=channels, layers_per_block=1, attention_head_dim=[_heads(c) for c in channels],
                transformer_layers_per_block=[1, 2], cross_attention_dim=hidden_l + hidden_g,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                projection_class_embeddings_input_dim=time_dim * 6 + proj_g)
    configs["sdxl"] = {"unet": unet, "vae": _vae_config("sdxl"),
                       "text_encoder": _text_config("sdxl", "text_encoder", hidden_l),
                       "text_encoder_2": _text_config("sdxl", "text_encoder_2", hidden_g, projection_dim=proj_g),
                       "scheduler": _template("sdxl", "scheduler")}

    # SD1 inpainting: sd1 with 9 UNet input channels (4 noisy latents + 1 mask + 4 masked-image latents).
    configs["sd1-inpainting"] = copy.deepcopy(configs["sd1"])
    configs["sd1-inpainting"]["unet"]["in_channels"] = 9
    return configs


TINY_CONFIGS: dict[str, dict[str, dict]] = _build_tiny_configs()


def tiny_models(family: str, seed: int = 0) -> dict[str, torch.nn.Module]:
    """The tiny diffusers/transformers models of a family (random weights from ``seed``), keyed like a pipeline."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if family not in TINY_CONFIGS:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    cfg = copy.deepcopy(TINY_CONFIGS[family])
    torch.manual_seed(seed)
    models: dict[str, torch.nn.Module] = {
        "unet": UNet2DConditionModel.from_config(cfg["unet"]),
        "vae": AutoencoderKL.from_config(cfg["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
    }
    if "text_encoder_2" in cfg:
        models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"]))
    # Random init leaves norms at 1/0 and some layers at zero; perturb everything so a swapped or dropped
    # tensor cannot go unnoticed in comparisons.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in models.values():
            model.eval()
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return models


def tiny_state_dicts(family: str, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """diffusers/transformers state dicts of the tiny models (the inputs of ``pipeline_to_original``)."""
    return {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
            for name, m in tiny_models(family, seed).items()}


def make_tiny_checkpoint(path, family: str, seed: int = 0, fmt: str = "safetensors",
                         extra_keys: bool = False) -> Path:
    """Write a tiny ``family`` checkpoint in the original single-file layout (fp32) and return its path.

    fmt ``"safetensors"`` (safetensors.torch.save_file) or ``"ckpt"`` (torch.save({"state_dict": sd})).
    For ``sd2-v`` a ``<same name>.yaml`` with ``parameterization: "v"`` is written next to it.
    ``extra_keys`` adds keys real files carry that diffusers ignores (CLIP position_ids, OpenCLIP logit_scale).
    """
    if fmt not in ("safetensors", "ckpt"):
        raise ValueError(f"fmt must be 'safetensors' or 'ckpt', not {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sds = tiny_state_dicts(family, seed)
    sd = pipeline_to_original(_LAYOUT.get(family, family), sds["unet"], sds["vae"], sds["text_encoder"],
                              sds.get("text_encoder_2"), extra_keys=extra_keys)
    sd = {k: v.to(torch.float32).contiguous() if v.is_floating_point() else v.contiguous() for k, v in sd.items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd}, path)
    if family == "sd2-v":
        path.with_suffix(".yaml").write_text(SD2_V_YAML)
    return path
