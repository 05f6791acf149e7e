"""Evaluate the agent on held-out synthetic records (plain dicts loaded from JSONL).

Per record the agent runs once from the record's prompt (the messages before the first assistant
turn). Metrics are measured, not massaged: one attempt per record, no retries, errors count as failures.
"""
from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def prompt_of(record: dict) -> list[dict]:
    """The messages the model sees before its first (tool-calling) turn."""
    msgs = record["messages"]
    for i, m in enumerate(msgs):
        if m.get("role") == "assistant":
            return [dict(x) for x in msgs[:i]]
    return [dict(x) for x in msgs]


def last_number(text: str | None) -> str | None:
    """The last number written in `text` (e.g. '123 - 456 = -333' -> '-333'), or None."""
    found = _NUMBER.findall((text or "").replace(",", ""))
    return found[-1] if found else None


def same_number(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return Decimal(a) == Decimal(b)   # '7.0' == '7', without float rounding on big integers
    except InvalidOperation:
        return a.strip() == b.strip()


def evaluate_agent(agent, records: list[dict], n_transcripts: int = 3) -> dict:
    """Run `agent` once per record and score it.

    valid_tool_call_rate: fraction whose FIRST reply had >= 1 tool call to a known tool with valid args;
    tool_call_rate: fraction whose first reply had any tool call; accuracy: last number of the final
    answer equals record["answer"]; mean_steps: model calls per record.
    """
    if not records:
        raise ValueError("evaluate_agent needs at least one held-out record")
    rows, texts, tool_text = [], [], None
    reasons: Counter = Counter()
    for r in records:
        tr = agent.run(prompt_of(r))
        first = tr.steps[0] if tr.steps else None
        calls = first.tool_calls if first else []
        predicted = last_number(tr.final_answer) if tr.stopped_reason == "answer" else None
        row = {
            "id": r.get("id"),
            "expression": r.get("expression"),
            "answer": str(r["answer"]),
            "final_answer": tr.final_answer,
            "predicted": predicted,
            "correct": same_number(predicted, str(r["answer"])),
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
    n = len(rows)
    return {
        "n": n,
        "valid_tool_call_rate": sum(x["first_tool_call_valid"] for x in rows) / n,
        "tool_call_rate": sum(x["first_tool_call"] for x in rows) / n,
        "accuracy": sum(x["correct"] for x in rows) / n,
        "mean_steps": sum(x["steps"] for x in rows) / n,
        "stopped_reasons": dict(reasons),
        "transcripts": texts,
        "tool_transcript": tool_text,
        "records": rows,
    }


__all__ = ["evaluate_agent", "prompt_of", "last_number", "same_number"]
