"""Text conditioning: prompts -> text-encoder embeddings, in 75-token chunks as A1111 does."""
from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 75


@dataclass
class Cond:
    """Embeddings for a batch: (B, 77*k, D), plus SDXL's pooled embedding (B, P)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def chunks(self) -> int:
        return self.embeds.shape[1] // (CHUNK + 2)


def chunk_ids(tokenizer, text: str, min_chunks: int = 1) -> list[list[int]]:
    """Token ids split into 75-token chunks, each wrapped in BOS/EOS and padded to 77."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    chunks = [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)] or [[]]
    while len(chunks) < min_chunks:
        chunks.append([])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    out = []
    for c in chunks:
        row = [bos, *c, eos]
        out.append(row + [pad] * (CHUNK + 2 - len(row)))
    return out


def token_count(tokenizer, text: str) -> tuple[int, int]:
    """(tokens used, capacity) as A1111 shows next to the prompt box ("12/75")."""
    n = len(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])
    return n, max(1, -(-n // CHUNK)) * CHUNK


def _encode_chunks(encoder, ids: list[list[int]], device, layer: int | None, final_norm: bool):
    """Hidden states of one prompt's chunks concatenated; layer=None means the last layer."""
    batch = torch.tensor(ids, device=device)
    out = encoder(batch, output_hidden_states=layer is not None)
    if layer is None:
        hidden = out[0]
    else:
        hidden = out.hidden_states[layer]
        if final_norm:
            tm = getattr(encoder, "text_model", encoder)
            hidden = tm.final_layer_norm(hidden)
    pooled = out[0] if hasattr(out, "text_embeds") else None
    return hidden.reshape(1, -1, hidden.shape[-1]), (None if pooled is None else pooled[:1])


@torch.no_grad()
def encode(pipe, family: str, prompts: list[str], clip_skip: int = 1, min_chunks: int = 1) -> Cond:
    """Encode each prompt (identical prompts once); SD1/SD2 use one encoder, SDXL both plus the pooled output."""
    device = pipe.unet.device if hasattr(pipe.unet, "device") else torch.device("cpu")
    dtype = pipe.unet.dtype
    memo: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    n_chunks = max([min_chunks] + [len(chunk_ids(pipe.tokenizer, p)) for p in prompts])
    for p in prompts:
        if p in memo:
            continue
        if family == "sdxl":
            ids1 = chunk_ids(pipe.tokenizer, p, n_chunks)
            ids2 = chunk_ids(pipe.tokenizer_2, p, n_chunks)
            # SDXL conditions on the penultimate layer of both encoders, without the final norm.
            h1, _ = _encode_chunks(pipe.text_encoder, ids1, device, -(clip_skip + 1), False)
            h2, pooled = _encode_chunks(pipe.text_encoder_2, ids2, device, -(clip_skip + 1), False)
            memo[p] = (torch.cat([h1, h2], dim=-1), pooled)
        else:
            ids = chunk_ids(pipe.tokenizer, p, n_chunks)
            layer = None if clip_skip <= 1 else -clip_skip
            memo[p] = _encode_chunks(pipe.text_encoder, ids, device, layer, True)
    embeds = torch.cat([memo[p][0] for p in prompts]).to(dtype)
    pooled = None if family != "sdxl" else torch.cat([memo[p][1] for p in prompts]).to(dtype)
    return Cond(embeds, pooled)

