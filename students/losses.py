"""Distillation losses: the one place the training loop gets them from.

    kind="mse":  mean squared error between student and teacher logits (Tang et al. 2019)
    kind="kl":   KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch (Hinton et al.)
    kind="ce":   cross-entropy on gold labels only (no teacher)

    total = (1 - alpha) * distill + alpha * gold_term      (mse, kl)
    total = gold_term                                       (ce)

The gold term is cross-entropy (classification) or MSE against the gold score (regression),
averaged over the rows that have a gold label. Missing labels are -1 or NaN for classification
and NaN for regression (where -1 can be a real score). With no gold label in the batch (or
``gold_labels=None``) the gold term is 0, so the loss is ``(1 - alpha) * distill``.
Regression tasks (one output) always distill with MSE, whatever ``kind``; ``temperature`` only
affects ``kl``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("mse", "kl", "ce")


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum() * 0.0  # stays in the graph


def gold_loss(student_logits: torch.Tensor, gold_labels: torch.Tensor | None,
              regression: bool) -> torch.Tensor:
    """Cross-entropy (or MSE for regression) over the rows with a gold label; 0 when none."""
    if gold_labels is None:
        return _zero(student_logits)
    gold = torch.as_tensor(gold_labels, device=student_logits.device)
    if regression:
        s = student_logits.reshape(-1)
        gold = gold.reshape(-1).to(s.dtype)
        valid = ~torch.isnan(gold)
        if not valid.any():
            return _zero(student_logits)
        return F.mse_loss(s[valid], gold[valid])
    gold = gold.reshape(-1)
    valid = gold >= 0
    if gold.is_floating_point():
        valid &= ~torch.isnan(gold)
    if not valid.any():
        return _zero(student_logits)
    return F.cross_entropy(student_logits[valid], gold[valid].long())


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                      gold_labels: torch.Tensor | None = None, kind: str = "mse",
                      alpha: float = 0.0, temperature: float = 1.0,
                      regression: bool = False) -> torch.Tensor:
    """Scalar training loss for one batch of one task; see the module docstring."""
    if kind not in KINDS:
        raise ValueError(f"loss kind {kind!r}: choose {', '.join(KINDS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is outside [0, 1]")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    gold = gold_loss(student_logits, gold_labels, regression)
    if kind == "ce":
        return gold
    if teacher_logits is None:
        raise ValueError(f"loss kind {kind!r} needs teacher logits")
    s = student_logits
    t = teacher_logits.detach().to(device=s.device, dtype=s.dtype)
    if regression:
        s, t = s.reshape(-1), t.reshape(-1)
    if s.shape != t.shape:
        raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} "
                         "differ in shape")
    if regression or kind == "mse":
        distill = F.mse_loss(s, t)
    else:
        distill = F.kl_div(F.log_softmax(s / temperature, dim=-1),
                           F.log_softmax(t / temperature, dim=-1),
                           reduction="batchmean", log_target=True) * temperature ** 2
    return (1.0 - alpha) * distill + alpha * gold
