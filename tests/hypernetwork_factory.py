"""Hypernetwork files as A1111 writes them (``torch.save`` of a dict: per attention width, the state dicts of the
key and value MLPs, and the options that say their layout), built from explicit key names, not from the studio's
own modules, so that a layout the studio reads wrongly fails to load."""
from __future__ import annotations

from pathlib import Path

import torch


def mlp_state(dim: int, layers: list[tuple[int, str, int, int]], generator: torch.Generator | None = None,
              scale: float = 0.05) -> dict:
    """``layers``: (index in the Sequential, "linear" or "norm", in width, out width)."""
    out = {}
    for index, kind, n_in, n_out in layers:
        if kind == "linear":
            out[f"linear.{index}.weight"] = torch.randn(n_out, n_in, generator=generator) * scale
            out[f"linear.{index}.bias"] = torch.randn(n_out, generator=generator) * scale
        else:
            out[f"linear.{index}.weight"] = 1 + torch.randn(n_in, generator=generator) * scale
            out[f"linear.{index}.bias"] = torch.randn(n_in, generator=generator) * scale
    return out


def write(path: Path, layers: dict[int, tuple[dict, dict]], **options) -> Path:
    """``layers``: width -> (key MLP state, value MLP state); ``options``: layer_structure, activation_func,
    is_layer_norm, use_dropout, activate_output, last_layer_dropout ... as A1111 saves them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sd: dict = dict(layers)
    sd.update({"step": 0, "name": path.stem, "sd_checkpoint": None, "sd_checkpoint_name": None,
               "weight_initialization": "Normal", **options})
    torch.save(sd, path)
    return path


def linear_map(dim: int, weight: torch.Tensor, bias: torch.Tensor) -> dict:
    """The state of a one-layer MLP (layer_structure [1, 1], activation "linear"): x -> x + (W x + b) * m."""
    return {"linear.0.weight": weight.reshape(dim, dim).clone(), "linear.0.bias": bias.reshape(dim).clone()}
