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

from cluster.env import REPO_ROOT, local_ray_env
from cluster.storage import data_root, storage_root

DASHBOARD_PORT = 8265
GCS_PORT = 6380


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
          temp_dir: str | None = None) -> str:
    cmd = [ray_cli(), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
           f"--num-cpus={num_cpus or max(8, (os.cpu_count() or 2) * 2)}", "--disable-usage-stats"]
    if temp_dir:
        cmd.append(f"--temp-dir={temp_dir}")
    subprocess.run(cmd, check=True, env=head_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard_port}"
    print(f"\nhead up. Submit jobs with:\n  export RAY_ADDRESS={address} RAY_AUTH_MODE=disabled\n"
          "  ray job submit --working-dir . -- python -m jobs.pipeline --config configs/demo.yaml")
    return address


def stop(temp_dir: str | None = None) -> None:
    """Stop the head. With `temp_dir`, only the Ray processes of that head are stopped (`ray stop` would
    also kill any other Ray on this machine, e.g. an embedded one in a test session)."""
    if temp_dir is None:
        subprocess.run([ray_cli(), "stop", "--force"], check=False, env=head_env())
        return
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in (p.info["cmdline"] or [])) and p.pid != os.getpid():
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
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
