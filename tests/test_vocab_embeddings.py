from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from tasks.data import DataError, Example
from tasks.embeddings import load_word_vectors, subword_mean_vectors
from tasks.loaders import load_glue_tsv
from tasks.registry import get_task
from tasks.vocab import SPECIALS, Vocab, example_texts


def test_build_orders_by_frequency_then_alphabet():
    v = Vocab.build(["b a c", "a b", "a d", "The [MASK] the"])
    assert v.words == (*SPECIALS, "a", "b", "the", "c", "d")
    assert (v.index("<pad>"), v.index("<unk>"), v.index("<mask>")) == (0, 1, 2)
    assert len(v) == 8
    assert "[MASK]" not in v and "[mask]" not in v


def test_min_freq_and_max_size():
    texts = ["x x x y y z", "w"]
    assert Vocab.build(texts, min_freq=2).words == (*SPECIALS, "x", "y")
    assert Vocab.build(texts, max_size=3).words == (*SPECIALS, "x", "y", "w")
    assert Vocab.build(texts, max_size=0).words == SPECIALS
    with pytest.raises(ValueError, match="min_freq"):
        Vocab.build(texts, min_freq=0)


def test_encode_maps_unknown_and_mask_and_truncates():
    v = Vocab.build(["the movie was good ."])
    ids = v.encode("The movie was [MASK] , really .")
    assert ids == [v.index("the"), v.index("movie"), v.index("was"), 2, 1, 1, v.index(".")]
    assert v.encode("The movie was [MASK]", max_length=2) == ids[:2]
    assert v.encode("") == []
    assert v.encode("don't", 10) == [1, 1]  # "do", "n't" unknown here
    assert v.decode(ids[:3]) == ["the", "movie", "was"]


def test_custom_mask_token():
    v = Vocab.build(["a <m> b"], mask_token="<m>")
    assert v.encode("a <m> b") == [v.index("a"), 2, v.index("b")]


def test_example_texts_cover_both_sides():
    ex = [Example(0, "a b", "c"), Example(1, "d")]
    assert list(example_texts(ex)) == ["a b", "c", "d"]


def test_save_load_roundtrip_is_json(tmp_path):
    v = Vocab.build(["über café naïve café"])
    path = tmp_path / "sub" / "vocab.json"
    v.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["words"][:3] == list(SPECIALS) and data["format"] == "distillray-vocab"
    loaded = Vocab.load(path)
    assert loaded == v and loaded.encode("café naïve") == v.encode("café naïve")
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temp files left


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Vocab.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a vocabulary JSON"):
        Vocab.load(bad)
    bad.write_text(json.dumps({"format": "distillray-vocab", "version": 1, "words": ["a", "b"]}))
    with pytest.raises(DataError, match="broken vocabulary: a vocabulary must start with"):
        Vocab.load(bad)
    with pytest.raises(ValueError, match="more than once"):
        Vocab((*SPECIALS, "a", "a"))


# ---------------------------------------------------------------------------------------------
# word vectors


def _vocab() -> Vocab:
    return Vocab((*SPECIALS, "the", "cat", "paris", "zebra"))


def test_glove_text(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("the 0.5 1 -1\ncat 2 2 2\ndog 9 9 9\nthe 7 7 7\n")
    m, hits = load_word_vectors(path, _vocab(), expected_dim=3)
    assert m.dtype == np.float32 and m.shape == (7, 3) and hits == 2
    np.testing.assert_array_equal(m[3], [0.5, 1, -1])  # first occurrence wins
    np.testing.assert_array_equal(m[4], [2, 2, 2])
    np.testing.assert_array_equal(m[0], 0.0)  # <pad>
    assert 0 < np.abs(m[5]).max() < 1  # missing words: small random vectors
    m2, _ = load_word_vectors(path, _vocab())
    np.testing.assert_array_equal(m, m2)  # fixed seed
    m3, _ = load_word_vectors(path, _vocab(), seed=1)
    assert not np.array_equal(m[5], m3[5])


def test_word2vec_text_header_and_case_fallback(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("4 2\nParis 1 2\nparis 3 4\nThe 5 6\nZebra 7 8 \n")
    m, hits = load_word_vectors(path, _vocab(), expected_dim=2)
    assert hits == 3
    np.testing.assert_array_equal(m[5], [3, 4])  # exact match beats the earlier cased one
    np.testing.assert_array_equal(m[3], [5, 6])  # "the" only as "The"
    np.testing.assert_array_equal(m[6], [7, 8])  # trailing space tolerated


def test_gzip_and_words_with_spaces(tmp_path):
    path = tmp_path / "g.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("cat 1 2\n. . . 3 4\nzebra 5 6\n")
    m, hits = load_word_vectors(path, _vocab())
    assert hits == 2
    np.testing.assert_array_equal(m[6], [5, 6])


@pytest.mark.parametrize("content,pattern", [
    ("the 1 2 3\ncat 1 2\n", r"g.txt, line 2: 2 values after the word, expected 3"),
    ("the 1 2 3\ncat 1 2 3 4\n", r"line 2: 4 values after the word, expected 3"),
    ("2 3\nthe 1 2 3\ncat 1 2\n", r"line 3: 2 values after the word, expected 3"),
    ("the 1 2 3\ncat 1 x 3\n", r"line 2, column 7: value 2 of .cat. \(x\) is not a number"),
    ("", r"the file is empty"),
])
def test_malformed_vector_files(tmp_path, content, pattern):
    path = tmp_path / "g.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_word_vectors(path, _vocab())


def test_dimension_mismatch_and_missing_file(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("the 1 2 3\n")
    with pytest.raises(DataError, match=r"g.txt, line 1: vectors have 3 dimensions, expected 50"):
        load_word_vectors(path, _vocab(), expected_dim=50)
    path.write_text("10 300\nthe 1 2 3\n")
    with pytest.raises(DataError, match=r"line 1: vectors have 300 dimensions, expected 3"):
        load_word_vectors(path, _vocab(), expected_dim=3)
    with pytest.raises(DataError, match="nope.txt does not exist"):
        load_word_vectors(tmp_path / "nope.txt", _vocab())


def test_subword_mean_vectors():
    # vocab: <pad> <unk> <mask> the cat paris zebra; piece table: 0 [UNK], 1 [MASK], 2.. pieces
    table = np.arange(6 * 2, dtype=np.float32).reshape(6, 2)
    pieces = [[9], [9], [9], [2], [3, 4], [0], []]  # specials' own pieces are ignored
    m, found = subword_mean_vectors(_vocab(), pieces, table, unk_id=0, mask_id=1)
    assert m.dtype == np.float32 and m.shape == (7, 2) and found == 2
    np.testing.assert_array_equal(m[0], 0.0)  # <pad>
    np.testing.assert_array_equal(m[1], table[0])  # <unk>: the [UNK] row
    np.testing.assert_array_equal(m[2], table[1])  # <mask>: the [MASK] row
    np.testing.assert_array_equal(m[3], table[2])
    np.testing.assert_array_equal(m[4], (table[3] + table[4]) / 2)  # mean of the pieces
    np.testing.assert_array_equal(m[5], table[0])  # only [UNK]: the [UNK] row
    np.testing.assert_array_equal(m[6], table[0])  # no pieces at all: likewise
    m2, _ = subword_mean_vectors(_vocab(), pieces, table, unk_id=None, mask_id=None)
    np.testing.assert_array_equal(m2[1], m2[2])  # no [UNK]: one small random vector
    assert 0 < np.abs(m2[1]).max() < 1
    with pytest.raises(ValueError, match="piece lists for a vocabulary of 7"):
        subword_mean_vectors(_vocab(), pieces[:3], table, unk_id=0)


@pytest.mark.assets
def test_glove_asset_on_sst2_vocab(glue_dir, glove_path):
    with open(glove_path, encoding="utf-8") as f:
        first = f.readline().split()
    assert first[:3] == ["the", "0.418", "0.24968"]
    dev = load_glue_tsv(get_task("sst2"), glue_dir, "dev")
    vocab = Vocab.build(example_texts(dev))
    m, hits = load_word_vectors(glove_path, vocab, expected_dim=50)
    assert m.shape == (len(vocab), 50)
    np.testing.assert_allclose(m[vocab.index("the")], np.array(first[1:], dtype=np.float32))
    assert hits / (len(vocab) - 3) > 0.9  # PROVENANCE: 92.4% of distinct SST-2 tokens
    np.testing.assert_array_equal(m[0], 0.0)
