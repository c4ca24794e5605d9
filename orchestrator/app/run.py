"""A run's config, resolved once for every command: the preset, then the ``--set`` overrides and
the flags that stand for keys, then the local assets where hub defaults remain
(docs/architecture.md, "The config flow"). The CLI, the report and the benchmarks call it."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from orchestrator.config import (ExperimentConfig, build_config, find_assets, load_space,
                                 local_asset_values, parse_override, with_values)


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` flags as one dict of dotted keys (a later flag for a key wins)."""
    return dict(parse_override(s) for s in sets or [])


def resolve_run(preset: str, sets: list[str] | None = None, assets: str | None = None,
                extra: dict[str, Any] | None = None):
    """Returns (space, cfg, overrides). ``overrides`` carries every resolved value (asset paths
    included): the startup order's cost estimates rebuild trial configs from it
    (``config.apply_sample``); the trials themselves derive theirs from ``cfg``."""
    return resolve_overrides(preset, {**(extra or {}), **parse_sets(sets)}, assets)


def resolve_overrides(preset: str, overrides: dict[str, Any], assets: str | None = None):
    """:func:`resolve_run` with the overrides already parsed (dotted keys, typed values)."""
    space = load_space(preset)
    overrides = dict(overrides)
    cfg = build_config(space.config | {"search": space.search}, overrides)
    local = asset_values(cfg, find_assets(assets))
    overrides.update(local)
    return space, with_values(cfg, local), overrides


def asset_values(cfg: ExperimentConfig, asset_dir: Path | None) -> dict[str, Any]:
    """What the local assets change in ``cfg`` (dotted keys): hub defaults pointed at the local
    copies; without assets, ``student.embeddings=glove`` falls back to random embeddings."""
    if asset_dir is not None:
        return local_asset_values(cfg, asset_dir)
    if cfg.student.embeddings == "glove":
        print("[config] no local assets and student.embeddings=glove: using random embeddings; "
              "pass student.embeddings=<GloVe .txt> for pretrained vectors", file=sys.stderr)
        return {"student.embeddings": None}
    return {}
