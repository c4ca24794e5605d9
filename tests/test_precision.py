"""Labeling precision (``pool.precision``, ``teacher.precision``): detection of native bf16, the
refusals and warnings, the soft-label cache key, and the fidelity gate's fp32 fallback."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import ray

import orchestrator.runtime.precision as prec
from orchestrator.config import ConfigError, PoolConfig, TeacherConfig, build_config
from orchestrator.runtime.keys import content_key
from orchestrator.stages.teacher import training_settings
from orchestrator.teachers.cache import SoftLabelCache
from orchestrator.teachers.teacher_model import create_random_teacher
from orchestrator.teachers.teacher_pool import TeacherPool, fidelity

WORDS = ("the a movie film good bad great terrible plot actor boring fun slow sharp witty dull "
         "story scene music cast ending long short brilliant awful").split()


@pytest.fixture
def cpu_with(monkeypatch):
    """Simulate a CPU with the given /proc/cpuinfo flags (detection is cached: cleared)."""
    def set_flags(flags):
        monkeypatch.setattr(prec, "cpu_flags", lambda: set(flags))
        prec.cpu_bf16_support.cache_clear()
        prec._warned.clear()
    yield set_flags
    prec.cpu_bf16_support.cache_clear()
    prec._warned.clear()


# ---------------------------------------------------------------------------------------------
# detection, refusals, warnings


def test_cpuinfo_is_read_in_one_place(tmp_path, monkeypatch):
    """The flags precision reads and the CPU name a report quotes come from one reader."""
    import orchestrator.runtime.machine as machine

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 amx_bf16\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n")
    real = machine.Path
    monkeypatch.setattr(machine, "Path", lambda p: real(info) if p == "/proc/cpuinfo" else real(p))
    assert prec.cpu_flags() == {"fpu", "avx2", "amx_bf16"}
    assert "(Test CPU 9000" in machine.describe()
    info.unlink()
    assert prec.cpu_flags() is None and machine.cpuinfo_value("model name") is None


def test_machine_line_counts_the_machines_cpus_and_says_when_pinned(monkeypatch):
    """A report run under ``taskset -c 1`` on a 2-CPU machine says 2 CPUs, pinned to 1."""
    import orchestrator.runtime.machine as machine

    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {1}, raising=False)
    assert machine.describe().startswith("2 CPUs (") and "; this process pinned to 1)" in \
        machine.describe()
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert "pinned" not in machine.describe()


def test_auto_is_fp32_without_native_bf16_and_bf16_with_it(cpu_with):
    cpu_with({"avx2", "fma"})
    assert prec.resolve("auto", "cpu") == "fp32"
    native, what = prec.cpu_bf16_support()
    assert not native and "avx512_bf16" in what and "amx_bf16" in what
    cpu_with({"avx512f", "avx512_bf16"})
    assert prec.resolve("auto", "cpu") == "bf16"
    cpu_with({"amx_bf16", "amx_tile"})
    assert prec.resolve("auto", "cpu") == "bf16"
    assert prec.resolve("fp32", "cpu") == "fp32"


def test_bf16_without_native_support_warns_once_naming_the_instruction_sets(cpu_with, caplog):
    cpu_with({"avx2"})
    with caplog.at_level(logging.WARNING, logger="orchestrator.runtime.precision"):
        assert prec.resolve("bf16", "cpu", "pool.precision") == "bf16"  # works, slowly
        assert prec.resolve("bf16", "cpu", "pool.precision") == "bf16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "avx512_bf16 and amx_bf16" in warnings[0] and "pool.precision=auto" in warnings[0]
    caplog.clear()
    cpu_with({"avx512_bf16"})
    with caplog.at_level(logging.WARNING, logger="orchestrator.runtime.precision"):
        prec.resolve("bf16", "cpu", "pool.precision")
    assert not caplog.records


def test_fp16_on_cpu_is_refused_at_config_and_pool_start(tmp_path):
    with pytest.raises(ConfigError, match=r"pool.precision=fp16 needs GPU teacher actors"):
        build_config({"pool": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match=r"teacher.precision=fp16: .*bf16 or auto"):
        build_config({}, {"teacher.precision": "fp16"})
    with pytest.raises(ConfigError, match=r"pool.precision='fp8': choose auto, fp32, bf16, fp16"):
        build_config({}, {"pool.precision": "fp8"})
    with pytest.raises(prec.PrecisionError, match=r"fp16 cannot run on a CPU"):
        prec.resolve("fp16", "cpu", "pool.precision")
    teacher = create_random_teacher(tmp_path / "t", WORDS, num_labels=2, head_name="sst2",
                                    max_position=64, seed=1)
    # refused before Ray (or any actor) is started
    ray_was_up = ray.is_initialized()
    with pytest.raises(prec.PrecisionError, match=r"pool.precision=fp16 cannot run on a CPU"):
        TeacherPool(teacher, PoolConfig(precision="fp16"))
    assert ray.is_initialized() == ray_was_up


def test_deprecated_half_precision_on_gpu_maps_onto_precision(caplog):
    with caplog.at_level(logging.WARNING, logger="orchestrator.config"):
        assert build_config({"pool": {"half_precision_on_gpu": False}}).pool.precision == "fp32"
        assert build_config({"pool": {"half_precision_on_gpu": True}}).pool.precision == "auto"
        assert build_config({}, {"pool.half_precision_on_gpu": "false"}).pool.precision == "fp32"
        both = build_config({"pool": {"half_precision_on_gpu": False, "precision": "bf16"}})
    assert both.pool.precision == "bf16"
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 4 and all("deprecated: use pool.precision" in m for m in msgs)
    assert "ignored beside pool.precision=bf16" in msgs[-1]


# ---------------------------------------------------------------------------------------------
# cache keys


def test_fp32_keys_are_unchanged_and_reduced_precision_gets_its_own(tmp_path):
    root = str(tmp_path)
    fp32 = SoftLabelCache(root, "teacher-x", "bundled", 32, "sst2")
    # the namespace of fp32 labels as computed before precisions existed: a work root filled
    # then keeps its labels
    assert fp32.namespace == "c0b345f8489d89ae"
    assert SoftLabelCache(root, "teacher-x", "bundled", 32, "sst2", "fp32").namespace == \
        fp32.namespace
    bf16 = SoftLabelCache(root, "teacher-x", "bundled", 32, "sst2", "bf16")
    fp16 = SoftLabelCache(root, "teacher-x", "bundled", 32, "sst2", "fp16")
    assert len({fp32.namespace, bf16.namespace, fp16.namespace}) == 3
    bf16.put({"k": np.array([1.0, 2.0], np.float32)})
    found, missing = SoftLabelCache(root, "teacher-x", "bundled", 32, "sst2").lookup(["k"])
    assert found == {} and missing == ["k"], "bf16 labels must never be served as fp32 labels"
    assert "k" in bf16.with_precision("fp32").with_precision("bf16")
    with pytest.raises(ValueError, match="not auto"):
        SoftLabelCache(root, "teacher-x", "bundled", 32, "sst2", "auto")


def test_fp32_teacher_keys_are_unchanged(cpu_with):
    cfg = TeacherConfig(model="random:tiny", precision="fp32")
    key = content_key({"v": 1, "model": "random:tiny", "task": "sst2", "data": "abc",
                       "cfg": training_settings(cfg)})
    assert key == "c432a8b24aa3e1ca"  # as computed before teacher.precision existed
    cpu_with({"avx2"})
    assert training_settings(TeacherConfig(model="random:tiny", precision="auto")) == \
        training_settings(cfg), "auto without native bf16 is fp32: the same teacher"
    cpu_with({"avx512_bf16"})
    assert training_settings(TeacherConfig(model="random:tiny", precision="auto"))[
        "precision"] == "bf16"


def test_fidelity_measures_argmax_agreement_and_rmse():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.2, 0.3]])
    low = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.3, 0.2]])
    f = fidelity(ref, low)
    assert f["agreement"] == 0.75 and f["n"] == 4
    assert f["rmse"] == pytest.approx(np.sqrt(0.02 / 8))
    assert fidelity(np.array([[0.5], [-1.0]]), np.array([[0.4], [1.0]]))["agreement"] == 0.5


# ---------------------------------------------------------------------------------------------
# the fidelity gate, with a tiny random teacher


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, 30)))) for _ in range(n)]


def test_gate_falls_back_to_fp32_below_threshold_and_runs_once(ray_local, tmp_path, caplog):
    teacher = create_random_teacher(tmp_path / "t", WORDS, num_labels=3, head_name="sst2",
                                    max_position=64, seed=1)
    texts = _texts(200, seed=0)
    root = str(tmp_path / "labels")
    base = dict(num_actors=1, cpus_per_actor=0.5, torch_threads=1, fidelity_sample=64)
    with TeacherPool(teacher, PoolConfig(precision="fp32", **base)) as ref_pool:
        ref = ref_pool.label_texts(texts, max_length=32, progress=False)
    assert ref.precision == "fp32"

    # an agreement no labels can reach: the gate must fail bf16 and label in fp32
    impossible = PoolConfig(precision="bf16", fidelity_threshold=1.01, **base)
    with caplog.at_level(logging.WARNING, logger="orchestrator.teachers.teacher_pool"):
        with TeacherPool(teacher, impossible) as pool:
            assert pool.actor_precision == "bf16" and pool.precision == "bf16"
            cache = pool.cache(root, max_length=32)  # made before the gate: a bf16 cache
            assert cache.precision == "bf16"
            res = pool.label_texts(texts, max_length=32, cache=cache, progress=False)
            metrics = pool.fidelity_metrics()
    assert res.precision == "fp32" and pool.precision == "fp32"
    np.testing.assert_allclose(res.logits, ref.logits, atol=1e-5)
    warning = next(r.getMessage() for r in caplog.records if "fidelity gate" in r.getMessage())
    assert "below pool.fidelity_threshold=101.00%" in warning
    assert "labeling in fp32 instead" in warning
    assert metrics["label_reduced_precision"] == 0.0
    assert 0.0 <= metrics["label_fidelity_agreement"] <= 1.0
    assert metrics["label_fidelity_rmse"] > 0.0, "bf16 logits differ from fp32 ones"
    # the labels went to the fp32 cache, none to the bf16 one
    fp32_cache = SoftLabelCache.for_teacher(root, teacher, 32, "sst2")
    assert len(fp32_cache) == len(set(texts))
    assert len(SoftLabelCache.for_teacher(root, teacher, 32, "sst2", "bf16")) == 0
    verdict_files = list((tmp_path / "labels" / "fidelity").glob("*-bf16.json"))
    assert len(verdict_files) == 1
    verdict = json.loads(verdict_files[0].read_text())
    assert verdict["n"] == 64 and verdict["agreement"] == metrics["label_fidelity_agreement"]

    # a later pool on the same root reads the verdict: no second gate, straight to fp32
    caplog.clear()
    with TeacherPool(teacher, impossible) as again:
        more = _texts(50, seed=1)
        res2 = again.label_texts(more, max_length=32, cache=again.cache(root, max_length=32),
                                 progress=False)
        calls = ray.get(again.actors[0].info.remote())["calls"]
    assert res2.precision == "fp32" and calls == 1, "the gate ran again"
    assert again.fidelity_metrics() == metrics

    # a threshold the labels do reach: bf16 labels, in their own cache
    with TeacherPool(teacher, PoolConfig(precision="bf16", fidelity_threshold=0.0,
                                         **base)) as ok:
        res3 = ok.label_texts(texts[:40], max_length=32, cache=ok.cache(root, max_length=32),
                              progress=False)
        assert ok.fidelity_metrics()["label_reduced_precision"] == 1.0
    assert res3.precision == "bf16"
    assert len(SoftLabelCache.for_teacher(root, teacher, 32, "sst2", "bf16")) == \
        len(set(texts[:40]))
    assert np.abs(res3.logits - ref.logits[:40]).max() > 0, "bf16 labels are not fp32 ones"
