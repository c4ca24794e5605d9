"""students.losses.distillation_loss against values computed by hand."""
import math

import pytest
import torch

from students.losses import distillation_loss

S = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
T = torch.tensor([[0.0, 2.0], [3.0, 6.0]])


def close(x, y):
    assert float(x.detach() if torch.is_tensor(x) else x) == pytest.approx(y, rel=1e-6, abs=1e-7)


def test_mse_is_mean_squared_logit_difference():
    # differences 1, 0, 0, -2 -> (1 + 4) / 4
    close(distillation_loss(S, T, None, "mse", 0.0, 1.0, False), 1.25)


def test_mse_ignores_temperature():
    close(distillation_loss(S, T, None, "mse", 0.0, 4.0, False), 1.25)


def test_kl_at_temperature_one():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher probs 3/4, 1/4; student 1/2, 1/2
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    close(distillation_loss(s, t, None, "kl", 0.0, 1.0, False), want)


def test_kl_scales_by_temperature_squared_and_averages_rows():
    s = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # row 2: identical distributions
    temp = 2.0
    pt = math.sqrt(3.0) / (math.sqrt(3.0) + 1.0)  # softmax([ln3 / 2, 0])[0]
    row1 = pt * math.log(pt / 0.5) + (1 - pt) * math.log((1 - pt) / 0.5)
    want = (row1 + 0.0) / 2 * temp ** 2
    close(distillation_loss(s, t, None, "kl", 0.0, temp, False), want)


def test_ce_uses_gold_only():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    want = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    close(distillation_loss(s, None, torch.tensor([0, 1]), "ce", 0.0, 1.0, False), want)
    # teacher logits, alpha and temperature play no part
    close(distillation_loss(s, torch.zeros(2, 2), torch.tensor([0, 1]), "ce", 0.7, 3.0, False),
          want)


def test_alpha_mix_excludes_missing_gold_rows():
    # distill (mse) = 1.25; CE only on row 0 (row 1 is -1): -log softmax([1, 2])[0]
    ce0 = math.log(1 + math.exp(1.0))
    want = 0.7 * 1.25 + 0.3 * ce0
    close(distillation_loss(S, T, torch.tensor([0, -1]), "mse", 0.3, 1.0, False), want)
    # NaN marks a missing label too
    close(distillation_loss(S, T, torch.tensor([0.0, float("nan")]), "mse", 0.3, 1.0, False), want)


def test_kl_with_alpha():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    want = 0.5 * kl + 0.5 * math.log(2.0)
    close(distillation_loss(s, t, torch.tensor([1]), "kl", 0.5, 1.0, False), want)


def test_no_gold_in_batch_gives_zero_gold_term_and_keeps_the_graph():
    s = S.clone().requires_grad_(True)
    for gold in (None, torch.tensor([-1, -1])):
        loss = distillation_loss(s, T, gold, "mse", 0.4, 1.0, False)
        close(loss, 0.6 * 1.25)
    loss = distillation_loss(s, None, torch.tensor([-1, -1]), "ce", 0.0, 1.0, False)
    close(loss, 0.0)
    loss.backward()  # still differentiable, gradient zero
    assert torch.equal(s.grad, torch.zeros_like(S))


def test_regression_uses_mse_for_both_parts():
    s = torch.tensor([[1.0], [2.0]])
    t = torch.tensor([1.5, 2.0])  # teacher predictions may come flat
    gold = torch.tensor([2.0, float("nan")])
    # distill = (0.25 + 0) / 2; gold part only row 0: (1 - 2)^2
    for kind in ("mse", "kl"):
        close(distillation_loss(s, t, gold, kind, 0.5, 2.0, True), 0.5 * 0.125 + 0.5 * 1.0)
    close(distillation_loss(s, None, gold, "ce", 0.0, 1.0, True), 1.0)
    # -1 is a real score for regression, not a missing label
    close(distillation_loss(s, None, torch.tensor([-1.0, 2.0]), "ce", 0.0, 1.0, True), 2.0)


def test_gradient_flows_to_student_only():
    s = S.clone().requires_grad_(True)
    t = T.clone().requires_grad_(True)
    distillation_loss(s, t, torch.tensor([1, 0]), "kl", 0.5, 2.0, False).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="mse, kl, ce"):
        distillation_loss(S, T, None, "hinge", 0.0, 1.0, False)
    with pytest.raises(ValueError, match="teacher logits"):
        distillation_loss(S, None, None, "mse", 0.0, 1.0, False)
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(S, T[:, :1], None, "mse", 0.0, 1.0, False)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(S, T, None, "mse", 1.5, 1.0, False)
