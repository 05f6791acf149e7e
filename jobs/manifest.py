"""`runs/<name>/manifest.json`: per stage status, outputs, metrics, seconds, config.

Stages hand each other references through it. A stage is skipped on re-run when it is complete and its
config and its inputs' fingerprints are unchanged; otherwise it and everything after it run again.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "manifest.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)  # atomic: a crash never leaves a half-written manifest

    def stage(self, name: str) -> dict:
        return self.data["stages"].get(name, {})

    def is_complete(self, name: str, fp: str) -> bool:
        s = self.stage(name)
        return s.get("status") == "complete" and s.get("fingerprint") == fp

    def outputs(self, name: str) -> dict:
        s = self.stage(name)
        if s.get("status") != "complete":
            raise RuntimeError(f"stage {name!r} has not completed in {self.run_dir} (status: "
                               f"{s.get('status', 'never run')}); run it first or pass --input {name}.KEY=PATH")
        return s["outputs"]

    def start(self, name: str, config: dict, fp: str) -> None:
        self.data["stages"][name] = {"status": "running", "config": config, "fingerprint": fp,
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()

    def complete(self, name: str, outputs: dict, metrics: dict, seconds: float) -> None:
        s = self.data["stages"][name]
        s.update(status="complete", outputs=outputs, metrics=metrics, seconds=round(seconds, 2),
                 finished=time.strftime("%Y-%m-%dT%H:%M:%S") + f".{time.time_ns() % 10**9:09d}")
        self.save()

    def fail(self, name: str, error: str, seconds: float) -> None:
        s = self.data["stages"].setdefault(name, {})
        s.update(status="failed", error=error, seconds=round(seconds, 2))
        self.save()

    def stopped(self, name: str, reason: str, seconds: float) -> None:
        """A stage stopped on request (stop file, SIGTERM) with a checkpoint: the next run resumes it."""
        s = self.data["stages"].setdefault(name, {})
        s.update(status="stopped", reason=reason, seconds=round(seconds, 2))
        self.save()

    def set_external(self, name: str, outputs: dict) -> None:
        """Outputs supplied from outside (a user's own HF model or JSONL) instead of a stage of this run."""
        self.data["stages"][name] = {"status": "complete", "outputs": outputs, "metrics": {}, "seconds": 0.0,
                                     "config": {"external": True}, "fingerprint": fingerprint(outputs),
                                     "finished": fingerprint(outputs)}
        self.save()
