"""Tasks: docs -> requests -> per-doc metrics -> aggregate (the lm-evaluation-harness / OpenCompass shape).

A task names the request kind it needs (`loglikelihood`, `loglikelihood_rolling`, `generate`); the default
`Task.evaluate(backend)` sends every doc's requests in one call so the backend can batch and sort them.
Multi-turn tasks (arith_tool: call a tool, read its result, answer) override `evaluate` and batch per turn.
"""
from __future__ import annotations

import ast
import json
import math
import operator
from pathlib import Path

from actors.common.metrics import read_jsonl
from actors.eval.backend import GenerateRequest, LoglikelihoodRequest, ModelBackend, RollingRequest
from actors.eval.config import TASK_NAMES, EvalConfig
from actors.eval.metrics import (aggregate_mean, last_number, mean_stderr, multiple_choice_metrics,
                                 normalize_expression, normalize_number)


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


# ---- arithmetic through a tool call -------------------------------------------------------------------
class UnsafeExpression(ValueError):
    """The tool argument is not plain arithmetic (or is too large to evaluate)."""


MAX_EXPRESSION_CHARS = 256
MAX_RESULT_BITS = 4096       # 2**4096 ~ 1e1233: ample for arithmetic answers, cheap to compute and print
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _bits(v: int | float) -> float:
    return abs(v).bit_length() if isinstance(v, int) else (math.log2(abs(v)) if v not in (0, 0.0) and
                                                             math.isfinite(v) else 0.0)


def safe_eval(expr: str) -> int | float:
    """Evaluate numbers, + - * / // % **, unary +/- and parentheses by walking the AST; anything else
    (names, calls, attributes, subscripts, strings, comparisons...) raises UnsafeExpression. eval() is never
    used. Powers are bounded before they are computed so `9**9**9` cannot hang the worker."""
    if not isinstance(expr, str):
        raise UnsafeExpression(f"expression must be a string, got {type(expr).__name__}")
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise UnsafeExpression(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise UnsafeExpression(f"not an arithmetic expression: {e.msg}") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # bool/complex/str excluded
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow):
                if abs(b) > MAX_RESULT_BITS or (abs(a) > 1 and b > 0 and b * _bits(a) > MAX_RESULT_BITS):
                    raise UnsafeExpression(f"power too large: {a!r} ** {b!r}")
                if a == 0 and b < 0:
                    raise UnsafeExpression("zero to a negative power")
            try:
                v = _BINOPS[type(node.op)](a, b)
            except ZeroDivisionError:
                raise UnsafeExpression("division by zero") from None
            except OverflowError:
                raise UnsafeExpression("result overflows a float") from None
            if isinstance(v, complex):
                raise UnsafeExpression("complex result")
            if _bits(v) > MAX_RESULT_BITS:
                raise UnsafeExpression(f"result larger than 2**{MAX_RESULT_BITS}")
            return v
        raise UnsafeExpression(f"{type(node).__name__} is not allowed (only numbers, + - * / // % **, "
                               "unary +/- and parentheses)")

    return ev(tree)


def format_result(v: int | float) -> str:
    return normalize_number(repr(v)) if isinstance(v, float) else str(v)


# The tools of actors/data/synthetic.py TOOLS and the argument holding the expression.
TOOL_ARGUMENT = {"calculator": "expression", "python": "code"}


def valid_call(calls: list[dict]) -> tuple[dict, str] | None:
    """First call to a known tool whose expression argument is a string."""
    for c in calls:
        key = TOOL_ARGUMENT.get(c["name"])
        if key is not None and isinstance(c["arguments"].get(key), str):
            return c, c["arguments"][key]
    return None


class ArithToolTask(Task):
    """Held-out synthetic arithmetic: the model must call a tool, read the result, and state the answer.

    Turn 1: chat template + tools + generation prompt -> greedy until <|im_end|>/EOS.
    If turn 1 holds a valid call, the expression is evaluated with `safe_eval`, the call and a `tool`
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
        first = backend.generate([GenerateRequest(messages=_prompt(r), tools=r["tools"],
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


def _prompt(record: dict) -> list[dict]:
    from actors.data.synthetic import prompt_messages

    return prompt_messages(record)


def tool_turn(record: dict, turn1: str, call_id: str = "call_0") -> dict:
    """Parse the model's first turn; with a valid call, run the tool and build the messages for turn 2
    (assistant tool-call turn + `tool` result, in the synthetic records' own format)."""
    from actors.model.tokenizer import parse_tool_calls

    content, calls, errors = parse_tool_calls(turn1)
    st = {"turn1": turn1, "parse_errors": errors, "call": None, "expression": None, "tool_result": None,
          "messages": None, "turn2": None, "final": content}
    found = valid_call(calls)
    if found is None:
        return st  # no valid call: the first turn's text is the final answer
    call, expr = found
    try:
        result = format_result(safe_eval(expr))
    except UnsafeExpression as e:
        result = f"error: {e}"
    st.update(call=call, expression=expr, tool_result=result, final=None, messages=_prompt(record) + [
        {"role": "assistant", "content": content, "tool_calls": [{
            "id": call_id, "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]},
        {"role": "tool", "tool_call_id": call_id, "name": call["name"], "content": result},
    ])
    return st


def score_record(record: dict, st: dict) -> dict[str, float]:
    pred = last_number(st["final"] or "")
    valid = st["call"] is not None
    return {"exact_match": float(pred is not None and pred == normalize_number(str(record["answer"]))),
            "valid_tool_call_rate": float(valid),
            "expression_match": float(valid and normalize_expression(st["expression"])
                                      == normalize_expression(record["expression"]))}


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
    raise ValueError(f"unknown task {name!r}; allowed: {list(TASK_NAMES)}")
