"""`python -m bench.agent_bfcl [--data-dir DIR] [--limit N]`: BFCL's six AST categories for the base model and the
demo's fine-tuned one, each served by our Ray Serve app and asked through `/v1/chat/completions` with the row's
functions as OpenAI `tools`; the returned `tool_calls` are scored by BFCL's rules (actors/eval/bfcl.py).

The fine-tuned model is `--finetuned` (an HF folder, a registry name or a .gguf); by default the demo run's
(`runs/demo/finetune/hf`), made first with the demo config's fine-tune stage when it is not there. `--data-dir`
holds one `BFCL_v4_<category>_*.jsonl` per category (rows as in ../shared/data/bfcl; simple is `simple_python`).

Last line is JSON: {"base": {category: accuracy}, "finetuned": {category: accuracy}, "n": {category: rows}, ...}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CATEGORY_FILES = {"simple": "simple_python", "multiple": "multiple", "parallel": "parallel",
                  "parallel_multiple": "parallel_multiple", "irrelevance": "irrelevance", "live_simple": "live_simple"}


def category_rows(data_dir: Path, limit: int | None) -> dict[str, list[dict]]:
    from actors.eval.bfcl import load_bfcl

    def stem_of(f: Path) -> str | None:
        """The longest category stem the file name starts with (parallel_multiple before parallel)."""
        name = f.name.removeprefix("BFCL_v4_").removesuffix(".jsonl")
        hits = [s for s in CATEGORY_FILES.values() if name == s or name.startswith(s + "_")]
        return max(hits, key=len) if hits else None

    by_stem: dict[str, list[Path]] = {}
    for f in sorted(data_dir.glob("BFCL_v4_*.jsonl")):
        if (s := stem_of(f)) is not None:
            by_stem.setdefault(s, []).append(f)
    out = {}
    for cat, stem in CATEGORY_FILES.items():
        files = by_stem.get(stem, [])
        if not files:
            raise SystemExit(f"--data-dir {data_dir}: no BFCL_v4_{stem}_*.jsonl for the {cat} category")
        out[cat] = [d for f in files for d in load_bfcl(f)][:limit]
    return out


def ask(client, model: str, doc: dict, max_tokens: int) -> list[dict]:
    """The model's tool calls for one row, as [{name, arguments}] (arguments decoded when they are JSON)."""
    from actors.eval.bfcl import to_openai_tools

    resp = client.chat.completions.create(model=model, messages=doc["messages"], tools=to_openai_tools(
        doc["functions"]), tool_choice="auto", temperature=0.0, max_tokens=max_tokens)
    calls = []
    for tc in resp.choices[0].message.tool_calls or []:
        args = tc.function.arguments
        try:
            args = json.loads(args) if isinstance(args, str) and args.strip() else (args or {})
        except json.JSONDecodeError:
            pass   # left as text: the checker reports it as invalid JSON
        calls.append({"name": tc.function.name, "arguments": args})
    return calls


def score_model(model: str, rows: dict[str, list[dict]], concurrency: int, out: Path, label: str) -> dict:
    """Serve `model`, ask every row, score; writes the per-row results to out/<label>.jsonl."""
    from actors.eval.bfcl import ast_match, category_of
    from actors.serve.deployment import start_server, stop_server
    from cluster.connect import free_port
    from openai import OpenAI

    app = f"bfcl-{label}"
    url = start_server({"model": model, "model_name": label, "port": free_port()}, app_name=app, timeout_s=600)
    try:
        client = OpenAI(base_url=url + "/v1", api_key="EMPTY", timeout=600, max_retries=0)
        acc, records = {}, []
        for cat, docs in rows.items():
            max_tokens = 256 if cat.startswith("parallel") else 128
            with ThreadPoolExecutor(concurrency) as pool:
                answers = list(pool.map(lambda d: ask(client, label, d, max_tokens), docs))
            ok = 0
            for doc, calls in zip(docs, answers):
                good, why = ast_match(calls, doc["functions"], doc["ground_truth"], category_of(doc["id"]))
                ok += good
                records.append({"id": doc["id"], "category": cat, "calls": calls, "correct": good, "reason": why})
            acc[cat] = round(ok / len(docs), 4) if docs else None
            print(f"[bfcl] {label} {cat}: {acc[cat]} ({len(docs)} rows)", file=sys.stderr, flush=True)
    finally:
        stop_server(app)
    (out / f"{label}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return acc


def demo_finetuned(run_dir: Path) -> str:
    """The demo's fine-tuned model folder, made with the demo config's fine-tune stage if it is missing."""
    hf = run_dir / "finetune" / "hf"
    if not (hf / "config.json").exists():
        print(f"[bfcl] no fine-tuned model at {hf}: running the demo config's fine-tune stage there",
              file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "jobs.finetune", "--config", "configs/demo.yaml", "--run-dir",
                        str(run_dir)], check=True)
    return str(hf)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.agent_bfcl", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="", help="default: the shared bfcl folder")
    ap.add_argument("--limit", type=int, default=None, help="rows per category (default: all)")
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--finetuned", default="", help="default: runs/demo/finetune/hf (made if missing)")
    ap.add_argument("--demo-run", default="runs/demo")
    ap.add_argument("--models", default="base,finetuned",
                    help="which to score, comma-separated (one alone for a quick look; no pass/fail then)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", default="runs/bench/bfcl")
    args = ap.parse_args(argv)

    import torch

    import cluster
    from cluster import hardware

    data_dir = Path(args.data_dir) if args.data_dir else cluster.data_root() / "bfcl"
    rows = category_rows(data_dir, args.limit)
    which = [m.strip() for m in args.models.split(",") if m.strip()]
    if not which or set(which) - {"base", "finetuned"}:
        raise SystemExit(f"--models {args.models!r}: name base, finetuned or both, e.g. --models finetuned")
    finetuned = (args.finetuned or demo_finetuned(Path(args.demo_run))) if "finetuned" in which else ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cluster.connect()
    t0 = time.perf_counter()
    models = {"base": args.base, "finetuned": finetuned}
    res = {m: score_model(models[m], rows, args.concurrency, out, m) for m in which}
    res["n"] = {c: len(d) for c, d in rows.items()}
    floors = {"simple": 0.5, "multiple": 0.5, "live_simple": 0.5, "parallel": 0.3, "parallel_multiple": 0.3,
              "irrelevance": 0.5}
    if len(which) == 2:
        res["passes"] = all(res["finetuned"][c] >= f and (c == "irrelevance" or res["finetuned"][c] > res["base"][c])
                            for c, f in floors.items())
    res.update(models={m: models[m] for m in which}, seconds=round(time.perf_counter() - t0, 1),
               dtype=hardware.auto_dtype(), cpu_capability=torch.backends.cpu.get_cpu_capability())
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
