"""The labeling probe: its candidates, its choice on given timings and agreements, its cache of
choices per machine and teacher, and a worker labeling with a bf16 copy of the weights."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.config import PoolConfig
from orchestrator.teachers import labeling_probe as lp
from orchestrator.teachers.labeling_probe import LabelSettings, Trial

DEFAULT = LabelSettings("eager", "autocast", 2048, 1)


def _trial(settings: LabelSettings, seconds: list[float], agreement: float = 1.0) -> Trial:
    return Trial(settings, seconds, agreement, 0.01, 128, "cpu")


def test_choose_keeps_the_fastest_that_passes_the_threshold():
    fast_bad = LabelSettings("sdpa", "cast", 4096, 1)
    fast_ok = LabelSettings("sdpa", "cast", 2048, 1)
    trials = [_trial(DEFAULT, [1.0, 1.2, 1.1]), _trial(fast_bad, [0.5, 0.5], agreement=0.99),
              _trial(fast_ok, [0.8, 0.7, 0.9])]
    assert lp.choose(trials, 0.995, DEFAULT) == fast_ok  # median 0.8 < 1.1; 0.99 fails
    assert lp.choose(trials, 0.98, DEFAULT) == fast_bad  # a looser threshold lets it in


def test_choose_falls_back_to_the_incumbent():
    other = LabelSettings("sdpa", "cast", 2048, 1)
    assert lp.choose([_trial(other, [0.1], agreement=0.5)], 0.995, DEFAULT) == DEFAULT
    assert lp.choose([], 0.995, DEFAULT) == DEFAULT
    # a tie keeps the incumbent, wherever it was measured
    assert lp.choose([_trial(DEFAULT, [1.0]), _trial(other, [1.0])], 0.9, other) == other
    assert lp.choose([_trial(DEFAULT, [1.0]), _trial(other, [1.0])], 0.9, DEFAULT) == DEFAULT


def test_choose_keeps_the_incumbent_unless_clearly_faster():
    other = LabelSettings("sdpa", "cast", 2048, 1)
    # 3% faster is inside the timing noise: the incumbent stays, so runs label alike
    assert lp.choose([_trial(DEFAULT, [1.0]), _trial(other, [0.97])], 0.995, DEFAULT) == DEFAULT
    assert lp.choose([_trial(DEFAULT, [1.0]), _trial(other, [0.90])], 0.995, DEFAULT) == other
    assert lp.choose([_trial(DEFAULT, [1.0]), _trial(other, [0.97])], 0.995, DEFAULT,
                     margin=0.0) == other
    # an incumbent that fails the threshold gives way to the fastest that passes
    assert lp.choose([_trial(DEFAULT, [1.0], agreement=0.9), _trial(other, [0.99])], 0.995,
                     DEFAULT) == other


def test_candidates_vary_one_axis_and_only_unset_knobs():
    kernel = lp.candidates(DEFAULT, "kernel")
    assert kernel[0] == DEFAULT and len(kernel) == 4 and len(set(kernel)) == 4
    assert {(c.attention, c.weights) for c in kernel} == {
        (a, w) for a in lp.ATTENTIONS for w in lp.WEIGHTS}
    assert {c.token_budget for c in lp.candidates(DEFAULT, "budget")} == set(lp.PROBE_BUDGETS)
    assert lp.candidates(DEFAULT, "budget", vary_budget=False) == [DEFAULT]
    assert lp.candidates(DEFAULT, "threads") == [DEFAULT]  # one thread: nothing to halve
    four = LabelSettings("sdpa", "cast", 2048, 4)
    assert [c.threads for c in lp.candidates(four, "threads")] == [4, 2]
    assert lp.candidates(four, "threads", vary_threads=False) == [four]
    with pytest.raises(ValueError, match="attention='flash': choose sdpa, eager"):
        LabelSettings("flash", "cast", 2048, 1)


def test_choice_cache_is_keyed_by_machine_teacher_and_fixed_knobs(tmp_path):
    m = {"cpu_model": "Xeon", "cpu_flags": "abc", "amx": True, "torch": "2.13"}
    key = lp.choice_key(m, "teacher1", "bf16", 1, None, True)
    assert lp.load_choice(tmp_path, key) is None
    record = {"choice": LabelSettings("sdpa", "cast", 1024, 1).as_dict(), "machine": m,
              "trials": [_trial(DEFAULT, [0.5]).as_dict()]}
    path = lp.save_choice(tmp_path, key, record)
    assert path.endswith(f"labeling_probe/{key}.json")
    got = lp.load_choice(tmp_path, key)
    assert LabelSettings.from_dict(got["choice"]) == LabelSettings("sdpa", "cast", 1024, 1)
    assert Trial.from_dict(got["trials"][0]).texts_per_s == pytest.approx(256.0)
    # another CPU, teacher, precision, share or fixed budget: another key (probed again)
    others = [lp.choice_key(dict(m, cpu_model="EPYC"), "teacher1", "bf16", 1, None, True),
              lp.choice_key(dict(m, amx=False, cpu_flags="abd"), "teacher1", "bf16", 1, None,
                            True),
              lp.choice_key(m, "teacher2", "bf16", 1, None, True),
              lp.choice_key(m, "teacher1", "bf16", 2, None, True),
              lp.choice_key(m, "teacher1", "bf16", 1, 4096, True)]
    assert key not in others and len(set(others)) == len(others)
    # an unreadable record is no record: the probe runs again and overwrites it
    (tmp_path / "labeling_probe" / f"{key}.json").write_text("{not json")
    assert lp.load_choice(tmp_path, key) is None


def test_probe_texts_are_deterministic_words_of_the_vocabulary():
    vocab = ["[PAD]", "[CLS]", "##ing", "good", "bad", "movie", "plot", "3d"]
    a, b = lp.probe_texts(vocab, 20, seed=0), lp.probe_texts(vocab, 20, seed=0)
    assert a == b and len(a) == 20
    words = {w for t in a for w in t.split()}
    assert words <= {"good", "bad", "movie", "plot"}
    assert all(3 <= len(t.split()) <= 40 for t in a)
    with pytest.raises(ValueError, match="no plain words"):
        lp.probe_texts(["[PAD]", "##s"], 5)


def test_machine_facts_name_the_cpu_and_amx():
    m = lp.machine()
    assert set(m) == {"cpu_model", "cpu_flags", "amx", "torch"} and isinstance(m["amx"], bool)


def test_describe_choice_gives_settings_and_rates():
    from orchestrator.teachers.teacher_pool import describe_choice

    chosen = LabelSettings("sdpa", "cast", 1024, 1)
    record = {"choice": chosen.as_dict(), "default": DEFAULT.as_dict(), "precision": "bf16",
              "machine": {"cpu_model": "Xeon X", "amx": True},
              "trials": [_trial(DEFAULT, [1.0]).as_dict(), _trial(chosen, [0.5]).as_dict()]}
    line = describe_choice(record, "probed now")
    assert "bf16 on Xeon X (AMX) with sdpa attention, bf16 weights, token budget 1024" in line
    assert "256 texts/s on the probe's 128 texts" in line and "(defaults: 128 texts/s)" in line


def test_worker_labels_with_cast_weights_close_to_fp32(tmp_path):
    """A worker configured with a bf16 copy of the weights labels close to fp32; its fp32 labels
    are unchanged; the probe returns one trial per candidate with an agreement."""
    from orchestrator.teachers.teacher_model import create_random_teacher
    from orchestrator.teachers.teacher_pool import TeacherWorker

    words = "a good bad movie plot film acting thin worse fine odd one the was and".split()
    path = create_random_teacher(tmp_path / "t", words, num_labels=3, seed=1)
    w = TeacherWorker(str(path), PoolConfig(cpus_per_actor=1, precision="bf16"))
    texts = ["a good movie", "the plot was thin and the acting worse", "fine", "an odd one"]
    fp32, _ = w.label(texts, precision="fp32")
    cast = LabelSettings("sdpa", "cast", 64, 1)
    info = w.configure(cast.as_dict())
    assert info["settings"] == cast.as_dict()
    low, _ = w.label(texts)
    assert w._cast["bf16"].model.classifier.weight.dtype.is_floating_point
    assert str(w._cast["bf16"].model.classifier.weight.dtype) == "torch.bfloat16"
    assert str(w.teacher.model.classifier.weight.dtype) == "torch.float32"
    assert not np.array_equal(low, fp32) and np.abs(low - fp32).max() < 0.05
    again, _ = w.label(texts, precision="fp32")
    assert np.array_equal(again, fp32)
    trials = w.probe([DEFAULT.as_dict(), cast.as_dict()], n=16, rounds=1)
    assert [t["settings"] for t in trials] == [DEFAULT.as_dict(), cast.as_dict()]
    assert all(len(t["seconds"]) == 1 and 0.0 <= t["agreement"] <= 1.0 and t["clock"] == "cpu"
               for t in trials)
    assert w.settings == cast  # the probe leaves the worker's settings as they were


def test_pool_probes_once_prints_its_choice_and_configures_the_actors(tmp_path, capsys,
                                                                     ray_local):
    """A bf16 pool on a CPU probes at start, prints the choice, keeps the record under its probe
    root and gives every actor the chosen settings; a second pool on the same machine and
    teacher reads the record instead of probing; pool.probe=false and fp32 pools do not probe."""
    from orchestrator.teachers import teacher_pool
    from orchestrator.teachers.teacher_model import create_random_teacher
    from orchestrator.teachers.teacher_pool import TeacherPool

    words = "a good bad movie plot film acting thin worse fine odd one the was and".split()
    path = create_random_teacher(tmp_path / "t", words, num_labels=2, seed=1)
    root = tmp_path / "work"
    base = dict(num_actors=1, cpus_per_actor=1, torch_threads=1, token_budget=256,
                precision="bf16")
    teacher_pool._PROBED.clear()
    with TeacherPool(path, PoolConfig(**base), probe_root=root) as pool:
        record = pool.labeling
        chosen = record["choice"]
        assert pool.info["settings"] == chosen
        # threads and budget fixed by the config: only the kernel stage ran (4 candidates)
        assert [t["stage"] for t in record["trials"]] == ["kernel"] * 4
        assert chosen["token_budget"] == 256 and chosen["threads"] == 1
        out = pool.label_texts(["a good movie", "a bad plot"], progress=False)
        assert out.logits.shape == (2, 2)
    assert "teacher pool: labeling in bf16 on" in capsys.readouterr().out
    assert len(list((root / "labeling_probe").glob("*.json"))) == 1

    teacher_pool._PROBED.clear()  # a new process: only the file remains
    with TeacherPool(path, PoolConfig(**base), probe_root=root) as again:
        assert again.labeling["choice"] == chosen
        assert again.info["settings"] == chosen
    assert "; probed before" in capsys.readouterr().out

    for cfg in (PoolConfig(**dict(base, probe=False)), PoolConfig(**dict(base,
                                                                         precision="fp32"))):
        with TeacherPool(path, cfg, probe_root=root) as plain:
            assert plain.labeling is None and plain.info["settings"] is None
