"""Starting or joining Ray, and checking the CPU/GPU budget before anything waits on it.

On a cluster (``ray job submit`` sets $RAY_ADDRESS; ``ray submit`` runs the driver on the head,
next to the cluster ``ray start`` recorded there) the checks here run before the first stage that
could wait: a missing resource, a storage path some node cannot see, or a
tracking server it cannot reach would otherwise show up as a search that never starts."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

from orchestrator.config import ExperimentConfig, one_teacher
from orchestrator.runtime.redact import redact

WORK_ROOT_ENV = "DISTILLRAY_WORK_ROOT"  # cache/artifact root (shared storage on clusters)
STORAGE_PATH_ENV = "DISTILLRAY_STORAGE_PATH"  # Tune results dir or URI (s3://, gs://, NFS path)
AUTOSCALER_CONFIG_ENV = "DISTILLRAY_AUTOSCALER_CONFIG"  # "none" to ignore the autoscaler
CPU_TEACHERS_HINT = ("--cpu-teachers (same as --set pool.gpus_per_actor=0 "
                     "--set 'pool.resources_per_actor={}')")


class ResourceError(RuntimeError):
    pass


class StorageError(RuntimeError):
    """A storage path or tracking store the search needs is unreachable from some node."""


# Ray Train settings every worker gets unless the environment sets them. The Train controller
# checks its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's default 2 s), and only then
# sees a run end: with one short trial after another, that wait is paid at every trial.
# Train also patches print() in its workers to log each line, and then prints it as well
# (Ray wraps the workers' stdout), so every progress line reached the driver twice: not patched.
TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
# On a local Ray (started here, one machine) no node can be preempted: no watcher actor per run
LOCAL_TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def train_env(local: bool) -> dict[str, str]:
    """The Ray Train environment for the workers: the defaults above, where this process's
    environment does not set the variable (a user's value always wins)."""
    defaults = {**TRAIN_ENV_DEFAULTS, **(LOCAL_TRAIN_ENV_DEFAULTS if local else {})}
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def init_ray(address: str | None = None, num_cpus: int | None = None,
             dashboard_host: str = "127.0.0.1", log=print) -> dict:
    """Join the cluster at ``address`` / $RAY_ADDRESS (``ray job submit`` sets it), else the live
    cluster ``ray start`` recorded on this machine (what ``ray submit`` runs next to), else start
    a local Ray with the dashboard on loopback (Tune's trial clean-up needs the dashboard).
    ``address="local"`` or ``num_cpus`` always start a private local Ray."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS")
    if not address and num_cpus is None:
        address = _recorded_cluster()
    if address == "local":
        address = None
    env_vars = {"TOKENIZERS_PARALLELISM": "false", **train_env(local=not address)}
    # progress bars off in a log file (progress.quiet_library_bars): the workers' too, on any node
    env_vars.update({k: os.environ[k] for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")
                     if k in os.environ})
    if address:
        gcs = _gcs_address(address)
        if gcs:  # as below: Train's placement-group cleaner must find this cluster, not another
            env_vars["RAY_ADDRESS"] = gcs
        ctx = ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True)
        global _JOINED
        _JOINED = True
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = ray.cluster_resources()
        log(f"[ray] joined the cluster at {gcs or address}: {len(nodes)} node(s), "
            + ", ".join(f"{k} {v:g}" for k, v in sorted(res.items())
                        if not k.startswith(("node:", "memory", "object_store_memory"))))
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
            # address="local": never join a cluster some `ray start` recorded on this machine
            ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
                           dashboard_host=dashboard_host, runtime_env={"env_vars": env_vars})
        finally:
            if old is None:
                os.environ.pop("RAY_GCS_SERVER_PORT", None)
            else:
                os.environ["RAY_GCS_SERVER_PORT"] = old
    url = getattr(ctx, "dashboard_url", None)
    if url:
        hint = ("  (from your machine: `ray dashboard cluster.yaml`, then http://127.0.0.1:8265)"
                if address and url.startswith(("127.0.0.1", "localhost")) else "")
        if not hint and (Path.home() / ".ray" / "auth_token").is_file():
            hint = "  (it asks for Ray's token: `ray get-auth-token`)"
        log(f"[ray] dashboard: http://{url}{hint}")
    return ray.cluster_resources()


_JOINED = False  # init_ray joined an existing cluster (its autoscaler config may apply)


def _recorded_cluster() -> str | None:
    """The GCS address ``ray start`` recorded on this machine, if that cluster is alive."""
    import socket

    try:
        from ray._private.utils import read_ray_address
        from ray._private.services import parse_address

        addr = read_ray_address()
        host, port = parse_address(addr) if addr else (None, None)
        if not host:
            return None
        with socket.create_connection((host, int(port)), timeout=1.0):
            return addr
    except Exception:  # noqa: BLE001 - absent, stale or unreadable: start a local Ray
        return None


def _gcs_address(address: str) -> str | None:
    """host:port of the GCS for ``address`` ("auto", "host:port"); None for ray:// or unknown."""
    if address.startswith(("ray://", "http://", "https://")):
        return None
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(address)
    except Exception:  # noqa: BLE001 - only a hint for workers; ray.init reports real errors
        return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def autoscaler_node_types() -> list[tuple[str, dict, int]]:
    """Worker node types the cluster's autoscaler may still start: (name, resources, max count;
    -1 for unbounded). From the GCS (autoscaler v2), else the launcher's
    ``~/ray_bootstrap_config.yaml`` on the head (only when this process joined a cluster, as
    under ``ray submit``). ``$DISTILLRAY_AUTOSCALER_CONFIG``: another file, or ``none``."""
    where = os.environ.get(AUTOSCALER_CONFIG_ENV, "")
    if where.lower() == "none":
        return []
    out: list[tuple[str, dict, int]] = []
    try:
        from ray._private.state import state

        cc = state.get_cluster_config()
        for g in (cc.node_group_configs if cc is not None else []):
            if g.max_count != 0 and g.resources:
                out.append((g.name, {k: float(v) for k, v in g.resources.items()}, int(g.max_count)))
    except Exception:  # noqa: BLE001 - private API; the YAML below is the fallback
        out = []
    if out:
        return out
    path = Path(where).expanduser() if where else Path("~/ray_bootstrap_config.yaml").expanduser()
    if not where and not _JOINED or not path.is_file():
        return []
    try:
        import yaml

        conf = yaml.safe_load(path.read_text()) or {}
    except Exception:  # noqa: BLE001
        return []
    head = conf.get("head_node_type")
    for name, t in (conf.get("available_node_types") or {}).items():
        n = int(t.get("max_workers", conf.get("max_workers", 0)) or 0)
        if name != head and n > 0 and t.get("resources"):
            out.append((name, {k: float(v) for k, v in t["resources"].items()}, n))
    return out


def _node_capacities(resources: dict) -> tuple[list[tuple[str, dict]], list[tuple[str, dict, int]]]:
    """(alive nodes as (label, total resources), autoscalable node types)."""
    try:
        import ray

        if ray.is_initialized():
            nodes = [(f"node {n.get('NodeManagerAddress', '?')}", dict(n.get("Resources", {})))
                     for n in ray.nodes() if n.get("Alive")]
            return nodes, autoscaler_node_types()
    except Exception:  # noqa: BLE001
        pass
    return [("cluster", dict(resources))], []


def trial_resources(cfg: ExperimentConfig) -> dict[str, float]:
    """What each Tune trial holds: a token CPU share while Ray Train's workers hold the training
    resources, or, in local mode (``train.num_workers: 0``), the one worker's share itself."""
    t = cfg.train
    if t.num_workers > 0:
        return {"CPU": cfg.search.trial_cpus}
    return {"CPU": t.cpus_per_worker, **({"GPU": 1.0} if t.use_gpu else {})}


def check_budget(cfg: ExperimentConfig, resources: dict, log=None,
                 nodes: list[tuple[str, dict]] | None = None,
                 node_types: list[tuple[str, dict, int]] | None = None) -> None:
    """Trials, their Train workers and teacher actors must fit, or Ray waits forever. Counts what
    the nodes have now plus what the autoscaler may add (see :func:`autoscaler_node_types`).
    ``nodes`` ((label, resources) per alive node) and ``node_types`` default to the cluster's."""
    if nodes is None or node_types is None:
        found_nodes, found_types = _node_capacities(resources)
        nodes = found_nodes if nodes is None else nodes
        node_types = found_types if node_types is None else node_types
    types = node_types
    potential = {k: float(v) for k, v in resources.items()}
    for _, res, n in types:
        for k, v in res.items():
            potential[k] = potential.get(k, 0.0) + v * (n if n > 0 else 1e9)
    shapes = [(label, res) for label, res in nodes] + [(f"node type {name} (autoscaler)", res)
                                                       for name, res, _ in types]
    cpus = potential.get("CPU", 0.0)
    s, t, p = cfg.search, cfg.train, cfg.pool
    held = trial_resources(cfg)["CPU"]  # the trial's process (the training share in local mode)
    workers, actors = t.num_workers * t.cpus_per_worker, p.num_actors * p.cpus_per_actor
    trial = (f"{held:g} trial + {t.num_workers} workers x {t.cpus_per_worker:g} CPU"
             if t.num_workers else f"{held:g} CPU, training in the trial")
    if one_teacher(cfg):
        # one teacher pool for the whole search, beside the concurrent trials' workers
        need = actors + s.max_concurrent * (held + workers)
        shape = (f"{p.num_actors} teacher actors x {p.cpus_per_actor:g} CPU + "
                 f"{s.max_concurrent} concurrent trial(s) x ({trial})")
    else:
        # a pool per trial (one per teacher, in turn), gone before the workers start (labels
        # on demand need one teacher: config validation refuses them here)
        need = s.max_concurrent * (held + max(workers, actors))
        pools = f"{p.num_actors} teacher actors x {p.cpus_per_actor:g} CPU"
        shape = (f"{s.max_concurrent} concurrent trial(s) x ("
                 + (f"{held:g} trial + max({t.num_workers} workers x {t.cpus_per_worker:g} CPU, "
                    f"{pools}))" if t.num_workers else
                    f"{held:g} CPU, training in the trial, + {pools})"))
    if need > cpus + 1e-9:
        raise ResourceError(
            f"the search needs {need:g} CPUs ({shape}) but the cluster has {cpus:g}: lower "
            "search.max_concurrent, train.cpus_per_worker or pool.cpus_per_actor")
    largest_cpu = max((res.get("CPU", 0.0) for _, res in shapes), default=0.0)
    if t.cpus_per_worker > largest_cpu + 1e-9:
        who = "each Train worker" if t.num_workers else "each trial, training in its process,"
        raise ResourceError(
            f"{who} asks for {t.cpus_per_worker:g} CPU (train.cpus_per_worker) but the "
            f"largest node has {largest_cpu:g}: the trials would wait forever; lower "
            "train.cpus_per_worker or add bigger nodes")
    if t.use_gpu and potential.get("GPU", 0) < 1:
        raise ResourceError("train.use_gpu=true but the cluster has no 'GPU' resource; "
                            "set train.use_gpu=false to train students on CPU")

    # teacher actors: every resource they ask for must exist, on one node together
    bundle = {"CPU": float(p.cpus_per_actor), "GPU": float(p.gpus_per_actor),
              **{k: float(v) for k, v in p.resources_per_actor.items()}}
    bundle = {k: v for k, v in bundle.items() if v > 0}
    source = {"CPU": "pool.cpus_per_actor", "GPU": "pool.gpus_per_actor"}
    for r, amount in bundle.items():
        src = source.get(r, "pool.resources_per_actor")
        fix = ("lower pool.num_actors or pool.cpus_per_actor" if r == "CPU" else
               f"start nodes that have it (cluster.yaml: the GPU worker type), or run teachers on "
               f"CPU: {CPU_TEACHERS_HINT}")
        if potential.get(r, 0.0) <= 0:
            raise ResourceError(
                f"teacher actors ask for {amount:g} {r!r} ({src}) but no node in the cluster has "
                f"a {r!r} resource{' and the autoscaler cannot add one' if types else ''}; {fix}")
        if potential[r] + 1e-9 < amount * p.num_actors:
            raise ResourceError(
                f"the teacher pool needs {amount * p.num_actors:g} {r!r} ({p.num_actors} actors x "
                f"{amount:g}, {src}) but the cluster has {potential[r]:g}; lower pool.num_actors "
                f"or {fix}")
        if r != "CPU" and all(res.get(r, 0.0) <= 0 for _, res in nodes) and log:
            log(f"[ray] no node has {r!r} yet: waiting for the autoscaler to add one "
                f"({', '.join(name for name, res, _ in types if res.get(r, 0) > 0)})")
    if bundle and not any(all(res.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())
                          for _, res in shapes):
        want = ", ".join(f"{v:g} {k}" for k, v in bundle.items())
        # the closest: has the special resources (GPU, teacher_gpu) first, then the most of the rest
        best = max(shapes, key=lambda lr: (
            sum(lr[1].get(k, 0.0) >= v for k, v in bundle.items() if k != "CPU"),
            sum(lr[1].get(k, 0.0) >= v for k, v in bundle.items())))
        lacks = ", ".join(f"{k} (has {best[1].get(k, 0.0):g})" for k, v in bundle.items()
                          if best[1].get(k, 0.0) + 1e-9 < v)
        raise ResourceError(
            f"no single node can host a teacher actor ({want}): the closest, {best[0]}, lacks "
            f"{lacks}; give that node more, lower pool.cpus_per_actor, or run teachers on CPU: "
            f"{CPU_TEACHERS_HINT}")


# ---------------------------------------------------------------------------------------------
# storage: reachable at start, and the same files from every node


def env_storage_path() -> str | None:
    """$DISTILLRAY_STORAGE_PATH: Tune storage when neither the preset nor a flag names one."""
    return os.environ.get(STORAGE_PATH_ENV) or None


def check_storage(path: str, what: str = "search.storage_path") -> str:
    """Create ``path`` (a directory or a pyarrow-supported URI such as s3://, gs://) and write a
    probe file there; returns the resolved path. Raises :class:`StorageError` at start rather
    than after the first trial tried to save a checkpoint."""
    name = f".distillray-probe-{uuid.uuid4().hex}"
    if "://" not in path:
        p = Path(path).expanduser().resolve()
        try:
            p.mkdir(parents=True, exist_ok=True)
            (p / name).write_text("ok")
            (p / name).unlink()
        except OSError as e:
            raise StorageError(f"{what} {p} is not writable ({e}); pass a directory every node "
                               f"can write (--storage-path, ${STORAGE_PATH_ENV}) or a URI such "
                               "as s3://bucket/prefix") from None
        return str(p)
    try:
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(path)
        fs.create_dir(root, recursive=True)
        probe = f"{root.rstrip('/')}/{name}"
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except Exception as e:  # noqa: BLE001 - pyarrow raises OSError, ArrowInvalid, ...
        raise StorageError(f"{what} {path} is unreachable ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); check the URI and "
                           "this node's credentials") from None
    return path


def check_shared_paths(paths: dict[str, str], tracking_uri: str | None = None,
                       timeout_s: float = 60.0, log=print) -> None:
    """On a multi-node cluster, every node must see the same ``paths`` (local directories:
    work root with teachers, soft labels and bundles; Tune storage; a sqlite tracking store) and
    reach an http(s) tracking server. One zero-CPU probe task per alive node checks it."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    local = {what: str(Path(p).resolve()) for what, p in paths.items() if p and "://" not in p}
    url = None
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        local["tracking store (sqlite)"] = str(Path(tracking_uri[len("sqlite:///"):]).resolve().parent)
    elif tracking_uri and tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
    token = uuid.uuid4().hex
    probes = {}
    for what, d in local.items():
        Path(d).mkdir(parents=True, exist_ok=True)
        f = Path(d) / f".distillray-shared-{token}"
        f.write_text(token)
        probes[what] = (d, str(f))

    def probe(files: dict, url: str | None):
        import urllib.request

        missing = [what for what, (_, f) in files.items() if not os.path.isfile(f)]
        err = None
        if url:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status != 200:
                        err = f"HTTP {r.status}"
            except Exception as e:  # noqa: BLE001
                err = str(e)
        return missing, err

    task = ray.remote(num_cpus=0, max_retries=0)(probe)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(probes, url) for n in nodes]
    try:
        results = ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        log(f"[ray] warning: could not check within {timeout_s:g}s that every node sees "
            f"{', '.join(local.values()) or url}; continuing")
        for r in refs:
            ray.cancel(r, force=True)
        return
    finally:
        for _, f in probes.values():
            Path(f).unlink(missing_ok=True)
    problems = []
    for n, (missing, err) in zip(nodes, results):
        ip = n.get("NodeManagerAddress", n["NodeID"][:8])
        problems += [f"node {ip} does not see {what} {probes[what][0]}" for what in missing]
        if err:
            problems.append(f"node {ip} cannot reach the MLflow server {redact(tracking_uri)} "
                            f"({redact(err)})")
    if problems:
        raise StorageError(
            "; ".join(problems) + ". On a cluster, put the work root and Tune storage on "
            f"storage every node mounts (NFS/EFS: --work-root / ${WORK_ROOT_ENV}, "
            f"--storage-path / ${STORAGE_PATH_ENV}) or s3:// for storage, and track to an "
            "MLflow server (docs/cluster.md): a sqlite store is for one machine, several "
            "writers over NFS lock or corrupt it")
    log(f"[ray] {len(nodes)} nodes see {', '.join(local.values()) or 'the same paths'}"
        + (f" and reach {redact(tracking_uri)}" if url else ""))
