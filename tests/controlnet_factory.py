"""Random-weight ControlNets for tests, written in lllyasviel's single-file layout (``control_model.*``) as the
control_v11p_sd15_* files are, or with diffusers keys (as most SDXL ControlNet files are).

    from controlnet_factory import make_tiny_controlnet
    path = make_tiny_controlnet(tmp_path / "control_tiny_canny.safetensors", "sd1", seed=0)

A tiny ControlNet is ``ControlNetModel.from_unet`` on the tiny UNet of ``checkpoint_factory`` with hint widths
(16, 32, 32): the tiny VAE downsamples by 4, so the hint embedding must too (two strided convs). Weights are random and
perturbed (zero convolutions included), so every unit visibly changes the UNet's output.
"""
from __future__ import annotations

from pathlib import Path

import torch

from checkpoint_factory import tiny_models

TINY_HINT_CHANNELS = (16, 32, 32)


def _resnet_to_ldm(key: str) -> str:
    return (key.replace("norm1", "in_layers.0").replace("conv1", "in_layers.2").replace("norm2", "out_layers.0")
            .replace("conv2", "out_layers.3").replace("time_emb_proj", "emb_layers.1")
            .replace("conv_shortcut", "skip_connection"))


def controlnet_to_original(cn_sd: dict, layers_per_block: int, prefix: str = "control_model.") -> dict:
    """diffusers ControlNetModel state dict -> lllyasviel's layout (the inverse of diffusers' converter)."""
    n_hint = 1 + max(int(k.split(".")[2]) for k in cn_sd if k.startswith("controlnet_cond_embedding.blocks."))
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": f"input_hint_block.{2 * (n_hint + 1)}",
             "controlnet_mid_block": "middle_block_out.0", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2"}
    out = {}
    for key, value in cn_sd.items():
        parts = key.split(".")
        stem, leaf = ".".join(parts[:-1]), parts[-1]
        if stem in fixed:
            new = f"{fixed[stem]}.{leaf}"
        elif key.startswith("controlnet_cond_embedding.blocks."):
            new = f"input_hint_block.{2 * (int(parts[2]) + 1)}.{leaf}"
        elif key.startswith("controlnet_down_blocks."):
            new = f"zero_convs.{int(parts[1])}.0.{leaf}"
        elif key.startswith("down_blocks."):
            b, kind = int(parts[1]), parts[2]
            base = 1 + b * (layers_per_block + 1)
            rest = ".".join(parts[4:])
            if kind == "resnets":
                new = f"input_blocks.{base + int(parts[3])}.0.{_resnet_to_ldm(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{base + int(parts[3])}.1.{rest}"
            else:   # downsamplers.0.conv
                new = f"input_blocks.{base + layers_per_block}.0.op.{leaf}"
        elif key.startswith("mid_block."):
            kind, i, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = f"middle_block.{2 * i}.{_resnet_to_ldm(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
        else:
            raise KeyError(f"unmapped ControlNet key {key}")
        out[prefix + new] = value
    return out


def tiny_controlnet(family: str = "sd1", seed: int = 0, unet_seed: int | None = None,
                    hint_channels: tuple[int, ...] = TINY_HINT_CHANNELS):
    """A random ControlNetModel shaped after the tiny ``family`` UNet (``unet_seed`` picks its starting copy)."""
    from diffusers import ControlNetModel

    unet = tiny_models(family, unet_seed if unet_seed is not None else seed)["unet"]
    torch.manual_seed(seed)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=hint_channels)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for p in cn.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return cn.eval()


def make_tiny_controlnet(path, family: str = "sd1", seed: int = 0, layout: str = "original", **kw) -> Path:
    """Write a tiny random ControlNet (fp32) and return its path; layout "original" (control_model.*),
    "bare" (original keys without the prefix) or "diffusers" (diffusers keys in one file)."""
    from safetensors.torch import save_file

    cn = tiny_controlnet(family, seed, **kw)
    sd = {k: v.detach().contiguous() for k, v in cn.state_dict().items()}
    if layout in ("original", "bare"):
        sd = controlnet_to_original(sd, cn.config.layers_per_block, "control_model." if layout == "original" else "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def make_cn_data_dir(d: Path) -> Path:
    """A studio data dir with the tiny SD1/SDXL checkpoints, tiny ControlNets in every layout (lllyasviel
    single file, bare keys in a sub-folder, diffusers keys, a diffusers folder) and two files that are not
    ControlNets (a LoRA, a checkpoint), plus an annotators/ folder that must not be listed."""
    from safetensors.torch import save_file

    from checkpoint_factory import make_tiny_checkpoint

    models = Path(d) / "models"
    make_tiny_checkpoint(models / "Stable-diffusion" / "tiny-sd1.safetensors", "sd1", seed=1)
    make_tiny_checkpoint(models / "Stable-diffusion" / "tiny-sdxl.safetensors", "sdxl", seed=3)
    cn = models / "ControlNet"
    make_tiny_controlnet(cn / "control_tiny_canny.safetensors", "sd1", seed=11, unet_seed=1)
    make_tiny_controlnet(cn / "sub" / "control_tiny_depth.safetensors", "sd1", seed=12, unet_seed=1, layout="bare")
    make_tiny_controlnet(cn / "controlnet-tiny-sdxl.safetensors", "sdxl", seed=13, unet_seed=3, layout="diffusers")
    tiny_controlnet("sd1", seed=14, unet_seed=1).save_pretrained(cn / "tiny-diffusers-folder")
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)},
              str(cn / "a-lora.safetensors"))
    make_tiny_checkpoint(cn / "a-checkpoint.safetensors", "sd1", seed=5)
    (cn / "annotators").mkdir(exist_ok=True)
    save_file({"x": torch.zeros(1)}, str(cn / "annotators" / "not-listed.safetensors"))
    return Path(d)
