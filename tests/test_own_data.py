"""The user's own data, given as the README's own-data command gives it (--set data.source=custom
...): every stage sees one task spec (tasks.loaders.task_spec), whatever the label column holds."""
from __future__ import annotations

import json

import pytest

from orchestrator.app.run import resolve_run
from orchestrator.stages.pipeline import get_task_for, load_data, task_names
from tasks.data import DataError


def _sets(train, dev, *extra, text_columns="[text]"):
    """The README's own-data line, as ``--set`` values."""
    return ["data.source=custom", f"data.train_file={train}", f"data.dev_file={dev}",
            f"data.text_columns={text_columns}", "data.label_column=label", *extra]


def _csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def _resolve(tmp_path, sets):
    _, cfg, overrides = resolve_run("smoke", sets, extra={"data.task": "reviews"})
    return cfg, overrides


def test_string_labels_are_inferred_without_label_names(tmp_path):
    train = _csv(tmp_path / "train.csv", [("a fine film", "pos"), ("dull", "neg"),
                                          ("great fun", "pos")])
    dev = _csv(tmp_path / "dev.csv", [("lovely", "pos"), ("bad", "neg")])
    cfg, _ = _resolve(tmp_path, _sets(train, dev))
    assert cfg.data.label_names is None and not cfg.data.regression
    data = load_data(cfg)
    d = data["reviews"]
    assert d.task.label_names == ("neg", "pos") and not d.task.is_regression
    assert d.task.num_outputs == 2 and not d.task.is_pair
    assert [e.label for e in d.train] == [1, 0, 1]
    assert [e.label for e in d.dev["dev"]] == [1, 0]
    assert task_names(cfg) == ["reviews"]
    assert get_task_for(cfg, "reviews") == d.task  # the same spec for every stage


def test_integer_labels_keep_their_numeric_order(tmp_path):
    rows = [(f"text {i}", i % 3) for i in range(12)]  # 0, 1, 2 (not "0" < "10" < "2")
    train = _csv(tmp_path / "train.csv", rows)
    dev = _csv(tmp_path / "dev.csv", rows[:3])
    d = load_data(_resolve(tmp_path, _sets(train, dev))[0])["reviews"]
    assert d.task.label_names == ("0", "1", "2") and d.task.num_outputs == 3
    assert [e.label for e in d.train] == [i % 3 for i in range(12)]


def test_boolean_json_labels_on_a_pair_task(tmp_path):
    def jsonl(path, rows):
        path.write_text("".join(json.dumps({"q": a, "a": b, "label": y}) + "\n" for a, b, y in rows))
        return path
    rows = [("is it red", "it is red", True), ("is it big", "it is small", False),
            ("is it new", "yes, new", True)]
    train, dev = jsonl(tmp_path / "train.jsonl", rows), jsonl(tmp_path / "dev.jsonl", rows[:2])
    d = load_data(_resolve(tmp_path, _sets(train, dev, text_columns="[q,a]"))[0])["reviews"]
    assert d.task.is_pair and d.task.label_names == ("False", "True")
    assert [(e.text_b, e.label) for e in d.train] == [("it is red", 1), ("it is small", 0),
                                                      ("yes, new", 1)]
    # the same file with the names given: booleans read as indices 0/1
    d2 = load_data(_resolve(tmp_path, _sets(train, dev, "data.label_names=[no,yes]",
                                            text_columns="[q,a]"))[0])["reviews"]
    assert d2.task.label_names == ("no", "yes") and [e.label for e in d2.train] == [1, 0, 1]


def test_regression_score_given_or_inferred(tmp_path):
    rows = [("a", "3.8"), ("b", "1.0"), ("c", "4.25")]
    train, dev = _csv(tmp_path / "train.csv", rows), _csv(tmp_path / "dev.csv", rows[:2])
    for extra in ([], ["data.regression=true"]):
        d = load_data(_resolve(tmp_path, _sets(train, dev, *extra))[0])["reviews"]
        assert d.task.is_regression and d.task.num_outputs == 1, extra
        assert d.task.main_metric == "pearson"
        assert [e.label for e in d.train] == pytest.approx([3.8, 1.0, 4.25])


def test_given_label_names_and_a_label_outside_them(tmp_path):
    train = _csv(tmp_path / "train.csv", [("x", "pos"), ("y", "neg")])
    dev = _csv(tmp_path / "dev.csv", [("z", "meh")])
    cfg, _ = _resolve(tmp_path, _sets(train, dev, "data.label_names=[neg,pos]"))
    with pytest.raises(DataError, match=r"dev.csv, line 2, column 'label': unknown label 'meh'"):
        load_data(cfg)


def test_one_label_only_is_explained(tmp_path):
    train = _csv(tmp_path / "train.csv", [("x", "pos"), ("y", "pos")])
    cfg, _ = _resolve(tmp_path, _sets(train, train))
    with pytest.raises(DataError, match="1 distinct label.*data.regression=true"):
        load_data(cfg)
