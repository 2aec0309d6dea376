"""LoRA files in the kohya-ss / A1111 format for the tiny test pipelines.

    from lora_factory import make_kohya_lora       # pytest puts tests/ on sys.path
    path = make_kohya_lora(tmp_path / "style.safetensors", pipe, rank=4, seed=0)

The file holds what kohya's sd-scripts write and what people download for the A1111 WebUI: for each targeted
layer ``<prefix>.lora_down.weight`` (rank x in), ``<prefix>.lora_up.weight`` (out x rank) and ``<prefix>.alpha``
(a scalar), where ``<prefix>`` is the module path with dots turned into underscores:

- UNet, SD1/SD2: ``lora_unet_`` + diffusers module path
  (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``).
- UNet, SDXL: ``lora_unet_`` + the original (SGM) module path, as kohya's SDXL trainer names them
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``).
- Text encoder: ``lora_te_text_model_encoder_layers_0_self_attn_q_proj`` (SD1/SD2), ``lora_te1_...`` and
  ``lora_te2_...`` for SDXL's two encoders.

Targets are kohya's defaults: every Linear (and 1x1 Conv, SD1's proj_in/proj_out) inside the UNet's transformer
blocks, and the attention and MLP Linears of the text encoders. Up and down are random and nonzero so a LoRA
visibly changes the output. The layer's effective delta is ``multiplier * alpha / rank * up @ down``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from webui.models.original_layout import unet_key_map  # noqa: E402

UNET_TARGETS = ("attentions.",)                       # modules under Transformer2DModel blocks
TE_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
              "mlp.fc1", "mlp.fc2")


def _te_module_path(name: str) -> str:
    """A text-encoder module path in the HF layout kohya uses (``text_model.encoder.layers...``)."""
    return name if name.startswith("text_model.") else f"text_model.{name}"


def _base_modules(model):
    """(name, module) of the model's own layers; when LoRA adapters are loaded (peft wraps a layer as
    ``name.base_layer`` next to ``name.lora_A...``), the wrapped original under its original name."""
    for name, m in model.named_modules():
        parts = name.split(".")
        if any(p.startswith(("lora_", "base_layer")) for p in parts[:-1]) or parts[-1].startswith("lora_"):
            continue
        if parts[-1] == "base_layer":
            name = ".".join(parts[:-1])
        yield name, m


def _unet_modules(unet) -> list[tuple[str, torch.nn.Module]]:
    out = []
    for name, m in _base_modules(unet):
        if not any(t in name for t in UNET_TARGETS):
            continue
        if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)):
            out.append((name, m))
    return out


def _te_modules(te) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in _base_modules(te)
            if isinstance(m, torch.nn.Linear) and name.endswith(TE_TARGETS)]


def _pair(m: torch.nn.Module, rank: int, gen: torch.Generator, scale: float):
    if isinstance(m, torch.nn.Linear):
        fan_in, fan_out = m.in_features, m.out_features
        down = torch.randn(rank, fan_in, generator=gen) / fan_in ** 0.5
        up = torch.randn(fan_out, rank, generator=gen) * (scale / rank ** 0.5)
    else:  # 1x1 conv
        fan_in, fan_out = m.in_channels, m.out_channels
        down = torch.randn(rank, fan_in, 1, 1, generator=gen) / fan_in ** 0.5
        up = torch.randn(fan_out, rank, 1, 1, generator=gen) * (scale / rank ** 0.5)
    return down, up


def kohya_state_dict(pipe, rank: int = 4, seed: int = 0, scale: float = 1.0, include_te: bool = True,
                     include_unet: bool = True, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a kohya-format LoRA for ``pipe``'s layers (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    alpha_t = torch.tensor(float(rank if alpha is None else alpha))
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    sd: dict[str, torch.Tensor] = {}

    def add(prefix: str, m: torch.nn.Module) -> None:
        down, up = _pair(m, rank, gen, scale)
        sd[f"{prefix}.lora_down.weight"] = down.contiguous()
        sd[f"{prefix}.lora_up.weight"] = up.contiguous()
        sd[f"{prefix}.alpha"] = alpha_t.clone()

    if include_unet:
        modules = _unet_modules(pipe.unet)
        if sdxl:  # kohya names SDXL UNet modules by their place in the original (SGM) layout
            keys = [k.replace(".base_layer.", ".") for k in pipe.unet.state_dict() if ".lora_" not in k]
            mapping = unet_key_map(keys)
            for name, m in modules:
                original = mapping[f"{name}.weight"].removesuffix(".weight")
                add("lora_unet_" + original.replace(".", "_"), m)
        else:
            for name, m in modules:
                add("lora_unet_" + name.replace(".", "_"), m)
    if include_te:
        encoders = [("lora_te1_" if sdxl else "lora_te_", pipe.text_encoder)]
        if sdxl:
            encoders.append(("lora_te2_", pipe.text_encoder_2))
        for head, te in encoders:
            for name, m in _te_modules(te):
                add(head + _te_module_path(name).replace(".", "_"), m)
    return sd


def make_kohya_lora(path, pipe, rank: int = 4, seed: int = 0, scale: float = 1.0, include_te: bool = True,
                    include_unet: bool = True, alpha: float | None = None, metadata: dict | None = None,
                    fmt: str = "safetensors") -> Path:
    """Write a kohya-format LoRA for ``pipe`` to ``path`` (.safetensors with kohya-style metadata, or a
    ``torch.save``'d dict for fmt="pt") and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = kohya_state_dict(pipe, rank, seed, scale, include_te, include_unet, alpha)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        sdxl = getattr(pipe, "text_encoder_2", None) is not None
        meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                "ss_network_alpha": str(float(rank if alpha is None else alpha)),
                "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1",
                "ss_tag_frequency": json.dumps({"img": {"tiny": 1}})}
        meta.update(metadata or {})
        save_file(sd, str(path), metadata={k: str(v) for k, v in meta.items()})
    elif fmt == "pt":
        torch.save(sd, path)
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'pt', not {fmt!r}")
    return path


def tiny_pipeline(tmp_dir, family: str = "sd1", seed: int = 0):
    """A tiny random-weight pipeline of ``family`` loaded the way the studio loads checkpoints (a single-file
    checkpoint written by checkpoint_factory, read back through webui.models.loader)."""
    from checkpoint_factory import make_tiny_checkpoint
    from webui.models.loader import build_pipeline, read_state_dict

    path = make_tiny_checkpoint(Path(tmp_dir) / f"tiny-{family}-{seed}.safetensors", family, seed=seed)
    return build_pipeline(path, read_state_dict(path)).pipe
