"""MKD (Liu et al. 2019): task mixtures, the multi-task teacher, Transformer students seeded from
teacher layers, pre-flight errors, and a tiny multi-task search read back from MLflow.

One tiny random multi-task teacher is refined once for the module (generated data, the
``mkd_smoke`` preset's settings, in the search's work root) and reused by the search. Ray-using
tests share one module-scoped Ray session, shut down at the end.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.config import ConfigError, build_config
from orchestrator.stages.pipeline import TeacherRef
from orchestrator.stages.preflight import PreflightError, check_teacher_heads, preflight
from orchestrator.training.mixture import MixtureError, TaskSampler, mixture_weights

pytestmark = pytest.mark.timeout(600)

SMOKE_SETS = ["search.num_samples=2", "train.epochs=1"]  # + 1 stage-2 epoch
TASKS = ("sst2", "mrpc", "stsb")


# ---------------------------------------------------------------------------------------------
# mixtures (no Ray)


@pytest.mark.parametrize("kind,tau", [("proportional", 1.0), ("temperature", 0.5),
                                      ("uniform", 1.0)])
def test_sampler_frequencies_match_mixture_weights(kind, tau):
    sizes = {"a": 100, "b": 300, "c": 1600}
    probs = mixture_weights(sizes, kind, tau)
    expected = {"proportional": {t: n / 2000 for t, n in sizes.items()},
                "temperature": {t: n ** 0.5 / sum(m ** 0.5 for m in sizes.values())
                                for t, n in sizes.items()},
                "uniform": {t: 1 / 3 for t in sizes}}[kind]
    assert probs == pytest.approx(expected)
    draws = TaskSampler(probs, seed=3).draw(40_000)
    for t, p in probs.items():
        assert draws.count(t) / len(draws) == pytest.approx(p, abs=0.01), t
    # the same seed gives the same sequence (every data-parallel worker draws alike)
    assert TaskSampler(probs, seed=3).draw(50) == draws[:50]


def test_explicit_weights_are_normalized_and_sampled():
    probs = mixture_weights({"a": 10, "b": 10}, "weights", weights={"a": 3.0, "b": 1.0})
    assert probs == pytest.approx({"a": 0.75, "b": 0.25})
    draws = TaskSampler(probs, seed=0).draw(20_000)
    assert draws.count("a") / 20_000 == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="weights", weights={"a": -1.0, "b": 2.0}), "must be >= 0"),
    (dict(kind="weights", weights={"a": 0.0, "b": 0.0}), "all zero"),
    (dict(kind="temperature", tau=0.0), "tau=0.0 must be > 0"),
    (dict(kind="temperature", tau=-2.0), "must be > 0"),
    (dict(kind="weights", weights={"a": 1.0}), r"missing \['b'\]"),
    (dict(kind="weights", weights={"a": 1.0, "b": 1.0, "zz": 1.0}), r"unknown \['zz'\]"),
    (dict(kind="weights", weights=None), "needs train.mixture_weights"),
    (dict(kind="bogus"), "unknown mixture"),
])
def test_mixture_errors(kwargs, match):
    with pytest.raises(MixtureError, match=match):
        mixture_weights({"a": 10, "b": 20}, **kwargs)


def test_mixture_errors_surface_at_config_and_preflight_time():
    base = {"tasks": list(TASKS), "data": {"source": "generated"}}
    with pytest.raises(ConfigError, match="mixture_tau=0.0 must be > 0"):
        build_config(base, {"train.mixture_tau": 0.0})
    with pytest.raises(ConfigError, match="mixture_weights must be >= 0"):
        build_config(base, {"train.mixture": "weights",
                            "train.mixture_weights": {"sst2": -1, "mrpc": 1, "stsb": 1}})
    with pytest.raises(ConfigError, match="all zero"):
        build_config(base, {"train.mixture": "weights",
                            "train.mixture_weights": {"sst2": 0, "mrpc": 0, "stsb": 0}})
    with pytest.raises(ConfigError, match="more than once"):
        build_config({"tasks": ["sst2", "mrpc", "sst2"]})
    # needs the experiment's tasks: a weight for a task that is not in it, one task missing
    cfg = build_config(base, {"train.mixture": "weights",
                              "train.mixture_weights": {"sst2": 1, "mrpc": 1, "cola": 1}})
    data = _generated(cfg, 20, 10)
    with pytest.raises(PreflightError, match=r"missing \['stsb'\], unknown \['cola'\]"):
        preflight(cfg, None, data)


def test_preflight_checks_every_mixture_the_space_can_sample(tmp_path):
    from orchestrator.config import load_space

    f = tmp_path / "space.yaml"
    f.write_text(
        "config:\n  tasks: [sst2, mrpc]\n  data: {source: generated}\n"
        "space:\n  train.mixture: {type: choice, values: [proportional, weights]}\n"
        "  train.mixture_weights: {type: choice, values: [{sst2: 1, mrpc: 1}, {sst2: 1}],"
        " when: {train.mixture: weights}}\n")
    space = load_space(str(f))
    cfg = build_config(space.config)
    with pytest.raises(PreflightError, match=r"missing \['mrpc'\].*mixture_weights=\{'sst2': 1\}"):
        preflight(cfg, space, _generated(cfg, 20, 10))


# ---------------------------------------------------------------------------------------------
# the multi-task teacher (refined once; the search below reuses it)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The mkd_smoke preset resolved into a temp work root and MLflow store, its data, and its
    multi-task teacher refined there."""
    from orchestrator.app.run import resolve_run
    from orchestrator.stages.multitask_teacher import refine_multitask_teacher
    from orchestrator.stages.pipeline import load_data

    root = tmp_path_factory.mktemp("mkd")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    torch.set_num_threads(1)
    space, cfg, overrides = resolve_run("mkd_smoke", SMOKE_SETS, extra={
        "tracking.uri": uri, "work_root": str(root / ".distillray")})
    data = load_data(cfg)
    logs: list[str] = []
    res = refine_multitask_teacher(cfg.teacher, data, cfg.work_root, log=logs.append)
    return {"root": root, "uri": uri, "space": space, "cfg": cfg, "overrides": overrides,
            "data": data, "teacher": res, "logs": logs}


def test_multitask_teacher_has_every_head_and_is_reused(smoke):
    from orchestrator.stages.multitask_teacher import refine_multitask_teacher
    from orchestrator.teachers.teacher_model import load_teacher

    res, cfg, data = smoke["teacher"], smoke["cfg"], smoke["data"]
    assert not res.reused
    assert res.path == Path(cfg.work_root) / "teachers" / res.key
    files = {p.name for p in res.path.iterdir()}
    assert {"config.json", "heads.safetensors", "distillray_heads.json", "metrics.json",
            "teacher_config.json"} <= files
    assert not [p for p in res.path.parent.iterdir() if p.name.startswith(".")], \
        "no temp dir left behind"
    for t in TASKS:
        assert f"{t}_score" in res.metrics
    assert res.metrics["score"] == pytest.approx(np.mean([res.metrics[f"{t}_score"] for t in TASKS]))
    assert res.metrics["sst2_accuracy"] > 0.7, res.metrics  # the generated sentiment is learnable
    assert json.loads((res.path / "metrics.json").read_text()) == res.metrics

    teacher = load_teacher(res.path)
    assert teacher.multitask and teacher.heads == {"sst2": 2, "mrpc": 2, "stsb": 1}

    again = refine_multitask_teacher(cfg.teacher, data, cfg.work_root, log=lambda m: None)
    assert again.reused and again.path == res.path and again.metrics == res.metrics
    # a different task list is a different teacher (its key changes; not trained here)
    from orchestrator.stages.multitask_teacher import multitask_teacher_key
    assert multitask_teacher_key(cfg.teacher, {t: data[t] for t in ("sst2", "mrpc")}) != res.key


def test_teacher_pool_serves_every_head(smoke, ray_search):
    from orchestrator.config import PoolConfig
    from orchestrator.teachers.teacher_model import load_teacher
    from orchestrator.teachers.teacher_pool import TeacherPool

    path, data = smoke["teacher"].path, smoke["data"]
    teacher = load_teacher(path)
    # fp32: compared with direct fp32 model calls below
    with TeacherPool(path, PoolConfig(num_actors=1, cpus_per_actor=0.5, torch_threads=1,
                                      precision="fp32")) as pool:
        for t in TASKS:
            ex = data[t].dev["dev"][:24]
            a = [e.text_a for e in ex]
            b = [e.text_b for e in ex] if ex[0].text_b is not None else None
            res = pool.label_texts(a, b, head=t, max_length=32, progress=False)
            assert res.logits.shape == (24, teacher.heads[t])
            enc = teacher.tokenizer(a, b, truncation=True, max_length=32, padding=True,
                                    return_tensors="pt")
            direct = teacher.logits(enc["input_ids"], enc["attention_mask"],
                                    enc["token_type_ids"], head=t).numpy()
            np.testing.assert_allclose(res.logits, direct, atol=1e-4)
        with pytest.raises(Exception, match="no head for task 'cola'"):
            pool.label_texts(["a movie"], head="cola", progress=False)


# ---------------------------------------------------------------------------------------------
# Transformer student from teacher layers; errors before training


def _meta_for(teacher_path: Path, tokenizer) -> dict:
    return {"tasks": {t: {"num_outputs": n, "pair": t != "sst2"}
                      for t, n in (("sst2", 2), ("mrpc", 2), ("stsb", 1))},
            "encoding": "wordpiece", "vocab_size": len(tokenizer),
            "teachers": {t: {"path": str(teacher_path), "key": "k", "head": t, "max_length": 32}
                         for t in TASKS}}


def test_transformer_student_copies_the_chosen_teacher_layers(smoke):
    from orchestrator.teachers.teacher_model import load_teacher
    from orchestrator.training.train import build_for_training, load_student, save_student

    path = smoke["teacher"].path
    teacher = load_teacher(path)
    enc = teacher.model.encoder
    meta = _meta_for(path, teacher.tokenizer)
    cfg = build_config(smoke["cfg"].to_dict(), {
        "student.arch": "transformer", "student.tf_layers": 1, "student.init_from_teacher": "even"})
    model, meta2, chosen = build_for_training(cfg, meta, None)
    assert chosen == [1]  # "even" with 1 of 2 layers: the top one
    assert torch.equal(model.layers[0].query.weight,
                       enc.encoder.layer[1].attention.self.query.weight)
    assert torch.equal(model.layers[0].ffn_out.bias, enc.encoder.layer[1].output.dense.bias)
    assert not torch.equal(model.layers[0].query.weight,
                           enc.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(model.embeddings.word.weight, enc.embeddings.word_embeddings.weight)
    assert torch.equal(model.pooler.weight, enc.pooler.dense.weight)
    # the tiny teacher has 128 positions: the student takes its size, and a saved student
    # rebuilds with it (without the teacher)
    assert meta2["student_max_position"] == 128 and model.embeddings.position.num_embeddings == 128

    cfg_idx = build_config(cfg.to_dict(), {"student.tf_layers": 2,
                                           "student.init_from_teacher": "1,0"})
    model2, _, chosen2 = build_for_training(cfg_idx, meta, None)
    assert chosen2 == [1, 0]
    assert torch.equal(model2.layers[1].key.weight, enc.encoder.layer[0].attention.self.key.weight)

    out = smoke["root"] / "saved-student"
    out.mkdir()
    save_student(model, out, cfg, meta2, out)
    loaded, _ = load_student(out)
    assert torch.equal(loaded.layers[0].query.weight, model.layers[0].query.weight)


@pytest.mark.parametrize("sets,match", [
    ({"student.tf_hidden": 64, "student.tf_heads": 2}, "tf_hidden=64 but the teacher's hidden size is 32"),
    ({"student.tf_heads": 4}, "tf_heads=4 but the teacher's attention heads is 2"),
    ({"student.tf_ffn": 128}, "tf_ffn=128 but the teacher's feed-forward size is 64"),
    ({"student.tf_layers": 3}, "the student has 3 layers but the teacher only 2"),
    ({"student.tf_layers": 2, "student.init_from_teacher": "0,5"}, r"teacher layers \[5\] do not exist"),
    ({"student.max_length": 256}, "max_length=256 exceeds the teacher's 128 positions"),
])
def test_student_teacher_mismatch_is_an_error_before_training(smoke, sets, match):
    cfg = build_config(smoke["cfg"].to_dict(), {"student.arch": "transformer",
                                                "student.init_from_teacher": "first", **sets})
    refs = _refs(smoke)
    with pytest.raises(PreflightError, match=match):
        preflight(cfg, None, smoke["data"], refs)
    # the same student without init from the teacher is fine
    preflight(build_config(cfg.to_dict(), {"student.init_from_teacher": "none"}), None,
              smoke["data"], refs)


def test_preflight_names_the_sampled_values_that_cannot_train(smoke):
    """The mkd_smoke space samples transformer students that copy teacher layers: a student size
    that cannot fit fails on the sampled combination, before any trial."""
    cfg = build_config(smoke["cfg"].to_dict(), {"student.tf_ffn": 48})
    with pytest.raises(PreflightError, match="sampled student.arch=transformer.*"
                                             "init_from_teacher=first"):
        preflight(cfg, smoke["space"], smoke["data"], _refs(smoke))
    preflight(smoke["cfg"], smoke["space"], smoke["data"], _refs(smoke))  # the preset is fine


def test_a_task_without_a_teacher_head_is_an_error(smoke):
    refs = _refs(smoke)
    refs["cola"] = TeacherRef(str(smoke["teacher"].path), "k", "cola", 32)
    with pytest.raises(PreflightError, match="task cola: teacher .* has no head 'cola'"):
        check_teacher_heads(refs)
    with pytest.raises(PreflightError, match="stsb have no teacher"):
        preflight(smoke["cfg"], None, smoke["data"],
                  {t: r for t, r in _refs(smoke).items() if t != "stsb"})


# ---------------------------------------------------------------------------------------------
# a tiny multi-task search, end to end, read back from MLflow


def test_mkd_smoke_search_records_per_task_metrics_in_mlflow(smoke, ray_search):
    from mlflow.tracking import MlflowClient

    from orchestrator.runtime import tracking
    from orchestrator.search.search import run_search

    logs: list[str] = []
    out = run_search(smoke["cfg"], smoke["space"], smoke["overrides"], log=logs.append)
    assert any("reusing multi-task teacher" in m for m in logs), "the refined teacher is reused"
    assert len(out.table) == 2 and out.best

    client = MlflowClient(smoke["uri"])
    exp = client.get_experiment_by_name("distillray")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    by_kind = lambda k: [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == k]  # noqa: E731
    parent, children, teachers = by_kind("search"), by_kind("trial"), by_kind("teacher")
    assert len(parent) == 1 and parent[0].data.tags[tracking.TAG_SEARCH] == "mkd_smoke"
    assert len(teachers) == 1 and teachers[0].data.tags["distillray.multitask"] == "true"
    assert {f"dev_{t}_score" for t in TASKS} <= set(teachers[0].data.metrics)
    assert len(children) == 2
    for c in children:
        assert c.data.tags[tracking.TAG_PARENT] == parent[0].info.run_id
        m, p = c.data.metrics, c.data.params
        assert {f"{t}_score" for t in TASKS} <= set(m), sorted(m)
        assert {"sst2_accuracy", "mrpc_f1", "stsb_pearson", "dev_score"} <= set(m)
        assert {"train.mixture", "train.mixture_tau", "sampled.train.mixture", "tasks"} <= set(p)
        assert p["teacher.multitask"] == "True"
        # dev_score is the GLUE-style average of the task scores, at every epoch
        hist = {k: {x.step: x.value for x in client.get_metric_history(c.info.run_id, k)}
                for k in ["dev_score"] + [f"{t}_score" for t in TASKS]}
        for step, v in hist["dev_score"].items():
            assert v == pytest.approx(np.mean([hist[f"{t}_score"][step] for t in TASKS]))
    # stage 2 (train.finetune_epochs=1) is reported as a second epoch by a trial that ran through
    done = [c for c in children if c.data.metrics.get("epoch") == 2
            and c.info.status == "FINISHED"]
    assert done, [(c.data.metrics.get("epoch"), c.info.status) for c in children]
    stages = [x.value for x in client.get_metric_history(done[0].info.run_id, "stage")]
    assert stages == [1, 2]
    # the finished trial's last per-task dev metrics are also its final_ metrics
    final = done[0].data.metrics
    assert {f"final_{t}_score" for t in TASKS} | {"final_sst2_accuracy", "final_dev_score"} <= set(final)
    assert not any(k.startswith("final_") and k.endswith("_loss") for k in final)
    for t in TASKS:
        last = client.get_metric_history(done[0].info.run_id, f"{t}_score")[-1].value
        assert final[f"final_{t}_score"] == pytest.approx(last)
    scores = client.get_metric_history(done[0].info.run_id, "dev_score")
    files = {a.path for a in client.list_artifacts(done[0].info.run_id, "student")}
    if max(scores, key=lambda x: x.value).step == 2:  # the best checkpoint is stage 2's
        assert {f"student/model-{t}.safetensors" for t in TASKS} <= files, files
    else:
        assert "student/model.safetensors" in files, files


# ---------------------------------------------------------------------------------------------


def _generated(cfg, n_train: int, n_dev: int):
    from tasks.generated import generate_task_data
    from tasks.registry import get_task

    return {t: generate_task_data(get_task(t), n_train, n_dev, 0) for t in cfg.tasks}


def _refs(smoke) -> dict[str, TeacherRef]:
    res = smoke["teacher"]
    return {t: TeacherRef(str(res.path), res.key, t, 32) for t in TASKS}
