"""Tiny random-weight ESRGAN (RRDBNet) upscaler files in the layouts people download, for tests.

    from upscaler_factory import TinyRRDBNet, make_esrgan
    net = make_esrgan(tmp_path / "4x-tiny.pth", "new", upsamples=2, seed=0)   # returns the torch module

Our own RRDBNet (BasicSR's structure and key names, written here from the architecture, independent of spandrel),
saved as:
- ``"old"``: the original ESRGAN repository's keys (``model.0.weight``, ``model.1.sub.0.RDB1.conv1.0.weight``, ...,
  ``model.3.weight`` for the first up-convolution), as in "4x_foo.pth" files from the model databases;
- ``"new"``: BasicSR / Real-ESRGAN keys (``conv_first``, ``body.0.rdb1.conv1``, ``conv_body``, ``conv_up1``, ...)
  wrapped in ``{"params_ema": ...}`` as Real-ESRGAN's releases are;
- ``"unshuffle"``: Real-ESRGAN x2plus: pixel-unshuffle by 2 first (12 input channels), then two up-samplings;
- ``"safetensors"``: the new keys in a .safetensors file.
The module's forward is the reference the loaded model is compared with.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


class _RDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x):
        act = lambda t: F.leaky_relu(t, 0.2)
        x1 = act(self.conv1(x))
        x2 = act(self.conv2(torch.cat((x, x1), 1)))
        x3 = act(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = act(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = _RDB(nf, gc), _RDB(nf, gc), _RDB(nf, gc)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class TinyRRDBNet(nn.Module):
    def __init__(self, nf: int = 8, gc: int = 32, blocks: int = 1, upsamples: int = 2, unshuffle: int = 1):
        super().__init__()
        self.unshuffle = unshuffle
        self.upsamples = upsamples
        self.conv_first = nn.Conv2d(3 * unshuffle * unshuffle, nf, 3, 1, 1)
        self.body = nn.Sequential(*[_RRDB(nf, gc) for _ in range(blocks)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        for i in range(upsamples):
            setattr(self, f"conv_up{i + 1}", nn.Conv2d(nf, nf, 3, 1, 1))
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)

    @property
    def scale(self) -> int:
        return 2 ** self.upsamples // self.unshuffle

    def forward(self, x):
        act = lambda t: F.leaky_relu(t, 0.2)
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(self.upsamples):
            feat = act(getattr(self, f"conv_up{i + 1}")(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(act(self.conv_hr(feat)))


def old_layout(net: TinyRRDBNet) -> dict[str, torch.Tensor]:
    """The original ESRGAN keys for the module's weights."""
    out: dict[str, torch.Tensor] = {}
    nb = len(net.body)
    for key, value in net.state_dict().items():
        parts = key.split(".")
        if parts[0] == "conv_first":
            new = f"model.0.{parts[1]}"
        elif parts[0] == "body":   # body.{i}.rdb{k}.conv{j}.{kind}
            new = f"model.1.sub.{parts[1]}.RDB{parts[2][3:]}.{parts[3]}.0.{parts[4]}"
        elif parts[0] == "conv_body":
            new = f"model.1.sub.{nb}.{parts[1]}"
        elif parts[0].startswith("conv_up"):
            new = f"model.{3 * int(parts[0][7:])}.{parts[1]}"
        elif parts[0] == "conv_hr":
            new = f"model.{3 * net.upsamples + 2}.{parts[1]}"
        else:
            new = f"model.{3 * net.upsamples + 4}.{parts[1]}"
        out[new] = value.clone()
    return out


def make_esrgan(path: Path, layout: str = "new", upsamples: int = 2, seed: int = 0, nf: int = 8,
                blocks: int = 1) -> TinyRRDBNet:
    """Write a random-weight RRDBNet file at ``path`` in ``layout``; returns the module (eval mode)."""
    torch.manual_seed(seed)
    unshuffle = 2 if layout == "unshuffle" else 1
    net = TinyRRDBNet(nf=nf, blocks=blocks, upsamples=upsamples, unshuffle=unshuffle).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
        # a bias towards mid-grey so the outputs are pictures, not all clamped to black
        net.conv_last.bias.add_(0.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone().contiguous() for k, v in net.state_dict().items()}
    if layout == "old":
        torch.save(old_layout(net), path)
    elif layout == "safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save({"params_ema": state}, path)
    return net
