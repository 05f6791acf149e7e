"""Tasks: docs -> requests -> per-doc metrics -> aggregate (the lm-evaluation-harness / OpenCompass shape).

Most tasks are data (`ConfigurableTask` over a YAML `TaskSpec`, see spec.py); a few need code (`PYTHON_TASKS`:
perplexity over packed shards, arith_tool's two turns through a tool, BFCL's AST match). A pooled task only
says which requests each doc needs and how to score the answers, so the runner can pool the requests of every
task, sort and batch them, and shard them over eval workers; a multi-turn task (arith_tool) runs its own
`evaluate(backend)` turn by turn.

`build_tasks(names, cfg)` is the one way from task names to tasks: it expands groups (mmlu -> 57 subjects),
applies the run's options (limit, num_fewshot, chat template, gen_kwargs, --data overrides), and checks every
input exists before a model loads.
"""
from __future__ import annotations

import json
import math
import random
from functools import lru_cache
from pathlib import Path

from actors.common.formats import is_bad_line, read_rows
from actors.eval.backend import GenerateRequest, LoglikelihoodRequest, ModelBackend, RollingRequest
from actors.eval.metrics import (aggregate_mean, apply_filter, exact_match, f1_score, mean_stderr,
                                 multiple_choice_metrics, weighted_perplexities)
from actors.eval.spec import TaskRegistry, TaskSpec, doc_choices, doc_field_or_template, doc_target, render
from actors.tooltask import (last_number, normalize_expression, parse_tool_calls, prompt_messages, same_number,
                             tool_result_text, valid_call)


class Task:
    name: str = "task"
    kind: str = "loglikelihood"            # request kind of every doc (loglikelihood | loglikelihood_rolling | generate)
    metric_keys: list[str] = []            # per-doc metrics averaged (with stderr) by the default aggregate
    pooled: bool = True                    # requests go through the runner's pool; False: evaluate(backend)
    group: str | None = None               # the group a subtask reports into (mmlu_anatomy -> mmlu)
    version: str = "1.0"
    num_fewshot: int = 0

    def __init__(self):
        self.quarantine: list[dict] = []

    def docs(self) -> list:
        raise NotImplementedError

    def requests(self, doc) -> list:
        raise NotImplementedError

    def process(self, doc, results: list) -> tuple[dict[str, float], dict]:
        """Per-doc metrics and the sample record (`--log-samples`)."""
        raise NotImplementedError

    def aggregate(self, per_doc: list[dict]) -> dict[str, float]:
        return aggregate_mean(per_doc, self.metric_keys)

    def config(self) -> dict:
        return {"task": self.name, "version": self.version, "num_fewshot": self.num_fewshot}

    def evaluate(self, backend: ModelBackend) -> dict:
        """Run alone on a backend (the runner pools the requests of many tasks instead)."""
        docs = self.docs()
        reqs, spans = [], []
        for d in docs:
            r = self.requests(d)
            spans.append((len(reqs), len(reqs) + len(r)))
            reqs.extend(r)
        results = dispatch(backend, self.kind, reqs)
        return self.finish(docs, [results[a:b] for a, b in spans])

    def finish(self, docs: list, results: list[list]) -> dict:
        per_doc, samples = [], []
        for d, res in zip(docs, results):
            m, s = self.process(d, res)
            per_doc.append(m)
            samples.append(s)
        return {"metrics": self.aggregate(per_doc), "n": len(docs), "samples": samples,
                "per_doc": per_doc, "quarantined": len(self.quarantine)}


def dispatch(backend: ModelBackend, kind: str, reqs: list) -> list:
    if not reqs:
        return []
    if kind == "loglikelihood":
        return backend.loglikelihood(reqs)
    if kind == "loglikelihood_rolling":
        return backend.loglikelihood_rolling(reqs)
    if kind == "generate":
        return backend.generate(reqs)
    raise ValueError(f"unknown request kind {kind!r}; use loglikelihood, loglikelihood_rolling or generate")


# ---- named row converters (process_docs) ----------------------------------------------------------------
def ai2_mc(raw: dict) -> dict:
    """ARC / OpenBookQA rows to {id, question, choices (texts), labels, gold}. The templates are lm-eval's:
    arc_easy.yaml  doc_to_text "Question: {{question}}\\nAnswer:", doc_to_choice "{{choices.text}}",
    doc_to_target "{{choices.label.index(answerKey)}}"; openbookqa doc_to_text question_stem.
    Accepts the original AI2 schema (question.stem, question.choices[{text,label}]) that /shared holds and
    the HF schema (question str or question_stem, choices{text[], label[]})."""
    q = raw.get("question", raw.get("question_stem"))
    if isinstance(q, dict):
        stem, texts, labels = q["stem"], [c["text"] for c in q["choices"]], [c["label"] for c in q["choices"]]
    else:
        stem, texts, labels = q, list(raw["choices"]["text"]), list(raw["choices"]["label"])
    key = str(raw["answerKey"]).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} not among labels {labels}")
    return {"id": raw.get("id"), "question": stem, "choices": texts, "labels": labels, "gold": labels.index(key)}


def arc_doc(raw: dict) -> dict:
    """An ARC row as the query/choices/gold of lm-eval's arc_easy task (tests compare this to lm-eval)."""
    d = ai2_mc(raw)
    return {"id": d["id"], "query": f"Question: {d['question']}\nAnswer:", "choices": d["choices"], "gold": d["gold"]}


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


DOC_PROCESSORS = {"ai2_mc": ai2_mc, "hellaswag": hellaswag_doc}


# ---- tasks from YAML ---------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _rows(path: str, mtime: float) -> tuple:
    return tuple(read_rows(path))


def load_split(path: Path, processor: str | None, source: str) -> tuple[list[dict], list[dict]]:
    """(docs, quarantine): every row converted by `processor`; a row that is not JSON or fails conversion is
    quarantined with its row number and reason, and the rest go on."""
    if not path.is_file():
        raise FileNotFoundError(f"{source}: data file {str(path)!r} does not exist; point the task at the file "
                                "with --data TASK=PATH (or set the data root)")
    docs, bad = [], []
    for i, row in enumerate(_rows(str(path), path.stat().st_mtime)):
        why = is_bad_line(row)
        if why is None and not isinstance(row, dict):
            why = f"wrong_type: row is {type(row).__name__}, expected an object"
        if why is None and processor is not None:
            try:
                row = DOC_PROCESSORS[processor](row)
            except (KeyError, ValueError, TypeError, IndexError) as e:
                why = f"process_docs {processor}: {type(e).__name__}: {e}"
        if why is None:
            docs.append(dict(row, _row=i))
        else:
            bad.append({"source": str(path), "row": i, "reason": why})
    return docs, bad


class ConfigurableTask(Task):
    """One task (or one subtask of a split_by group) defined by a `TaskSpec`."""

    def __init__(self, spec: TaskSpec, data_root: str | Path | None, *, subset: str | None = None,
                 test_path: str | Path | None = None, limit: int | None = None, num_fewshot: int | None = None,
                 apply_chat_template: bool = False, fewshot_as_multiturn: bool = False,
                 gen_kwargs: dict | None = None, counts_shared_rows: bool = True):
        super().__init__()
        self.spec, self.subset = spec, subset
        self.name = spec.task if subset is None else f"{spec.task}_{subset}"
        self.group = spec.task if spec.split_by else None
        self.version = spec.version
        self.kind = {"multiple_choice": "loglikelihood", "loglikelihood": "loglikelihood",
                     "loglikelihood_rolling": "loglikelihood_rolling", "generate_until": "generate"}[spec.output_type]
        self.data_root = Path(data_root) if data_root is not None else None
        self.test_path = self._path(test_path if test_path is not None else spec.dataset[spec.test_split])
        self.limit = limit
        self.num_fewshot = spec.num_fewshot if num_fewshot is None else num_fewshot
        if self.num_fewshot and spec.fewshot_split is None:
            raise ValueError(f"task {spec.task!r}: num_fewshot={self.num_fewshot} but the task has no fewshot_split")
        self.chat, self.multiturn = apply_chat_template, fewshot_as_multiturn
        gk = dict(spec.generation_kwargs, **(gen_kwargs or {}))
        self.until = list(gk.get("until", []))
        self.max_gen_toks = int(gk.get("max_gen_toks", 256))
        self.filters = spec.filters or [{"name": "none", "steps": []}]
        self._fewshot: list[dict] | None = None
        self._fewshot_quarantine: list[dict] = []
        # The subtasks of a split_by group read the same files: a bad row that names no subset (unreadable, or
        # without the split_by field) is counted by one subtask only, so the group's total counts it once.
        self.counts_shared_rows = counts_shared_rows

    def _path(self, p) -> Path:
        p = Path(p)
        if p.is_absolute():
            return p
        if self.data_root is None:
            raise ValueError(f"task {self.spec.task!r}: relative data path {str(p)!r} needs a data root "
                             "(cluster.data_root()) or an absolute path via --data")
        return self.data_root / p

    def config(self) -> dict:
        s = self.spec
        return {"task": self.name, "group": self.group, "version": s.version, "output_type": s.output_type,
                "data": str(self.test_path), "num_fewshot": self.num_fewshot, "fewshot_split": s.fewshot_split,
                "fewshot_sampler": s.fewshot_sampler, "fewshot_seed": s.fewshot_seed, "limit": self.limit,
                "apply_chat_template": self.chat, "fewshot_as_multiturn": self.multiturn,
                "metrics": s.metrics, "filters": [f["name"] for f in self.filters],
                "generation_kwargs": {"until": self.until, "max_gen_toks": self.max_gen_toks}
                if s.output_type == "generate_until" else None, "source": s.source}

    # ---- docs ----
    def _in_subset(self, doc: dict) -> bool:
        return self.subset is None or str(doc.get(self.spec.split_by)) == self.subset

    def _prepare(self, doc: dict) -> dict:
        """Text, choices and target of a doc, computed once (a template error quarantines the doc)."""
        s = self.spec
        out = dict(doc)
        choices = doc_choices(s, doc) if s.output_type == "multiple_choice" else None
        out["_text"] = doc_field_or_template(s.doc_to_text, doc, s.constants) if s.doc_to_text else ""
        out["_choices"] = choices
        out["_target"] = doc_target(s, doc, choices) if s.doc_to_target is not None else ""
        return out

    def _counts(self, row: dict | None) -> bool:
        """Whether a bad row is this task's to count (see `counts_shared_rows`)."""
        if self.subset is None or row is None or self.spec.split_by not in row:
            return self.counts_shared_rows
        return self._in_subset(row)

    def docs(self) -> list[dict]:
        s = self.spec
        raw, bad = load_split(self.test_path, s.process_docs, f"task {self.name}")
        self.quarantine = [b for b in bad if self._counts(None)]
        docs, matched = [], 0
        for d in raw:
            if not self._in_subset(d):
                continue
            matched += 1
            if self.limit is not None and len(docs) >= self.limit:
                break
            try:
                docs.append(self._prepare(d))
            except Exception as e:  # a bad row must not stop the run: quarantined with its reason
                self.quarantine.append({"source": str(self.test_path), "row": d["_row"],
                                        "reason": f"template: {type(e).__name__}: {e}"})
        if not matched and self.subset is not None:
            raise ValueError(f"task {self.name!r}: no row of {self.test_path} has {s.split_by} == {self.subset!r}")
        self.fewshot_pool()
        self.quarantine += self._fewshot_quarantine  # exemplar rows left out are counted too
        return docs

    def fewshot_pool(self) -> list[dict]:
        if self._fewshot is None:
            s = self.spec
            if not self.num_fewshot:
                self._fewshot = []
            else:
                path = self._path(s.dataset[s.fewshot_split])
                raw, bad = load_split(path, s.process_docs, f"task {self.name}")
                pool, dropped = [], [dict(b, split=s.fewshot_split) for b in bad if self._counts(None)]
                for d in raw:
                    try:
                        pool.append(self._prepare(d))
                    except Exception as e:  # a bad exemplar row is left out of the pool and quarantined
                        if self._counts(d):
                            dropped.append({"source": str(path), "row": d["_row"], "split": s.fewshot_split,
                                            "reason": f"template: {type(e).__name__}: {e}"})
                self._fewshot, self._fewshot_quarantine = pool, dropped
        return self._fewshot

    def exemplars(self, doc: dict) -> list[dict]:
        """first_n: the first k rows of the few-shot split (sharing `fewshot_match` with the doc); random: k of
        them drawn by a generator seeded with (fewshot_seed, doc row), so a doc's prompt does not depend on
        which other docs are evaluated, or on which worker, in which order."""
        if not self.num_fewshot:
            return []
        s = self.spec
        pool = self.fewshot_pool()
        same_split = s.fewshot_split == s.test_split and self.test_path == self._path(s.dataset[s.fewshot_split])
        if s.fewshot_match:
            pool = [e for e in pool if e.get(s.fewshot_match) == doc.get(s.fewshot_match)]
        if same_split:
            pool = [e for e in pool if e["_row"] != doc["_row"]]
        if s.fewshot_sampler == "random":
            rng = random.Random(f"{s.fewshot_seed}:{doc['_row']}")
            return rng.sample(pool, min(self.num_fewshot, len(pool)))
        return pool[: self.num_fewshot]

    def target_text(self, doc: dict) -> str:
        t = doc["_target"]
        return doc["_choices"][t] if doc["_choices"] is not None else t

    def context(self, doc: dict):
        """The prompt: text (description + exemplars + question) or, with the chat template, messages."""
        s = self.spec
        desc = render(s.description, doc, s.constants) if s.description else ""
        shots = self.exemplars(doc)
        if not self.chat:
            return desc + "".join(e["_text"] + s.target_delimiter + self.target_text(e) + s.fewshot_delimiter
                                  for e in shots) + doc["_text"]
        msgs = [{"role": "system", "content": desc.strip()}] if desc.strip() else []
        if self.multiturn:
            for e in shots:
                msgs += [{"role": "user", "content": e["_text"]},
                         {"role": "assistant", "content": self.target_text(e)}]
            msgs.append({"role": "user", "content": doc["_text"]})
        else:
            msgs.append({"role": "user", "content": "".join(
                e["_text"] + s.target_delimiter + self.target_text(e) + s.fewshot_delimiter for e in shots)
                + doc["_text"]})
        return msgs

    # ---- requests and scoring ----
    def requests(self, doc: dict) -> list:
        s, ctx = self.spec, self.context(doc)
        if s.output_type == "multiple_choice":
            return [LoglikelihoodRequest(ctx, s.target_delimiter + c) for c in doc["_choices"]]
        if s.output_type == "loglikelihood":
            return [LoglikelihoodRequest(ctx, s.target_delimiter + doc["_target"])]
        if s.output_type == "loglikelihood_rolling":
            return [RollingRequest(text=doc["_target"] or doc["_text"])]
        if isinstance(ctx, list):
            return [GenerateRequest(messages=ctx, stop=self.until, max_new_tokens=self.max_gen_toks)]
        return [GenerateRequest(prompt=ctx, stop=self.until, max_new_tokens=self.max_gen_toks)]

    def process(self, doc: dict, results: list) -> tuple[dict[str, float], dict]:
        s = self.spec
        sample = {"doc_id": doc["_row"], "doc": {k: v for k, v in doc.items() if not k.startswith("_")},
                  "target": doc["_target"]}
        if s.output_type == "multiple_choice":
            lls = [ll for ll, _ in results]
            m = multiple_choice_metrics(lls, doc["_choices"], doc["_target"])
            m = {k: v for k, v in m.items() if k in s.metrics}
            sample.update(resps=[[ll, g] for ll, g in results], choices=doc["_choices"])
        elif s.output_type == "loglikelihood":
            ll, greedy = results[0]
            m = {"acc": float(greedy), "ll": ll}
            sample.update(resps=[[ll, greedy]])
        elif s.output_type == "loglikelihood_rolling":
            ll, _ = results[0]
            text = doc["_target"] or doc["_text"]
            m = {"ll": ll, "words": len(text.split()), "bytes": len(text.encode("utf-8"))}
            sample.update(resps=[ll])
        else:
            out, m, filtered = results[0], {}, {}
            kw = s.metric_kwargs
            for flt in self.filters:
                pred = apply_filter(flt["steps"], out)
                filtered[flt["name"]] = pred
                for metric in s.metrics:
                    key = metric if flt["name"] == "none" else f"{metric},{flt['name']}"
                    if metric == "exact_match":
                        m[key] = exact_match(pred, doc["_target"], kw.get("ignore_case", False),
                                             kw.get("ignore_punctuation", False), kw.get("regexes_to_ignore"))
                    else:
                        m[key] = f1_score(pred, doc["_target"])
            sample.update(resps=[out], filtered_resps=filtered)
        sample.update(m)
        return m, sample

    def aggregate(self, per_doc: list[dict]) -> dict[str, float]:
        s = self.spec
        if s.output_type == "loglikelihood_rolling":
            return weighted_perplexities(per_doc)
        keys = [k for k in (per_doc[0] if per_doc else {}) if k not in ("ll", "words", "bytes")]
        out = aggregate_mean(per_doc, keys)
        if s.output_type == "loglikelihood" and "perplexity" in s.metrics and per_doc:
            out["perplexity"] = math.exp(-sum(d["ll"] for d in per_doc) / len(per_doc))
        if s.output_type == "loglikelihood" and "acc" not in s.metrics:
            out.pop("acc", None), out.pop("acc_stderr", None)
        return out


# ---- perplexity over packed validation shards ---------------------------------------------------------
def read_packed_rows(val_dir: str | Path, max_rows: int | None) -> list[list[int]]:
    """First `max_rows` (None: all) rows of column `input_ids` over the sorted *.parquet shards of `val_dir`."""
    import pyarrow.parquet as pq

    files = sorted(Path(val_dir).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{val_dir}: no *.parquet shards (expected the data stage's packed val split)")
    rows: list[list[int]] = []
    cap = max_rows if max_rows is not None else float("inf")
    for f in files:
        pf = pq.ParquetFile(f)
        if "input_ids" not in pf.schema_arrow.names:
            raise ValueError(f"{f}: no column 'input_ids' (columns: {pf.schema_arrow.names})")
        for batch in pf.iter_batches(batch_size=256, columns=["input_ids"]):
            rows.extend(batch.column(0).to_pylist()[: int(min(cap - len(rows), 1 << 62))])
            if len(rows) >= cap:
                return rows
    return rows


class PerplexityTask(Task):
    """Mean next-token NLL (nats) over every position but the first of each row, and exp of it.

    Averaged over tokens, not rows (rows are fixed-length, so the two agree up to rows longer than the
    model's window), which is what the training loss reports, so the numbers are directly comparable."""

    kind = "loglikelihood_rolling"

    def __init__(self, name: str, path: str | Path, limit: int | None):
        super().__init__()
        self.name, self.val_dir, self.max_rows = name, path, limit

    def config(self) -> dict:
        return {**super().config(), "data": str(self.val_dir), "limit": self.max_rows}

    def docs(self) -> list[list[int]]:
        return read_packed_rows(self.val_dir, self.max_rows)

    def requests(self, doc: list[int]) -> list[RollingRequest]:
        return [RollingRequest(token_ids=doc)]

    def process(self, doc, results) -> tuple[dict, dict]:
        ll, n = results[0]
        return {"ll": ll, "n": n}, {"tokens": len(doc), "ll": ll, "scored": n}

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

    kind = "generate"
    pooled = False  # turn 2 depends on turn 1
    metric_keys = ["exact_match", "valid_tool_call_rate", "expression_match"]

    def __init__(self, name: str, path: str | Path, limit: int | None, max_new_tokens: int = 64):
        super().__init__()
        self.name, self.path, self.limit, self.max_new_tokens = name, path, limit, max_new_tokens

    def config(self) -> dict:
        return {**super().config(), "data": str(self.path), "limit": self.limit, "max_gen_toks": self.max_new_tokens}

    def docs(self) -> list[dict]:
        docs, self.quarantine = load_split(Path(self.path), None, f"task {self.name}")
        return docs[: self.limit] if self.limit is not None else docs

    def evaluate(self, backend: ModelBackend) -> dict:
        docs = self.docs()
        first = dispatch(backend, "generate", [GenerateRequest(messages=prompt_messages(r), tools=r["tools"],
                                                               max_new_tokens=self.max_new_tokens) for r in docs])
        states = [tool_turn(r, text, call_id=f"call_{i}") for i, (r, text) in enumerate(zip(docs, first))]
        second = [(i, GenerateRequest(messages=st["messages"], tools=r["tools"], max_new_tokens=self.max_new_tokens))
                  for i, (r, st) in enumerate(zip(docs, states)) if st["call"] is not None]
        for (i, _), text in zip(second, dispatch(backend, "generate", [q for _, q in second])):
            states[i]["turn2"] = states[i]["final"] = text
        per_doc, samples = [], []
        for r, st in zip(docs, states):
            m = score_record(r, st)
            per_doc.append(m)
            samples.append({"doc_id": r["_row"], "id": r.get("id"), "expression": r["expression"],
                            "answer": str(r["answer"]), "turn1": st["turn1"], "tool_call": st["call"],
                            "tool_result": st["tool_result"], "turn2": st["turn2"],
                            "prediction": last_number(st["final"]), **m})
        return {"metrics": self.aggregate(per_doc), "n": len(docs), "samples": samples, "per_doc": per_doc,
                "quarantined": len(self.quarantine)}


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
    """Berkeley Function Calling Leaderboard, AST categories (each row's from its id): the tools are rendered
    with the model's chat template exactly as the server renders them, the output is parsed with the server's
    parser (actors.tooltask.parse_tool_calls), and the calls are matched by BFCL's rules (actors.eval.bfcl)."""

    kind = "generate"
    metric_keys = ["ast_accuracy", "valid_tool_call_rate"]

    def __init__(self, name: str, path: str | Path, limit: int | None, max_new_tokens: int = 128):
        super().__init__()
        self.name, self.path, self.limit, self.max_new_tokens = name, path, limit, max_new_tokens

    def config(self) -> dict:
        return {**super().config(), "data": str(self.path), "limit": self.limit, "max_gen_toks": self.max_new_tokens}

    def docs(self) -> list[dict]:
        from actors.eval.bfcl import load_bfcl

        if not Path(self.path).is_file():
            raise FileNotFoundError(f"task {self.name}: data file {str(self.path)!r} does not exist; "
                                    "point the task at the file with --data TASK=PATH")
        return load_bfcl(self.path, self.limit)

    def requests(self, doc: dict) -> list[GenerateRequest]:
        from actors.eval.bfcl import to_openai_tools

        return [GenerateRequest(messages=doc["messages"], tools=to_openai_tools(doc["functions"]),
                                max_new_tokens=self.max_new_tokens)]

    def process(self, doc: dict, results: list) -> tuple[dict, dict]:
        from actors.eval.bfcl import ast_match, category_of

        text = results[0]
        _, calls, errors = parse_tool_calls(text)
        ok, why = ast_match(calls, doc["functions"], doc["ground_truth"], category_of(doc["id"]))
        m = {"ast_accuracy": float(ok), "valid_tool_call_rate": float(bool(calls))}
        return m, {"doc_id": doc["id"], "output": text, "calls": calls, "parse_errors": errors, "correct": ok,
                   "reason": why, **m}


PYTHON_TASK_CLASSES = {"perplexity": PerplexityTask, "arith_tool": ArithToolTask, "bfcl": BFCLTask}


# ---- from names to tasks --------------------------------------------------------------------------------
def build_tasks(names: list[str], cfg, data_root: str | Path | None = None,
                registry: TaskRegistry | None = None) -> list[Task]:
    """Tasks for `names` (a group expands to its subtasks, in order) with the run's options from `cfg`
    (an EvalConfig). Every data file is checked here, before any model loads."""
    registry = registry or TaskRegistry(cfg.include_paths)
    root = data_root if data_root is not None else cfg.data_root
    out: list[Task] = []
    for name in names:
        spec, subset = registry.resolve(name)
        key = spec.task if subset is None else name
        override = cfg.data.get(name, cfg.data.get(spec.task))
        limit = cfg.limits.get(name, cfg.limits.get(spec.task, cfg.limit))
        if spec.python_task is not None:
            path = override if override is not None else spec.dataset.get(spec.test_split)
            if path is None:
                raise ValueError(f"task {name!r} needs its input: --data {name}=PATH (the pipeline passes it)")
            p = Path(path)
            if not p.is_absolute():
                if root is None:
                    raise ValueError(f"task {name!r}: relative path {path!r} needs a data root")
                p = Path(root) / p
            if not p.exists():
                raise FileNotFoundError(f"task {name!r}: {str(p)!r} does not exist; set --data {name}=PATH")
            args = dict(spec.args)
            if "max_gen_toks" in cfg.gen_kwargs and spec.python_task != "perplexity":
                args["max_new_tokens"] = int(cfg.gen_kwargs["max_gen_toks"])
            t = PYTHON_TASK_CLASSES[spec.python_task](spec.task, p, limit, **args)
            t.version = spec.version
            out.append(t)
            continue
        common = dict(test_path=override, limit=limit, num_fewshot=cfg.num_fewshot,
                      apply_chat_template=cfg.apply_chat_template, fewshot_as_multiturn=cfg.fewshot_as_multiturn,
                      gen_kwargs=cfg.gen_kwargs)
        if spec.split_by and subset is None:
            probe = ConfigurableTask(spec, root, **common)
            raw, _ = load_split(probe.test_path, spec.process_docs, f"task {key}")
            values = list(dict.fromkeys(str(d.get(spec.split_by)) for d in raw))
            if not values or values == ["None"]:
                raise ValueError(f"task {key!r}: split_by {spec.split_by!r} is not a field of {probe.test_path}")
            out.extend(ConfigurableTask(spec, root, subset=v, counts_shared_rows=i == 0, **common)
                       for i, v in enumerate(values))
        else:
            t = ConfigurableTask(spec, root, subset=subset, **common)
            if not t.test_path.is_file():
                raise FileNotFoundError(f"task {key!r}: data file {str(t.test_path)!r} does not exist; point "
                                        f"it elsewhere with --data {key}=PATH")
            if t.num_fewshot:
                fs = t._path(spec.dataset[spec.fewshot_split])
                if not fs.is_file():
                    raise FileNotFoundError(f"task {key!r}: few-shot split {spec.fewshot_split!r} file {str(fs)!r} "
                                            "does not exist")
            out.append(t)
    seen = set()
    for t in out:
        if t.name in seen:
            raise ValueError(f"tasks: {t.name!r} is listed twice (directly or through its group)")
        seen.add(t.name)
    return out
