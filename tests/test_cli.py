"""The `fullchain` console script: help at every level, exit 2 with one line on bad usage, the closest command
named on a typo, and `runs` over real run folders. Run as the installed script (a subprocess, as users run it)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import COMMANDS

BIN = Path(sys.executable).parent / "fullchain"


def fullchain(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed script itself (what users run), never a stand-in."""
    exe = str(BIN) if BIN.exists() else shutil.which("fullchain")
    assert exe, "the `fullchain` script is not installed: `make install` (pip install -e .) installs it"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd or Path(__file__).parents[1])


def test_installed_as_a_console_script():
    assert BIN.exists() or shutil.which("fullchain"), "pip install -e . installs the `fullchain` script"


def test_top_level_help_lists_every_command():
    r = fullchain("--help")
    assert r.returncode == 0
    for name, c in COMMANDS.items():
        assert name in r.stdout and c.help.split(":")[0][:30] in r.stdout


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_every_command_has_its_own_help(cmd):
    r = fullchain(cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert f"usage: fullchain {cmd}" in r.stdout
    if cmd in ("demo", "data", "pretrain", "finetune", "eval", "serve", "agent"):  # the drivers' shared flags
        for flag in ("--config", "--set", "--run-dir", "--input"):
            assert flag in r.stdout, (cmd, flag)


@pytest.mark.parametrize("typo, near", [("finetun", "finetune"), ("serv", "serve"), ("modles", "models"),
                                        ("evl", "eval")])
def test_a_typo_names_the_closest_command_and_exits_2(typo, near):
    r = fullchain(typo)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"fullchain {near}" in lines[0] and repr(typo) in lines[0]


def test_no_command_prints_help_and_exits_2():
    r = fullchain()
    assert r.returncode == 2 and "<command>" in r.stdout


def test_bad_flag_of_a_command_exits_2_naming_it():
    r = fullchain("data", "--no-such-flag")
    assert r.returncode == 2 and "--no-such-flag" in r.stderr
    r = fullchain("finetune", "--set", "finetune.no_such_key=1")
    assert r.returncode == 2 and "no_such_key" in r.stderr and "Traceback" not in r.stderr


def test_runs_lists_run_folders_with_stage_status(tmp_path):
    run = tmp_path / "demo"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"run": "demo", "stages": {
        "data": {"status": "complete", "seconds": 12.5}, "pretrain": {"status": "failed", "seconds": 3.0}}}))
    (tmp_path / "not-a-run").mkdir()
    r = fullchain("runs", "--root", str(tmp_path))
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["demo\tdata:complete(12s)  pretrain:failed(3s)"]
    r = fullchain("runs", "--root", str(tmp_path), "--json")
    got = json.loads(r.stdout)
    assert got["run"] == "demo" and got["stages"]["pretrain"]["status"] == "failed"
    r = fullchain("runs", "--root", str(tmp_path / "missing"))
    assert r.returncode == 2 and "--root" in r.stderr


def test_python_m_jobs_keeps_working():
    r = subprocess.run([sys.executable, "-m", "jobs.data", "--help"], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).parents[1])
    assert r.returncode == 0 and "usage: python -m jobs.data" in r.stdout
