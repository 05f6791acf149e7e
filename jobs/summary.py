"""`runs/<name>/summary.md` (per-stage time, val loss vs baseline, eval table, one chat, agent transcripts) and
`runs/<name>/summary.json` (the same numbers, with a flat `headline` object for scripts and checks)."""
from __future__ import annotations

import json
from pathlib import Path

from actors.common.runs import STAGE_ORDER, eval_results
from jobs.manifest import Manifest


def _fmt(v, nd=4):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def build_summary(manifest: Manifest) -> str:
    st = manifest.data["stages"]
    lines = [f"# fullchain run `{manifest.data.get('run', manifest.run_dir.name)}`", "",
             f"Run dir: `{manifest.run_dir}`", "", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    total = 0.0
    for name in STAGE_ORDER:
        s = st.get(name, {})
        total += s.get("seconds", 0.0) or 0.0
        lines.append(f"| {name} | {s.get('status', 'not run')} | {_fmt(s.get('seconds'), 1)} |")
    lines.append(f"| **total** | | {total:.1f} |")
    prec = precision(manifest)
    lines += ["", f"Precision: {', '.join(f'{k} {v}' for k, v in prec['dtypes'].items()) or 'no model stage ran'} "
              f"(CPU capability {prec['cpu_capability']}, native bf16 {prec['cpu_bf16_native']}; `auto` picks "
              "bfloat16 only where the hardware computes it natively)"]

    d = st.get("data", {}).get("metrics", {})
    if d:
        lines += ["", "## Data", ""]
        c = d.get("curation") or (d if "dropped_by_rule" in d else None)   # a curation run (data.curate)
        if c:
            lines.append(f"curation: read {c.get('read')} = kept {c.get('kept')} + dropped {c.get('dropped')} "
                         f"(per rule in `{st['data'].get('outputs', {}).get('card', 'card.md')}`)")
        if "train_tokens" in d:
            lines.append(f"read {d.get('read')} = kept {d.get('kept')} + dropped "
                         f"{sum((d.get('dropped') or {}).values())} {d.get('dropped')} + quarantined "
                         f"{sum((d.get('quarantined') or {}).values())} {d.get('quarantined')}; train tokens "
                         f"{d.get('train_tokens')}, val tokens {d.get('val_tokens')}")
    p = st.get("pretrain", {}).get("metrics", {})
    if p:
        base = p.get("unigram_baseline")
        lines += ["", "## Pretrain", "", "| metric | value |", "|---|---|",
                  f"| val loss (nats/token) | {_fmt(p.get('val_loss'))} |",
                  f"| unigram-entropy baseline | {_fmt(base)} |",
                  f"| val loss / baseline | {_fmt(p.get('val_vs_unigram'), 3)} (target <= 0.700) |",
                  f"| steps / tokens | {p.get('step')} / {int(p.get('tokens', 0))} |",
                  f"| tokens/s (all workers) | {_fmt(p.get('tokens_per_s'), 0)} |",
                  f"| params | {p.get('num_params')} |"]
    f = st.get("finetune", {}).get("metrics", {})
    if f:
        fo = st.get("finetune", {}).get("outputs", {})
        lines += ["", "## Fine-tune", "", f"{st['finetune'].get('config', {}).get('method', 'lora')} SFT of "
                  f"`{fo.get('base', 'pretrain')}`: {f.get('step')} steps, final loss {_fmt(f.get('loss'))}, "
                  f"{f.get('examples')} examples {f.get('sources')}"]
    e = st.get("evaluate", {}).get("outputs", {})
    if e.get("results_md") and Path(e["results_md"]).exists():
        lines += ["", "## Evaluation (fine-tune base vs fine-tuned; the from-scratch pretrain on the tasks that "
                  "fit it)", "", Path(e["results_md"]).read_text().strip()]
    s = st.get("serve", {}).get("outputs", {})
    if s.get("demo_chat"):
        demo = s["demo_chat"]
        lines += ["", "## Served chat completion", "", f"`POST {s.get('base_url')}/chat/completions`", "",
                  "```json", json.dumps(demo, indent=2, ensure_ascii=False), "```"]
    a = st.get("agent", {})
    if a.get("metrics"):
        m = a["metrics"]
        lines += ["", "## Agent (held-out synthetic prompts, tools as Ray actors)", "",
                  f"valid tool call rate {_fmt(m.get('valid_tool_call_rate'), 3)}, tool call rate "
                  f"{_fmt(m.get('tool_call_rate'), 3)}, task accuracy with the tool {_fmt(m.get('accuracy'), 3)} "
                  f"over n={m.get('n')}, mean steps {_fmt(m.get('mean_steps'), 2)}, stops {m.get('stopped_reasons')}. "
                  "The transcript is the first run in which a tool actor answered (else the first run):",
                  "", "```", a.get("outputs", {}).get("first_transcript", "").strip(), "```"]
        if m.get("accuracy_by_phrasing"):
            lines += ["", f"accuracy by phrasing {m.get('accuracy_by_phrasing')} (n {m.get('n_by_phrasing')}), "
                      f"by language {m.get('accuracy_by_lang')}"]
        if m.get("accuracy_by_kind"):
            lines += ["", f"accuracy by kind {m.get('accuracy_by_kind')} (n {m.get('n_by_kind')})"]
        if m.get("per_tool"):
            lines += ["", "| tool | calls | valid | answered |", "|---|---|---|---|"]
            lines += [f"| {t} | {c['calls']} | {c['valid']} | {c['ok']} |" for t, c in m["per_tool"].items()]
        demo = a.get("outputs", {}).get("demo")
        if demo:
            lines += ["", "Demo question through the agent:", "", "```", demo.get("transcript", "").strip(), "```"]
        zh = a.get("outputs", {}).get("zh_transcript")
        if zh:
            lines += ["", "A held-out Chinese prompt (a language the fine-tune never saw for this task):", "",
                      "```", zh.strip(), "```"]
    return "\n".join(lines) + "\n"


def precision(manifest: Manifest) -> dict:
    """The dtype each model stage ran at (what `auto` resolved to) and the machine's CPU capability."""
    st, hw = manifest.data["stages"], manifest.data.get("hardware", {})
    dtypes = {}
    for name in ("pretrain", "finetune", "serve"):
        d = st.get(name, {}).get("metrics", {}).get("dtype")
        if d:
            dtypes[name] = d
    ev = {label: p.get("dtype") for label, p in (st.get("evaluate", {}).get("metrics", {}).get("precision") or {})
          .items()}
    if ev:
        dtypes["evaluate"] = "/".join(sorted(set(ev.values())))
    return {"dtypes": dtypes, "cpu_capability": hw.get("cpu_capability"), "cpu_bf16_native": hw.get("cpu_bf16_native")}


def _metric(results: dict, label: str, task: str, key: str):
    return results.get(label, {}).get(task, {}).get("metrics", {}).get(key)


def _demo_expression(serve_outputs: dict) -> str | None:
    calls = ((serve_outputs.get("demo_chat") or {}).get("response") or {}).get("tool_calls") or []
    for c in calls:
        try:
            args = json.loads(c["function"]["arguments"])
        except (KeyError, TypeError, json.JSONDecodeError):
            continue
        for v in args.values() if isinstance(args, dict) else []:
            if isinstance(v, str):
                return v
    return None


def build_headline(manifest: Manifest) -> dict:
    """The run's key numbers as one flat object (None where a stage did not run)."""
    st = manifest.data["stages"]
    results = eval_results(manifest)
    base = "base" if "base" in results else "pretrain"
    am = st.get("agent", {}).get("metrics", {})
    ao = st.get("agent", {}).get("outputs", {})
    arith_n = results.get("finetune", {}).get("arith_tool", {}).get("n")
    prec = precision(manifest)
    return {
        "pipeline_s": manifest.data.get("pipeline_seconds"),
        "cpu_capability": prec["cpu_capability"],
        **{f"dtype_{k}": v for k, v in prec["dtypes"].items()},
        "finetune_base": st.get("finetune", {}).get("outputs", {}).get("base"),
        "pretrain_val_over_unigram": st.get("pretrain", {}).get("metrics", {}).get("val_vs_unigram"),
        "arith_tool_em_base": _metric(results, base, "arith_tool", "exact_match"),
        "arith_tool_em_finetuned": _metric(results, "finetune", "arith_tool", "exact_match"),
        "arith_tool_n": arith_n,
        "agent_accuracy": am.get("accuracy"),
        "agent_n": am.get("n"),
        "agent_accuracy_unseen_phrasing": (am.get("accuracy_by_phrasing") or {}).get("unseen"),
        "agent_n_unseen_phrasing": (am.get("n_by_phrasing") or {}).get("unseen"),
        "agent_accuracy_by_kind": am.get("accuracy_by_kind"),
        "agent_tool_calls_answered": {t: c["ok"] for t, c in (am.get("per_tool") or {}).items()},
        "arc_easy_acc_norm_base": _metric(results, base, "arc_easy", "acc_norm"),
        "arc_easy_acc_norm_finetuned": _metric(results, "finetune", "arc_easy", "acc_norm"),
        "arc_easy_acc_norm_pretrain": _metric(results, "pretrain", "arc_easy", "acc_norm") if base == "base" else None,
        "bfcl_simple_base": _metric(results, base, "bfcl_simple", "ast_accuracy"),
        "bfcl_simple_finetuned": _metric(results, "finetune", "bfcl_simple", "ast_accuracy"),
        "demo_tool_call_expression": _demo_expression(st.get("serve", {}).get("outputs", {})),
        "agent_demo_answer": (ao.get("demo") or {}).get("final_answer"),
    }


def write_summary(manifest: Manifest) -> Path:
    text = build_summary(manifest)
    out = manifest.run_dir / "summary.md"
    out.write_text(text)
    st = manifest.data["stages"]
    summary = {"run": manifest.data.get("run"), "headline": build_headline(manifest),
               "stage_seconds": {k: v.get("seconds") for k, v in st.items()},
               "stage_metrics": {k: v.get("metrics") for k, v in st.items() if k != "evaluate"}}
    (manifest.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    print(text, flush=True)
    return out
