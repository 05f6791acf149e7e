"""Fine-tuning rows in the formats people bring (Alpaca, ShareGPT, OpenAI messages; SFT, preference pairs, KTO
rows) -> one record shape (Ray-free). The data stage and the fine-tune stage both read files through here.

Alpaca row:   {"instruction", "input"?, "output", "system"?, "history": [[q, a], ...]?}; preference rows have
              "chosen"/"rejected" strings instead of "output"; KTO rows add "kto_tag": bool.
ShareGPT row: {"conversations": [{"from": human|gpt|function_call|observation|system, "value"}, ...],
              "tools": JSON string or list?, "system"?}   (LLaMA-Factory's glaive format); preference rows add
              "chosen"/"rejected" as {"from": "gpt", "value"}; KTO rows add "kto_tag".
messages row: {"messages": [OpenAI messages: system/user/assistant (content, tool_calls, "loss": false to not
              train the turn)/tool], "tools"?}; preference rows add "chosen"/"rejected" (a string or an assistant
              message); KTO rows add "label": bool (the last assistant message is the completion).
              A content may also be LLaMA-Factory v1's list of parts [{"type": text|reasoning|tool_call, "value"}]:
              text parts join into the content, tool_call parts ('{"name", "arguments"}') become tool_calls,
              reasoning parts are dropped (a 135M model learns the calls, not the monologue), and a tool turn
              whose text is a JSON list of {"tool_call_id"?, "name"?, "content"} becomes one tool message each.
`columns` renames a file's own column names to these ({"instruction": "question", ...}).

Record (what training reads):
  sft:        {"id", "messages", "tools"?}
  preference: {"id", "messages" (the prompt turns), "tools"?, "chosen": msg, "rejected": msg}
  kto:        {"id", "messages" (prompt + the completion last), "tools"?, "label": bool}
The Alpaca user turn is the instruction, followed by the input on a new line when there is one (as
LLaMA-Factory renders Alpaca). Bad rows are quarantined with their row number and reason; counts always
reconcile: read = kept + quarantined.
"""
from __future__ import annotations

import json
from pathlib import Path

from actors.tooltask import parse_call_json


def alpaca_to_messages(row, rid: str) -> tuple[dict | None, str | None]:
    """(record, None) or (None, reason)."""
    if not isinstance(row, dict):
        return None, f"wrong_type: row is {type(row).__name__}, expected an object"
    pair = "chosen" in row or "rejected" in row
    for key in ("instruction",) + (("chosen", "rejected") if pair else ("output",)):
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
    messages.append({"role": "user", "content": user})
    if pair:
        return _with_pair({"id": rid, "messages": messages}, row["chosen"], row["rejected"])
    messages.append({"role": "assistant", "content": row["output"]})
    return _with_label({"id": rid, "messages": messages}, row, "kto_tag")


def _with_pair(rec: dict, chosen, rejected) -> tuple[dict | None, str | None]:
    """`rec` (prompt turns) as a preference record; chosen/rejected are strings or assistant messages."""
    for key, v in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(v, dict):
            v = v.get("content", v.get("value"))
        if not isinstance(v, str):
            return None, f"wrong_type: {key!r} must be a string or an assistant message"
        if not v.strip():
            return None, f"empty_field: {key!r} is empty"
        rec[key] = {"role": "assistant", "content": v}
    if not rec["messages"] or rec["messages"][-1]["role"] not in ("user", "tool"):
        return None, "bad_prompt: a preference pair's prompt must end with a user (or tool) turn"
    return rec, None


def _with_label(rec: dict, row: dict, key: str) -> tuple[dict | None, str | None]:
    """`rec` as a KTO record when the row has a desirable/undesirable label."""
    if key not in row:
        return rec, None
    if not isinstance(row[key], bool):
        return None, f"wrong_type: {key!r} must be true (desirable) or false (undesirable)"
    if rec["messages"][-1]["role"] != "assistant":
        return None, "bad_completion: a KTO row's last turn must be the assistant's completion"
    rec["label"] = row[key]
    return rec, None


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
    rec = {"id": rid, "messages": messages}
    if tools:
        rec["tools"] = tools
    if "chosen" in row or "rejected" in row:
        return _with_pair(rec, row.get("chosen"), row.get("rejected"))
    if not any(m["role"] == "assistant" for m in messages):
        return None, "no_assistant: the conversation has no gpt/function_call turn to learn from"
    return _with_label(rec, row, "kto_tag")


_ROLES = ("system", "user", "assistant", "tool")


def messages_to_record(row, rid: str) -> tuple[dict | None, str | None]:
    """OpenAI `messages` rows (tool calls, tool results, per-turn `loss` flags) -> (record, None) or (None, why)."""
    if not isinstance(row, dict):
        return None, f"wrong_type: row is {type(row).__name__}, expected an object"
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return None, "missing_field: no non-empty 'messages' list"
    tools, why = _tool_specs(row.get("tools"))
    if why:
        return None, why
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return None, f"wrong_type: messages[{i}] must be an object with 'role' and 'content'"
        role = m.get("role")
        if role not in _ROLES:
            return None, f"unknown_role: messages[{i}].role={role!r}; expected one of {list(_ROLES)}"
        content, calls = m.get("content"), m.get("tool_calls")
        if isinstance(content, list):
            parts, why = _content_parts(content, i, role, out)
            if why:
                return None, why
            if role == "tool" and isinstance(parts, list):
                out.extend(parts)
                continue
            content, calls = parts
        if content is not None and not isinstance(content, str):
            return None, f"wrong_type: messages[{i}].content is {type(content).__name__}, expected a string"
        if calls is not None and (role != "assistant" or not isinstance(calls, list)):
            return None, f"wrong_type: messages[{i}].tool_calls must be a list on an assistant message"
        if not (content or "").strip() and not calls:
            return None, f"empty_field: messages[{i}] ({role}) is empty"
        if "loss" in m and not isinstance(m["loss"], bool):
            return None, f"wrong_type: messages[{i}].loss must be true or false"
        msg = {"role": role, "content": content or ""}
        for k in ("tool_calls", "tool_call_id", "name", "loss"):
            if k in m:
                msg[k] = m[k]
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    rec = {"id": rid, "messages": out}
    if tools:
        rec["tools"] = tools
    if "chosen" in row or "rejected" in row:
        return _with_pair(rec, row.get("chosen"), row.get("rejected"))
    if not any(m["role"] == "assistant" for m in out):
        return None, "no_assistant: the conversation has no assistant turn to learn from"
    return _with_label(rec, row, "label")


def _content_parts(parts: list, i: int, role: str, prior: list[dict]):
    """LLaMA-Factory v1 content parts -> ((text, tool_calls | None) or, for a tool turn holding a JSON list of
    results, [tool messages]), None; or (None, why)."""
    texts, calls = [], []
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") not in ("text", "reasoning", "tool_call") \
                or not isinstance(part.get("value"), str):
            return None, (f"wrong_type: messages[{i}].content[{j}] must be {{'type': text|reasoning|tool_call, "
                          f"'value': str}}")
        if part["type"] == "text":
            texts.append(part["value"])
        elif part["type"] == "tool_call":
            call, why = parse_call_json(part["value"])
            if call is None:
                return None, f"bad_call: messages[{i}].content[{j}]: {why}"
            n = sum(len(m.get("tool_calls") or []) for m in prior) + len(calls)
            calls.append({"id": f"call_{n}", "type": "function", "function": {
                "name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}})
    text = "\n".join(texts)
    if role == "tool":
        try:
            results = json.loads(text)
        except json.JSONDecodeError:
            results = None
        if isinstance(results, list) and results and all(isinstance(r, dict) and "content" in r for r in results):
            asked = next((m["tool_calls"] for m in reversed(prior) if m.get("tool_calls")), [])
            msgs = []
            for k, r in enumerate(results):
                msg = {"role": "tool", "content": r["content"] if isinstance(r["content"], str)
                       else json.dumps(r["content"], ensure_ascii=False)}
                if k < len(asked):   # the ids of the calls being answered, in order (the file's own ids are not ours)
                    msg["tool_call_id"] = asked[k]["id"]
                if isinstance(r.get("name"), str):
                    msg["name"] = r["name"]
                msgs.append(msg)
            return msgs, None
    return (text, calls or None), None


def kind_of(rec: dict) -> str:
    """sft | preference | kto."""
    return "preference" if "chosen" in rec else "kto" if "label" in rec else "sft"


def detect_format(rows: list) -> str | None:
    first = next((r for r in rows if isinstance(r, dict)), None)
    if first is None:
        return None
    if "conversations" in first:
        return "sharegpt"
    if "messages" in first:
        return "messages"
    if "instruction" in first:
        return "alpaca"
    return None


CONVERTERS = {"alpaca": alpaca_to_messages, "sharegpt": sharegpt_to_messages, "messages": messages_to_record}
FORMATS = ("auto",) + tuple(CONVERTERS)


def rename_columns(row, columns: dict[str, str] | None):
    """A row with its own column names mapped to ours (`columns`: ours -> theirs)."""
    if not columns or not isinstance(row, dict):
        return row
    row = dict(row)
    for ours, theirs in columns.items():
        if theirs in row:
            row[ours] = row.pop(theirs)
    return row


def convert_alpaca_file(path: str | Path, name: str, max_rows: int = 0) -> tuple[list[dict], list[dict], dict]:
    return convert_sft_file(path, name, "alpaca", max_rows)


def convert_sft_file(path: str | Path, name: str, fmt: str = "auto", max_rows: int = 0,
                     columns: dict[str, str] | None = None) -> tuple[list[dict], list[dict], dict]:
    """Read one fine-tuning file (a JSON list, JSONL, or Parquet) in `fmt` ("alpaca" | "sharegpt" | "messages" |
    "auto": detected from the first row); returns (records, quarantine records, counts {read, kept,
    quarantined}). Each quarantine record names its `row` (0-based; a JSONL line that is not JSON is one row).

    A file that cannot be read or parsed is one quarantine record (read counts it as one row).
    """
    p = Path(path)
    records, quarantine = [], []

    def bad(rid: str, reason: str, raw, row: int | None = None) -> None:
        preview = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
        quarantine.append({"stage": "sft", "source": str(p), "doc_id": rid, "row": row,
                           "reason_kind": reason.split(":")[0], "reason": reason, "raw_preview": preview[:160]})

    try:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        else:
            text = p.read_bytes().decode("utf-8")
            rows = _jsonl_rows(text) if p.suffix == ".jsonl" else json.loads(text)
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
        fmt = detect_format([rename_columns(r, columns) for r in rows[:1]]) or ""
        if not fmt:
            bad(name, "unknown_format: rows have none of 'instruction' (alpaca), 'conversations' (sharegpt), "
                      "'messages' (OpenAI): set the dataset's format, or map your columns with `columns`", "")
            rows = None
    if rows is None:
        return [], quarantine, {"read": 1, "kept": 0, "quarantined": 1}
    if max_rows:
        rows = rows[:max_rows]
    for i, row in enumerate(rows):
        if isinstance(row, _BadLine):
            bad(f"{name}-{i}", row.reason, row.text, i)
            continue
        rec, reason = CONVERTERS[fmt](rename_columns(row, columns), f"{name}-{i}")
        if rec is None:
            bad(f"{name}-{i}", reason, row, i)
        else:
            records.append(rec)
    counts = {"read": len(rows), "kept": len(records), "quarantined": len(quarantine)}
    assert counts["read"] == counts["kept"] + counts["quarantined"]
    return records, quarantine, counts


class _BadLine:
    """A JSONL line that is not JSON: quarantined with its row number; the other lines go on."""

    def __init__(self, text: str, reason: str):
        self.text, self.reason = text, reason


def _jsonl_rows(text: str) -> list:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            rows.append(_BadLine(line, f"bad_json: line {n}: {e.msg} at column {e.colno}"))
    return rows


def read_rows(path: str | Path) -> list:
    """Rows of a benchmark or dataset file by its suffix: .jsonl (one JSON value per line; a bad line becomes a
    `_BadLine` the caller quarantines), .json (a list, or {"data": [...]}), .csv (header row), .parquet."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    if suffix == ".csv":
        import csv

        with open(p, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    text = p.read_bytes().decode("utf-8")
    if suffix == ".jsonl":
        return _jsonl_rows(text)
    if suffix == ".json":
        rows = json.loads(text)
        if isinstance(rows, dict) and isinstance(rows.get("data"), list):
            rows = rows["data"]
        if not isinstance(rows, list):
            raise ValueError(f"{p}: top level is {type(rows).__name__}; expected a list of rows or {{'data': [...]}}")
        return rows
    raise ValueError(f"{p}: unknown file type {suffix!r}; use .jsonl, .json, .csv or .parquet")


def is_bad_line(row) -> str | None:
    """The reason a row from `read_rows` could not be parsed, or None."""
    return row.reason if isinstance(row, _BadLine) else None
