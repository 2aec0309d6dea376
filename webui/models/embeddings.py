"""Textual-inversion embeddings (embeddings/NAME.pt | .safetensors | .bin) and text encoding with them.

Formats read (pickles only through torch's weights-only unpickler, so a file cannot run code):
- A1111 ``.pt``: ``{"string_to_param": {"*": tensor (n, width)}, "name", "step", "sd_checkpoint", ...}``
  (old files hold a ``torch.nn.ParameterDict`` there; it is accepted as data).
- ``.safetensors``: ``{"emb_params": tensor (n, width)}`` (any single tensor), or SDXL's
  ``{"clip_l": (n, 768), "clip_g": (n, 1280)}``.
- diffusers ``.bin`` (``learned_embeds.bin``): ``{"<token>": tensor (width,) or (n, width)}``.

Vectors are keyed by the pipeline attribute of the text encoder they feed: ``"text_encoder"`` (SD1's CLIP-L,
SD2's OpenCLIP-H, SDXL's CLIP-L) and ``"text_encoder_2"`` (SDXL's OpenCLIP-bigG). A single-tensor file goes to
``"text_encoder"`` of a one-encoder model when its width matches; an SDXL file's clip_l goes to ``"text_encoder"``
and clip_g to ``"text_encoder_2"``. As in A1111, a single-tensor embedding does not apply to SDXL and an SDXL one
does not apply to SD1/SD2: such files are listed as skipped with the reason. ``Embedding.shape`` is A1111's
"shape": the summed width (768 SD1, 1024 SD2, 2048 SDXL).

The name is the file stem (sub-folders are scanned; the name does not include them). "TI hashes" in the infotext
are ``"name: shorthash, ..."`` with A1111's shorthash: the sha256 of the whole file, first 12 hex digits.

Using an embedding in a prompt (what the conditioning code does; :func:`chunk_ids_with_embeddings` is a
reference implementation without emphasis):
1. ``lookup = EmbeddingLookup(embeddings, tokenizer)``; tokenise the text as usual.
2. ``expand_embeddings(ids, lookup)`` replaces each run of tokens spelling an embedding's name with
   ``n_vectors`` placeholder ids and reports where (``spans``) and which input token each output position came
   from (``source``, to carry emphasis weights over).
3. Chunk into 75-token rows without splitting a span (a span that does not fit moves to the next chunk, as
   A1111 does), wrap in BOS/EOS.
4. ``encode_with_embeddings(encoder, rows, replacements)`` where ``replacements[row]`` lists
   ``(position, vectors[key])`` pairs (position counted with the BOS at 0): the encoder runs its usual forward
   with those token-embedding rows replaced, so clip skip, hidden states and SDXL's pooled projection work as
   without embeddings.
"""
from __future__ import annotations

import pickle
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.models.hashes import file_sha256

EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")
ENCODERS = ("text_encoder", "text_encoder_2")
SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
CHUNK = 75


# ------------------------------------------------------------------------------------------------- files

class EmbeddingFormatError(ValueError):
    """A file in the embeddings folder that is not a usable textual-inversion embedding."""


@dataclass
class EmbeddingFile:
    """What a file holds, before it is matched to a model's text encoders."""

    name: str
    path: Path | None
    tensors: dict[str, torch.Tensor]      # {"": (n, w)} for single-tensor files, {"clip_l", "clip_g"} for SDXL
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def is_sdxl(self) -> bool:
        return set(self.tensors) == set(SDXL_KEYS)

    @property
    def shape(self) -> int:
        return sum(int(t.shape[-1]) for t in self.tensors.values())

    @property
    def n_vectors(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])


def _load_pickle(path: Path):
    try:
        with torch.serialization.safe_globals([torch.nn.ParameterDict]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln for ln in first if "Unsupported global" in ln), first[0] if first else "")
        raise EmbeddingFormatError(f"refused: the pickle would import or call code ({detail.strip()[:200]}); "
                                   "only plain tensors are loaded") from None


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to(torch.float32)
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2:
        raise EmbeddingFormatError(f"tensor of shape {tuple(t.shape)} is not (vectors, width)")
    return t.contiguous()


def read_embedding_file(path: Path) -> EmbeddingFile:
    """Read one embedding file in any supported format. Raises EmbeddingFormatError with the reason."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file
            data = load_file(str(path))
        else:
            data = _load_pickle(path)
    except EmbeddingFormatError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure of a user file is a reason to skip it
        text = str(e).strip().splitlines()
        raise EmbeddingFormatError(f"unreadable ({type(e).__name__}: {text[0][:200] if text else ''})") from None
    if not isinstance(data, Mapping):
        raise EmbeddingFormatError(f"holds a {type(data).__name__}, not a dict of tensors")
    extra = {}
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        tensors = [v for v in dict(params).values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise EmbeddingFormatError(f"holds {len(tensors)} terms in string_to_param; one is supported")
        found = {"": _as_matrix(tensors[0])}
        extra = {"step": data.get("step"), "sd_checkpoint": data.get("sd_checkpoint"),
                 "sd_checkpoint_name": data.get("sd_checkpoint_name")}
    elif isinstance(data.get("clip_l"), torch.Tensor) and isinstance(data.get("clip_g"), torch.Tensor):
        found = {k: _as_matrix(data[k]) for k in SDXL_KEYS}
        if found["clip_l"].shape[0] != found["clip_g"].shape[0]:
            raise EmbeddingFormatError(f"clip_l has {found['clip_l'].shape[0]} vectors, clip_g "
                                       f"{found['clip_g'].shape[0]}")
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1:
            keys = ", ".join(list(map(str, data))[:5])
            raise EmbeddingFormatError(f"not a textual-inversion embedding ({len(tensors)} tensors; keys: {keys})")
        found = {"": _as_matrix(next(iter(tensors.values())))}
    if any(t.shape[0] == 0 for t in found.values()):
        raise EmbeddingFormatError("holds no vectors")
    step = extra.get("step")
    return EmbeddingFile(path.stem, path, found, step if isinstance(step, int) else None,
                         _str_or_none(extra.get("sd_checkpoint")), _str_or_none(extra.get("sd_checkpoint_name")))


def _str_or_none(v) -> str | None:
    return None if v is None else str(v)


# ------------------------------------------------------------------------------------------------- embeddings

@dataclass
class Embedding:
    name: str
    vectors: dict[str, torch.Tensor]      # by text-encoder attribute ("text_encoder", "text_encoder_2"): (n, width)
    path: Path | None = None
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    size: int = 0
    mtime: float = 0.0
    _sha256: str | None = field(default=None, repr=False)

    @property
    def n_vectors(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def shape(self) -> int:
        """A1111's "shape": the vectors' width, summed over encoders (SDXL: 768 + 1280 = 2048)."""
        return sum(int(v.shape[-1]) for v in self.vectors.values())

    @property
    def sha256(self) -> str | None:
        """sha256 of the whole file (None for an embedding made in memory); computed on first use."""
        if self._sha256 is None and self.path is not None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    @property
    def shorthash(self) -> str:
        return (self.sha256 or "")[:12]

    def api_item(self) -> dict:
        """The per-embedding dict of GET /sdapi/v1/embeddings (A1111's keys)."""
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint,
                "sd_checkpoint_name": self.sd_checkpoint_name, "shape": self.shape, "vectors": self.n_vectors}


def encoder_dims(pipe) -> dict[str, int]:
    """Hidden width of each text encoder a pipeline has, keyed like ``Embedding.vectors``."""
    out = {}
    for name in ENCODERS:
        enc = getattr(pipe, name, None)
        if enc is not None:
            out[name] = int(enc.config.hidden_size)
    return out


def _dims_text(dims: Mapping[str, int]) -> str:
    if len(dims) == 1:
        return str(next(iter(dims.values())))
    return f"{sum(dims.values())} ({' + '.join(str(v) for v in dims.values())})"


def match_embedding(file: EmbeddingFile, expected_dims: Mapping[str, int]) -> Embedding:
    """The file's vectors assigned to the model's text encoders; EmbeddingFormatError saying why not."""
    dims = {k: v for k, v in expected_dims.items() if k in ENCODERS}
    if not dims:
        raise ValueError("expected_dims names no text encoder (text_encoder / text_encoder_2)")
    two = set(dims) == set(ENCODERS)
    if file.is_sdxl:
        if not two:
            raise EmbeddingFormatError(f"an SDXL embedding (clip_l {file.tensors['clip_l'].shape[-1]} + clip_g "
                                       f"{file.tensors['clip_g'].shape[-1]}) does not fit this model's vector size "
                                       f"{_dims_text(dims)}")
        vectors = {SDXL_KEYS[k]: t for k, t in file.tensors.items()}
        got = {k: int(v.shape[-1]) for k, v in vectors.items()}
        if got != dims:
            raise EmbeddingFormatError(f"vector size {_dims_text(got)} does not match the model's "
                                       f"{_dims_text(dims)}")
    else:
        width = int(file.tensors[""].shape[-1])
        if two:
            raise EmbeddingFormatError(f"vector size {width} does not match the model's {_dims_text(dims)} "
                                       "(an SD1/SD2 embedding; SDXL needs clip_l and clip_g vectors)")
        (key, want), = dims.items()
        if width != want:
            raise EmbeddingFormatError(f"vector size {width} does not match the model's {want}")
        vectors = {key: file.tensors[""]}
    st = file.path.stat() if file.path is not None else None
    return Embedding(file.name, vectors, file.path, file.step, file.sd_checkpoint, file.sd_checkpoint_name,
                     st.st_size if st else 0, st.st_mtime if st else 0.0)


def scan_embeddings(folder: Path, expected_dims: Mapping[str, int], previous: Iterable[Embedding] = ()
                    ) -> tuple[dict[str, Embedding], dict[str, str]]:
    """Read every embedding under ``folder`` (sub-folders too) for a model whose text encoders have
    ``expected_dims`` (see :func:`encoder_dims`). Returns (loaded by name, skipped name -> reason), both sorted
    by name. Hashes computed for ``previous`` (an earlier scan) are kept for unchanged files."""
    folder = Path(folder)
    loaded: dict[str, Embedding] = {}
    skipped: dict[str, str] = {}
    where: dict[str, str] = {}
    known = {str(e.path): e for e in previous if e.path is not None}
    if not folder.is_dir():
        return loaded, skipped
    for path in sorted(folder.rglob("*"), key=lambda p: (len(p.relative_to(folder).parts), p.as_posix().lower())):
        if path.suffix.lower() not in EMBEDDING_SUFFIXES or not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        name = path.stem
        if path.stat().st_size == 0:
            continue
        if name in where:
            skipped.setdefault(f"{name} ({rel})", f"another embedding is already named {name} ({where[name]})")
            continue
        where[name] = rel
        try:
            emb = match_embedding(read_embedding_file(path), expected_dims)
        except EmbeddingFormatError as e:
            skipped[name] = str(e)
            continue
        old = known.get(str(emb.path))
        if old is not None and (old.size, old.mtime) == (emb.size, emb.mtime):
            emb._sha256 = old._sha256
        loaded[name] = emb
    order = sorted(loaded, key=str.lower)
    return {k: loaded[k] for k in order}, {k: skipped[k] for k in sorted(skipped, key=str.lower)}


def ti_hashes_infotext(used: Iterable[Embedding]) -> str:
    """The "TI hashes" infotext value, ``"name: shorthash, ..."`` (names without ":" and ","), each once."""
    parts, seen = [], set()
    for e in used:
        label = e.name.replace(":", "").replace(",", "")
        if label in seen or not e.shorthash:
            continue
        seen.add(label)
        parts.append(f"{label}: {e.shorthash}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------------- prompts

class EmbeddingLookup:
    """Finds embedding names in token-id sequences (names are matched by their own tokenisation)."""

    def __init__(self, embeddings: Mapping[str, Embedding], tokenizer) -> None:
        self.by_first: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}
        for name, emb in embeddings.items():
            ids = tuple(tokenizer(name, add_special_tokens=False, truncation=False)["input_ids"])
            if not ids:
                continue
            self.by_first.setdefault(ids[0], []).append((ids, emb))
        for entries in self.by_first.values():
            entries.sort(key=lambda e: len(e[0]), reverse=True)   # the longest name wins

    def find(self, ids: Sequence[int], offset: int) -> tuple[Embedding, int] | None:
        """The embedding whose name starts at ``ids[offset]`` and how many tokens the name takes."""
        for name_ids, emb in self.by_first.get(ids[offset], ()):
            if tuple(ids[offset:offset + len(name_ids)]) == name_ids:
                return emb, len(name_ids)
        return None

    def __bool__(self) -> bool:
        return bool(self.by_first)


@dataclass
class Expansion:
    ids: list[int]                         # token ids with each embedding name replaced by placeholders
    source: list[int]                      # for each id, the index of the input token it stands for
    spans: list[tuple[int, Embedding]]     # (start in ids, embedding): n_vectors placeholders from start


def expand_embeddings(ids: Sequence[int], lookup: EmbeddingLookup | None, placeholder: int = 0) -> Expansion:
    """Replace every embedding name in ``ids`` by ``n_vectors`` copies of ``placeholder`` (any id but the
    EOS id: the encoder's pooled output is taken at the EOS)."""
    out: list[int] = []
    source: list[int] = []
    spans: list[tuple[int, Embedding]] = []
    i = 0
    while i < len(ids):
        hit = lookup.find(ids, i) if lookup else None
        if hit is None:
            out.append(int(ids[i]))
            source.append(i)
            i += 1
            continue
        emb, n_tokens = hit
        spans.append((len(out), emb))
        out.extend([placeholder] * emb.n_vectors)
        source.extend([i] * emb.n_vectors)
        i += n_tokens
    return Expansion(out, source, spans)


def replacements_for(spans: Iterable[tuple[int, Embedding]], key: str, start: int = 0, offset: int = 1
                     ) -> list[tuple[int, torch.Tensor]]:
    """Replacements for one encoder row: spans (positions relative to ``start``) shifted by ``offset`` (the BOS).
    ``key`` picks the encoder's vectors (``"text_encoder"`` / ``"text_encoder_2"``)."""
    return [(s - start + offset, emb.vectors[key]) for s, emb in spans]


def chunk_ids_with_embeddings(tokenizer, text: str, lookup: EmbeddingLookup | None, key: str = "text_encoder",
                              min_chunks: int = 1, placeholder: int = 0
                              ) -> tuple[list[list[int]], list[list[tuple[int, torch.Tensor]]], list[Embedding]]:
    """Reference use of the pieces above (no emphasis, no comma rule): ``text`` as 77-token rows (BOS, up to 75
    tokens, EOS, padding), an embedding never split across rows. Returns (rows, replacements per row, the
    embeddings used, in order)."""
    raw = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    exp = expand_embeddings(raw, lookup, placeholder)
    starts = {s: emb for s, emb in exp.spans}
    chunks: list[tuple[list[int], list[tuple[int, Embedding]]]] = [([], [])]
    i = 0
    while i < len(exp.ids):
        tokens, spans = chunks[-1]
        emb = starts.get(i)
        n = emb.n_vectors if emb is not None else 1
        if n > CHUNK:
            raise ValueError(f"embedding {emb.name} has {n} vectors; at most {CHUNK} fit in a prompt chunk")
        if tokens and len(tokens) + n > CHUNK:       # full, or the embedding does not fit: next chunk
            chunks.append(([], []))
            tokens, spans = chunks[-1]
        if emb is not None:
            spans.append((len(tokens), emb))
        tokens.extend(exp.ids[i:i + n])
        i += n
    while len(chunks) < min_chunks:
        chunks.append(([], []))
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows, reps = [], []
    for tokens, spans in chunks:
        row = [bos, *tokens, eos]
        rows.append(row + [pad] * (CHUNK + 2 - len(row)))
        reps.append(replacements_for(spans, key))
    return rows, reps, [emb for _, emb in exp.spans]


# ------------------------------------------------------------------------------------------------- encoding

def encode_with_embeddings(text_encoder, input_ids: torch.Tensor,
                           replacements: Sequence[Sequence[tuple[int, torch.Tensor]]] | None,
                           output_hidden_states: bool = False, **kwargs):
    """``text_encoder(input_ids, output_hidden_states=...)`` with token embeddings replaced: for row ``r``,
    each ``(position, vectors)`` in ``replacements[r]`` puts ``vectors`` ((n, width) or (width,)) at positions
    ``position .. position + n - 1`` in place of the token-embedding lookup, before position embeddings are
    added. Everything after (layers, final norm, pooled EOS output, projection) is the encoder's own forward, so
    with no replacements the result is exactly ``text_encoder(input_ids)``.

    The replacement is a forward hook on the encoder's input-embedding layer for the duration of the call, active
    only for the calling thread; the model's weights are never changed and the hook is always removed."""
    if not replacements or not any(replacements):
        return text_encoder(input_ids, output_hidden_states=output_hidden_states, **kwargs)
    if len(replacements) > input_ids.shape[0]:
        raise ValueError(f"{len(replacements)} replacement rows for a batch of {input_ids.shape[0]}")
    layer = text_encoder.get_input_embeddings()
    width = layer.weight.shape[1]
    seq = input_ids.shape[-1]
    for row, reps in enumerate(replacements):
        for pos, vec in reps:
            n = vec.reshape(-1, width).shape[0] if vec.shape[-1] == width else -1
            if n < 0:
                raise ValueError(f"embedding width {vec.shape[-1]} does not match the encoder's {width}")
            if pos < 0 or pos + n > seq:
                raise ValueError(f"row {row}: {n} vectors at position {pos} do not fit {seq} tokens")
    me = threading.get_ident()

    def hook(module, args, output):
        if threading.get_ident() != me or output.shape[:2] != input_ids.shape[:2]:
            return output
        out = output.clone()
        for row, reps in enumerate(replacements):
            for pos, vec in reps:
                v = vec.reshape(-1, width).to(device=out.device, dtype=out.dtype)
                out[row, pos:pos + v.shape[0]] = v
        return out

    handle = layer.register_forward_hook(hook)
    try:
        return text_encoder(input_ids, output_hidden_states=output_hidden_states, **kwargs)
    finally:
        handle.remove()
