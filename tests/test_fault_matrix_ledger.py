"""scripts/fault_matrix.py resumes from its ledger: finished cells are kept, a line cut short by
a kill is dropped (its cell runs again) and the next line starts afresh."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ledger_cls():
    spec = importlib.util.spec_from_file_location("fault_matrix", REPO / "scripts" / "fault_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Ledger


def test_ledger_keeps_finished_cells_and_drops_a_line_cut_short(tmp_path):
    Ledger = _ledger_cls()
    path = tmp_path / "ledger.jsonl"
    first = Ledger(path)
    assert first.cells == {}
    first.add(0, "labeling", "pass", [], 12.3)
    first.add(0, "rung_waiting", "explained", ["the best trial resumed"], 40)
    with open(path, "a") as f:
        f.write('{"run": 1, "point": "register_mo')  # killed mid-write
    again = Ledger(path)
    assert again.cells == {(0, "labeling"): "pass", (0, "rung_waiting"): "explained"}
    again.add(0, "register_model", "pass", [], 9)
    lines = path.read_text().splitlines()
    assert lines[2] == '{"run": 1, "point": "register_mo'  # left as it was, on a line of its own
    assert json.loads(lines[3]) == {"run": 1, "point": "register_model", "verdict": "pass",
                                    "notes": [], "seconds": 9}
    assert Ledger(path).cells[0, "register_model"] == "pass"
