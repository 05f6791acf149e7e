"""Tasks: docs -> requests -> per-doc metrics -> aggregate (the lm-evaluation-harness / OpenCompass shape).

A task names the request kind it needs (`loglikelihood`, `loglikelihood_rolling`, `generate`); the default
`Task.evaluate(backend)` sends every doc's requests in one call so the backend can batch and sort them.
Multi-turn tasks (arith_tool: call a tool, read its result, answer) override `evaluate` and batch per turn.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from actors.common.metrics import read_jsonl
from actors.eval.backend import GenerateRequest, LoglikelihoodRequest, ModelBackend, RollingRequest
from actors.eval.config import TASK_NAMES, EvalConfig
from actors.eval.metrics import aggregate_mean, mean_stderr, multiple_choice_metrics
from actors.tooltask import (last_number, normalize_expression, parse_tool_calls, prompt_messages, same_number,
                             tool_result_text, valid_call)


class Task:
    name: str = "task"
    kind: str = "loglikelihood"            # request kind every doc of this task uses
    metric_keys: list[str] = []            # per-doc metrics averaged (with stderr) by the default aggregate

    def docs(self) -> list:
        raise NotImplementedError

    def requests(self, doc) -> list:
        raise NotImplementedError

    def process(self, doc, results: list) -> dict[str, float]:
        raise NotImplementedError

    def aggregate(self, per_doc: list[dict]) -> dict[str, float]:
        return aggregate_mean(per_doc, self.metric_keys)

    def evaluate(self, backend: ModelBackend) -> dict:
        docs = self.docs()
        reqs, spans = [], []
        for d in docs:
            r = self.requests(d)
            spans.append((len(reqs), len(reqs) + len(r)))
            reqs.extend(r)
        results = dispatch(backend, self.kind, reqs)
        per_doc = [self.process(d, results[a:b]) for d, (a, b) in zip(docs, spans)]
        return {"metrics": self.aggregate(per_doc), "n": len(docs)}


def dispatch(backend: ModelBackend, kind: str, reqs: list) -> list:
    if kind == "loglikelihood":
        return backend.loglikelihood(reqs)
    if kind == "loglikelihood_rolling":
        return backend.loglikelihood_rolling(reqs)
    if kind == "generate":
        return backend.generate(reqs)
    raise ValueError(f"unknown request kind {kind!r}; use loglikelihood, loglikelihood_rolling or generate")


# ---- multiple choice (ARC, HellaSwag) ------------------------------------------------------------------
class MultipleChoiceTask(Task):
    """Zero-shot multiple choice scored by loglikelihood of `target_delimiter + choice` after `query`."""

    kind = "loglikelihood"
    metric_keys = ["acc", "acc_norm"]
    target_delimiter = " "  # lm-eval TaskConfig default

    def __init__(self, name: str, path: str | Path, limit: int | None, to_doc):
        self.name, self.path, self.limit, self.to_doc = name, Path(path), limit, to_doc

    def docs(self) -> list[dict]:
        return [self.to_doc(r) for r in read_jsonl(self.path, self.limit)]

    def requests(self, doc: dict) -> list[LoglikelihoodRequest]:
        return [LoglikelihoodRequest(doc["query"], self.target_delimiter + c) for c in doc["choices"]]

    def process(self, doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
        return multiple_choice_metrics([ll for ll, _ in results], doc["choices"], doc["gold"])


def arc_doc(raw: dict) -> dict:
    """lm-eval lm_eval/tasks/arc/arc_easy.yaml (arc_challenge includes it):
        doc_to_text: "Question: {{question}}\\nAnswer:"   doc_to_choice: "{{choices.text}}"
        doc_to_target: "{{choices.label.index(answerKey)}}"
    Accepts the original AI2 schema (question.stem, question.choices[{text,label}]) that /shared holds and
    the HF `allenai/ai2_arc` schema (question str, choices{text[], label[]})."""
    q = raw["question"]
    if isinstance(q, dict):
        stem, texts, labels = q["stem"], [c["text"] for c in q["choices"]], [c["label"] for c in q["choices"]]
    else:
        stem, texts, labels = q, list(raw["choices"]["text"]), list(raw["choices"]["label"])
    if raw["answerKey"] not in labels:
        raise ValueError(f"ARC doc {raw.get('id')}: answerKey {raw['answerKey']!r} not among labels {labels}")
    return {"id": raw.get("id"), "query": f"Question: {stem}\nAnswer:", "choices": texts,
            "gold": labels.index(raw["answerKey"])}


def hellaswag_preprocess(text: str) -> str:
    """lm-eval lm_eval/tasks/hellaswag/utils.py `preprocess` (Brown et al. 2020 cleanup)."""
    import re

    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(raw: dict) -> dict:
    """lm-eval `_process_doc`: query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()).
    The shared slice has only the joined `ctx` (see hellaswag/SOURCE.md), so ctx_b's first letter cannot be
    capitalised there; with ctx_a/ctx_b present (the HF dataset) the lm-eval string is reproduced exactly."""
    if "ctx_a" in raw and "ctx_b" in raw:
        ctx = raw["ctx_a"] + " " + raw["ctx_b"].capitalize()
    else:
        ctx = raw["ctx"]
    return {"id": raw.get("ind"), "query": hellaswag_preprocess(raw["activity_label"] + ": " + ctx),
            "choices": [hellaswag_preprocess(e) for e in raw["endings"]], "gold": int(raw["label"])}


# ---- perplexity over packed validation shards ---------------------------------------------------------
def read_packed_rows(val_dir: str | Path, max_rows: int) -> list[list[int]]:
    """First `max_rows` rows of column `input_ids` over the sorted *.parquet shards of `val_dir`."""
    import pyarrow.parquet as pq

    files = sorted(Path(val_dir).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{val_dir}: no *.parquet shards (expected the data stage's packed val split)")
    rows: list[list[int]] = []
    for f in files:
        pf = pq.ParquetFile(f)
        if "input_ids" not in pf.schema_arrow.names:
            raise ValueError(f"{f}: no column 'input_ids' (columns: {pf.schema_arrow.names})")
        for batch in pf.iter_batches(batch_size=256, columns=["input_ids"]):
            rows.extend(batch.column(0).to_pylist()[: max_rows - len(rows)])
            if len(rows) >= max_rows:
                return rows
    return rows


class PerplexityTask(Task):
    """Mean next-token NLL (nats) over every position but the first of each row, and exp of it.

    Averaged over tokens, not rows (rows are fixed-length, so the two agree up to rows longer than the
    model's window), which is what the training loss reports, so the numbers are directly comparable."""

    name = "perplexity"
    kind = "loglikelihood_rolling"

    def __init__(self, val_dir: str | Path, max_rows: int):
        self.val_dir, self.max_rows = val_dir, max_rows

    def docs(self) -> list[list[int]]:
        return read_packed_rows(self.val_dir, self.max_rows)

    def requests(self, doc: list[int]) -> list[RollingRequest]:
        return [RollingRequest(token_ids=doc)]

    def process(self, doc, results) -> dict[str, float]:
        ll, n = results[0]
        return {"ll": ll, "n": n}

    def aggregate(self, per_doc: list[dict]) -> dict[str, float]:
        tokens = sum(d["n"] for d in per_doc)
        nll = -sum(d["ll"] for d in per_doc) / tokens if tokens else math.nan
        row_nll = [-d["ll"] / d["n"] for d in per_doc if d["n"]]
        return {"nll": nll, "nll_stderr": mean_stderr(row_nll), "perplexity": math.exp(nll),
                "tokens": tokens}


# ---- arithmetic through a tool call (the contract of actors.tooltask) -----------------------------------
class ArithToolTask(Task):
    """Held-out synthetic arithmetic: the model must call a tool, read the result, and state the answer.

    Turn 1: chat template + tools + generation prompt -> greedy until <|im_end|>/EOS.
    If turn 1 holds a valid call, the expression is evaluated by the tool's own evaluator, the call and a `tool`
    message are appended, and turn 2 is generated; the prediction is the last number of the final turn
    (turn 1's text when there was no valid call, so a model answering directly is still scored)."""

    name = "arith_tool"
    kind = "generate"
    metric_keys = ["exact_match", "valid_tool_call_rate", "expression_match"]

    def __init__(self, path: str | Path, limit: int | None, max_new_tokens: int, num_samples: int = 3):
        self.path, self.limit, self.max_new_tokens, self.num_samples = path, limit, max_new_tokens, num_samples

    def docs(self) -> list[dict]:
        return read_jsonl(self.path, self.limit)

    def evaluate(self, backend: ModelBackend) -> dict:
        docs = self.docs()
        first = backend.generate([GenerateRequest(messages=prompt_messages(r), tools=r["tools"],
                                                  max_new_tokens=self.max_new_tokens) for r in docs])
        states = [tool_turn(r, text, call_id=f"call_{i}") for i, (r, text) in enumerate(zip(docs, first))]
        second = [(i, GenerateRequest(messages=st["messages"], tools=r["tools"], max_new_tokens=self.max_new_tokens))
                  for i, (r, st) in enumerate(zip(docs, states)) if st["call"] is not None]
        if second:
            for (i, _), text in zip(second, backend.generate([q for _, q in second])):
                states[i]["turn2"] = states[i]["final"] = text
        per_doc, samples = [], []
        for r, st in zip(docs, states):
            m = score_record(r, st)
            per_doc.append(m)
            if len(samples) < self.num_samples:
                samples.append({"id": r.get("id"), "expression": r["expression"], "answer": str(r["answer"]),
                                "turn1": st["turn1"], "tool_call": st["call"], "tool_result": st["tool_result"],
                                "turn2": st["turn2"], "prediction": last_number(st["final"]), **m})
        return {"metrics": self.aggregate(per_doc), "n": len(docs), "samples": samples}


def tool_turn(record: dict, turn1: str, call_id: str = "call_0") -> dict:
    """Parse the model's first turn; with a valid call, run the tool (the agent's own evaluator) and build the
    messages for turn 2 (assistant tool-call turn + `tool` result, in the synthetic records' own format)."""
    content, calls, errors = parse_tool_calls(turn1)
    st = {"turn1": turn1, "parse_errors": errors, "call": None, "expression": None, "tool_result": None,
          "messages": None, "turn2": None, "final": content}
    found = valid_call(calls)
    if found is None:
        return st  # no valid call: the first turn's text is the final answer
    call, expr = found
    result = tool_result_text(call["name"], expr)
    st.update(call=call, expression=expr, tool_result=result, final=None, messages=prompt_messages(record) + [
        {"role": "assistant", "content": content, "tool_calls": [{
            "id": call_id, "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]},
        {"role": "tool", "tool_call_id": call_id, "name": call["name"], "content": result},
    ])
    return st


def score_record(record: dict, st: dict) -> dict[str, float]:
    valid = st["call"] is not None
    return {"exact_match": float(same_number(last_number(st["final"] or ""), str(record["answer"]))),
            "valid_tool_call_rate": float(valid),
            "expression_match": float(valid and normalize_expression(st["expression"])
                                      == normalize_expression(record["expression"]))}


# ---- BFCL: one function call from the function docs, scored by AST match --------------------------------
class BFCLTask(Task):
    """Berkeley Function Calling Leaderboard, AST categories (simple_python): the tools are rendered with the
    model's chat template exactly as the server renders them, the output is parsed with the server's
    parser (actors.tooltask.parse_tool_calls), and the call is matched by BFCL's rules (actors.eval.bfcl)."""

    kind = "generate"
    metric_keys = ["ast_accuracy", "valid_tool_call_rate"]

    def __init__(self, name: str, path: str | Path, limit: int | None, max_new_tokens: int, num_samples: int = 3):
        self.name, self.path, self.limit = name, path, limit
        self.max_new_tokens, self.num_samples = max_new_tokens, num_samples

    def docs(self) -> list[dict]:
        from actors.eval.bfcl import load_bfcl

        return load_bfcl(self.path, self.limit)

    def evaluate(self, backend: ModelBackend) -> dict:
        from actors.eval.bfcl import ast_match, to_openai_tools

        docs = self.docs()
        outs = backend.generate([GenerateRequest(messages=d["messages"], tools=to_openai_tools(d["functions"]),
                                                 max_new_tokens=self.max_new_tokens) for d in docs])
        per_doc, samples = [], []
        for d, text in zip(docs, outs):
            _, calls, errors = parse_tool_calls(text)
            ok, why = ast_match(calls, d["functions"], d["ground_truth"])
            per_doc.append({"ast_accuracy": float(ok), "valid_tool_call_rate": float(bool(calls))})
            if len(samples) < self.num_samples:
                samples.append({"id": d["id"], "output": text, "calls": calls, "parse_errors": errors,
                                "correct": ok, "reason": why})
        return {"metrics": self.aggregate(per_doc), "n": len(docs), "samples": samples}


# ---- registry -----------------------------------------------------------------------------------------
def build_task(name: str, cfg: EvalConfig) -> Task:
    if name == "perplexity":
        return PerplexityTask(cfg.val_dir, cfg.ppl_max_rows)
    if name == "arc_easy":
        return MultipleChoiceTask("arc_easy", cfg.resolve(cfg.arc_easy_path), cfg.arc_limit, arc_doc)
    if name == "arc_challenge":
        return MultipleChoiceTask("arc_challenge", cfg.resolve(cfg.arc_challenge_path), cfg.arc_limit, arc_doc)
    if name == "hellaswag":
        return MultipleChoiceTask("hellaswag", cfg.resolve(cfg.hellaswag_path), cfg.hellaswag_limit,
                                  hellaswag_doc)
    if name == "arith_tool":
        return ArithToolTask(cfg.arith_path, cfg.arith_limit, cfg.max_new_tokens, cfg.num_samples)
    if name == "bfcl_simple":
        return BFCLTask("bfcl_simple", cfg.resolve(cfg.bfcl_simple_path), cfg.bfcl_limit, cfg.bfcl_max_new_tokens,
                        cfg.num_samples)
    raise ValueError(f"unknown task {name!r}; allowed: {list(TASK_NAMES)}")
