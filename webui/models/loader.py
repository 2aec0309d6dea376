"""Offline loading of single-file checkpoints (A1111/CompVis layout) into diffusers pipelines.

Weights are read without executing code (.safetensors, or pickles through torch's weights-only unpickler),
the family is detected from the keys, diffusers configs are rebuilt from the shipped templates and the
weights' shapes, and diffusers' own single-file converters map the keys. Nothing touches the network.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from diffusers.schedulers import EulerDiscreteScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from webui.config.paths import SHIPPED_CONFIGS
from webui.core.errors import ModelLoadError, UnsafeCheckpoint
from webui.models import families
from webui.models.families import Family

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class _ModelCheckpointRecord:
    """Plain data stand-in for the training-callback record old SD1.x .ckpt files carry; never code."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


_ModelCheckpointRecord.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
_ModelCheckpointRecord.__qualname__ = _ModelCheckpointRecord.__name__ = "ModelCheckpoint"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file; pickles never run code (a pickle that tries is refused)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            with torch.serialization.safe_globals([_ModelCheckpointRecord]):
                sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(
            f"{path.name} was refused: it is a pickle that would import or call code while loading "
            f"({_unsafe_reason(e)}). Only plain weights are loaded; get a .safetensors version of it.") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of a user file is reported as unusable
        raise ModelLoadError(f"{path.name} could not be read (truncated or corrupt?): {_first_line(e)}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path.name} holds no state dict")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def check_file(path: Path) -> str | None:
    """A cheap integrity check for the model list: None when the file looks usable, else the reason."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
            if not keys:
                return "the file holds no tensors"
            try:
                families.detect(keys)
            except families.UnknownArchitecture as e:
                return f"architecture not recognised: {e}"
            return None
        if _is_zip(path):
            with zipfile.ZipFile(path) as z:
                z.namelist()
            return None
        with open(path, "rb") as fh:
            head = fh.read(2)
        return None if head[:1] == b"\x80" else "not a safetensors file or a torch pickle"
    except Exception as e:  # noqa: BLE001 - reported as the reason the file is unusable
        return f"unreadable: {_first_line(e)}"


def _unsafe_reason(e: Exception) -> str:
    m = re.search(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+|[Uu]nsupported [^.\n]+)", str(e))
    return m.group(1) if m else _first_line(e)


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


@dataclass
class LoadedComponents:
    family: Family
    variant: str                 # template folder: sd1, sd2, sd2-v, sdxl
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline
    inpainting: bool = False     # a 9-channel UNet (mask + masked-image latents as extra input)


def v_prediction_hint(path: Path, sd: dict) -> bool | None:
    """What the file says about SD2's parameterization: a YAML beside it (A1111's convention, no
    `parameterization: "v"` meaning epsilon) or a `v_pred` key; None when it says nothing."""
    yaml = path.with_suffix(".yaml")
    if yaml.exists():
        return re.search(r"parameterization:\s*[\"']?v[\"']?\s*$", yaml.read_text(errors="replace"), re.M) is not None
    if "v_pred" in sd:
        return True
    return None


@torch.no_grad()
def unet_predicts_v(unet) -> bool:
    """Ask the UNet itself: at the last timestep the input is almost pure noise, so an epsilon model returns
    roughly its input, while a v model returns roughly -x0 (here 0). One small forward pass."""
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(1, unet.config.in_channels, 8, 8, generator=g, dtype=unet.dtype)
    ctx = torch.zeros(1, 77, unet.config.cross_attention_dim, dtype=unet.dtype)
    out = unet(x, torch.tensor([999]), encoder_hidden_states=ctx, return_dict=False)[0]
    x = x[:, :out.shape[1]]   # an inpainting UNet's extra input channels (mask, masked image) are not predicted
    return float((out - x).norm() / x.norm()) > 0.5


@cache
def _tokenizer_json(pad: str) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(SHIPPED_CONFIGS / "tokenizer"), pad_token=pad, local_files_only=True)


def tokenizer(pad: str = "<|endoftext|>") -> CLIPTokenizer:
    """The shipped CLIP tokenizer; SD2 and SDXL's second encoder pad with "!"."""
    return _tokenizer_json(pad)


def _materialise(model: torch.nn.Module, sd: dict, dtype: torch.dtype, what: str) -> torch.nn.Module:
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    result = model.load_state_dict(sd, strict=False, assign=True)
    still_empty = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still_empty:
        raise ModelLoadError(f"the {what} weights are incomplete: {len(still_empty)} tensors missing, "
                             f"e.g. {', '.join(still_empty[:3])}")
    del result
    return model.eval().requires_grad_(False)


def _empty(cls, config):
    from accelerate import init_empty_weights
    with init_empty_weights():
        return cls.from_config(config)


def _text_encoder(sd: dict, fam: Family, prefix: str, kind: str, template: dict, with_projection: bool,
                  dtype: torch.dtype, drop_last: bool) -> torch.nn.Module:
    cfg = families.text_config(sd, prefix, kind, template, drop_last=drop_last)
    config = CLIPTextConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    from accelerate import init_empty_weights
    with init_empty_weights():
        model = cls(config)
    if kind == "clip":
        converted = convert_ldm_clip_checkpoint(sd, remove_prefix=prefix)
    else:
        if drop_last:
            last = cfg["num_hidden_layers"]
            sd = {k: v for k, v in sd.items() if not k.startswith(f"{prefix}transformer.resblocks.{last}.")}
        converted = convert_open_clip_checkpoint(model, sd, prefix=prefix)
    if not hasattr(model, "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    expected = set(model.state_dict().keys())
    converted = {k: v for k, v in converted.items() if k in expected}
    return _materialise(model, converted, dtype, "text encoder")


def build_pipeline(path: Path, sd: dict, dtype: torch.dtype = torch.float32) -> LoadedComponents:
    """A diffusers pipeline on the CPU from an original-layout state dict."""
    try:
        fam = families.detect(sd.keys())
    except families.UnknownArchitecture as e:
        raise ModelLoadError(f"{Path(path).name}: architecture not recognised: {e}") from None
    hint = v_prediction_hint(Path(path), sd) if fam.name == "sd2" else None
    variant = "sd2-v" if hint else fam.name
    t = families.load_templates(variant)
    try:
        pooled = None
        if fam.te2_prefix:
            te2 = _text_encoder(sd, fam, fam.te2_prefix, "openclip", t["text_encoder_2"], True, dtype, False)
            pooled = te2.config.projection_dim
        te = _text_encoder(sd, fam, fam.te_prefix, fam.te_kind, t["text_encoder"], False, dtype,
                           drop_last=fam.name == "sd2")
        ucfg = families.unet_config(fam, sd, t["unet"], pooled_dim=pooled)
        unet = _empty(UNet2DConditionModel, ucfg)
        unet = _materialise(unet, convert_ldm_unet_checkpoint(sd, dict(unet.config)), dtype, "UNet")
        vcfg = families.vae_config(sd, t["vae"])
        vae = _empty(AutoencoderKL, vcfg)
        vae = _materialise(vae, convert_ldm_vae_checkpoint(sd, dict(vae.config)), dtype, "VAE")
    except ModelLoadError:
        raise
    except (KeyError, RuntimeError, ValueError, IndexError) as e:
        raise ModelLoadError(f"{Path(path).name}: the {fam.label} weights do not fit together "
                             f"({type(e).__name__}: {_first_line(e)})") from None
    if fam.name == "sd2" and hint is None and unet_predicts_v(unet):
        variant = "sd2-v"
        t = families.load_templates(variant)
        unet.register_to_config(upcast_attention=True)
        for m in unet.modules():
            if hasattr(m, "upcast_attention"):
                m.upcast_attention = True
    scheduler = EulerDiscreteScheduler.from_config(t["scheduler"])
    if fam.name == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tokenizer(),
                                         tokenizer_2=tokenizer("!"), unet=unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer("!" if fam.name == "sd2"
                                                                                     else "<|endoftext|>"),
                                       unet=unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return LoadedComponents(fam, variant, pipe, inpainting=families.is_inpainting(sd))
