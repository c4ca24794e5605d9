"""``train.precision``: student steps under bf16 autocast train the fp32 weights (the loss is
fp32, the optimizer steps them), fp16 is refused on a CPU, and fp32 leaves the report's cell
keys as they were (tests/test_cache_keys_pinned.py holds the literals)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.config import ConfigError, StudentConfig, build_config
from orchestrator.runtime.precision import cpu_bf16_support
from orchestrator.training.bundle import TaskTensors
from orchestrator.training.train import TaskStream, student_precision, train_steps
from students.factory import build_student
from tasks.registry import get_task


def _setup(seed: int = 0):
    rng = np.random.default_rng(0)
    n, vocab = 256, 50
    ids = [list(rng.integers(2, vocab, size=rng.integers(3, 12))) for _ in range(n)]
    logits = rng.normal(size=(n, 2)).astype(np.float32)
    data = TaskTensors(ids, None, None, np.zeros(n), logits)
    torch.manual_seed(seed)
    model = build_student(StudentConfig(arch="bilstm", embed_dim=16, hidden_size=8,
                                        relu_size=16, dropout=0.0), vocab, {"sst2": 2}, False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, opt, {"sst2": TaskStream(data, np.arange(n), 32, seed=1)}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_steps_train_fp32_weights_in_each_precision(precision):
    cfg = build_config({"train": {"precision": precision, "loss": "mse"}})
    model, opt, streams = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    specs = {"sst2": get_task("sst2")}
    first = train_steps(model, opt, streams, ["sst2"] * 8, specs, cfg.train, precision)
    later = train_steps(model, opt, streams, ["sst2"] * 40, specs, cfg.train, precision)
    assert np.isfinite(first) and later < first, (first, later)  # it learns the logits
    assert all(v.dtype == torch.float32 for v in model.state_dict().values()
               if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bf16_steps_stay_close_to_fp32():
    specs = {"sst2": get_task("sst2")}
    cfg = build_config({"train": {"loss": "mse"}})
    losses = {}
    for p in ("fp32", "bf16"):
        model, opt, streams = _setup()
        losses[p] = train_steps(model, opt, streams, ["sst2"] * 20, specs, cfg.train, p)
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_auto_and_fp16_resolve_for_the_cpu():
    auto = build_config({"train": {"precision": "auto"}}).train
    assert student_precision(auto) == ("bf16" if cpu_bf16_support()[0] else "fp32")
    with pytest.raises(ConfigError, match="train.precision=fp16 needs GPU workers"):
        build_config({"train": {"precision": "fp16"}})
