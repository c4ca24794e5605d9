"""Modules that moved into orchestrator's layer packages keep their old paths where a pickle written
before the move names them: MLflow pyfunc models (``python_model.pkl`` names
``orchestrator.serving.StudentPyfunc``) and a killed search's Tune state (``tuner.pkl`` names the
scheduler's and searcher's classes in ``orchestrator.pareto_asha`` and
``orchestrator.startup_order``). Nothing else in the repository imports the old paths."""
from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# python_model.pkl of the model a smoke search registered before the move (MLflow 3.17.2,
# cloudpickle 3.1.3): the StudentPyfunc instance, its class named orchestrator.serving.StudentPyfunc
OLD_PYFUNC = Path(__file__).parent / "data" / "python_model_before_layers.pkl"

MOVED = {
    "orchestrator.serving": ("orchestrator.deploy.serving", ["StudentPyfunc", "StudentPredictor"]),
    "orchestrator.pareto_asha": ("orchestrator.search.pareto_asha",
                                 ["ParetoASHA", "CohortLimiter", "RungDecision"]),
    "orchestrator.startup_order": ("orchestrator.search.startup_order",
                                   ["CheapestFirst", "TrainingWork"]),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_a_pickle_naming_the_old_path_gets_the_moved_class(old):
    new, names = MOVED[old]
    mod = importlib.import_module(new)
    for name in names:
        # the GLOBAL opcode: how a pickle names a class, by module path and attribute
        assert pickle.loads(f"c{old}\n{name}\n.".encode()) is getattr(mod, name)


def test_nothing_in_the_repository_imports_the_old_paths():
    grep = subprocess.run(
        ["git", "grep", "-nE", r"(from|import) orchestrator\.(serving|pareto_asha|startup_order)\b",
         "--", "*.py"], cwd=REPO, capture_output=True, text=True)
    lines = [x for x in grep.stdout.splitlines() if not x.startswith("orchestrator/")
             or "/" in x.split(":")[0][len("orchestrator/"):]]  # the alias modules themselves
    assert lines == []


def test_a_model_logged_before_the_move_loads_and_predicts(tmp_path):
    pytest.importorskip("onnx")  # tests.test_export needs it to import
    import mlflow.pyfunc
    import pandas as pd

    from orchestrator.deploy.serving import StudentPredictor, StudentPyfunc
    from tests.test_export import generated, make_student

    pairs = generated("sst2", 6)
    texts = [a for a, _ in pairs]
    student = make_student(tmp_path, "bilstm", ["sst2"], texts)
    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=StudentPyfunc(),
                             artifacts={"student": str(student)}, pip_requirements=["torch"])
    pkl = model_dir / "python_model.pkl"
    assert b"orchestrator.deploy.serving" in pkl.read_bytes()
    old = OLD_PYFUNC.read_bytes()
    assert b"orchestrator.serving" in old and b"orchestrator.deploy" not in old
    pkl.write_bytes(old)  # the model as a registry that predates the move holds it

    model = mlflow.pyfunc.load_model(str(model_dir))
    got = model.predict(pd.DataFrame({"text_a": texts}))
    want = StudentPredictor(student).predict(texts)
    assert [r["label"] for r in got.to_dict("records")] == [w["label"] for w in want]
    for g, w in zip(got.to_dict("records"), want):
        assert g["logits"] == pytest.approx(w["logits"], abs=1e-6)
    assert sys.modules["orchestrator.serving"].StudentPyfunc is StudentPyfunc
