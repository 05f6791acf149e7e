"""`fullchain`: one command over the job drivers (`[project.scripts]` in pyproject.toml).

    fullchain demo --config configs/demo.yaml --run-dir runs/demo     # = python -m jobs.pipeline
    fullchain finetune --run-dir runs/demo --set finetune.max_steps=20 # = python -m jobs.finetune
    fullchain runs                                                     # the runs under the storage root

Each subcommand hands the rest of the line to its driver (`python -m jobs.<module>` keeps working and takes the
same flags), so `fullchain <cmd> --help` is that driver's own help. Bad usage exits 2 with one line that says
why; a mistyped subcommand names the closest one.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Command:
    module: str | None   # jobs.<module> whose main(argv, prog) runs it (None: this module's own)
    help: str


COMMANDS: dict[str, Command] = {
    "demo": Command("pipeline", "the whole chain: data -> pretrain -> finetune -> eval -> serve -> agent"),
    "data": Command("data", "the data stage: extract, filter, dedup, tokenize into shards"),
    "pretrain": Command("pretrain", "the pretraining stage (3D parallel training workers)"),
    "finetune": Command("finetune", "the fine-tuning stage (LoRA/QLoRA/full SFT, DPO); --publish URL hot-swaps"),
    "eval": Command("evaluate", "the eval stage, or a standalone eval of --model on --tasks"),
    "serve": Command("serve", "the serving stage: an OpenAI-compatible Ray Serve app on 127.0.0.1"),
    "agent": Command("agent", "the agent stage: tool-calling agents against the served model"),
    "chat": Command("chat", "chat with a model or adapter in the terminal"),
    "index": Command("index", "a retrieval index (BM25 + vectors) over document shards, for search_docs"),
    "tools": Command("tools", "the agents' tools for other programs: list, an MCP server, an OpenAPI server"),
    "models": Command("models", "the registry of pretrained bases: list, import, resolve"),
    "ui": Command("ui", "the web console on 127.0.0.1: chat with the run's model and adapter (tools run on the "
                        "server), runs with curves, eval tables, data card and lineage"),
    "runs": Command(None, "the runs under the storage root with their stages' status"),
}


def _closest(word: str) -> str:
    near = difflib.get_close_matches(word, list(COMMANDS), n=1, cutoff=0.5)
    return f"; did you mean `fullchain {near[0]}`?" if near else f"; choose one of: {', '.join(COMMANDS)}"


def parser() -> argparse.ArgumentParser:
    """For the help text only: the first word picks the driver, which parses the rest itself."""
    p = argparse.ArgumentParser(
        prog="fullchain", epilog="`fullchain <command> --help` shows that command's flags.",
        description="fullchain: the whole life of an LLM on one Ray cluster - data, pretraining, fine-tuning, "
                    "evaluation, serving, agents.")
    sub = p.add_subparsers(dest="command", metavar="<command>")
    for name, c in COMMANDS.items():
        sub.add_parser(name, help=c.help, add_help=False)
    return p


def runs_main(argv: list[str] | None = None, prog: str = "fullchain runs") -> int:
    """Each run folder under the storage root (or --root): its stages' status and seconds, one line per run."""
    import json

    ap = argparse.ArgumentParser(prog=prog, description=runs_main.__doc__)
    ap.add_argument("--root", default=None, help="folder holding run folders (default: the storage root)")
    ap.add_argument("--json", action="store_true", help="one JSON object per run instead of text")
    a = ap.parse_args(argv)
    if a.root is None:
        import cluster

        a.root = cluster.storage_root()
    root = Path(a.root)
    if "://" in str(a.root) or not root.is_dir():
        print(f"fullchain runs: {a.root} is not a local folder; pass --root DIR", file=sys.stderr)
        return 2
    from actors.common.runs import list_runs

    found = 0
    for run in sorted(list_runs(root), key=lambda r: r["name"]):
        if "error" in run:
            print(f"{run['name']}: {run['error']}", file=sys.stderr)
            continue
        found += 1
        stages = {s["stage"]: {"status": s["status"], "seconds": s["seconds"]} for s in run["stages"]}
        if a.json:
            print(json.dumps({"run": run["name"], "path": run["path"], "stages": stages}))
        else:
            line = "  ".join(f"{n}:{s['status']}" + (f"({s['seconds']:.0f}s)" if s["seconds"] else "")
                             for n, s in stages.items())
            print(f"{run['name']}\t{line}")
    if not found and not a.json:
        print(f"no runs under {root} (a run folder holds manifest.json; `fullchain demo` makes one)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    if not argv or argv[0] in ("-h", "--help"):
        p.print_help()
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd.startswith("-"):
        print(f"fullchain: {cmd} before a command; usage: fullchain <command> [flags]{_closest(cmd.lstrip('-'))}",
              file=sys.stderr)
        return 2
    if cmd not in COMMANDS:
        print(f"fullchain: unknown command {cmd!r}{_closest(cmd)}", file=sys.stderr)
        return 2
    prog = f"fullchain {cmd}"
    if cmd == "runs":
        return runs_main(rest, prog)
    mod = importlib.import_module(f"jobs.{COMMANDS[cmd].module}")
    try:
        code = mod.main(rest, prog=prog)
    except SystemExit as e:  # argparse inside a driver: --help (0) or a usage error (2, its line already printed)
        return e.code if isinstance(e.code, int) else 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
