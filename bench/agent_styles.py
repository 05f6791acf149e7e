"""`python -m bench.agent_styles [--finetuned DIR] [--n-arith 40] [--n-two-step 10]`: every agent style end to end
on the demo's fine-tuned model served by our Serve (/v1/chat/completions), tools as Ray actors:

    function_calling  native tool calls (calculator, python in the sandbox)
    react             plain-text Thought / Action / Observation over the same tools
    code              Python blocks in a sandboxed kernel per conversation, tools bridged in as functions
    planner           a planner agent whose one tool hands sub-tasks to a worker agent (an AgentSession actor)
    mcp               function calling whose calculator exists only on an MCP server (`python -m jobs.tools mcp
                      --tools calculator`, a child process spoken to over stdio)

over the demo's held-out arithmetic prompts (the agent stage's first n) plus two-step prompts (compute, then use
the result) in phrasings no training row used. The fine-tuned model is made with the demo config's fine-tune
stage when missing (as bench.agent_bfcl does). Last line is JSON: {"accuracy": {style: acc}, "two_step":
{style: acc}, "n": {...}, "passes": function_calling >= 0.9 and code >= 0.6, ...}.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Two-step prompts in frames the training rows never used (theirs: "Compute {e}, then ...", "Calculate {e} and
# then ...", "First compute {e}. Then ...").
TWO_STEP_ASK = ["Work out {e}; then {step}.", "What is {e}? After that, {step}.",
                "Take {e} and then {step}.", "Find {e}, and {step}."]

ALL_STYLES = ("function_calling", "react", "code", "planner", "mcp")


def two_step_records(n: int, seed: int = 20261204) -> list[dict]:
    from actors.data.toolmix import chain_task

    rng = random.Random(seed)
    return [{"id": f"two-step-{i}", "kind": "two_step", "answer": str(vals[-1]),
             "messages": [{"role": "user", "content": q}]}
            for i, (q, _, vals) in enumerate(chain_task(rng, TWO_STEP_ASK) for _ in range(n))]


def score(report: dict) -> dict:
    rows = report["records"]
    two = [r["correct"] for r in rows if r["kind"] == "two_step"]
    arith = [r["correct"] for r in rows if r["kind"] != "two_step"]
    return {"accuracy": round(report["accuracy"], 4), "two_step": round(sum(two) / len(two), 4) if two else None,
            "arith": round(sum(arith) / len(arith), 4) if arith else None, "per_tool": report["per_tool"],
            "stopped_reasons": report["stopped_reasons"]}


def run_planner(url: str, model: str, tools: dict, records: list[dict], concurrency: int) -> dict:
    """Per record a fresh worker (an AgentSession actor: function calling with the tools) and a planner whose
    only tool is `delegate`; the planner's final answer is scored."""
    import ray

    from actors.agent.actor import AgentSession, Delegate, ToolActor
    from actors.agent.loop import Agent, make_client
    from actors.agent.report import evaluate_agent

    class OneRecord:   # evaluate_agent's agent: a fresh planner + worker pair per conversation
        def run(self, messages):
            worker = AgentSession.remote("function_calling", url, model, tools, max_steps=3, max_tokens=64)
            delegate = ToolActor.remote("delegate", tool=Delegate({"calc": worker}, timeout_s=300))
            try:
                planner = Agent(make_client(url), model, {"delegate": delegate}, max_steps=3, max_tokens=96)
                return planner.run(messages)
            finally:
                ray.kill(delegate)
                ray.kill(worker)

    return evaluate_agent(OneRecord(), records, n_transcripts=2, concurrency=concurrency)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.agent_styles", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--finetuned", default="", help="default: runs/demo/finetune/hf (made if missing)")
    ap.add_argument("--demo-run", default="runs/demo")
    ap.add_argument("--n-arith", type=int, default=40)
    ap.add_argument("--n-two-step", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", default="runs/bench/agent_styles")
    ap.add_argument("--styles", default=",".join(ALL_STYLES),
                    help=f"comma-separated subset of {','.join(ALL_STYLES)} (passes is only set when "
                         "function_calling and code both run)")
    args = ap.parse_args(argv)
    styles = [s for s in args.styles.split(",") if s]
    if not styles or set(styles) - set(ALL_STYLES):
        ap.error(f"--styles: pick from {','.join(ALL_STYLES)}, got {args.styles!r}")

    import cluster   # first: it sets the local-Ray environment (loopback binding) before ray is imported
    import ray
    import torch
    from actors.agent.actor import start_tools
    from actors.agent.loop import make_client
    from actors.agent.report import evaluate_agent
    from actors.agent.styles import STYLES
    from actors.serve.deployment import start_server, stop_server
    from bench.agent_bfcl import demo_finetuned
    from cluster import hardware
    from cluster.connect import free_port

    finetuned = args.finetuned or demo_finetuned(Path(args.demo_run))
    heldout = Path(args.demo_run) / "data" / "synthetic" / "arith_heldout.jsonl"
    with open(heldout) as f:
        records = [json.loads(line) for line in f if line.strip()][: args.n_arith]
    records += two_step_records(args.n_two_step)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cluster.connect()
    t0 = time.perf_counter()
    app = "agent-styles"
    url = start_server({"model": finetuned, "model_name": "ft", "port": free_port()}, app_name=app,
                       timeout_s=600) + "/v1"
    res: dict = {}
    try:
        client = make_client(url, timeout_s=300)
        tools = start_tools(["calculator", "python"])
        settings = {"function_calling": dict(max_steps=3, max_tokens=64), "react": dict(max_steps=4, max_tokens=96),
                    "code": dict(max_steps=3, max_tokens=128)}
        reports = {}
        for style, kw in ((s, kw) for s, kw in settings.items() if s in styles):
            agent = STYLES[style](client, "ft", tools, **kw)
            reports[style] = evaluate_agent(agent, records, n_transcripts=2, concurrency=args.concurrency)
            print(f"[styles] {style}: {score(reports[style])}", file=sys.stderr, flush=True)
        if "planner" in styles:
            reports["planner"] = run_planner(url, "ft", tools, records, min(4, args.concurrency))
            print(f"[styles] planner: {score(reports['planner'])}", file=sys.stderr, flush=True)
        mcp_tools = {}
        if "mcp" in styles:   # the calculator only on an outside MCP server: a child speaking MCP over stdio
            serve_mcp = f"import sys; sys.path.insert(0, {str(REPO)!r}); from jobs.tools import main; " \
                        "main(['mcp', '--tools', 'calculator'])"   # the child runs in a Ray worker's directory
            mcp_tools = start_tools([], mcp_servers=[[sys.executable, "-c", serve_mcp]])
            assert list(mcp_tools) == ["calculator"], list(mcp_tools)
            reports["mcp"] = evaluate_agent(STYLES["function_calling"](client, "ft", mcp_tools, max_steps=3,
                                                                       max_tokens=64),
                                            records, n_transcripts=2, concurrency=args.concurrency)
            print(f"[styles] mcp: {score(reports['mcp'])}", file=sys.stderr, flush=True)
        for h in list(tools.values()) + list(mcp_tools.values()):
            ray.kill(h)
    finally:
        stop_server(app)
    for style, rep in reports.items():
        with open(out / f"{style}.jsonl", "w") as f:
            for rec, tr in zip(rep["records"], rep["transcript_dicts"]):
                f.write(json.dumps({**rec, "transcript": tr}, ensure_ascii=False) + "\n")
        (out / f"{style}.md").write_text("\n\n---\n\n".join(rep["transcripts_md"]))
    scores = {s: score(r) for s, r in reports.items()}
    res = {"accuracy": {s: v["accuracy"] for s, v in scores.items()},
           "two_step": {s: v["two_step"] for s, v in scores.items()},
           "arith": {s: v["arith"] for s, v in scores.items()},
           "per_tool": {s: v["per_tool"] for s, v in scores.items()},
           "n": {"arith": args.n_arith, "two_step": args.n_two_step},
           "passes": scores["function_calling"]["accuracy"] >= 0.9 and scores["code"]["accuracy"] >= 0.6
           if {"function_calling", "code"} <= set(scores) else None,
           "model": finetuned, "seconds": round(time.perf_counter() - t0, 1), "dtype": hardware.auto_dtype(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
