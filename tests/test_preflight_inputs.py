"""Every bad input is reported before any work: `distillray tune` stops with one message naming
the file, line or key, having fine-tuned no teacher and started no Ray."""
from __future__ import annotations

import json


from orchestrator import cli


def _tune(capsys, *sets, preset="smoke"):
    args = ["tune", "--preset", preset, "--name", "pf"]
    for s in sets:
        args += ["--set", s]
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("distillray: error:") == 1
    return err


def _teacher_dir(path, config):
    path.mkdir()
    (path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_unknown_task(guarded, capsys):
    err = _tune(capsys, "data.source=auto", "data.task=imdb")
    assert "data.task: unknown task 'imdb'; known tasks: cola, sst2" in err


def test_missing_and_malformed_data_files(guarded, capsys):
    err = _tune(capsys, "data.source=custom", "data.train_file=nope.csv", "data.dev_file=nope.csv")
    assert "nope.csv does not exist; check data.train_file" in err
    (guarded / "train.csv").write_text("text,label\ngood,pos\nbad,neg,extra\n")
    err = _tune(capsys, "data.source=custom", "data.train_file=train.csv",
                "data.dev_file=train.csv")
    assert "train.csv, line 3: 3 fields, expected 2" in err
    (guarded / "train.csv").write_text("sentence,label\ngood,pos\nbad,neg\n")
    err = _tune(capsys, "data.source=custom", "data.train_file=train.csv",
                "data.dev_file=train.csv")
    assert "train.csv, line 2: no column 'text'" in err and "data.text_columns" in err
    (guarded / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    (guarded / "dev.csv").write_text("text,label\nfine,meh\n")
    err = _tune(capsys, "data.source=custom", "data.train_file=train.csv", "data.dev_file=dev.csv")
    assert "dev.csv, line 2, column 'label': unknown label 'meh'" in err


def test_teacher_missing_unreadable_or_with_another_head(guarded, capsys):
    err = _tune(capsys, f"teacher.model={guarded / 'no-teacher'}")
    assert f"teacher.model={guarded / 'no-teacher'}: no such directory" in err
    bad = _teacher_dir(guarded / "bad", "{not json")
    err = _tune(capsys, f"teacher.model={bad}")
    assert f"{bad / 'config.json'}: not readable JSON" in err
    three = _teacher_dir(guarded / "three", {
        "model_type": "bert", "architectures": ["BertForSequenceClassification"],
        "id2label": {"0": "a", "1": "b", "2": "c"}})
    err = _tune(capsys, f"teacher.model={three}")
    assert "(key id2label) has a classification head of 3 output(s) but task sst2 needs 2" in err


def test_malformed_embeddings(guarded, capsys):
    (guarded / "vec.txt").write_text("the 0.1 0.2 0.3\ncat 0.1 0.2\ndog 0.3 0.2 0.1\n")
    err = _tune(capsys, "student.embeddings=vec.txt")
    assert "vec.txt, line 2: 2 values after the word, expected 3" in err
    err = _tune(capsys, "student.embeddings=absent.txt")
    assert "student.embeddings: word vector file absent.txt does not exist" in err


def test_teacher_embeddings_need_a_real_base_model_with_a_tokenizer(guarded, capsys):
    err = _tune(capsys, "student.embeddings=teacher")  # the smoke preset's random:tiny teacher
    assert "student.embeddings=teacher reads the input embeddings" in err
    assert "teacher.model=random:tiny is a random BERT built afresh" in err
    base = _teacher_dir(guarded / "base", {"model_type": "bert"})
    err = _tune(capsys, "student.embeddings=teacher", f"teacher.model={base}")
    assert f"no tokenizer files in {base}" in err


def test_nltk_data_missing_when_augmenting(guarded, capsys, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [])
    (guarded / "empty").mkdir()
    err = _tune(capsys, "augment.enabled=true", f"augment.nltk_data={guarded / 'empty'}")
    assert "augment.enabled=true" in err and "averaged_perceptron_tagger" in err
    assert "nltk.download(" in err


def test_bad_search_space(guarded, capsys):
    (guarded / "space.yaml").write_text(
        "name: s\nconfig: {data: {source: generated}}\nspace:\n  train.nope: {type: uniform, "
        "low: 0.1, high: 0.2}\n")
    err = _tune(capsys, preset=str(guarded / "space.yaml"))
    assert "space.yaml: space.train.nope: not a config key" in err


def test_work_root_and_tracking_store_not_writable(guarded, capsys):
    (guarded / "afile").write_text("")
    rc = cli.main(["tune", "--preset", "smoke", "--work-root", str(guarded / "afile" / "w")])
    err = capsys.readouterr().err
    assert rc == 2 and f"work_root {guarded / 'afile' / 'w'} is not writable" in err
    rc = cli.main(["tune", "--preset", "smoke",
                   "--tracking-uri", f"sqlite:///{guarded / 'nodir' / 'mlflow.db'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "not writable (no such directory)" in err and "--tracking-uri" in err


def test_stage_commands_check_first(guarded, capsys):
    rc = cli.main(["finetune-teacher", "--preset", "smoke", "--set", "data.source=auto",
                   "--task", "imdb"])
    assert rc == 2 and "unknown task 'imdb'" in capsys.readouterr().err
    rc = cli.main(["label", "--preset", "smoke", "--teacher", str(guarded / "none")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
