"""`fullchain ui [RUN_DIR]`: the run's model and adapter served with the web console on 127.0.0.1.

    fullchain ui runs/demo                 # http://127.0.0.1:8000/ui/ ; Ctrl-C stops it
    fullchain ui runs/demo --port 0        # any free port
    fullchain ui --model smollm2-135m-instruct --runs-root runs

One Serve app: the engine replica with the run's fine-tuned weights (a LoRA run: its base, with the adapter under
the run's name, so the picker offers base and fine-tuned side by side), the OpenAI API, the console under /ui/ over
the runs beside RUN_DIR, and the agent route /v1/agent/chat running the run's agent tools (ToolActors, the python
sandbox) on the server. The keys of serve.api_keys and FULLCHAIN_API_KEY guard it as they guard the API.
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

APP_NAME = "fullchain-ui"


@dataclass
class ConsolePlan:
    serve: object                       # the ServeConfig to start
    agent: object | None                # the AgentConfig of the agent route, None for none
    run_dir: Path | None
    notes: list[str] = field(default_factory=list)


def plan(run_dir: Path | None, overrides: list[str], model: str | None, port: int, runs_root: Path | None,
         agent: bool = True) -> ConsolePlan:
    """What to serve for `run_dir` (its config, with --set overrides, and its fine-tune's outputs)."""
    import cluster
    from actors.common.config import ConfigError, apply_overrides, from_dict
    from actors.common.runs import Manifest
    from actors.model.registry import resolve_model
    from jobs.config import PipelineConfig

    notes: list[str] = []
    man = Manifest(run_dir) if run_dir else None
    base = apply_overrides(dict(man.data.get("config") or {}) if man else {}, overrides)
    try:
        cfg = from_dict(PipelineConfig, base)
    except ConfigError:
        if not man:
            raise
        # a run written by an older fullchain: its saved config no longer loads; the defaults serve its model
        notes.append("the run's saved config does not load with this version: serving with default settings")
        cfg = from_dict(PipelineConfig, apply_overrides({}, overrides))
    adapters: dict[str, str] = {}
    ft = man.stage("finetune") if man else {}
    outs = ft.get("outputs", {}) if ft.get("status") == "complete" else {}
    if model:
        served = str(resolve_model(model, cluster.model_cache()))
    elif outs.get("adapter") and outs.get("base_hf") and Path(outs["base_hf"]).is_dir():
        served = outs["base_hf"]                      # base + the run's adapter: both in the picker
        adapters[man.run_dir.name] = outs["adapter"]
    elif outs.get("hf"):
        served = outs["hf"]
    elif man and man.stage("pretrain").get("outputs", {}).get("hf"):
        served = man.stage("pretrain")["outputs"]["hf"]
        notes.append("no completed fine-tune in this run: serving its pretrained model")
    else:
        raise ValueError(f"{run_dir or 'no run'}: nothing to serve (no completed finetune or pretrain stage); pass "
                         "--model NAME_OR_FOLDER, e.g. --model smollm2-135m-instruct")
    sc = cfg.serve
    sc = replace(sc, model=served, port=port, console=True, keep_alive=False,
                 lora_modules={**sc.lora_modules, **adapters},
                 runs_root=str(runs_root or (man.run_dir.resolve().parent if man else "")))
    agent_cfg = None
    if agent:
        a = cfg.agent
        tools, options = list(a.tools), dict(a.tool_options)
        if "search_docs" in tools and not options.get("search_docs", {}).get("index"):
            index = man.run_dir / "agent" / "index" if man else None
            if index is not None and (index / "passages.jsonl").exists():
                options["search_docs"] = {**options.get("search_docs", {}), "index": str(index.resolve())}
            else:
                tools.remove("search_docs")
                options.pop("search_docs", None)
                notes.append("search_docs left out: the run has no agent index (its agent stage builds one)")
        if tools or a.mcp_servers or a.openapi_servers:
            agent_cfg = replace(a, tools=tools, tool_options=options)
        else:
            notes.append("no agent tools left: the agent route is off")
    return ConsolePlan(sc, agent_cfg, man.run_dir.resolve() if man else None, notes)


def _check_port(port: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise ValueError(f"port {port} on 127.0.0.1 is in use ({e.strerror}); pass --port N (0: any free "
                             "port)") from None
        return s.getsockname()[1]


def start_console(p: ConsolePlan, app_name: str = APP_NAME, timeout_s: float = 600.0) -> str:
    """Deploy the plan on the connected Ray cluster; returns the app's base URL."""
    from actors.serve.deployment import start_server
    from jobs.serve import with_env_keys

    sc = with_env_keys(p.serve)
    agent = None
    if p.agent is not None:
        from actors.agent.server import AgentServer

        key = sc.api_keys[0] if sc.api_keys else "EMPTY"
        agent = AgentServer.bind(p.agent, f"http://127.0.0.1:{sc.port}/v1", key)
    return start_server(sc, app_name=app_name, timeout_s=timeout_s, agent=agent)


def stop_console(app_name: str = APP_NAME) -> None:
    from actors.serve.deployment import stop_server

    stop_server(app_name)


def _default_run() -> Path | None:
    import cluster
    from actors.common.runs import list_runs

    root = cluster.storage_root()
    if "://" in root or not Path(root).is_dir():
        return None
    runs = [r for r in list_runs(root) if "error" not in r]
    return Path(runs[0]["path"]) if runs else None


def main(argv: list[str] | None = None, prog: str = "python -m jobs.ui") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir_pos", nargs="?", metavar="RUN_DIR",
                    help="a run folder (default: the newest run under the storage root)")
    ap.add_argument("--run-dir", default=None, help="the same as RUN_DIR")
    ap.add_argument("--port", type=int, default=8000, help="HTTP port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--model", default=None, help="serve this registry name / .gguf / HF folder instead of the run's")
    ap.add_argument("--runs-root", default=None, help="the folder of runs the console lists (default: RUN_DIR's parent)")
    ap.add_argument("--no-agent", action="store_true", help="no agent route (chat without tools only)")
    ap.add_argument("--config", default=None, help="ignored for a run (its own saved config is used); a YAML whose "
                                                    "serve/agent sections apply when no run is given")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override the run's config, e.g. --set serve.engine.max_num_seqs=8 (repeatable)")
    a = ap.parse_args(argv)
    if a.run_dir and a.run_dir_pos and Path(a.run_dir).resolve() != Path(a.run_dir_pos).resolve():
        ap.error(f"RUN_DIR {a.run_dir_pos} and --run-dir {a.run_dir} differ; give one")
    run = a.run_dir or a.run_dir_pos
    if not 0 <= a.port < 65536:
        ap.error(f"--port {a.port}: a TCP port is 0..65535")
    import cluster
    from actors.common.config import ConfigError, load_yaml
    from actors.common.runs import is_run

    if run is not None and not is_run(run):
        ap.error(f"{run} is not a run folder (no manifest.json); `fullchain runs` lists the runs, `fullchain demo` "
                 "makes one")
    run_dir = Path(run) if run else (None if a.model else _default_run())
    if run_dir is None and not a.model:
        ap.error(f"no runs under {cluster.storage_root()}: pass RUN_DIR, or --model NAME to chat with a model")
    overrides = list(a.overrides)
    try:
        if a.config and run_dir is None:
            y = load_yaml(a.config)
            overrides = [f"{s}.{k}={v}" for s in ("serve", "agent") for k, v in (y.get(s) or {}).items()
                         if not isinstance(v, dict)] + overrides
        port = _check_port(a.port)
        p = plan(run_dir, overrides, a.model, port, Path(a.runs_root) if a.runs_root else None,
                 agent=not a.no_agent)
    except (ConfigError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    for n in p.notes:
        print(f"[ui] {n}", flush=True)
    names = [p.serve.model_name] + [f"{p.serve.model_name}:{n}" for n in p.serve.lora_modules]
    print(f"[ui] starting: model {p.serve.model}" + (f", adapters {dict(p.serve.lora_modules)}"
                                                     if p.serve.lora_modules else "") +
          (f", agent tools {p.agent.tools}" if p.agent else ""), flush=True)
    cluster.connect()
    try:
        url = start_console(p)
    except (RuntimeError, TimeoutError) as e:   # a replica that cannot start: its reason, not Serve's traceback
        print(f"{prog}: the Serve app did not start: {str(e).strip().splitlines()[-1][:500]}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"\nconsole:    {url}/ui/\nOpenAI API: {url}/v1  (models: {', '.join(names)})"
          + (f"\nrun folder: {p.run_dir}" if p.run_dir else "") + "\nCtrl-C stops it.", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    print("[ui] stopping", flush=True)
    stop_console()
    return 0


if __name__ == "__main__":
    sys.exit(main())
