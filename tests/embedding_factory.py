"""Textual-inversion files in the formats people download, for tests.

    from embedding_factory import write_embedding, word_vectors
    write_embedding(tmp_path / "red.pt", word_vectors(pipe.text_encoder, pipe.tokenizer, "red"), fmt="pt")

Formats (``fmt``):
- ``"pt"``: A1111's training output, ``torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": t},
  "name", "step", "sd_checkpoint", "sd_checkpoint_name"})``, the tensor an ``nn.Parameter`` as A1111 saves it.
- ``"pt-paramdict"``: the same with a ``torch.nn.ParameterDict`` (files from torch 1.11-era trainers).
- ``"safetensors"``: ``{"emb_params": t}``.
- ``"bin"``: diffusers' ``learned_embeds.bin``, ``{"<token>": t}`` (a single vector is stored 1-D).
- ``"sdxl"``: safetensors ``{"clip_l": t_l, "clip_g": t_g}``; pass ``vectors`` as a dict with those keys.
"""
from __future__ import annotations

from pathlib import Path

import torch


def word_vectors(text_encoder, tokenizer, text: str) -> torch.Tensor:
    """The token-embedding rows of ``text``'s tokens in ``text_encoder`` ((n_tokens, width)): an embedding made
    of them must encode exactly like the words themselves."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text_encoder.get_input_embeddings().weight[ids].detach().clone()


def write_embedding(path, vectors, fmt: str = "pt", name: str | None = None, step: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = name or path.stem
    if fmt in ("pt", "pt-paramdict"):
        param = torch.nn.Parameter(vectors.clone(), requires_grad=True)
        params = torch.nn.ParameterDict({"*": param}) if fmt == "pt-paramdict" else {"*": param}
        torch.save({"string_to_token": {"*": 265}, "string_to_param": params, "name": name, "step": step,
                    "sd_checkpoint": "0123456789", "sd_checkpoint_name": "tiny"}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({"emb_params": vectors.contiguous()}, str(path))
    elif fmt == "bin":
        t = vectors[0] if vectors.shape[0] == 1 else vectors
        torch.save({f"<{name}>": t.clone()}, path)
    elif fmt == "sdxl":
        from safetensors.torch import save_file
        save_file({"clip_l": vectors["clip_l"].contiguous(), "clip_g": vectors["clip_g"].contiguous()}, str(path))
    else:
        raise ValueError(f"unknown fmt {fmt!r}")
    return path
