"""docs/configuration.md is generated from the config dataclasses' help text and must match them."""
from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import ExperimentConfig, knob

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"


def _gen():
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_config_field_has_help():
    assert _gen().missing_help(ExperimentConfig) == []


def test_configuration_doc_is_up_to_date():
    # why: a key added to or changed in orchestrator/config.py without regenerating the doc
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == _gen().render(), ("docs/configuration.md is out of date: run "
                                    "python scripts/gen_config_docs.py")


def test_doc_lists_every_key_with_its_default():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    cfg = ExperimentConfig()
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                assert f"| `{section.name}.{f.name}` |" in doc
        else:
            assert f"| `{section.name}` |" in doc
    assert "| `train.soft_labels` | `str` | `precomputed` |" in doc
    assert "| `pool.resources_per_actor` | `dict[str, float]` | `{}` |" in doc


def test_a_field_without_help_is_named():
    @dataclasses.dataclass
    class Inner:
        ok: int = knob(1, "documented")
        bare: int = 2

    @dataclasses.dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner, metadata={"help": "x"})
        loose: str = "y"

    gen = _gen()
    assert gen.missing_help(Outer) == ["inner.bare", "loose"]
    with pytest.raises(SystemExit, match="inner.bare, loose"):
        gen.render(Outer)


def test_knob_gives_each_config_its_own_list_and_dict():
    a, b = ExperimentConfig(), ExperimentConfig()
    a.data.text_columns.append("x")
    a.pool.resources_per_actor["GPU"] = 1.0
    assert b.data.text_columns == ["text"] and b.pool.resources_per_actor == {}


def test_check_mode_fails_on_a_stale_doc(tmp_path):
    gen = _gen()
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    gen.DOC = stale
    gen.ROOT = tmp_path
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    assert stale.read_text() == gen.render()


def test_script_check_passes_on_the_repository():
    out = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
