"""Seeds and initial noise: one generator per image, so image i of a batch (seed+i) can be re-made alone."""
from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor


def generator_device(device: torch.device, source: str) -> torch.device:
    """Where noise is drawn: the run device for source "GPU" (CUDA only), else the CPU (same on any machine)."""
    return device if source == "GPU" and device.type == "cuda" else torch.device("cpu")


def _noise(seed: int, shape: tuple[int, ...], device: torch.device, gen_device: torch.device) -> torch.Tensor:
    g = torch.Generator(gen_device).manual_seed(int(seed))
    return randn_tensor((1, *shape), generator=g, device=device, dtype=torch.float32)


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (A1111's variation seeds)."""
    an, bn = a / a.norm(), b / b.norm()
    dot = (an * bn).sum().clamp(-1, 1)
    if dot.abs() > 0.9995:
        return (1 - t) * a + t * b
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


def initial_noise(seeds: list[int], shape: tuple[int, int, int], device: torch.device, source: str = "GPU",
                  subseeds: list[int] | None = None, subseed_strength: float = 0.0,
                  resize_from: tuple[int, int] | None = None) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Noise of shape (len(seeds), C, H, W) and each image's generator, left ready for the sampler's own noise.

    resize_from is (latent_w, latent_h) of "Seed resize from": the noise is made at that size and pasted
    centred into the new size, so a seed keeps its composition when the size changes.
    """
    gen_device = generator_device(device, source)
    c, h, w = shape
    rows, gens = [], []
    for i, seed in enumerate(seeds):
        src_shape = (c, resize_from[1], resize_from[0]) if resize_from else shape
        g = torch.Generator(gen_device).manual_seed(int(seed))
        base = randn_tensor((1, *src_shape), generator=g, device=device, dtype=torch.float32)
        if subseeds is not None and subseed_strength > 0:
            sub = _noise(subseeds[i], src_shape, device, gen_device)
            base = slerp(subseed_strength, base, sub)
        if resize_from and (resize_from[0], resize_from[1]) != (w, h):
            base = _paste_centred(base, h, w, _noise(seed, shape, device, gen_device))
        rows.append(base)
        gens.append(g)
    return torch.cat(rows), gens


def _paste_centred(src: torch.Tensor, h: int, w: int, fill: torch.Tensor) -> torch.Tensor:
    sh, sw = src.shape[-2:]
    out = fill.clone()
    dy, dx = (h - sh) // 2, (w - sw) // 2
    ty, tx = max(dy, 0), max(dx, 0)
    sy, sx = max(-dy, 0), max(-dx, 0)
    hh, ww = min(sh - sy, h - ty), min(sw - sx, w - tx)
    out[..., ty:ty + hh, tx:tx + ww] = src[..., sy:sy + hh, sx:sx + ww]
    return out


def reseed(gens: list[torch.Generator], seeds: list[int], delta: int) -> None:
    """ENSD: the sampler's own noise comes from seed + delta instead of continuing the seed's stream."""
    if delta:
        for g, s in zip(gens, seeds):
            g.manual_seed(int(s) + int(delta))
