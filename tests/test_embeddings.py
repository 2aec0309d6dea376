"""Textual inversion: A1111 file formats, matching to a model's encoders, and encoding prompts that use them."""
from __future__ import annotations

import hashlib
import pickle

import pytest
import torch
from embedding_factory import word_vectors, write_embedding
from lora_factory import tiny_pipeline

from webui.engine.conditioning import chunk_ids
from webui.models.embeddings import (
    Embedding,
    EmbeddingFormatError,
    EmbeddingLookup,
    chunk_ids_with_embeddings,
    encode_with_embeddings,
    encoder_dims,
    expand_embeddings,
    read_embedding_file,
    replacements_for,
    scan_embeddings,
    ti_hashes_infotext,
)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("ti-sd1"), "sd1", seed=21)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("ti-sdxl"), "sdxl", seed=22)


def ids_tensor(rows):
    return torch.tensor(rows, dtype=torch.long)


def assert_same_output(a, b):
    assert torch.equal(a[0], b[0])
    if getattr(a, "text_embeds", None) is not None:
        assert torch.equal(a.text_embeds, b.text_embeds)
    else:
        assert torch.equal(a.pooler_output, b.pooler_output)
    if a.hidden_states is not None:
        assert len(a.hidden_states) == len(b.hidden_states)
        for x, y in zip(a.hidden_states, b.hidden_states):
            assert torch.equal(x, y)


# ------------------------------------------------------------------------------------------------- files

@pytest.mark.parametrize("fmt", ["pt", "pt-paramdict", "safetensors", "bin"])
def test_formats_read(tmp_path, fmt):
    vec = torch.randn(3, 64)
    path = write_embedding(tmp_path / f"thing.{fmt.split('-')[0]}", vec, fmt=fmt)
    f = read_embedding_file(path)
    assert f.name == "thing" and not f.is_sdxl and f.n_vectors == 3 and f.shape == 64
    assert torch.equal(f.tensors[""], vec)
    if fmt.startswith("pt"):
        assert f.step == 100 and f.sd_checkpoint == "0123456789" and f.sd_checkpoint_name == "tiny"


def test_single_vector_bin_and_sdxl_file(tmp_path):
    one = write_embedding(tmp_path / "one.bin", torch.randn(1, 64), fmt="bin")
    assert read_embedding_file(one).tensors[""].shape == (1, 64)       # 1-D in the file
    xl = write_embedding(tmp_path / "xl.safetensors", {"clip_l": torch.randn(2, 64), "clip_g": torch.randn(2, 128)},
                         fmt="sdxl")
    f = read_embedding_file(xl)
    assert f.is_sdxl and f.n_vectors == 2 and f.shape == 192


def test_bad_files_give_reasons(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"string_to_param": {"*": Evil()}}, protocol=2))
    with pytest.raises(EmbeddingFormatError, match="refused"):
        read_embedding_file(tmp_path / "evil.pt")
    torch.save({"string_to_param": {"a": torch.ones(1, 4), "b": torch.ones(1, 4)}}, tmp_path / "two.pt")
    with pytest.raises(EmbeddingFormatError, match="2 terms"):
        read_embedding_file(tmp_path / "two.pt")
    torch.save({"a": torch.ones(4), "b": torch.ones(4)}, tmp_path / "many.bin")
    with pytest.raises(EmbeddingFormatError, match="not a textual-inversion"):
        read_embedding_file(tmp_path / "many.bin")
    (tmp_path / "junk.safetensors").write_bytes(b"garbage!")
    with pytest.raises(EmbeddingFormatError, match="unreadable"):
        read_embedding_file(tmp_path / "junk.safetensors")


def test_scan_matches_the_model_and_lists_skipped_with_reasons(tmp_path, sd1, sdxl):
    d = tmp_path / "embeddings"
    write_embedding(d / "good.pt", torch.randn(2, 64))
    write_embedding(d / "sub" / "deep.safetensors", torch.randn(1, 64), fmt="safetensors")
    write_embedding(d / "wide.pt", torch.randn(1, 1024))
    write_embedding(d / "xl.safetensors", {"clip_l": torch.randn(2, 64), "clip_g": torch.randn(2, 128)}, fmt="sdxl")
    write_embedding(d / "sub" / "good.bin", torch.randn(1, 64), fmt="bin")           # duplicate name
    (d / "notes.txt").write_text("ignored")
    (d / "empty.pt").write_bytes(b"")

    loaded, skipped = scan_embeddings(d, encoder_dims(sd1))
    assert list(loaded) == ["deep", "good"]
    assert loaded["good"].vectors["text_encoder"].shape == (2, 64) and loaded["good"].n_vectors == 2
    assert loaded["good"].shape == 64
    assert skipped["wide"] == "vector size 1024 does not match the model's 64"
    assert "SDXL embedding" in skipped["xl"]
    assert "already named good" in skipped["good (sub/good.bin)"]
    assert set(skipped) == {"wide", "xl", "good (sub/good.bin)"}

    loaded, skipped = scan_embeddings(d, encoder_dims(sdxl))
    assert list(loaded) == ["xl"]
    xl = loaded["xl"]
    assert set(xl.vectors) == {"text_encoder", "text_encoder_2"} and xl.shape == 192 and xl.n_vectors == 2
    assert skipped["good"].startswith("vector size 64 does not match the model's 192 (64 + 128)")
    assert scan_embeddings(tmp_path / "none", {"text_encoder": 64}) == ({}, {})


def test_hash_api_item_and_infotext(tmp_path, sd1):
    path = write_embedding(tmp_path / "e" / "red.pt", torch.randn(2, 64))
    write_embedding(tmp_path / "e" / "blue.pt", torch.randn(1, 64))
    loaded, _ = scan_embeddings(tmp_path / "e", encoder_dims(sd1))
    red = loaded["red"]
    assert red.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and red.shorthash == red.sha256[:12]
    assert red.api_item() == {"step": 100, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "tiny",
                              "shape": 64, "vectors": 2}
    text = ti_hashes_infotext([red, loaded["blue"], red])
    assert text == f"red: {red.shorthash}, blue: {loaded['blue'].shorthash}"
    again, _ = scan_embeddings(tmp_path / "e", encoder_dims(sd1), previous=loaded.values())
    assert again["red"]._sha256 == red.sha256                    # carried over, not recomputed


# ------------------------------------------------------------------------------------------------- encoding

@pytest.mark.parametrize("which", ["text_encoder", "text_encoder_2"])
def test_no_replacements_is_the_plain_forward_exactly(sdxl, which):
    enc = getattr(sdxl, which)
    rows = chunk_ids(sdxl.tokenizer, "a red circle on a blue square", 2)
    ids = ids_tensor(rows)
    with torch.no_grad():
        for hs in (False, True):
            assert_same_output(encode_with_embeddings(enc, ids, [], output_hidden_states=hs),
                               enc(ids, output_hidden_states=hs))
            assert_same_output(encode_with_embeddings(enc, ids, [[], []], output_hidden_states=hs),
                               enc(ids, output_hidden_states=hs))


@pytest.mark.parametrize("which", ["text_encoder", "text_encoder_2"])
def test_replacing_with_a_words_token_embedding_equals_the_word(sdxl, which):
    enc, tok = getattr(sdxl, which), sdxl.tokenizer
    plain = ids_tensor(chunk_ids(tok, "a red circle"))
    red_circle = tok("red circle", add_special_tokens=False)["input_ids"]
    placeholder = ids_tensor(chunk_ids(tok, "a ! ! "))          # "!" placeholders where the words were
    assert placeholder[0, 2:4].tolist() != red_circle
    vec = word_vectors(enc, tok, "red circle")
    with torch.no_grad():
        got = encode_with_embeddings(enc, placeholder, [[(2, vec)]], output_hidden_states=True)
        want = enc(plain, output_hidden_states=True)
    assert_same_output(got, want)
    # single vectors given 1-D, and a batch where only the second row has a replacement
    batch = torch.cat([plain, placeholder])
    with torch.no_grad():
        got = encode_with_embeddings(enc, batch, [[], [(2, vec[0]), (3, vec[1])]])
        want = enc(torch.cat([plain, plain]))
    assert_same_output(got, want)
    assert not enc.get_input_embeddings()._forward_hooks        # nothing left on the model


def test_bad_replacements_are_refused_and_leave_no_hook(sd1):
    enc = sd1.text_encoder
    ids = ids_tensor(chunk_ids(sd1.tokenizer, "a cat"))
    with pytest.raises(ValueError, match="width"):
        encode_with_embeddings(enc, ids, [[(1, torch.zeros(2, 32))]])
    with pytest.raises(ValueError, match="do not fit"):
        encode_with_embeddings(enc, ids, [[(76, torch.zeros(2, 64))]])
    assert not enc.get_input_embeddings()._forward_hooks


def test_prompt_with_embedding_encodes_like_its_words(tmp_path, sd1):
    """A TI file whose vectors are the token embeddings of "red circle", used by name in a prompt, gives exactly
    the conditioning of the prompt with those words (here through chunk_ids_with_embeddings, multi-vector)."""
    tok, enc = sd1.tokenizer, sd1.text_encoder
    write_embedding(tmp_path / "e" / "my-shape.pt", word_vectors(enc, tok, "red circle"))
    loaded, _ = scan_embeddings(tmp_path / "e", encoder_dims(sd1))
    lookup = EmbeddingLookup(loaded, tok)
    rows, reps, used = chunk_ids_with_embeddings(tok, "a my-shape on blue", lookup)
    assert [e.name for e in used] == ["my-shape"] and len(rows) == 1
    assert rows[0][:6] == [tok.bos_token_id, *tok("a", add_special_tokens=False)["input_ids"], 0, 0,
                           *tok("on", add_special_tokens=False)["input_ids"],
                           *tok("blue", add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        got = encode_with_embeddings(enc, ids_tensor(rows), reps, output_hidden_states=True)
        want = enc(ids_tensor(chunk_ids(tok, "a red circle on blue")), output_hidden_states=True)
    assert_same_output(got, want)
    # without the lookup the name is just text and the result differs
    rows2, reps2, used2 = chunk_ids_with_embeddings(tok, "a my-shape on blue", None)
    assert used2 == [] and not any(reps2)
    with torch.no_grad():
        assert not torch.equal(enc(ids_tensor(rows2))[0], want[0])


def test_sdxl_prompt_uses_clip_l_and_clip_g(tmp_path, sdxl):
    tok = sdxl.tokenizer
    vecs = {"clip_l": word_vectors(sdxl.text_encoder, tok, "red"),
            "clip_g": word_vectors(sdxl.text_encoder_2, sdxl.tokenizer_2, "red")}
    write_embedding(tmp_path / "e" / "colour.safetensors", vecs, fmt="sdxl")
    loaded, skipped = scan_embeddings(tmp_path / "e", encoder_dims(sdxl))
    assert skipped == {}
    for key, t in (("text_encoder", tok), ("text_encoder_2", sdxl.tokenizer_2)):
        enc = getattr(sdxl, key)
        rows, reps, _ = chunk_ids_with_embeddings(t, "a colour circle", EmbeddingLookup(loaded, t), key=key)
        with torch.no_grad():
            got = encode_with_embeddings(enc, ids_tensor(rows), reps, output_hidden_states=True)
            want = enc(ids_tensor(chunk_ids(t, "a red circle")), output_hidden_states=True)
        assert_same_output(got, want)


def test_lookup_prefers_the_longest_name_and_expansion_tracks_sources(sd1):
    tok = sd1.tokenizer
    short = Embedding("bad", {"text_encoder": torch.zeros(1, 64)})
    long = Embedding("bad-hands", {"text_encoder": torch.ones(3, 64)})
    lookup = EmbeddingLookup({"bad": short, "bad-hands": long}, tok)
    ids = tok("bad-hands and bad", add_special_tokens=False)["input_ids"]
    exp = expand_embeddings(ids, lookup, placeholder=7)
    and_id = tok("and", add_special_tokens=False)["input_ids"][0]
    assert exp.ids == [7, 7, 7, and_id, 7]
    assert [(s, e.name) for s, e in exp.spans] == [(0, "bad-hands"), (4, "bad")]
    assert exp.source == [0, 0, 0, 3, 4]         # the name "bad-hands" is 3 tokens: bad, -, hands
    reps = replacements_for(exp.spans, "text_encoder")
    assert [p for p, _ in reps] == [1, 5] and torch.equal(reps[0][1], long.vectors["text_encoder"])


def test_embedding_is_not_split_across_chunks(sd1):
    tok = sd1.tokenizer
    emb = Embedding("zzemb", {"text_encoder": torch.ones(4, 64)})
    lookup = EmbeddingLookup({"zzemb": emb}, tok)
    text = "cat " * 73 + "zzemb dog"                # 73 tokens, then 4 vectors that do not fit in 75
    rows, reps, used = chunk_ids_with_embeddings(tok, text, lookup, min_chunks=3)
    assert len(rows) == 3 and all(len(r) == 77 for r in rows)
    assert reps[0] == [] and [p for p, _ in reps[1]] == [1] and reps[2] == []
    assert rows[0][74] == tok.eos_token_id       # 73 cats, then EOS and padding
    assert rows[1][1:6] == [0, 0, 0, 0, tok("dog", add_special_tokens=False)["input_ids"][0]]
