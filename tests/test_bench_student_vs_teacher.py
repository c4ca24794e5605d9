"""orchestrator.training.probe.measure on tiny models (the table's shape and ratios), as the
benchmark, the report and each trial's latency use it; and the benchmark's table."""
import importlib.util
from pathlib import Path

import torch

from orchestrator.training import probe
from students.bilstm import BiLSTMStudent
from students.transformer import TransformerStudent

spec = importlib.util.spec_from_file_location(
    "student_vs_teacher", Path(__file__).resolve().parent.parent / "benchmarks" / "student_vs_teacher.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_measure_returns_table_with_ratios():
    ids = lambda b: {"ids_a": torch.randint(3, 50, (b, 6))}  # noqa: E731
    models = {
        "BiLSTM (Tang)": probe.Bench(BiLSTMStudent(50, 8, 6, 1, 10, {"sst2": 2}), ids, "tiny", 6),
        probe.BASE: probe.Bench(TransformerStudent(50, 16, 2, 2, 32, 40, 2, {"sst2": 2}), ids, "tiny", 6),
        probe.TEACHER: probe.Bench(TransformerStudent(50, 16, 1, 2, 32, 40, 2, {"sst2": 2}), ids, "tiny", 6),
    }
    df = probe.measure(models, batch_sizes=(1, 4), repeats={1: 3, 4: 2}, warmup=1)
    assert list(df.index) == list(models)
    assert (df[["latency_b1_ms", "latency_b4_ms"]] > 0).all().all()
    assert df.loc[probe.BASE, "x_fewer_params_vs_base"] == 1.0
    lstm = models["BiLSTM (Tang)"].model
    assert df.loc["BiLSTM (Tang)", "non_embedding"] == lstm.non_embedding_parameters()
    assert "x_faster_b4_vs_teacher" in df and df.loc["BiLSTM (Tang)", "repeats_b4"] == 2
    assert "BiLSTM (Tang)" in bench.format_table(df, (1, 4))


def test_student_latency_is_measure_at_one_batch_size():
    model = BiLSTMStudent(50, 8, 6, 1, 10, {"sst2": 2})
    threads = torch.get_num_threads()
    ms = probe.student_latency_ms(model, 1, 12, pair=False, vocab_size=50, task="sst2", repeats=5)
    assert 0 < ms < 1000 and torch.get_num_threads() == threads
