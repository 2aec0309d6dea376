"""Infotext: the generation parameters text stored in every image, in AUTOMATIC1111's format.

Layout (what A1111 writes and third-party readers expect)::

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>      (only when non-empty)
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, ...

Known limits of the format, kept for compatibility: each prompt line is stripped of surrounding
whitespace; a prompt line starting with "Negative prompt:" starts the negative prompt; the last line
is taken as parameters only when it holds at least 3 "Key: value" pairs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
"""One "Key: value" pair of the parameters line (A1111's regex)."""

KEY_RE = re.compile(r"\w[\w \-/]+")
SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE_PREFIX = "Negative prompt:"

PASTE_DEFAULTS: dict[str, str] = {
    "Clip skip": "1",
    "Hires resize-1": "0",
    "Hires resize-2": "0",
    "Hires sampler": "Use same sampler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": "32",
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": "0",
    "Schedule min sigma": "0",
    "Schedule rho": "0",
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Emphasis": "Original",
}
"""Values A1111 assumes for keys an infotext leaves out (it only writes non-defaults, e.g. Clip skip > 1)."""


def format_number(value: float) -> str:
    """A number as infotext writes it: 7.0 -> "7", 0.75 -> "0.75", 1e-05 -> "1e-05"."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def format_value(value: object) -> str:
    """The text of one parameter value, before quoting."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float | int):
        return format_number(value)
    return str(value)


def quote(text: str) -> str:
    """JSON-quote a value that the parameters line could not carry bare.

    A1111 quotes values containing "," ":" or a newline; we also quote values with a double quote,
    a carriage return or surrounding whitespace, which its parser would otherwise alter.
    """
    if any(c in text for c in ',:\n\r"') or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """Decode a JSON-quoted value; anything else is returned unchanged."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def format_params(params: Mapping[str, object]) -> str:
    """The "Key: value, Key: value" line, in the mapping's order, skipping None values."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        if not KEY_RE.fullmatch(key):
            raise ValueError(f"infotext key {key!r} must be a letter/digit then letters, digits, spaces, '-' or '/'")
        parts.append(f"{key}: {quote(format_value(value))}")
    return ", ".join(parts)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The full infotext: prompt, "Negative prompt: ..." when non-empty, then the parameters line."""
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_params(params)}".strip()


def parse_params(line: str) -> dict[str, str]:
    """Parse a parameters line into {key: value}; "WxH" values also give "<key>-1" and "<key>-2"."""
    result: dict[str, str] = {}
    for key, raw in PARAM_RE.findall(line):
        value = unquote(raw)
        result[key] = value
        if size := SIZE_RE.match(value):
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
    return result


def parse_infotext(text: str, *, defaults: bool = False) -> dict[str, object]:
    """Parse an infotext like A1111's parse_generation_parameters.

    Returns {"Prompt", "Negative prompt", every key of the parameters line}. Values are strings
    (quoted ones JSON-decoded; use ``parse_number`` to convert). A size such as "Size: 512x768" is kept
    and also split into "Size-1": "512", "Size-2": "768" (A1111 keeps only the split keys); the same for
    "Hires resize", "Seed resize from" and any other "WxH" value.

    With ``defaults=True`` the keys A1111 fills in when absent are added from ``PASTE_DEFAULTS``
    ("Clip skip" -> "1", "Schedule type" -> "Automatic", "RNG" -> "GPU", "Hires resize-1/-2" -> "0", ...),
    which is what "paste parameters" wants: a missing key means the default, not "leave as is".
    As A1111, an old infotext's "Hypernet" (and "Hypernet strength") becomes a ``<hypernet:NAME:STRENGTH>`` tag
    at the prompt's end. Not done (A1111 does): moving styles out of the prompt, the pre-1.0 "First pass size"
    hires conversion and the per-version backcompat flags.
    """
    *lines, last = text.replace("\r\n", "\n").strip().split("\n")
    if len(PARAM_RE.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            negative.append(line[len(NEGATIVE_PREFIX):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    result: dict[str, object] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    result.update(parse_params(last))
    if result.get("Hypernet"):
        result["Prompt"] = f"{result['Prompt']}<hypernet:{result['Hypernet']}:{result.get('Hypernet strength', '1.0')}>"
    if defaults:
        for key, value in PASTE_DEFAULTS.items():
            result.setdefault(key, value)
    return result


def parse_number(text: object) -> int | float | None:
    """An infotext value as a number ("7" -> 7, "7.5" -> 7.5), or None when it is not one."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return text
    if not isinstance(text, str):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
