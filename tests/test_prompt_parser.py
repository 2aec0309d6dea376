"""The A1111 prompt language (webui/core/prompt_parser.py): emphasis runs, editing/alternation schedules, AND,
extra-network tags and 75-token chunking. Expected values follow the A1111 WebUI's behaviour (its doctests and
its code read case by case); the few deliberate differences are marked "deviation"."""

from __future__ import annotations

import re

import pytest

from webui.core.errors import InvalidField
from webui.core.prompt_parser import (
    EmbeddingIndex,
    ExtraNetworkParams,
    chunk_tokens,
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
    lora_multipliers,
    parse_extra_networks,
    parse_prompt_attention,
    schedule_for_step,
    split_and,
    token_count,
    token_limit,
)

UP, DOWN = 1.1, 1 / 1.1

# ------------------------------------------------------------------------------------------------- emphasis

ATTENTION_CASES = [
    ("", [("", 1.0)]),
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", UP), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", UP)]),
    ("[unbalanced", [("unbalanced", DOWN)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", UP)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),  # A1111's doctest: the third "(" never closes
    ("((a))", [("a", UP * UP)]),
    ("(((a)))", [("a", UP * UP * UP)]),
    ("[a]", [("a", DOWN)]),
    ("[[a]]", [("a", DOWN * DOWN)]),
    ("(a:1.5)", [("a", 1.5)]),
    ("(a: 1.5 )", [("a", 1.5)]),
    ("(a:.5)", [("a", 0.5)]),
    ("(a:+2)", [("a", 2.0)]),
    ("(a:-1)", [("a", -1.0)]),
    ("x (a:0)", [("x ", 1.0), ("a", 0.0)]),
    ("((a:2))", [("a", 2.0 * UP)]),
    ("(a:1e2)", [("a:1e2", UP)]),  # not a weight: the colon is text, the bracket a plain (x)
    ("(a:b)", [("a:b", UP)]),
    ("a:1.5) b", [("a:1.5) b", 1.0)]),  # a weight close without "(" is text
    ("[a:1.5)]", [("a:1.5)", DOWN)]),
    ("a) b] c", [("a) b] c", 1.0)]),  # unmatched closers are text
    ("((a)", [("a", UP * UP)]),  # the unclosed outer "(" still multiplies
    ("a (b [c", [("a ", 1.0), ("b ", UP), ("c", UP * DOWN)]),
    ("(a [b] c)", [("a ", UP), ("b", DOWN * UP), (" c", UP)]),
    ("[a (b) c]", [("a ", DOWN), ("b", UP * DOWN), (" c", DOWN)]),
    ("(a)(b:1.1)", [("ab", UP)]),  # equal weights merge
    ("()", [("", 1.0)]),
    ("(:1.5)", [("", 1.0)]),
    ("a (:1.5) b", [("a  b", 1.0)]),
    ("\\\\", [("\\", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # a backslash before anything else is dropped
    ("\\(a\\)", [("(a)", 1.0)]),
    ("(a\\)", [("a)", UP)]),
    ("\\[a\\] (b)", [("[a] ", 1.0), ("b", UP)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a BREAK", [("a", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("a,BREAK,b", [("a,", 1.0), ("BREAK", -1.0), (",b", 1.0)]),
    ("aBREAK b break", [("aBREAK b break", 1.0)]),  # whole upper-case word only
    ("(a BREAK b)", [("a", UP), ("BREAK", -UP), ("b", UP)]),
    ("(a) BREAK (b)", [("a", UP), ("", 1.0), ("BREAK", -1.0), ("", 1.0), ("b", UP)]),
    ("a (b:1.2) c (d:0.8)", [("a ", 1.0), ("b", 1.2), (" c ", 1.0), ("d", 0.8)]),
    ("(a:1.2.3)", [("a:1.2.3", UP)]),  # deviation: A1111 raises ValueError on float("1.2.3")
]


@pytest.mark.parametrize(("prompt", "expected"), ATTENTION_CASES, ids=[repr(c[0]) for c in ATTENTION_CASES])
def test_parse_prompt_attention(prompt, expected):
    got = parse_prompt_attention(prompt)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], abs=1e-12)


def test_attention_weights_are_exact_products():
    # merging compares weights exactly, so the multiplication order matters: the A1111 doctest's values
    runs = parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert [w for _, w in runs] == [1.0, 1.5730000000000004, 1.1, 1.0, 1.1, 0.55, 1.1, 1.4641000000000006, 1.1]
    assert len(ATTENTION_CASES) >= 40


# ------------------------------------------------------------------------------------------------- schedules

def sched(prompt, steps=10, hires_steps=None, old=False):
    return get_learned_conditioning_prompt_schedules([prompt], steps, hires_steps, old)[0]


ALT_B = [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]

SCHEDULE_CASES = [
    ("test", 10, [(10, "test")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b:3 ]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),  # nested editing
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 10, ALT_B),
    ("[fe|]male", 4, [(1, "female"), (2, "male"), (3, "female"), (4, "male")]),
    ("[fe|||]male", 5, [(1, "female"), (2, "male"), (3, "male"), (4, "male"), (5, "female")]),
    ("[a:b:0.5]", 10, [(5, "a"), (10, "b")]),
    ("[a:b:0.33]", 20, [(6, "a"), (20, "b")]),  # int(0.33 * 20)
    ("[a:b:5]", 10, [(5, "a"), (10, "b")]),
    ("[a:b:1.0]", 10, [(10, "a")]),  # a number with a "." is a fraction: 1.0 = never switch
    ("[a:b:2.5]", 10, [(10, "a")]),  # fraction 2.5, capped at the steps
    ("[a:b:15]", 10, [(10, "a")]),
    ("[a:b:0]", 10, [(10, "b")]),
    ("[a:b:-3]", 10, [(10, "b")]),
    ("[a:b:0.05]", 10, [(10, "b")]),  # int(0.5) == 0: the switch happens before step 1
    ("[a:b:1e1]", 20, [(10, "a"), (20, "b")]),  # no ".": a step number
    ("[a::3]", 10, [(3, "a"), (10, "")]),
    ("[a:(b:1.2):3]", 10, [(3, "a"), (10, "(b:1.2)")]),
    ("[[a|b]:c:3]", 5, [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "c")]),  # alternation inside editing
    ("[x|[y:z:2]]", 4, [(1, "x"), (2, "y"), (3, "x"), (4, "z")]),  # editing inside alternation
    ("[a|b] [c:d:0.5]", 4, [(1, "a c"), (2, "b c"), (3, "a d"), (4, "b d")]),
    ("[a:b:c:3]", 10, [(10, "[a:b:c:3]")]),  # not a construct: kept as text
    ("a [b:c:3", 10, [(10, "a [b:c:3")]),
    ("\\[a:b:3\\]", 10, [(10, "\\[a:b:3\\]")]),  # escaped brackets stay (emphasis parsing reads them later)
    ("a | b [c:3]", 10, [(10, "a | b [c:3]")]),  # "|" outside [..|..]: the prompt does not parse at all
    ("a [{b|d{:.5] c", 10, [(10, "a [{b|d{:.5] c")]),  # A1111's stale doctest says otherwise; its code does this
    ("a [b:3] \\", 10, [(10, "a [b:3] \\")]),  # a trailing backslash does not parse either
    ("[a:b:2]\n[c|d]", 4, [(1, "a\nc"), (2, "a\nd"), (3, "b\nc"), (4, "b\nd")]),
]


@pytest.mark.parametrize(("prompt", "steps", "expected"), SCHEDULE_CASES, ids=[repr(c[0]) for c in SCHEDULE_CASES])
def test_schedules(prompt, steps, expected):
    assert sched(prompt, steps) == expected


def test_hires_schedules_shift_the_scale():
    # hires pass: fractions count from 1.0, step numbers from the first pass's steps
    assert sched("a [b:.5] c", 10, 10) == [(10, "a b c")]
    assert sched("a [b:1.5] c", 10, 10) == [(5, "a  c"), (10, "a b c")]
    assert sched("[a:b:25]", 20, 10) == [(5, "a"), (10, "b")]
    assert sched("[a:b:5]", 20, 10) == [(10, "b")]
    assert sched("[a|b]", 20, 3) == [(1, "a"), (2, "b"), (3, "a")]


def test_old_scheduling():
    assert sched("[a:b:2.5]", 10, old=True) == [(2, "a"), (10, "b")]
    assert sched("[a:b:1.0]", 10, old=True) == [(1, "a"), (10, "b")]
    assert sched("[a:b:0.5]", 10, old=True) == [(5, "a"), (10, "b")]
    assert sched("a [b:.5] c", 10, 8, old=True) == [(5, "a  c"), (10, "a b c")]  # hires ignored


def test_schedules_for_a_batch():
    got = get_learned_conditioning_prompt_schedules(["a [b:3]", "c", "a [b:3]"], 10)
    assert got == [[(3, "a "), (10, "a b")], [(10, "c")], [(3, "a "), (10, "a b")]]
    assert len(SCHEDULE_CASES) >= 15


def test_schedule_for_step():
    schedule = [(5, "a"), (10, "b")]
    assert [schedule_for_step(schedule, s) for s in (0, 1, 5, 6, 9, 10)] == ["a", "a", "a", "b", "b", "b"]
    assert schedule_for_step(schedule, 11) == "b"  # deviation: A1111 falls back to the first entry
    assert schedule_for_step(sched("[a:b:0.5]", 10), 5) == "a"


# ------------------------------------------------------------------------------------------------------ AND

@pytest.mark.parametrize(("prompt", "expected"), [
    ("a cat", [("a cat", 1.0)]),
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
    ("a cat:1.2 AND a dog : 0.5", [("a cat", 1.2), (" a dog", 0.5)]),
    ("a:1. AND b:.5 AND c:-1", [("a", 1.0), (" b", 0.5), (" c", -1.0)]),
    ("a cat and a dog", [("a cat and a dog", 1.0)]),
    ("ANDROID", [("ANDROID", 1.0)]),
    ("(cat)AND(dog)", [("(cat)", 1.0), ("(dog)", 1.0)]),
    ("(a:1.2)", [("(a:1.2)", 1.0)]),
    ("a [b:c:0.5", [("a [b:c", 0.5)]),
    ("a AND", [("a", 1.0), ("", 1.0)]),
    ("a\nAND b:2\n", [("a", 1.0), (" b", 2.0)]),
])
def test_split_and(prompt, expected):
    assert split_and(prompt) == expected


def test_multicond_prompt_list():
    res, flat, index = get_multicond_prompt_list(["a AND b", "b AND c:2", "a AND b"])
    assert flat == ["a", " b", "b", " c"]
    assert res == [[(0, 1.0), (1, 1.0)], [(2, 1.0), (3, 2.0)], [(0, 1.0), (1, 1.0)]]
    assert index == {"a": 0, " b": 1, "b": 2, " c": 3}


# ------------------------------------------------------------------------------------------------- networks

def test_extra_network_tags_are_removed_and_parsed():
    text, nets = parse_extra_networks("a <lora:x:1> b <hypernet:h:0.7><lyco:y:0.6:0.2:unet=0.1>, c <lora:z>")
    assert text == "a  b , c "
    assert list(nets) == ["lora", "hypernet", "lyco"]
    assert [p.items for p in nets["lora"]] == [["x", "1"], ["z"]]
    assert nets["hypernet"][0].name == "h" and nets["hypernet"][0].positional == ["h", "0.7"]
    assert nets["lyco"][0].positional == ["y", "0.6", "0.2"] and nets["lyco"][0].named == {"unet": "0.1"}


@pytest.mark.parametrize(("tag", "expected"), [
    ("<lora:x>", (1.0, 1.0, None)),
    ("<lora:x:0.7>", (0.7, 0.7, None)),  # one weight for the text encoder and the UNet
    ("<lora:x:0.5:0.8>", (0.5, 0.8, None)),  # te weight, unet weight
    ("<lora:x:1:0.5:8>", (1.0, 0.5, 8)),  # and the dynamic rank
    ("<lora:x:1:unet=0.5>", (1.0, 0.5, None)),
    ("<lora:x:te=0.3>", (0.3, 0.3, None)),  # unet defaults to te
    ("<lora:x:1:0.2:te=0.4:dyn=4>", (0.4, 0.2, 4)),  # named beat positional
    ("<lora:x:-1>", (-1.0, -1.0, None)),
])
def test_lora_multipliers(tag, expected):
    _, nets = parse_extra_networks(tag)
    assert lora_multipliers(nets["lora"][0]) == expected


def test_extra_network_odd_cases():
    assert parse_extra_networks("<lora:> a<b <not a tag> x>y") == ("<lora:> a<b <not a tag> x>y", {})
    assert parse_extra_networks("(<lora:x:1>:1.2)")[0] == "(:1.2)"
    params = ExtraNetworkParams(["x", "a=b=c", "k=v"])
    assert params.positional == ["x", "a=b=c"] and params.named == {"k": "v"}
    with pytest.raises(InvalidField):
        lora_multipliers(ExtraNetworkParams(["x", "strong"]))


# ------------------------------------------------------------------------------------------------- chunking

COMMA = 1
UNKNOWN = 2


def tokenize(text: str) -> list[int]:
    """A stand-in tokenizer: "," -> COMMA, "wN" -> 100 + N, "embA".. -> 10.., any other word -> UNKNOWN."""
    ids = []
    for word in re.findall(r"[^\s,]+|,", text):
        if word == ",":
            ids.append(COMMA)
        elif re.fullmatch(r"w\d+", word):
            ids.append(100 + int(word[1:]))
        else:
            ids.append({"my": 10, "emb": 11, "big": 12}.get(word, UNKNOWN))
    return ids


def words(start: int, stop: int) -> str:
    return " ".join(f"w{i}" for i in range(start, stop))


def chunk(prompt: str, **kwargs):
    return chunk_tokens(parse_prompt_attention(prompt), tokenize, COMMA, **kwargs)


def lengths(chunks) -> list[int]:
    return [len(c.tokens) for c in chunks]


def test_chunks_short_and_empty():
    assert chunk("") == [([], [], [])]
    (only,) = chunk("w1 (w2) [w3 x]")
    assert only.tokens == [101, 102, 103, UNKNOWN] and only.weights == pytest.approx([1.0, 1.1, 1 / 1.1, 1 / 1.1])
    assert token_count([only]) == 4 and token_limit(4) == 75 and token_limit(0) == 75


def test_chunks_at_the_75_token_edge():
    assert lengths(chunk(words(0, 75))) == [75]
    two = chunk(words(0, 76))
    assert lengths(two) == [75, 1] and two[1].tokens == [175]
    assert token_count(two) == 76 and token_limit(76) == 150
    assert lengths(chunk(words(0, 150))) == [75, 75]


@pytest.mark.parametrize(("prompt", "expected"), [
    ("w1 BREAK w2", [[101], [102]]),
    ("BREAK w1", [[], [101]]),  # a leading BREAK gives an all-padding chunk
    ("w1 BREAK", [[101]]),  # a trailing one adds nothing
    ("w1 BREAK BREAK w2", [[101], [], [102]]),
    ("(w1 BREAK w2)", [[101], [102]]),  # deviation: A1111 would encode the word BREAK with weight -1.1
])
def test_break(prompt, expected):
    assert [c.tokens for c in chunk(prompt)] == expected


def test_break_at_chunk_edges():
    assert lengths(chunk(words(0, 75) + " BREAK w99")) == [75, 1]  # no empty chunk after a full one
    assert lengths(chunk(words(0, 74) + " BREAK w99")) == [74, 1]
    assert lengths(chunk(words(0, 76) + " BREAK w99")) == [75, 1, 1]


def test_comma_backtracking_at_exactly_20():
    # comma at index 55: 75 - 55 == 20 -> the 19 words after it move to the next chunk
    got = chunk(words(0, 55) + " , " + words(56, 77))
    assert lengths(got) == [56, 21]
    assert got[0].tokens[-1] == COMMA and got[1].tokens[0] == 156
    # comma at index 54: 21 > 20 -> plain cut at 75
    assert lengths(chunk(words(0, 54) + " , " + words(55, 77))) == [75, 2]
    assert lengths(chunk(words(0, 55) + " , " + words(56, 77), comma_padding_backtrack=0)) == [75, 2]
    assert lengths(chunk(words(0, 55) + " , " + words(56, 77), comma_padding_backtrack=19)) == [75, 2]


def test_comma_backtracking_edges():
    # the comma is the 75th token: nothing to move
    assert lengths(chunk(words(0, 74) + " , w99")) == [75, 1]
    # the 76th token is itself a comma: no back-tracking, it opens the next chunk
    got = chunk(words(0, 60) + " , " + words(61, 75) + " , w99")
    assert lengths(got) == [75, 2] and got[1].tokens == [COMMA, 199]
    # weights travel with the moved tokens
    got = chunk(words(0, 70) + ", (w70 w71 w72 w73 w74 w75)")
    assert lengths(got) == [71, 6] and got[1].weights == pytest.approx([1.1] * 6)


def test_embeddings():
    index = EmbeddingIndex({"my": ([10], 2), "my emb": ([10, 11], 3), "big": ([12], 76)})
    (only,) = chunk("w1 my emb w2 (my:1.5)", embedding_lookup=index, embedding_placeholder=-1)
    assert only.tokens == [101, -1, -1, -1, 102, -1, -1]  # longest name first: "my emb" (3 vectors), then "my"
    assert only.embeddings == [(1, "my emb"), (5, "my")]
    assert only.weights == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 1.5])
    # never split: 73 tokens + a 3-vector embedding -> the chunk closes at 73
    got = chunk(words(0, 73) + " my emb w1", embedding_lookup=index)
    assert lengths(got) == [73, 4] and got[1].embeddings == [(0, "my emb")]
    with pytest.raises(InvalidField):
        chunk("big", embedding_lookup=index)


def test_embedding_moves_with_comma_backtracking():
    index = EmbeddingIndex({"my emb": ([10, 11], 3)})
    got = chunk(words(0, 60) + " , w61 my emb " + words(65, 77), embedding_lookup=index)
    assert lengths(got) == [61, 16]
    assert got[0].embeddings == [] and got[1].embeddings == [(1, "my emb")]
    assert got[1].tokens[:5] == [161, 0, 0, 0, 165]


# ------------------------------------------------------------------------------------------------- pipeline

def test_whole_pipeline():
    prompt = "<lora:style:0.8> a [red:blue:0.5] (cat:1.3) AND a dog:0.5 <hypernet:h:1>"
    text, nets = parse_extra_networks(prompt)
    assert [p.name for p in nets["lora"]] == ["style"] and lora_multipliers(nets["lora"][0]).unet == 0.8
    (cat, w_cat), (dog, w_dog) = split_and(text)
    assert (w_cat, w_dog) == (1.0, 0.5)  # the removed tag leaves only a space after ":0.5"
    schedule = sched(cat, 20)
    assert schedule == [(10, " a red (cat:1.3)"), (20, " a blue (cat:1.3)")]
    assert parse_prompt_attention(schedule_for_step(schedule, 15)) == [(" a blue ", 1.0), ("cat", 1.3)]
    assert dog == " a dog"
