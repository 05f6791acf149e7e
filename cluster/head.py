"""`python -m cluster.head start|stop|status`: a local Ray head on loopback for `ray job submit`.

Ray 2.60 needs RAY_AUTH_MODE=disabled on both sides (CLI and head) and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
to bind 127.0.0.1; the head also exports FULLCHAIN_DATA_ROOT / FULLCHAIN_STORAGE so job drivers, which run
from an uploaded copy of the working dir, still find the shared data and write runs into this checkout.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from cluster.connect import free_port
from cluster.env import REPO_ROOT, local_ray_env
from cluster.storage import data_root, storage_root

DASHBOARD_PORT = 8265
GCS_PORT = 6380
# The head's own temp dir: every process of this head names it on its command line, which is how `stop` finds
# exactly those processes (by pid) and leaves any other Ray on the machine alone. Short: Ray puts unix
# sockets under it, and socket paths are limited to 107 bytes.
HEAD_TEMP_DIR = "/tmp/fullchain-head"


def head_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(local_ray_env())
    # job drivers run `python` from the head's PATH: make it this interpreter (the venv), not the system one
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("FULLCHAIN_DATA_ROOT", str(data_root()))
    env.setdefault("FULLCHAIN_STORAGE", storage_root())
    return env


def ray_cli() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    return exe if os.path.exists(exe) else (shutil.which("ray") or "ray")


def start(port: int = GCS_PORT, dashboard_port: int = DASHBOARD_PORT, num_cpus: int | None = None,
          temp_dir: str = HEAD_TEMP_DIR) -> str:
    cmd = [ray_cli(), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
           f"--num-cpus={num_cpus or max(8, (os.cpu_count() or 2) * 2)}", "--disable-usage-stats",
           # the agent's fixed default port 52365 is also taken by any embedded Ray on this machine (a test
           # session, a demo); a second agent that cannot bind it disables its HTTP service and every
           # `ray job submit` then fails with "No available agent to submit job"
           f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp_dir}"]
    subprocess.run(cmd, check=True, env=head_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    wait_for_job_agent(f"127.0.0.1:{port}")
    address = f"http://127.0.0.1:{dashboard_port}"
    print(f"\nhead up. Submit jobs with:\n  export RAY_ADDRESS={address} RAY_AUTH_MODE=disabled\n"
          "  ray job submit --working-dir . -- python -m jobs.pipeline --config configs/demo.yaml")
    return address


def wait_for_job_agent(gcs_address: str, timeout_s: float = 180.0) -> None:
    """Block until the head's dashboard agent has registered. `ray start` returns before it has, and a
    `ray job submit` that arrives first fails after 10 s with "No available agent to submit job" (seen on
    a 2-core CI machine, where the agent needs longer than that to come up)."""
    from ray._private import ray_constants
    from ray._raylet import GcsClient
    from ray.dashboard.consts import DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX

    client = GcsClient(address=gcs_address)
    deadline = time.monotonic() + timeout_s
    last_error = "none"
    while True:
        try:
            head_id = client.internal_kv_get(ray_constants.KV_HEAD_NODE_ID_KEY,
                                             namespace=ray_constants.KV_NAMESPACE_JOB, timeout=5)
            if head_id and client.internal_kv_get(f"{DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX}{head_id.decode()}".encode(),
                                                  namespace=ray_constants.KV_NAMESPACE_DASHBOARD, timeout=5):
                return
        except Exception as e:  # noqa: BLE001 - GCS still starting: polled until the deadline, then reported
            last_error = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray head at {gcs_address} started but its dashboard agent did not register "
                               f"within {timeout_s:.0f}s (last GCS error: {last_error}); see "
                               "<temp-dir>/session_latest/logs/dashboard_agent.log")
        time.sleep(0.5)


def stop(temp_dir: str = HEAD_TEMP_DIR) -> None:
    """Stop the head started with `temp_dir`: only its processes, by pid (`ray stop` would also kill any
    other Ray on this machine, e.g. an embedded one in a test session or another user's)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in (p.info["cmdline"] or [])) and p.pid != os.getpid():
                # the dashboard agent and the dashboard's module processes do not name the temp dir: take
                # every descendant of a process that does
                for q in [p, *p.children(recursive=True)]:
                    found[q.pid] = q
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    procs = list(found.values())
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cluster.head")
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--port", type=int, default=GCS_PORT)
    p.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT)
    p.add_argument("--num-cpus", type=int, default=None)
    a = p.parse_args(argv)
    if a.action == "start":
        start(a.port, a.dashboard_port, a.num_cpus)
    else:
        stop()


if __name__ == "__main__":
    main()
