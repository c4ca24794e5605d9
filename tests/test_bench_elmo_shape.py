"""The ELMo-shaped model of benchmarks/student_vs_teacher.py: its size against ELMo's published
93.6M (built on the meta device: no memory, no time), its outputs on a tiny instance, and the
benchmark's BiLSTM-vs-ELMo ratios and options."""
import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

from orchestrator.training import probe
from students.bilstm import BiLSTMStudent
from students.factory import count_parameters

spec = importlib.util.spec_from_file_location(
    "student_vs_teacher_elmo",
    Path(__file__).resolve().parent.parent / "benchmarks" / "student_vs_teacher.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
elmo = bench.sys.modules["elmo_shape"]


def tiny_elmo(num_labels=3):
    torch.manual_seed(0)
    return elmo.ElmoShaped(num_labels, n_chars=20, char_dim=4, filters=((1, 4), (2, 6)),
                           highway_layers=1, proj=6, cells=10, lstm_layers=2).eval()


def test_full_size_matches_elmo_published_parameter_count():
    with torch.device("meta"):
        model = elmo.ElmoShaped(num_labels=2)
    parts = model.parameter_breakdown()
    assert parts["char_embedding"] == 262 * 16
    # convolutions (16 x width x filters + biases), 2 highway layers 2048 -> 4096, projection
    convs = sum(16 * w * n + n for w, n in elmo.FILTERS)
    assert parts["char_cnn"] == convs + 2 * (2048 * 4096 + 4096) + (2048 * 512 + 512)
    # 4 LSTMs (2 layers x 2 directions): input and state maps to 4 x 4096 gates, 2 biases,
    # projection 4096 -> 512
    assert parts["bilstm"] == 4 * (2 * 16384 * 512 + 2 * 16384 + 4096 * 512)
    assert abs(parts["elmo"] - elmo.PUBLISHED_TOTAL) / elmo.PUBLISHED_TOTAL < 0.001
    counts = count_parameters(model)
    assert counts["total"] == parts["elmo"] + parts["head"]
    # only the character table is an embedding: the char CNN counts as non-embedding
    assert counts["non_embedding"] == counts["total"] - 262 * 16


def test_tiny_elmo_classifies_and_its_token_vectors_are_context_free():
    model = tiny_elmo()
    chars = elmo.char_inputs(5, chars_per_word=7, n_chars=20)(4)["chars"]
    assert chars.shape == (4, 7, 7) and chars.min() >= 1 and chars.max() < 20
    with torch.inference_mode():
        logits = model(chars)
        assert logits.shape == (4, 3)
        swapped = chars.clone()
        swapped[:, [1, 2]] = chars[:, [2, 1]]
        tok, tok_swapped = model.tokens(chars), model.tokens(swapped)
        # the char CNN sees one word at a time; the LMs see the order
        assert torch.allclose(tok[:, 1], tok_swapped[:, 2])
        assert not torch.allclose(model(swapped), logits)


def test_bilstm_vs_elmo_ratios_and_summary():
    ids = lambda b: {"ids_a": torch.randint(3, 50, (b, 5))}  # noqa: E731
    models = {
        bench.BILSTM: probe.Bench(BiLSTMStudent(50, 8, 6, 1, 10, {"sst2": 2}), ids, "tiny", 5),
        bench.ELMO: probe.Bench(tiny_elmo(2), elmo.char_inputs(5, 7, 20), "tiny", 7),
    }
    sizes = (1, 3)
    df = bench.add_elmo_ratios(probe.measure(models, sizes, {1: 2, 3: 2}, warmup=1), sizes)
    small, big = (int(df.loc[n, "non_embedding"]) for n in (bench.BILSTM, bench.ELMO))
    assert df.loc[bench.BILSTM, "x_fewer_params_vs_elmo"] == pytest.approx(big / small)
    assert df.loc[bench.ELMO, "x_faster_b3_vs_elmo"] == 1.0
    assert "b3/elmo" in bench.format_table(df, sizes)
    summary = bench.elmo_summary(df, models[bench.ELMO].model, sizes)
    cnn = models[bench.ELMO].model.parameter_breakdown()["char_cnn"]
    assert f"char CNN, highway and projection {cnn:,}" in summary
    assert f"{big / small:.0f}x fewer" in summary and "b=3" in summary


def test_batch_sizes_option_and_unknown_model(capsys):
    assert bench.batch_sizes("1,32") == (1, 32)
    for bad in ("0", "1,x", "1,1", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integers"):
            bench.batch_sizes(bad)
    with pytest.raises(SystemExit):
        bench.main(["--models", "BiLSTM (Tang),ELMo (shap)", "--repeats", "1"])
    assert "unknown models ['ELMo (shap)']" in capsys.readouterr().err
