"""Evaluate the agent on held-out synthetic records (plain dicts loaded from JSONL).

Per record the agent runs once from the record's prompt (the messages before the first assistant
turn). Metrics are measured, not massaged: one attempt per record, no retries, errors count as failures.
"""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from actors.tooltask import cites, last_number, prompt_messages, same_number


def evaluate_agent(agent, records: list[dict], n_transcripts: int = 3, concurrency: int = 1) -> dict:
    """Run `agent` once per record (`concurrency` conversations at a time; results keep the records' order)
    and score it.

    valid_tool_call_rate: fraction whose FIRST reply had >= 1 tool call to a known tool with valid args;
    tool_call_rate: fraction whose first reply had any tool call; accuracy: last number of the final
    answer equals record["answer"] (a record of kind "retrieval": the answer cites "[answer]"); mean_steps:
    model calls per record. Records carrying `phrasing` ("seen" | "unseen": was the question's wording in
    training?), `lang` and `kind` are also scored per group.
    """
    if not records:
        raise ValueError("evaluate_agent needs at least one held-out record")
    rows, texts, tool_text, zh_text = [], [], None, None
    reasons: Counter = Counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        transcripts = list(pool.map(lambda r: agent.run(prompt_messages(r)), records))
    for r, tr in zip(records, transcripts):
        first = tr.steps[0] if tr.steps else None
        calls = first.tool_calls if first else []
        kind = r.get("kind", "arith")
        final = tr.final_answer if tr.stopped_reason == "answer" else None
        predicted = last_number(final) if kind != "retrieval" else (r["answer"] if cites(final, r["answer"]) else None)
        row = {
            "id": r.get("id"),
            "kind": kind,
            "expression": r.get("expression"),
            "phrasing": r.get("phrasing"),
            "lang": r.get("lang"),
            "answer": str(r["answer"]),
            "final_answer": tr.final_answer,
            "predicted": predicted,
            "correct": cites(final, r["answer"]) if kind == "retrieval" else same_number(predicted, str(r["answer"])),
            "first_tool_call": bool(calls),
            "first_tool_call_valid": any(c.known_tool and c.valid for c in calls),
            "tool_calls": len(tr.tool_calls),
            "tool_errors": sum(1 for c in tr.tool_calls if not c.ok),
            "steps": tr.n_steps,
            "stopped_reason": tr.stopped_reason,
        }
        rows.append(row)
        reasons["error" if tr.stopped_reason.startswith("error") else tr.stopped_reason] += 1
        if len(texts) < n_transcripts:
            texts.append(tr.to_text())
        if tool_text is None and any(c.ok for c in tr.tool_calls):
            tool_text = tr.to_text()  # the first run in which a tool actor actually answered
        if zh_text is None and r.get("lang") == "zh" and any(c.ok for c in tr.tool_calls):
            zh_text = tr.to_text()
    n = len(rows)

    def acc(key: str) -> dict[str, float]:
        groups: dict[str, list[bool]] = {}
        for x in rows:
            if x[key] is not None:
                groups.setdefault(x[key], []).append(x["correct"])
        return {g: sum(v) / len(v) for g, v in sorted(groups.items())}

    counts = Counter(x["phrasing"] for x in rows if x["phrasing"] is not None)
    per_tool: dict[str, dict[str, int]] = {}
    for tr in transcripts:
        for c in tr.tool_calls:
            t = per_tool.setdefault(c.name or "?", {"calls": 0, "valid": 0, "ok": 0})
            t["calls"] += 1
            t["valid"] += int(c.valid)
            t["ok"] += int(c.ok)
    return {
        "n": n,
        "valid_tool_call_rate": sum(x["first_tool_call_valid"] for x in rows) / n,
        "tool_call_rate": sum(x["first_tool_call"] for x in rows) / n,
        "accuracy": sum(x["correct"] for x in rows) / n,
        "mean_steps": sum(x["steps"] for x in rows) / n,
        "accuracy_by_phrasing": acc("phrasing"),
        "n_by_phrasing": dict(counts),
        "accuracy_by_lang": acc("lang"),
        "accuracy_by_kind": acc("kind"),       # arith, python (the number), retrieval (cites the right [doc id])
        "n_by_kind": dict(Counter(x["kind"] for x in rows)),
        "stopped_reasons": dict(reasons),
        "per_tool": dict(sorted(per_tool.items())),     # calls, schema-valid calls, calls the tool answered
        "transcripts": texts,
        "tool_transcript": tool_text,
        "zh_transcript": zh_text,
        "records": rows,
        "transcripts_md": [tr.to_markdown() for tr in transcripts[:n_transcripts]],
        "transcript_dicts": [tr.to_dict() for tr in transcripts],   # every run, for transcripts.jsonl
    }


__all__ = ["evaluate_agent"]
