"""LoRA files (kohya-ss / A1111 format) in models/Lora: listing, hashes, and reversible application to a pipeline.

Listing follows A1111's Lora built-in: every .safetensors / .pt / .ckpt under the folder (sub-folders too) is a
LoRA named by its file stem (``models/Lora/styles/ink.safetensors`` is ``<lora:ink:0.8>``); its alias is the
``ss_output_name`` kohya writes into the safetensors metadata. The "Lora hashes" infotext value is
``"name: shorthash, ..."`` where the hash is A1111's: for .safetensors the sha256 of the file body after the
header (kohya's / AutoV3 "addnet" hash, so metadata edits do not change it), for pickles the sha256 of the whole
file; the shorthash is its first 12 hex digits. Hashes are computed lazily (only for LoRAs a job uses) and carried
over between scans while the file's size and mtime are unchanged.

Application goes through diffusers' LoRA loader (peft): a file is loaded once per pipeline as a named adapter and
kept (up to ``keep`` adapters, oldest evicted), so repeated jobs do not read it again. :func:`apply_loras` activates
the requested adapters with separate text-encoder and UNet weights for the duration of a ``with`` block and
disables every adapter on exit; a disabled peft layer runs only its original layer, so a job without LoRA tags
gives bit-for-bit the output it gave before any LoRA was loaded. Weights are never fused into the model.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import struct
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.core.errors import InvalidField
from webui.models.hashes import file_sha256


class LoraMismatch(InvalidField, ValueError):
    """A LoRA named in the prompt that cannot be applied to the loaded model: a 422 on the prompt."""

    def __init__(self, message: str) -> None:
        super().__init__("prompt", message)

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
# Cross-attention width of each family's UNet (the input width of attn2.to_k / to_v): tells a file's family.
_FAMILY_BY_CONTEXT = {768: "SD1", 1024: "SD2", 2048: "SDXL"}
_UNSUPPORTED_KEYS = {  # LyCORIS algorithms that diffusers' loader does not read
    "hada_w1_a": "LoHa", "lokr_w1": "LoKr", "oft_blocks": "OFT", "oft_diag": "OFT", "on_input": "IA3",
    "a1.weight": "GLoRA",
}


# ------------------------------------------------------------------------------------------------- listing

@dataclass
class LoraInfo:
    name: str                      # file stem: what <lora:NAME:w> uses
    path: Path                     # absolute path
    rel: str                       # path relative to the folder, "/"-separated, with suffix
    alias: str                     # metadata "ss_output_name", else the name
    metadata: dict = field(default_factory=dict)   # safetensors header metadata (JSON values decoded)
    size: int = 0
    mtime: float = 0.0
    _sha256: str | None = field(default=None, repr=False)

    @property
    def is_safetensors(self) -> bool:
        return self.path.suffix.lower() == ".safetensors"

    @property
    def sha256(self) -> str:
        """A1111's LoRA hash (see the module docstring); computed on first use."""
        if self._sha256 is None:
            self._sha256 = addnet_hash(self.path) if self.is_safetensors else file_sha256(self.path)
        return self._sha256

    @property
    def shorthash(self) -> str:
        return self.sha256[:12]

    @property
    def sd_version(self) -> str:
        """What kohya's metadata says the LoRA was trained on: "sdxl", "sd2", "sd1" or "unknown" (as A1111)."""
        if str(self.metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
            return "sdxl"
        if str(self.metadata.get("ss_v2", "")) == "True":
            return "sd2"
        return "sd1" if self.metadata else "unknown"

    def api_item(self) -> dict:
        """An item of GET /sdapi/v1/loras."""
        return {"name": self.name, "alias": self.alias, "path": str(self.path), "metadata": self.metadata}


def read_safetensors_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a safetensors header, values that look like JSON objects decoded (as A1111)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return {}
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 1024 * 1024:
            return {}
        header = json.loads(f.read(n) or b"{}")
    meta = header.get("__metadata__") or {}
    out = {}
    for k, v in meta.items():
        if isinstance(v, str) and v[:1] == "{":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v
    return out


def addnet_hash(path: Path, block: int = 1 << 20) -> str:
    """sha256 of a safetensors file without its header (8-byte length + JSON): kohya's / A1111's LoRA hash."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def scan_loras(folder: Path, previous: Sequence[LoraInfo] = ()) -> list[LoraInfo]:
    """Every LoRA file under ``folder`` (sub-folders too), sorted by name. Hashes already computed in
    ``previous`` (an earlier scan) are kept for files whose size and mtime did not change. A safetensors file
    whose header cannot be read is still listed (with empty metadata); loading it will say what is wrong."""
    folder = Path(folder)
    known = {str(i.path): i for i in previous}
    found: list[LoraInfo] = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in LORA_SUFFIXES or not path.is_file():
            continue
        st = path.stat()
        if st.st_size == 0:
            continue
        path = path.resolve()
        metadata: dict = {}
        if path.suffix.lower() == ".safetensors":
            try:
                metadata = read_safetensors_metadata(path)
            except (OSError, ValueError, struct.error):
                metadata = {}
        alias = str(metadata.get("ss_output_name") or path.stem)
        info = LoraInfo(path.stem, path, path.relative_to(folder.resolve()).as_posix(), alias, metadata,
                        st.st_size, st.st_mtime)
        old = known.get(str(path))
        if old is not None and old.size == info.size and old.mtime == info.mtime:
            info._sha256 = old._sha256
        found.append(info)
    found.sort(key=lambda i: (i.name.lower(), i.rel.lower()))
    return found


def sd_version(info: LoraInfo) -> str:
    """A LoRA's SD version as A1111 reads it from the trainer's metadata: "SDXL" (ss_base_model_version sdxl_*),
    "SD2" (ss_v2), "SD1" (other metadata) or "Unknown" (none)."""
    md = info.metadata
    if str(md.get("ss_base_model_version") or "").startswith("sdxl_"):
        return "SDXL"
    if str(md.get("ss_v2")).lower() == "true":
        return "SD2"
    return "SD1" if md else "Unknown"


def find_lora(loras: Sequence[LoraInfo], name: str) -> LoraInfo | None:
    """The LoRA a prompt tag names: by file stem, then by alias (unless several files share it), then by
    relative path (with or without suffix); exact matches before case-insensitive ones. None when unknown."""
    name = name.strip()
    if not name:
        return None
    aliases: dict[str, list[LoraInfo]] = {}
    for i in loras:
        aliases.setdefault(i.alias, []).append(i)
    def same(a: str, b: str, fold: bool) -> bool:
        return a.lower() == b.lower() if fold else a == b

    for fold in (False, True):
        def eq(a: str, b: str, fold: bool = fold) -> bool:
            return same(a, b, fold)
        for i in loras:
            if eq(i.name, name):
                return i
        for i in loras:
            if eq(i.alias, name) and len(aliases[i.alias]) == 1:
                return i
        for i in loras:
            if eq(i.rel, name) or eq(i.rel.rsplit(".", 1)[0], name):
                return i
    return None


def lora_hashes_infotext(used: Sequence[tuple[str, LoraInfo]]) -> str:
    """The "Lora hashes" infotext value: ``"name: shorthash, ..."`` for (name as written in the prompt, info)
    pairs, with ":" and "," removed from names as A1111 does. Empty when nothing was used."""
    parts = []
    seen = set()
    for mentioned, info in used:
        label = mentioned.replace(":", "").replace(",", "")
        if label in seen:
            continue
        seen.add(label)
        parts.append(f"{label}: {info.shorthash}")
    return ", ".join(parts)


_LORA_TAG = re.compile(r"<lora:([^:>]+):")


def relink_loras(prompt: str, hashes: str, loras: Sequence[LoraInfo]) -> str:
    """A pasted prompt with its ``<lora:NAME:`` tags pointed at the local files whose short hashes the infotext's
    "Lora hashes" records, as A1111 does on paste: a LoRA saved here under another name is still found. A tag whose
    name already finds that file, or whose hash is not here, stays as it is."""
    wanted = {}
    for part in (hashes or "").split(","):
        name, sep, shorthash = part.partition(":")
        if sep and name.strip() and shorthash.strip():
            wanted[name.strip()] = shorthash.strip().lower()
    if not wanted:
        return prompt
    by_hash: dict[str, LoraInfo] = {}

    def swap(m: re.Match) -> str:
        shorthash = wanted.get(m.group(1).strip())
        if shorthash is None:
            return m.group(0)
        local = find_lora(loras, m.group(1))
        if local is not None and local.shorthash == shorthash:
            return m.group(0)
        if not by_hash:   # hashing reads every file: only when a name does not find its file
            by_hash.update((i.shorthash, i) for i in loras)
        found = by_hash.get(shorthash)
        return m.group(0) if found is None else f"<lora:{found.name}:"
    return _LORA_TAG.sub(swap, prompt)


# ------------------------------------------------------------------------------------------------- application

@dataclass
class _Adapter:
    name: str
    stamp: tuple[int, float]
    components: tuple[str, ...]       # pipeline components it has layers in ("unet", "text_encoder", ...)
    layers: int


class _PipeLoras:
    """The adapters loaded into one pipeline, oldest first (kept on the pipeline object itself)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.adapters: OrderedDict[str, _Adapter] = OrderedDict()   # by file path


_STATE_ATTR = "_studio_loras"


def _state(pipe) -> _PipeLoras:
    state = pipe.__dict__.get(_STATE_ATTR)
    if state is None:
        state = _PipeLoras()
        object.__setattr__(pipe, _STATE_ATTR, state)
    return state


def loaded_adapters(pipe) -> dict[str, str]:
    """File path -> adapter name of the LoRAs currently cached in ``pipe``."""
    state = pipe.__dict__.get(_STATE_ATTR)
    return {} if state is None else {p: a.name for p, a in state.adapters.items()}


def _adapter_name(info: LoraInfo) -> str:
    digest = hashlib.sha1(f"{info.path}|{info.size}|{info.mtime}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^0-9A-Za-z_]", "_", info.name)[:40]
    return f"lora_{stem}_{digest}"


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence the per-load reports and progress bars of transformers/peft (they list every base weight as
    "missing" when only adapter weights are loaded); restored afterwards."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    verbosity, dverbosity = tlog.get_verbosity(), dlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    dlog.set_verbosity(dlog.CRITICAL)     # diffusers logs a failed load as ERROR before raising; we re-raise
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*peft_config.*")
            warnings.filterwarnings("ignore", message=".*[Aa]dapter .* was active.*")
            yield
    finally:
        tlog.set_verbosity(verbosity)
        dlog.set_verbosity(dverbosity)
        if bars:
            tlog.enable_progress_bar()


def _read_lora(info: LoraInfo) -> dict[str, torch.Tensor]:
    from webui.core.errors import StudioError
    from webui.models.loader import read_state_dict

    try:
        return read_state_dict(info.path)
    except StudioError as e:
        raise LoraMismatch(f"LoRA {info.rel}: {e}") from None


def _check_compatible(sd: dict[str, torch.Tensor], pipe, info: LoraInfo) -> None:
    """Refuse, with a message naming the file, LoRAs that cannot apply to this pipeline's model."""
    if not sd:
        raise LoraMismatch(f"LoRA {info.rel} holds no tensors")
    for marker, kind in _UNSUPPORTED_KEYS.items():
        if any(marker in k for k in sd):
            raise LoraMismatch(f"LoRA {info.rel} is a LyCORIS {kind} network; only LoRA / LoCon files are supported")
    if not any(("lora_down" in k or "lora_A" in k or "lora.down" in k or "lora_B" in k) for k in sd):
        raise LoraMismatch(f"LoRA {info.rel} is not a LoRA file (no lora_down / lora_A weights; "
                         f"first keys: {', '.join(list(sd)[:3])})")
    want = getattr(pipe.unet.config, "cross_attention_dim", None)
    for k, v in sd.items():
        if re.search(r"attn2[._]to_k[._]?(lora_down|lora_A|lora\.down)", k) and v.ndim >= 2:
            got = int(v.shape[1])
            if want is not None and got != want:
                theirs = _FAMILY_BY_CONTEXT.get(got, f"a model with cross-attention width {got}")
                ours = _FAMILY_BY_CONTEXT.get(want, f"cross-attention width {want}")
                raise LoraMismatch(f"LoRA {info.rel} is for {theirs}; the loaded model is {ours} "
                                 f"(cross-attention width {want}), so it cannot be applied")
            break
    sdxl_file = any(k.startswith(("lora_te1_", "lora_te2_")) for k in sd)
    sdxl_model = getattr(pipe, "text_encoder_2", None) is not None
    if sdxl_file and not sdxl_model:
        raise LoraMismatch(f"LoRA {info.rel} is for SDXL (it has lora_te1_/lora_te2_ layers); the loaded model has "
                         "one text encoder, so it cannot be applied")


def _count_layers(module, adapter: str) -> int:
    if module is None:
        return 0
    return sum(1 for m in module.modules() if adapter in getattr(m, "lora_A", {}) or
               adapter in getattr(m, "lora_embedding_A", {}))


def load_lora(pipe, info: LoraInfo, keep: int = 8) -> str:
    """Load ``info`` into ``pipe`` as a disabled adapter (once; later calls return the cached adapter) and
    return its adapter name. Raises LoraMismatch naming the file when it does not fit the model."""
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise RuntimeError("LoRA support needs the peft package (pip install peft)")
    state = _state(pipe)
    key = str(info.path)
    stamp = (info.size, info.mtime)
    with state.lock:
        have = state.adapters.get(key)
        if have is not None and have.stamp == stamp:
            state.adapters.move_to_end(key)
            return have.name
        if have is not None:                      # the file changed on disk: drop the old weights
            _delete(pipe, state, key)
        name = _adapter_name(info)
        sd = _read_lora(info)
        _check_compatible(sd, pipe, info)
        with _quiet_loading():
            try:
                pipe.load_lora_weights(sd, adapter_name=name)
            except (RuntimeError, ValueError, KeyError, IndexError) as e:
                _drop_partial(pipe, name)
                first = str(e).strip().splitlines()
                msg = next((ln.strip() for ln in first if "size mismatch" in ln), first[0] if first else "")
                raise LoraMismatch(f"LoRA {info.rel} does not fit the loaded model: {type(e).__name__}: "
                                 f"{msg[:300]}") from None
            except Exception as e:  # noqa: BLE001 - peft raises its own types (e.g. no matching module)
                _drop_partial(pipe, name)
                raise LoraMismatch(f"LoRA {info.rel} does not fit the loaded model: "
                                 f"{type(e).__name__}: {str(e)[:300]}") from None
        components = tuple(c for c in ("unet", *TEXT_ENCODERS) if _count_layers(getattr(pipe, c, None), name))
        layers = sum(_count_layers(getattr(pipe, c, None), name) for c in components)
        if not layers:
            _drop_partial(pipe, name)
            raise LoraMismatch(f"LoRA {info.rel}: none of its layers match the loaded model")
        _disable_all(pipe)
        state.adapters[key] = _Adapter(name, stamp, components, layers)
        while len(state.adapters) > max(1, keep):
            _delete(pipe, state, next(iter(state.adapters)))
        return name


def _drop_partial(pipe, name: str) -> None:
    present = {a for names in pipe.get_list_adapters().values() for a in names}
    if name in present:
        with _quiet_loading():
            pipe.delete_adapters(name)


def _delete(pipe, state: _PipeLoras, key: str) -> None:
    adapter = state.adapters.pop(key)
    _drop_partial(pipe, adapter.name)


def unload_loras(pipe) -> None:
    """Remove every cached adapter and the peft wrappers from ``pipe`` (e.g. to free memory)."""
    state = pipe.__dict__.get(_STATE_ATTR)
    if state is None:
        return
    with state.lock:
        if state.adapters:
            with _quiet_loading():
                pipe.unload_lora_weights()
        state.adapters.clear()


def _disable_all(pipe) -> None:
    if any(pipe.get_list_adapters().values()):
        pipe.disable_lora()


@contextlib.contextmanager
def apply_loras(pipe, items: Sequence[tuple[LoraInfo, float, float]], keep: int = 8) -> Iterator[list[str]]:
    """Activate LoRAs for the duration of the block: ``items`` are (info, text-encoder weight, UNet weight),
    as ``<lora:name:te:unet>`` gives them (``<lora:name:w>`` is (info, w, w)). A LoRA listed twice keeps its
    last weights. Yields the adapter names. On exit every adapter is disabled, so the next job without LoRA
    tags runs the original layers only. Raises LoraMismatch naming the file for LoRAs that do not fit."""
    merged: OrderedDict[str, tuple[LoraInfo, float, float]] = OrderedDict()
    for info, te_w, unet_w in items:
        merged.pop(str(info.path), None)
        merged[str(info.path)] = (info, float(te_w), float(unet_w))
    if not merged:
        yield []
        return
    state = _state(pipe)
    with state.lock:
        # load all first (a failure leaves nothing enabled), protecting this job's adapters from eviction
        names = [load_lora(pipe, info, keep=max(keep, len(merged))) for info, _, _ in merged.values()]
        weights = []
        for (info, te_w, unet_w) in merged.values():
            parts = state.adapters[str(info.path)].components
            w = {"unet": unet_w} if "unet" in parts else {}
            w.update({te: te_w for te in TEXT_ENCODERS if te in parts})
            weights.append(w)
        try:
            with _quiet_loading():
                pipe.set_adapters(names, adapter_weights=weights)
                pipe.enable_lora()
            yield names
        finally:
            _disable_all(pipe)
