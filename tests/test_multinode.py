"""The smoke search on a three-node Ray cluster on this machine (``ray.cluster_utils.Cluster``):
a head and two workers, one worker carrying a ``teacher_gpu`` resource that stands in for a GPU.

- teacher actors asked to pin to ``teacher_gpu`` run on that worker;
- a missing teacher resource fails before any stage runs, naming the resource and the fallback;
- a worker node killed mid-search: the search still finishes, one MLflow child run per trial,
  none left RUNNING.

CPU budget (a Ray resource shortfall hangs silently): a 1-CPU head and two 2-CPU workers. The
search's one teacher actor holds 0.5 CPU for the whole search; a trial takes 0.01 CPU plus one
1-CPU Train worker. Whichever worker node is lost, the nodes left still hold the teacher actor
(restarted elsewhere if it was on the lost node), the trial and its Train worker.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.app.run import resolve_run
from orchestrator.runtime import tracking

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TEACHER_RESOURCE = "teacher_gpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU) + worker with teacher_gpu (2 CPUs) + plain worker (2 CPUs); the driver joins
    it through ``init_ray(address=...)``, as ``tune_mkd.py --address`` does."""
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.runtime.ray_runtime import init_ray

    # A private Ray temp dir: the head records its address in <tmp>/ray/ray_current_cluster,
    # which must not send other Ray users of this machine (ray.init() without an address) here.
    old_tmp = os.environ.get("RAY_TMPDIR")
    tmp = Path(f"/tmp/drmn-{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    os.environ["RAY_TMPDIR"] = str(tmp)
    os.environ["DISTILLRAY_AUTOSCALER_CONFIG"] = "none"
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": _free_port(),
        # a killed node is declared dead within a few seconds
        "_system_config": {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                           "health_check_failure_threshold": 3}})
    teacher_node = c.add_node(num_cpus=2, resources={TEACHER_RESOURCE: 1})
    plain_node = c.add_node(num_cpus=2)
    c.wait_for_nodes()
    # conftest sets RAY_ADDRESS=local so that tests start private Rays; here the module's Ray is
    # this cluster, and Ray's state API reads RAY_ADDRESS before its own address argument
    old_address = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = c.address
    logs: list[str] = []
    resources = init_ray(address=c.address, log=logs.append)
    assert resources.get("CPU") == 5 and resources.get(TEACHER_RESOURCE) == 1, resources
    assert any("joined the cluster" in m for m in logs), logs
    yield {"cluster": c, "teacher_node": teacher_node, "plain_node": plain_node,
           "work": tmp_path_factory.mktemp("multinode")}
    ray.shutdown()
    c.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    os.environ.pop("DISTILLRAY_AUTOSCALER_CONFIG", None)
    if old_address is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = old_address
    if old_tmp is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old_tmp


def _search(work: Path, name: str, sets: list[str] = (), log=print):
    from orchestrator.search.search import run_search

    uri = f"sqlite:///{work / 'mlflow.db'}"
    # students on Ray Train workers (the smoke preset trains them in the trial's process), so
    # the workers are what these tests place on, and kill with, a node
    space, cfg, overrides = resolve_run(
        "smoke", [f"search.name={name}", f"work_root={work / 'root'}", "train.num_workers=1",
                  *sets],
        extra={"tracking.uri": uri})
    return uri, run_search(cfg, space, overrides, log=log)


def _runs(uri: str, search: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("distillray")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parent = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == "search"
              and r.data.tags.get(tracking.TAG_SEARCH) == search]
    children = [r for r in runs if r.data.tags.get(tracking.TAG_KIND) == "trial"
                and r.data.tags.get(tracking.TAG_SEARCH) == search]
    return parent, children


def test_missing_teacher_resource_fails_before_any_stage(cluster):
    uri = f"sqlite:///{cluster['work'] / 'mlflow.db'}"
    t0 = time.time()
    with pytest.raises(RuntimeError) as err:
        _search(cluster["work"], "mn-missing", ["pool.resources_per_actor={a100: 1}"])
    msg = str(err.value)
    assert "'a100'" in msg and "pool.resources_per_actor" in msg and "--cpu-teachers" in msg, msg
    assert time.time() - t0 < 30
    assert _runs(uri, "mn-missing") == ([], [])  # nothing started: no teacher, no parent run


def test_teacher_actors_pinned_to_the_teacher_node(cluster):
    from ray.util.state import list_actors

    logs: list[str] = []
    uri, out = _search(cluster["work"], "mn-pinned",
                       [f"pool.resources_per_actor={{{TEACHER_RESOURCE}: 1}}",
                        "search.num_samples=2"],
                       log=lambda m: (logs.append(str(m)), print(m)))
    assert len(out.table) == 2 and out.best, out.table
    assert any("3 nodes see" in m for m in logs), "the shared-path check ran on every node"
    teachers = list_actors(address=cluster["cluster"].address,
                           filters=[("class_name", "=", "TeacherWorker")], limit=1000,
                           raise_on_missing_output=False)
    assert teachers, "no teacher actor was recorded"
    teacher_node = cluster["teacher_node"].node_id
    assert {a.node_id for a in teachers} == {teacher_node}, \
        [(a.actor_id, a.node_id, a.state) for a in teachers]
    # the trials' Train workers ran on the cluster's nodes (which ones is up to Ray)
    workers = list_actors(address=cluster["cluster"].address,
                          filters=[("class_name", "=", "RayTrainWorker")], limit=1000,
                          raise_on_missing_output=False)
    assert len(workers) >= 2, "one Train worker per trial at least"
    parent, children = _runs(uri, "mn-pinned")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert len(children) == 2, "one child run per trial"
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children), \
        [(c.info.run_name, c.info.status) for c in children]


def test_worker_node_lost_mid_search_finishes_without_lost_runs(cluster):
    """Kill the non-head node that hosts the running trial's Train worker (or, when that worker
    sits on the head, a node with another actor of the trial) while it trains."""
    import ray
    from ray.util.state import list_actors

    c = cluster["cluster"]
    head_id = c.head_node.node_id
    by_id = {n.node_id: n for n in c.worker_nodes}
    killed: dict = {}
    stop = threading.Event()

    def killer():
        seen_since = None
        while not stop.is_set() and not killed:
            try:
                alive = list_actors(address=c.address, filters=[("state", "=", "ALIVE")],
                                    limit=1000, raise_on_missing_output=False)
            except Exception:  # noqa: BLE001 - the state API may be briefly busy
                time.sleep(1)
                continue
            train = [a for a in alive if a.class_name == "RayTrainWorker"]
            if train and seen_since is None:
                seen_since = time.time()
            if train and time.time() - seen_since > 3:  # the trial is training
                trial_actors = [a for a in alive if a.class_name not in (
                    "TeacherWorker", "RayTrainWorker", "TrainController")
                    and a.node_id in by_id]
                # its Train worker, else the Tune trial actor, else another actor of the trial
                trial_actors.sort(key=lambda a: not any(k in a.class_name for k in (
                    "_trial", "ImplicitFunc", "Trainable", "_Inner")))
                target = next((a for a in train if a.node_id in by_id), None) or \
                    (trial_actors[0] if trial_actors else None)
                if target is not None:
                    killed.update(node=target.node_id, actor=target.class_name, at=time.time())
                    c.remove_node(by_id[target.node_id], allow_graceful=False)
                    return
            time.sleep(0.5)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        uri, out = _search(cluster["work"], "mn-failover")
    finally:
        stop.set()
        th.join(timeout=60)
    assert killed, "no trial actor ran on a worker node: nothing was killed"
    assert killed["node"] != head_id
    dead = [n for n in ray.nodes() if n["NodeID"] == killed["node"]]
    assert dead and not dead[0]["Alive"], "the killed node is still alive"
    assert len(out.table) == 3, out.table
    assert "ERROR" not in set(out.table["status"]), out.table
    parent, children = _runs(uri, "mn-failover")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert len(children) == 3, "exactly one child run per trial"
    assert sorted(c.data.tags[tracking.TAG_TRIAL] for c in children) == \
        sorted(out.table["trial_id"])
    for ch in children:
        assert ch.info.status in ("FINISHED", "KILLED"), ch.info.status
        assert "dev_score" in ch.data.metrics
    print(f"killed node {killed['node'][:8]} hosting {killed['actor']}; "
          f"attempts per trial: {[ch.data.tags.get('distillray.attempts') for ch in children]}")
