"""ControlNet models: finding them in models/ControlNet, telling what each file is from its weights, and loading
them offline into diffusers' ControlNetModel.

Three layouts are read: lllyasviel's single files (``control_model.*`` or bare ``input_blocks.* / zero_convs.* /
input_hint_block.*``, the control_v11p_sd15_* files A1111 users download), single files with diffusers keys (most
SDXL ControlNets) and diffusers folders (config.json + weights). The diffusers config is rebuilt from a shipped
template (webui/models/configs/controlnet/) and the shapes in the weights, so tiny and full-size files of one
family load alike; diffusers' own ``convert_controlnet_checkpoint`` maps the keys. Nothing touches the network.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from webui.config.paths import SHIPPED_CONFIGS
from webui.core.errors import ModelLoadError, NotFound

SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
ANNOTATORS_DIR = "annotators"          # models/ControlNet/annotators holds preprocessor weights, not ControlNets
PREFIX = "control_model."
SOFT_DECAY = 0.825                     # sd-webui-controlnet's soft-injection factor per block


@dataclass(frozen=True)
class ControlNetInfo:
    path: Path
    name: str                  # path relative to the folder, "/"-separated
    shorthash: str             # A1111's legacy 8-hex hash (sha256 of 64 KiB at offset 1 MiB)
    kind: str | None = None    # "SD1.x", "SD2.x", "SDXL" when usable
    error: str | None = None   # why the file cannot be used
    mtime: float = 0.0

    @property
    def stem(self) -> str:
        p = Path(self.name)
        return p.name if p.suffix.lower() not in SUFFIXES else p.stem

    @property
    def title(self) -> str:
        """"control_v11p_sd15_canny [d14c016b]": the name the extension lists and writes into infotexts."""
        return f"{self.stem} [{self.shorthash}]"

    def matches(self, query: str) -> bool:
        q = query.strip().lower()
        if not q:
            return False
        names = {self.title, self.stem, self.name, self.path.name, re.sub(r"\s*\[[0-9a-f]+\]$", "", self.title)}
        if q in {n.lower() for n in names}:
            return True
        m = re.fullmatch(r"(.+?)\s*\[([0-9a-f]+)\]", q)   # a title whose hash differs still names the file
        return bool(m) and m.group(1) == self.stem.lower()


def legacy_hash(path: Path) -> str:
    """A1111's old model hash, which sd-webui-controlnet still shows: sha256 of 64 KiB at 1 MiB, 8 hex."""
    target = path / "diffusion_pytorch_model.safetensors" if path.is_dir() else path
    if path.is_dir() and not target.exists():
        target = next(iter(sorted(path.glob("diffusion_pytorch_model*"))), path / "config.json")
    h = hashlib.sha256()
    with open(target, "rb") as f:
        f.seek(0x100000)
        h.update(f.read(0x10000))
    return h.hexdigest()[:8]


# ---------------------------------------------------------------------------------------------- what a file is
def _key_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    from webui.models.loader import read_state_dict
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def classify(keys) -> tuple[str | None, str | None]:
    """(layout, None) for a ControlNet state dict — layout "original" (lllyasviel, keys under control_model.
    or bare) or "diffusers" — or (None, reason) for anything else."""
    keys = set(keys)
    if any(k.startswith(PREFIX + "input_hint_block.") or k.startswith("input_hint_block.") for k in keys):
        return "original", None
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        return "diffusers", None
    if "lora_controlnet" in keys:
        return None, "a Control-LoRA (Stability's control-lora); only full ControlNets are supported"
    if any("lllite" in k for k in keys):
        return None, "a ControlNet-LLLite (kohya); only full ControlNets are supported"
    if any(k.startswith(("adapter.", "body.0.")) for k in keys) or "conv_in.weight" in keys and \
            any(k.startswith("body.") for k in keys):
        return None, "a T2I-Adapter; only ControlNets are supported"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return None, "a Stable Diffusion checkpoint, not a ControlNet (put it into models/Stable-diffusion)"
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or "lora_A" in k for k in keys):
        return None, "a LoRA, not a ControlNet (put it into models/Lora)"
    return None, "not a ControlNet: no input_hint_block (lllyasviel) or controlnet_cond_embedding (diffusers) weights"


def _original_layers_per_block(keys) -> int:
    """Resnets per down level of an original-layout ControlNet: input blocks minus conv_in and downsamplers,
    over the levels (downsamplers + 1)."""
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    downs = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))}
    levels = len(downs) + 1
    return max(1, (len(blocks) - 1 - len(downs)) // levels)


def _hint_indices(keys) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(r"input_hint_block\.(\d+)\.weight$", k))})


def to_diffusers_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original-layout (or diffusers-layout) ControlNet state dict with diffusers' key names."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    layout, reason = classify(sd.keys())
    if layout is None:
        raise ModelLoadError(reason or "not a ControlNet")
    if layout == "diffusers":
        return dict(sd)
    bare = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)} or \
        {k: v for k, v in sd.items() if not k.startswith("model.diffusion_model.")}
    # diffusers' converter expects the hint embedding's last conv at index 14 (four channel steps, as every
    # published ControlNet); a model with fewer steps has it earlier: rename it so the converter finds it.
    hint = _hint_indices(bare)
    if hint and hint[-1] != 14:
        last = hint[-1]
        for leaf in ("weight", "bias"):
            if f"input_hint_block.{last}.{leaf}" in bare:
                bare[f"input_hint_block.14.{leaf}"] = bare.pop(f"input_hint_block.{last}.{leaf}")
    converted = convert_controlnet_checkpoint(bare, {"layers_per_block": _original_layers_per_block(bare)})
    if "label_emb.0.0.weight" in bare:       # SDXL's "text_time" addition embedding
        for a, b in (("linear_1", "0"), ("linear_2", "2")):
            for leaf in ("weight", "bias"):
                converted[f"add_embedding.{a}.{leaf}"] = bare[f"label_emb.0.{b}.{leaf}"]
    return {k: v for k, v in converted.items() if v is not None}


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def config_from_weights(shapes: dict[str, tuple[int, ...]], base_unet_config: dict | None = None) -> tuple[dict, str]:
    """(diffusers ControlNetModel config, family label) from the shapes of a diffusers-keyed state dict.

    Head counts are not in the weights: they follow the families' rule (SD1: 8 heads; SD2/SDXL: 64-wide heads),
    unless the base model's UNet config is given and has the same widths, whose heads are then used."""
    def shape(k: str) -> tuple[int, ...]:
        return shapes[k]

    keys = list(shapes)
    levels = _count(keys, r"down_blocks\.(\d+)\.")
    channels = [shape(f"down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(levels)]
    attn = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in keys) for i in range(levels)]
    text_time = "add_embedding.linear_1.weight" in shapes
    attn2 = next((k for k in keys if k.endswith("attn2.to_k.weight")), None)
    cross = shape(attn2)[1] if attn2 else 768
    proj_in = next((k for k in keys if k.endswith(".proj_in.weight")), None)
    linear = proj_in is not None and len(shape(proj_in)) == 2
    family, template = ("SDXL", "sdxl") if text_time else (("SD2.x", "sd21") if linear else ("SD1.x", "sd15"))
    cfg = json.loads((SHIPPED_CONFIGS / "controlnet" / f"{template}.json").read_text())
    hint_blocks = _count(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    cfg.update(
        in_channels=shape("conv_in.weight")[1],
        conditioning_channels=shape("controlnet_cond_embedding.conv_in.weight")[1],
        conditioning_embedding_out_channels=[shape("controlnet_cond_embedding.conv_in.weight")[0]]
        + [shape(f"controlnet_cond_embedding.blocks.{2 * j + 1}.weight")[0] for j in range(hint_blocks // 2)],
        block_out_channels=channels,
        layers_per_block=_count(keys, r"down_blocks\.0\.resnets\.(\d+)\."),
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        cross_attention_dim=cross,
        use_linear_projection=linear,
        mid_block_type="UNetMidBlock2DCrossAttn" if any(k.startswith("mid_block.attentions.") for k in keys)
        else "UNetMidBlock2D",
    )
    depths = [_count(keys, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.") or 1
              for i in range(levels)]
    cfg["transformer_layers_per_block"] = depths if len(set(depths)) > 1 else depths[0]
    cfg["attention_head_dim"] = 8 if family == "SD1.x" else [max(1, c // 64) for c in channels]
    cfg["num_attention_heads"] = None
    if text_time:
        cfg["projection_class_embeddings_input_dim"] = shape("add_embedding.linear_1.weight")[1]
    else:
        cfg.update(addition_embed_type=None, addition_time_embed_dim=None, projection_class_embeddings_input_dim=None)
    if base_unet_config and list(base_unet_config.get("block_out_channels", ()))[:levels] == channels \
            and base_unet_config.get("cross_attention_dim") == cross:
        for key in ("attention_head_dim", "num_attention_heads", "upcast_attention"):
            if key in base_unet_config:
                value = base_unet_config[key]
                cfg[key] = value[:levels] if isinstance(value, list) else value
        if text_time and base_unet_config.get("addition_time_embed_dim"):
            cfg["addition_time_embed_dim"] = base_unet_config["addition_time_embed_dim"]
    return cfg, family


def family_of(shapes: dict[str, tuple[int, ...]]) -> str:
    """"SD1.x", "SD2.x" or "SDXL" for a diffusers-keyed ControlNet."""
    return config_from_weights(shapes)[1]


def inspect_file(path: Path) -> tuple[str | None, str | None]:
    """(family, None) when the file or folder is a usable ControlNet, else (None, reason)."""
    try:
        if path.is_dir():
            cfg = json.loads((path / "config.json").read_text())
            if cfg.get("_class_name") not in ("ControlNetModel", None):
                return None, f"a diffusers {cfg.get('_class_name')} folder, not a ControlNetModel"
            return ("SDXL" if cfg.get("addition_embed_type") == "text_time" else
                    "SD2.x" if cfg.get("use_linear_projection") else "SD1.x"), None
        shapes = _key_shapes(path)
        if not shapes:
            return None, "the file holds no tensors"
        layout, reason = classify(shapes)
        if layout is None:
            return None, reason
        if layout == "original":
            # map the names only (the converter moves tensors, so shapes ride along as 1-element stand-ins)
            stand_in = {k: torch.empty(0) for k in shapes}
            names = to_diffusers_keys(stand_in)
            inverse = {id(v): k for k, v in stand_in.items()}
            shapes = {k: shapes[inverse[id(v)]] for k, v in names.items() if id(v) in inverse}
        return family_of(shapes), None
    except ModelLoadError as e:
        return None, e.message
    except (OSError, ValueError, KeyError, IndexError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return None, f"unreadable: {first}"


def scan(folders: tuple[Path, ...], previous: list[ControlNetInfo] | None = None) -> list[ControlNetInfo]:
    """Every ControlNet file and diffusers folder under the folders (sub-folders too, not annotators/); files that
    are not usable ControlNets are listed with the reason. A name found in an earlier folder hides a later one's."""
    known = {(str(i.path), i.mtime): i for i in previous or []}
    found: dict[str, ControlNetInfo] = {}
    for folder in folders:
        for info in _scan_folder(folder, known):
            found.setdefault(info.name, info)
    return sorted(found.values(), key=lambda i: i.name.lower())


def _scan_folder(folder: Path, known: dict[tuple[str, float], ControlNetInfo]) -> list[ControlNetInfo]:
    found: list[ControlNetInfo] = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if rel.parts and rel.parts[0] == ANNOTATORS_DIR:
            continue
        is_folder = path.is_dir() and (path / "config.json").exists() and \
            any(path.glob("diffusion_pytorch_model*"))
        if not is_folder and (path.suffix.lower() not in SUFFIXES or not path.is_file()
                              or any((p / "config.json").exists() for p in path.parents if folder in p.parents)):
            continue
        mtime = path.stat().st_mtime
        if (str(path), mtime) in known:
            found.append(known[(str(path), mtime)])
            continue
        kind, error = inspect_file(path)
        try:
            short = legacy_hash(path)
        except OSError:
            short = "00000000"
        found.append(ControlNetInfo(path.resolve(), rel.as_posix(), short, kind, error, mtime))
    return found


# ----------------------------------------------------------------------------------------------------- loading
def load_controlnet(info: ControlNetInfo, base_unet_config: dict | None = None):
    """A diffusers ControlNetModel (fp32, CPU, eval) for a listed ControlNet."""
    from diffusers import ControlNetModel

    if info.error:
        raise ModelLoadError(f"ControlNet {info.name} is unusable: {info.error}")
    if info.path.is_dir():
        try:
            return ControlNetModel.from_pretrained(str(info.path), local_files_only=True).eval()
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"ControlNet {info.name} could not be loaded: {e}") from None
    from accelerate import init_empty_weights

    from webui.models.loader import read_state_dict
    sd = to_diffusers_keys(read_state_dict(info.path))
    cfg, _family = config_from_weights({k: tuple(v.shape) for k, v in sd.items()}, base_unet_config)
    with init_empty_weights():
        model = ControlNetModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    expected = set(model.state_dict())
    missing = sorted(expected - set(sd))
    if missing:
        raise ModelLoadError(f"ControlNet {info.name}: {len(missing)} weights missing, e.g. {', '.join(missing[:3])}")
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items() if k in expected}, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelLoadError(f"ControlNet {info.name}: the weights do not fit together: "
                             f"{str(e).splitlines()[0][:300]}") from None
    return model.eval().requires_grad_(False)


class ControlNetStore:
    """The listing and a small LRU cache of loaded ControlNets (setting control_net_model_cache_size), placed on
    the run device in the run precision; the model manager owns one."""

    def __init__(self, folders: tuple[Path, ...], placement, settings):
        self.folders = folders
        self.placement = placement
        self.settings = settings
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self.items: list[ControlNetInfo] = []
        self.refresh()

    def refresh(self) -> list[ControlNetInfo]:
        found = scan(self.folders, self.items)
        with self._lock:
            self.items = found
            live = {(str(i.path), i.mtime) for i in found}
            for key in [k for k in self._cache if (k[0], k[1]) not in live]:
                del self._cache[key]
        return found

    def usable(self) -> list[ControlNetInfo]:
        return [i for i in self.items if i.error is None]

    def titles(self) -> list[str]:
        return [i.title for i in self.usable()]

    def find(self, query: str) -> ControlNetInfo:
        """A ControlNet by title ("name [hash]"), name, file name or path; NotFound names the valid ones."""
        for info in self.items:
            if info.matches(str(query)):
                if info.error:
                    raise ModelLoadError(f"ControlNet {info.name} is unusable: {info.error}")
                return info
        valid = ", ".join(self.titles()) or "none (put ControlNet .safetensors/.pth files into models/ControlNet)"
        raise NotFound(f"unknown ControlNet model {query!r}; valid: {valid}")

    def get(self, info: ControlNetInfo, base_unet_config: dict | None = None):
        """The loaded model (cached), on the run device in the run precision."""
        sig = json.dumps({k: base_unet_config.get(k) for k in ("attention_head_dim", "num_attention_heads",
                                                               "addition_time_embed_dim", "upcast_attention")}
                         if base_unet_config else {}, sort_keys=True, default=str)
        key = (str(info.path), info.mtime, sig)
        with self._lock:
            model = self._cache.get(key)
            if model is not None:
                self._cache.move_to_end(key)
                return model
            model = load_controlnet(info, base_unet_config)
            if model.dtype != self.placement.dtype:
                model.to(dtype=self.placement.dtype)
            model.to(self.placement.device, memory_format=self.placement.memory_format)
            self._cache[key] = model
            limit = max(1, int(self.settings.get("control_net_model_cache_size", 2) or 2))
            while len(self._cache) > limit:
                self._cache.popitem(last=False)
        return model

    def loaded(self) -> list[str]:
        with self._lock:
            by_path = {str(i.path): i.title for i in self.items}
            return [by_path.get(k[0], k[0]) for k in self._cache]

    def unload(self) -> None:
        with self._lock:
            self._cache.clear()
