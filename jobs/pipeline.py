"""`python -m jobs.pipeline --config configs/demo.yaml [--run-dir runs/demo] [--set a.b=c ...]`

Chains data -> pretrain -> finetune -> evaluate -> serve -> agent on the Ray cluster `cluster.connect()`
finds (embedded local Ray by default; the cluster of a `ray job submit`). Completed stages are skipped
on re-run; `runs/<name>/summary.md` is written and printed at the end.
"""
from __future__ import annotations

import sys
import time

from jobs.runner import main_for
from jobs.summary import write_summary


def main(argv: list[str] | None = None, prog: str = "python -m jobs.pipeline") -> int:
    t0 = time.perf_counter()
    manifest = main_for(None, prog, argv)
    inv = manifest.data.get("last_invocation", {})
    if inv.get("ran"):  # the time to produce this run's results: this invocation plus the stages it reused
        reused = sum(manifest.stage(s).get("seconds", 0.0) or 0.0 for s in inv.get("skipped", []))
        manifest.data["pipeline_seconds"] = round(time.perf_counter() - t0 + reused, 1)
    manifest.save()
    write_summary(manifest)
    cfg = manifest.data.get("config", {})
    if cfg.get("serve", {}).get("keep_alive"):
        base = manifest.stage("serve").get("outputs", {}).get("base_url")
        print(f"serving at {base} (keep_alive); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    else:
        stop_serving(manifest)
    print(f"\nrun folder: {manifest.run_dir}\nopen the console on this run (chat with its model, curves, eval, "
          f"lineage):\n\n    {console_command(manifest.run_dir)}\n", flush=True)
    return 0


def console_command(run_dir) -> str:
    """`fullchain ui RUN_DIR`, with the run folder relative to here when it is below."""
    import os
    from pathlib import Path

    p = Path(run_dir).resolve()
    rel = os.path.relpath(p) if p.is_relative_to(Path.cwd()) else str(p)
    return f"fullchain ui {rel}"


def stop_serving(manifest) -> None:
    """Stop the Serve app the run left up. Nothing to stop where no serve stage completed; a failure to stop is
    reported (on a joined cluster the app would keep running), not raised: the run's results are written."""
    if not manifest.stage("serve").get("outputs", {}).get("base_url"):
        return
    from jobs.serve import stop

    try:
        stop()
    except Exception as e:  # noqa: BLE001 - reported, see the docstring
        print(f"warning: the Serve app of this run could not be stopped ({type(e).__name__}: {e}); "
              "it runs until its Ray cluster stops", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
