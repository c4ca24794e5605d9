from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from tasks.metrics import (
    accuracy,
    compute_metrics,
    f1,
    matthews_corrcoef,
    pearson,
    rank_average,
    spearman,
)
from tasks.registry import custom_task, get_task


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_classification_metrics_match_sklearn(seed, n_classes):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    y = rng.integers(0, n_classes, n)
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, n_classes, n))
    assert accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    assert matthews_corrcoef(y, p) == pytest.approx(skm.matthews_corrcoef(y, p))
    if n_classes == 2:
        assert f1(y, p) == pytest.approx(skm.f1_score(y, p))


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 300))
    y = np.round(rng.uniform(0, 5, n), 1)  # rounded: many ties, as in STS-B
    p = y + rng.normal(0, 1.5, n)
    assert pearson(y, p) == pytest.approx(stats.pearsonr(y, p)[0])
    assert spearman(y, p) == pytest.approx(stats.spearmanr(y, p)[0])
    assert spearman(y, np.round(p)) == pytest.approx(stats.spearmanr(y, np.round(p))[0])


def test_rank_average_matches_scipy_with_ties():
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(rank_average(x), stats.rankdata(x))


def test_degenerate_inputs_give_zero_without_warnings():
    y = np.array([0, 1, 1, 0, 1])
    const = np.ones(5, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert matthews_corrcoef(y, const) == 0.0
        assert matthews_corrcoef(const, const) == 0.0
        assert pearson(y, const) == 0.0
        assert spearman(y, const) == 0.0
        assert pearson(y, np.array([1.0, np.nan, 0, 0, 1])) == 0.0
        assert f1(np.zeros(4, int), np.zeros(4, int)) == 0.0  # no positives anywhere
    assert skm.matthews_corrcoef(y, const) == 0.0


def test_metric_input_errors():
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="zero examples"):
        accuracy([], [])


def test_compute_metrics_argmaxes_logits_and_averages_into_score():
    task = get_task("mrpc")
    logits = np.array([[2.0, -1.0], [0.1, 0.9], [0.3, 0.2], [-1.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    out = compute_metrics(task, logits, labels)
    pred = np.array([0, 1, 0, 1])
    assert set(out) == {"f1", "accuracy", "score"}
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(skm.f1_score(labels, pred))
    assert out["score"] == pytest.approx((out["f1"] + out["accuracy"]) / 2)


def test_compute_metrics_cola_and_mnli():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    logits = rng.normal(size=(50, 2))
    out = compute_metrics(get_task("cola"), logits, y)
    assert out["matthews"] == pytest.approx(skm.matthews_corrcoef(y, logits.argmax(1)))
    assert out["score"] == out["matthews"]
    y3 = rng.integers(0, 3, 50)
    logits3 = rng.normal(size=(50, 3))
    out3 = compute_metrics(get_task("mnli"), logits3, y3)
    assert out3["accuracy"] == pytest.approx(skm.accuracy_score(y3, logits3.argmax(1)))


@pytest.mark.parametrize("shape", ["flat", "column"])
def test_compute_metrics_regression(shape):
    rng = np.random.default_rng(1)
    y = rng.uniform(0, 5, 40)
    p = y + rng.normal(0, 1, 40)
    preds = p if shape == "flat" else p[:, None]
    out = compute_metrics(get_task("stsb"), preds, y)
    assert out["pearson"] == pytest.approx(stats.pearsonr(y, p)[0])
    assert out["spearman"] == pytest.approx(stats.spearmanr(y, p)[0])
    assert out["score"] == pytest.approx((out["pearson"] + out["spearman"]) / 2)


def test_compute_metrics_constant_regression_is_zero_not_nan():
    out = compute_metrics(get_task("stsb"), np.full(10, 2.5), np.linspace(0, 5, 10))
    assert out == {"pearson": 0.0, "spearman": 0.0, "score": 0.0}


def test_compute_metrics_accepts_class_indices_and_checks_shapes():
    task = custom_task("t", False, ["a", "b", "c"])
    assert compute_metrics(task, np.array([0, 2, 1]), [0, 2, 2])["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 classes but the logits have 2 columns"):
        compute_metrics(task, np.zeros((3, 2)), [0, 1, 2])
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, 1\)"):
        compute_metrics(get_task("stsb"), np.zeros((3, 2)), [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="missing"):
        compute_metrics(get_task("sst2"), np.zeros((2, 2)), [0, None])
