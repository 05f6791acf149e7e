"""`connect()`: an embedded local Ray on loopback unless RAY_ADDRESS names a cluster."""
from __future__ import annotations

import logging
import os
import tempfile

from cluster.env import REPO_ROOT, apply_local_ray_env, settings

log = logging.getLogger(__name__)
NAMESPACE = "fullchain"
# Paths never shipped with `ray job submit --working-dir .`: venv, run outputs, VCS.
WORKING_DIR_EXCLUDES = [".venv/", "runs/", ".git/", "**/__pycache__/", ".pytest_cache/", "*.egg-info/"]


def runtime_env(working_dir: str | None = None, env_vars: dict[str, str] | None = None) -> dict:
    """The runtime env of a fullchain job: the same one `ray job submit --working-dir .` builds.

    Data and storage roots travel as env vars so a job driver running from an uploaded copy of the
    working dir still finds them.
    """
    s = settings()
    env = dict(env_vars or {})
    if s.data_root:
        env.setdefault("FULLCHAIN_DATA_ROOT", s.data_root)
    if s.storage:
        env.setdefault("FULLCHAIN_STORAGE", s.storage)
    renv: dict = {"env_vars": env}
    if working_dir:
        renv["working_dir"] = working_dir
        renv["excludes"] = list(WORKING_DIR_EXCLUDES)
    return renv


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _embedded_num_cpus() -> int:
    s = settings()
    if s.num_cpus:
        return s.num_cpus
    # Logical CPUs > physical: trainer workers, a Serve replica, eval workers and Ray Data tasks
    # must coexist on a 2-core laptop/CI box; they are mostly idle while another stage runs.
    return max(8, (os.cpu_count() or 2) * 2)


_EMBEDDED = False  # this process started the embedded local Ray (whose CPU count is oversubscribed)


def compute_cpus() -> int:
    """Cores the connected cluster can compute on. The embedded Ray advertises more logical CPUs than the
    machine has (so stages' actors coexist), so there it is this machine's cores; a joined cluster's own CPU
    resource otherwise. Call after `connect()`."""
    import ray

    if _EMBEDDED:
        return os.cpu_count() or 1
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def connect(num_cpus: int | None = None, log_to_driver: bool = True) -> dict:
    """Connect to Ray once per process and return `cluster_info()`.

    - Already connected (a test fixture, a job driver): reuse it.
    - RAY_ADDRESS set (a `ray job submit` driver, or `ray up`/KubeRay): join that cluster.
    - Otherwise: start an embedded local Ray bound to 127.0.0.1.
    """
    s = settings()
    if not s.ray_address:
        apply_local_ray_env()
    import ray

    if ray.is_initialized():
        return cluster_info()
    address = s.ray_address
    if address and address.startswith("http"):
        # An http:// address is the job-submission endpoint; a driver joins the cluster itself.
        address = "auto"
    if address:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=log_to_driver,
                 runtime_env=runtime_env())
    else:
        global _EMBEDDED
        _EMBEDDED = True
        apply_local_ray_env()
        tmp = s.ray_tmp or os.path.join(tempfile.gettempdir(), "fullchain-ray")
        os.makedirs(tmp, exist_ok=True)
        ray.init(
            address="local",                 # never attach to a stray `ray start` head by accident
            num_cpus=num_cpus or _embedded_num_cpus(),
            _node_ip_address="127.0.0.1",
            # Ray Train v2 polls the State API, which lives in the dashboard: keep it, on loopback only.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=free_port(),
            namespace=NAMESPACE,
            _temp_dir=tmp,
            log_to_driver=log_to_driver,
            runtime_env=runtime_env(),
        )
    _quiet_data_progress()
    info = cluster_info()
    log.info("ray connected: %s", info)
    return info


def _quiet_data_progress() -> None:
    """Ray Data's tqdm bars flood non-interactive logs (CI, `ray job` logs); stages print their own progress."""
    import sys

    if not sys.stdout.isatty():
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False


def cluster_info() -> dict:
    import ray

    ctx = ray.get_runtime_context()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "address": ctx.gcs_address,
        "nodes": len(nodes),
        "node_ips": sorted({n["NodeManagerAddress"] for n in nodes}),
        "resources": ray.cluster_resources(),
    }


def shutdown() -> None:
    import ray

    global _EMBEDDED
    if ray.is_initialized():
        ray.shutdown()
    _EMBEDDED = False


__all__ = ["connect", "shutdown", "runtime_env", "cluster_info", "compute_cpus", "REPO_ROOT", "WORKING_DIR_EXCLUDES"]
