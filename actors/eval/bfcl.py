"""BFCL (Berkeley Function Calling Leaderboard) AST categories (simple, multiple, parallel, parallel_multiple,
irrelevance, live_simple): data loading, tool specs, and the AST checker.

Stdlib only. Rules follow gorilla `berkeley-function-call-leaderboard/bfcl_eval/eval_checker/ast_eval/
ast_checker.py` (`ast_checker` for a non-parallel, non-multiple category -> `simple_function_checker`,
Python branch), re-implemented here rather than copied:

  * exactly one call; its name is the ground-truth function's name, or that name with "." -> "_"
    (BFCL's `convert_func_name` for models whose tool names cannot contain dots; we accept either spelling
    instead of picking one per model);
  * every `required` parameter present (checked before any value);
  * every given parameter both documented in the schema and listed in the ground truth, else "unexpected";
  * type check against the BFCL type (`string integer float boolean array tuple dict any`; `tuple` values
    are lists after JSON, `any` must be a str) by exact Python type, so `True` is not an integer; an int given
    for a `float` parameter is converted first; arrays/tuples also check their items' type one level deep
    (no int -> float conversion there, as in BFCL);
  * the "variable" rule: when the ground truth's values have a different type from the schema's (e.g. a
    variable name written as a string), a value of the ground truth's type passes the type check and the
    value is then compared exactly (no string standardization);
  * values: strings compared after `standardize_string` (drop ` ,./-_*^`, lowercase, ' -> "); lists compared
    whole after standardizing their string items; dicts key by key against each acceptable dict (unknown key
    fails, missing key fails unless "" is acceptable for it); lists of dicts item by item with equal length;
    anything else by Python `in` (so 5.0 matches 5);
  * a ground-truth parameter the call omits fails unless "" is among its acceptable values.

BFCL quirks kept on purpose, since a score must mean what the leaderboard's means: `[]` for a list parameter
matches the "" (omitted) marker, `""` for a string parameter matches it too, and nested dict values are not
type-checked. Where BFCL would crash (KeyError) we decide instead: a parameter with no `type` is treated as a
`string` (what BFCL's `convert_to_tool` tells the model), JSON-schema spellings (`number object list bool`)
are accepted as their BFCL equivalents, an array without `items.type` gets no item check, and a call whose
`arguments` is a JSON string is decoded first. A type name outside these raises ValueError (a data error,
not a model error).

`to_openai_tools` mirrors BFCL's `convert_to_tool`/`GORILLA_TO_OPENAPI` for OpenAI-style models (`any` ->
`string`, float params get " This is a float type value." appended) but keeps dotted names, recurses through
every nested `properties`/`items`, and does not add BFCL's `"format": "float"` (not a JSON-schema format;
constrained-decoding backends may reject unknown formats).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

# BFCL type name -> the Python type a correct value has (BFCL's PYTHON_TYPE_MAPPING, plus JSON-schema names
# so a hand-written schema cannot crash the checker).
PY_TYPES: dict[str, type] = {
    "string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
    "dict": dict, "any": str,
    "number": float, "object": dict, "list": list, "bool": bool,
}
# Types whose items are type-checked one level deep.
_SEQUENCE_TYPES = {"array", "tuple", "list"}
_FLOAT_TYPES = {"float", "number"}

# BFCL type name -> JSON-schema type (BFCL's GORILLA_TO_OPENAPI, Python-relevant part).
JSON_SCHEMA_TYPES: dict[str, str] = {
    "integer": "integer", "number": "number", "float": "number", "string": "string", "boolean": "boolean",
    "bool": "boolean", "array": "array", "list": "array", "tuple": "array", "dict": "object",
    "object": "object", "any": "string",
}

_STANDARDIZE_RE = re.compile(r"[ ,./\-_*^]")


# ---- data ---------------------------------------------------------------------------------------------
def load_bfcl(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of a BFCL JSONL file as docs `{id, messages, functions, ground_truth}` (first `limit` rows)."""
    docs: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(docs) >= limit:
                break
            if not line.strip():
                continue
            row = json.loads(line)
            # BFCL nests turns: question[0] is the single turn of a non-multi-turn category.
            docs.append({"id": row["id"], "messages": row["question"][0], "functions": row["function"],
                         "ground_truth": row.get("ground_truth", [])})
    return docs


def _concrete(value: Any) -> Any:
    """A ground-truth value as a model would write it: a dict's keys hold lists of acceptable values, of which
    the first that is not the "" (omitted) marker is taken; the key is left out when there is none."""
    if isinstance(value, dict):
        out = {}
        for k, vals in value.items():
            vals = vals if isinstance(vals, list) else [vals]
            keep = [v for v in vals if v != ""]
            if keep:
                out[k] = _concrete(keep[0])
        return out
    if isinstance(value, list):
        return [_concrete(v) for v in value]
    return value


def reference_call(ground_truth: list[dict] | dict) -> dict:
    """The ground truth as one call `{name, arguments}`: first acceptable value per parameter (nested dicts made
    concrete the same way), leaving out parameters whose first acceptable value is "" (omitted)."""
    gt = ground_truth[0] if isinstance(ground_truth, list) else ground_truth
    (name, params), = gt.items()
    return {"name": name, "arguments": {p: _concrete(vals[0]) for p, vals in params.items()
                                        if vals and vals[0] != ""}}


# ---- tool specs ---------------------------------------------------------------------------------------
def _schema_to_json(schema: dict) -> dict:
    """One BFCL (sub)schema as JSON schema, recursively; unknown or missing types become "string" as in
    BFCL's `_cast_to_openai_type`."""
    out = dict(schema)
    bfcl_type = out.get("type")
    out["type"] = JSON_SCHEMA_TYPES.get(bfcl_type, "string") if isinstance(bfcl_type, str) else "string"
    if bfcl_type == "float" and isinstance(out.get("description"), str):
        # BFCL tells FC models a number must be a float this way (JSON schema cannot).
        out["description"] += " This is a float type value."
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _schema_to_json(v) for k, v in out["properties"].items()}
    items = out.get("items")
    if isinstance(items, dict):
        out["items"] = _schema_to_json(items)
    elif isinstance(items, list):  # tuple-style positional items
        out["items"] = [_schema_to_json(i) for i in items]
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _schema_to_json(out["additionalProperties"])
    return out


def to_openai_tools(functions: list[dict]) -> list[dict]:
    """BFCL function docs as OpenAI tool specs `{"type": "function", "function": {name, description,
    parameters}}` with JSON-schema types; names are kept as-is (dots included)."""
    tools = []
    for fn in copy.deepcopy(functions):
        params = fn.get("parameters") or {"type": "dict", "properties": {}}
        params = _schema_to_json(params)
        params["type"] = "object"  # the top level is always an object, whatever BFCL wrote
        params.setdefault("properties", {})
        tools.append({"type": "function", "function": {"name": fn["name"], "description": fn.get("description", ""),
                                                       "parameters": params}})
    return tools


# ---- checker ------------------------------------------------------------------------------------------
def standardize_string(s: str) -> str:
    """BFCL's string normalisation: drop spaces and ,./-_*^, lowercase, single -> double quotes, so
    "April 1, 2024" == "april 1 2024"."""
    return _STANDARDIZE_RE.sub("", s).lower().replace("'", '"')


def _std(v: Any) -> Any:
    return standardize_string(v) if isinstance(v, str) else v


def _answer_type(answers: list) -> type | None:
    """Type of the first acceptable value that is not the "" omitted-marker (None if there is none)."""
    for a in answers:
        if a != "":
            return type(a)
    return None


def _type_ok(value: Any, expected: type, answers: list) -> tuple[bool, bool]:
    """(type passes, value is a "variable"). Exact type match (bool is not int); a value of the ground
    truth's type also passes when that type differs from the schema's (a variable reference)."""
    answer_type = _answer_type(answers)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        return True, is_variable
    if answer_type is not None and type(value) is answer_type:
        return True, True
    return False, False


def _items_ok(value: list, item_type: type, answers: list) -> bool:
    """One-level item type check: some acceptable list has every value item type-compatible with it. A
    non-list acceptable value (the "" marker, a variable name) lets it pass, as in BFCL."""
    for a in answers:
        if not isinstance(a, list):
            return True
        if all(_type_ok(item, item_type, a)[0] for item in value):
            return True
    return False


def _as_list_answer(a: Any) -> list | None:
    # BFCL iterates each acceptable value; "" iterates as an empty list, so [] matches the omitted marker.
    if a == "":
        return []
    return a if isinstance(a, list) else None


def _dict_reason(value: dict, answer: dict) -> str:
    """"" if `value` matches one acceptable dict `answer` (key -> acceptable values), else why not."""
    for key, v in value.items():
        if key not in answer:
            return f"unexpected dict key {key!r}"
        if _std(v) not in [_std(a) for a in answer[key]]:
            return f"dict key {key!r}: {v!r} not one of {answer[key]!r}"
    for key, acceptable in answer.items():
        if key not in value and "" not in acceptable:
            return f"missing dict key {key!r}"
    return ""


def _check_dict(param: str, value: dict, answers: list) -> str:
    reason = "no acceptable dict"
    for a in answers:
        if a == "" or not isinstance(a, dict):
            continue
        reason = _dict_reason(value, a)
        if not reason:
            return ""
    return f"parameter {param!r}: {reason}; expected one of {answers!r}"


def _check_list_of_dicts(param: str, value: list, answers: list) -> str:
    reason = "no acceptable list"
    for a in answers:
        a = _as_list_answer(a)
        if a is None:
            continue
        if len(value) != len(a):
            reason = f"{len(value)} dicts, expected {len(a)}"
            continue
        for i, (v, ad) in enumerate(zip(value, a)):
            r = _dict_reason(v, ad) if isinstance(v, dict) and isinstance(ad, dict) else "not a dict"
            if r:
                reason = f"item {i}: {r}"
                break
        else:
            return ""
    return f"parameter {param!r}: {reason}; expected one of {answers!r}"


def _check_value(param: str, value: Any, schema: dict, answers: list) -> str:
    """"" if one parameter's value passes BFCL's type and value checks, else the reason."""
    bfcl_type = schema.get("type", "string")
    if bfcl_type not in PY_TYPES:
        raise ValueError(f"parameter {param!r}: unknown BFCL type {bfcl_type!r}")
    expected = PY_TYPES[bfcl_type]
    item_type = None
    if bfcl_type in _SEQUENCE_TYPES:
        items = schema.get("items")
        if isinstance(items, dict) and items.get("type") in PY_TYPES:
            item_type = PY_TYPES[items["type"]]

    if isinstance(value, tuple):  # JSON gives lists; BFCL's ground truth has lists for tuples too
        value = list(value)
    if bfcl_type in _FLOAT_TYPES and type(value) is int:  # Python would accept an int where a float goes
        value = float(value)

    ok, is_variable = _type_ok(value, expected, answers)
    if not ok:
        return (f"parameter {param!r}: expected type {bfcl_type}, got {type(value).__name__} "
                f"(value {value!r})")
    if type(value) is expected and item_type is not None and not _items_ok(value, item_type, answers):
        return (f"parameter {param!r}: expected {bfcl_type} of {schema['items']['type']}, got {value!r}")

    # A variable reference is compared as-is; real values get the type-specific comparison.
    if not is_variable:
        if expected is dict:
            return _check_dict(param, value, answers)
        if expected is list and item_type is dict:
            return _check_list_of_dicts(param, value, answers)
        if expected is str:
            if standardize_string(value) in [standardize_string(a) for a in answers if isinstance(a, str)]:
                return ""
            return f"parameter {param!r}: {value!r} not one of {answers!r} (case/space/punctuation-insensitive)"
        if expected is list:
            std_value = [_std(v) for v in value]
            lists = [x for x in map(_as_list_answer, answers) if x is not None]
            if std_value in [[_std(v) for v in a] for a in lists]:
                return ""
            return f"parameter {param!r}: {value!r} not one of {answers!r}"
    if value in answers:
        return ""
    return f"parameter {param!r}: {value!r} not one of {answers!r}"


def _find_function(functions: list[dict], name: str) -> dict:
    for fn in functions:
        if fn.get("name") == name:
            return fn
    if len(functions) == 1:  # BFCL's simple checker just takes the only doc
        return functions[0]
    raise ValueError(f"ground-truth function {name!r} not among the function docs")


CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple")


def category_of(doc_id: str) -> str:
    """The BFCL category of a row from its id ("parallel_multiple_7" -> parallel_multiple, "simple_python_3"
    and "simple_3" -> simple)."""
    for c in ("live_simple", "parallel_multiple", "parallel", "multiple", "irrelevance", "simple"):
        if doc_id.startswith(c):
            return c
    raise ValueError(f"BFCL row id {doc_id!r}: no category of {CATEGORIES} starts it")


def _check_call(call: dict, functions: list[dict], gt: dict) -> tuple[bool, str]:
    """BFCL's `simple_function_checker`: one parsed call against one ground-truth function's acceptable values."""
    (gt_name, answers), = gt.items()
    name = call.get("name")
    if name not in (gt_name, gt_name.replace(".", "_")):
        return False, f"wrong function name: expected {gt_name!r}, got {name!r}"
    args = call.get("arguments")
    if args is None:
        args = {}
    if isinstance(args, str):  # raw OpenAI-style arguments
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return False, f"arguments are not valid JSON: {e}"
    if not isinstance(args, dict):
        return False, f"arguments must be an object, got {type(args).__name__}"

    params = _find_function(functions, gt_name).get("parameters") or {}
    properties = params.get("properties") or {}
    for p in params.get("required") or []:
        if p not in args:
            return False, f"missing required parameter {p!r}"
    for p, value in args.items():
        if p not in properties or p not in answers:
            return False, f"unexpected parameter {p!r}"
        reason = _check_value(p, value, properties[p], answers[p])
        if reason:
            return False, reason
    for p, acceptable in answers.items():
        if p not in args and "" not in acceptable:
            return False, f"parameter {p!r} omitted but it is not optional here; expected one of {acceptable!r}"
    return True, ""


def ast_match(calls: list[dict], functions: list[dict], ground_truth: list[dict] | dict,
              category: str = "simple") -> tuple[bool, str]:
    """BFCL's AST check of parsed tool calls (`[{"name", "arguments"}]`) against the ground truth
    (`[{func_name: {param: [acceptable values]}}]`), by category as BFCL's `ast_checker`:

    - simple, live_simple, multiple: exactly one call, matching the one ground-truth function (for multiple the
      function doc is the one the ground truth names, among several offered);
    - parallel, parallel_multiple: as many calls as ground-truth functions, matched in any order, each call used
      once (BFCL's `parallel_function_checker_no_order`);
    - irrelevance: correct when the model calls nothing (none of the offered functions fits the question).
    Returns (True, "") or (False, reason)."""
    if category not in CATEGORIES:
        raise ValueError(f"BFCL category {category!r}: use one of {CATEGORIES}")
    if category == "irrelevance":
        return (True, "") if not calls else (False, f"called {[c.get('name') for c in calls]} but no offered "
                                                    "function fits the question")
    gts = ground_truth if isinstance(ground_truth, list) else [ground_truth]
    if any(len(g) != 1 for g in gts) or not gts:
        raise ValueError(f"ground truth must be one-function dicts, got {gts!r}")
    if category in ("simple", "live_simple", "multiple"):
        if len(gts) != 1:
            raise ValueError(f"{category} category expects one ground-truth function, got {gts!r}")
        if len(calls) != 1:
            return False, f"wrong number of function calls: expected 1, got {len(calls)}"
        return _check_call(calls[0], functions, gts[0])
    if len(calls) != len(gts):
        return False, f"wrong number of function calls: expected {len(gts)}, got {len(calls)}"
    used: set[int] = set()
    for gt in gts:
        reasons = []
        for i, call in enumerate(calls):
            if i in used:
                continue
            ok, why = _check_call(call, functions, gt)
            if ok:
                used.add(i)
                break
            reasons.append(why)
        else:
            return False, f"no call matches {next(iter(gt))!r}: " + "; ".join(reasons[:3])
    return True, ""
