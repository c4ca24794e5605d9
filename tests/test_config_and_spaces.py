"""Configs and declarative search spaces: validation names the key; sampling honours conditions."""
from __future__ import annotations

import textwrap

import optuna
import pytest

from orchestrator.config import ConfigError, apply_sample, build_config, load_space, parse_override
from search_spaces.loader import SearchSpaceError


def write(tmp_path, text: str):
    p = tmp_path / "space.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_build_config_overrides_and_unknown_keys():
    cfg = build_config({"train": {"lr": 0.01}}, {"student.hidden_size": 64})
    assert cfg.train.lr == 0.01 and cfg.student.hidden_size == 64
    with pytest.raises(ConfigError, match="unknown key train.lrr"):
        build_config({"train": {"lrr": 1}})
    with pytest.raises(ConfigError, match="unknown key student.hiden"):
        build_config({}, {"student.hiden": 3})
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        build_config({"train": {"epochs": "three"}})


@pytest.mark.parametrize("override,message", [
    ({"augment.p_mask": 1.5}, r"augment.p_mask=1.5 is outside \[0, 1\]"),
    ({"augment.p_mask": 0.7, "augment.p_pos": 0.5}, "exceeds 1"),
    ({"augment.n_iter": 0}, "n_iter=0 must be at least 1"),
    ({"train.loss": "hinge"}, "choose mse, kl, ce"),
    ({"train.alpha": 2}, "train.alpha=2.0 is outside"),
    ({"student.arch": "gru"}, "choose bilstm, bcn, transformer"),
    ({"train.mixture_tau": 0}, "must be > 0"),
    ({"train.evals_per_epoch": 0}, "train.evals_per_epoch=0 must be at least 1"),
    ({"train.soft_labels": "lazy"}, "choose precomputed or on_demand"),
    ({"tasks": ["sst2", "mrpc"], "teacher.multitask": False, "train.soft_labels": "on_demand"},
     "tasks sst2, mrpc each have their own teacher: set teacher.multitask=true"),
])
def test_validation_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config({}, override)


def test_task_listed_twice_is_rejected():
    with pytest.raises(ConfigError, match="sst2 more than once"):
        build_config({"tasks": ["sst2", "mrpc", "sst2"]})


def test_parse_override_reads_yaml_scalars():
    assert parse_override("train.lr=3e-4") == ("train.lr", 3e-4)
    assert parse_override("student.pooling=[max, mean]") == ("student.pooling", ["max", "mean"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")


@pytest.mark.parametrize("preset", ["smoke", "demo"])
def test_shipped_presets_load(preset):
    space = load_space(preset)
    assert space.params, "a preset must search something"
    cfg = apply_sample(space, space.defaults_sample())
    assert cfg.search.num_samples >= 1


@pytest.mark.parametrize("body,message", [
    ("space:\n  train.lrr: {type: uniform, low: 0.1, high: 0.2}\n", "space.train.lrr: not a config key"),
    ("space:\n  train.lr: {type: gaussian, low: 0.1, high: 0.2}\n", "type 'gaussian' is not one of"),
    ("space:\n  train.lr: {type: uniform, low: 0.3, high: 0.2}\n", "impossible range"),
    ("space:\n  train.lr: {type: loguniform, low: 0, high: 0.2}\n", "log range needs low > 0"),
    ("space:\n  student.hidden_size: {type: choice, values: []}\n", "non-empty 'values'"),
    ("space:\n  augment.p_mask: {type: uniform, low: 0.1, high: 1.4}\n", "augment.p_mask: value 1.4 is invalid"),
    ("space:\n  augment.p_mask: {type: uniform, low: 0.1, high: 0.6}\n"
     "  augment.p_pos: {type: uniform, low: 0.1, high: 0.6}\n", "p_mask \\+ augment.p_pos = 1.2 > 1"),
    ("space:\n  student.pooling: {type: choice, values: [[max]], when: {student.arch: bcn}}\n",
     "'when' names 'student.arch'"),
    ("config:\n  train: {lr: -1}\n", "train.lr > 0"),
    ("spaces: {}\n", "unknown top-level key 'spaces'"),
    ("space:\n  train.lr: {type: uniform, low: 0.1, high: 0.2, hi: 3}\n", "unknown field 'hi'"),
])
def test_invalid_spaces_name_file_and_key(tmp_path, body, message):
    p = write(tmp_path, body)
    with pytest.raises(SearchSpaceError, match=message) as e:
        load_space(str(p))
    assert str(p) in str(e.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(SearchSpaceError, match="presets: .*smoke"):
        load_space("no-such-preset")


def test_conditional_parameters_sampled_only_when_condition_holds(tmp_path):
    p = write(tmp_path, """
        space:
          student.arch: {type: choice, values: [bilstm, bcn]}
          student.pooling: {type: choice, values: [[max, mean], [max]], when: {student.arch: bcn}}
          train.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
          student.hidden_size: {type: int, low: 16, high: 64, step: 16}
    """)
    space = load_space(str(p))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"bilstm": 0, "bcn": 0}
    for _ in range(30):
        trial = study.ask()
        space.define_by_run()(trial)
        params = trial.params
        seen[params["student.arch"]] += 1
        assert ("student.pooling#" in params) == (params["student.arch"] == "bcn")
        assert 1e-4 <= params["train.lr"] <= 1e-2
        assert params["student.hidden_size"] in (16, 32, 48, 64)
        cfg = apply_sample(space, params)
        if params["student.arch"] == "bcn":
            assert cfg.student.pooling in (["max", "mean"], ["max"])
        study.tell(trial, 0.0)
    assert seen["bilstm"] and seen["bcn"]


def test_define_by_run_is_picklable_for_tune_checkpoints():
    import pickle

    space = load_space("smoke")
    fn = pickle.loads(pickle.dumps(space.define_by_run()))
    study = optuna.create_study()
    trial = study.ask()
    fn(trial)
    assert set(trial.params) == set(space.keys)


def test_centre_sample_and_pinned_space_run_exactly_that_trial(tmp_path):
    p = write(tmp_path, """
        space:
          student.arch: {type: choice, values: [bcn, bilstm]}
          student.pooling: {type: choice, values: [[max, mean], [max], [min]], when: {student.arch: bcn}}
          train.temperature: {type: choice, values: [2.0], when: {student.arch: bilstm}}
          train.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
          train.alpha: {type: uniform, low: 0.0, high: 0.5}
          student.hidden_size: {type: int, low: 16, high: 65}
    """)
    space = load_space(str(p))
    centre = space.centre_sample()
    # middle choice (the earlier of two), geometric / arithmetic midpoints, int rounded down;
    # an inactive conditional is left out
    assert centre == {"student.arch": "bcn", "student.pooling": ["max"],
                      "train.lr": pytest.approx(1e-3), "train.alpha": pytest.approx(0.25),
                      "student.hidden_size": 40}
    pinned = space.pinned(centre)
    assert [q.key for q in pinned.params] == list(centre)
    assert space.params[0].values == ["bcn", "bilstm"], "pinning must not touch the original"
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(3):  # every draw from the pinned space is the centre
        trial = study.ask()
        pinned.define_by_run()(trial)
        cfg = apply_sample(pinned, trial.params)
        assert (cfg.student.arch, cfg.student.pooling, cfg.student.hidden_size) == ("bcn", ["max"], 40)
        assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.alpha == pytest.approx(0.25)
        study.tell(trial, 0.0)
