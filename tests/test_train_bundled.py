"""The bundled model's training script: the decoder stage touches the decoder alone, so the latent space that the
UNet, its encoded pool and the ControlNet were trained on stays exactly as it was (which lets the stage run after
them, and the shipped UNet and ControlNet stay the same files)."""
from __future__ import annotations

import numpy as np
import torch
from tool_modules import load_tool


def test_decoder_stage_changes_only_the_decoder(tmp_path):
    tb = load_tool("train_bundled")
    ds = load_tool("shapes_dataset")
    args = tb.parse_args(["--work", str(tmp_path), "--dec-steps", "2", "--dec-batch", "1"])
    torch.manual_seed(0)
    vae = tb.make_vae().eval()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    x = tb.images_to_tensor(np.stack([ds.sample(i, 3).image for i in range(2)]))
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mean

    vae = tb.train_decoder(args, tmp_path, vae)

    after = vae.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("decoder.") for k in changed)
    assert all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed), sorted(changed)[:5]
    with torch.no_grad():
        assert torch.equal(vae.encode(x).latent_dist.mean, latents)
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").exists()


def test_border_weights():
    tb = load_tool("train_bundled")
    w = tb.border_weights(16, 3, 10.0)[0, 0]
    assert w.shape == (16, 16)
    assert float(w[3:13, 3:13].min()) == float(w[3:13, 3:13].max()) == 1.0
    assert float(w[0, 8]) == float(w[2, 8]) == float(w[8, 15]) == float(w[13, 13]) == 11.0
    assert int((w > 1).sum()) == 16 * 16 - 10 * 10
