"""`runs/<name>/summary.md`: per-stage time, val loss vs baseline, eval table, one chat, one agent transcript."""
from __future__ import annotations

import json
from pathlib import Path

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
    for name in ("data", "pretrain", "finetune", "evaluate", "serve", "agent"):
        s = st.get(name, {})
        total += s.get("seconds", 0.0) or 0.0
        lines.append(f"| {name} | {s.get('status', 'not run')} | {_fmt(s.get('seconds'), 1)} |")
    lines.append(f"| **total** | | {total:.1f} |")

    d = st.get("data", {}).get("metrics", {})
    if d:
        lines += ["", "## Data", "",
                  f"read {d.get('read')} = kept {d.get('kept')} + dropped {sum((d.get('dropped') or {}).values())} "
                  f"{d.get('dropped')} + quarantined {sum((d.get('quarantined') or {}).values())} "
                  f"{d.get('quarantined')}; train tokens {d.get('train_tokens')}, val tokens {d.get('val_tokens')}"]
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
        lines += ["", "## Fine-tune", "", f"LoRA SFT: {f.get('step')} steps, final loss {_fmt(f.get('loss'))}, "
                  f"{f.get('examples')} examples"]
    e = st.get("evaluate", {}).get("outputs", {})
    if e.get("results_md") and Path(e["results_md"]).exists():
        lines += ["", "## Evaluation (pretrained vs fine-tuned)", "", Path(e["results_md"]).read_text().strip()]
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
    return "\n".join(lines) + "\n"


def write_summary(manifest: Manifest) -> Path:
    text = build_summary(manifest)
    out = manifest.run_dir / "summary.md"
    out.write_text(text)
    print(text, flush=True)
    return out
