"""Shared fixtures: one session-scoped local Ray (real, on loopback) for every test that needs Ray.

Whatever this session starts is stopped when it ends, however it ends (passed, failed, Ctrl-C, SIGTERM):
- on Linux the session is a child subreaper, so a process it started stays its descendant even after its
  parent exits: the daemons of a `ray start --head` (`cluster.head`), the Ray of a subprocess that was killed;
- SIGTERM is turned into KeyboardInterrupt (as Ctrl-C), so pytest unwinds and every fixture's `finally` runs;
  Ray's own handlers (`ray.init` installs `sys.exit` on SIGTERM, which pytest would record as one failed test
  and go on, and its core worker a C-level one) are replaced again after every fixture setup and test call, and
  a SIGTERM that lands inside `ray.init` is still an interruption;
- at exit, every process still descended from this one is terminated by pid (`reap_descendants`). A second
  SIGTERM skips the unwinding: reap and exit at once. Nothing else on the machine is touched (never `ray stop`).
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Triton kernels run through the interpreter on CPU, checked against their torch references. Triton decides
# this when a kernel is decorated, so it must be set before anything imports `kernels`.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass
sys.path.insert(0, str(REPO))
import cluster  # noqa: E402,F401 - before ray is imported: loopback-only local Ray
# Tests run on CPU; a quiet Ray keeps CI logs readable.
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


# ------------------------------------------------------------------------ what this session starts, it stops
SESSION_PID = os.getpid()
_signalled = False


def _become_subreaper() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_descendants(grace_s: float = 5.0, timeout_s: float = 10.0) -> list[str]:
    """Stop every process descended from this session, by pid: `grace_s` to exit on their own (Ray's dashboard
    modules follow their parent within ~2 s of `ray.shutdown()`), then terminate, then kill. Returns those that
    had to be stopped."""
    if os.getpid() != SESSION_PID:  # a forked child runs atexit too: not its job
        return []
    import psutil

    procs = psutil.Process().children(recursive=True)  # zombies included: waiting for them reaps them
    _, alive = psutil.wait_procs(procs, timeout=grace_s) if grace_s > 0 else ([], procs)
    names = []
    for p in alive:
        try:
            names.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)
    return names


def kill_tree(pid: int) -> None:
    """Kill a process we started and everything below it, by pid (for a subprocess a test gives up on)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _at_exit() -> None:
    left = reap_descendants()
    if left and not _signalled:  # after a normal run everything should have stopped itself
        print(f"\nconftest: stopped {len(left)} process(es) the session left running: {'; '.join(left[:12])}",
              file=sys.stderr)


def _on_sigterm(signum, frame):
    global _signalled
    if _signalled:  # a second signal: no more unwinding
        reap_descendants(grace_s=0, timeout_s=3.0)
        os._exit(128 + signum)
    _signalled = True
    raise KeyboardInterrupt(f"signal {signum}")


def _own_sigterm() -> None:
    # unconditionally: Ray's core worker also installs a C-level SIGTERM handler (it aborts the process), which
    # signal.getsignal() does not see; signal.signal() puts ours back at the OS level
    signal.signal(signal.SIGTERM, _on_sigterm)


def pytest_configure(config):
    # a hook, not module code: `from conftest import ...` / `from tests.conftest import ...` in a test module
    # import this file again under another name, and must not install anything twice
    _become_subreaper()
    atexit.register(_at_exit)
    _own_sigterm()


def _as_interrupt(e: SystemExit) -> BaseException:
    """Ray's SIGTERM handler (`sys.exit(15)`), if a signal lands while it is installed (inside `ray.init`): an
    interruption of the session, as ours would have made it, not one failed test."""
    global _signalled
    if e.code != signal.SIGTERM:
        return e
    _signalled = True
    return KeyboardInterrupt(f"signal {signal.SIGTERM} (through Ray's handler)")


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    try:
        return (yield)
    except SystemExit as e:
        raise _as_interrupt(e) from None
    finally:
        _own_sigterm()  # ray.init (cluster.connect) installs its own SIGTERM handler


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    _own_sigterm()
    try:
        return (yield)
    except SystemExit as e:
        raise _as_interrupt(e) from None
    finally:
        _own_sigterm()  # a test body may have connected to Ray itself


@pytest.fixture(scope="session")
def ray_session():
    import cluster

    try:
        info = cluster.connect()
        _own_sigterm()
        yield info
    finally:  # also when connect() failed half-way or the session was interrupted
        cluster.shutdown()


@pytest.fixture(scope="session")
def tiny_run(ray_session, tmp_path_factory) -> Path:
    """The whole chain on configs/tiny.yaml, once per session (the pipeline tests and the console's read it; a test
    that re-runs stages copies it first). Its Serve app is stopped once the run is written."""
    from jobs.config import load_config
    from jobs.manifest import Manifest
    from jobs.pipeline import stop_serving
    from jobs.runner import run_stages
    from jobs.summary import write_summary

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = load_config(str(REPO / "configs" / "tiny.yaml"))
    try:
        write_summary(run_stages(cfg, run_dir))
    finally:  # the Serve app goes also when a later stage failed
        stop_serving(Manifest(run_dir))
    return run_dir


@pytest.fixture(scope="module")
def tool_actors(ray_session):
    """The agent's two tool actors, killed when the module is done."""
    import ray

    from actors.agent.actor import start_tools

    actors = start_tools(["calculator", "python"])
    try:
        yield actors
    finally:
        for a in actors.values():
            ray.kill(a)


@pytest.fixture(scope="session")
def data_root() -> Path:
    import cluster

    return cluster.data_root()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct from the registry, imported once for the session (fp32: the parity reference)."""
    from actors.model.registry import import_model

    name = "smollm2-135m-instruct"
    return import_model(name, tmp_path_factory.mktemp("models") / f"{name}-float32")


@pytest.fixture(scope="session")
def debug_smollm2(smollm2, tmp_path_factory) -> Path:
    """The debug shape (random init, seed 0) with SmolLM2's real tokenizer and chat template, as an HF folder:
    fast to train and score, loadable by `transformers`, peft and lm-eval. Tests only read it."""
    import torch

    from actors.model import Transformer, get_config, save_hf
    from actors.model.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2)
    torch.manual_seed(0)
    cfg = get_config("debug", vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return save_hf(Transformer(cfg), tmp_path_factory.mktemp("debug-smollm2") / "hf", tokenizer_dir=smollm2)
