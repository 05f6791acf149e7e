"""SFT rows (Alpaca, ShareGPT with tool calls) -> OpenAI-message records (Ray-free).

Alpaca row:   {"instruction": str, "input": str?, "output": str, "system": str?, "history": [[q, a], ...]?}
ShareGPT row: {"conversations": [{"from": human|gpt|function_call|observation|system, "value": str}, ...],
               "tools": JSON string or list of function specs?, "system": str?}   (LLaMA-Factory's glaive format)
Record:       {"id": "<name>-<row>", "messages": [OpenAI messages, assistant `tool_calls`, `tool` results],
               "tools": [OpenAI tool specs]?}
The Alpaca user turn is the instruction, followed by the input on a new line when there is one (as
LLaMA-Factory renders Alpaca). Bad rows are quarantined with a reason; counts always reconcile:
read = kept + quarantined.
"""
from __future__ import annotations

import json
from pathlib import Path

from actors.tooltask import parse_call_json


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


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "function_call": "function_call", "observation": "tool", "tool": "tool", "system": "system"}


def _tool_specs(raw) -> tuple[list[dict] | None, str | None]:
    """A row's `tools` (JSON string or list of function / OpenAI tool specs) as OpenAI tool specs."""
    if raw in (None, "", "[]", []):
        return None, None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            return None, f"bad_json: 'tools' is not JSON ({e.msg} at char {e.pos})"
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        return None, "wrong_type: 'tools' must be a list of function specs"
    specs = [t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t}
             for t in raw]
    if not all(isinstance(t["function"].get("name"), str) for t in specs):
        return None, "missing_field: a tool spec in 'tools' has no string 'name'"
    return specs, None


def sharegpt_to_messages(row, rid: str) -> tuple[dict | None, str | None]:
    """(record, None) or (None, reason). `function_call` turns become assistant tool calls (merged into a
    directly preceding assistant turn), `observation` turns become `tool` messages answering them."""
    if not isinstance(row, dict):
        return None, f"wrong_type: row is {type(row).__name__}, expected an object"
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv:
        return None, "missing_field: no non-empty 'conversations' list"
    tools, why = _tool_specs(row.get("tools"))
    if why:
        return None, why
    messages: list[dict] = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages.append({"role": "system", "content": row["system"]})
    calls = 0
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return None, f"wrong_type: conversations[{i}] must be {{'from': str, 'value': str}}"
        role = _SHAREGPT_ROLES.get(turn.get("from"))
        if role is None:
            return None, (f"unknown_role: conversations[{i}].from={turn.get('from')!r}; expected one of "
                          f"{sorted(_SHAREGPT_ROLES)}")
        value = turn["value"]
        if not value.strip():
            return None, f"empty_field: conversations[{i}].value is empty"
        if role == "function_call":
            call, why = parse_call_json(value)  # the contract's call reader: what the server accepts
            if call is None:
                return None, f"bad_call: conversations[{i}] function_call: {why}"
            tc = {"id": f"call_{calls}", "type": "function", "function": {
                "name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
            calls += 1
            if messages and messages[-1]["role"] == "assistant" and "tool_calls" not in messages[-1]:
                messages[-1]["tool_calls"] = [tc]
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [tc]})
        elif role == "tool":
            prev = next((m for m in reversed(messages) if m.get("tool_calls")), None)
            if prev is None:
                return None, f"orphan_observation: conversations[{i}] answers no function_call"
            messages.append({"role": "tool", "tool_call_id": prev["tool_calls"][-1]["id"], "content": value})
        else:
            messages.append({"role": role, "content": value})
    if not any(m["role"] == "assistant" for m in messages):
        return None, "no_assistant: the conversation has no gpt/function_call turn to learn from"
    rec = {"id": rid, "messages": messages}
    if tools:
        rec["tools"] = tools
    return rec, None


def detect_format(rows: list) -> str | None:
    first = next((r for r in rows if isinstance(r, dict)), None)
    if first is None:
        return None
    if "conversations" in first:
        return "sharegpt"
    if "instruction" in first:
        return "alpaca"
    return None


CONVERTERS = {"alpaca": alpaca_to_messages, "sharegpt": sharegpt_to_messages}


def convert_alpaca_file(path: str | Path, name: str, max_rows: int = 0) -> tuple[list[dict], list[dict], dict]:
    return convert_sft_file(path, name, "alpaca", max_rows)


def convert_sft_file(path: str | Path, name: str, fmt: str = "auto",
                     max_rows: int = 0) -> tuple[list[dict], list[dict], dict]:
    """Read one SFT file (a JSON list, or JSONL) in `fmt` ("alpaca" | "sharegpt" | "auto": detected from the
    first row); returns (records, quarantine records, counts {read, kept, quarantined}).

    A file that cannot be read or parsed is one quarantine record (read counts it as one row).
    """
    p = Path(path)
    records, quarantine = [], []

    def bad(rid: str, reason: str, raw) -> None:
        preview = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
        quarantine.append({"stage": "sft", "source": str(p), "doc_id": rid, "reason_kind": reason.split(":")[0],
                           "reason": reason, "raw_preview": preview[:160]})

    try:
        text = p.read_bytes().decode("utf-8")
        rows = ([json.loads(line) for line in text.splitlines() if line.strip()] if p.suffix == ".jsonl"
                else json.loads(text))
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
        bad(name, f"wrong_type: top level is {type(rows).__name__}, expected a list of rows", "")
        rows = None
    if rows is not None and fmt == "auto":
        fmt = detect_format(rows) or ""
        if not fmt:
            bad(name, "unknown_format: rows have neither 'instruction' (alpaca) nor 'conversations' (sharegpt); "
                      "set the source's format", "")
            rows = None
    if rows is None:
        return [], quarantine, {"read": 1, "kept": 0, "quarantined": 1}
    if max_rows:
        rows = rows[:max_rows]
    for i, row in enumerate(rows):
        rec, reason = CONVERTERS[fmt](row, f"{name}-{i}")
        if rec is None:
            bad(f"{name}-{i}", reason, row)
        else:
            records.append(rec)
    counts = {"read": len(rows), "kept": len(records), "quarantined": len(quarantine)}
    assert counts["read"] == counts["kept"] + counts["quarantined"]
    return records, quarantine, counts
