"""The bundled model's training script: the decoder stage touches the decoder alone, so the latent space that the
UNet, its encoded pool and the ControlNet were trained on stays exactly as it was (which lets the stage run after
them, and the shipped UNet and ControlNet stay the same files)."""
from __future__ import annotations

import shutil

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


def test_pool_masks_cover_the_shapes_at_latent_resolution():
    tb = load_tool("train_bundled")
    ds = load_tool("shapes_dataset")
    masks = tb.pool_masks(8, 3)
    assert masks.shape == (8, 1, 16, 16)
    assert float(masks.min()) == 0.0 and float(masks.max()) == 1.0
    for i in range(8):
        s = ds.sample(i, 3)
        for sh in s.shapes:  # each shape's centre latent is inside the mask, a corner far from every shape is not
            assert float(masks[i, 0, int(sh.cy) // 8, int(sh.cx) // 8]) > 0.9
        far = [(y, x) for y in (0, 15) for x in (0, 15)
               if all(np.hypot(y * 8 + 4 - sh.cy, x * 8 + 4 - sh.cx) > 1.2 * sh.radius + 18 for sh in s.shapes)]
        assert far and all(float(masks[i, 0, y, x]) == 0.0 for y, x in far)


def test_pixel_mse_weights_the_shapes_latents():
    tb = load_tool("train_bundled")
    pred, target = torch.zeros(2, 4, 16, 16), torch.zeros(2, 4, 16, 16)
    fg = torch.zeros(2, 1, 16, 16)
    fg[:, :, 6:9, 6:9] = 1.0
    pred[0, :, 7, 7] = 1.0  # sample 0: an error on the shape
    pred[1, :, 0, 0] = 1.0  # sample 1: the same error on the background
    plain = tb.pixel_mse(pred, target, fg, 0.0)
    assert torch.allclose(plain, (pred - target).pow(2).mean(dim=(1, 2, 3)))
    weighted = tb.pixel_mse(pred, target, fg, 4.0)
    assert float(weighted[0]) > 4 * float(weighted[1])
    assert torch.allclose(tb.pixel_mse(pred, target, None, 4.0), plain)


def test_unet_more_stage_continues_the_saved_pair(tmp_path):
    """The second cycle starts from the text encoder and UNet the ``unet`` stage saved (not from a fresh init),
    trains both, and saves them back for the later stages."""
    tb = load_tool("train_bundled")
    args = tb.parse_args(["--work", str(tmp_path), "--pool", "8", "--unet-batch", "2", "--unet-steps", "1",
                          "--more-steps", "2", "--warmup", "1", "--more-warmup", "1"])
    torch.manual_seed(0)
    vae = tb.make_vae().eval()
    tb.train_unet(args, tmp_path, vae)
    saved_te, saved_unet = tb.load_text_unet(tmp_path)
    fresh_unet = tb.make_unet()

    te, unet = tb.train_unet(args, tmp_path, vae, more=True)

    def distance(a, b) -> float:
        return sum(float((p - q).detach().abs().sum()) for p, q in zip(a.parameters(), b.parameters()))

    assert 0 < distance(unet, saved_unet) < 0.1 * distance(fresh_unet, saved_unet)   # measured 0.018
    assert distance(te, saved_te) > 0
    reloaded_te, reloaded_unet = tb.load_text_unet(tmp_path)
    assert distance(reloaded_unet, unet) == 0 and distance(reloaded_te, te) == 0


def _two_work_dirs_with_a_trained_pair(tb, tmp_path, small: list[str]):
    """Two work dirs holding the same VAE and the text encoder + UNet of a one-step ``unet`` stage."""
    one, two = tmp_path / "one", tmp_path / "two"
    torch.manual_seed(0)
    tb.make_vae().eval().save_pretrained(one / "vae", safe_serialization=True)
    tb.train_unet(tb.parse_args(["--work", str(one), *small]), one, tb.load_vae(one))
    shutil.copytree(one, two)
    return one, two


def _run_main(tb, *argvs: list[str]) -> None:
    """``main`` once per argv, restoring the deterministic-algorithms flag it turns on."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        for argv in argvs:
            tb.main(argv)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def test_more_cycles_equal_running_the_stage_again(tmp_path):
    """``--more-cycles 2`` in one process gives the same text encoder and UNet, bit for bit, as running the
    ``unet-more`` stage twice (how the shipped third cycle was first measured): each cycle reloads and re-seeds."""
    tb = load_tool("train_bundled")
    small = ["--pool", "8", "--unet-batch", "2", "--unet-steps", "1", "--more-steps", "2", "--warmup", "1",
             "--more-warmup", "1"]
    one, two = _two_work_dirs_with_a_trained_pair(tb, tmp_path, small)
    _, start_unet = tb.load_text_unet(one)

    _run_main(tb, ["--work", str(one), "--stages", "unet-more", "--more-cycles", "2", *small],
              *[["--work", str(two), "--stages", "unet-more", "--more-cycles", "1", *small]] * 2)

    (te1, unet1), (te2, unet2) = tb.load_text_unet(one), tb.load_text_unet(two)
    for a, b in ((te1, te2), (unet1, unet2)):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(unet1.parameters(), start_unet.parameters()))


def test_controlnet_cfg_stage_continues_the_saved_controlnet(tmp_path):
    """The ControlNet's guidance fine-tune starts from the ControlNet the ``controlnet`` stage saved, trains it
    alone (text encoder and UNet untouched) and saves it back for ``export``; one process running both stages gives
    the same bytes as running them one after the other."""
    tb = load_tool("train_bundled")
    small = ["--pool", "8", "--unet-batch", "2", "--unet-steps", "1", "--warmup", "1", "--cn-batch", "2",
             "--cn-steps", "2", "--cn-cfg-steps", "2"]
    one, two = _two_work_dirs_with_a_trained_pair(tb, tmp_path, small)
    marked = tmp_path / "marked"
    te0, unet0 = tb.load_text_unet(one)

    _run_main(tb, ["--work", str(one), "--stages", "controlnet", *small])
    plain = tb.load_controlnet(one)
    shutil.copytree(one, marked)
    mark = plain.state_dict()["controlnet_mid_block.weight"].clone()
    marker = tb.load_controlnet(marked)
    marker.controlnet_mid_block.weight.data.fill_(0.5)   # a zero convolution: 0 in a fresh ControlNet
    marker.save_pretrained(marked / "controlnet", safe_serialization=True)
    _run_main(tb, ["--work", str(marked), "--stages", "controlnet-cfg", *small],
              ["--work", str(one), "--stages", "controlnet-cfg", *small],
              ["--work", str(two), "--stages", "controlnet,controlnet-cfg", *small])

    tuned, tuned_two = tb.load_controlnet(one), tb.load_controlnet(two)
    assert all(torch.equal(p, q) for p, q in zip(tuned.parameters(), tuned_two.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(tuned.parameters(), plain.parameters()))
    resumed = tb.load_controlnet(marked).controlnet_mid_block.weight.detach()
    assert float((resumed - 0.5).abs().max()) < 0.01 and not torch.equal(resumed, torch.full_like(resumed, 0.5))
    assert float(mark.abs().max()) < 0.01
    te1, unet1 = tb.load_text_unet(one)
    for a, b in ((te0, te1), (unet0, unet1)):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_import_stage_reads_back_what_export_wrote(tmp_path):
    """``import`` turns the single files back into the work dir's folders through the studio's loaders; exporting
    those again gives the same bytes (how a stage is re-run on the shipped weights)."""
    from diffusers import ControlNetModel

    tb = load_tool("train_bundled")
    torch.manual_seed(0)
    vae, te, unet = tb.make_vae().eval(), tb.make_text_encoder().eval(), tb.make_unet().eval()
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tb.CONTROLNET_COND_CHANNELS).eval()
    with torch.no_grad():
        cn.controlnet_mid_block.weight.normal_()   # zero at init: a trained ControlNet's are not
    first, second = tmp_path / "first", tmp_path / "second"
    tb.export(tmp_path, vae, te, unet, cn, first / "model.safetensors", first / "cn.safetensors")
    work = tmp_path / "work"
    args = tb.parse_args(["--work", str(work), "--checkpoint", str(first / "model.safetensors"),
                          "--import-controlnet", str(first / "cn.safetensors")])
    work.mkdir()

    tb.import_files(args, work)

    te2, unet2 = tb.load_text_unet(work)
    tb.export(work, tb.load_vae(work), te2, unet2, tb.load_controlnet(work), second / "model.safetensors",
              second / "cn.safetensors")
    for name in ("model.safetensors", "cn.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
