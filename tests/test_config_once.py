"""A run's config is built once, from the preset and the overrides, and never changed after:
every section is a frozen dataclass, a derived config (a report row, one task's teacher, a
trial) is a new object. ``resolve_run`` and ``resolve_report`` give the configs they gave before:
``tests/data/resolved_configs.json`` holds their ``to_dict()`` (and ``resolve_run``'s
overrides) for a few presets, overrides and asset situations, computed by the code that still
diffed a mutated config and resolved the report twice."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import orchestrator.app.run as run_module
from orchestrator.app.report import resolve_report
from orchestrator.app.run import resolve_run
from orchestrator.config import (ASSETS_ENV, ExperimentConfig, TeacherConfig, build_config,
                                 resolved_embeddings, use_local_assets, with_values)

PINNED = Path(__file__).parent / "data" / "resolved_configs.json"
ASSETS = "<assets>"  # the assets folder in the pinned dicts

RUN_CASES = {
    "smoke": ("smoke", [], False, {}),
    "demo-sets": ("demo", ["train.epochs=5", "search.num_samples=8"], True, {}),
    "demo-no-assets": ("demo", ["train.lr=3e-4"], False, {}),
    "tang-default-teacher": ("tang", ["augment.n_iter=3", "teacher.model=bert-base-uncased"],
                             True, {}),
    "mkd-extra": ("mkd", ["tasks=[sst2,mrpc]", "train.lr=3e-4"], True,
                  {"work_root": "/tmp/wr", "search.name": "x", "tracking.uri": "sqlite:///m.db"}),
    "mkd_smoke": ("mkd_smoke", ["train.mixture=uniform"], True, {}),
    "sst2-hub": ("sst2_fixed", ["data.source=hub", "augment.nltk_data=/n"], True, {}),
    "deprecated-half": ("smoke", ["pool.half_precision_on_gpu=false"], True, {}),
    "report-preset": ("report", [], True, {"data.task": "mrpc"}),
}
REPORT_CASES = {
    "smoke-small": ("report_smoke", "small", None, [], False, {}),
    "small-tasks": ("report", "small", ["sst2", "mrpc"], ["train.epochs=2"], True, {}),
    "full-per-task": ("report", "full", ["sst2"], ["teacher.per_task={rte: {epochs: 3}}"], True,
                      {}),
    "small-explicit-cap": ("report", "small", None, ["data.max_train_examples=100"], True,
                           {"work_root": "wr"}),
    "full-extra-loses-to-budget": ("report", "full", ["rte"], [], True,
                                   {"train.epochs": 4, "tracking.uri": "sqlite:///r.db"}),
}


def _fake_assets(root: Path) -> Path:
    """An assets folder with the parts ``use_local_assets`` looks for."""
    (root / "glue").mkdir(parents=True)
    (root / "models" / "minilm-l6-uncased").mkdir(parents=True)
    (root / "nltk_data").mkdir()
    (root / "embeddings").mkdir()
    (root / "embeddings" / "glove.6B.50d.glue.txt").write_text("the 0.1 0.2\n")
    return root


def _placeholder(obj, assets: Path):
    """``obj`` as JSON with the assets folder written as ``<assets>``."""
    return json.loads(json.dumps(obj).replace(str(assets), ASSETS))


def resolved(tmp_path: Path, monkeypatch) -> dict:
    """Every case's config dict (and ``resolve_run``'s overrides), assets as ``<assets>``."""
    assets = _fake_assets(tmp_path / "assets")
    out: dict = {"run": {}, "report": {}}
    for name, (preset, sets, with_assets, extra) in RUN_CASES.items():
        # no assets: none found either (this machine's own assets stay out of the picture)
        monkeypatch.setattr(run_module, "find_assets", lambda explicit=None: (
            Path(explicit) if explicit else None))
        _, cfg, overrides = resolve_run(preset, sets, str(assets) if with_assets else None,
                                        dict(extra))
        out["run"][name] = _placeholder({"config": cfg.to_dict(), "overrides": overrides},
                                        assets)
    for name, (preset, budget, tasks, sets, with_assets, extra) in REPORT_CASES.items():
        cfg = resolve_report(preset, budget, tasks, sets, str(assets) if with_assets else None,
                             dict(extra))
        out["report"][name] = _placeholder({"config": cfg.to_dict()}, assets)
    return out


def test_resolve_run_and_resolve_report_give_the_configs_they_gave_before(tmp_path, monkeypatch):
    got = resolved(tmp_path, monkeypatch)
    want = json.loads(PINNED.read_text())
    for kind in ("run", "report"):
        for name in want[kind]:
            assert got[kind][name] == want[kind][name], f"{kind} case {name}"
        assert set(got[kind]) == set(want[kind])


def test_overrides_keep_their_order(tmp_path, monkeypatch):
    """The overrides a trial rebuilds its config from: --set values, then the flags, then the
    asset values, in the order they were given."""
    got = resolved(tmp_path, monkeypatch)
    want = json.loads(PINNED.read_text())
    for name in want["run"]:
        assert list(got["run"][name]["overrides"]) == list(want["run"][name]["overrides"])


def test_a_built_config_cannot_be_changed():
    cfg = build_config({"tasks": ["sst2", "mrpc"]}, {"train.lr": 3e-4})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.work_root = "elsewhere"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tasks = ["rte"]
    for section in ("data", "teacher", "pool", "augment", "student", "train", "search",
                    "tracking"):
        part = getattr(cfg, section)
        name = dataclasses.fields(part)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, name, getattr(part, name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExperimentConfig().student = None


def test_derived_configs_are_new_objects():
    cfg = build_config({"teacher": {"per_task": {"rte": {"epochs": 10}}}})
    before = cfg.to_dict()
    rte = cfg.teacher.for_task("rte")
    assert (rte.epochs, rte.per_task) == (10.0, {}) and isinstance(rte, TeacherConfig)
    row = with_values(cfg, {"tasks": ["sst2"], "data.task": "sst2", "train.lr": 0.5,
                            "work_root": "/w"})
    assert (row.tasks, row.data.task, row.train.lr, row.work_root) == (["sst2"], "sst2", 0.5,
                                                                      "/w")
    assert row.student is cfg.student  # untouched sections are shared: they cannot change
    assert cfg.to_dict() == before
    with pytest.raises(Exception, match="unknown key train.lrr"):
        with_values(cfg, {"train.lrr": 1})


def test_local_assets_give_a_new_config(tmp_path):
    assets = _fake_assets(tmp_path / "assets")
    cfg = build_config({"student": {"embeddings": "glove"}})
    local = use_local_assets(cfg, assets)
    assert cfg.student.embeddings == "glove" and cfg.data.glue_dir is None
    assert local.student.embeddings == str(assets / "embeddings" / "glove.6B.50d.glue.txt")
    assert local.data.glue_dir == str(assets / "glue")
    assert local.teacher.model == str(assets / "models" / "minilm-l6-uncased")
    assert local.augment.nltk_data == str(assets / "nltk_data")


def test_a_sampled_glove_file_is_resolved_in_a_new_config(tmp_path, monkeypatch):
    """What ``prepare_bundle`` keys and builds with and the student records, while the trial's
    config (logged as sampled) keeps ``glove``."""
    assets = _fake_assets(tmp_path / "assets")
    monkeypatch.setenv(ASSETS_ENV, str(assets))
    cfg = build_config({"student": {"embeddings": "glove"}})
    resolved = resolved_embeddings(cfg)
    assert cfg.student.embeddings == "glove"
    assert resolved.student.embeddings == str(assets.resolve() / "embeddings" /
                                              "glove.6B.50d.glue.txt")
    assert resolved_embeddings(resolved) is resolved



@pytest.mark.parametrize("preset", ["tang", "smoke", "mkd"])
def test_a_trial_config_derived_from_the_runs_equals_one_rebuilt_from_the_preset(
        tmp_path, monkeypatch, preset):
    """A search's trial takes its config from the search's own (``trial_config``); it is the
    config the preset, the overrides and the sample would build from scratch."""
    from orchestrator.config import apply_sample, trial_config

    assets = _fake_assets(tmp_path / "assets")
    space, cfg, overrides = resolve_run(preset, ["train.seed=3"], str(assets))
    for sample in (space.defaults_sample(), space.centre_sample()):
        assert trial_config(cfg, space, sample).to_dict() == \
            apply_sample(space, sample, overrides).to_dict()
