"""The A1111 prompt language as pure text -> data functions (no torch, no tokenizer of its own).

A prompt goes through these stages, in this order (as the A1111 WebUI does):

1. ``parse_extra_networks``: ``<lora:name:w>``-style tags are removed and returned per kind.
2. ``split_and`` / ``get_multicond_prompt_list``: the positive prompt is split on ``AND`` into weighted
   sub-prompts (composable diffusion). The negative prompt is not split.
3. ``get_learned_conditioning_prompt_schedules``: each (sub-)prompt becomes a schedule of plain texts for
   prompt editing ``[from:to:when]`` and alternation ``[a|b]``; ``schedule_for_step`` picks the text of a step.
4. ``parse_prompt_attention``: one scheduled text becomes (text, weight) runs for ``(x)``, ``[x]``, ``(x:1.3)``;
   ``BREAK`` becomes the marker ``("BREAK", -1.0)``.
5. ``chunk_tokens``: the runs, tokenized by the caller's tokenizer, become chunks of at most 75 tokens with
   per-token weights, honouring BREAK, the comma back-tracking rule and textual-inversion embeddings.

Deliberate differences from A1111 (everything else follows its behaviour, including its quirks):
- ``parse_prompt_attention``: a ``(x:w)`` whose ``w`` matches ``[+-]?[.\\d]+`` but is not a number (``1.2.3``)
  makes A1111 raise; here the ``:`` is kept as text and the ``)`` closes with the usual 1.1.
- ``chunk_tokens``: a BREAK inside brackets (``(a BREAK b)``) gets a multiplied marker weight (``-1.1``); A1111
  then encodes the word "BREAK" with that negative weight, here any negative-weight marker breaks the chunk.
- ``chunk_tokens`` raises ``InvalidField`` for an embedding longer than a chunk (A1111 overfills the chunk), and
  when comma back-tracking moves an embedding to the next chunk its position moves with it (A1111 leaves it behind).
- ``schedule_for_step``: a step past the last entry gives the last text (A1111 falls back to the first one).
- Where A1111's grammar is ambiguous (a construct directly followed by a stray ``[ ] ( ) :`` at the top level, as
  in ``[a:b:3]]``), A1111's result changes from run to run (its parser's choice depends on Python's hash seed);
  here the construct always wins, as it does in A1111 without the stray character.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from webui.core.errors import InvalidField

# --------------------------------------------------------------------------------------------- extra networks

_EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass
class ExtraNetworkParams:
    """The colon-separated items of one ``<kind:item:item...>`` tag.

    An item with exactly one ``=`` is named (``unet=0.5`` -> ``named["unet"] == "0.5"``); every other item is
    positional, the first being the network's name.
    """

    items: list[str]
    positional: list[str] = field(init=False)
    named: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.positional, self.named = [], {}
        for item in self.items:
            parts = item.split("=", 2)
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    @property
    def name(self) -> str:
        return self.positional[0] if self.positional else ""


def parse_extra_networks(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    """Remove every ``<kind:args>`` tag from ``prompt``; return the cleaned prompt and the tags' params per kind.

    ``kind`` is a word (``lora``, ``lyco``, ``hypernet``, anything an extension registers); the args are split
    on ``:``. The tag is replaced by nothing, so the text around it is kept as written (spaces included).
    """
    found: dict[str, list[ExtraNetworkParams]] = {}

    def take(match: re.Match[str]) -> str:
        found.setdefault(match.group(1), []).append(ExtraNetworkParams(match.group(2).split(":")))
        return ""

    return _EXTRA_NETWORK_TAG.sub(take, prompt), found


class LoraMultipliers(NamedTuple):
    te: float
    unet: float
    dyn_dim: int | None


def lora_multipliers(params: ExtraNetworkParams, default: float = 1.0) -> LoraMultipliers:
    """The multipliers of a ``<lora:...>`` tag as A1111's built-in Lora extension reads them.

    ``<lora:name>`` -> te = unet = ``default``; ``<lora:name:w>`` -> te = unet = w (one weight for both the text
    encoder and the UNet); ``<lora:name:te_w:unet_w>`` -> separate weights; a fourth positional item is the
    dynamic rank ``dyn_dim``. Named items ``te=``, ``unet=``, ``dyn=`` override the positional ones
    (``<lora:x:1:unet=0.5>`` -> te 1.0, unet 0.5). The unet weight defaults to the te weight.
    """
    pos, named = params.positional, params.named
    try:
        te = float(named.get("te", pos[1] if len(pos) > 1 else default))
        unet = float(named.get("unet", pos[2] if len(pos) > 2 else te))
        dyn = named.get("dyn", pos[3] if len(pos) > 3 else None)
        return LoraMultipliers(te, unet, None if dyn is None else int(dyn))
    except ValueError as e:
        raise InvalidField("prompt", f"bad number in <lora:{':'.join(params.items)}>: {e}") from None


# ------------------------------------------------------------------------------------------------------ AND

_AND = re.compile(r"\bAND\b")
_AND_WEIGHT = re.compile(r"^([\s\S]*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split on the word ``AND`` (upper case, whole word) into ``(sub_prompt, weight)``.

    A sub-prompt may end in ``:w`` (``a cat AND a dog:0.5``); its weight defaults to 1.0. Trailing whitespace
    is dropped, leading whitespace is kept (as A1111 does: the text is later tokenized, where it does not matter).
    """
    parts = []
    for sub in _AND.split(prompt):
        m = _AND_WEIGHT.match(sub)
        assert m is not None  # every string matches
        parts.append((m.group(1), float(m.group(2)) if m.group(2) is not None else 1.0))
    return parts


def get_multicond_prompt_list(
    prompts: Sequence[str],
) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """A1111's AND expansion of a batch: per prompt the ``(index, weight)`` of its sub-prompts, the de-duplicated
    flat list of sub-prompts (each to be scheduled and encoded once) and the sub-prompt -> index map."""
    res_indexes: list[list[tuple[int, float]]] = []
    flat: list[str] = []
    index_of: dict[str, int] = {}
    for prompt in prompts:
        entry = []
        for text, weight in split_and(prompt):
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            entry.append((index_of[text], weight))
        res_indexes.append(entry)
    return res_indexes, flat, index_of


# ------------------------------------------------------------------------------ prompt editing and alternation


@dataclass
class _Scheduled:
    before: list[_Part] | None
    after: list[_Part]
    number: str  # as written: "0.5", "3", "1e1"; its meaning depends on the steps


@dataclass
class _Alternate:
    options: list[list[_Part]]


_Part = str | _Scheduled | _Alternate
_NUMBER_TAIL = re.compile(r"\s*([+-]?(?:\d+[eE][+-]?\d+|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+))\s*\]")


class _TooDeep(Exception):
    pass


class _ScheduleParser:
    """Recursive descent over A1111's prompt-editing grammar.

    Inside brackets everything must nest: ``(p)``, ``(p:p)``, ``[p]`` (kept verbatim), ``[p:p:N]``, ``[p:N]``
    (editing), ``[p|p|...]`` (alternation); ``:`` ``|`` and unmatched brackets are not allowed. At the top level a
    bracket that does not open a valid construct and any stray ``]``, ``)``, ``:`` are plain text; a ``|`` outside
    an alternation or a backslash at the end (or before a newline) makes the whole prompt unparseable, and then
    it is used as written, without any editing.
    """

    MAX_DEPTH = 150  # deeper nesting is refused (the prompt is then used as written; A1111 hits a RecursionError)

    def __init__(self, text: str) -> None:
        self.s = text
        self._memo: dict[int, tuple[list[_Part], int] | None] = {}  # a construct's parse does not depend on context
        self._depth = 0

    def parse(self) -> list[_Part] | None:
        try:
            return self._top()
        except _TooDeep:
            return None

    def _top(self) -> list[_Part] | None:
        s, out, i = self.s, [], 0
        while True:
            parts, i = self._prompt(i)
            out += parts
            if i == len(s):
                return out
            if s[i] in "|\\":
                return None
            out.append(s[i])  # a stray bracket or colon
            i += 1

    def _prompt(self, i: int) -> tuple[list[_Part], int]:
        """Plain text and constructs up to the first character that ends a prompt (or a failed construct)."""
        s, out, start = self.s, [], i
        while i < len(s):
            c = s[i]
            if c == "\\":
                if i + 1 == len(s) or s[i + 1] == "\n":
                    break
                i += 2
            elif c in "[(":
                construct = self._construct(i)
                if construct is None:
                    break
                out.append(s[start:i])
                out += construct[0]
                i = start = construct[1]
            elif c in ":|])":
                break
            else:
                i += 1
        out.append(s[start:i])
        return [p for p in out if p != ""], i

    def _at(self, i: int) -> str:
        return self.s[i] if i < len(self.s) else ""

    def _construct(self, i: int) -> tuple[list[_Part], int] | None:
        if i not in self._memo:
            if self._depth >= self.MAX_DEPTH:
                raise _TooDeep
            self._depth += 1
            self._memo[i] = self._parse_construct(i)
            self._depth -= 1
        return self._memo[i]

    def _parse_construct(self, i: int) -> tuple[list[_Part], int] | None:
        first, j = self._prompt(i + 1)
        c = self._at(j)
        if self.s[i] == "(":
            if c == ")":
                return ["(", *first, ")"], j + 1
            if c == ":":
                second, k = self._prompt(j + 1)
                if self._at(k) == ")":
                    return ["(", *first, ":", *second, ")"], k + 1
            return None
        if c == "]":
            return ["[", *first, "]"], j + 1
        if c == "|":
            options = [first]
            while c == "|":
                option, j = self._prompt(j + 1)
                options.append(option)
                c = self._at(j)
            return ([_Alternate(options)], j + 1) if c == "]" else None
        if c == ":":
            if m := _NUMBER_TAIL.match(self.s, j + 1):
                return [_Scheduled(None, first, m.group(1))], m.end()
            second, k = self._prompt(j + 1)
            if self._at(k) == ":" and (m := _NUMBER_TAIL.match(self.s, k + 1)):
                return [_Scheduled(first, second, m.group(1))], m.end()
        return None


def _walk(parts: Iterable[_Part]) -> Iterable[_Part]:
    for part in parts:
        yield part
        if isinstance(part, _Scheduled):
            yield from _walk((part.before or []) + part.after)
        elif isinstance(part, _Alternate):
            for option in part.options:
                yield from _walk(option)


def _render(parts: Iterable[_Part], step: int, when: Callable[[str], int]) -> str:
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, _Scheduled):
            out.append(_render((part.before or []) if step <= when(part.number) else part.after, step, when))
        else:
            out.append(_render(part.options[(step - 1) % len(part.options)], step, when))
    return "".join(out)


def get_learned_conditioning_prompt_schedules(
    prompts: Sequence[str], steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[list[tuple[int, str]]]:
    """For each prompt, the list of ``(end_at_step, text)``: ``text`` is used up to and including ``end_at_step``.

    ``[from:to:when]`` uses ``from`` while ``step <= when``, then ``to``; ``[to:when]`` and ``[from::when]`` leave
    the missing side empty. ``when`` is read as A1111 reads it now: a number written with a ``.`` is a fraction of
    the steps (``int(when * steps)``, so ``1.0`` means "never switch" and ``2.5`` is capped at ``steps``), one
    without is a step number. With ``hires_steps`` (the hires-fix pass) the scale is shifted: fractions count from
    1.0 (``1.5`` = half-way through the hires pass), step numbers from ``steps``, and the schedule spans
    ``hires_steps``. ``use_old_scheduling`` restores the old rule: ``when < 1`` is a fraction, else a step number,
    and the hires pass is scheduled like the first one. ``[a|b|c]`` alternates every step (step 1 -> a).
    Switch points below 1 never happen (the second text is used throughout); prompts that do not parse are
    returned unchanged as ``[(steps, prompt)]``.
    """
    if hires_steps is None or use_old_scheduling:
        span, int_offset, float_offset = steps, 0, 0.0
    else:
        span, int_offset, float_offset = hires_steps, steps, 1.0

    def when(number: str) -> int:
        v = float(number)
        if use_old_scheduling:
            v = v * span if v < 1 else v
        elif "." in number:
            v = (v - float_offset) * span
        else:
            v = v - int_offset
        return min(span, int(v))

    def schedule(prompt: str) -> list[tuple[int, str]]:
        tree = _ScheduleParser(prompt).parse()
        if tree is None:
            return [(span, prompt)]
        ends = {span}
        for part in _walk(tree):
            if isinstance(part, _Scheduled) and when(part.number) >= 1:
                ends.add(when(part.number))
            elif isinstance(part, _Alternate):
                ends.update(range(1, span + 1))
        return [(end, _render(tree, end, when)) for end in sorted(ends)]

    cache: dict[str, list[tuple[int, str]]] = {}
    return [cache[p] if p in cache else cache.setdefault(p, schedule(p)) for p in prompts]


def schedule_for_step(schedule: Sequence[tuple[int, str]], step: int) -> str:
    """The text of ``schedule`` at ``step``: the first entry with ``step <= end_at_step``.

    ``step`` counts as A1111's denoiser does: 0 for the first call, one per conditioning evaluation (the schedule
    was built for that many evaluations). Past the end, the last text.
    """
    for end_at_step, text in schedule:
        if step <= end_at_step:
            return text
    return schedule[-1][1]


# ------------------------------------------------------------------------------------------------- emphasis

_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_ESCAPABLE = "()[]\\"
_PLAIN_END = re.compile(r"[\\()\[\]:]")
BREAK_MARKER = ("BREAK", -1.0)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into runs of ``(text, weight)`` with A1111's emphasis rules.

    ``(x)`` multiplies by 1.1, ``[x]`` by 1/1.1, ``(x:1.3)`` by 1.3; nesting multiplies. ``\\(``, ``\\)``,
    ``\\[``, ``\\]``, ``\\\\`` are the literal characters; a backslash before anything else is dropped. A closing
    bracket without its opener is text; an opener never closed is dropped and multiplies everything after it.
    ``BREAK`` (a whole word, with its surrounding spaces) becomes ``("BREAK", -1.0)`` (times any enclosing
    multipliers). Adjacent runs of equal weight are merged; an empty prompt gives ``[("", 1.0)]``.
    """
    res: list[list] = []  # [text, weight]
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for run in res[start:]:
            run[1] *= factor

    def add_text(chunk: str) -> None:
        for n, part in enumerate(_BREAK.split(chunk)):
            if n:
                res.append(list(BREAK_MARKER))
            res.append([part, 1.0])

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            escaped = i + 1 < len(text) and text[i + 1] in _ESCAPABLE
            res.append([text[i + 1] if escaped else "", 1.0])
            i += 2 if escaped else 1
        elif c == "(":
            round_open.append(len(res))
            i += 1
        elif c == "[":
            square_open.append(len(res))
            i += 1
        elif c == ":":
            m = _WEIGHT_CLOSE.match(text, i)
            weight = _to_float(m.group(1)) if m else None
            if m and not round_open:
                add_text(m.group(0))
                i = m.end()
            elif m and weight is not None:
                multiply(round_open.pop(), weight)
                i = m.end()
            else:
                add_text(":")
                i += 1
        elif c == ")" and round_open:
            multiply(round_open.pop(), 1.1)
            i += 1
        elif c == "]" and square_open:
            multiply(square_open.pop(), 1 / 1.1)
            i += 1
        elif c in ")]":
            add_text(c)
            i += 1
        else:
            m = _PLAIN_END.search(text, i)
            end = m.start() if m else len(text)
            add_text(text[i:end])
            i = end

    for start in round_open:
        multiply(start, 1.1)
    for start in square_open:
        multiply(start, 1 / 1.1)

    merged: list[list] = []
    for run in res:
        if merged and merged[-1][1] == run[1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(t, w) for t, w in merged] or [("", 1.0)]


def _to_float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------- chunking


class EmbeddingMatch(NamedTuple):
    """A textual-inversion embedding found in the token ids: its name, how many ids of its name were matched
    and how many vectors (token positions) it occupies in the chunk."""

    name: str
    n_tokens: int
    n_vectors: int


EmbeddingLookup = Callable[[Sequence[int], int], EmbeddingMatch | None]


class EmbeddingIndex:
    """An ``embedding_lookup`` for ``chunk_tokens`` built from ``{name: (token ids of the name, n_vectors)}``.

    At a position, the embeddings whose name starts with that token are tried longest name first, as A1111 does.
    """

    def __init__(self, embeddings: Mapping[str, tuple[Sequence[int], int]]) -> None:
        self._by_first: dict[int, list[tuple[list[int], str, int]]] = {}
        for name, (ids, n_vectors) in embeddings.items():
            if ids:
                self._by_first.setdefault(ids[0], []).append((list(ids), name, n_vectors))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda c: len(c[0]), reverse=True)

    def __call__(self, token_ids: Sequence[int], offset: int) -> EmbeddingMatch | None:
        for ids, name, n_vectors in self._by_first.get(token_ids[offset], []):
            if list(token_ids[offset:offset + len(ids)]) == ids:
                return EmbeddingMatch(name, len(ids), n_vectors)
        return None


class TokenChunk(NamedTuple):
    """One chunk of at most ``chunk_len`` token ids with their weights, before BOS/EOS and padding (the caller
    pads to ``chunk_len`` with weight 1.0). ``embeddings`` lists ``(offset, name)``: the embedding's vectors replace
    the placeholder ids from ``offset`` on (offsets count from the first token after BOS)."""

    tokens: list[int]
    weights: list[float]
    embeddings: list[tuple[int, str]]


def chunk_tokens(
    runs: Sequence[tuple[str, float]],
    tokenize: Callable[[str], list[int]],
    comma_token: int | None,
    chunk_len: int = 75,
    comma_padding_backtrack: int = 20,
    embedding_lookup: EmbeddingLookup | None = None,
    embedding_placeholder: int = 0,
) -> list[TokenChunk]:
    """Cut weighted runs (from ``parse_prompt_attention``) into chunks of at most ``chunk_len`` tokens.

    ``tokenize`` turns a run's text into ids without BOS/EOS. A BREAK marker closes the current chunk (the caller
    pads it), even an empty one (a leading BREAK gives an all-padding chunk); right after exactly ``chunk_len``
    tokens it closes that full chunk and no empty one. When a chunk is full and the next token is not a
    comma, and the chunk's last comma is within the last ``comma_padding_backtrack`` tokens (``chunk_len - index
    <= backtrack``), the tokens after that comma move to the next chunk (0 disables this). An embedding found by
    ``embedding_lookup`` takes ``n_vectors`` positions filled with ``embedding_placeholder`` and is never split: if
    it does not fit, the chunk is closed first. There is always at least one chunk.
    """
    chunks: list[TokenChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    fixes: list[tuple[int, str]] = []
    last_comma = -1

    def close() -> None:
        nonlocal tokens, weights, fixes, last_comma
        chunks.append(TokenChunk(tokens, weights, fixes))
        tokens, weights, fixes, last_comma = [], [], [], -1

    for text, weight in runs:
        if text == BREAK_MARKER[0] and weight < 0:
            close()
            continue
        ids = tokenize(text)
        pos = 0
        while pos < len(ids):
            token = ids[pos]
            if token == comma_token:
                last_comma = len(tokens)
            elif (comma_padding_backtrack and len(tokens) == chunk_len and last_comma != -1
                  and chunk_len - last_comma <= comma_padding_backtrack):
                cut = last_comma + 1
                moved = (tokens[cut:], weights[cut:], [(o - cut, n) for o, n in fixes if o >= cut])
                tokens, weights, fixes = tokens[:cut], weights[:cut], [(o, n) for o, n in fixes if o < cut]
                close()
                tokens, weights, fixes = (list(x) for x in moved)
            if len(tokens) == chunk_len:
                close()

            match = embedding_lookup(ids, pos) if embedding_lookup is not None else None
            if match is None:
                tokens.append(token)
                weights.append(weight)
                pos += 1
                continue
            if match.n_vectors > chunk_len:
                raise InvalidField("prompt", f"embedding {match.name} has {match.n_vectors} vectors, "
                                   f"more than the {chunk_len} tokens of a chunk")
            if len(tokens) + match.n_vectors > chunk_len:
                close()
            fixes.append((len(tokens), match.name))
            tokens += [embedding_placeholder] * match.n_vectors
            weights += [weight] * match.n_vectors
            pos += match.n_tokens

    if tokens or not chunks:
        close()
    return chunks


def token_count(chunks: Sequence[TokenChunk], chunk_len: int = 75) -> int:
    """The count A1111 shows next to the prompt box: full chunks count ``chunk_len``, the last its own tokens."""
    return (len(chunks) - 1) * chunk_len + len(chunks[-1].tokens) if chunks else 0


def token_limit(count: int, chunk_len: int = 75) -> int:
    """The denominator of A1111's counter ("80/150"): the count rounded up to whole chunks (at least one)."""
    return -(-max(count, 1) // chunk_len) * chunk_len
