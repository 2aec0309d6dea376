"""VAE files (models/VAE, and NAME.vae.* beside checkpoints): listing, loading and swapping into a pipeline.

Listing follows A1111's sd_vae: every .safetensors / .pt / .ckpt under models/VAE (sub-folders too), plus files
named ``*.vae.safetensors`` / ``*.vae.pt`` / ``*.vae.ckpt`` under the checkpoint folders. A VAE is named by its
file name with the extension (``vae-ft-mse-840000-ema-pruned.safetensors``): that is the value of the ``sd_vae``
setting and of the infotext's "VAE"; "VAE hash" is the sha256 of the whole file, first 10 hex digits. When two
files share a name the one in models/VAE wins (as in A1111, where it is listed last and overrides).

A file may hold the VAE in the original (CompVis) layout, with or without the ``first_stage_model.`` prefix (so a
whole checkpoint works too), or in diffusers' layout. It is loaded into a new AutoencoderKL built from the config
of the model's current VAE, so the model's scaling factor is kept (as A1111 does: only the weights change). A file
whose weights do not fit that architecture is refused with a ValueError naming it.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.models.hashes import file_sha256

VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
_IGNORED = ("loss.", "model_ema.")


@dataclass
class VaeInfo:
    name: str                  # file name with extension: the setting's value and the infotext's "VAE"
    path: Path                 # absolute path
    rel: str                   # path relative to its folder, "/"-separated
    size: int = 0
    mtime: float = 0.0
    _sha256: str | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    @property
    def shorthash(self) -> str:
        """The infotext's "VAE hash"."""
        return self.sha256[:10]

    def api_item(self) -> dict:
        """An item of GET /sdapi/v1/sd-vae."""
        return {"model_name": self.name, "filename": str(self.path)}


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _is_vae_beside_checkpoint(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(f".vae{s}") for s in VAE_SUFFIXES)


def scan_vaes(folder: Path, checkpoint_dirs: Iterable[Path] = (), previous: Sequence[VaeInfo] = ()) -> list[VaeInfo]:
    """VAE files in ``folder`` and ``*.vae.*`` files in ``checkpoint_dirs``, in natural name order. Hashes of
    ``previous`` (an earlier scan) are kept for unchanged files."""
    known = {str(v.path): v for v in previous}
    found: dict[str, VaeInfo] = {}
    sources = [(Path(folder), lambda p: True)] + [(Path(d), _is_vae_beside_checkpoint) for d in checkpoint_dirs]
    for root, accept in sources:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() not in VAE_SUFFIXES or not path.is_file() or not accept(path):
                continue
            st = path.stat()
            if st.st_size == 0 or path.name in found:
                continue
            info = VaeInfo(path.name, path.resolve(), path.relative_to(root).as_posix(), st.st_size, st.st_mtime)
            old = known.get(str(info.path))
            if old is not None and (old.size, old.mtime) == (info.size, info.mtime):
                info._sha256 = old._sha256
            found[path.name] = info
    return sorted(found.values(), key=lambda v: _natural_key(v.name))


def find_vae(vaes: Sequence[VaeInfo], name: str) -> VaeInfo | None:
    """A VAE by file name (the setting's value), by name without extension or by relative path; exact
    matches first, then case-insensitive ones. None when unknown (also for "Automatic" / "None")."""
    name = name.strip()
    if not name:
        return None
    for fold in (False, True):
        def norm(s: str, fold: bool = fold) -> str:
            return s.lower() if fold else s
        q = norm(name)
        for keyf in (lambda v: v.name, lambda v: v.path.stem, lambda v: v.rel):
            for v in vaes:
                if norm(keyf(v)) == q:
                    return v
    return None


def vae_near_checkpoint(vaes: Sequence[VaeInfo], checkpoint: Path) -> VaeInfo | None:
    """The VAE meant for a checkpoint (the "Automatic" choice): ``<checkpoint stem>.vae.<ext>`` beside it, else
    a listed VAE whose file name starts with ``<checkpoint stem>.``. A1111 matches any name starting with the
    stem; requiring the dot keeps "sd" from picking "sdxl_vae.safetensors"."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.name.rsplit(".", 1)[0]
    beside = [v for v in vaes if v.path.parent == checkpoint.resolve().parent and
              v.name.lower().startswith(f"{stem.lower()}.vae.")]
    if beside:
        return beside[0]
    return next((v for v in vaes if v.name.startswith(f"{stem}.")), None)


# ------------------------------------------------------------------------------------------------- loading

def vae_state_dict(sd: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A VAE's weights in diffusers' AutoencoderKL layout, from the original layout (with or without the
    ``first_stage_model.`` / ``vae.`` prefix: a whole checkpoint works) or from diffusers' own layout."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    sd = {k: v for k, v in sd.items() if not k.startswith(_IGNORED)}
    diffusers_keys = [k for k in sd if re.match(r"^(vae\.)?(encoder\.down_blocks|decoder\.up_blocks)\.", k)]
    if diffusers_keys:
        prefix = "vae." if diffusers_keys[0].startswith("vae.") else ""
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return convert_ldm_vae_checkpoint(sd, dict(config))


def load_vae(path: Path, like, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
    """An AutoencoderKL with ``like``'s config and the weights of the file at ``path``, in ``dtype`` on
    ``device`` (default: those of ``like``). Raises ValueError naming the file when it is unreadable, refused
    (a pickle that would run code) or not a VAE of that architecture."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    from webui.core.errors import StudioError
    from webui.models.loader import read_state_dict

    path = Path(path)
    dtype = dtype or like.dtype
    device = torch.device(device) if device is not None else like.device
    try:
        raw = read_state_dict(path)
    except StudioError as e:
        raise ValueError(f"VAE {path.name}: {e}") from None
    try:
        sd = vae_state_dict(raw, like.config)
    except (KeyError, IndexError, RuntimeError, ValueError) as e:
        raise ValueError(f"VAE {path.name} is not a VAE in a known layout ({type(e).__name__}: {e})") from None
    del raw
    with init_empty_weights():
        vae = AutoencoderKL.from_config(like.config)
    expected = vae.state_dict()
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ValueError(f"VAE {path.name} does not fit the model's VAE: {len(missing)} of {len(expected)} weights "
                         f"missing (e.g. {', '.join(missing[:3])})")
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(t.shape)}" for k, t in expected.items() if sd[k].shape != t.shape]
    if wrong:
        raise ValueError(f"VAE {path.name} does not fit the model's VAE: {len(wrong)} weights have other shapes "
                         f"(e.g. {'; '.join(wrong[:2])})")
    weights = {k: sd[k].to(device=device, dtype=dtype if sd[k].is_floating_point() else sd[k].dtype)
               for k in expected}
    vae.load_state_dict(weights, strict=True, assign=True)
    return vae.eval().requires_grad_(False)


@contextlib.contextmanager
def swap_vae(pipe, vae) -> Iterator[object]:
    """Use ``vae`` as ``pipe.vae`` inside the block and put the original back on exit (also on errors).
    ``vae=None`` (or the pipeline's own VAE) changes nothing. The VAE must already be where the pipeline's VAE
    runs (same device); load it with :func:`load_vae` (which defaults to the current VAE's device and dtype)."""
    original = pipe.vae
    if vae is None or vae is original:
        yield original
        return
    if vae.device != original.device:
        raise ValueError(f"the VAE is on {vae.device} but the pipeline's VAE runs on {original.device}")
    pipe.vae = vae
    try:
        yield vae
    finally:
        pipe.vae = original
