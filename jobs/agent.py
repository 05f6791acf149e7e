"""`python -m jobs.agent`: an agent loop talks to the served model over the OpenAI API; tools are Ray actors."""
from __future__ import annotations

import json
import sys

from jobs.runner import StageContext, main_for


def run(ctx: StageContext) -> dict:
    from actors.agent.actor import start_tools
    from actors.agent.loop import make_client
    from actors.agent.styles import STYLES
    from actors.agent.report import evaluate_agent

    cfg = ctx.cfg.agent
    serve = ctx.inputs("serve")
    data = ctx.inputs("data")
    records = _jsonl(data["synthetic_heldout"])[: cfg.n_eval]
    if data.get("tools_heldout"):   # python and retrieval questions, when the data stage made them
        records += [r for r in _jsonl(data["tools_heldout"])
                    if {"python": "python", "retrieval": "search_docs"}[r["kind"]] in cfg.tools]
    options = dict(cfg.tool_options)
    if "search_docs" in cfg.tools and not options.get("search_docs", {}).get("index"):
        options["search_docs"] = {**options.get("search_docs", {}), "index": docs_index(ctx, data)}
    tools = start_tools(cfg.tools, cfg.mcp_servers, cfg.openapi_servers, options)
    from cluster.env import settings

    keys = list(ctx.cfg.serve.api_keys) + list(settings().api_keys)
    client = make_client(serve["base_url"], timeout_s=cfg.request_timeout_s, api_key=keys[0] if keys else "EMPTY")
    agent = STYLES[cfg.style].from_config(cfg, client, serve["model_name"], tools)
    report = evaluate_agent(agent, records, n_transcripts=cfg.n_transcripts, concurrency=cfg.concurrency)
    demo_prompt = ctx.cfg.serve.demo_prompt
    tr = agent.run(demo_prompt)
    demo = {"prompt": demo_prompt, "final_answer": tr.final_answer, "stopped_reason": tr.stopped_reason,
            "transcript": tr.to_text()}
    with open(ctx.dir / "transcripts.jsonl", "w") as f:   # every conversation, one JSON object per line
        for rec, tr in zip(report["records"], report.pop("transcript_dicts")):
            f.write(json.dumps({"id": rec["id"], **tr}, ensure_ascii=False) + "\n")
    (ctx.dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (ctx.dir / "transcripts.md").write_text("\n\n---\n\n".join(report.pop("transcripts_md")))
    metrics = {k: report[k] for k in ("n", "valid_tool_call_rate", "tool_call_rate", "accuracy", "mean_steps",
                                      "stopped_reasons", "accuracy_by_phrasing", "n_by_phrasing", "accuracy_by_lang",
                                      "accuracy_by_kind", "n_by_kind", "per_tool")}
    return {"outputs": {"report": str(ctx.dir / "report.json"), "transcripts": str(ctx.dir / "transcripts.md"),
                        "transcripts_jsonl": str(ctx.dir / "transcripts.jsonl"),
                        "first_transcript": report["tool_transcript"] or
                                            (report["transcripts"][0] if report["transcripts"] else ""),
                        "zh_transcript": report["zh_transcript"], "demo": demo},
            "metrics": metrics}


def _jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def docs_index(ctx: StageContext, data: dict) -> str:
    """search_docs' index over the data stage's documents (data.docs_sources), built once per run."""
    from jobs.index import build_index

    if not data.get("docs"):
        raise ValueError("agent.tools has search_docs but no index: set agent.tool_options.search_docs.index "
                         "(python -m jobs.index --docs DIR --out DIR) or data.docs_sources, whose documents the "
                         "data stage keeps for indexing")
    out = ctx.dir / "index"
    if not (out / "passages.jsonl").exists():
        res = build_index(data["docs"], str(out), id_field="doc_id")
        print(f"[agent] index: {res}", flush=True)
    return str(out)


def main(argv: list[str] | None = None, prog: str = "python -m jobs.agent") -> int:
    main_for(["agent"], prog, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
