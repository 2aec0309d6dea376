"""Build the CLIP BPE tokenizer files the studio ships (HF CLIPTokenizer layout).

The source is open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (the BPE merges OpenAI released with CLIP). The output
folder holds ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json``, which
``transformers.CLIPTokenizer.from_pretrained(folder)`` loads without a model hub.

Vocabulary (49,408 tokens): the 256 byte-characters, the same 256 with ``</w>``, the first 48,894 merges joined,
then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

Usage (run once; the generated files are committed, so the studio needs no open_clip)::

    pip install open_clip_torch --no-deps
    python tools/make_tokenizer.py                 # -> webui/models/configs/tokenizer/
    python tools/make_tokenizer.py --check         # also verify a few published id lists
    pip uninstall -y open_clip_torch

``--pad-token '!'`` writes the variant SD2.x and SDXL's second tokenizer use (padding with "!", id 0).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "webui" / "models" / "configs" / "tokenizer"

VOCAB_SIZE = 49408
N_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"

# Published CLIP ids (openai/clip-vit-large-patch14 tokenizer).
KNOWN_IDS = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "": [49406, 49407],
}


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable-character map used by GPT-2/CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def find_bpe_file() -> Path:
    """Locate open_clip's BPE file without importing open_clip (its import needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open_clip is not installed: pip install open_clip_torch --no-deps")
    for location in spec.submodule_search_locations:
        path = Path(location) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    raise SystemExit("bpe_simple_vocab_16e6.txt.gz not found in the open_clip package")


def read_merges(bpe_path: Path) -> list[tuple[str, str]]:
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Line 0 is a version header; CLIP uses exactly the next 48,894 merges.
    merges = [tuple(line.split()) for line in lines[1 : 1 + N_MERGES]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise SystemExit(f"unexpected BPE file layout in {bpe_path}")
    return merges  # type: ignore[return-value]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise SystemExit(f"vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab


def write_tokenizer(out_dir: Path, merges: list[tuple[str, str]], pad_token: str = EOS) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(merges)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with open(out_dir / "merges.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def check(out_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(out_dir))
    assert len(tok) == VOCAB_SIZE, len(tok)
    for text, ids in KNOWN_IDS.items():
        got = tok(text).input_ids
        assert got == ids, (text, got, ids)
    padded = tok("a cat", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == 77, len(padded)
    print(f"ok: {len(tok)} tokens, {len(KNOWN_IDS)} known id lists match, pad id {tok.pad_token_id}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--bpe", type=Path, default=None, help="path to bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--pad-token", default=EOS, help="padding token (default %(default)s; SD2/SDXL-G use '!')")
    parser.add_argument("--check", action="store_true", help="verify the result with transformers.CLIPTokenizer")
    args = parser.parse_args(argv)

    bpe = args.bpe or find_bpe_file()
    merges = read_merges(bpe)
    write_tokenizer(args.out, merges, pad_token=args.pad_token)
    print(f"wrote {args.out} ({len(merges)} merges, {VOCAB_SIZE} tokens)")
    if args.check:
        check(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
