"""Cluster set-up without a cluster: the launcher configs pass Ray's own validation, the resource
and storage checks fail early with messages that name the resource and the fix, and the CLI
honours the cluster environment variables. Fast: no Ray is started."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from orchestrator.app.run import resolve_run
from orchestrator.cli import _extra, build_parser
from orchestrator.config import ConfigError
from orchestrator.runtime.ray_runtime import (ResourceError, StorageError, autoscaler_node_types,
                                              check_budget, check_storage, env_storage_path,
                                              trial_resources)

REPO = Path(__file__).resolve().parents[1]


def _prepared(name: str) -> dict:
    """What `ray up` does with the file before touching a provider: defaults merged, then the
    JSON-schema validation."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / name).read_text())
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    return cfg


def test_aws_cluster_yaml_is_valid_and_has_the_node_types():
    cfg = _prepared("cluster.yaml")
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head"
    gpu = types["teacher_gpu"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["resources"]["teacher_gpu"] >= 1
    assert gpu["min_workers"] <= gpu["max_workers"]
    cpu = types["student_cpu"]
    assert "GPU" not in cpu["resources"] and cpu["max_workers"] > cpu["min_workers"]
    # CPU torch on head and CPU workers, the CUDA build on GPU workers; the package everywhere
    cpu_setup = " ".join(cfg["setup_commands"])
    gpu_setup = " ".join(gpu["worker_setup_commands"])
    assert "whl/cpu" in cpu_setup and "whl/cpu" not in gpu_setup
    assert "pip install -q -e ~/distillray" in cpu_setup and "pip install -q -e ~/distillray" in gpu_setup
    assert "~/distillray" in cfg["file_mounts"]
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head


def test_local_cluster_yaml_is_valid():
    cfg = _prepared("cluster.local.yaml")
    assert cfg["provider"]["type"] == "local" and cfg["provider"]["head_ip"] == "127.0.0.1"
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])
    assert "teacher_gpu" in " ".join(cfg["worker_start_ray_commands"])


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_launcher_configs_start_ray_with_token_authentication(name):
    """Without a token anyone who reaches the cluster's ports runs code as its user: every node
    starts Ray with RAY_AUTH_MODE=token, `ray up` ships the one token to every node (readable by
    the cluster user only), and login shells (`ray submit`, `ray job submit`) use token mode."""
    cfg = _prepared(name)
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts), cfg[key]
        assert not any("RAY_AUTH_MODE=disabled" in c for c in cfg[key])
    setup = [c for c in cfg["setup_commands"] if "distillray-ray-auth" in c]
    assert len(setup) == 1
    assert "chmod 600 ~/.ray/auth_token" in setup[0] and "export RAY_AUTH_MODE=token" in setup[0]
    assert "test -s ~/.ray/auth_token" in setup[0]  # no token: the setup fails, Ray never starts
    if name == "cluster.yaml":  # GPU workers have their own setup list
        gpu = cfg["available_node_types"]["teacher_gpu"]["worker_setup_commands"]
        assert any("distillray-ray-auth" in c for c in gpu)
    raw = (REPO / name).read_text()
    assert "ray get-auth-token --generate" in raw
    assert "# \"~/.ray/auth_token\"" not in raw  # the line is on, not commented out


def test_ray_up_accepts_the_configs_on_the_command_line():
    """`ray up --help` runs in this environment (the full `ray up` is scripts/launcher_check.sh)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "up", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "CLUSTER_CONFIG_FILE" in out.stdout


def _cfg(sets=()):
    _, cfg, _ = resolve_run("smoke", list(sets))
    return cfg


NODE = [("node 10.0.0.1", {"CPU": 2.0})]


def test_budget_names_the_missing_teacher_resource_and_the_fallback():
    cfg = _cfg(["pool.resources_per_actor={teacher_gpu: 1}"])
    with pytest.raises(ResourceError) as e:
        check_budget(cfg, {"CPU": 2.0}, nodes=NODE, node_types=[])
    msg = str(e.value)
    assert "'teacher_gpu'" in msg and "pool.resources_per_actor" in msg and "--cpu-teachers" in msg
    cfg = _cfg(["pool.gpus_per_actor=1"])
    with pytest.raises(ResourceError, match=r"'GPU' \(pool.gpus_per_actor\).*--cpu-teachers"):
        check_budget(cfg, {"CPU": 2.0}, nodes=NODE, node_types=[])


def test_budget_counts_one_search_wide_pool_or_a_pool_per_trial():
    """One teacher: one pool serves the whole search, beside every concurrent trial's workers.
    Several teachers (MKD without a multi-task teacher): a pool per trial, gone before the
    workers start (labels on demand, which would keep it beside them, are refused)."""
    small = ["train.cpus_per_worker=0.45", "pool.cpus_per_actor=0.5", "search.max_concurrent=3"]
    check_budget(_cfg(small), {"CPU": 2.0}, nodes=NODE, node_types=[])  # 0.5 + 3 x 0.46
    with pytest.raises(ResourceError, match=r"needs 2.01 CPUs \(1 teacher actors x 0.5 CPU \+ "
                                            r"1 concurrent trial\(s\) x \(0.01 trial \+ 1 workers"
                                            r" x 1.5 CPU\)\)"):
        check_budget(_cfg(["train.cpus_per_worker=1.5", "pool.cpus_per_actor=0.5",
                           "train.num_workers=1"]), {"CPU": 2.0}, nodes=NODE, node_types=[])
    # a student trained in its trial's process (local mode) counts as one worker's share
    with pytest.raises(ResourceError, match=r"needs 2.1 CPUs \(1 teacher actors x 0.5 CPU \+ 1 "
                                            r"concurrent trial\(s\) x \(1.6 CPU, training in "
                                            r"the trial\)\)"):
        check_budget(_cfg(["train.cpus_per_worker=1.6", "pool.cpus_per_actor=0.5",
                           "train.num_workers=0"]), {"CPU": 2.0}, nodes=NODE, node_types=[])
    two = ["tasks=[sst2, mrpc]", "teacher.multitask=false", *small, "train.num_workers=1"]
    check_budget(_cfg(two), {"CPU": 2.0}, nodes=NODE, node_types=[])  # 3 x (0.01 + max)
    # in local mode a trial holds its share while its own pools label: 3 x (0.45 + 0.5)
    with pytest.raises(ResourceError, match=r"needs 2.85 CPUs \(3 concurrent trial\(s\) x "
                                            r"\(0.45 CPU, training in the trial, \+ 1 teacher actors"):
        check_budget(_cfg([*two, "train.num_workers=0"]), {"CPU": 2.0}, nodes=NODE,
                     node_types=[])
    with pytest.raises(ResourceError, match=r"3 concurrent trial\(s\) x \(0.01 trial \+ max\(1 "
                                            r"workers x 0.7 CPU, 1 teacher actors x 0.5 CPU\)\)"):
        check_budget(_cfg([*two, "train.cpus_per_worker=0.7"]), {"CPU": 2.0}, nodes=NODE,
                     node_types=[])
    with pytest.raises(ConfigError, match="train.soft_labels=on_demand keeps one teacher pool"):
        _cfg([*two, "train.soft_labels=on_demand"])


def test_budget_counts_what_the_autoscaler_can_add(tmp_path, monkeypatch):
    """On a launcher cluster the GPU workers may not be up yet: that is a wait, not an error."""
    cfg = _cfg(["pool.gpus_per_actor=1", "pool.resources_per_actor={teacher_gpu: 1}"])
    boot = tmp_path / "ray_bootstrap_config.yaml"
    boot.write_text(yaml.safe_dump(_prepared("cluster.yaml")))
    monkeypatch.setenv("DISTILLRAY_AUTOSCALER_CONFIG", str(boot))
    types = autoscaler_node_types()
    assert {name for name, _, _ in types} == {"teacher_gpu", "student_cpu"}
    said = []
    check_budget(cfg, {"CPU": 2.0}, log=said.append, nodes=NODE, node_types=types)
    assert any("waiting for the autoscaler" in m and "teacher_gpu" in m for m in said), said
    monkeypatch.setenv("DISTILLRAY_AUTOSCALER_CONFIG", "none")
    assert autoscaler_node_types() == []


def test_budget_wants_one_node_that_holds_a_whole_teacher_actor():
    cfg = _cfg(["pool.resources_per_actor={teacher_gpu: 1}", "pool.cpus_per_actor=2"])
    nodes = [("node a", {"CPU": 4.0}), ("node gpu", {"CPU": 1.0, "teacher_gpu": 1.0})]
    with pytest.raises(ResourceError, match=r"no single node.*node gpu.*CPU \(has 1\)"):
        check_budget(cfg, {"CPU": 5.0, "teacher_gpu": 1.0}, nodes=nodes, node_types=[])
    check_budget(_cfg(["pool.resources_per_actor={teacher_gpu: 1}"]),
                 {"CPU": 5.0, "teacher_gpu": 1.0}, nodes=nodes, node_types=[])


def test_budget_train_worker_larger_than_any_node():
    cfg = _cfg(["train.cpus_per_worker=2"])
    nodes = [("node a", {"CPU": 1.0}), ("node b", {"CPU": 1.0}), ("node c", {"CPU": 1.0})]
    with pytest.raises(ResourceError, match="train.cpus_per_worker.*largest node has 1"):
        check_budget(cfg, {"CPU": 3.0}, nodes=nodes, node_types=[])


def test_storage_unreachable_fails_at_start(tmp_path):
    ok = check_storage(str(tmp_path / "a" / "b"))
    assert Path(ok).is_dir() and not list(Path(ok).iterdir())  # the probe file is gone
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not writable"):
        check_storage(str(blocker / "tune"))
    with pytest.raises(StorageError, match="unreachable"):
        check_storage("nosuchscheme://bucket/prefix")


def test_cli_cluster_flags_and_environment(monkeypatch):
    p = build_parser()
    monkeypatch.setenv("DISTILLRAY_WORK_ROOT", "/mnt/shared/dr")
    monkeypatch.setenv("DISTILLRAY_STORAGE_PATH", "s3://bucket/tune")
    args = p.parse_args(["tune", "--preset", "smoke"])
    assert _extra(args)["work_root"] == "/mnt/shared/dr"
    assert env_storage_path() == "s3://bucket/tune"
    args = p.parse_args(["tune", "--work-root", "/x", "--storage-path", "/y", "--address",
                         "10.0.0.1:6379", "--tracking-uri", "http://10.0.0.1:5000",
                         "--cpu-teachers"])
    extra = _extra(args)
    assert extra["work_root"] == "/x" and extra["search.storage_path"] == "/y"
    assert extra["tracking.uri"] == "http://10.0.0.1:5000"
    assert args.address == "10.0.0.1:6379" and args.cpu_teachers


def test_ray_train_settings_reach_every_worker_and_the_users_win(monkeypatch):
    """init_ray hands Ray Train's settings to every worker through the job's runtime env: the
    controller checks its workers every 0.5 s (not 2 s, paid at the end of every trial), a local
    Ray runs no preemption watcher, a cluster keeps Ray's; a variable set by the user wins."""
    import ray

    import orchestrator.runtime.ray_runtime as rr

    seen = []

    def fake_init(**kw):
        seen.append(kw)
        return type("Ctx", (), {"dashboard_url": None})()

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    monkeypatch.setattr(rr, "_recorded_cluster", lambda: None)
    monkeypatch.setattr(rr, "_gcs_address", lambda a: a)
    monkeypatch.setattr(rr, "_JOINED", False)
    for k in ("RAY_ADDRESS", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
              "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"):
        monkeypatch.delenv(k, raising=False)

    rr.init_ray(num_cpus=2, log=lambda m: None)
    env = seen[-1]["runtime_env"]["env_vars"]
    assert env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    assert env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"

    rr.init_ray(address="10.0.0.1:6379", log=lambda m: None)
    env = seen[-1]["runtime_env"]["env_vars"]
    assert env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in env  # Ray's default on a cluster

    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    rr.init_ray(num_cpus=2, log=lambda m: None)
    env = seen[-1]["runtime_env"]["env_vars"]
    assert env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"
    assert env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"

    # bars off in a log file (progress.quiet_library_bars): the workers on every node too
    monkeypatch.setenv("TQDM_DISABLE", "1")
    rr.init_ray(address="10.0.0.1:6379", log=lambda m: None)
    assert seen[-1]["runtime_env"]["env_vars"]["TQDM_DISABLE"] == "1"


def test_trial_resources_hold_the_training_share_in_local_mode():
    """Train's workers hold the training CPUs themselves, so a trial holds a token share; a
    student trained in the trial's own process (train.num_workers=0) is the trial's to hold."""
    assert trial_resources(_cfg(["train.num_workers=1"])) == {"CPU": 0.01}
    assert trial_resources(_cfg(["train.num_workers=0", "train.cpus_per_worker=1.5"])) == {
        "CPU": 1.5}
    with pytest.raises(ConfigError, match="train.num_workers=-1 must be >= 0"):
        _cfg(["train.num_workers=-1"])


def test_ray_address_local_never_joins_a_cluster_recorded_on_this_machine(monkeypatch):
    """A live cluster that `ray start` recorded here is joined by default (what `ray submit`
    runs next to); RAY_ADDRESS=local (what the tests set) or --address local starts a private
    Ray beside it instead."""
    import ray

    import orchestrator.runtime.ray_runtime as rr

    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(kw) or
                        type("Ctx", (), {"dashboard_url": None})())
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    monkeypatch.setattr(rr, "_recorded_cluster", lambda: "127.0.0.1:6379")
    monkeypatch.setattr(rr, "_gcs_address", lambda a: a)
    monkeypatch.setattr(rr, "_JOINED", False)

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rr.init_ray(log=lambda m: None)
    assert seen[-1]["address"] == "127.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    rr.init_ray(log=lambda m: None)
    assert seen[-1]["address"] == "local" and seen[-1]["include_dashboard"]
    monkeypatch.delenv("RAY_ADDRESS")
    rr.init_ray(address="local", log=lambda m: None)
    assert seen[-1]["address"] == "local"
    # the private Ray's workers are pointed at its own GCS, not at the recorded one
    assert seen[-1]["runtime_env"]["env_vars"]["RAY_ADDRESS"] != "127.0.0.1:6379"


@pytest.mark.slow
def test_two_local_rays_on_one_machine_keep_apart(tmp_path):
    """Another search's Ray runs on this machine: a second one started by init_ray is its own
    instance (own GCS, own dashboard port, its own CPUs), and a task runs on it."""
    import subprocess
    import sys
    import time

    import ray

    from orchestrator.runtime.ray_runtime import init_ray

    other = subprocess.Popen(
        [sys.executable, "-c",
         "import ray, time, sys; c = ray.init(address='local', num_cpus=1, "
         "include_dashboard=True, dashboard_host='127.0.0.1'); "
         "print(ray.get_runtime_context().gcs_address, c.dashboard_url, flush=True); "
         "time.sleep(120)"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, process_group=0)
    try:
        line = other.stdout.readline().split()
        assert len(line) == 2, "the other Ray did not start"
        other_gcs, other_dashboard = line
        logs = []
        init_ray(num_cpus=1, log=logs.append)
        try:
            assert ray.get_runtime_context().gcs_address != other_gcs
            ours = next(m for m in logs if m.startswith("[ray] dashboard:"))
            assert other_dashboard not in ours
            assert ray.cluster_resources()["CPU"] == 1.0 and len(ray.nodes()) == 1
            assert ray.get(ray.remote(lambda: 41).remote()) + 1 == 42
        finally:
            ray.shutdown()
        assert other.poll() is None, "our shutdown must not touch the other Ray"
    finally:
        other.kill()
        other.wait(timeout=30)
        time.sleep(1)


@pytest.mark.slow
def test_a_client_without_the_token_is_refused(tmp_path):
    """Token authentication as the launcher configs switch it on (RAY_AUTH_MODE=token, one
    token): a driver with no token or another token is refused by the GCS, and the dashboard's
    API answers 401 without it; with the token the driver joins. One machine, a private Ray."""
    import secrets
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    head = subprocess.Popen(
        [sys.executable, "-c",
         "import ray, time; c = ray.init(address='local', num_cpus=1, include_dashboard=True, "
         "dashboard_host='127.0.0.1'); "
         "print(ray.get_runtime_context().gcs_address, c.dashboard_url, flush=True); "
         "time.sleep(300)"],
        env=env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, process_group=0)
    try:
        line = head.stdout.readline().split()
        assert len(line) == 2, "the token-authenticated Ray did not start"
        gcs, dashboard = line
        client = ("import ray; ray.init(address=%r, log_to_driver=False); "
                  "print('joined, CPU', ray.cluster_resources()['CPU'])" % gcs)

        def connect(**auth: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", client], env=env | auth,
                                  capture_output=True, text=True, timeout=180)

        for auth in ({"RAY_AUTH_MODE": "disabled"},  # no token at all
                     {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"}):
            r = connect(**auth)
            assert r.returncode != 0 and "joined" not in r.stdout, auth
            assert "Authentication token is missing or incorrect" in r.stderr, r.stderr[-2000:]
        r = connect(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        assert r.returncode == 0 and "joined, CPU 1.0" in r.stdout, r.stderr[-2000:]
        url = f"http://{dashboard}/api/jobs/"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=30)
        assert e.value.code == 401
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as ok:
            assert ok.status == 200
    finally:
        head.terminate()
        head.wait(timeout=60)
