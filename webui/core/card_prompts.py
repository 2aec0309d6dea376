"""What an extra-network card puts into the prompts, and taking it out again (A1111: a click on a card whose
network is in the prompt already removes it)."""
from __future__ import annotations

import re

TAGS = {"lora": "lora", "hypernetwork": "hypernet"}


def card_texts(kind: str, name: str, metadata: dict, default_multiplier: float) -> tuple[str, str]:
    """(prompt text, negative-prompt text) of a card: a LoRA gives ``<lora:name:w>`` with its "preferred weight"
    (else the default multiplier) and then its "activation text"; its "negative text" goes to the negative prompt
    as ``(text:1)``. A hypernetwork gives ``<hypernet:name:m>``, an embedding its name."""
    if kind == "embedding":
        return name, ""
    if kind not in TAGS:
        raise ValueError(f"no prompt text for a {kind} card")
    weight = default_multiplier
    if kind == "lora":
        try:
            weight = float(metadata.get("preferred weight") or 0) or default_multiplier
        except (TypeError, ValueError):
            weight = default_multiplier
    text = f"<{TAGS[kind]}:{name}:{weight:g}>"
    activation = str(metadata.get("activation text") or "").strip() if kind == "lora" else ""
    if activation:
        text += f" {activation}"
    negative = str(metadata.get("negative text") or "").strip() if kind == "lora" else ""
    return text, f"({negative}:1)" if negative else ""


def _tag_pattern(kind: str, name: str) -> re.Pattern | None:
    if kind not in TAGS:
        return None
    return re.compile(rf"<{TAGS[kind]}:{re.escape(name)}(?::[^<>]*)?>")


def _remove(prompt: str, start: int, end: int, separator: str) -> str:
    before, after = prompt[:start], prompt[end:]
    if separator and before.endswith(separator):
        before = before[:-len(separator)]
    elif separator and not before and after.startswith(separator):
        after = after[len(separator):]
    return before + after


def contains(prompt: str, kind: str, name: str, text: str) -> bool:
    pattern = _tag_pattern(kind, name)
    return bool(text and text in prompt) or bool(pattern and pattern.search(prompt))


def toggle(prompt: str, kind: str, name: str, text: str, separator: str = " ") -> tuple[str, bool]:
    """(new prompt, added): the card's text appended after ``separator``; or, when the prompt holds it already
    (the whole text, or for a LoRA / hypernetwork its tag with any weight), that taken out."""
    prompt = prompt or ""
    if text and text in prompt:
        i = prompt.rindex(text)
        return _remove(prompt, i, i + len(text), separator), False
    pattern = _tag_pattern(kind, name)
    found = list(pattern.finditer(prompt)) if pattern else []
    if found:
        return _remove(prompt, found[-1].start(), found[-1].end(), separator), False
    if not text:
        return prompt, False
    return (f"{prompt}{separator}{text}" if prompt.strip() else text), True


def toggle_negative(negative: str, text: str, add: bool, separator: str = " ") -> str:
    """The negative prompt after a card click: its negative text added with the card, taken out with it."""
    negative = negative or ""
    if not text:
        return negative
    if add:
        return negative if text in negative else (f"{negative}{separator}{text}" if negative.strip() else text)
    if text in negative:
        i = negative.rindex(text)
        return _remove(negative, i, i + len(text), separator)
    return negative
