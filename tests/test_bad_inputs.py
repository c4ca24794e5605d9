"""The bad-input matrix (docs/user-path.md): each input a run could misread, leak or silently
reuse gets one case here, asserting the message (file, line, what is wrong, what to do) and, where
the check sits in a run's preflight, that the run stopped before writing to the work root."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from _support import make_student
from orchestrator import cli
from orchestrator.app.run import resolve_run
from orchestrator.stages.preflight import PreflightError, check_inputs
from tasks.data import DataError
from tasks.embeddings import check_vector_file, load_word_vectors
from tasks.loaders import load_custom, load_task_data, read_records, task_from_config
from tasks.registry import custom_task
from tasks.vocab import Vocab

# ---------------------------------------------------------------------------------------------
# data readers and vectors
#
# The user's own files (tasks/loaders.py) and word vectors (tasks/embeddings.py): a file that
# cannot be read as meant is refused with file, line and column, never read some other way. Run
# through `distillray tune`, the refusal comes from the preflight: no teacher, no Ray, and the
# work root never written.


def _own_data(train, dev=None, *extra, text_columns="[text]"):
    """``--set`` values of the README's own-data command."""
    return ["data.source=custom", f"data.train_file={train}", f"data.dev_file={dev or train}",
            f"data.text_columns={text_columns}", "data.label_column=label", *extra]


def _refused(capsys, root, sets):
    """Run `distillray tune` on ``sets``; it must stop with one error, the work root unwritten
    (and no tracking store created). Returns the error text."""
    args = ["tune", "--preset", "smoke", "--name", "bad", "--work-root", str(root / "wr"),
            "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}"]
    for s in sets:
        args += ["--set", s]
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("distillray: error:") == 1, err
    assert not (root / "wr").exists(), sorted(p.name for p in (root / "wr").rglob("*"))
    assert not (root / "mlflow.db").exists()
    return err


def _inferred(root, sets) -> tuple[str, object]:
    """What the preflight prints about the task (data checks only), and the spec it uses."""
    _, cfg, _ = resolve_run("smoke", sets, extra={"data.task": "reviews",
                                                  "work_root": str(root / "wr")})
    lines: list[str] = []
    check_inputs(cfg, teacher=False, storage=False, log=lines.append)
    assert not (root / "wr").exists()
    return "\n".join(lines), task_from_config(cfg.data)


def test_duplicate_header_names_are_refused(guarded, capsys):
    (guarded / "d.csv").write_text("text,label,text\ngood film,pos,x\nbad film,neg,y\n")
    with pytest.raises(DataError, match=r"d.csv, line 1, column 3: the header names 'text' "
                                        r"twice \(columns 1 and 3\); rename one"):
        list(read_records(guarded / "d.csv"))
    err = _refused(capsys, guarded, _own_data("d.csv"))
    assert "d.csv, line 1, column 3: the header names 'text' twice" in err
    (guarded / "d.tsv").write_text("label\ttext\ttext\npos\ta\tb\n")
    with pytest.raises(DataError, match=r"d.tsv, line 1, column 3: the header names 'text'"):
        list(read_records(guarded / "d.tsv"))
    (guarded / "d.jsonl").write_text('{"text": "a", "label": 1}\n'
                                     '{"text": "a", "label": 0, "text": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 2: the object has key 'text' twice"):
        list(read_records(guarded / "d.jsonl"))


def test_whole_numbers_written_as_floats_are_classes(guarded):
    rows = [("good", "1.0"), ("bad", "0.0"), ("fine", "1.0"), ("awful", "0")]
    (guarded / "t.csv").write_text("text,label\n" + "".join(f"{a},{b}\n" for a, b in rows))
    (guarded / "t.jsonl").write_text("".join(json.dumps({"text": a, "label": float(b)}) + "\n"
                                             for a, b in rows))
    for name in ("t.csv", "t.jsonl"):
        said, spec = _inferred(guarded, _own_data(name))
        assert not spec.is_regression and spec.label_names == ("0", "1"), name
        assert "task reviews: classification, 2 classes in order: 0, 1" in said, said
        assert f"inferred from the labels of {name}" in said
        _, cfg, _ = resolve_run("smoke", _own_data(name), extra={"data.task": "reviews"})
        data = load_task_data(cfg.data, spec)
        assert [e.label for e in data.train] == [1, 0, 1, 0], name


def test_regression_and_given_classes_are_printed(guarded):
    (guarded / "s.csv").write_text("text,label\na,3.8\nb,1.0\nc,4.25\n")
    said, spec = _inferred(guarded, _own_data("s.csv"))
    assert spec.is_regression
    assert "task reviews: regression (one score per row)" in said, said
    (guarded / "g.csv").write_text("text,label\na,high\nb,low\n")
    said, spec = _inferred(guarded, _own_data("g.csv"))
    assert "classification, 2 classes in order: high, low (inferred from the labels" in said
    said, spec = _inferred(guarded, _own_data("g.csv", None, "data.label_names=[low,high]"))
    assert spec.label_names == ("low", "high")
    assert "task reviews: classification, 2 classes in order: low, high\n" in said + "\n", said


def test_one_non_finite_score_is_refused(guarded, capsys):
    scores = [f"{i / 4:.2f}" for i in range(20)]
    rows = "".join(f"text {i},{s}\n" for i, s in enumerate(scores))
    (guarded / "r.csv").write_text("text,label\n" + rows + "more,nan\n")
    err = _refused(capsys, guarded, _own_data("r.csv"))
    assert "r.csv, line 22, column 'label': label 'nan' is not a finite number" in err, err
    (guarded / "r.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": i / 4})
                                             + "\n" for i in range(5))
                                      + '{"text": "x", "label": Infinity}\n')
    with pytest.raises(PreflightError, match=r"r.jsonl, line 6, column 'label': label inf is "
                                             r"not a finite number"):
        _inferred(guarded, _own_data("r.jsonl"))


def test_json_booleans_mixed_with_numbers_are_refused(guarded, capsys):
    rows = [("yes", True), ("no", False), ("maybe", 1)]
    (guarded / "b.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                                             for t, y in rows))
    err = _refused(capsys, guarded, _own_data("b.jsonl"))
    assert ("b.jsonl, line 3, column 'label': label 1 is a number, but line 1 has a boolean "
            "(true)") in err, err
    assert "data.label_names" in err


def test_unparseable_label_names_its_line(guarded, capsys):
    (guarded / "u.csv").write_text("text,label\na,0\nb,1\nc,\u00b2\n")
    err = _refused(capsys, guarded, _own_data("u.csv"))
    assert "u.csv, line 4, column 'label': label '\u00b2' is a name, but line 2 has a number" \
        in err, err
    task = custom_task("t", is_pair=False, label_names=["0", "1"])
    with pytest.raises(DataError, match=r"u.csv, line 4, column 'label': unknown label '\u00b2'"):
        load_custom(guarded / "u.csv", ["text"], "label", task)


def test_integer_classes_match_by_value_not_position(guarded):
    (guarded / "tr.csv").write_text("text,label\na,2\nb,10\n")
    (guarded / "dv.csv").write_text("text,label\nc,10\nd,1\n")
    _, cfg, _ = resolve_run("smoke", _own_data("tr.csv", "dv.csv"), extra={"data.task": "r"})
    spec = task_from_config(cfg.data)
    assert spec.label_names == ("2", "10")
    with pytest.raises(DataError, match=r"dv.csv, line 3, column 'label': unknown label '1'"):
        load_task_data(cfg.data, spec)


def test_nul_bytes_are_refused(guarded, capsys):
    (guarded / "n.csv").write_text("text,label\ngood,pos\nba\x00d,neg\n")
    err = _refused(capsys, guarded, _own_data("n.csv"))
    assert "n.csv, line 3, column 3: a NUL byte" in err, err
    assert "UTF-8" in err
    (guarded / "n.jsonl").write_text('{"text": "ok", "label": 1}\n{"text": "b\\u0000d", '
                                     '"label": 0}\n')
    task = custom_task("t", is_pair=False, label_names=["0", "1"])
    with pytest.raises(DataError, match=r"n.jsonl, line 2, column 'text': a NUL character"):
        load_custom(guarded / "n.jsonl", ["text"], "label", task)


def test_invalid_utf8_names_the_line(guarded, capsys):
    body = "".join(f"row {i},{'pos' if i % 2 else 'neg'}\n" for i in range(3000))
    (guarded / "x.csv").write_bytes(("text,label\n" + body).encode() + b"caf\xe9,pos\n")
    err = _refused(capsys, guarded, _own_data("x.csv"))
    assert "x.csv, line 3002, column 4: not valid UTF-8" in err, err
    assert "byte 0xe9" in err and "re-save the file as UTF-8" in err
    (guarded / "x.jsonl").write_bytes(b'{"text": "ok", "label": 1}\n{"text": "\xff", '
                                      b'"label": 0}\n')
    with pytest.raises(DataError, match=r"x.jsonl, line 2, column 11: not valid UTF-8"):
        list(read_records(guarded / "x.jsonl"))
    (guarded / "v.txt").write_bytes(b"".join(b"w%d 0.5 0.25\n" % i for i in range(5000))
                                    + b"caf\xc3 0.5 0.25\n")
    with pytest.raises(DataError, match=r"v.txt, line 5001, column 4: not valid UTF-8"):
        check_vector_file(guarded / "v.txt")


def _vocab():
    return Vocab.build(["the cat dog"])


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e40"])
def test_non_finite_or_overflowing_vectors_are_refused(guarded, capsys, value):
    (guarded / "vec.txt").write_text(f"the 0.1 0.2 0.3\ncat 0.1 {value} 0.3\ndog 0 0 0\n")
    what = "beyond float32" if value == "1e40" else "not a finite number"
    pattern = rf"vec.txt, line 2, column 9: value 2 of 'cat' \({value}\) is {what}"
    with pytest.raises(DataError, match=pattern):
        check_vector_file(guarded / "vec.txt")
    with pytest.raises(DataError, match=pattern):
        load_word_vectors(guarded / "vec.txt", _vocab())
    err = _refused(capsys, guarded, ["student.embeddings=vec.txt"])
    assert f"vec.txt, line 2, column 9: value 2 of 'cat' ({value}) is {what}" in err, err
    assert "fix or delete that line" in err


def test_vector_preflight_reads_the_whole_file(guarded, capsys):
    # over 64 MiB, the bad line after the first 2,000: long words keep the line count small
    filler = "w" * (32 << 10)
    lines = [f"{filler}{i} 0.5 0.25\n" for i in range(2100)]
    lines.insert(2050, "cat 0.5 nan\n")
    (guarded / "big.txt").write_text("".join(lines))
    assert (guarded / "big.txt").stat().st_size > 64 << 20
    with pytest.raises(DataError, match=r"big.txt, line 2051, column 9: value 2 of 'cat' \(nan\) "
                                        r"is not a finite number"):
        check_vector_file(guarded / "big.txt")


# ---------------------------------------------------------------------------------------------
# credentials, resume, export, growth

SECRET = "S3cr3tPw"
PG_URI = f"postgresql://mlflow:{SECRET}@db.internal:5432/mlflow"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")) if root.exists() else []


def test_redact_hides_uri_passwords_and_secret_query_values():
    from orchestrator.runtime.redact import has_secret, redact, redact_deep

    assert redact(PG_URI) == "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert redact(f"https://u:{SECRET}@h:5000/x?sslmode=require&token={SECRET}") == \
        "https://u:***@h:5000/x?sslmode=require&token=***"
    assert redact(f"cannot reach {PG_URI} (timeout)") == \
        "cannot reach postgresql://mlflow:***@db.internal:5432/mlflow (timeout)"
    # nothing secret: unchanged
    for uri in ("sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000",
                "postgresql+psycopg2://mlflow@db:5432/mlflow"):
        assert redact(uri) == uri and not has_secret(uri)
    assert has_secret(PG_URI)
    assert redact_deep({"a": [PG_URI, 3], "b": {"c": PG_URI}}) == \
        {"a": [redact(PG_URI), 3], "b": {"c": redact(PG_URI)}}


def test_tracking_uri_password_never_reaches_params_yaml_or_error_tags(tmp_path):
    """The resolved config (``tracking.uri`` with a password) as a search logs it: params, the
    ``search_space.yaml`` artifact, a failed run's error tag."""
    from mlflow.tracking import MlflowClient

    from orchestrator.config import ExperimentConfig, with_values
    from orchestrator.runtime import tracking

    cfg = with_values(ExperimentConfig(), {"tracking.uri": PG_URI})
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracking.get_experiment_id(client, "x", str(tmp_path / "art"))
    rid = tracking.start_run(client, exp, "search", {})
    tracking.log_params(client, rid, cfg.to_dict())
    tracking.log_dict_artifact(client, rid, {"config": cfg.to_dict()}, "search_space.yaml")
    tracking.end_run(client, rid, False, f"OperationalError: could not connect to {PG_URI}")
    run = client.get_run(rid)
    assert run.data.params["tracking.uri"] == "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert SECRET not in repr(run.data.params) and SECRET not in repr(run.data.tags)
    yaml_text = (tmp_path / "art").rglob("search_space.yaml").__next__().read_text()
    assert "postgresql://mlflow:***@db.internal" in yaml_text and SECRET not in yaml_text


def test_next_steps_never_print_a_password():
    from orchestrator.search.search import next_steps

    text = next_steps("s", PG_URI, "distillray", "1", True, "m/1")
    assert SECRET not in text
    assert "export MLFLOW_TRACKING_URI=" in text and "postgresql://mlflow:***@" in text
    assert "best student:  distillray best --search s\n" in text and "--tracking-uri" not in text


def test_unreachable_store_error_is_redacted():
    from orchestrator.runtime.tracking import TrackingError, check_reachable

    with pytest.raises(TrackingError) as e:
        check_reachable(f"http://u:{SECRET}@127.0.0.1:9/", timeout=2)
    assert "unreachable" in str(e.value) and SECRET not in str(e.value)
    assert "http://u:***@127.0.0.1:9/" in str(e.value)


def test_ui_gets_the_store_from_the_environment_not_argv(tmp_path, monkeypatch, capsys):
    """`distillray ui` hands MLflow the store in $MLFLOW_BACKEND_STORE_URI (argv shows in `ps`)
    and prints it redacted."""
    import mlflow.tracking

    from orchestrator import cli

    seen = {}

    def fake_execv(path, argv):
        seen["argv"] = list(argv)
        seen["env"] = os.environ.get("MLFLOW_BACKEND_STORE_URI")
        raise SystemExit(0)

    class NoStore:
        def __init__(self, uri):
            raise RuntimeError("no store here")

    monkeypatch.setattr(cli.os, "execv", fake_execv)
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", NoStore)
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    with pytest.raises(SystemExit):
        cli.main(["ui", "--tracking-uri", PG_URI])
    assert seen["env"] == PG_URI
    assert not any(SECRET in a for a in seen["argv"]), seen["argv"]
    assert seen["argv"][:4] == [sys.executable, "-m", "mlflow", "ui"]
    out = capsys.readouterr().out
    assert "postgresql://mlflow:***@db.internal" in out and SECRET not in out


def test_a_password_in_tracking_uri_flag_is_warned_about_and_redacted(tmp_path, capsys):
    from orchestrator import cli

    missing = tmp_path / "nowhere"
    assert cli.main(["gc", "--work-root", str(missing), "--tracking-uri", PG_URI]) == 2
    err = capsys.readouterr().err
    assert "warning: --tracking-uri postgresql://mlflow:***@db.internal" in err
    assert "$MLFLOW_TRACKING_URI" in err and SECRET not in err
    assert not missing.exists()


def test_docs_put_no_secret_on_a_command_line():
    """No PGPASSWORD=... or user:password@ URI in a documented command."""
    import re

    root = Path(__file__).resolve().parents[1]
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md")),
            *sorted((root / "scripts").glob("*.sh"))]
    bad = re.compile(r"PGPASSWORD=\S|MLFLOW_TRACKING_PASSWORD=\S|://[^\s/:@]+:[^\s/@*<]+@")
    hits = [f"{p.relative_to(root)}:{i}: {line.strip()}" for p in docs
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if bad.search(line)]
    assert not hits, "secrets on a command line:\n" + "\n".join(hits)


def _tiny_student(tmp_path: Path) -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")

    return make_student(tmp_path, "bilstm", ["sst2"], ["a good film", "a bad film"])


def test_export_failing_its_parity_check_leaves_nothing_runnable(tmp_path):
    from orchestrator.deploy.export import ExportError, export_student

    student = _tiny_student(tmp_path / "s")
    out = tmp_path / "exports" / "sst2"
    with pytest.raises(ExportError, match=r"does not reproduce the student.*nothing was written"):
        export_student(student, out, formats=["onnx"], tolerance=-1.0)  # every check fails
    assert not out.exists()
    assert _files(tmp_path / "exports") == []  # no temporary sibling either


def test_export_killed_midway_leaves_no_export_json(tmp_path, monkeypatch):
    """Killed after the model is written but before its checks: no folder names it."""
    import onnx.checker

    from orchestrator.deploy.export import export_student

    student = _tiny_student(tmp_path / "s")

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx.checker, "check_model", killed)
    with pytest.raises(KeyboardInterrupt):
        export_student(student, tmp_path / "exports" / "sst2", formats=["onnx"])
    assert _files(tmp_path / "exports") == []


def test_export_into_an_old_export_leaves_no_stale_file(tmp_path):
    from orchestrator.deploy.export import export_student

    student = _tiny_student(tmp_path / "s")
    out = tmp_path / "exports" / "sst2"
    export_student(student, out)  # TorchScript + ONNX
    (out / "notes-from-before.txt").write_text("stale")
    res = export_student(student, out, formats=["onnx"])
    assert res.files["onnx"] == out / "model.onnx" and res.files["onnx"].is_file()
    assert sorted(p.name for p in out.iterdir()) == [
        "export.json", "model.onnx", "predict.py", "student.json", "vocab.json"]
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["sst2"]


def test_export_refuses_a_folder_that_is_not_an_export(tmp_path):
    from orchestrator.deploy.export import export_student

    student = _tiny_student(tmp_path / "s")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match="non-empty directory that holds no export.json"):
        export_student(student, mine)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "s"]


def _aged(path: Path, hours: float = 48.0) -> Path:
    """Set ``path`` and everything under it to ``hours`` ago."""
    import time

    t = time.time() - hours * 3600
    for p in [*path.rglob("*"), path]:
        os.utime(p, (t, t), follow_symlinks=False)
    return path


def _work_root_with_leftovers(tmp_path: Path):
    """A work root and Ray temp folder with one entry of each kind, and a store naming some."""
    import json

    from mlflow.tracking import MlflowClient

    from orchestrator.runtime import tracking

    root, ray_tmp = tmp_path / "wr", tmp_path / "ray"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = tracking.get_experiment_id(client, "distillray", str(tmp_path / "art"))
    tracking.start_run(client, exp, "teacher", {"distillray.teacher_key": "t_run"})
    tracking.start_run(client, exp, "search", {tracking.TAG_KIND: "search",
                                              tracking.TAG_SEARCH: "known"})
    tracking.start_run(client, exp, "trial", {tracking.TAG_SEARCH: "known",
                                             "distillray.bundle": "b_kept"})
    for d in ["teachers/t_run", "teachers/t_bundle", "teachers/t_gone", "teachers/.partial/t_old",
              "bundles/b_kept", "bundles/b_gone", "bundles/.b_x.tmp-1234",
              "transfer/x_done", "transfer/x_half.parts", "soft_labels/ns1",
              "tune/known", "tune/known.scheduler", "tune/known-0a1b2c3d", "tune/forgotten",
              "tune/forgotten-4e5f6a7b",
              "mlartifacts/1", "teachers/t_fresh"]:
        (root / d).mkdir(parents=True)
        (root / d / "weights.bin").write_bytes(b"x" * 1000)
    (root / "tune/known.fingerprint.json").write_text("{}")
    (root / "tune/forgotten.fingerprint.json").write_text("{}")
    (root / "bundles/b_kept/meta.json").write_text(
        json.dumps({"teachers": {"sst2": {"key": "t_bundle", "path": "x"}}}))
    for d in ["session_2026-01-01_old", "session_2026-12-01_latest"]:
        (ray_tmp / d / "logs").mkdir(parents=True)
    (ray_tmp / "session_latest").symlink_to(ray_tmp / "session_2026-12-01_latest")
    _aged(root)
    _aged(ray_tmp)
    os.utime(root / "teachers/t_fresh")  # touched now: may be a running search's
    return root, ray_tmp, uri


def test_gc_lists_by_default_and_removes_only_with_yes(tmp_path, capsys):
    from orchestrator.cli import main

    root, ray_tmp, uri = _work_root_with_leftovers(tmp_path)
    before = _files(root)
    args = ["gc", "--work-root", str(root), "--tracking-uri", uri, "--ray-tmp", str(ray_tmp)]
    assert main(args) == 0
    out = capsys.readouterr().out
    listed = {line.split()[-1] for line in out.splitlines() if line.startswith("  ")}
    gone = {root / "teachers/t_gone", root / "teachers/.partial/t_old", root / "bundles/b_gone",
            root / "bundles/.b_x.tmp-1234", root / "transfer/x_half.parts",
            root / "tune/forgotten", root / "tune/forgotten-4e5f6a7b",
            root / "tune/forgotten.fingerprint.json", ray_tmp / "session_2026-01-01_old"}
    assert listed == {str(p) for p in gone}, out
    assert "unreferenced teacher" in out and "old Ray session" in out and "1000 B" in out
    assert "dry run, nothing removed" in out
    assert _files(root) == before  # a dry run removes nothing
    assert main(args + ["--yes"]) == 0
    assert "removed 9 entries" in capsys.readouterr().out
    assert not any(p.exists() for p in gone)
    for kept in ["teachers/t_run", "teachers/t_bundle", "teachers/t_fresh", "bundles/b_kept",
                 "transfer/x_done", "soft_labels/ns1", "tune/known", "tune/known.scheduler",
                 "tune/known-0a1b2c3d", "mlartifacts/1"]:
        assert (root / kept / "weights.bin").is_file(), kept
    assert (root / "tune/known.fingerprint.json").is_file()
    assert (ray_tmp / "session_2026-12-01_latest").is_dir()


def test_gc_without_the_tracking_store_lists_and_removes_nothing(tmp_path, capsys):
    from orchestrator.cli import main

    root, ray_tmp, _ = _work_root_with_leftovers(tmp_path)
    before = _files(root)
    missing = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    assert main(["gc", "--work-root", str(root), "--tracking-uri", missing, "--yes",
                 "--ray-tmp", str(ray_tmp)]) == 2
    err = capsys.readouterr().err
    assert "no tracking store at" in err and "--tracking-uri" in err
    assert _files(root) == before and not (tmp_path / "elsewhere").exists()


def test_atomic_dir_output_gets_the_umask_mode(tmp_path):
    """A shared work root: results must be readable by the group/others the umask allows."""
    import stat

    from orchestrator.runtime.keys import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "bundles" / "k") as d:
            (d / "meta.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "bundles" / "k").stat().st_mode) == 0o755


def _smoke(tmp_path: Path, *sets: str):
    """The smoke preset on a small CSV data set of its own (train.csv, dev.csv in tmp_path)."""
    from orchestrator.app.run import resolve_run

    for split, n in (("train", 40), ("dev", 12)):
        f = tmp_path / f"{split}.csv"
        if not f.exists():
            rows = [f"{'a fine good film' if i % 2 else 'a dull bad film'} {i},{i % 2}"
                    for i in range(n)]
            f.write_text("text,label\n" + "\n".join(rows) + "\n")
    extra = {"work_root": str(tmp_path / "wr"), "tracking.uri": f"sqlite:///{tmp_path / 'm.db'}",
             "search.name": "s1"}
    data = ["data.source=custom", f"data.train_file={tmp_path / 'train.csv'}",
            f"data.dev_file={tmp_path / 'dev.csv'}", "data.text_columns=[text]",
            "data.label_column=label"]
    return resolve_run("smoke", data + list(sets), None, extra)


def _no_ray(*a, **k):
    raise AssertionError("Ray started")


def _resume_stops(tmp_path, monkeypatch, *sets: str) -> str:
    """Start search s1 (its fingerprint saved, as a started search has it), then re-run its name
    with ``sets``: the message it stops with; asserts nothing was written meanwhile."""
    from orchestrator.search import fingerprint, search

    space, cfg, _ = _smoke(tmp_path)
    (tmp_path / "wr" / "tune").mkdir(parents=True, exist_ok=True)
    fingerprint.save(str(tmp_path / "wr" / "tune"), "s1",
                     fingerprint.search_fingerprint(cfg, space, search.load_data(cfg)))
    saved = _files(tmp_path / "wr")
    monkeypatch.setattr(search, "init_ray", _no_ray)
    after = _smoke(tmp_path, *sets)
    if not sets:  # a data file changed instead: flip the first training label
        f = tmp_path / "train.csv"
        f.write_text(f.read_text().replace(",0\n", ",1\n", 1))
    space2, cfg2, overrides2 = after
    with pytest.raises(fingerprint.SearchChangedError) as e:
        search.run_search(cfg2, space2, overrides2, log=lambda *_: None)
    assert _files(tmp_path / "wr") == saved  # stopped before any work: nothing written
    # --no-resume starts over (here: gets as far as starting Ray)
    with pytest.raises(AssertionError, match="Ray started"):
        search.run_search(cfg2, space2, overrides2, resume=False, log=lambda *_: None)
    return str(e.value)


def test_resume_with_a_changed_config_stops_naming_the_key(tmp_path, monkeypatch):
    msg = _resume_stops(tmp_path, monkeypatch, "train.lr=0.0123")
    assert "search 's1' exists" in msg and "1 difference(s)" in msg
    assert "config.train.lr: " in msg and "-> 0.0123" in msg
    assert "--no-resume" in msg and "--name s1-2" in msg


def test_resume_with_a_changed_data_file_stops_naming_it(tmp_path, monkeypatch):
    msg = _resume_stops(tmp_path, monkeypatch)
    assert "1 difference(s)" in msg and ".train: " in msg and "data." in msg, msg
    assert "--no-resume" in msg


def test_resume_with_the_same_config_and_data_goes_on(tmp_path, monkeypatch):
    from orchestrator.search import fingerprint, search

    space, cfg, overrides = _smoke(tmp_path)
    (tmp_path / "wr" / "tune").mkdir(parents=True)
    fingerprint.save(str(tmp_path / "wr" / "tune"), "s1",
                     fingerprint.search_fingerprint(cfg, space, search.load_data(cfg)))
    monkeypatch.setattr(search, "init_ray", _no_ray)
    space, cfg, overrides = _smoke(tmp_path)  # the same command again
    with pytest.raises(AssertionError, match="Ray started"):
        search.run_search(cfg, space, overrides, log=lambda *_: None)


def test_resume_checks_the_mlflow_parent_run_too(tmp_path):
    """The Tune state gone (or on another storage path), the parent run still says what ran."""
    from mlflow.tracking import MlflowClient

    from orchestrator.runtime import tracking
    from orchestrator.search import fingerprint, search

    space, cfg, _ = _smoke(tmp_path)
    data = search.load_data(cfg)
    fp = fingerprint.search_fingerprint(cfg, space, data)
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = tracking.get_experiment_id(client, "distillray", str(tmp_path / "art"))
    rid = tracking.start_run(client, exp, "s1", {tracking.TAG_KIND: "search",
                                                 tracking.TAG_SEARCH: "s1"})
    fingerprint.record(client, rid, fp)
    run = client.get_run(rid)
    assert run.data.tags[fingerprint.TAG] == fingerprint.digest(fp)
    assert fingerprint.from_parent_run(client, run, fp) is None  # unchanged: resumes
    space2, cfg2, _ = _smoke(tmp_path, "student.hidden_size=7")
    fp2 = fingerprint.search_fingerprint(cfg2, space2, data)
    with pytest.raises(fingerprint.SearchChangedError, match=r"config\.student\.hidden_size"):
        fingerprint.check_unchanged("s1", fingerprint.from_parent_run(client, run, fp2), fp2,
                                    "its MLflow parent run")
