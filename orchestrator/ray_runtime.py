"""Starting or joining Ray, and checking the CPU/GPU budget before anything waits on it."""
from __future__ import annotations

import os

from orchestrator.config import ExperimentConfig


class ResourceError(RuntimeError):
    pass


def init_ray(address: str | None = None, num_cpus: int | None = None,
             dashboard_host: str = "127.0.0.1", log=print) -> dict:
    """Join the cluster at ``address`` / $RAY_ADDRESS, else start a local Ray with the
    dashboard on loopback (Tune's trial clean-up needs the dashboard)."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS")
    env_vars = {"TOKENIZERS_PARALLELISM": "false"}
    if address:
        ctx = ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True)
    else:
        # Pin the GCS port and tell every worker where it is: Ray Train's placement-group
        # cleaner finds "its" cluster by auto-detection, which fails (and the next trial hangs)
        # when another Ray instance runs on the same machine.
        from ray._private.services import get_node_ip_address

        port = _free_port()
        env_vars["RAY_ADDRESS"] = f"{get_node_ip_address()}:{port}"
        old = os.environ.get("RAY_GCS_SERVER_PORT")
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        try:
            ctx = ray.init(num_cpus=num_cpus, include_dashboard=True,
                           dashboard_host=dashboard_host, runtime_env={"env_vars": env_vars})
        finally:
            if old is None:
                os.environ.pop("RAY_GCS_SERVER_PORT", None)
            else:
                os.environ["RAY_GCS_SERVER_PORT"] = old
    url = getattr(ctx, "dashboard_url", None)
    if url:
        log(f"[ray] dashboard: http://{url}")
    return ray.cluster_resources()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_budget(cfg: ExperimentConfig, resources: dict) -> None:
    """Trials, their Train workers and teacher actors must fit, or Ray waits forever."""
    cpus = float(resources.get("CPU", 0))
    s, t, p = cfg.search, cfg.train, cfg.pool
    per_trial = s.trial_cpus + max(t.num_workers * t.cpus_per_worker,
                                   p.num_actors * p.cpus_per_actor)
    need = s.max_concurrent * per_trial
    if need > cpus + 1e-9:
        raise ResourceError(
            f"the search needs {need:g} CPUs ({s.max_concurrent} concurrent trial(s) x "
            f"({s.trial_cpus:g} trial + max({t.num_workers} workers x {t.cpus_per_worker:g} CPU, "
            f"{p.num_actors} teacher actors x {p.cpus_per_actor:g} CPU))) but the cluster has "
            f"{cpus:g}: lower search.max_concurrent, train.cpus_per_worker or pool.cpus_per_actor")
    if t.use_gpu and resources.get("GPU", 0) < 1:
        raise ResourceError("train.use_gpu=true but the cluster has no 'GPU' resource; "
                            "set train.use_gpu=false to train students on CPU")
    if p.gpus_per_actor > 0 and resources.get("GPU", 0) < p.gpus_per_actor:
        raise ResourceError("pool.gpus_per_actor > 0 but the cluster has no 'GPU' resource for "
                            "teacher actors; set pool.gpus_per_actor=0 to run teachers on CPU")
    for name, amount in p.resources_per_actor.items():
        if resources.get(name, 0) < amount:
            raise ResourceError(f"no {name!r} resource in the cluster for teacher actors "
                                f"(need {amount:g}); drop pool.resources_per_actor or add nodes")
