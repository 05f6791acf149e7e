"""A per-document time limit for extractors: the call runs in a child process that is killed when it overruns.

A pathological page can keep lxml or PDFium busy for minutes, and a crafted PDF can crash PDFium outright; in
the worker's own process either would take the whole batch down. One child per worker process (started on the
first call, ~1 s, and reused) runs `fn(*args)`; past `timeout_s` it is killed and the call raises
`ExtractTimeout`; a child that dies raises `ExtractCrash`. The next call starts a fresh child. datatrove's
extractors do the same (ExtractorSandbox).
"""
from __future__ import annotations

import atexit
import pickle
import select
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

_LEN = struct.Struct("<Q")


class ExtractTimeout(RuntimeError):  # not TimeoutError: that is an OSError, which means a dead pipe here
    pass


class ExtractCrash(RuntimeError):
    pass


def _read_msg(f) -> Any:
    head = f.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError
    n = _LEN.unpack(head)[0]
    body = f.read(n)
    if len(body) < n:
        raise EOFError
    return pickle.loads(body)


def _write_msg(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_LEN.pack(len(data)) + data)
    f.flush()


def _serve() -> None:
    """The child's loop: (fn, args) in on stdin, (ok, value) out on stdout, until stdin closes."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a print inside an extractor must not corrupt the message stream
    while True:
        try:
            fn, args = _read_msg(inp)
        except EOFError:
            return
        try:
            _write_msg(out, (True, fn(*args)))
        except Exception as e:  # noqa: BLE001 - the error goes back to the caller, typed and with its message
            _write_msg(out, (False, (type(e).__name__, str(e), traceback.format_exc(limit=3))))


class Sandbox:
    """A child Python process (a fresh interpreter running `_serve`, importing only what the calls need, so it
    works under any parent, a Ray worker included)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None

    def _start(self) -> None:
        # the parent's import path, so the child finds this package wherever the parent did (a Ray worker's
        # working dir, an editable install)
        boot = (f"import sys; sys.path[:0] = {[p for p in sys.path if p]!r}; "
                "from actors.data.sandbox import _serve; _serve()")
        self._proc = subprocess.Popen([sys.executable, "-c", boot], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
            for f in (self._proc.stdin, self._proc.stdout):
                f.close()
        self._proc = None

    def __call__(self, fn: Callable, *args) -> Any:
        """fn(*args) in the child. Exceptions raised by fn come back as ValueError(`Type: message`)."""
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._start()
        proc = self._proc
        try:
            _write_msg(proc.stdin, (fn, args))
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout_s)
            if ready:
                ok, value = _read_msg(proc.stdout)
        except (EOFError, OSError):
            code = proc.wait(5) if proc.poll() is None else proc.returncode
            self.close()
            raise ExtractCrash(f"the extractor process died (exit code {code})") from None
        if not ready:
            self.close()
            raise ExtractTimeout(f"no result within {self.timeout_s:g} s (data.extract_timeout_s)")
        if not ok:
            name, msg, _ = value
            raise ValueError(f"{name}: {msg}")
        return value


_SANDBOXES: dict[float, Sandbox] = {}


def sandbox(timeout_s: float) -> Sandbox:
    """This process's sandbox for `timeout_s` (one child per worker process, reused across batches)."""
    sb = _SANDBOXES.get(timeout_s)
    if sb is None:
        sb = _SANDBOXES[timeout_s] = Sandbox(timeout_s)
    return sb


@atexit.register
def close_all() -> None:
    """Stop this process's sandbox children (at exit; tests call it to leave nothing running)."""
    for sb in _SANDBOXES.values():
        sb.close()
