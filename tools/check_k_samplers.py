"""Compare the studio's DPM++ 2S a and DPM fast (webui/engine/k_samplers.py) with k-diffusion's own functions, on
the exact denoiser of Gaussian data, with the same noise. A maintainer's check, not a test: k-diffusion is not a
dependency (it needs torchvision), so its sampling module is loaded from an unpacked wheel with its torchvision
import stubbed::

    pip download --no-deps k-diffusion==0.1.1.post1 -d /tmp/kd && (cd /tmp/kd && unzip -oq *.whl)
    pip install --no-deps --target /tmp/kd/deps torchdiffeq
    .venv/bin/python tools/check_k_samplers.py /tmp/kd

Prints the largest difference per case (float32 sigmas: about 1e-7).
"""
from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from webui.engine import k_samplers as ks  # noqa: E402  (before the stub: diffusers looks for torchvision)

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
      "steps_offset": 1, "prediction_type": "epsilon", "timestep_spacing": "leading"}
MU, S = 0.3, 0.5


def load_k_diffusion(folder: Path):
    sys.path.insert(0, str(folder / "deps"))
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        sys.modules[name] = types.ModuleType(name)
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(folder / "k_diffusion")]
    sys.modules["k_diffusion"] = pkg
    import k_diffusion.sampling as sampling
    return sampling


def denoise(x, sigma):
    sigma = float(sigma.flatten()[0]) if torch.is_tensor(sigma) else float(sigma)
    return MU + S ** 2 / (S ** 2 + sigma ** 2) * (x - MU)


def ours(cls, steps: int, eta: float, x: torch.Tensor, seed: int, karras: bool) -> tuple[torch.Tensor, list]:
    sch = cls.from_config({**SD, "use_karras_sigmas": karras})
    sch.eta = eta
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    for t in sch.timesteps:
        sigma = float(sch.sigmas[sch.step_index or 0])
        noisy = sch.scale_model_input(x, t) * math.sqrt(sigma ** 2 + 1)
        x = sch.step((noisy - denoise(noisy, sigma)) / sigma, t, x, generator=g).prev_sample
    return x, sch._sigmas


def noise_from(seed: int, shape):
    """The noise the studio's step draws from a generator of this seed, in the same order."""
    g = torch.Generator().manual_seed(seed)
    return lambda *_: torch.randn(shape, generator=g, dtype=torch.float64)


def main(folder: str) -> None:
    K = load_k_diffusion(Path(folder))
    x_t = torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 14.6
    for karras in (False, True):
        for steps in (8, 20, 40):
            for eta in (0.0, 1.0):
                a, sig = ours(ks.DPMPP2SAncestralScheduler, steps, eta, x_t.clone(), 5, karras)
                ref = K.sample_dpmpp_2s_ancestral(denoise, x_t.clone(), torch.tensor(sig, dtype=torch.float64),
                                                  eta=eta, disable=True, noise_sampler=noise_from(5, x_t.shape))
                e1 = float((a - ref).abs().max())
                b, sig = ours(ks.DPMFastScheduler, steps, eta, x_t.clone(), 5, karras)
                ref = K.sample_dpm_fast(denoise, x_t.clone(), sig[-2], sig[0], steps, eta=eta, disable=True,
                                        noise_sampler=noise_from(5, x_t.shape))
                e2 = float((b - ref).abs().max())
                print(f"karras={karras} steps={steps} eta={eta}: DPM++ 2S a {e1:.1e}, DPM fast {e2:.1e}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kd")
