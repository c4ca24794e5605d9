"""Resume only what matches: a search's fingerprint, stored with it, checked when its name runs
again.

Re-running a search name resumes it. Tune restores its trials with their old samples but hands
them the trainable of the new command, so a config (or data) changed in between would train the
resumed trials on settings their MLflow record does not show. The fingerprint is the resolved
config (every key, dotted; secrets redacted), the search space and each task's data (the
fingerprints of its training set and dev splits); it is saved beside the search's Tune state
(``<storage>/<name>.fingerprint.json``) and on its MLflow parent run (tag
``distillray.fingerprint``, artifact ``fingerprint.json``). A resume whose fingerprint differs
stops before any work with :class:`SearchChangedError`, naming the keys that differ and the two
ways on: ``--no-resume`` (start the name over) or a new ``--name``.
"""
from __future__ import annotations

import json
from typing import Any

from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.runtime import tracking
from orchestrator.runtime.keys import canonical_json, content_key, write_bytes_atomic
from orchestrator.runtime.redact import redact_deep

FILE_SUFFIX = ".fingerprint.json"
ARTIFACT = "fingerprint.json"
TAG = "distillray.fingerprint"
SHOW = 12  # differing keys named in the message at most


class SearchChangedError(ConfigError):
    """A resumed search's config or data differ from those it was started with."""


def search_fingerprint(cfg: ExperimentConfig, space, data) -> dict[str, Any]:
    """Dotted key -> value for everything that shapes a search's trials: ``config.<key>``,
    ``space.<param>``, ``data.<task>.train`` / ``data.<task>.dev.<split>``."""
    from tasks.loaders import data_fingerprint

    fp: dict[str, Any] = {}
    for k, v in tracking.flatten(redact_deep(cfg.to_dict())).items():
        fp[f"config.{k}"] = v
    for p in space.params:
        fp[f"space.{p.key.rstrip('#')}"] = json.loads(canonical_json(vars(p)))
    for name, d in data.items():
        fp[f"data.{name}.train"] = data_fingerprint(d.train)
        for split, ex in d.dev.items():
            fp[f"data.{name}.dev.{split}"] = data_fingerprint(ex)
    return json.loads(canonical_json(fp))  # JSON values, as they are read back


def digest(fp: dict[str, Any]) -> str:
    return content_key(fp)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each key whose value differs (``(absent)`` where one lacks it)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "(absent)"), new.get(k, "(absent)")
        if a != b:
            out.append(f"{k}: {_show(a)} -> {_show(b)}")
    return out


def _show(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."


def file_path(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}{FILE_SUFFIX}"


def load_saved(storage: str, name: str) -> dict[str, Any] | None:
    """The fingerprint saved beside the search's Tune state, or None."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(file_path(storage, name))
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path).decode())


def save(storage: str, name: str, fp: dict[str, Any]) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(file_path(storage, name))
    write_bytes_atomic(fs, path, json.dumps(fp, indent=1, sort_keys=True).encode())


def check_unchanged(name: str, saved: dict[str, Any] | None, fp: dict[str, Any],
                    where: str) -> None:
    """Raise :class:`SearchChangedError` when ``saved`` (from ``where``) differs from ``fp``."""
    if saved is None:
        return
    if set(saved) == {"digest"}:  # only the parent run's tag could be read
        diff = [] if saved["digest"] == digest(fp) else [
            f"fingerprint digest: {saved['digest']} -> {digest(fp)}"]
    else:
        diff = differences(saved, fp)
    if not diff:
        return
    shown = "\n  ".join(diff[:SHOW]) + (f"\n  ... and {len(diff) - SHOW} more" if len(diff) > SHOW
                                        else "")
    raise SearchChangedError(
        f"search {name!r} exists ({where}) and was started with another config or data; "
        f"resuming it would train its trials on settings their record does not show. "
        f"{len(diff)} difference(s), started -> now:\n  {shown}\n"
        f"Either start it over: the same command with --no-resume; or keep it and run this "
        f"one under a new name: --name {name}-2")


def from_parent_run(client, run, fp: dict[str, Any]) -> dict[str, Any] | None:
    """The fingerprint logged on a search's MLflow parent run; None when it matches ``fp`` or
    the run has none (a search from before fingerprints)."""
    if TAG not in run.data.tags or run.data.tags[TAG] == digest(fp):
        return None
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as d:
            path = client.download_artifacts(run.info.run_id, ARTIFACT, d)
            with open(path, encoding="utf-8") as f:
                return json.load(f)
    except Exception:  # noqa: BLE001 - the artifact lost: compare the digest alone
        return {"digest": run.data.tags[TAG]}


def record(client, run_id: str, fp: dict[str, Any]) -> None:
    """Tag and attach the fingerprint to the search's parent run (once)."""
    if client.get_run(run_id).data.tags.get(TAG) == digest(fp):
        return
    client.set_tag(run_id, TAG, digest(fp))
    tracking.log_dict_artifact(client, run_id, fp, ARTIFACT)
