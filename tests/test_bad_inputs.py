"""The bad-input matrix (docs/user-path.md): each input a run could misread, leak or silently
reuse gets one case here, asserting the message (file, line, what is wrong, what to do) and, where
the check sits in a run's preflight, that the run stopped before writing to the work root."""
from __future__ import annotations

import json

import pytest

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


@pytest.fixture()
def data_run(tmp_path, monkeypatch):
    """A working dir, and a failure if a teacher is fine-tuned or Ray is started."""
    import ray

    import orchestrator.runtime.ray_runtime
    import orchestrator.search.search
    import orchestrator.stages.teacher

    def forbidden(what):
        def f(*a, **k):
            raise AssertionError(f"{what} was called before the bad input was reported")
        return f

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DISTILLRAY_WORK_ROOT", raising=False)
    monkeypatch.setattr(orchestrator.stages.teacher, "finetune_teacher",
                        forbidden("finetune_teacher"))
    monkeypatch.setattr(orchestrator.search.search, "init_ray", forbidden("init_ray"))
    monkeypatch.setattr(orchestrator.runtime.ray_runtime, "init_ray", forbidden("init_ray"))
    monkeypatch.setattr(ray, "init", forbidden("ray.init"))
    yield tmp_path
    assert not ray.is_initialized()


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


def test_duplicate_header_names_are_refused(data_run, capsys):
    (data_run / "d.csv").write_text("text,label,text\ngood film,pos,x\nbad film,neg,y\n")
    with pytest.raises(DataError, match=r"d.csv, line 1, column 3: the header names 'text' "
                                        r"twice \(columns 1 and 3\); rename one"):
        list(read_records(data_run / "d.csv"))
    err = _refused(capsys, data_run, _own_data("d.csv"))
    assert "d.csv, line 1, column 3: the header names 'text' twice" in err
    (data_run / "d.tsv").write_text("label\ttext\ttext\npos\ta\tb\n")
    with pytest.raises(DataError, match=r"d.tsv, line 1, column 3: the header names 'text'"):
        list(read_records(data_run / "d.tsv"))
    (data_run / "d.jsonl").write_text('{"text": "a", "label": 1}\n'
                                      '{"text": "a", "label": 0, "text": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 2: the object has key 'text' twice"):
        list(read_records(data_run / "d.jsonl"))


def test_whole_numbers_written_as_floats_are_classes(data_run):
    rows = [("good", "1.0"), ("bad", "0.0"), ("fine", "1.0"), ("awful", "0")]
    (data_run / "t.csv").write_text("text,label\n" + "".join(f"{a},{b}\n" for a, b in rows))
    (data_run / "t.jsonl").write_text("".join(json.dumps({"text": a, "label": float(b)}) + "\n"
                                              for a, b in rows))
    for name in ("t.csv", "t.jsonl"):
        said, spec = _inferred(data_run, _own_data(name))
        assert not spec.is_regression and spec.label_names == ("0", "1"), name
        assert "task reviews: classification, 2 classes in order: 0, 1" in said, said
        assert f"inferred from the labels of {name}" in said
        _, cfg, _ = resolve_run("smoke", _own_data(name), extra={"data.task": "reviews"})
        data = load_task_data(cfg.data, spec)
        assert [e.label for e in data.train] == [1, 0, 1, 0], name


def test_regression_and_given_classes_are_printed(data_run):
    (data_run / "s.csv").write_text("text,label\na,3.8\nb,1.0\nc,4.25\n")
    said, spec = _inferred(data_run, _own_data("s.csv"))
    assert spec.is_regression
    assert "task reviews: regression (one score per row)" in said, said
    (data_run / "g.csv").write_text("text,label\na,high\nb,low\n")
    said, spec = _inferred(data_run, _own_data("g.csv"))
    assert "classification, 2 classes in order: high, low (inferred from the labels" in said
    said, spec = _inferred(data_run, _own_data("g.csv", None, "data.label_names=[low,high]"))
    assert spec.label_names == ("low", "high")
    assert "task reviews: classification, 2 classes in order: low, high\n" in said + "\n", said


def test_one_non_finite_score_is_refused(data_run, capsys):
    scores = [f"{i / 4:.2f}" for i in range(20)]
    rows = "".join(f"text {i},{s}\n" for i, s in enumerate(scores))
    (data_run / "r.csv").write_text("text,label\n" + rows + "more,nan\n")
    err = _refused(capsys, data_run, _own_data("r.csv"))
    assert "r.csv, line 22, column 'label': label 'nan' is not a finite number" in err, err
    (data_run / "r.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": i / 4})
                                              + "\n" for i in range(5))
                                      + '{"text": "x", "label": Infinity}\n')
    with pytest.raises(PreflightError, match=r"r.jsonl, line 6, column 'label': label inf is "
                                             r"not a finite number"):
        _inferred(data_run, _own_data("r.jsonl"))


def test_json_booleans_mixed_with_numbers_are_refused(data_run, capsys):
    rows = [("yes", True), ("no", False), ("maybe", 1)]
    (data_run / "b.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                                              for t, y in rows))
    err = _refused(capsys, data_run, _own_data("b.jsonl"))
    assert ("b.jsonl, line 3, column 'label': label 1 is a number, but line 1 has a boolean "
            "(true)") in err, err
    assert "data.label_names" in err


def test_unparseable_label_names_its_line(data_run, capsys):
    (data_run / "u.csv").write_text("text,label\na,0\nb,1\nc,\u00b2\n")
    err = _refused(capsys, data_run, _own_data("u.csv"))
    assert "u.csv, line 4, column 'label': label '\u00b2' is a name, but line 2 has a number" \
        in err, err
    task = custom_task("t", is_pair=False, label_names=["0", "1"])
    with pytest.raises(DataError, match=r"u.csv, line 4, column 'label': unknown label '\u00b2'"):
        load_custom(data_run / "u.csv", ["text"], "label", task)


def test_integer_classes_match_by_value_not_position(data_run):
    (data_run / "tr.csv").write_text("text,label\na,2\nb,10\n")
    (data_run / "dv.csv").write_text("text,label\nc,10\nd,1\n")
    _, cfg, _ = resolve_run("smoke", _own_data("tr.csv", "dv.csv"), extra={"data.task": "r"})
    spec = task_from_config(cfg.data)
    assert spec.label_names == ("2", "10")
    with pytest.raises(DataError, match=r"dv.csv, line 3, column 'label': unknown label '1'"):
        load_task_data(cfg.data, spec)


def test_nul_bytes_are_refused(data_run, capsys):
    (data_run / "n.csv").write_text("text,label\ngood,pos\nba\x00d,neg\n")
    err = _refused(capsys, data_run, _own_data("n.csv"))
    assert "n.csv, line 3, column 3: a NUL byte" in err, err
    assert "UTF-8" in err
    (data_run / "n.jsonl").write_text('{"text": "ok", "label": 1}\n{"text": "b\\u0000d", '
                                      '"label": 0}\n')
    task = custom_task("t", is_pair=False, label_names=["0", "1"])
    with pytest.raises(DataError, match=r"n.jsonl, line 2, column 'text': a NUL character"):
        load_custom(data_run / "n.jsonl", ["text"], "label", task)


def test_invalid_utf8_names_the_line(data_run, capsys):
    body = "".join(f"row {i},{'pos' if i % 2 else 'neg'}\n" for i in range(3000))
    (data_run / "x.csv").write_bytes(("text,label\n" + body).encode() + b"caf\xe9,pos\n")
    err = _refused(capsys, data_run, _own_data("x.csv"))
    assert "x.csv, line 3002, column 4: not valid UTF-8" in err, err
    assert "byte 0xe9" in err and "re-save the file as UTF-8" in err
    (data_run / "x.jsonl").write_bytes(b'{"text": "ok", "label": 1}\n{"text": "\xff", '
                                       b'"label": 0}\n')
    with pytest.raises(DataError, match=r"x.jsonl, line 2, column 11: not valid UTF-8"):
        list(read_records(data_run / "x.jsonl"))
    (data_run / "v.txt").write_bytes(b"".join(b"w%d 0.5 0.25\n" % i for i in range(5000))
                                     + b"caf\xc3 0.5 0.25\n")
    with pytest.raises(DataError, match=r"v.txt, line 5001, column 4: not valid UTF-8"):
        check_vector_file(data_run / "v.txt")


def _vocab():
    return Vocab.build(["the cat dog"])


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e40"])
def test_non_finite_or_overflowing_vectors_are_refused(data_run, capsys, value):
    (data_run / "vec.txt").write_text(f"the 0.1 0.2 0.3\ncat 0.1 {value} 0.3\ndog 0 0 0\n")
    what = "beyond float32" if value == "1e40" else "not a finite number"
    pattern = rf"vec.txt, line 2, column 9: value 2 of 'cat' \({value}\) is {what}"
    with pytest.raises(DataError, match=pattern):
        check_vector_file(data_run / "vec.txt")
    with pytest.raises(DataError, match=pattern):
        load_word_vectors(data_run / "vec.txt", _vocab())
    err = _refused(capsys, data_run, ["student.embeddings=vec.txt"])
    assert f"vec.txt, line 2, column 9: value 2 of 'cat' ({value}) is {what}" in err, err
    assert "fix or delete that line" in err


def test_vector_preflight_reads_the_whole_file(data_run, capsys):
    # over 64 MiB, the bad line after the first 2,000: long words keep the line count small
    filler = "w" * (32 << 10)
    lines = [f"{filler}{i} 0.5 0.25\n" for i in range(2100)]
    lines.insert(2050, "cat 0.5 nan\n")
    (data_run / "big.txt").write_text("".join(lines))
    assert (data_run / "big.txt").stat().st_size > 64 << 20
    with pytest.raises(DataError, match=r"big.txt, line 2051, column 9: value 2 of 'cat' \(nan\) "
                                        r"is not a finite number"):
        check_vector_file(data_run / "big.txt")
