"""Alpaca-format SFT rows -> OpenAI-message records (Ray-free).

Alpaca row: {"instruction": str, "input": str?, "output": str, "system": str?, "history": [[q, a], ...]?}
Record:     {"id": "<name>-<row>", "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
The user turn is the instruction, followed by the input on a new line when there is one (as LLaMA-Factory
renders Alpaca). Bad rows are quarantined with a reason; counts always reconcile: read = kept + quarantined.
"""
from __future__ import annotations

import json
from pathlib import Path


def alpaca_to_messages(row, rid: str) -> tuple[dict | None, str | None]:
    """(record, None) or (None, reason)."""
    if not isinstance(row, dict):
        return None, f"wrong_type: row is {type(row).__name__}, expected an object"
    for key in ("instruction", "output"):
        v = row.get(key)
        if v is None:
            return None, f"missing_field: no {key!r}"
        if not isinstance(v, str):
            return None, f"wrong_type: {key!r} is {type(v).__name__}, expected a string"
        if not v.strip():
            return None, f"empty_field: {key!r} is empty"
    for key in ("input", "system"):
        v = row.get(key)
        if v is not None and not isinstance(v, str):
            return None, f"wrong_type: {key!r} is {type(v).__name__}, expected a string"
    history = row.get("history") or []
    if not isinstance(history, list) or not all(
            isinstance(h, (list, tuple)) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in history):
        return None, "wrong_type: 'history' must be a list of [user, assistant] string pairs"

    messages = []
    if (row.get("system") or "").strip():
        messages.append({"role": "system", "content": row["system"]})
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    user = row["instruction"]
    if (row.get("input") or "").strip():
        user = f"{user}\n{row['input']}"
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    return {"id": rid, "messages": messages}, None


def convert_alpaca_file(path: str | Path, name: str, max_rows: int = 0) -> tuple[list[dict], list[dict], dict]:
    """Read one Alpaca JSON list; returns (records, quarantine records, counts {read, kept, quarantined}).

    A file that cannot be read or parsed is one quarantine record (read counts it as one row).
    """
    p = Path(path)
    records, quarantine = [], []

    def bad(rid: str, reason: str, raw) -> None:
        preview = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
        quarantine.append({"stage": "sft", "source": str(p), "doc_id": rid, "reason_kind": reason.split(":")[0],
                           "reason": reason, "raw_preview": preview[:160]})

    try:
        rows = json.loads(p.read_bytes().decode("utf-8"))
    except OSError as e:
        bad(name, f"unreadable: {type(e).__name__}: {e.strerror or e}", "")
        rows = None
    except UnicodeDecodeError as e:
        bad(name, f"invalid_utf8: byte offset {e.start} ({e.reason})", "")
        rows = None
    except json.JSONDecodeError as e:
        bad(name, f"bad_json: {e.msg} at line {e.lineno} column {e.colno}", "")
        rows = None
    if rows is not None and not isinstance(rows, list):
        bad(name, f"wrong_type: top level is {type(rows).__name__}, expected a list of Alpaca rows", "")
        rows = None
    if rows is None:
        return [], quarantine, {"read": 1, "kept": 0, "quarantined": 1}
    if max_rows:
        rows = rows[:max_rows]
    for i, row in enumerate(rows):
        rec, reason = alpaca_to_messages(row, f"{name}-{i}")
        if rec is None:
            bad(f"{name}-{i}", reason, row)
        else:
            records.append(rec)
    counts = {"read": len(rows), "kept": len(records), "quarantined": len(quarantine)}
    assert counts["read"] == counts["kept"] + counts["quarantined"]
    return records, quarantine, counts
