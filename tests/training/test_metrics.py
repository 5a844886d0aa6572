"""Metrics against scikit-learn (an independent implementation), balanced class weights, size-aware defaults,
and the weighted cross-entropy's gradient by central differences."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from tests.training.conftest import numerical_gradient, rel_error
from training.layers import softmax_cross_entropy
from training.metrics import balanced_class_weights, classification_report, roc_auc
from training.train import sized


def test_report_matches_scikit_learn_on_an_imbalanced_three_class_problem():
    rng = np.random.default_rng(0)
    y = rng.choice(3, 500, p=[0.8, 0.15, 0.05])
    logits = rng.normal(size=(500, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = proba.argmax(1)
    r = classification_report(y, proba, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    p, rec, f, sup = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    for k, name in enumerate("abc"):
        c = r["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx(
            (p[k], rec[k], f[k], sup[k])
        )
    assert r["confusion_matrix"]["rows_true_columns_predicted"] == skm.confusion_matrix(y, pred).tolist()
    assert "roc_auc" not in r


def test_roc_auc_matches_scikit_learn_with_ties_and_the_binary_report_has_it():
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.1).astype(int)
    score = np.round(rng.random(400) + 0.3 * y, 1)  # many ties
    assert roc_auc(y, score) == pytest.approx(skm.roc_auc_score(y, score))
    proba = np.column_stack([1 - score / 2, score / 2])
    assert classification_report(y, proba)["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score))
    assert np.isnan(roc_auc(np.zeros(5, int), np.arange(5.0)))


def test_balanced_weights_make_each_class_weigh_the_same():
    y = np.array([0] * 90 + [1] * 10)
    w = balanced_class_weights(y, 3)
    assert w.tolist() == pytest.approx([100 / 270, 100 / 30, 0.0])
    assert (w[y] * (y == 0)).sum() == pytest.approx((w[y] * (y == 1)).sum())


def test_weighted_cross_entropy_gradient_by_central_differences():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 3))
    y = np.array([0, 1, 2, 2, 1, 0])
    w = np.array([0.5, 2.0, 1.0, 3.0, 0.25, 1.0])
    loss, grad = softmax_cross_entropy(logits, y, w)
    assert loss == pytest.approx(
        float(np.mean(w * -np.log(np.exp(logits[np.arange(6), y]) / np.exp(logits).sum(1))))
    )
    num = numerical_gradient(lambda: softmax_cross_entropy(logits, y, w)[0], logits)
    assert rel_error(grad, num) < 1e-7
    plain, _ = softmax_cross_entropy(logits, y)
    assert softmax_cross_entropy(logits, y, np.ones(6))[0] == pytest.approx(plain)


def test_size_aware_defaults_in_optimizer_steps():
    assert sized(1259) == {"batch_size": 64, "epochs": 100, "patience": 20}  # the bundled digits, as always
    tiny = sized(124)  # wine's training split
    assert tiny["batch_size"] == 16 and tiny["epochs"] * 8 >= 2000 and tiny["patience"] == 50
    big = sized(700_000)
    assert big["batch_size"] == 512 and big["epochs"] == 5 and big["patience"] == 2
