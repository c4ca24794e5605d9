"""Heuristic augmentation (Tang et al. 2019): the rules (tasks/augment.py) and the cached,
Ray-parallel stage (orchestrator/stages/augment_stage.py).

Rule tests run on generated text with a dictionary tagger (no assets needed) and, when
../shared/assets is present, on real SST-2 sentences with NLTK's tagger.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from orchestrator.config import AugmentConfig, find_assets
from orchestrator.stages.augment_stage import (
                                               COLUMNS,
                                               MANIFEST_FILE,
                                               TAGS_DIR,
                                               TRANSFER_FILE,
                                               augment_cache_key,
                                               augment_dataset,
                                               )
from tasks import augment as aug
from tasks.data import Example
from tasks.text import tokenize

ASSETS = find_assets() or Path("/nonexistent/shared/assets")
NLTK_DIR = ASSETS / "nltk_data"
SST2 = ASSETS / "glue" / "SST-2" / "train.tsv"
MASK = "[MASK]"

_HAVE = SST2.is_file() and (NLTK_DIR / "taggers" / "averaged_perceptron_tagger_eng").is_dir()


def needs_sst2(fn):
    """Real-data tests: SST-2 sentences tagged by NLTK, from ../shared/assets."""
    skip = pytest.mark.skipif(
        not _HAVE,
        reason=f"SST-2 train.tsv or nltk_data not found under {ASSETS} (shared assets absent; "
               "set $DISTILLRAY_ASSETS)",
    )
    return pytest.mark.assets(skip(fn))


# ---------------------------------------------------------------------------------------------
# generated text with a dictionary tagger (no assets)

VOCAB = {
    "DET": ["the", "a", "this", "every", "that"],
    "ADJ": ["good", "bad", "long", "funny", "dull", "bright", "odd", "warm", "cold", "rare"],
    "NOUN": ["movie", "plot", "actor", "scene", "story", "score", "camera", "script", "cast",
             "ending", "hero", "villain"],
    "VERB": ["is", "feels", "drags", "shines", "works", "fails", "moves", "seems"],
    "ADV": ["very", "too", "rarely", "oddly", "quite", "never"],
    ".": [".", ",", "!"],
}
TAG_OF = {w: t for t, ws in VOCAB.items() for w in ws}
PATTERNS = [
    ["DET", "ADJ", "NOUN", "VERB", "ADV", "ADJ", "."],
    ["DET", "NOUN", "VERB", "ADJ"],
    ["NOUN", "."],
    ["ADV", "ADJ", "NOUN", ",", "DET", "NOUN", "VERB", "ADV", "ADJ", "."],
    ["DET", "ADJ", "ADJ", "NOUN", "VERB", "DET", "NOUN"],
]


def dict_tagger(words: list[str]) -> list[str]:
    return [TAG_OF[w] for w in words]


def generated_sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pat = PATTERNS[int(rng.integers(len(PATTERNS)))]
        words = [t if t == "," else VOCAB[t][int(rng.integers(len(VOCAB[t])))] for t in pat]
        out.append(" ".join(words))
    return out


def gen_examples(n: int = 1600, pairs: bool = False) -> list[Example]:
    a = generated_sentences(n, 1)
    b = generated_sentences(n, 2)
    return [Example(i, a[i], b[i] if pairs else None, i % 2) for i in range(n)]


def cfg_of(**kw) -> AugmentConfig:
    base = dict(enabled=True, nltk_data=str(NLTK_DIR) if NLTK_DIR.is_dir() else None)
    base.update(kw)
    return AugmentConfig(**base)


def within(observed: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(observed - n * p) <= sigmas * sd


def check_rule_rates(examples, tagger, p_mask, p_pos, min_words=10_000):
    """apply_rules on every sentence; observed mask/swap rates match p_mask/p_pos; swapped words
    keep their tag."""
    tags = aug.tag_examples(examples, tagger)
    lex = aug.build_pos_lexicon(examples, tags=tags)
    n_words = n_masked = n_swapped = n_cand = 0
    for ex, (ta, _) in zip(examples, tags):
        toks = tokenize(ex.text_a)
        rng = np.random.default_rng([7, ex.id])
        out, counts = aug.apply_rules(toks, ta, lex, rng, p_mask, p_pos)
        assert len(out) == len(toks)
        for w, new, tag in zip(toks, out, ta):
            n_words += 1
            n_cand += lex.total(tag) - lex.count(w, tag) > 0
            if new == MASK:
                n_masked += 1
            elif new != w:
                n_swapped += 1
                # the replacement has the original's tag in the training lexicon
                assert lex.count(new, tag) > 0, (w, tag, new, lex.tags_of(new))
        assert counts["masked"] == sum(n == MASK for n in out)
    assert n_words >= min_words
    assert within(n_masked, n_words, p_mask), (n_masked, n_words, p_mask)
    # the POS rule fires with p_pos on every word; it changes the words that have a candidate
    assert within(n_swapped, n_cand, p_pos), (n_swapped, n_cand, p_pos)
    assert n_cand > 0.95 * n_words
    return lex


def test_rule_rates_generated():
    examples = gen_examples(1800)
    check_rule_rates(examples, dict_tagger, 0.1, 0.1)
    check_rule_rates(examples, dict_tagger, 0.3, 0.25)


def test_swapped_words_follow_unigram_distribution_within_tag():
    # NOUN "movie" 6x, "plot" 3x, "actor" 1x: replacing "plot" draws movie:actor at 6:1
    examples = [Example(0, "movie " * 6 + "plot " * 3 + "actor")]
    lex = aug.build_pos_lexicon(examples, lambda ws: ["NOUN"] * len(ws))
    rng = np.random.default_rng(0)
    draws = [lex.sample_other("plot", "NOUN", u) for u in rng.random(7000)]
    assert set(draws) == {"movie", "actor"}
    assert within(draws.count("actor"), 7000, 1 / 7)
    lone = aug.build_pos_lexicon([Example(0, "wow")], lambda ws: ["X"] * len(ws))
    assert lone.sample_other("wow", "X", 0.5) is None  # no other candidate: the word stays


def test_stats_counts_match_probabilities_generated():
    examples = gen_examples(700)
    cfg = cfg_of(p_mask=0.2, p_pos=0.15, p_ng=0.25, n_iter=20)
    tags = aug.tag_examples(examples, dict_tagger)
    lex = aug.build_pos_lexicon(examples, tags=tags)
    rows, st = aug.augment_examples(examples, lex, cfg, tags)
    assert st.words >= 10_000 and st.samples == 20 * len(examples)
    assert within(st.masked_words, st.words, 0.2)
    assert within(st.swap_draws, st.words, 0.15)
    assert within(st.ngram_samples, st.samples, 0.25)
    assert st.rows == len(rows) == len(examples) + st.augmented_rows
    assert st.samples == st.augmented_rows + st.copies_dropped + st.duplicates_dropped


def test_ngrams_are_contiguous_pieces_of_the_rule_applied_sentence():
    examples = gen_examples(400)
    tags = aug.tag_examples(examples, dict_tagger)
    lex = aug.build_pos_lexicon(examples, tags=tags)
    by_id = {e.id: (tokenize(e.text_a), t[0]) for e, t in zip(examples, tags)}
    # no word rules: every sample is an exact contiguous n-gram, n in 1..min(5, len)
    rows, st = aug.augment_examples(examples, lex, cfg_of(p_mask=0, p_pos=0, p_ng=1.0), tags)
    assert st.ngram_samples == st.samples
    lengths = set()
    for r in rows:
        if r.aug_index == 0:
            continue
        toks, orig = tokenize(r.text_a), by_id[r.example_id][0]
        assert 1 <= len(toks) <= min(5, len(orig))
        lengths.add(len(toks))
        assert any(orig[s:s + len(toks)] == toks for s in range(len(orig) - len(toks) + 1))
    assert lengths == {1, 2, 3, 4, 5}
    # with the word rules: an n-gram of a sentence where some words became [MASK] or a word
    # of the same tag
    rows, _ = aug.augment_examples(examples, lex, cfg_of(p_mask=0.2, p_pos=0.2, p_ng=1.0), tags)

    def fits(piece, orig, otags, s):
        return all(w == o or w == MASK or lex.count(w, t) > 0
                   for w, o, t in zip(piece, orig[s:], otags[s:]))

    for r in rows:
        if r.aug_index == 0:
            continue
        toks = tokenize(r.text_a)
        orig, otags = by_id[r.example_id]
        assert 1 <= len(toks) <= min(5, len(orig))
        assert any(fits(toks, orig, otags, s) for s in range(len(orig) - len(toks) + 1))


def test_zero_probabilities_return_only_originals():
    examples = gen_examples(200)
    tags = aug.tag_examples(examples, dict_tagger)
    lex = aug.build_pos_lexicon(examples, tags=tags)
    rows, st = aug.augment_examples(examples, lex, cfg_of(p_mask=0, p_pos=0, p_ng=0), tags)
    assert [(r.example_id, r.aug_index) for r in rows] == [(e.id, 0) for e in examples]
    assert [r.text_a for r in rows] == [e.text_a for e in examples]
    assert [r.label for r in rows] == [float(e.label) for e in examples]
    assert st.copies_dropped == 20 * len(examples) and st.masked_words == st.swapped_words == 0


def test_dedup_and_original_kept():
    examples = gen_examples(300)
    tags = aug.tag_examples(examples, dict_tagger)
    lex = aug.build_pos_lexicon(examples, tags=tags)
    rows, _ = aug.augment_examples(examples, lex, cfg_of(), tags)
    groups: dict[int, list] = {}
    for r in rows:
        groups.setdefault(r.example_id, []).append(r)
    for ex in examples:
        g = groups[ex.id]
        assert g[0].aug_index == 0 and g[0].text_a == ex.text_a and g[0].label == float(ex.label)
        assert [r.aug_index for r in g] == list(range(len(g)))
        samples = [tuple(tokenize(r.text_a)) for r in g[1:]]
        assert len(set(samples)) == len(samples)
        assert tuple(tokenize(ex.text_a)) not in samples
        assert all(r.label is None for r in g[1:])
        assert len(g) <= 21


def test_pairs_stay_paired():
    examples = gen_examples(150, pairs=True)
    tags = aug.tag_examples(examples, dict_tagger)
    lex = aug.build_pos_lexicon(examples, tags=tags)
    for mode in ("cycle", "both"):
        rows, st = aug.augment_examples(examples, lex, cfg_of(), tags, pair_mode=mode)
        assert st.samples == 10 * len(examples)  # n_iter default for pairs
        by_id = {e.id: e for e in examples}
        kinds = set()
        for r in rows:
            ex = by_id[r.example_id]
            assert r.text_b is not None and r.text_a and r.text_b
            if r.aug_index == 0:
                assert (r.text_a, r.text_b, r.label) == (ex.text_a, ex.text_b, float(ex.label))
                continue
            a_same = tokenize(r.text_a) == tokenize(ex.text_a)
            b_same = tokenize(r.text_b) == tokenize(ex.text_b)
            assert not (a_same and b_same)
            kinds.add((a_same, b_same))
        if mode == "cycle":  # a only, b only, both (the paper's cycle)
            assert kinds == {(False, True), (True, False), (False, False)}
        originals = [r for r in rows if r.aug_index == 0]
        assert len(originals) == len(examples)


def test_randomness_depends_only_on_seed_and_example_id():
    examples = gen_examples(120)
    tags = aug.tag_examples(examples, dict_tagger)
    lex = aug.build_pos_lexicon(examples, tags=tags)
    cfg = cfg_of(seed=3)
    whole, _ = aug.augment_examples(examples, lex, cfg, tags)
    rev, _ = aug.augment_examples(examples[::-1], lex, cfg, tags[::-1])
    key = lambda r: (r.example_id, r.aug_index)  # noqa: E731
    assert sorted(whole, key=key) == sorted(rev, key=key)
    other, _ = aug.augment_examples(examples, lex, cfg_of(seed=4), tags)
    assert other != whole


def test_mask_token_configurable_and_input_mask_tokens_untouched():
    ex = [Example(0, "<mask> good movie <mask> bad plot"), Example(1, "a good movie")]
    tagger = lambda ws: [TAG_OF[w] for w in ws]  # noqa: E731  (would fail on "<mask>")
    tags = aug.tag_examples(ex, tagger, mask_token="<mask>")
    assert tags[0][0][0] is None and tags[0][0][3] is None
    lex = aug.build_pos_lexicon(ex, tags=tags, mask_token="<mask>")
    rows, st = aug.augment_examples(ex, lex, cfg_of(p_mask=0.5, p_pos=0, p_ng=0), tags,
                                    mask_token="<mask>")
    assert st.words == 20 * (4 + 3)
    assert any("<mask>" in r.text_a for r in rows if r.example_id == 1)
    assert all(MASK not in r.text_a for r in rows)


def test_invalid_config_rejected_before_work(tmp_path):
    examples = gen_examples(10)
    bad = [
        (dict(p_mask=1.5), "p_mask"),
        (dict(p_pos=-0.1), "p_pos"),
        (dict(p_ng=2.0), "p_ng"),
        (dict(p_mask=0.7, p_pos=0.5), "p_mask + augment.p_pos"),
        (dict(n_iter=0), "n_iter"),
        (dict(max_ngram=0), "max_ngram"),
        (dict(num_workers=0), "num_workers"),
    ]
    for kw, field in bad:
        with pytest.raises(ValueError, match=field.replace("+", r"\+")):
            augment_dataset(examples, cfg_of(**kw), tmp_path / "out", "k", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="more than once"):
        augment_dataset([Example(1, "a"), Example(1, "b")], cfg_of(), tmp_path / "o", "k")


def test_missing_nltk_data_names_the_downloads(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    with pytest.raises(aug.NltkDataMissingError) as info:
        aug.check_nltk_data(tmp_path / "empty")
    msg = str(info.value)
    assert "nltk.download('averaged_perceptron_tagger_eng')" in msg
    assert "nltk.download('universal_tagset')" in msg
    monkeypatch.setattr(nltk.data, "path", [])
    with pytest.raises(aug.NltkDataMissingError, match=r"nltk\.download\('averaged_perceptron"):
        augment_dataset(gen_examples(5), cfg_of(nltk_data=str(tmp_path / "empty")),
                        tmp_path / "out", "k", progress=False)
    assert not (tmp_path / "out").exists()


def test_empty_and_long_texts_are_skipped_and_counted(tmp_path):
    examples = gen_examples(20) + [
        Example(100, ""), Example(101, "   \t "), Example(102, "word " * 30),
        Example(103, "fine text", ""),  # pair with an empty second text
    ]
    # pure rules (generated text, dictionary tagger)
    tags = aug.tag_examples(examples, lambda ws: ["X"] * len(ws), max_words=25)
    assert tags[-4:] == [None] * 4
    lex = aug.build_pos_lexicon(examples, tags=tags)
    rows, st = aug.augment_examples(examples, lex, cfg_of(max_words=25), tags)
    assert (st.skipped_empty, st.skipped_too_long, st.examples) == (3, 1, 20)
    assert {r.example_id for r in rows} == set(range(20))
    # the stage (disabled: no NLTK needed) reports them in its summary
    res = augment_dataset(examples, cfg_of(enabled=False, max_words=25), tmp_path, "k",
                          progress=False)
    assert res.stats["skipped"] == 4 and res.stats["skipped_empty"] == 3
    assert res.n_in == 24 and res.n_out == 20


def test_disabled_stage_writes_originals_and_is_cached(tmp_path):
    examples = gen_examples(30, pairs=True)[::-1]  # unsorted input
    res = augment_dataset(examples, cfg_of(enabled=False), tmp_path, "data1", progress=False)
    assert not res.reused and res.path == tmp_path / res.key / TRANSFER_FILE
    table = pq.read_table(res.path)
    assert table.column_names == COLUMNS
    assert [str(f.type) for f in table.schema] == ["int64", "int32", "string", "string", "double"]
    d = table.to_pydict()
    assert d["example_id"] == list(range(30)) and set(d["aug_index"]) == {0}
    assert d["label"] == [float(i % 2) for i in range(30)]
    assert all(b is not None for b in d["text_b"])
    again = augment_dataset(examples, cfg_of(enabled=False, p_mask=0.3, num_workers=2),
                            tmp_path, "data1", progress=False)
    assert again.reused and again.path == res.path  # rule parameters do not matter when off
    other = augment_dataset(examples, cfg_of(enabled=False), tmp_path, "data2", progress=False)
    assert other.key != res.key


def test_cap_keeps_originals_first_and_is_deterministic():
    from orchestrator.stages.augment_stage import _cap

    cols = {c: [] for c in COLUMNS}
    for eid in range(10):
        for k in range(5):
            for c, v in zip(COLUMNS, (eid, k, f"t{eid}-{k}", None, None)):
                cols[c].append(v)
    capped, dropped = _cap(cols, 25, seed=0)
    assert dropped == 25 and len(capped["example_id"]) == 25
    assert sum(k == 0 for k in capped["aug_index"]) == 10
    pairs = list(zip(capped["example_id"], capped["aug_index"]))
    assert pairs == sorted(pairs)
    assert _cap(cols, 25, seed=0) == (capped, dropped)
    assert _cap(cols, 25, seed=1)[0] != capped
    few, _ = _cap(cols, 4, seed=0)
    assert set(few["aug_index"]) == {0} and len(few["example_id"]) == 4


def test_transfer_sets_of_one_training_set_share_its_pos_tags(tmp_path, monkeypatch):
    """Tagging runs once per training set: a transfer set with other rule parameters reads the
    tags the first one saved and comes out exactly as if it had tagged; a damaged tags file is
    tagged again."""
    import orchestrator.stages.augment_stage as stage

    calls = []

    def tag_chunk(examples, nltk_paths, mask_token, max_words):
        calls.append(len(examples))
        tags = aug.tag_examples(examples, dict_tagger, mask_token, max_words)
        return {t: dict(c) for t, c in aug.count_tagged(examples, tags, mask_token).items()}, tags

    checks = []
    monkeypatch.setattr(stage, "_tag_chunk", tag_chunk)
    monkeypatch.setattr(stage.aug, "check_nltk_data", lambda path=None: checks.append(path) or [])
    examples = gen_examples(300)
    first = augment_dataset(examples, cfg_of(chunk_size=120), tmp_path / "a", "d", progress=False)
    assert calls == [120, 120, 60] and len(checks) == 1
    other = cfg_of(p_mask=0.3, p_ng=0.0, n_iter=3, chunk_size=70)
    again = augment_dataset(examples, other, tmp_path / "a", "d", progress=False)
    assert calls == [120, 120, 60] and again.key != first.key  # no tagging: the saved tags
    assert len(checks) == 1  # nor NLTK (its data, or importing it: over a second per trial)
    fresh = augment_dataset(examples, other, tmp_path / "b", "d", progress=False)
    assert calls[3:] == [70, 70, 70, 70, 20]
    assert again.path.read_bytes() == fresh.path.read_bytes()
    # other examples (another data key): tagged, in a file of their own
    augment_dataset(examples[:50], cfg_of(), tmp_path / "a", "d50", progress=False)
    assert calls[8:] == [50] and len(list((tmp_path / "a" / TAGS_DIR).iterdir())) == 2
    # a tags file that does not hold the examples' tags is not trusted
    for f in (tmp_path / "b" / TAGS_DIR).iterdir():
        f.write_text('{"counts": {}, "tags": []}')
    augment_dataset(examples, cfg_of(seed=3), tmp_path / "b", "d", progress=False)
    assert calls[9:] == [300]


def test_cache_key_ignores_workers_and_chunks():
    base = cfg_of()
    k = augment_cache_key(base, "d")
    assert augment_cache_key(replace(base, num_workers=2, chunk_size=7), "d") == k
    assert augment_cache_key(replace(base, nltk_data="/elsewhere"), "d") == k
    assert augment_cache_key(replace(base, seed=1), "d") != k
    assert augment_cache_key(base, "d", mask_token="<mask>") != k
    assert augment_cache_key(base, "e") != k
    assert augment_cache_key(base, "d", pair_mode="both") != k


# ---------------------------------------------------------------------------------------------
# real data: SST-2 sentences and NLTK's tagger


def sst2_examples(n: int) -> list[Example]:
    with open(SST2, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        out = []
        for i, row in enumerate(reader):
            if i >= n:
                break
            out.append(Example(i, row[0], None, int(row[1])))
    return out


@needs_sst2
def test_rule_rates_on_sst2():
    examples = sst2_examples(1500)
    tagger = aug.nltk_tagger(NLTK_DIR)
    lex = check_rule_rates(examples, tagger, 0.1, 0.1)
    assert {"NOUN", "VERB", "ADJ", "DET"} <= set(lex.tags)
    assert lex.tag_of("movie") == "NOUN"


@needs_sst2
def test_stage_cache_reuse_and_rebuild(tmp_path):
    examples = sst2_examples(150)
    cfg = cfg_of(n_iter=5)
    res = augment_dataset(examples, cfg, tmp_path, "sst2-150", progress=False)
    assert not res.reused and res.n_in == 150 and res.n_out > 150
    table = pq.read_table(res.path).to_pydict()
    assert table["label"][:1] == [float(examples[0].label)]
    manifest = json.loads((res.path.parent / MANIFEST_FILE).read_text())
    assert manifest["rows"] == res.n_out and manifest["key"] == res.key
    for share in ("mask_share", "swap_share", "ngram_share", "skipped"):
        assert share in res.stats
    data = res.path.read_bytes()

    again = augment_dataset(examples, cfg, tmp_path, "sst2-150", progress=False)
    assert again.reused and again.path == res.path and again.n_out == res.n_out

    # a partial output (no manifest) is rebuilt
    (res.path.parent / MANIFEST_FILE).unlink()
    rebuilt = augment_dataset(examples, cfg, tmp_path, "sst2-150", progress=False)
    assert not rebuilt.reused and rebuilt.path.read_bytes() == data
    # a changed file (checksum mismatch) is rebuilt
    with open(rebuilt.path, "ab") as f:
        f.write(b"x")
    fixed = augment_dataset(examples, cfg, tmp_path, "sst2-150", progress=False)
    assert not fixed.reused and fixed.path.read_bytes() == data
    # only the final folder and the training set's POS tags: no temporary leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([res.key, TAGS_DIR])
    assert len(list((tmp_path / TAGS_DIR).iterdir())) == 1


@needs_sst2
def test_stage_output_identical_across_workers_and_chunks(tmp_path, ray_local):
    examples = sst2_examples(300)
    examples += [Example(1000 + i, e.text_a, examples[i + 1].text_a, None)
                 for i, e in enumerate(examples[:40])]  # a few pairs, unlabeled
    runs = [(1, 2000), (1, 33), (2, 70), (2, 41)]
    files = []
    for w, cs in runs:
        cfg = cfg_of(num_workers=w, chunk_size=cs, seed=11)
        res = augment_dataset(examples, cfg, tmp_path / f"w{w}-c{cs}", "mix", progress=False)
        files.append(res.path.read_bytes())
    # the Ray path reading tags an inline run saved
    augment_dataset(examples, cfg_of(seed=4), tmp_path / "shared", "mix", progress=False)
    res = augment_dataset(examples, cfg_of(num_workers=2, chunk_size=70, seed=11),
                          tmp_path / "shared", "mix", progress=False)
    files.append(res.path.read_bytes())
    assert all(f == files[0] for f in files[1:])
    table = pq.read_table(tmp_path / "w2-c41" / res.key / TRANSFER_FILE).to_pydict()
    keys = list(zip(table["example_id"], table["aug_index"]))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    pair_rows = [i for i, e in enumerate(table["example_id"]) if e >= 1000]
    assert pair_rows and all(table["text_b"][i] for i in pair_rows)
    assert all(table["text_b"][i] is None for i, e in enumerate(table["example_id"]) if e < 1000)
    assert all(table["label"][i] is None for i in pair_rows)
    assert res.stats["examples"] == 340 and 0.05 < res.stats["mask_share"] < 0.15

    other = augment_dataset(examples, cfg_of(num_workers=2, chunk_size=70, seed=12),
                            tmp_path / "seed12", "mix", progress=False)
    assert other.key != res.key and other.path.read_bytes() != files[0]
