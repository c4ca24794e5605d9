"""A run's config, resolved once for every command: the preset, then the ``--set`` overrides and
the flags that stand for keys, then the local assets where hub defaults remain
(docs/architecture.md, "The config flow"). The CLI, the report and the benchmarks call it."""
from __future__ import annotations

import sys
from typing import Any

from orchestrator.config import (build_config, find_assets, load_space, parse_override,
                                 use_local_assets)


def resolve_run(preset: str, sets: list[str] | None = None, assets: str | None = None,
                extra: dict[str, Any] | None = None):
    """Returns (space, cfg, overrides). ``overrides`` carries every resolved value (asset paths
    included) so each trial rebuilds exactly the same base config."""
    space = load_space(preset)
    overrides: dict[str, Any] = dict(extra or {})
    for s in sets or []:
        k, v = parse_override(s)
        overrides[k] = v
    base = space.config | {"search": space.search}
    cfg = build_config(base, overrides)
    asset_dir = find_assets(assets)
    before = cfg.to_dict()
    if asset_dir is not None:
        cfg = use_local_assets(cfg, asset_dir)
    elif cfg.student.embeddings == "glove":
        print("[config] no local assets and student.embeddings=glove: using random embeddings; "
              "pass student.embeddings=<GloVe .txt> for pretrained vectors", file=sys.stderr)
        cfg.student.embeddings = None
    after = cfg.to_dict()
    for section, values in after.items():
        if isinstance(values, dict):
            for k, v in values.items():
                if before[section][k] != v:
                    overrides[f"{section}.{k}"] = v
    cfg = build_config(base, overrides)
    return space, cfg, overrides
