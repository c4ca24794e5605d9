from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tasks.config import DataConfig
from tasks.data import DataError, Example
from tasks.generated import generate_task_data, overlap_for_class, relatedness_order
from tasks.loaders import (
    data_fingerprint,
    hub_split,
    infer_label_names,
    load_custom,
    load_glue_tsv,
    load_hub,
    load_task_data,
    resolve_source,
    take_subset,
    task_from_config,
)
from tasks.registry import custom_task, get_task

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# real GLUE files (assets)

COUNTS = {
    ("sst2", "train"): (67349, {1: 37569, 0: 29780}),
    ("sst2", "dev"): (872, {1: 444, 0: 428}),
    ("mrpc", "train"): (3668, {1: 2474, 0: 1194}),
    ("mrpc", "dev"): (408, {1: 279, 0: 129}),
    ("rte", "train"): (2490, {0: 1249, 1: 1241}),  # 0 = entailment
    ("rte", "dev"): (277, {0: 146, 1: 131}),
    ("cola", "train"): (8551, {1: 6023, 0: 2528}),
    ("cola", "dev"): (1043, {1: 721, 0: 322}),
    ("stsb", "train"): (5749, None),
    ("stsb", "dev"): (1500, None),
}


@pytest.mark.assets
@pytest.mark.parametrize("task_name,split", list(COUNTS))
def test_glue_tsv_counts_and_label_distribution(glue_dir, task_name, split):
    task = get_task(task_name)
    examples = load_glue_tsv(task, glue_dir, split)
    count, labels = COUNTS[(task_name, split)]
    assert len(examples) == count
    assert [e.id for e in examples] == list(range(count))
    assert all(e.is_pair is task.is_pair for e in examples)
    assert all(e.text_a and (e.text_b if task.is_pair else True) for e in examples)
    if labels is None:
        assert all(isinstance(e.label, float) and 0.0 <= e.label <= 5.0 for e in examples)
    else:
        assert dict(Counter(e.label for e in examples)) == labels


@pytest.mark.assets
def test_glue_tsv_known_rows(glue_dir):
    sst = load_glue_tsv(get_task("SST-2"), glue_dir, "train")
    assert sst[0] == Example(0, "hide new secretions from the parental units", None, 0)
    sst_dev = load_glue_tsv(get_task("sst2"), glue_dir, "dev")
    assert sst_dev[0].text_a == "it 's a charming and often affecting journey ."
    assert sst_dev[0].label == 1

    mrpc = load_glue_tsv(get_task("mrpc"), glue_dir, "dev")  # file starts with a BOM
    assert mrpc[0].text_a.startswith("He said the foodservice pie business")
    assert mrpc[0].text_b.startswith('"The foodservice pie business')  # unmatched quote kept
    assert mrpc[0].label == 1 and mrpc[1].label == 0

    rte = load_glue_tsv(get_task("rte"), glue_dir, "train")
    assert rte[0].text_a == "No Weapons of Mass Destruction Found in Iraq Yet."
    assert rte[0].label == 1  # not_entailment
    assert rte[1].label == 0  # entailment
    assert rte[2164].text_a.startswith("\"That film wasn't too successful")
    assert rte[2164].text_b == 'The film "WarGames" was shot in 1983.'

    cola = load_glue_tsv(get_task("CoLA"), glue_dir, "dev")  # no header, no final newline
    assert cola[0].text_a == "The sailors rode the breeze clear of the rocks."
    assert cola[-1] == Example(1042, "John talked to Bill about himself.", None, 1)

    sts = load_glue_tsv(get_task("STS-B"), glue_dir, "train")
    assert (sts[0].text_a, sts[0].text_b, sts[0].label) == (
        "A plane is taking off.", "An air plane is taking off.", 5.0)
    assert sts[1].label == pytest.approx(3.8)


@pytest.mark.assets
def test_load_task_data_on_assets_subsets_deterministically(glue_dir):
    cfg = DataConfig(task="rte", source="auto", glue_dir=str(glue_dir), max_train_examples=100,
                     max_dev_examples=50, seed=3)
    task = task_from_config(cfg)
    data = load_task_data(cfg, task)
    assert data.source == "glue_dir"
    assert len(data.train) == 100 and list(data.dev) == ["dev"] and len(data.dev["dev"]) == 50
    ids = [e.id for e in data.train]
    assert ids == sorted(ids) and max(ids) > 100  # original ids kept, drawn from the whole file
    again = load_task_data(cfg, task)
    assert data_fingerprint(again.train) == data_fingerprint(data.train)
    other = load_task_data(DataConfig(task="rte", glue_dir=str(glue_dir), max_train_examples=100,
                                      seed=4), task)
    assert data_fingerprint(other.train) != data_fingerprint(data.train)


# ---------------------------------------------------------------------------------------------
# GLUE-format files written here: every task's layout, and malformed rows

MNLI_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
               "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
               "sentence2", "label1", "label2", "label3", "label4", "label5", "gold_label"]


def _write_tsv(path: Path, rows: list[list[str]], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join("\t".join(r) for r in rows) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")


def _mnli_row(i: int, s1: str, s2: str, gold: str) -> list[str]:
    return [str(i), "p", "q", "fiction", "(x)", "(y)", "(X)", "(Y)", s1, s2,
            gold, gold, gold, gold, gold, gold]


@pytest.fixture()
def fake_glue(tmp_path: Path) -> Path:
    root = tmp_path / "glue"
    _write_tsv(root / "SST-2" / "train.tsv",
               [["sentence", "label"], ["a fine film ", "1"], ["dull", "0"], ["\"odd quote", "1"]])
    _write_tsv(root / "CoLA" / "dev.tsv",
               [["gj04", "1", "", "The dog barked."], ["gj04", "0", "*", "Dog the barked."]])
    _write_tsv(root / "MRPC" / "train.tsv",
               [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                ["1", "11", "12", "He left.", "\"He went away."]], bom=True)
    _write_tsv(root / "STS-B" / "dev.tsv",
               [["index", "genre", "filename", "year", "old_index", "source1", "source2",
                 "sentence1", "sentence2", "score"],
                ["0", "g", "f", "2012", "0001", "none", "none", "A cat.", "A dog.", "1.250"]])
    _write_tsv(root / "QQP" / "train.tsv",
               [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                ["7", "1", "2", "How old?", "What age?", "1"]])
    _write_tsv(root / "QNLI" / "dev.tsv",
               [["index", "question", "sentence", "label"],
                ["0", "Who?", "Him.", "not_entailment"], ["1", "What?", "That.", "entailment"]])
    _write_tsv(root / "WNLI" / "train.tsv",
               [["index", "sentence1", "sentence2", "label"], ["0", "It fell.", "X fell.", "1"]])
    _write_tsv(root / "RTE" / "dev.tsv",
               [["index", "sentence1", "sentence2", "label"], ["0", "A b.", "B.", "entailment"]])
    _write_tsv(root / "MNLI" / "dev_matched.tsv",
               [MNLI_HEADER, _mnli_row(0, "He ran.", "He moved.", "entailment"),
                _mnli_row(1, "He ran.", "He sat.", "contradiction")])
    _write_tsv(root / "MNLI" / "dev_mismatched.tsv",
               [MNLI_HEADER, _mnli_row(0, "It rains.", "It is wet.", "neutral")])
    _write_tsv(root / "MNLI" / "train.tsv",
               [MNLI_HEADER[:11] + ["gold_label"],
                _mnli_row(0, "A.", "B.", "neutral")[:11] + ["neutral"]])
    return root


def test_glue_layouts_of_every_task(fake_glue):
    sst = load_glue_tsv(get_task("sst2"), fake_glue, "train")
    assert [(e.id, e.text_a, e.label) for e in sst] == [
        (0, "a fine film", 1), (1, "dull", 0), (2, '"odd quote', 1)]
    assert [(e.text_a, e.label) for e in load_glue_tsv(get_task("cola"), fake_glue, "dev")] == [
        ("The dog barked.", 1), ("Dog the barked.", 0)]
    mrpc = load_glue_tsv(get_task("mrpc"), fake_glue, "train")
    assert mrpc == [Example(0, "He left.", '"He went away.', 1)]
    assert load_glue_tsv(get_task("stsb"), fake_glue, "dev") == [
        Example(0, "A cat.", "A dog.", 1.25)]
    assert load_glue_tsv(get_task("qqp"), fake_glue, "train") == [
        Example(0, "How old?", "What age?", 1)]
    assert [e.label for e in load_glue_tsv(get_task("qnli"), fake_glue, "dev")] == [1, 0]
    assert load_glue_tsv(get_task("wnli"), fake_glue, "train")[0].label == 1  # entailment
    assert load_glue_tsv(get_task("rte"), fake_glue, "dev")[0].label == 0


def test_mnli_splits(fake_glue):
    mnli = get_task("mnli")
    matched = load_glue_tsv(mnli, fake_glue, "dev_matched")
    assert matched == [Example(0, "He ran.", "He moved.", 0), Example(1, "He ran.", "He sat.", 2)]
    assert load_glue_tsv(mnli, fake_glue, "dev") == matched  # "dev" means matched
    assert load_glue_tsv(mnli, fake_glue, "dev_mismatched") == [
        Example(0, "It rains.", "It is wet.", 1)]
    assert load_glue_tsv(mnli, fake_glue, "train")[0].label == 1  # 12-column train header
    with pytest.raises(DataError, match="no split 'test'"):
        load_glue_tsv(mnli, fake_glue, "test")
    with pytest.raises(DataError, match="dev_matched"):
        load_glue_tsv(get_task("sst2"), fake_glue, "dev_matched")


@pytest.mark.parametrize("rows,pattern", [
    ([["sentence", "label"], ["good", "1"], ["bad", "0", "extra"]],
     r"line 3: 3 tab-separated fields, expected 2"),
    ([["sentence", "label"], ["good", "1"], ["bad"]], r"line 3: 1 tab-separated fields"),
    ([["sentence", "label"], ["good", "positive!"]], r"line 2, column 'label': unknown label"),
    ([["sentence", "label"], ["good", "2"]], r"line 2, column 'label': unknown label '2'"),
    ([["sentence", "label"], ["ok", "1"], ["   ", "1"]], r"line 3, column 'sentence': empty"),
    ([["text", "label"], ["good", "1"]], r"line 1: the header has no column 'sentence'"),
    ([["sentence", "label"], ["good", ""]], r"line 2, column 'label': missing label"),
])
def test_malformed_glue_rows_name_file_and_line(tmp_path, rows, pattern):
    _write_tsv(tmp_path / "SST-2" / "train.tsv", rows)
    with pytest.raises(DataError, match=pattern) as err:
        load_glue_tsv(get_task("sst2"), tmp_path, "train")
    assert str(tmp_path / "SST-2" / "train.tsv") in str(err.value)


def test_malformed_regression_and_headerless_rows(tmp_path):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
              "sentence1", "sentence2", "score"]
    row = ["0", "g", "f", "y", "o", "s", "s", "A.", "B."]
    _write_tsv(tmp_path / "STS-B" / "dev.tsv", [header, row + ["abc"]])
    with pytest.raises(DataError, match="line 2, column 'score': label 'abc' is not a number"):
        load_glue_tsv(get_task("stsb"), tmp_path, "dev")
    _write_tsv(tmp_path / "STS-B" / "dev.tsv", [header, row + ["7.5"]])
    with pytest.raises(DataError, match="outside 0..5"):
        load_glue_tsv(get_task("stsb"), tmp_path, "dev")
    _write_tsv(tmp_path / "CoLA" / "train.tsv", [["gj04", "1", "", "Fine."], ["gj04", "1", "x"]])
    with pytest.raises(DataError, match="line 2: 3 tab-separated fields, expected 4"):
        load_glue_tsv(get_task("cola"), tmp_path, "train")


def test_missing_glue_file_says_which_dir(tmp_path):
    with pytest.raises(DataError) as err:
        load_glue_tsv(get_task("rte"), tmp_path, "train")
    msg = str(err.value)
    assert str(tmp_path / "RTE" / "train.tsv") in msg and "RTE/" in msg
    assert "data.glue_dir" in msg


# ---------------------------------------------------------------------------------------------
# hub


def test_hub_split_mapping():
    assert hub_split(get_task("sst2"), "train") == "train"
    assert hub_split(get_task("sst2"), "dev") == "validation"
    assert hub_split(get_task("mnli"), "dev") == "validation_matched"
    assert hub_split(get_task("mnli"), "dev_matched") == "validation_matched"
    assert hub_split(get_task("mnli"), "dev_mismatched") == "validation_mismatched"
    with pytest.raises(DataError, match="no split"):
        hub_split(get_task("rte"), "dev_mismatched")


def test_hub_unreachable_error_is_clear(tmp_path):
    code = textwrap.dedent("""
        from tasks.data import DataError
        from tasks.loaders import load_hub
        from tasks.registry import get_task
        try:
            load_hub(get_task("sst2"), "dev")
        except DataError as e:
            print("DATAERROR:", e)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert "DATAERROR:" in out.stdout, out.stderr[-2000:]
    msg = out.stdout
    assert "'nyu-mll/glue'" in msg and "'sst2'" in msg and "'validation'" in msg
    assert "data.source=glue_dir" in msg and "SST-2/" in msg


def _hub_repo(root: Path) -> Path:
    """A local folder laid out like the nyu-mll/glue hub repository (parquet + README configs)."""
    import datasets

    def write(config: str, split: str, columns: dict, names: list[str] | None) -> None:
        feats = {c: datasets.Value("string") for c in columns if c != "label"}
        feats["label"] = datasets.ClassLabel(names=names) if names else datasets.Value("float32")
        ds = datasets.Dataset.from_dict(columns, features=datasets.Features(feats))
        (root / config).mkdir(parents=True, exist_ok=True)
        ds.to_parquet(root / config / f"{split}-00000-of-00001.parquet")

    neg_pos = ["negative", "positive"]
    write("sst2", "train", {"sentence": ["good fun", "bad"], "label": [1, 0]}, neg_pos)
    write("sst2", "validation", {"sentence": [" nice "], "label": [1]}, neg_pos)
    nli = ["entailment", "neutral", "contradiction"]
    write("mnli", "validation_matched",
          {"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [0, 2]}, nli)
    write("mnli", "validation_mismatched",
          {"premise": ["q1"], "hypothesis": ["g1"], "label": [1]}, nli)
    write("stsb", "validation", {"sentence1": ["a"], "sentence2": ["b"], "label": [3.5]}, None)
    write("rte", "validation", {"sentence1": ["a"], "sentence2": ["b"], "label": [0]},
          ["not_entailment", "entailment"])  # wrong order on purpose
    configs = {"sst2": ["train", "validation"],
               "mnli": ["validation_matched", "validation_mismatched"],
               "stsb": ["validation"], "rte": ["validation"]}
    lines = ["---", "configs:"]
    for config, splits in configs.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        for s in splits:
            lines += [f"  - split: {s}", f"    path: {config}/{s}-*"]
    (root / "README.md").write_text("\n".join(lines + ["---", ""]))
    return root


def test_load_hub_maps_splits_and_labels(tmp_path):
    repo = str(_hub_repo(tmp_path / "glue_repo"))
    cache = str(tmp_path / "cache")
    sst2 = get_task("sst2")
    assert load_hub(sst2, "train", repo, cache_dir=cache) == [
        Example(0, "good fun", None, 1), Example(1, "bad", None, 0)]
    assert load_hub(sst2, "dev", repo, cache_dir=cache) == [Example(0, "nice", None, 1)]
    mnli = get_task("mnli")
    assert load_hub(mnli, "dev", repo, cache_dir=cache) == [
        Example(0, "p1", "h1", 0), Example(1, "p2", "h2", 2)]
    assert load_hub(mnli, "dev_mismatched", repo, cache_dir=cache) == [Example(0, "q1", "g1", 1)]
    assert load_hub(get_task("stsb"), "dev", repo, cache_dir=cache) == [Example(0, "a", "b", 3.5)]
    with pytest.raises(DataError, match="differ from task rte"):
        load_hub(get_task("rte"), "dev", repo, cache_dir=cache)
    with pytest.raises(DataError, match=r"could not load dataset .*'qqp'.*data.source=glue_dir"):
        load_hub(get_task("qqp"), "dev", repo, cache_dir=cache)


# ---------------------------------------------------------------------------------------------
# custom files


def test_custom_csv_tsv_jsonl(tmp_path):
    task = custom_task("rev", is_pair=False, label_names=["neg", "pos"])
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label,extra\n"good, really",pos,x\nbad,0,y\n"multi\nline",1,z\n')
    assert load_custom(csv_path, ["text"], "label", task) == [
        Example(0, "good, really", None, 1), Example(1, "bad", None, 0),
        Example(2, "multi\nline", None, 1)]
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text('label\ttext\npos\t"unmatched quote\n')
    assert load_custom(tsv_path, ["text"], "label", task) == [
        Example(0, '"unmatched quote', None, 1)]
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "great", "label": "pos"}\n\n{"text": "meh", "label": 0}\n')
    assert load_custom(jl, ["text"], "label", task) == [
        Example(0, "great", None, 1), Example(1, "meh", None, 0)]
    assert load_custom(jl, ["text"], None, task)[0].label is None


def test_custom_pairs_and_regression(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"q": "a?", "a": "b.", "score": 0.5}, {"q": "c?", "a": "d.", "score": "4"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = custom_task("qa", is_pair=True, label_names=None)
    assert load_custom(path, ["q", "a"], "score", task) == [
        Example(0, "a?", "b.", 0.5), Example(1, "c?", "d.", 4.0)]
    with pytest.raises(DataError, match="pair task but data.text_columns has 1"):
        load_custom(path, ["q"], "score", task)


@pytest.mark.parametrize("name,content,pattern", [
    ("a.csv", "text,label\nok,pos\nbad,pos,extra\n", r"a.csv, line 3: 3 fields, expected 2"),
    ("b.csv", "text,label\nok,pos\nfine,maybe\n",
     r"b.csv, line 3, column 'label': unknown label 'maybe'"),
    ("c.csv", "text,label\nok,pos\n,neg\n", r"c.csv, line 3, column 'text': empty text"),
    ("d.csv", "sentence,label\nok,pos\n", r"d.csv, line 2: no column 'text'"),
    ("e.jsonl", '{"text": "ok", "label": 1}\n{"text": "x", "label": 5}\n',
     r"e.jsonl, line 2, column 'label': unknown label '5'"),
    ("f.jsonl", '{"text": "ok", "label": 1}\n{broken\n', r"f.jsonl, line 2: not valid JSON"),
    ("g.jsonl", '{"text": 3, "label": 1}\n', r"g.jsonl, line 1, column 'text': expected text"),
    ("h.txt", "x\n", r"unknown file type '.txt'"),
])
def test_custom_errors_name_file_line_and_column(tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_text(content)
    task = custom_task("rev", is_pair=False, label_names=["neg", "pos"])
    with pytest.raises(DataError, match=pattern):
        load_custom(path, ["text"], "label", task)


def test_custom_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_custom(tmp_path / "nope.csv", ["text"], "label", custom_task("t", False, None))


def test_infer_label_names(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("text,label\na,10\nb,2\nc,2\n")
    assert infer_label_names(p, "label") == ("2", "10")
    p.write_text("text,label\na,pos\nb,neg\n")
    assert infer_label_names(p, "label") == ("neg", "pos")
    p.write_text("text,label\na,pos\nb,pos\n")
    with pytest.raises(DataError, match="1 distinct label"):
        infer_label_names(p, "label")


# ---------------------------------------------------------------------------------------------
# config -> data


def test_load_task_data_custom_infers_labels(tmp_path):
    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    train.write_text("review,stars\nawful,low\ngreat,high\nfine,mid\n")
    dev.write_text("review,stars\nnice,high\n")
    cfg = DataConfig(task="reviews", source="custom", train_file=str(train), dev_file=str(dev),
                     text_columns=["review"], label_column="stars")
    task = task_from_config(cfg)
    assert task.label_names == ("high", "low", "mid") and task.metrics == ("accuracy",)
    data = load_task_data(cfg, task)
    assert data.source == "custom"
    assert [e.label for e in data.train] == [1, 0, 2]
    assert data.dev == {"dev": [Example(0, "nice", None, 0)]}
    with pytest.raises(DataError, match="data.dev_file"):
        load_task_data(DataConfig(task="reviews", source="custom", train_file=str(train),
                                  text_columns=["review"], label_column="stars"), task)


def test_load_task_data_glue_dir_with_subset(fake_glue):
    cfg = DataConfig(task="MNLI", source="glue_dir", glue_dir=str(fake_glue), max_dev_examples=1)
    task = task_from_config(cfg)
    data = load_task_data(cfg, task)
    assert data.source == "glue_dir" and len(data.train) == 1
    assert list(data.dev) == ["dev_matched", "dev_mismatched"]
    assert all(len(v) == 1 for v in data.dev.values())
    with pytest.raises(DataError, match="needs data.glue_dir"):
        load_task_data(DataConfig(task="sst2", source="glue_dir"), get_task("sst2"))


def test_resolve_source(fake_glue, tmp_path):
    sst2, mnli = get_task("sst2"), get_task("mnli")
    assert resolve_source(DataConfig(glue_dir=str(fake_glue)), sst2) == "glue_dir"
    assert resolve_source(DataConfig(glue_dir=str(tmp_path / "absent")), sst2) == "hub"
    (fake_glue / "MNLI").rename(tmp_path / "moved")
    assert resolve_source(DataConfig(glue_dir=str(fake_glue)), mnli) == "hub"
    assert resolve_source(DataConfig(train_file="x.csv"), sst2) == "custom"
    assert resolve_source(DataConfig(source="hub", glue_dir=str(fake_glue)), sst2) == "hub"
    with pytest.raises(DataError, match="data.source='ftp'"):
        resolve_source(DataConfig(source="ftp"), sst2)


def test_task_from_config_unknown_task_is_explained():
    with pytest.raises(ValueError, match="known tasks: cola, sst2"):
        task_from_config(DataConfig(task="imdb"))


def test_take_subset_is_seeded_nested_and_keeps_ids():
    examples = [Example(i, f"t{i}", None, i % 2) for i in range(100)]
    a = take_subset(examples, 10, seed=1)
    assert a == take_subset(examples, 10, seed=1)
    assert [e.id for e in a] == sorted(e.id for e in a)
    assert set(e.id for e in a) <= set(e.id for e in take_subset(examples, 30, seed=1))
    assert a != take_subset(examples, 10, seed=2)
    assert take_subset(examples, None, 0) == examples == take_subset(examples, 500, 0)


def test_data_fingerprint():
    ex = [Example(0, "a", "b", 1), Example(1, "c", None, 0)]
    fp = data_fingerprint(ex)
    assert len(fp) == 16 and fp == data_fingerprint(list(ex))
    assert data_fingerprint([Example(5, "a", "b", 1), Example(9, "c", None, 0)]) == fp
    assert data_fingerprint([Example(0, "a", "b", 0), Example(1, "c", None, 0)]) != fp
    assert data_fingerprint([Example(0, "a b", None, 1), Example(1, "c", None, 0)]) != fp
    assert data_fingerprint(ex[::-1]) != fp


# ---------------------------------------------------------------------------------------------
# generated data


@pytest.mark.parametrize("name", ["sst2", "cola", "mrpc", "rte", "mnli", "stsb"])
def test_generated_data_shape_and_determinism(name):
    task = get_task(name)
    data = generate_task_data(task, 40, 12, seed=0)
    assert data.source == "generated" and len(data.train) == 40
    assert list(data.dev) == list(task.dev_splits)
    assert all(len(v) == 12 for v in data.dev.values())
    assert all(e.is_pair is task.is_pair and e.text_a for e in data.train)
    assert [e.id for e in data.train] == list(range(40))
    if task.is_regression:
        assert all(0.0 <= e.label <= 5.0 for e in data.train)
    else:
        assert {e.label for e in data.train} == set(range(task.num_outputs))
    assert generate_task_data(task, 40, 12, seed=0) == data
    assert generate_task_data(task, 40, 12, seed=1).train != data.train
    cfg = DataConfig(task=name, source="generated", max_train_examples=40, max_dev_examples=12)
    assert load_task_data(cfg, task) == data


def _bag_of_words(texts: list[str], vocab: dict[str, int]) -> np.ndarray:
    x = np.zeros((len(texts), len(vocab)))
    for i, t in enumerate(texts):
        for w in t.split():
            if w in vocab:
                x[i, vocab[w]] += 1
    return x


@pytest.mark.parametrize("labels", [("negative", "positive"), ("a", "b", "c", "d", "e")])
def test_generated_single_text_is_learnable(labels):
    from sklearn.linear_model import LogisticRegression

    task = custom_task("gen", is_pair=False, label_names=labels)
    data = generate_task_data(task, 300, 100, seed=0)
    vocab = {w: i for i, w in enumerate(sorted({w for e in data.train for w in e.text_a.split()}))}
    model = LogisticRegression(max_iter=500).fit(
        _bag_of_words([e.text_a for e in data.train], vocab), [e.label for e in data.train])
    dev = data.dev["dev"]
    acc = model.score(_bag_of_words([e.text_a for e in dev], vocab), [e.label for e in dev])
    assert acc > 0.9 > 1.5 / len(labels)


def _overlap(e: Example) -> float:
    a, b = set(e.text_a.split()), set(e.text_b.split())
    return len(a & b) / len(b)


@pytest.mark.parametrize("name", ["mrpc", "rte", "wnli", "qqp", "mnli", "stsb"])
def test_generated_pairs_are_learnable_from_word_overlap(name):
    task = get_task(name)
    dev = generate_task_data(task, 0, 200, seed=0).dev[task.dev_splits[0]]
    overlap = np.array([_overlap(e) for e in dev])
    labels = np.array([e.label for e in dev], dtype=float)
    if task.is_regression:
        np.testing.assert_allclose(labels, 5 * overlap, atol=1e-3)
        return
    expected = np.array([overlap_for_class(task.label_names, int(y)) for y in labels])
    np.testing.assert_allclose(overlap, expected, atol=0.1)  # a threshold classifier is perfect


def test_relatedness_order_follows_label_meaning():
    assert relatedness_order(get_task("mrpc").label_names) == [1, 0]  # equivalent first
    assert relatedness_order(get_task("rte").label_names) == [0, 1]  # entailment first
    assert relatedness_order(get_task("wnli").label_names) == [1, 0]
    assert relatedness_order(get_task("mnli").label_names) == [0, 1, 2]
    assert relatedness_order(("0", "1")) == [1, 0]
