"""The model manager: the one place that lists, loads, caches and places models (device, precision)."""
from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.config.paths import Paths
from webui.config.settings import Settings
from webui.core.errors import ModelLoadError, NotFound
from webui.models import checkpoints, user_metadata
from webui.models import controlnet as controlnet_lib
from webui.models import embeddings as ti
from webui.models import hypernetworks as hn_lib
from webui.models import lora as lora_lib
from webui.models import upscalers as upscalers_lib
from webui.models import vae as vae_lib
from webui.models.checkpoints import CheckpointInfo
from webui.models.hashes import HashCache
from webui.models.loader import build_pipeline, read_state_dict


@dataclass
class Placement:
    """Where and in what precision models run; decided once from the flags."""

    device: torch.device
    dtype: torch.dtype
    vae_fp32: bool = False
    offload: str | None = None   # None, "model" (--medvram) or "sequential" (--lowvram)

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout convolution weights are kept in: channels-last on a CPU, where oneDNN's convolutions run on
        it without reordering each call (measured on 2 cores: the VAE's decode 15 % faster at 128 px and 22 % at
        512 px, a 128-px txt2img image 2-5 %); elsewhere as loaded, as nothing was measured there."""
        return torch.channels_last if self.device.type == "cpu" else torch.contiguous_format

    @classmethod
    def from_flags(cls, device: str = "auto", precision: str = "autocast", no_half_vae: bool = False,
                   medvram: bool = False, lowvram: bool = False) -> Placement:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else (
                "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
        dev = torch.device(device)
        if dev.type == "cpu" or precision == "full":
            dtype = torch.float32   # half precision on a CPU is slower and less exact
        elif dev.type == "cuda" and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        else:
            dtype = torch.float16
        offload = "sequential" if lowvram else ("model" if medvram else None)
        return cls(dev, dtype, no_half_vae, offload if dev.type != "cpu" else None)


@dataclass
class LoadedModel:
    info: CheckpointInfo
    family: str
    variant: str
    pipe: object
    placement: Placement
    load_seconds: float
    notes: list[str] = field(default_factory=list)
    placed: bool = False
    inpainting: bool = False      # 9-channel UNet: takes the mask and the masked image's latents as input
    compiled_unet: object = None  # torch.compile'd UNet (frozen weights), made on first use; None when not made

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"


class ModelManager:
    def __init__(self, paths: Paths, settings: Settings, placement: Placement):
        self.paths = paths
        self.settings = settings
        self.placement = placement
        self._hashes = HashCache(paths.hash_cache)
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self.checkpoints: list[CheckpointInfo] = []
        self.loras: list[lora_lib.LoraInfo] = []
        self.hypernetworks: list[hn_lib.HypernetworkInfo] = []
        self._hypernetwork_cache: OrderedDict[tuple, hn_lib.Hypernetwork] = OrderedDict()
        self.vaes: list[vae_lib.VaeInfo] = []
        self._embeddings: dict[tuple, tuple[dict, dict]] = {}
        self._vae_cache: dict[tuple, object] = {}
        self.on_model_loaded: list[Callable[[LoadedModel], None]] = []
        self.refresh()
        self.refresh_loras()
        self.refresh_hypernetworks()
        self.refresh_vaes()
        self.controlnets = controlnet_lib.ControlNetStore(paths.controlnets, placement, settings)
        self.upscalers: list[upscalers_lib.UpscalerFile] = []
        self._upscaler_cache: OrderedDict[str, upscalers_lib.LoadedUpscaler] = OrderedDict()
        self.refresh_upscalers()

    # -- listing ---------------------------------------------------------------------------------------------
    def refresh(self) -> list[CheckpointInfo]:
        found = checkpoints.scan(self.paths.checkpoints, self._hashes)
        with self._lock:
            self.checkpoints = found
        return found

    def refresh_loras(self) -> list[lora_lib.LoraInfo]:
        self.loras = lora_lib.scan_loras(self.paths.lora, previous=self.loras)
        return self.loras

    def refresh_hypernetworks(self) -> list[hn_lib.HypernetworkInfo]:
        self.hypernetworks = hn_lib.scan_hypernetworks(self.paths.hypernetworks)
        return self.hypernetworks

    def hypernetwork(self, info: hn_lib.HypernetworkInfo, keep: int = 8) -> hn_lib.Hypernetwork:
        """The file's hypernetwork, read once and kept while the file is unchanged (the last ``keep``)."""
        st = info.path.stat()
        key = (str(info.path), st.st_size, st.st_mtime)
        with self._lock:
            if key in self._hypernetwork_cache:
                self._hypernetwork_cache.move_to_end(key)
                return self._hypernetwork_cache[key]
        net = hn_lib.load_hypernetwork(info)
        with self._lock:
            self._hypernetwork_cache[key] = net
            while len(self._hypernetwork_cache) > keep:
                self._hypernetwork_cache.popitem(last=False)
        return net

    def refresh_vaes(self) -> list[vae_lib.VaeInfo]:
        self.vaes = vae_lib.scan_vaes(self.paths.vae, self.paths.checkpoints, previous=self.vaes)
        with self._lock:
            self._vae_cache.clear()
        return self.vaes

    def refresh_upscalers(self) -> list[upscalers_lib.UpscalerFile]:
        found = upscalers_lib.scan_upscalers(self.paths.upscaler_dirs)
        with self._lock:
            self.upscalers = found
            live = {(f.path, f.mtime) for f in found}
            for name in [n for n, m in self._upscaler_cache.items() if (m.file.path, m.file.mtime) not in live]:
                del self._upscaler_cache[name]
        return found

    def upscaler_names(self) -> list[str]:
        """"None", "Lanczos", "Nearest", then the model upscalers' names."""
        return upscalers_lib.names(self.upscalers)

    def find_upscaler(self, name: str | None) -> upscalers_lib.UpscalerFile | None:
        """The model file of an upscaler name (None for the built-in ones); NotFound names the valid ones."""
        if name in upscalers_lib.BUILTIN_UPSCALERS:
            return None
        for files in (self.upscalers, None):   # a miss rescans the folders once (a file just dropped in)
            files = self.refresh_upscalers() if files is None else files
            exact = [f for f in files if f.name == name]
            folded = [f for f in files if isinstance(name, str) and f.name.lower() == name.lower()]
            if exact or folded:
                return (exact or folded)[0]
        raise NotFound(f"unknown upscaler {name!r}; valid: {', '.join(self.upscaler_names())}")

    def get_upscaler(self, name: str) -> upscalers_lib.LoadedUpscaler:
        """A model upscaler loaded through spandrel, kept loaded until another one is asked for."""
        file = self.find_upscaler(name)
        if file is None:
            raise NotFound(f"{name!r} is not a model upscaler")
        with self._lock:
            loaded = self._upscaler_cache.get(file.name)
            if loaded is not None and loaded.file == file:
                self._upscaler_cache.move_to_end(file.name)
                return loaded
            self._upscaler_cache.clear()
            gc.collect()
            try:
                loaded = upscalers_lib.load_upscaler(file, self.placement.device, self.placement.dtype)
            except ValueError as e:
                raise ModelLoadError(f"upscaler {e}") from None
            self._upscaler_cache[file.name] = loaded
        return loaded

    def refresh_embeddings(self) -> None:
        with self._lock:
            self._embeddings.clear()

    def embeddings(self, model: LoadedModel | None = None) -> tuple[dict, dict]:
        """(loaded by name, skipped name -> reason) for a model's text encoders (the current one by default)."""
        model = model or self.current
        if model is None:
            return {}, {}
        dims = ti.encoder_dims(model.pipe)
        key = tuple(sorted(dims.items()))
        with self._lock:
            if key not in self._embeddings:
                previous = [e for loaded, _ in self._embeddings.values() for e in loaded.values()]
                self._embeddings[key] = ti.scan_embeddings(self.paths.embeddings, dims, previous=previous)
            return self._embeddings[key]

    def vae_names(self) -> list[str]:
        return ["Automatic", "None", *[v.name for v in self.vaes]]

    def check_vae_choice(self, choice: str | None) -> None:
        if choice and choice not in ("Automatic", "None") and vae_lib.find_vae(self.vaes, choice) is None:
            raise NotFound(f"unknown VAE {choice!r}; valid: {', '.join(self.vae_names())}")

    def _named_vae(self, choice: str) -> vae_lib.VaeInfo | None:
        if choice == "None":
            return None
        info = vae_lib.find_vae(self.vaes, choice)
        if info is None:
            raise NotFound(f"unknown VAE {choice!r}; valid: {', '.join(self.vae_names())}")
        return info

    def resolve_vae(self, checkpoint: Path, choice: str | None, overrides: bool = True) -> vae_lib.VaeInfo | None:
        """The VAE file a checkpoint runs with (None: its own VAE), in A1111's order: the sd_vae setting when it
        names one and overrides per-model preferences (setting sd_vae_overrides_per_model_preferences); then the
        checkpoint card's "Preferred VAE" (user metadata "vae"); then a `<checkpoint>.vae.*` file; then the
        setting. An empty choice is "None"."""
        choice = choice or "None"
        if overrides and choice != "Automatic":
            return self._named_vae(choice)
        preferred = str(user_metadata.read(checkpoint).get("vae") or "Automatic")
        if preferred == "None":
            return None
        if preferred != "Automatic" and (found := vae_lib.find_vae(self.vaes, preferred)) is not None:
            return found
        near = vae_lib.vae_near_checkpoint(self.vaes, checkpoint)
        if near is not None or choice == "Automatic":
            return near
        return self._named_vae(choice)

    def vae_for(self, model: LoadedModel, opts: dict):
        """(VaeInfo or None, a loaded VAE to swap in or None) for a job's settings sd_vae and
        sd_vae_overrides_per_model_preferences (see resolve_vae)."""
        info = self.resolve_vae(model.info.filename, opts.get("sd_vae"),
                                bool(opts.get("sd_vae_overrides_per_model_preferences", True)))
        if info is None:
            return None, None
        key = (str(info.path), info.mtime, model.info.name)
        with self._lock:
            vae = self._vae_cache.get(key)
            if vae is None:
                try:
                    vae = vae_lib.load_vae(info.path, model.pipe.vae).to(memory_format=self.placement.memory_format)
                except ValueError as e:
                    raise ModelLoadError(f"VAE {info.name} could not be loaded: {e}") from None
                self._vae_cache.clear()
                self._vae_cache[key] = vae
        return info, vae

    def usable(self) -> list[CheckpointInfo]:
        return [c for c in self.checkpoints if c.error is None]

    def titles(self) -> list[str]:
        return [c.title for c in self.usable()]

    def find(self, query: str | None) -> CheckpointInfo:
        """A checkpoint by title, name, model name or hash; the default one when query is empty."""
        if not query:
            return self.default_checkpoint()
        for c in self.checkpoints:
            if c.matches(query):
                if c.error:
                    raise ModelLoadError(f"checkpoint {c.name} is unusable: {c.error}")
                return c
        valid = ", ".join(self.titles()) or "none (put .safetensors files into models/Stable-diffusion)"
        raise NotFound(f"unknown checkpoint {query!r}; valid: {valid}")

    def default_checkpoint(self) -> CheckpointInfo:
        chosen = self.settings.get("sd_model_checkpoint")
        if chosen:
            for c in self.usable():
                if c.matches(chosen):
                    return c
        usable = self.usable()
        if not usable:
            raise NotFound("no usable checkpoint found in " + ", ".join(str(p) for p in self.paths.checkpoints))
        bundled = [c for c in usable if c.name.startswith("shapes-")]
        return (bundled or usable)[0]

    # -- loading ---------------------------------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        with self._lock:
            return next(reversed(self._cache.values()), None)

    def get(self, query: str | None = None, keep: tuple[str, ...] = ()) -> LoadedModel:
        """The loaded model for a checkpoint (from the cache when it is there); the most recent stays on device.
        ``keep``: checkpoint names the cache keeps beyond its limit (a job's first checkpoint while the job loads
        its refiner), until the next load."""
        info = self.find(query)
        with self._lock:
            model = self._cache.get(info.name)
            if model is not None and model.info.sha256 == info.sha256:
                self._cache.move_to_end(info.name)
                if not model.placed:   # back on the device: the others make room, as when it was loaded
                    self._evict_others_from_device(info.name)
                self._place(model)
                return model
            model = self._load(info)
            self._cache[info.name] = model
            self._trim(keep)
        for listener in self.on_model_loaded:
            listener(model)
        return model

    def _load(self, info: CheckpointInfo) -> LoadedModel:
        start = time.perf_counter()
        sd = read_state_dict(info.filename)
        comps = build_pipeline(info.filename, sd, dtype=torch.float32)
        del sd
        model = LoadedModel(info, comps.family.name, comps.variant, comps.pipe, self.placement,
                            time.perf_counter() - start, inpainting=comps.inpainting)
        self._evict_others_from_device(info.name)
        self._place(model)
        return model

    def _place(self, model: LoadedModel) -> None:
        """Move one model to the run device in its precision (or set up offloading)."""
        p = self.placement
        pipe = model.pipe
        if model.placed:
            return
        for name in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            if module is not None and module.dtype != p.dtype:
                module.to(dtype=p.dtype)
        vae_fp32 = p.vae_fp32 or (p.dtype == torch.float16 and pipe.vae.config.get("force_upcast", False))
        vae_dtype = torch.float32 if vae_fp32 else p.dtype
        if pipe.vae.dtype != vae_dtype:
            pipe.vae.to(dtype=vae_dtype)
        if vae_fp32 and p.dtype != torch.float32:
            model.notes.append("VAE kept in fp32")
        if p.offload == "model":
            pipe.enable_model_cpu_offload(device=p.device)
        elif p.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=p.device)
        else:
            pipe.to(p.device)
            for module in (pipe.unet, pipe.vae):
                module.to(memory_format=p.memory_format)
        model.placed = True

    def compiled_unet(self, model: LoadedModel) -> tuple[torch.nn.Module | None, str]:
        """``model``'s UNet under torch.compile with inductor's freezing (weights folded into the graph, convolution
        weights prepacked on a CPU), made on first use, or (None, why not): not with offloading (--medvram/--lowvram),
        whose hooks move weights between calls, nor without the compiler inductor needs (a C++ compiler on a CPU,
        triton on a GPU). A frozen graph keeps the weights it was made with, so LoRA adapters cached in the model
        are unloaded first (a later LoRA job loads its file again), the caller uses the plain UNet for a job that
        applies a LoRA, and the graph is dropped when the model leaves its device."""
        if self.placement.offload:
            return None, "not with --medvram/--lowvram"
        missing = compiler_missing(self.placement.device)
        if missing:
            return None, missing
        if lora_lib.loaded_adapters(model.pipe):
            lora_lib.unload_loras(model.pipe)
        if model.compiled_unet is None:
            model.compiled_unet = torch.compile(model.pipe.unet, options={"freezing": True})
        return model.compiled_unet, ""

    def _evict_others_from_device(self, keep: str) -> None:
        if self.placement.device.type == "cpu":
            return
        for name, m in self._cache.items():
            if name != keep and m.placed:
                m.pipe.to("cpu")
                m.placed = False
                m.compiled_unet = None
        _free_device_memory()

    def trim(self) -> None:
        """Drop the least recently used checkpoints beyond the setting sd_checkpoints_limit."""
        with self._lock:
            self._trim()

    def _trim(self, keep: tuple[str, ...] = ()) -> None:
        limit = max(1, int(self.settings.get("sd_checkpoints_limit", 1)))
        newest = next(reversed(self._cache), None)
        spare = [n for n in self._cache if n not in keep and n != newest]
        for name in spare[:max(0, len(self._cache) - limit)]:
            del self._cache[name]
        gc.collect()
        _free_device_memory()

    def unload(self) -> None:
        with self._lock:
            self._cache.clear()
        gc.collect()
        _free_device_memory()

    def memory(self) -> dict:
        """RAM and (when present) CUDA memory, shaped like A1111's /sdapi/v1/memory."""
        import os
        ram: dict = {}
        try:
            pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            ram = {"free": avail, "used": pages - avail, "total": pages}
        except (ValueError, OSError, AttributeError):
            pass
        cuda: dict = {"error": "no CUDA device"}
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            stats = torch.cuda.memory_stats()
            cuda = {"system": {"free": free, "used": total - free, "total": total},
                    "active": {"current": stats.get("active_bytes.all.current", 0),
                               "peak": stats.get("active_bytes.all.peak", 0)},
                    "allocated": {"current": stats.get("allocated_bytes.all.current", 0),
                                  "peak": stats.get("allocated_bytes.all.peak", 0)}}
        return {"ram": ram, "cuda": cuda, "loaded": [m.info.title for m in self._cache.values()],
                "controlnets": self.controlnets.loaded(),
                "upscalers": [u.title for u in self._upscaler_cache.values()]}


def compiler_missing(device: torch.device) -> str:
    """Why torch.compile's inductor cannot build kernels for ``device`` here ("" when it can)."""
    import importlib.util
    import os
    import shutil
    if device.type == "cuda":
        return "" if importlib.util.find_spec("triton") else "triton is not installed"
    if device.type != "cpu":
        return f"not on {device.type}"
    names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return "" if any(n and shutil.which(n) for n in names) else "no C++ compiler found (inductor needs one)"


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
