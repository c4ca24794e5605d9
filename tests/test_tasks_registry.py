from __future__ import annotations

import dataclasses

import pytest

from tasks.registry import (
    GLUE_TASKS,
    TaskSpec,
    UnknownTaskError,
    custom_task,
    get_task,
    resolve_task_name,
    task_names,
)


def test_all_nine_glue_tasks_are_registered():
    assert task_names() == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]


@pytest.mark.parametrize("alias,name", [
    ("SST-2", "sst2"), ("sst-2", "sst2"), ("sst2", "sst2"), ("STS-B", "stsb"), ("sts_b", "stsb"),
    ("CoLA", "cola"), ("MNLI", "mnli"), ("mnli-mm", "mnli"), ("MNLI-m", "mnli"),
    ("QQP", "qqp"), ("qnli", "qnli"), ("RTE", "rte"), ("WNLI", "wnli"), (" mrpc ", "mrpc"),
])
def test_aliases_resolve_case_insensitively(alias, name):
    assert get_task(alias).name == name
    assert resolve_task_name(alias) == name


def test_unknown_task_lists_known_names_and_points_to_custom_tasks():
    with pytest.raises(UnknownTaskError) as err:
        get_task("imdb")
    msg = str(err.value)
    assert "'imdb'" in msg
    for name in GLUE_TASKS:
        assert name in msg
    assert "custom" in msg
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("name,metrics,main,labels,pair", [
    ("cola", ("matthews",), "matthews", ("unacceptable", "acceptable"), False),
    ("sst2", ("accuracy",), "accuracy", ("negative", "positive"), False),
    ("mrpc", ("f1", "accuracy"), "f1", ("not_equivalent", "equivalent"), True),
    ("stsb", ("pearson", "spearman"), "pearson", None, True),
    ("qqp", ("f1", "accuracy"), "f1", ("not_duplicate", "duplicate"), True),
    ("mnli", ("accuracy",), "accuracy", ("entailment", "neutral", "contradiction"), True),
    ("qnli", ("accuracy",), "accuracy", ("entailment", "not_entailment"), True),
    ("rte", ("accuracy",), "accuracy", ("entailment", "not_entailment"), True),
    ("wnli", ("accuracy",), "accuracy", ("not_entailment", "entailment"), True),
])
def test_glue_specs(name, metrics, main, labels, pair):
    t = get_task(name)
    assert t.metrics == metrics
    assert t.main_metric == main
    assert t.label_names == labels  # the nyu-mll/glue ClassLabel order
    assert t.is_pair is pair
    assert t.hub_config == name
    assert len(t.hub_text_columns) == (2 if pair else 1)
    assert t.num_outputs == (1 if labels is None else len(labels))
    assert t.is_regression is (labels is None)


def test_dev_splits_and_regression_range():
    assert get_task("mnli").dev_splits == ("dev_matched", "dev_mismatched")
    assert get_task("sst2").dev_splits == ("dev",)
    assert get_task("stsb").score_range == (0.0, 5.0)
    assert get_task("STS-B").glue_dir == "STS-B"
    assert get_task("sst2").glue_dir == "SST-2"


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_task("sst2").name = "x"  # type: ignore[misc]


@pytest.mark.parametrize("labels,metrics,main,outputs", [
    (["neg", "pos"], ("accuracy", "f1"), "accuracy", 2),
    (["a", "b", "c"], ("accuracy",), "accuracy", 3),
    (None, ("pearson", "spearman"), "pearson", 1),
])
def test_custom_task_default_metrics(labels, metrics, main, outputs):
    t = custom_task("reviews", is_pair=False, label_names=labels)
    assert t.metrics == metrics
    assert t.main_metric == main
    assert t.num_outputs == outputs
    assert t.glue_dir is None and t.hub_config is None
    assert t.label_names == (None if labels is None else tuple(labels))


def test_custom_task_overrides_and_validation():
    t = custom_task("pairs", is_pair=True, label_names=["no", "yes"], metrics=("f1",))
    assert t.metrics == ("f1",) and t.main_metric == "f1" and t.is_pair
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        custom_task("x", False, ["a", "b"], metrics=("bleu",))
    with pytest.raises(ValueError, match="at least 2 labels"):
        custom_task("x", False, ["only"])
    with pytest.raises(ValueError, match="repeat"):
        custom_task("x", False, ["a", "a"])
    with pytest.raises(ValueError, match="non-empty name"):
        custom_task(" ", False, None)


def test_main_metric_must_be_a_metric():
    with pytest.raises(ValueError, match="main_metric"):
        TaskSpec("t", None, None, False, ("a", "b"), ("accuracy",), "f1")
