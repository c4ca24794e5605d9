"""Export: tiny random-weight students -> TorchScript + ONNX + standalone predict.py; every format
reproduces the eager (packed-LSTM) student within 1e-4, on generated sentences always and on
real SST-2 / MRPC dev sentences when the shared assets are present."""
from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from _support import generated, make_student  # noqa: E402
from orchestrator.config import ExperimentConfig, StudentConfig  # noqa: E402
from orchestrator.deploy.export import export_student  # noqa: E402
from orchestrator.deploy.serving import StudentPredictor  # noqa: E402
from orchestrator.stages.pipeline import _spec_dict  # noqa: E402
from orchestrator.training.train import build_from_meta, save_student  # noqa: E402
from students.layers import set_export_mode  # noqa: E402
from tasks.registry import get_task  # noqa: E402
from tasks.text import tokenize  # noqa: E402
from tasks.vocab import Vocab  # noqa: E402

TOL = 1e-4
@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared machine: one thread is fastest and avoids spin contention."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def dev_texts(glue_dir: Path, folder: str, n: int) -> list[tuple[str, str | None]]:
    path = glue_dir / folder / "dev.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with path.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    head, rows = rows[0], rows[1:n + 1]
    if folder == "MRPC":
        a, b = head.index("#1 String"), head.index("#2 String")
        return [(r[a], r[b]) for r in rows]
    return [(r[head.index("sentence")], None) for r in rows]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory) -> Path:
    """A small BERT WordPiece tokenizer over the generated tasks' words (no downloads)."""
    from transformers import BertTokenizerFast

    from tasks.generated import CONTENT, CUE_GROUPS, FILLER
    words = sorted({*FILLER, *CONTENT, *(w for g in CUE_GROUPS for w in g)})
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz",
              *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"), ".", ",", "!", "'", "-", "##s",
              "##ing", "##ed"]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(dict.fromkeys(pieces))})
    d = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(str(d))
    return d


def load_predict_py(out: Path):
    spec = importlib.util.spec_from_file_location(f"exported_predict_{abs(hash(out))}", out / "predict.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_all(student: Path, out: Path, pairs: list[tuple[str, str | None]], task: str):
    """ONNX (onnxruntime), TorchScript and predict.py against the eager student."""
    eager = StudentPredictor(student)
    a = [x for x, _ in pairs]
    b = [y for _, y in pairs] if pairs[0][1] is not None else None
    ref = eager.logits(a, b, task)
    mod = load_predict_py(out)
    for runtime in ("onnx", "torchscript"):
        pred = mod.Predictor(out, runtime, threads=1)
        got = pred.logits(a, b, task)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=TOL, rtol=0, err_msg=runtime)
        # the raw graph on the eager path's own ids too (not only predict.py's tokenization)
        inputs = pred.encode(a, b)
        np.testing.assert_allclose(pred.run(inputs)[task], ref, atol=TOL, rtol=0)
    preds = mod.predict(a, b, task=task, model_dir=out)
    info = json.loads((out / "export.json").read_text())
    if info["tasks"][task]["regression"]:
        np.testing.assert_allclose([p["score"] for p in preds], ref[:, 0], atol=TOL)
    else:
        labels = info["tasks"][task]["labels"]
        assert [p["label"] for p in preds] == [labels[i] for i in ref.argmax(1)]
        assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-6 for p in preds)


CASES = [("bilstm", ["sst2"]), ("bilstm", ["mrpc"]), ("bcn", ["sst2"]), ("bcn", ["mrpc"]),
         ("bcn", ["sst2", "stsb"]), ("transformer", ["sst2"]), ("transformer", ["mrpc"])]


@pytest.mark.parametrize("arch,tasks", CASES, ids=[f"{a}-{'+'.join(t)}" for a, t in CASES])
def test_export_matches_torch_on_generated(tmp_path, arch, tasks, tiny_tokenizer):
    data = {t: generated(t, 16, seed=i) for i, t in enumerate(tasks)}
    words = [x for d in data.values() for p in d for x in p if x]
    student = make_student(tmp_path, arch, tasks, words, tiny_tokenizer)
    first = data[tasks[0]]
    checks = [a for a, _ in first][:6] + ["", "a film with unseen zzyzx words"]
    res = export_student(student, tmp_path / "out", check_texts=checks)
    assert set(res.files) == {"onnx", "torchscript", "predict", "export_json"}
    assert all(v <= TOL for v in res.max_abs_diff.values()), res.max_abs_diff
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert set(info["tasks"]) == set(tasks)
    assert info["max_length"] == (24 if arch == "transformer" else 20)
    sess = ort.InferenceSession(str(res.files["onnx"]))
    assert [i.name for i in sess.get_inputs()] == res.inputs
    assert [o.name for o in sess.get_outputs()] == [f"logits_{t}" for t in tasks]
    assert all(i.shape == ["batch", "seq"] for i in sess.get_inputs())
    for t in tasks:
        check_all(student, tmp_path / "out", data[t], t)


def test_unpacked_lstm_equals_packed(glue_dir_or_none):
    """The export path of the LSTM students gives the packed path's outputs (eval), on real
    dev sentences when present, including empty rows and a 2-layer BiLSTM."""
    texts = [a for a, _ in (glue_dir_or_none or generated("sst2", 64))]
    pair_b = texts[1:] + texts[:1]
    vocab = Vocab.build(texts)
    from students.bcn import BCNStudent
    from students.bilstm import BiLSTMStudent

    def ids(ts):
        rows = [vocab.encode(t, 40) for t in ts] + [[]]
        out = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    a, b = ids(texts), ids(pair_b)
    torch.manual_seed(0)
    for model, args in [(BiLSTMStudent(len(vocab), 16, 12, 2, 10, {"sst2": 2}), (a,)),
                        (BiLSTMStudent(len(vocab), 16, 12, 1, 10, {"mrpc": 2}, pair=True), (a, b)),
                        (BCNStudent(len(vocab), 16, 8, {"sst2": 2}), (a,)),
                        (BCNStudent(len(vocab), 16, 8, {"mrpc": 2}), (a, b))]:
        model.eval()
        with torch.no_grad():
            packed = model(*args)
            set_export_mode(model, True)
            unpacked = model(*args)
            set_export_mode(model, False)
        torch.testing.assert_close(unpacked, packed, atol=1e-5, rtol=0)
        assert not any(getattr(m, "export_mode", False) for m in model.modules())


@pytest.fixture
def glue_dir_or_none(request):
    from orchestrator.config import find_assets
    found = find_assets()
    path = found / "glue" / "SST-2" / "dev.tsv" if found else None
    return dev_texts(found / "glue", "SST-2", 200) if path and path.is_file() else None


def test_export_real_dev_sentences(tmp_path, glue_dir):
    """Real SST-2 and MRPC dev sentences; with the MiniLM tokenizer for the Transformer."""
    sst = dev_texts(glue_dir, "SST-2", 96)
    mrpc = dev_texts(glue_dir, "MRPC", 48)
    words = [x for p in sst + mrpc for x in p if x]
    tok_dir = glue_dir.parent / "models" / "minilm-l6-uncased"
    cases = [("bilstm", "sst2", sst), ("bcn", "mrpc", mrpc)]
    if (tok_dir / "tokenizer.json").is_file():
        cases.append(("transformer", "mrpc", mrpc))
    for arch, task, pairs in cases:
        d = tmp_path / arch
        student = make_student(d, arch, [task], words, tok_dir)
        res = export_student(student, d / "out", check_texts=[a for a, _ in pairs[:32]])
        assert all(v <= TOL for v in res.max_abs_diff.values()), res.max_abs_diff
        if arch == "transformer":
            assert res.info["tokenizer"]["kind"] == "bert-wordpiece", res.info["tokenizer"]
        check_all(student, d / "out", pairs, task)


def test_wordpiece_matches_hf_tokenizer(glue_dir):
    """predict.py's WordPiece == the teacher's tokenizer, incl. truncation of pairs."""
    from transformers import AutoTokenizer

    from orchestrator.deploy.predict_standalone import WordPieceEncoder
    tok_dir = glue_dir.parent / "models" / "minilm-l6-uncased"
    if not (tok_dir / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer at {tok_dir}")
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    pairs = dev_texts(glue_dir, "MRPC", 200) + [
        ("Naïve ÉLAN at the café — 东京! [MASK] it's \u00a0 fine\u200b.", "x" * 150),
        ("a [MASK]b c", "don't stop")]
    for max_length in (128, 16):
        mine = WordPieceEncoder(tok_dir / "tokenizer.json", max_length)
        for a, b in pairs:
            for bb in (None, b):
                ref = hf(a, bb, truncation=True, max_length=max_length)
                assert mine.encode(a, bb) == (ref["input_ids"], ref["token_type_ids"]), (a, bb)


def test_word_tokenizer_matches_tasks_text(glue_dir_or_none):
    from orchestrator.deploy.predict_standalone import word_tokenize
    texts = [a for a, _ in (glue_dir_or_none or generated("sst2", 50))]
    texts += ["Don't [MASK]-ing it's co-op 3.5 x[MASK]y", "", "NAÏVE café's"]
    for t in texts:
        assert word_tokenize(t, "[MASK]") == tokenize(t, "[MASK]")


def test_missing_artifacts_are_named(tmp_path, tiny_tokenizer):
    student = make_student(tmp_path, "bilstm", ["sst2"], ["a good film", "a bad film"])
    (student / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        export_student(student, tmp_path / "o1")
    (student / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors, vocab\.json"):
        export_student(student, tmp_path / "o2")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_student(tmp_path / "nowhere", tmp_path / "o3")
    with pytest.raises(ValueError, match="formats"):
        export_student(student, tmp_path / "o4", formats=("tflite",))


def test_cli_export_and_script(tmp_path):
    """``distillray export --student-dir`` and ``python predict.py`` in a clean process."""
    from orchestrator.cli import main

    student = make_student(tmp_path, "bilstm", ["sst2"], ["a good film", "a bad film"])
    assert main(["export", "--student-dir", str(student), "--out", str(tmp_path / "o"),
                 "--formats", "onnx"]) == 0
    assert (tmp_path / "o" / "model.onnx").is_file() and not (tmp_path / "o" / "model.ts").exists()
    with pytest.raises(SystemExit):  # neither --student-dir nor --search
        main(["export", "--out", str(tmp_path / "o2")])
    # the script imports nothing of distillray, torch or transformers
    code = ("import sys; sys.path.insert(0, %r); import predict; "
            "predict.main(['a good film', 'a bad film']); "
            "bad = {m.split('.')[0] for m in sys.modules} & "
            "{'orchestrator', 'tasks', 'students', 'torch', 'transformers', 'tokenizers'}; "
            "assert not bad, bad" % str(tmp_path / "o"))
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    ref = StudentPredictor(student).logits(["a good film", "a bad film"])
    labels = json.loads((tmp_path / "o" / "export.json").read_text())["tasks"]["sst2"]["labels"]
    assert [x["label"] for x in rows] == [labels[i] for i in ref.argmax(1)]


def test_cli_export_best_of_search(tmp_path, monkeypatch):
    """``distillray export --search NAME`` downloads the best trial's student from MLflow."""
    from mlflow.tracking import MlflowClient

    from orchestrator.cli import main
    from orchestrator.runtime import tracking

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = tracking.get_experiment_id(client, "distillray", str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={tracking.TAG_KIND: "search", tracking.TAG_SEARCH: "s1"})
    students = {}
    for i, score in enumerate((0.6, 0.8)):
        run = client.create_run(exp, tags={tracking.TAG_KIND: "trial", tracking.TAG_SEARCH: "s1",
                                           tracking.TAG_TRIAL: f"t{i}",
                                           tracking.TAG_PARENT: parent.info.run_id})
        client.log_metric(run.info.run_id, "best_dev_score", score)
        st = make_student(tmp_path / f"trial{i}", "bilstm", ["sst2"], ["a good film", "a bad film"],
                          seed=i)
        client.log_artifacts(run.info.run_id, str(st), "student")
        students[run.info.run_id] = st
    assert main(["export", "--search", "s1", "--tracking-uri", uri, "--out", str(tmp_path / "o"),
                 "--formats", "onnx"]) == 0
    best = max(students, key=lambda r: client.get_run(r).data.metrics["best_dev_score"])
    mod = load_predict_py(tmp_path / "o")
    got = mod.Predictor(tmp_path / "o", "onnx", threads=1).logits(["a good film"])
    np.testing.assert_allclose(got, StudentPredictor(students[best]).logits(["a good film"]),
                               atol=TOL)
    assert main(["export", "--search", "nope", "--tracking-uri", uri,
                 "--out", str(tmp_path / "o2")]) == 2


@pytest.mark.parametrize("arch", ["bilstm", "bcn"])
def test_saved_student_with_pretrained_vectors_loads_back(tmp_path, arch):
    """Word vectors (GloVe 50d here) set the embedding size, not student.embed_dim: a saved
    student must rebuild with the bundle's size and reproduce its outputs."""
    from orchestrator.training.train import load_student

    texts = ["a good film", "a bad plot", "good acting , bad plot"]
    vocab = Vocab.build(texts)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    vocab.save(bundle / "vocab.json")
    spec = get_task("sst2")
    meta = {"tasks": {"sst2": {"num_outputs": spec.num_outputs, "pair": False,
                               "regression": False, "dev_splits": ["dev"],
                               "spec": _spec_dict(spec)}},
            "encoding": "words", "vocab_size": len(vocab), "embed_dim": 50}
    cfg = ExperimentConfig(student=StudentConfig(arch=arch, embed_dim=300, hidden_size=8,
                                                 relu_size=8))
    vectors = np.random.default_rng(0).normal(size=(len(vocab), 50)).astype(np.float32)
    model = build_from_meta(cfg, meta, vectors).eval()
    out = tmp_path / "student"
    out.mkdir()
    save_student(model, out, cfg, meta, bundle)
    loaded, info = load_student(out)
    assert info["student"]["embed_dim"] == 300  # the config as the run had it
    ids = torch.tensor([vocab.encode("a good film", 8)])
    with torch.no_grad():
        assert torch.equal(model(ids, task="sst2"), loaded(ids, task="sst2"))


def test_registering_the_same_run_again_adds_no_version(tmp_path):
    """A search run again after it registered its best student (or killed during registration,
    after the version was created) finds that version instead of adding another."""
    from mlflow.tracking import MlflowClient

    from orchestrator.record.registry import register_best
    from orchestrator.runtime import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = tracking.get_experiment_id(client, "distillray", str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={tracking.TAG_KIND: "search", tracking.TAG_SEARCH: "s1"})
    run = client.create_run(exp, tags={tracking.TAG_KIND: "trial", tracking.TAG_SEARCH: "s1"})
    client.log_metric(run.info.run_id, "final_best_dev_score", 0.8)
    st = make_student(tmp_path / "trial", "bilstm", ["sst2"], ["a good film", "a bad film"])
    client.log_artifacts(run.info.run_id, str(st), "student")
    texts = [("a good film", None), ("a bad film", None)]
    first = register_best(client, uri, parent.info.run_id, run.info.run_id, "m", texts)
    client.delete_tag(parent.info.run_id, "distillray.registered_model")  # as a cut-short run
    again = register_best(client, uri, parent.info.run_id, run.info.run_id, "m", texts)
    assert first == ("1", True) and again == ("1", False)
    assert len(client.search_model_versions("name='m'")) == 1
    assert client.get_run(parent.info.run_id).data.tags["distillray.registered_model"] == "m/1"
    assert client.get_model_version("m", "1").tags["final_best_dev_score"] == "0.8"


# a child Python that cannot import this repository: what a fresh serving environment sees
_NO_REPO = """
import importlib.abc, json, sys
class NoRepo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"orchestrator", "tasks", "students", "search_spaces", "knobs"}:
            raise ModuleNotFoundError(f"{name}: this repository is not installed here")
sys.meta_path.insert(0, NoRepo())
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
rows = pd.DataFrame({"text_a": json.loads(sys.argv[2])})
print(json.dumps(model.predict(rows).to_dict("records")))
"""


def test_registered_model_needs_only_what_its_mlmodel_lists(tmp_path):
    """The registered model is the ONNX export and its predict.py behind a models-from-code
    pyfunc: its requirements are mlflow, pandas, numpy and onnxruntime (not distillray), and it
    loads and answers where this repository cannot be imported, as the trained student does."""
    import os

    import mlflow
    import yaml
    from mlflow.tracking import MlflowClient

    from orchestrator.record.registry import register_best
    from orchestrator.runtime import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = tracking.get_experiment_id(client, "distillray", str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={tracking.TAG_KIND: "search", tracking.TAG_SEARCH: "s1"})
    run = client.create_run(exp, tags={tracking.TAG_KIND: "trial", tracking.TAG_SEARCH: "s1"})
    texts = ["a good film", "a bad film", "zxqv florbish !"]
    st = make_student(tmp_path / "trial", "bilstm", ["sst2"], texts)
    client.log_artifacts(run.info.run_id, str(st), "student")
    assert register_best(client, uri, parent.info.run_id, run.info.run_id, "m",
                         [(t, None) for t in texts]) == ("1", True)

    mlflow.set_tracking_uri(uri)
    model_dir = Path(mlflow.artifacts.download_artifacts("models:/m/1", dst_path=str(tmp_path / "m")))
    reqs = (model_dir / "requirements.txt").read_text().split()
    assert sorted(r.split("==")[0] for r in reqs) == ["mlflow", "numpy", "onnxruntime", "pandas"]
    assert all("==" in r for r in reqs) and not any("distillray" in r for r in reqs)
    code = [p for p in model_dir.rglob("*.py") if "export" not in p.parts]
    assert code and not any(re.search(r"^\s*(from|import) (orchestrator|tasks|students)\b",
                                      p.read_text(), re.M) for p in code)
    # it loads from its own copy of its code, not from a pickled class that names a module path
    # of this repository: moving code in the repository never breaks a registered model
    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # models from code
    assert (model_dir / Path(flavor["model_code_path"]).name).is_file()
    assert not list(model_dir.rglob("*.pkl"))

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = uri
    out = subprocess.run([sys.executable, "-I", "-c", _NO_REPO, str(model_dir), json.dumps(texts)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    want = StudentPredictor(st).predict(texts)
    assert [r["label"] for r in served] == [w["label"] for w in want]
    assert np.allclose([r["logits"] for r in served], [w["logits"] for w in want], atol=1e-4)
