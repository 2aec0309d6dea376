"""The checkpoint merger: weighted sum and add difference of 2-3 checkpoints, tensor by tensor.

A1111's recipes, with its names:
- "Weighted sum":    (1 - M) * A + M * B
- "Add difference":  A + M * (B - C)
- "No interpolation": A as it is (to convert it to fp16 or bake a VAE into it)

Memory stays bounded by a few tensors, never whole models: inputs are read one tensor at a time (safetensors
``safe_open``; .ckpt files through torch's memory-mapped weights-only loader), and the output is streamed into a
.safetensors file whose header is computed first from the shapes (``write_streaming``). Everything is checked
before a byte is written: the families must match (SD1.x / SD2.x / SDXL, from the keys) and every merged tensor
must have the same shape in each input (an inpainting model's 9-channel input conv as A merges its first 4
channels with a 4-channel B/C, as A1111 does). The file appears atomically under its final name; an existing file
is never overwritten.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.core.errors import Interrupted, InvalidField, ModelLoadError
from webui.models import families
from webui.models.original_layout import VAE_PREFIX, vae_to_original

MODES = ("Weighted sum", "Add difference", "No interpolation")
UNET_INPUT_CONV = "model.diffusion_model.input_blocks.0.0.weight"
ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
Progress = Callable[[int, int, str], None]     # (tensors done, tensors in all, what is happening)


class MergeError(InvalidField):
    """The inputs cannot be merged as asked (other families, other shapes, a VAE that does not fit)."""


@dataclass
class MergeRequest:
    primary: Path                         # A
    secondary: Path | None = None         # B
    tertiary: Path | None = None          # C (add difference only)
    mode: str = "Weighted sum"
    multiplier: float = 0.3               # M
    half: bool = False                    # write float tensors as fp16
    vae: Path | None = None               # a VAE file to bake in (replaces A's first_stage_model.*)
    discard: str = ""                     # regex: weights whose names match are left out
    metadata: dict[str, str] = field(default_factory=dict)  # extra safetensors metadata (model hashes ...)


class TensorSource:
    """Tensors of one checkpoint file, read one at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._stack = contextlib.ExitStack()
        try:
            if self.path.suffix.lower() == ".safetensors":
                from safetensors import safe_open
                self._st = self._stack.enter_context(safe_open(str(self.path), framework="pt", device="cpu"))
                self._sd = None
                self._keys = list(self._st.keys())
            else:
                from webui.models.loader import read_state_dict  # memory-mapped for zip pickles, never runs code
                self._st = None
                self._sd = read_state_dict(self.path)
                self._keys = list(self._sd)
        except ModelLoadError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable user file is reported by name
            raise ModelLoadError(f"{self.path.name} could not be read: {str(e).strip()[:200]}") from None

    def keys(self) -> list[str]:
        return self._keys

    def has(self, key: str) -> bool:
        if not hasattr(self, "_key_set"):
            self._key_set = set(self._keys)
        return key in self._key_set

    def shape(self, key: str) -> tuple[int, ...]:
        if self._sd is not None:
            return tuple(self._sd[key].shape)
        return tuple(self._st.get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        if self._sd is not None:
            return self._sd[key].dtype
        names = {v: k for k, v in ST_DTYPES.items()}
        return names[self._st.get_slice(key).get_dtype()]

    def get(self, key: str) -> torch.Tensor:
        return self._sd[key] if self._sd is not None else self._st.get_tensor(key)

    def close(self) -> None:
        self._sd = None
        self._stack.close()


def family_of(source: TensorSource) -> families.Family:
    try:
        return families.detect(source.keys())
    except families.UnknownArchitecture as e:
        raise MergeError("primary_model", f"{source.path.name}: {e}") from None


def _vae_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A VAE file's weights in the original layout with the ``first_stage_model.`` prefix (VAE files are small:
    read whole)."""
    from webui.core.errors import StudioError
    from webui.models.loader import read_state_dict
    try:
        sd = read_state_dict(path)
    except StudioError as e:
        raise MergeError("bake_in_vae", str(e)) from None
    sd = {k: v for k, v in sd.items() if not k.startswith(("loss.", "model_ema."))}
    if any(k.startswith(VAE_PREFIX) for k in sd):
        return {k: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    if any(re.match(r"^(vae\.)?(encoder\.down_blocks|decoder\.up_blocks)\.", k) for k in sd):
        plain = {k.removeprefix("vae."): v for k, v in sd.items()}
        try:
            return vae_to_original(plain)
        except ValueError as e:
            raise MergeError("bake_in_vae", f"{path.name} is not a VAE in a known layout: {e}") from None
    return {VAE_PREFIX + k: v for k, v in sd.items()}


@dataclass
class _Plan:
    keys: list[str]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]


def _check(req: MergeRequest, a: TensorSource, b: TensorSource | None, c: TensorSource | None,
           vae: dict[str, torch.Tensor] | None) -> _Plan:
    """Everything that can go wrong, found before anything is written."""
    fam = family_of(a)
    for src, name in ((b, "secondary_model"), (c, "tertiary_model")):
        if src is None:
            continue
        other = family_of(src)
        if other.name != fam.name:
            raise MergeError(name, f"cannot merge {a.path.name} ({fam.label}) with {src.path.name} ({other.label}): "
                                   "checkpoints of one architecture only")
    try:
        discard = re.compile(req.discard) if req.discard.strip() else None
    except re.error as e:
        raise MergeError("discard_weights", f"not a valid regular expression: {e}") from None
    keys = [k for k in a.keys() if not (discard and discard.search(k))]
    shapes, dtypes = {}, {}
    for key in keys:
        shape = a.shape(key)
        shapes[key] = shape
        dtype = a.dtype(key)
        dtypes[key] = torch.float16 if req.half and dtype.is_floating_point else dtype
        if vae is not None and key.startswith(VAE_PREFIX):
            if key not in vae:
                raise MergeError("bake_in_vae", f"{req.vae.name} does not fit {a.path.name}: it has no {key}")
            if tuple(vae[key].shape) != shape:
                raise MergeError("bake_in_vae", f"{req.vae.name} does not fit {a.path.name}: {key} is "
                                                f"{tuple(vae[key].shape)} there and {shape} in the model")
            continue
        if not dtype.is_floating_point:
            continue
        for src, name in ((b, "secondary_model"), (c, "tertiary_model")):
            if src is None or not src.has(key):
                continue
            other = src.shape(key)
            if other != shape and not _inpaint_input(key, shape, other):
                raise MergeError(name, f"{a.path.name} and {src.path.name} have different architectures: {key} is "
                                       f"{shape} in one and {other} in the other")
    return _Plan(keys, shapes, dtypes)


def _inpaint_input(key: str, a_shape: tuple, other: tuple) -> bool:
    """A's UNet input conv with more channels (inpainting: 9, instruct-pix2pix: 8) than B's 4."""
    return (key == UNET_INPUT_CONV and len(a_shape) == 4 and len(other) == 4 and a_shape[1] > other[1]
            and a_shape[:1] + a_shape[2:] == other[:1] + other[2:])


def _merged(req: MergeRequest, key: str, a: TensorSource, b: TensorSource | None, c: TensorSource | None
            ) -> torch.Tensor:
    ta = a.get(key)
    if req.mode == "No interpolation" or not ta.is_floating_point() or not b.has(key):
        return ta
    if req.mode == "Add difference" and not c.has(key):
        return ta
    x = ta.float()
    tb = b.get(key).float()
    tc = c.get(key).float() if req.mode == "Add difference" else None
    m = float(req.multiplier)
    n = tb.shape[1] if tb.shape != x.shape else None   # inpainting input conv: merge the first n channels
    part = x[:, :n] if n else x
    if req.mode == "Weighted sum":
        out = (1.0 - m) * part + m * tb
    else:
        out = part + m * (tb - tc)
    if n:
        x = x.clone()
        x[:, :n] = out
        out = x
    return out


def write_streaming(path: Path, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, torch.dtype],
                    tensors: Iterator[tuple[str, torch.Tensor]], metadata: dict[str, str] | None = None) -> None:
    """A .safetensors file written tensor by tensor: the header (names, dtypes, shapes, offsets) comes first, so
    only the tensor being written is in memory. ``tensors`` must yield the keys in sorted order."""
    order = sorted(shapes)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key in order:
        n = 1
        for d in shapes[key]:
            n *= d
        size = n * torch.empty((), dtype=dtypes[key]).element_size()
        header[key] = {"dtype": ST_DTYPES[dtypes[key]], "shape": list(shapes[key]), "data_offsets": [offset,
                                                                                                    offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for expected, (key, t) in zip(order, tensors):
            if key != expected:
                raise RuntimeError(f"tensors out of order: {key} where {expected} was expected")
            t = t.detach().to("cpu", dtypes[key]).contiguous()
            if tuple(t.shape) != tuple(shapes[key]):
                raise RuntimeError(f"{key}: shape {tuple(t.shape)} where {shapes[key]} was announced")
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _publish(tmp: Path, output: Path) -> None:
    """Give the finished file its name without ever overwriting one (a hard link fails when the name exists)."""
    try:
        os.link(tmp, output)
    except FileExistsError:
        raise InvalidField("custom_name", f"{output.name} already exists; choose another name") from None
    except OSError:             # no hard links on this file system
        if output.exists():
            raise InvalidField("custom_name", f"{output.name} already exists; choose another name") from None
        os.replace(tmp, output)


def output_path(folder: Path, name: str) -> Path:
    """models/Stable-diffusion/<name>.safetensors, checked: a plain file name that does not exist yet."""
    name = (name or "").strip()
    if name.lower().endswith((".safetensors", ".ckpt")):
        name = name.rsplit(".", 1)[0]
    if not name or any(ch in name for ch in '/\\:*?"<>|') or name.startswith("."):
        raise InvalidField("custom_name", f"{name!r} is not a usable file name (no folders, no /\\:*?\"<>|)")
    path = Path(folder) / f"{name}.safetensors"
    if path.exists():
        raise InvalidField("custom_name", f"{path.name} already exists in {folder}; choose another name")
    return path


def default_name(req: MergeRequest) -> str:
    """A1111's naming: primary_M-secondary (weighted sum) or primary_M-secondary-tertiary (add difference)."""
    a = req.primary.stem
    if req.mode == "No interpolation" or req.secondary is None:
        return a
    parts = [a, f"{round(1 - req.multiplier if req.mode == 'Weighted sum' else 1, 2)}",
             req.secondary.stem, f"{round(req.multiplier, 2)}"]
    if req.mode == "Add difference" and req.tertiary is not None:
        parts.append(req.tertiary.stem)
    return "_".join(parts)


def merge_checkpoints(req: MergeRequest, output: Path, progress: Progress | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Path:
    """Merge as ``req`` says and write ``output`` (.safetensors). Raises MergeError / InvalidField before writing
    when the inputs do not fit, Interrupted when ``should_stop`` says so (nothing is left behind)."""
    if req.mode not in MODES:
        raise InvalidField("interp_method", f"unknown merge method {req.mode!r}; valid: {', '.join(MODES)}")
    if req.mode != "No interpolation" and req.secondary is None:
        raise InvalidField("secondary_model", f"{req.mode} needs a secondary model (B)")
    if req.mode == "Add difference" and req.tertiary is None:
        raise InvalidField("tertiary_model", "Add difference needs a tertiary model (C): A + M * (B - C)")
    if not 0.0 <= float(req.multiplier) <= 1.0:
        raise InvalidField("multiplier", f"the multiplier M must be between 0 and 1, got {req.multiplier}")
    output = Path(output)
    if output.exists():
        raise InvalidField("custom_name", f"{output.name} already exists; choose another name")
    report = progress or (lambda done, total, text: None)
    stop = should_stop or (lambda: False)
    sources: list[TensorSource] = []
    try:
        a = TensorSource(req.primary)
        sources.append(a)
        b = c = None
        if req.mode != "No interpolation":
            b = TensorSource(req.secondary)
            sources.append(b)
        if req.mode == "Add difference":
            c = TensorSource(req.tertiary)
            sources.append(c)
        vae = _vae_tensors(req.vae) if req.vae else None
        plan = _check(req, a, b, c, vae)
        total = len(plan.keys)
        report(0, total, "checked: same architecture")

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            for i, key in enumerate(sorted(plan.keys)):
                if stop():
                    raise Interrupted("the merge was interrupted; nothing was saved")
                report(i, total, key)
                if vae is not None and key.startswith(VAE_PREFIX):
                    t = vae[key]
                else:
                    t = _merged(req, key, a, b, c)
                yield key, t

        recipe = {"type": "webui", "primary_model": req.primary.name,
                  "secondary_model": req.secondary.name if b else None,
                  "tertiary_model": req.tertiary.name if c else None, "interp_method": req.mode,
                  "multiplier": req.multiplier, "save_as_half": req.half,
                  "bake_in_vae": req.vae.name if req.vae else None, "discard_weights": req.discard}
        metadata = {"format": "pt", "sd_merge_recipe": json.dumps(recipe), **req.metadata}
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=".merge-", suffix=".tmp")
        os.close(fd)
        try:
            write_streaming(Path(tmp), plan.shapes, plan.dtypes, tensors(), metadata)
            _publish(Path(tmp), output)
            report(total, total, f"saved {output.name}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    finally:
        for s in sources:
            s.close()
    return output
