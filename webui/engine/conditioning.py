"""Text conditioning with A1111's prompt language: emphasis weights, 75-token chunks with BREAK and the comma
rule, textual-inversion embeddings, clip skip, SDXL's two encoders; scheduled prompts are encoded once per
distinct text per job."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from webui.core import prompt_parser as pp
from webui.models import embeddings as ti

CHUNK = 75


@dataclass
class Cond:
    """Embeddings for a batch: (B, 77*k, D), plus SDXL's pooled embedding (B, P)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


def _encoders(pipe, family: str) -> list[tuple[object, object, str]]:
    out = [(pipe.tokenizer, pipe.text_encoder, "text_encoder")]
    if family == "sdxl":
        out.append((pipe.tokenizer_2, pipe.text_encoder_2, "text_encoder_2"))
    return out


@dataclass
class PromptEncoder:
    """Encodes the prompts of one job; every distinct text is chunked and encoded once."""

    pipe: object
    family: str
    clip_skip: int = 1
    emphasis: str = "Original"                       # Original, No norm, Ignore, None
    embeddings: dict = field(default_factory=dict)   # name -> Embedding (those matching this model)
    used_embeddings: dict = field(default_factory=dict)
    _chunks: dict = field(default_factory=dict)
    _encoded: dict = field(default_factory=dict)
    _lookups: dict = field(default_factory=dict)

    def runs(self, text: str) -> list[tuple[str, float]]:
        if self.emphasis == "None":
            return [(text, 1.0)]
        runs = pp.parse_prompt_attention(text)
        if self.emphasis == "Ignore":
            runs = [(t, 1.0 if w >= 0 else w) for t, w in runs]
        return runs

    def chunks(self, text: str, tokenizer, key: str) -> list[pp.TokenChunk]:
        ck = (text, key)
        if ck not in self._chunks:
            if key not in self._lookups:
                usable = {n: e for n, e in self.embeddings.items() if key in e.vectors}
                self._lookups[key] = (ti.EmbeddingLookup(usable, tokenizer), usable)
            lookup, usable = self._lookups[key]

            def find(ids, offset):
                hit = lookup.find(ids, offset) if lookup else None
                if hit is None:
                    return None
                emb, n_tokens = hit
                return pp.EmbeddingMatch(emb.name, n_tokens, emb.n_vectors)

            comma = tokenizer(",", add_special_tokens=False)["input_ids"]
            self._chunks[ck] = pp.chunk_tokens(
                self.runs(text), lambda t: tokenizer(t, add_special_tokens=False, truncation=False)["input_ids"],
                comma[0] if len(comma) == 1 else None, embedding_lookup=find if usable else None)
        return self._chunks[ck]

    def chunk_count(self, texts: list[str]) -> int:
        tok = self.pipe.tokenizer
        return max(len(self.chunks(t, tok, "text_encoder")) for t in texts)

    @torch.no_grad()
    def encode_one(self, text: str, n_chunks: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = (text, n_chunks)
        if key in self._encoded:
            return self._encoded[key]
        hidden_parts, pooled = [], None
        for tokenizer, encoder, enc_key in _encoders(self.pipe, self.family):
            chunks = list(self.chunks(text, tokenizer, enc_key))
            chunks += [pp.TokenChunk([], [], [])] * (n_chunks - len(chunks))
            bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
            rows, weights, reps = [], [], []
            for c in chunks:
                row = [bos, *c.tokens, eos]
                rows.append(row + [pad] * (CHUNK + 2 - len(row)))
                weights.append([1.0, *c.weights] + [1.0] * (CHUNK + 1 - len(c.weights)))
                rep = []
                for offset, name in c.embeddings:
                    emb = self.embeddings[name]
                    self.used_embeddings[name] = emb
                    rep.append((offset + 1, emb.vectors[enc_key]))
                reps.append(rep)
            device = encoder.device
            ids = torch.tensor(rows, device=device)
            sdxl = self.family == "sdxl"
            # SDXL conditions on the penultimate layer of both encoders whatever Clip skip says (as A1111, where
            # the setting is ignored for SDXL; an SDXL infotext with "Clip skip: 2" must make the same image)
            layer = -2 if sdxl else (None if self.clip_skip <= 1 else -self.clip_skip)
            out = ti.encode_with_embeddings(encoder, ids, reps, output_hidden_states=layer is not None)
            if layer is None:
                z = out[0]
            else:
                z = out.hidden_states[layer]
                if not sdxl:   # SD1/SD2 apply the final norm to a skipped layer, SDXL does not
                    z = getattr(encoder, "text_model", encoder).final_layer_norm(z)
            z = self._emphasise(z.float(), torch.tensor(weights, device=z.device))
            hidden_parts.append(z.reshape(1, -1, z.shape[-1]))
            if hasattr(out, "text_embeds"):
                pooled = out.text_embeds[:1].float()
        result = (torch.cat(hidden_parts, dim=-1), pooled)
        self._encoded[key] = result
        return result

    def _emphasise(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """A1111's "Original": scale each token's embedding by its weight, then restore each chunk's mean."""
        if self.emphasis in ("Ignore", "None") or bool((w == 1).all()):
            return z
        out = []
        for zc, wc in zip(z, w):
            before = zc.mean()
            zc = zc * wc[:, None]
            if self.emphasis == "Original":
                zc = zc * (before / zc.mean())
            out.append(zc)
        return torch.stack(out)

    def encode(self, texts: list[str], n_chunks: int) -> Cond:
        dtype = self.pipe.unet.dtype
        parts = [self.encode_one(t, n_chunks) for t in texts]
        embeds = torch.cat([p[0] for p in parts]).to(dtype)
        pooled = None if parts[0][1] is None else torch.cat([p[1] for p in parts]).to(dtype)
        return Cond(embeds, pooled)


def chunk_ids(tokenizer, text: str, min_chunks: int = 1) -> list[list[int]]:
    """Plain token ids (no prompt language) in 75-token chunks, each wrapped in BOS/EOS and padded to 77."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    chunks = [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)] or [[]]
    chunks += [[]] * (min_chunks - len(chunks))
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    return [[bos, *c, eos] + [pad] * (CHUNK - len(c)) for c in chunks]


def token_count(tokenizer, text: str) -> tuple[int, int]:
    """(tokens used, capacity) as A1111 shows next to the prompt box ("12/75")."""
    clean, _ = pp.parse_extra_networks(text)
    comma = tokenizer(",", add_special_tokens=False)["input_ids"]
    chunks = pp.chunk_tokens(pp.parse_prompt_attention(clean),
                             lambda t: tokenizer(t, add_special_tokens=False, truncation=False)["input_ids"],
                             comma[0] if len(comma) == 1 else None)
    n = pp.token_count(chunks)
    return n, pp.token_limit(n)
