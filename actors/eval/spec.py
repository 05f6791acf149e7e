"""Tasks as data: the YAML task format, its templates, and the one registry of every task.

A task file (configs/tasks/*.yaml, or any folder given as `include_paths`) holds one task:

    task: arc_easy
    dataset: {test: arc/arc_easy_test_rows0-199.jsonl, dev: arc/arc_easy_dev_all.jsonl}
    test_split: test                      # the split scored; `--data arc_easy=PATH` points it elsewhere
    fewshot_split: dev                    # exemplars come from here (first_n, or random with fewshot_seed)
    process_docs: ai2_mc                  # optional: a named row converter (DOC_PROCESSORS)
    output_type: multiple_choice          # | loglikelihood | loglikelihood_rolling | generate_until
    doc_to_text: "Question: {{question}}\\nAnswer:"
    doc_to_target: "{{gold}}"
    doc_to_choice: "{{choices}}"

Templates follow lm-evaluation-harness: a value that names a field of the doc is that field, anything else is a
Jinja2 template over the doc (a choice list renders as a Python list literal). `split_by: subject` makes one
subtask per value of that field (mmlu -> mmlu_anatomy, ...), each with its own exemplars and limit, reported
per subtask and as a group. A task that needs code names it with `python_task` (arith_tool, bfcl, perplexity).
A bad task file fails with the file and the field named.
"""
from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from actors.common.config import ConfigError, check, from_dict

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "configs" / "tasks"
OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until")
METRICS = {
    "multiple_choice": ("acc", "acc_norm"),
    "loglikelihood": ("acc", "perplexity"),
    "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    "generate_until": ("exact_match", "f1"),
}
FILTER_FUNCTIONS = ("regex", "take_first", "first_number", "last_number", "choice_letter", "lowercase", "strip")
PYTHON_TASKS = ("arith_tool", "bfcl", "perplexity")


@dataclass
class TaskSpec:
    task: str
    dataset: dict[str, str] = field(default_factory=dict)   # split -> file (relative to the data root)
    test_split: str = "test"
    fewshot_split: str | None = None
    num_fewshot: int = 0
    fewshot_sampler: str = "first_n"       # first_n | random (per doc, seeded by fewshot_seed and the doc index)
    fewshot_seed: int = 1234
    fewshot_match: str | None = None       # exemplars share this field's value with the doc (e.g. subject)
    split_by: str | None = None            # one subtask per value of this doc field
    subsets: list[str] = field(default_factory=list)  # its values (TASK_VALUE names a subtask); [] = any
    process_docs: str | None = None        # a name in DOC_PROCESSORS
    output_type: str = "multiple_choice"
    description: str = ""                  # template, put before the exemplars
    doc_to_text: str | None = None
    doc_to_target: str | None = None
    doc_to_choice: Any = None              # a field, a template rendering a list, or a YAML list
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    constants: dict[str, Any] = field(default_factory=dict)   # extra template variables (e.g. subject names)
    generation_kwargs: dict[str, Any] = field(default_factory=dict)  # until, max_gen_toks
    filters: list[dict] = field(default_factory=list)  # [{name, steps: [{function, ...}]}]
    metrics: list[str] = field(default_factory=list)   # default: the output type's METRICS
    metric_kwargs: dict[str, Any] = field(default_factory=dict)  # exact_match: ignore_case, regexes_to_ignore, ...
    python_task: str | None = None         # a task implemented in code (PYTHON_TASKS)
    args: dict[str, Any] = field(default_factory=dict)  # its keyword arguments
    version: str = "1.0"
    source: str = ""                       # the file it came from (set by the loader)

    def __post_init__(self):
        where = f"task {self.task!r}" + (f" ({self.source})" if self.source else "")

        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{where}: {key}: {msg}")

        need(bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", self.task or "")), "task",
             "must be a name of letters, digits, _ . -")
        need(self.python_task is None or self.python_task in PYTHON_TASKS, "python_task",
             f"{self.python_task!r} is not a code task; use one of {list(PYTHON_TASKS)}")
        need(self.output_type in OUTPUT_TYPES, "output_type",
             f"{self.output_type!r}: use one of {list(OUTPUT_TYPES)}")
        need(self.num_fewshot >= 0, "num_fewshot", f"must be >= 0, got {self.num_fewshot}")
        need(self.fewshot_sampler in ("first_n", "random"), "fewshot_sampler",
             f"{self.fewshot_sampler!r}: use first_n or random")
        if self.python_task is None:
            need(self.test_split in self.dataset, "dataset",
                 f"has no split {self.test_split!r} (test_split); give dataset: {{{self.test_split}: path/to/file.jsonl}}")
            need(self.doc_to_text is not None or self.output_type == "loglikelihood_rolling", "doc_to_text",
                 "is required: a doc field or a Jinja2 template such as \"Question: {{question}}\\nAnswer:\"")
            need(self.doc_to_target is not None or self.output_type == "loglikelihood_rolling", "doc_to_target",
                 "is required: a doc field or a template (for multiple_choice: the gold choice's index)")
            need(self.output_type != "multiple_choice" or self.doc_to_choice is not None, "doc_to_choice",
                 "multiple_choice needs it: a doc field, a template rendering a list, or a YAML list of strings")
        if self.num_fewshot:
            need(self.fewshot_split is not None, "fewshot_split",
                 f"num_fewshot={self.num_fewshot} needs a split to draw exemplars from (e.g. fewshot_split: dev)")
        if self.fewshot_split is not None:
            need(self.fewshot_split in self.dataset, "fewshot_split",
                 f"{self.fewshot_split!r} is not a split of dataset ({list(self.dataset)})")
        if self.process_docs is not None:
            from actors.eval.tasks import DOC_PROCESSORS

            need(self.process_docs in DOC_PROCESSORS, "process_docs",
                 f"{self.process_docs!r} is unknown; use one of {sorted(DOC_PROCESSORS)}")
        allowed = METRICS[self.output_type]
        if not self.metrics and self.python_task is None:
            self.metrics = list(allowed) if self.output_type != "generate_until" else ["exact_match"]
        bad = [m for m in self.metrics if m not in allowed] if self.python_task is None else []
        need(not bad, "metrics", f"{bad} do not apply to {self.output_type}; use some of {list(allowed)}")
        gk = self.generation_kwargs
        unknown = [k for k in gk if k not in ("until", "max_gen_toks", "do_sample", "temperature")]
        need(not unknown, "generation_kwargs", f"unknown key(s) {unknown}; allowed: until, max_gen_toks "
                                               "(do_sample must be false, temperature 0: eval decodes greedily)")
        need(not gk.get("do_sample") and not gk.get("temperature"), "generation_kwargs",
             "only greedy decoding is supported (do_sample: false, temperature: 0)")
        if "until" in gk:
            if isinstance(gk["until"], str):
                gk["until"] = [gk["until"]]
            need(all(isinstance(s, str) and s for s in gk["until"]), "generation_kwargs.until",
                 "must be a list of non-empty stop strings")
        need(int(gk.get("max_gen_toks", 256)) > 0, "generation_kwargs.max_gen_toks", "must be > 0")
        for i, flt in enumerate(self.filters):
            need(isinstance(flt, dict) and isinstance(flt.get("name"), str) and isinstance(flt.get("steps"), list),
                 f"filters[{i}]", "must be {name: NAME, steps: [{function: regex, pattern: ...}, ...]}")
            for j, step in enumerate(flt["steps"]):
                fn = step.get("function") if isinstance(step, dict) else None
                need(fn in FILTER_FUNCTIONS, f"filters[{i}].steps[{j}].function",
                     f"{fn!r}: use one of {list(FILTER_FUNCTIONS)}")
                if fn == "regex":
                    try:
                        re.compile(step.get("pattern", ""))
                    except re.error as e:
                        need(False, f"filters[{i}].steps[{j}].pattern", f"is not a valid regex: {e}")
                    need(bool(step.get("pattern")), f"filters[{i}].steps[{j}].pattern", "regex needs a pattern")
        for key in ("doc_to_text", "doc_to_target", "description") + (
                ("doc_to_choice",) if isinstance(self.doc_to_choice, str) else ()):
            v = getattr(self, key)
            if isinstance(v, str):
                try:
                    _env().parse(v)
                except Exception as e:  # jinja2.TemplateSyntaxError
                    need(False, key, f"is not a valid Jinja2 template: {e}")

    @property
    def max_gen_toks(self) -> int:
        return int(self.generation_kwargs.get("max_gen_toks", 256))

    @property
    def until(self) -> list[str]:
        return list(self.generation_kwargs.get("until", []))


# ---- templates --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _env():
    import jinja2

    # StrictUndefined: a misspelt field fails naming it instead of rendering ""; keep_trailing_newline as lm-eval
    env = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters["regex_replace"] = lambda s, pat, rep="": re.sub(pat, rep, s)
    return env


@lru_cache(maxsize=4096)
def _template(text: str):
    return _env().from_string(text)


def render(template: str, doc: dict, constants: dict | None = None) -> str:
    return _template(template).render(**(constants or {}), **doc)


def doc_field_or_template(value: str, doc: dict, constants: dict | None = None):
    """lm-eval's rule: a value naming a doc field is that field's value; otherwise a template over the doc."""
    if value in doc:
        return doc[value]
    return render(value, doc, constants)


def doc_choices(spec: TaskSpec, doc: dict) -> list[str]:
    c = spec.doc_to_choice
    if isinstance(c, list):
        return [str(x) for x in c]
    v = doc_field_or_template(c, doc, spec.constants)
    if isinstance(v, str):
        v = ast.literal_eval(v)
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError(f"doc_to_choice gave {v!r}, expected a non-empty list of strings")
    return [str(x) for x in v]


def doc_target(spec: TaskSpec, doc: dict, choices: list[str] | None):
    """An int index into `choices` (multiple choice) or the target text."""
    v = doc_field_or_template(spec.doc_to_target, doc, spec.constants)
    if choices is not None:
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v.strip())
        elif isinstance(v, str) and v in choices:
            v = choices.index(v)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < len(choices):
            raise ValueError(f"doc_to_target gave {v!r}, expected an index into the {len(choices)} choices")
        return v
    return v if isinstance(v, str) else str(v)


# ---- the registry -----------------------------------------------------------------------------------------
def load_task_file(path: str | Path) -> TaskSpec:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"task file {p}: cannot be read as YAML: {e}") from None
    if not isinstance(data, dict) or "task" not in data:
        raise ConfigError(f"task file {p}: must be a mapping with at least `task: NAME`")
    return from_dict(TaskSpec, {**data, "source": str(p)}, prefix=f"task file {p}")


class TaskRegistry:
    """Every task by name: the YAML files of configs/tasks and of `include_paths` (a folder or a file).

    `resolve(name)` -> (spec, subset): `mmlu` is the whole group, `mmlu_anatomy` the spec of mmlu restricted to
    subject == anatomy. A name can also be a path to a task YAML file."""

    def __init__(self, include_paths: list[str] | tuple[str, ...] = ()):
        self.specs: dict[str, TaskSpec] = {}
        files = sorted(BUILTIN_DIR.glob("*.yaml"))
        for inc in include_paths:
            p = Path(inc)
            check(p.exists(), "include_path", f"{inc!r} does not exist; give a folder of task YAML files or one file")
            files += sorted(p.glob("*.yaml")) if p.is_dir() else [p]
        for f in files:
            spec = load_task_file(f)
            if spec.task in self.specs and spec.source != self.specs[spec.task].source:
                old = self.specs[spec.task].source
                if not str(old).startswith(str(BUILTIN_DIR)):
                    raise ConfigError(f"task {spec.task!r} is defined twice: {old} and {f}; rename one")
            self.specs[spec.task] = spec  # an included file may redefine a built-in task

    def names(self) -> list[str]:
        return sorted(self.specs)

    def resolve(self, name: str) -> tuple[TaskSpec, str | None]:
        if name.endswith((".yaml", ".yml")):
            spec = load_task_file(name)
            return spec, None
        if name in self.specs:
            return self.specs[name], None
        for spec in self.specs.values():
            if spec.split_by and name.startswith(spec.task + "_"):
                sub = name[len(spec.task) + 1:]
                if not spec.subsets or sub in spec.subsets:
                    return spec, sub
        close = difflib.get_close_matches(name, self.names(), n=3)
        hint = f" (did you mean {close}?)" if close else ""
        raise ConfigError(f"tasks: unknown task {name!r}{hint}; known: {self.names()} (or a path to a task .yaml; "
                          "a group such as mmlu also takes one subject: mmlu_anatomy)")
