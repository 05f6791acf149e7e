"""BFCL simple_python AST checker: each rule on hand-made cases, plus every shared row's own ground truth."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.eval.bfcl import ast_match, load_bfcl, reference_call, standardize_string, to_openai_tools

SHARED = Path("/work/shared/data/bfcl/BFCL_v4_simple_python_rows0-49.jsonl")

# A doc shaped like BFCL's, covering every type the checker special-cases.
FUNCTIONS = [{
    "name": "geo.route",
    "description": "Plan a route.",
    "parameters": {
        "type": "dict",
        "properties": {
            "distance": {"type": "float", "description": "km"},
            "stops": {"type": "integer", "description": "number of stops"},
            "city": {"type": "string", "description": "city name"},
            "unit": {"type": "string", "description": "unit, default km"},
            "mode": {"type": "string", "description": "travel mode", "enum": ["car", "bike"]},
            "waypoints": {"type": "array", "items": {"type": "string"}, "description": "places"},
            "options": {"type": "dict", "description": "route options",
                        "properties": {"avoid_tolls": {"type": "boolean"}, "speed": {"type": "integer"}}},
            "legs": {"type": "array", "description": "legs",
                     "items": {"type": "dict", "properties": {"to": {"type": "string"}}}},
            "scenic": {"type": "boolean", "description": "scenic route"},
        },
        "required": ["distance", "city"],
    },
}]
GT = [{"geo.route": {
    "distance": [12.5, 12],
    "stops": [3],
    "city": ["New York City", "NYC"],
    "unit": ["km", ""],
    "mode": ["car"],
    "waypoints": [["Central Park", "Times Square"], ""],
    "options": [{"avoid_tolls": [True], "speed": [50, ""]}, ""],
    "legs": [[{"to": ["Boston"]}, {"to": ["Albany"]}], ""],
    "scenic": [False, ""],
}}]
GOOD = {"distance": 12.5, "stops": 3, "city": "New York City", "mode": "car"}


def check(args: dict, name: str = "geo.route", gt=GT) -> tuple[bool, str]:
    return ast_match([{"name": name, "arguments": args}], FUNCTIONS, gt)


def test_correct_call_passes():
    assert check(GOOD) == (True, "")
    assert check(dict(GOOD, unit="km", scenic=False)) == (True, "")


def test_dotted_name_may_come_back_with_underscores():
    assert check(GOOD, name="geo_route") == (True, "")


def test_wrong_function_name():
    ok, reason = check(GOOD, name="geo.routes")
    assert not ok and "function name" in reason and "geo.route" in reason


def test_missing_required_param():
    ok, reason = check({k: v for k, v in GOOD.items() if k != "city"})
    assert not ok and "missing required" in reason and "'city'" in reason


def test_unexpected_param():
    ok, reason = check(dict(GOOD, color="red"))
    assert not ok and "unexpected" in reason and "'color'" in reason


def test_param_in_schema_but_not_in_ground_truth_is_unexpected():
    gt = [{"geo.route": {k: v for k, v in GT[0]["geo.route"].items() if k != "scenic"}}]
    ok, reason = check(dict(GOOD, scenic=False), gt=gt)
    assert not ok and "'scenic'" in reason


def test_optional_param_omitted_when_empty_string_acceptable():
    assert check(GOOD)[0]  # unit, waypoints, options, legs, scenic all list "" as acceptable


def test_optional_param_omitted_when_not_acceptable_fails():
    ok, reason = check({k: v for k, v in GOOD.items() if k != "stops"})  # not required, but GT has no ""
    assert not ok and "'stops'" in reason and "omitted" in reason


def test_int_accepted_for_float():
    assert check(dict(GOOD, distance=12)) == (True, "")
    gt = [{"geo.route": dict(GT[0]["geo.route"], distance=[12.0])}]
    assert check(dict(GOOD, distance=12), gt=gt) == (True, "")


def test_float_rejected_for_integer():
    ok, reason = check(dict(GOOD, stops=3.0))
    assert not ok and "'stops'" in reason and "integer" in reason


def test_bool_is_not_an_integer_and_string_number_is_not_a_number():
    assert not check(dict(GOOD, stops=True))[0]
    assert not check(dict(GOOD, distance="12.5"))[0]


def test_wrong_value():
    ok, reason = check(dict(GOOD, distance=13.0))
    assert not ok and "'distance'" in reason and "12.5" in reason


def test_string_standardization():
    assert standardize_string("New York-City, N.Y.") == "newyorkcityny"
    for city in ["new york city", "NEW YORK CITY", "New-York_City.", "newyorkcity", "N.Y.C.", "nyc"]:
        assert check(dict(GOOD, city=city)) == (True, ""), city
    ok, reason = check(dict(GOOD, city="Boston"))
    assert not ok and "'city'" in reason


def test_list_values():
    assert check(dict(GOOD, waypoints=["Central Park", "Times Square"]))[0]
    assert check(dict(GOOD, waypoints=["central park", "times-square"]))[0]  # items are standardized
    assert not check(dict(GOOD, waypoints=["Times Square", "Central Park"]))[0]  # order matters
    assert not check(dict(GOOD, waypoints=["Central Park"]))[0]
    ok, reason = check(dict(GOOD, waypoints=["Central Park", 3]))  # item type checked
    assert not ok and "'waypoints'" in reason


def test_float_array_items_are_not_converted_from_int():
    # BFCL converts int -> float for a float parameter but not for the items of a float array.
    fns = [{"name": "f", "parameters": {"type": "dict", "properties": {
        "xs": {"type": "array", "items": {"type": "float"}}}, "required": ["xs"]}}]
    gt = [{"f": {"xs": [[1.0, 3.0]]}}]
    assert ast_match([{"name": "f", "arguments": {"xs": [1.0, 3.0]}}], fns, gt) == (True, "")
    assert not ast_match([{"name": "f", "arguments": {"xs": [1, 3]}}], fns, gt)[0]


def test_nested_dict_values():
    assert check(dict(GOOD, options={"avoid_tolls": True, "speed": 50}))[0]
    assert check(dict(GOOD, options={"avoid_tolls": True}))[0]  # speed lists "" -> may be left out
    ok, reason = check(dict(GOOD, options={"speed": 50}))
    assert not ok and "avoid_tolls" in reason
    ok, reason = check(dict(GOOD, options={"avoid_tolls": False}))
    assert not ok and "avoid_tolls" in reason
    ok, reason = check(dict(GOOD, options={"avoid_tolls": True, "ferry": True}))
    assert not ok and "ferry" in reason


def test_list_of_dicts():
    assert check(dict(GOOD, legs=[{"to": "Boston"}, {"to": "albany"}]))[0]
    assert not check(dict(GOOD, legs=[{"to": "Albany"}, {"to": "Boston"}]))[0]
    assert not check(dict(GOOD, legs=[{"to": "Boston"}]))[0]


def test_wrong_number_of_calls():
    call = {"name": "geo.route", "arguments": GOOD}
    for calls in ([], [call, call]):
        ok, reason = ast_match(calls, FUNCTIONS, GT)
        assert not ok and "number of function calls" in reason


def test_arguments_as_json_string():
    assert ast_match([{"name": "geo.route", "arguments": json.dumps(GOOD)}], FUNCTIONS, GT) == (True, "")
    assert not ast_match([{"name": "geo.route", "arguments": "{not json"}], FUNCTIONS, GT)[0]


def test_variable_reference_in_ground_truth():
    # A string ground truth for an integer parameter is a variable name: it must match exactly.
    fns = [{"name": "f", "parameters": {"type": "dict", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}]
    gt = [{"f": {"n": ["count"]}}]
    assert ast_match([{"name": "f", "arguments": {"n": "count"}}], fns, gt)[0]
    assert not ast_match([{"name": "f", "arguments": {"n": "Count"}}], fns, gt)[0]


@pytest.mark.skipif(not SHARED.exists(), reason="shared BFCL slice not present")
def test_every_shared_ground_truth_passes():
    docs = load_bfcl(SHARED)
    assert len(docs) == 50
    assert load_bfcl(SHARED, limit=3)[2]["id"] == docs[2]["id"]
    failures = []
    for doc in docs:
        assert doc["messages"] and doc["messages"][0]["role"] == "user"
        call = reference_call(doc["ground_truth"])
        ok, reason = ast_match([call], doc["functions"], doc["ground_truth"])
        if not ok:
            failures.append((doc["id"], reason))
    assert not failures, failures


@pytest.mark.skipif(not SHARED.exists(), reason="shared BFCL slice not present")
def test_shared_rows_reject_a_wrong_call():
    for doc in load_bfcl(SHARED, limit=10):
        call = reference_call(doc["ground_truth"])
        assert not ast_match([dict(call, name=call["name"] + "_x")], doc["functions"], doc["ground_truth"])[0]


def _types(schema: dict):
    if "type" in schema:
        yield schema["type"]
    for sub in (schema.get("properties") or {}).values():
        yield from _types(sub)
    if isinstance(schema.get("items"), dict):
        yield from _types(schema["items"])


def test_to_openai_tools_gives_json_schema():
    docs = load_bfcl(SHARED) if SHARED.exists() else []
    for fns in [FUNCTIONS] + [d["functions"] for d in docs]:
        tools = to_openai_tools(fns)
        assert len(tools) == len(fns)
        for tool, fn in zip(tools, fns):
            assert tool["type"] == "function"
            spec = tool["function"]
            assert spec["name"] == fn["name"]  # dots kept
            assert set(spec) == {"name", "description", "parameters"}
            assert spec["parameters"]["type"] == "object"
            types = set(_types(spec["parameters"]))
            assert types <= {"object", "number", "integer", "string", "boolean", "array"}, types
            json.dumps(tool)
    params = to_openai_tools(FUNCTIONS)[0]["function"]["parameters"]
    assert params["properties"]["distance"]["type"] == "number"
    assert params["properties"]["options"]["type"] == "object"
    assert params["properties"]["options"]["properties"]["avoid_tolls"]["type"] == "boolean"
    assert params["properties"]["legs"]["items"]["type"] == "object"
    assert params["required"] == ["distance", "city"]
    assert FUNCTIONS[0]["parameters"]["type"] == "dict"  # input untouched


# ---- the other AST categories (BFCL's ast_checker by category) ---------------------------------------------
def _model_visible(call: dict, functions: list[dict]) -> dict:
    """A reference call with only the parameters the function doc shows (one shared row's ground truth also
    lists a parameter its doc lacks; a model cannot pass it)."""
    doc = next(f for f in functions if f["name"] == call["name"])
    props = (doc.get("parameters") or {}).get("properties") or {}
    return {"name": call["name"], "arguments": {k: v for k, v in call["arguments"].items() if k in props}}


def test_every_category_accepts_its_own_ground_truth_and_parallel_calls_in_any_order(data_root):
    from actors.eval.bfcl import category_of

    seen = set()
    for f in sorted((data_root / "bfcl").glob("BFCL_v4_*_rows0-49.jsonl")):
        for doc in load_bfcl(f):
            cat = category_of(doc["id"])
            seen.add(cat)
            if cat == "irrelevance":
                assert ast_match([], doc["functions"], doc["ground_truth"], cat) == (True, "")
                wrong = {"name": doc["functions"][0]["name"], "arguments": {}}
                assert not ast_match([wrong], doc["functions"], doc["ground_truth"], cat)[0]
                continue
            calls = [_model_visible(reference_call([g]), doc["functions"]) for g in doc["ground_truth"]]
            assert ast_match(calls[::-1], doc["functions"], doc["ground_truth"], cat) == (True, ""), doc["id"]
            if len(calls) > 1:                       # one call short, or one call twice, fails
                assert not ast_match(calls[:-1], doc["functions"], doc["ground_truth"], cat)[0]
                assert not ast_match([calls[0]] * len(calls), doc["functions"], doc["ground_truth"], cat)[0]
    assert seen == {"simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple"}


def test_multiple_needs_the_right_function_among_several():
    fns = FUNCTIONS + [{"name": "geo.weather", "description": "Weather.", "parameters": {
        "type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    assert ast_match([{"name": "geo.route", "arguments": GOOD}], fns, GT, "multiple")[0]
    ok, why = ast_match([{"name": "geo.weather", "arguments": {"city": "NYC"}}], fns, GT, "multiple")
    assert not ok and "wrong function name" in why
    with pytest.raises(ValueError, match="category"):
        ast_match([], fns, GT, "multi_turn")


def test_bench_reads_one_file_per_category_and_parallel_is_not_parallel_multiple(data_root, tmp_path):
    import shutil

    from bench.agent_bfcl import category_rows

    for f in (data_root / "bfcl").glob("BFCL_v4_*.jsonl"):   # as a --data-dir of the same layout
        shutil.copy(f, tmp_path / f.name.replace("rows0-49", "heldout"))
    rows = category_rows(tmp_path, 3)
    assert {c: {d["id"].rsplit("_", 1)[0] for d in docs} for c, docs in rows.items() if c != "live_simple"} == {
        "simple": {"simple_python"}, "multiple": {"multiple"}, "parallel": {"parallel"},
        "parallel_multiple": {"parallel_multiple"}, "irrelevance": {"irrelevance"}}
    assert all(len(d) == 3 for d in rows.values()) and rows["live_simple"][0]["id"].startswith("live_simple")
