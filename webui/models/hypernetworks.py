"""A1111 hypernetworks: ``models/hypernetworks/*.pt``, used with ``<hypernet:NAME:multiplier>`` in a prompt.

A file (A1111's ``torch.save`` of a dict) holds, for each attention width it acts on (int keys: 768, 320, 640,
1280 ...), the state dicts of two small MLPs: one for what the attention's keys are computed from, one for its
values. Each maps its input x to ``x + mlp(x) * multiplier``; where several hypernetworks apply, they chain. A
self-attention's input is its own hidden states, a cross-attention's the prompt's embedding, so a file acts on the
layers whose input width it has a key for. The MLP's layout comes from the file's ``layer_structure`` (widths as
multiples of the input's), ``activation_func`` (after every layer but the last unless ``activate_output``),
``is_layer_norm`` and ``use_dropout`` (dropout layers take places in the Sequential, so the keys' indices count them).

Applying one is a forward pre-hook on each attention's ``to_k`` and ``to_v``: it changes their input whatever the
attention processor (SDPA, a LoRA's wrapped linears) and goes when the job ends.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.core.errors import ModelLoadError
from webui.models.hashes import file_sha256
from webui.models.torch_files import save_atomic

ACTIVATIONS = {"linear": None, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
                "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
                "softsign": torch.nn.Softsign, "mish": torch.nn.Mish, "gelu": torch.nn.GELU,
                "silu": torch.nn.SiLU, "hardswish": torch.nn.Hardswish, "selu": torch.nn.SELU}
# the names of A1111's first files ("linear1", "linear2": two linears, nothing between)
_OLD_KEYS = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
             "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


@dataclass
class HypernetworkInfo:
    name: str          # file stem: what <hypernet:NAME:m> uses
    path: Path
    _sha256: str | None = field(default=None, repr=False)

    @property
    def shorthash(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256[:10]

    def api_item(self) -> dict:
        """An item of GET /sdapi/v1/hypernetworks."""
        return {"name": self.name, "path": str(self.path)}


def scan_hypernetworks(folder: Path) -> list[HypernetworkInfo]:
    """Every ``.pt`` under ``folder`` (sub-folders too), by name; "None" is not a name (A1111 skips it)."""
    if not folder.is_dir():
        return []
    found = [HypernetworkInfo(p.stem, p) for p in folder.rglob("*.pt") if p.is_file() and p.stem != "None"]
    return sorted(found, key=lambda i: i.name.lower())


def find_hypernetwork(items: Sequence[HypernetworkInfo], name: str) -> HypernetworkInfo | None:
    """By name; else, as A1111, the shortest name containing it (case-insensitive)."""
    for i in items:
        if i.name == name:
            return i
    low = name.lower()
    close = sorted((i for i in items if low and low in i.name.lower()), key=lambda i: len(i.name))
    return close[0] if close else None


class HypernetworkModule(torch.nn.Module):
    """One MLP of a hypernetwork, laid out as A1111's files name its layers."""

    def __init__(self, dim: int, structure: Sequence[float], activation: str | None, layer_norm: bool,
                 dropout: bool, activate_output: bool, last_layer_dropout: bool):
        super().__init__()
        layers: list[torch.nn.Module] = []
        n = len(structure)
        for i in range(n - 1):
            layers.append(torch.nn.Linear(int(dim * structure[i]), int(dim * structure[i + 1])))
            last = i >= n - 2
            if activation not in (None, "linear") and (not last or activate_output):
                layers.append(ACTIVATIONS[activation]())
            if layer_norm:
                layers.append(torch.nn.LayerNorm(int(dim * structure[i + 1])))
            if dropout and (i < n - 3 or (last_layer_dropout and i < n - 2)):
                layers.append(torch.nn.Dropout(p=0.3))   # inactive at inference, but it holds an index
        self.linear = torch.nn.Sequential(*layers)
        self.multiplier = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x) * self.multiplier


@dataclass
class Hypernetwork:
    name: str
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]]
    options: dict = field(default_factory=dict)   # the layout keys A1111 saves (layer_structure, ...)
    step: int = 0

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for pair in self.layers.values() for m in pair for p in m.parameters()]

    def set_multiplier(self, multiplier: float) -> None:
        for pair in self.layers.values():
            for module in pair:
                module.multiplier = multiplier


def load_hypernetwork(info: HypernetworkInfo) -> Hypernetwork:
    """Read an A1111 hypernetwork file (tensors, numbers and strings only: no code runs). ModelLoadError (422)
    when it is not one."""
    try:
        sd = torch.load(info.path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"hypernetwork {info.name}: cannot read {info.path.name} ({e})") from None
    if not isinstance(sd, dict):
        raise ModelLoadError(f"hypernetwork {info.name}: {info.path.name} does not hold a hypernetwork")
    structure = sd.get("layer_structure") or [1, 2, 1]
    activation = sd.get("activation_func")
    if activation is not None and activation not in ACTIVATIONS:
        raise ModelLoadError(f"hypernetwork {info.name}: unsupported activation function {activation!r}")
    options = _module_options(structure, activation, bool(sd.get("is_layer_norm", False)),
                              bool(sd.get("use_dropout", False)), bool(sd.get("activate_output", True)),
                              bool(sd.get("last_layer_dropout", False)))
    layers = {}
    for size, pair in sd.items():
        if not isinstance(size, int):
            continue
        modules = []
        for state in pair[:2]:
            module = HypernetworkModule(size, **options)
            state = {_OLD_KEYS.get(k, k): v for k, v in state.items()}
            try:
                module.load_state_dict(state)
            except RuntimeError as e:
                raise ModelLoadError(f"hypernetwork {info.name}: its layers for width {size} do not match its "
                                  f"layer_structure {structure} ({str(e).splitlines()[0]})") from None
            modules.append(module.eval().requires_grad_(False))
        layers[size] = (modules[0], modules[1])
    if not layers:
        raise ModelLoadError(f"hypernetwork {info.name}: {info.path.name} holds no layers")
    saved = {k: sd.get(k) for k in _SAVED_KEYS if k in sd}
    return Hypernetwork(info.name, layers, {**saved, "layer_structure": structure, "activation_func": activation},
                        int(sd.get("step") or 0))


# the keys besides the layers that A1111 writes into a hypernetwork file
_SAVED_KEYS = ("layer_structure", "activation_func", "is_layer_norm", "weight_initialization", "use_dropout",
               "activate_output", "last_layer_dropout", "sd_checkpoint", "sd_checkpoint_name")
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")


def _module_options(structure, activation, layer_norm: bool, dropout: bool, activate_output: bool,
                    last_layer_dropout: bool) -> dict:
    return dict(structure=structure, activation=activation, layer_norm=layer_norm, dropout=dropout,
                activate_output=activate_output, last_layer_dropout=last_layer_dropout)


def parse_structure(value) -> list[float]:
    """A layer structure from "1, 2, 1" or a list; it must start and end with 1 (A1111's rule). ValueError."""
    items = [x for x in value.split(",") if x.strip()] if isinstance(value, str) else list(value)
    structure = [float(x) for x in items]
    if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1 or min(structure) <= 0:
        raise ValueError("the layer structure must start and end with 1, e.g. 1, 2, 1")
    return structure


def new_hypernetwork(name: str, sizes: Sequence[int], structure: Sequence[float], activation: str,
                     weight_init: str, layer_norm: bool, dropout: bool, seed: int = 0) -> Hypernetwork:
    """A fresh hypernetwork initialised as A1111's: "Normal" draws weights from N(0, 0.01) and zero biases (layer
    norms too), the Xavier / Kaiming choices their namesakes with zero biases."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"unknown weight initialisation {weight_init!r}; valid: {', '.join(WEIGHT_INITS)}")
    options = _module_options(list(structure), activation, layer_norm, dropout, False, False)
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for size in sizes:
        pair = []
        for _ in range(2):
            module = HypernetworkModule(int(size), **options)
            for layer in module.linear:
                if not isinstance(layer, torch.nn.Linear | torch.nn.LayerNorm):
                    continue
                w, b = layer.weight.data, layer.bias.data
                b.zero_()
                if weight_init == "Normal" or isinstance(layer, torch.nn.LayerNorm):
                    w.normal_(0.0, 0.01, generator=g)
                elif weight_init == "XavierUniform":
                    torch.nn.init.xavier_uniform_(w, generator=g)
                elif weight_init == "XavierNormal":
                    torch.nn.init.xavier_normal_(w, generator=g)
                else:
                    fn = torch.nn.init.kaiming_uniform_ if weight_init == "KaimingUniform" else \
                        torch.nn.init.kaiming_normal_
                    fn(w, nonlinearity="leaky_relu" if activation == "leakyrelu" else "relu", generator=g)
            pair.append(module.eval())
        layers[int(size)] = (pair[0], pair[1])
    saved = {"layer_structure": list(structure), "activation_func": activation, "is_layer_norm": layer_norm,
             "weight_initialization": weight_init, "use_dropout": dropout, "activate_output": False,
             "last_layer_dropout": False}
    return Hypernetwork(name, layers, saved, 0)


def save_hypernetwork(net: Hypernetwork, path: Path, step: int | None = None,
                      checkpoint: tuple[str, str] | None = None) -> None:
    """The file as A1111 writes it (per width the key and value MLPs' state dicts, then the layout keys), written
    atomically. ``checkpoint``: (short hash, name) of the model it was trained on."""
    def plain(module: HypernetworkModule) -> dict:
        return {n: t.detach().float().cpu().clone() for n, t in module.state_dict().items()}
    data: dict = {size: (plain(pair[0]), plain(pair[1])) for size, pair in net.layers.items()}
    data.update(net.options)
    data["step"] = net.step if step is None else step
    data["name"] = net.name
    if checkpoint is not None:
        data["sd_checkpoint"], data["sd_checkpoint_name"] = checkpoint
    save_atomic(data, path)


@contextlib.contextmanager
def apply_hypernetworks(unet: torch.nn.Module, active: Sequence[tuple[Hypernetwork, float]]) -> Iterator[None]:
    """For the block's time: every attention's key and value inputs go through the hypernetworks whose widths
    match, each at its multiplier, in float32 (as A1111), cast back to the UNet's dtype."""
    if not active:
        yield
        return
    from diffusers.models.attention_processor import Attention

    def chain(which: int):
        def hook(module, args):
            x = args[0]
            y = x.float()
            for net, multiplier in active:
                pair = net.layers.get(int(x.shape[-1]))
                if pair is not None:
                    mlp = pair[which]
                    if mlp.linear[0].weight.device != y.device:   # once (offloaded UNets move between devices)
                        mlp.to(y.device)
                    mlp.multiplier = multiplier
                    y = mlp(y)
            return (y.to(x.dtype), *args[1:])
        return hook

    handles = []
    try:
        for module in unet.modules():
            if isinstance(module, Attention):
                handles.append(module.to_k.register_forward_pre_hook(chain(0)))
                handles.append(module.to_v.register_forward_pre_hook(chain(1)))
        yield
    finally:
        for h in handles:
            h.remove()
