"""Data stage: readers, quarantine, normalization, filters, dedup, packing, Alpaca conversion, and one real
Ray Data run over a folder of good and deliberately broken files whose counts must reconcile exactly."""
from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from actors.common.config import ConfigError, from_dict
from actors.data import extract
from actors.data import transforms as T
from actors.data.config import (DataConfig, FilterConfig, SFTSourceConfig, SourceConfig, SyntheticConfig,
                                ToolMixConfig)
from actors.data.extract import markdown_to_text
from actors.data.html import extract_html, html_to_text
from actors.data.pdf import extract_pdf
from actors.data.sandbox import ExtractCrash, ExtractTimeout, Sandbox
from actors.common.formats import alpaca_to_messages, convert_alpaca_file

# ------------------------------------------------------------------------------------------ extraction


def _words(text: str) -> Counter:
    return Counter(re.findall(r"\w+", text.lower()))


def _recall(expected: str, got: str) -> float:
    e, g = _words(expected), _words(got)
    return sum(min(c, g[w]) for w, c in e.items()) / sum(e.values())


@pytest.mark.parametrize("page", ["wikipedia", "wikipedia-3", "ietf-1", "qq"])
def test_html_extraction_keeps_the_article_without_chrome(data_root, page):
    d = data_root / "doc_extraction" / "html"
    doc = extract_html((d / f"{page}__source.html").read_bytes())
    got = doc.text
    # readability's main content (which keeps some chrome, e.g. qq's share buttons) is the reference
    expected = html_to_text((d / f"{page}__expected.html").read_text(encoding="utf-8"))
    assert doc.extractor == "trafilatura" and doc.title
    assert _recall(got, expected) >= 0.95        # nothing but article text is added
    assert "function(" not in got and "mw.config" not in got and "{" not in got[:2000]
    if page == "qq":  # the whole body, first to last paragraph, and none of the share/comment chrome
        assert got.startswith("TNW中文站 10月14日报道") and "（编译/林靖东）" in got
        assert "转播到腾讯微博" not in got and "责任编辑" not in got
    else:
        assert _recall(expected, got) >= 0.95
        assert not got.startswith(doc.title)    # the headline is the title field, not the first line


def test_html_drops_headline_and_whole_link_lines():
    body = " ".join(f"Sentence {i} of the article explains the new bridge and why the town voted for it."
                    for i in range(12))
    page = f"""<html><head><title>Town opens its new bridge | Daily Courier</title></head><body>
      <article><h1>Town opens its new bridge</h1><p>{body}</p><p>{body.replace("Sentence", "Line")}</p>
      <p><a href="/a">Five things to know about the county budget this year</a></p>
      <p>The mayor cut the ribbon on Sunday, and <a href="/b">the council</a> thanked the builders.</p>
      </article></body></html>"""
    doc = extract_html(page)
    assert doc.title.startswith("Town opens its new bridge")
    assert "Sentence 0 of the article" in doc.text and "thanked the builders" in doc.text  # a link inside a line
    assert "Five things to know" not in doc.text and not doc.text.startswith("Town opens")
    # what trafilatura leaves in is cleaned against the page's links and titles
    from actors.data.html import clean_main_text

    text, dropped = clean_main_text(
        "Town opens its new bridge\nThe mayor cut the ribbon.\nFive things to know about the county budget this year"
        "\nTown opens its new bridge, the mayor said.", {"Five things to know about the county budget this year"},
        {"Town opens its new bridge | Daily Courier", "Town opens its new bridge"})
    assert text == "The mayor cut the ribbon.\nTown opens its new bridge, the mayor said."  # only a leading title
    assert dropped == {"title_lines": 1, "link_lines": 1}


def test_pdf_text_in_reading_order_without_running_lines(data_root):
    d = data_root / "doc_extraction" / "pdf"
    dmca = extract_pdf((d / "us_copyright_office_dmca.pdf").read_bytes())
    assert dmca.pages == 18 and dmca.title.startswith("The Digital Millennium Copyright Act")
    text = dmca.text
    # PDFium draws page 1's footnote and running header first; in reading order the body comes first
    assert text.index("INTRODUCTION") < text.index("The Digital Millennium Copyright Act (DMCA) was signed") \
        < text.index("Pub. L. No. 105-304")
    assert "Copyright Office Summary December 1998 Page" not in text and dmca.meta["running_lines_removed"] >= 17
    assert "President Clinton on October 28, 1998." in text
    # vertical Japanese, read right to left: the poem's lines in order
    jo = extract_pdf((d / "jo_japanese.pdf").read_bytes())
    assert jo.text.index("（あらゆる透明な幽霊の複合体）") < jo.text.index("風景やみんなといっしょに")
    from actors.data.lid import detect

    assert detect(jo.text)[0] == "ja"
    assert extract_pdf((d / "simple1.pdf").read_bytes()).text.startswith("Hello World")
    assert "Secret!" in extract_pdf((d / "libreoffice_base.pdf").read_bytes()).text


def test_sandbox_times_out_and_survives_a_crash():
    import os
    import time

    sb = Sandbox(timeout_s=2.0)
    try:
        assert sb(divmod, 7, 3) == (2, 1)
        with pytest.raises(ExtractTimeout, match="data.extract_timeout_s"):
            sb(time.sleep, 30)
        with pytest.raises(ExtractCrash, match="exit code 3"):
            sb(os._exit, 3)
        with pytest.raises(ValueError, match="ZeroDivisionError"):
            sb(divmod, 1, 0)
        assert sb(divmod, 9, 4) == (2, 1)       # a fresh child after each failure
    finally:
        sb.close()


def test_html_structure_entities_and_dropped_chrome():
    page = """<html><head><title>T</title><style>p{color:red}</style></head><body>
      <nav><a href="/">Home</a> | <a href="/a">About</a></nav>
      <header>Site header</header>
      <div class="sidebar-left">Sidebar junk</div>
      <h1>Main&nbsp;title</h1><p>First   paragraph &amp; more
      text.</p><ul><li>one</li><li>two</li></ul>
      <table><tr><th>k</th><td>v &lt;1&gt;</td></tr></table>
      <pre>def f():
    return 1</pre>
      <script>var x = "<p>not text</p>";</script><noscript>enable js</noscript>
      <form><input name=q>Search</form><footer>Copyright</footer></body></html>"""
    text = html_to_text(page)
    for junk in ("Home", "Site header", "Sidebar junk", "color:red", "not text", "enable js", "Search",
                 "Copyright", "T\n"):
        assert junk not in text, junk
    lines = text.split("\n")
    assert "Main title" in lines                 # &nbsp; decoded (then collapsed like any space)
    assert "First paragraph & more text." in lines
    assert "- one" in lines and "- two" in lines
    assert any(ln.split() == ["k", "v", "<1>"] for ln in lines)
    assert "def f():\n    return 1" in text          # <pre> keeps its whitespace


def test_markdown_to_text():
    md = """# Title **bold** and *em* and snake_case_name

[![badge](https://img.shields.io/x.svg)](https://x) See [the docs](https://d.io) and <b>html</b> &amp; more.
<!-- a comment -->

| Model | Size |
|-------|:----:|
| LLaMA | 7B   |

```python
def f(**kwargs):  # <tag> *not emphasis*
    return [x](y)
```
- item ~~old~~ `code`
> quoted
[ref]: https://example.com
---
"""
    text = markdown_to_text(md)
    assert text.startswith("Title bold and em and snake_case_name")
    assert "badge See the docs and html & more." in text
    assert "comment" not in text and "https://" not in text and "---" not in text
    assert "Model\tSize" in text and "LLaMA\t7B" in text
    assert "def f(**kwargs):  # <tag> *not emphasis*\n    return [x](y)" in text   # code is verbatim
    assert "item old code" in text and "quoted" in text and "```" not in text


def test_markdown_files_extract(data_root):
    for p in sorted((data_root / "doc_extraction" / "markdown").glob("*.md")):
        text = markdown_to_text(p.read_text(encoding="utf-8"))
        assert len(text) > 0.25 * len(p.read_text(encoding="utf-8"))
        assert "![" not in text[:3000] and "](http" not in text[:3000]   # the prose head: links/badges stripped
        assert T.first_failing_rule(T.normalize(text), FilterConfig()) is None, p.name


def _task(path: Path, fmt="auto", split="document", field="text") -> dict:
    return {"source_name": "t", "path": str(path), "rel": path.name, "format": fmt, "text_field": field,
            "split": split}


def test_readers_quarantine_and_continue(tmp_path, data_root):
    # JSONL: a broken line and an invalid-UTF-8 line among good ones; the rest still comes through
    p = tmp_path / "a.jsonl"
    raw = b'{"text": "one"}\n{"text": "tw\n' + b'{"text": "bad \xff byte"}\n\n{"text": "four"}\n'
    p.write_bytes(raw)
    recs = list(extract.read_task(_task(p)))
    assert [r["text"] for r in recs if r["status"] == "ok"] == ["one", "four"]
    bad = {r["doc_id"]: r for r in recs if r["status"] == "quarantined"}
    assert bad["a.jsonl:2"]["reason_kind"] == "bad_json"
    assert bad["a.jsonl:3"]["reason_kind"] == "invalid_utf8"
    off = raw.index(b"\xff")
    assert f"byte offset {off} " in bad["a.jsonl:3"]["reason"]     # offset in the file, not in the line

    # truncated gzip: the lines before the damage are kept, then one 'unreadable' record
    full = gzip.compress(b"".join(b'{"text": "doc %d %s"}\n' % (i, b"x" * 200) for i in range(200)))
    g = tmp_path / "b.jsonl.gz"
    g.write_bytes(full[: len(full) // 2])
    recs = list(extract.read_task(_task(g)))
    ok = [r for r in recs if r["status"] == "ok"]
    assert 0 < len(ok) < 200 and recs[-1]["reason_kind"] == "unreadable" and "truncated" in recs[-1]["reason"]
    assert [r["text"] for r in ok] == [f"doc {i} {'x' * 200}" for i in range(len(ok))]

    # paragraphs: one bad byte costs one paragraph, with its absolute byte offset
    t = tmp_path / "c.txt"
    raw = b"First para.\n\nSecond \xc3 para.\n\nThird para."
    t.write_bytes(raw)
    recs = list(extract.read_task(_task(t, split="paragraphs")))
    assert [(r["doc_id"], r["status"]) for r in recs] == [
        ("c.txt#p0", "ok"), ("c.txt#p1", "quarantined"), ("c.txt#p2", "ok")]
    off = raw.index(b"\xc3")
    assert f"byte offset {off} " in recs[1]["reason"]

    # unsupported extension, JSON element without the field, missing file: records, not exceptions
    assert next(extract.read_task(_task(tmp_path / "x.xyz")))["reason_kind"] == "unsupported_format"
    j = tmp_path / "d.json"
    j.write_text(json.dumps([{"text": "ok doc"}, {"body": "no text"}, {"text": 5}]))
    kinds = [r["reason_kind"] or r["text"] for r in extract.read_task(_task(j))]
    assert kinds == ["ok doc", "missing_field", "missing_field"]
    assert next(extract.read_task(_task(tmp_path / "gone.txt", fmt="text")))["reason_kind"] == "unreadable"

    # a PDF that is not one, an extractor past its time limit: quarantined with the reason; an empty file is
    # one empty document (the `empty` rule drops and counts it), not nothing
    (tmp_path / "fake.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    rec, = extract.read_task(_task(tmp_path / "fake.pdf"))
    assert rec["reason_kind"] == "bad_pdf" and "PDFium cannot open it" in rec["reason"]
    page = (data_root / "doc_extraction" / "html" / "wikipedia__source.html")
    rec, = extract.read_task({**_task(page), "timeout_s": 0.001})
    assert rec["reason_kind"] == "extract_timeout" and "data.extract_timeout_s" in rec["reason"]
    (tmp_path / "empty.txt").write_bytes(b"")
    rec, = extract.read_task(_task(tmp_path / "empty.txt"))
    assert rec["status"] == "ok" and rec["text"] == ""
    assert T.clean_rows([rec], FilterConfig(), 0.0, 0)[0]["reason_kind"] == "empty"
    rec, = extract.read_task(_task(page))
    from actors.data.sandbox import close_all

    close_all()
    meta = json.loads(rec["meta"])
    assert rec["extractor"] == "trafilatura" and rec["title"] == "Mozilla" and meta["date"] == "1998-02-28"


# ------------------------------------------------------------------------------------------ transforms


def test_normalize_keeps_chinese_punctuation_and_cleans():
    zh = "子曰：“学而时习之，不亦说乎？”（《论语》）！ＡＢＣ１２３"
    assert T.normalize(zh) == zh                                  # NFKC would rewrite ：“，？（）！ＡＢＣ１２３
    assert T.normalize("cafe\u0301") == "caf\u00e9"                # NFC composes
    assert T.normalize("a\x00b\x1bc\u200bd\ufeff") == "abcd"       # controls / zero-width gone
    assert T.normalize("  x  \t y\u3000z \r\n\r\n\r\n\n  w  ") == "x y z\n\n  w"
    assert T.normalize("def f():\n    return  1") == "def f():\n    return 1"   # indentation kept


def test_filters_report_first_failing_rule():
    f = FilterConfig(min_chars=10, min_alpha_frac=0.5, max_symbol_ratio=0.2, max_dup_line_frac=0.3)
    assert T.first_failing_rule("", f) == "empty"
    assert T.first_failing_rule("short", f) == "min_chars"
    assert T.first_failing_rule("1234 5678 9012 !!!", f) == "min_alpha_frac"
    assert T.first_failing_rule("word word word word ## ** {} ==", f) == "max_symbol_ratio"
    assert T.first_failing_rule("same line here\nsame line here\nsame line here\nother", f) == "max_dup_line_frac"
    assert T.first_failing_rule("学而时习之，不亦说乎？有朋自远方来。", f) is None   # CJK counts as letters
    assert T.alpha_frac("学而，") == pytest.approx(2 / 3)


def test_dedup_keeps_first_by_order_and_split_is_stable():
    hashes = [T.content_hash(t) for t in ["a", "b", "a", "a"]]
    assert T.find_duplicates(hashes, [5, 1, 2, 9], ["d0", "d1", "d2", "d3"]) == {"d0", "d3"}
    h = T.content_hash("some document")
    assert T.split_of(h, 0.5, seed=1) == T.split_of(h, 0.5, seed=1)
    splits = Counter(T.split_of(T.content_hash(str(i)), 0.2) for i in range(5000))
    assert 0.17 < splits["val"] / 5000 < 0.23
    assert T.split_of(h, 0.0) == "train"


def test_pack_rows_and_tail():
    rows, tail = T.pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4)
    assert rows.dtype == np.int32 and rows.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]] and tail == 1
    rows, tail = T.pack([[1, 2]], seq_len=4)
    assert rows.shape == (0, 4) and tail == 2


def test_unigram_cross_entropy():
    v = 8
    assert T.unigram_cross_entropy(np.zeros(v), np.ones(v)) == pytest.approx(np.log(v))  # add-one -> uniform
    train = np.array([97, 1, 0, 0])  # p = (c+1)/(98+4)
    assert T.unigram_cross_entropy(train, np.array([1, 0, 0, 0])) == pytest.approx(-np.log(98 / 102))


def test_alpaca_converter(tmp_path):
    rec, err = alpaca_to_messages({"instruction": "Add", "input": "2 and 3", "output": "5", "system": "Be brief",
                                   "history": [["hi", "hello"]]}, "x-0")
    assert err is None and rec == {"id": "x-0", "messages": [
        {"role": "system", "content": "Be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "Add\n2 and 3"},
        {"role": "assistant", "content": "5"}]}
    rows = [{"instruction": "Say hi", "input": "", "output": "hi"}, {"instruction": "", "output": "x"},
            {"instruction": "q"}, {"instruction": "q", "output": ["a", "b"]}, "not a row",
            {"instruction": "q", "output": "a", "history": [["only one"]]}]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(rows))
    recs, bad, counts = convert_alpaca_file(p, "a")
    assert counts == {"read": 6, "kept": 1, "quarantined": 5}
    assert recs[0]["messages"] == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]
    assert [b["reason_kind"] for b in bad] == ["empty_field", "missing_field", "wrong_type", "wrong_type",
                                                "wrong_type"]
    assert [b["doc_id"] for b in bad] == ["a-1", "a-2", "a-3", "a-4", "a-5"]
    (tmp_path / "b.json").write_text("[{broken")
    assert convert_alpaca_file(tmp_path / "b.json", "b")[2] == {"read": 1, "kept": 0, "quarantined": 1}


def test_synthetic_heldout_keeps_phrasings_and_chinese_out_of_training():
    from actors.data import synthetic
    from actors.tooltask import TOOLS, prompt_messages

    train, held = synthetic.generate(600, 80, seed=3)
    assert not {r["expression"] for r in train} & {r["expression"] for r in held}
    unseen = {q for qs in synthetic.UNSEEN_QUESTIONS.values() for q in qs}

    def template_of(r):
        q = prompt_messages(r)[-1]["content"]
        return next(t for t in synthetic.TRAIN_QUESTIONS + sorted(unseen) if t.format(e=r["expression"]) == q)

    assert {template_of(r) for r in train} == set(synthetic.TRAIN_QUESTIONS)   # training: seen English only
    assert all(r["phrasing"] == "seen" and r["lang"] == "en" for r in train)
    assert not any(any("\u4e00" <= ch <= "\u9fff" for ch in json.dumps(r, ensure_ascii=False)) for r in train)
    for n in (4, 40, 80):  # any prefix (the agent's first n_eval rows) is at least half unseen phrasings
        assert sum(r["phrasing"] == "unseen" for r in held[:n]) >= n / 2
    assert {template_of(r) for r in held if r["phrasing"] == "unseen"} <= unseen
    assert {r["lang"] for r in held if r["phrasing"] == "unseen"} == {"en", "zh"}
    assert all(r["tools"] == TOOLS for r in train + held)


def test_sharegpt_tool_call_converter(tmp_path, data_root):
    """LLaMA-Factory's ShareGPT rows (glaive): function_call -> assistant tool_calls, observation -> tool."""
    from actors.common.formats import convert_sft_file, sharegpt_to_messages

    tools = json.dumps([{"name": "add", "description": "Add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}])
    row = {"conversations": [
        {"from": "human", "value": "add 2"}, {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 2}}'},
        {"from": "observation", "value": '{"sum": 2}'}, {"from": "gpt", "value": "It is 2."}], "tools": tools}
    rec, err = sharegpt_to_messages(row, "g-0")
    assert err is None and rec["tools"][0] == {"type": "function", "function": json.loads(tools)[0]}
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "tool", "assistant"]
    call = rec["messages"][1]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"a": 2} and rec["messages"][2]["tool_call_id"] == call["id"]
    bad_rows = [
        {"conversations": [{"from": "robot", "value": "x"}]},                                  # unknown role
        {"conversations": [{"from": "human", "value": "x"}, {"from": "observation", "value": "1"},
                           {"from": "gpt", "value": "y"}]},                                     # orphan result
        {"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "{oops"}]},
        {"conversations": [{"from": "human", "value": "x"}], "tools": "[]"},                    # nothing to learn
        {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}], "tools": "{bad"},
        {"conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": "y"}]},
    ]
    p = tmp_path / "g.json"
    p.write_text(json.dumps([row] + bad_rows))
    recs, bad, counts = convert_sft_file(p, "g")   # format detected from the rows
    assert counts == {"read": 7, "kept": 1, "quarantined": 6}
    assert [b["reason_kind"] for b in bad] == ["unknown_role", "orphan_observation", "bad_call", "no_assistant",
                                                "bad_json", "empty_field"]
    # the shared glaive files: every row converts except the two ZH rows whose observation answers no call
    for name, quarantined in (("glaive_toolcall_en_demo.json", 0), ("glaive_toolcall_zh_demo.json", 2)):
        _, _, c = convert_sft_file(data_root / "toolcall_sft_demo" / name, name)
        assert c == {"read": 300, "kept": 300 - quarantined, "quarantined": quarantined}


def test_lf_v1_content_parts_converter(tmp_path, data_root):
    """LLaMA-Factory v1 rows: text parts join, tool_call parts become parallel tool_calls, reasoning is dropped,
    a tool turn holding a JSON list of results answers each call by id."""
    from actors.common.formats import convert_sft_file, messages_to_record

    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "value": "areas for r=1 and r=2"}]},
        {"role": "assistant", "content": [{"type": "reasoning", "value": "two calls"},
                                          {"type": "tool_call", "value": '{"name": "area", "arguments": {"r": 1}}'},
                                          {"type": "tool_call", "value": '{"name": "area", "arguments": {"r": 2}}'}]},
        {"role": "tool", "content": [{"type": "text", "value": json.dumps(
            [{"tool_call_id": "x", "name": "area", "content": "3.14"}, {"name": "area", "content": {"a": 12.6}}])}]},
        {"role": "assistant", "content": [{"type": "text", "value": "3.14 and 12.6"}]}],
        "tools": json.dumps([{"name": "area", "parameters": {"type": "dict", "properties": {"r": {"type": "float"}}}}])}
    rec, err = messages_to_record(row, "v1-0")
    assert err is None
    m = rec["messages"]
    assert [x["role"] for x in m] == ["user", "assistant", "tool", "tool", "assistant"]
    assert m[1]["content"] == "" and [json.loads(c["function"]["arguments"]) for c in m[1]["tool_calls"]] == \
        [{"r": 1}, {"r": 2}]
    assert [x["tool_call_id"] for x in m[2:4]] == [c["id"] for c in m[1]["tool_calls"]]
    assert json.loads(m[3]["content"]) == {"a": 12.6} and m[4]["content"] == "3.14 and 12.6"
    bad, why = messages_to_record({"messages": [{"role": "user", "content": [{"type": "image", "value": "x"}]}]}, "b")
    assert bad is None and why.startswith("wrong_type: messages[0].content[0]")
    _, why = messages_to_record({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "tool_call", "value": "{oops"}]}]}, "b")
    assert why.startswith("bad_call: messages[1].content[0]")
    recs, _, counts = convert_sft_file(data_root / "toolcall_sft_demo" / "reason_tool_use_demo_50.jsonl", "r")
    assert counts == {"read": 50, "kept": 50, "quarantined": 0}
    assert sum(len(x.get("tool_calls") or []) > 1 for r in recs for x in r["messages"]) == 12


def test_tool_mix_composes_bfcl_shapes(data_root):
    """Glaive single calls -> multiple / parallel / parallel_multiple, plus parallel calculator calls and python
    rows: each record is a valid conversation of its shape, held-out expressions stay out, python answers hold."""
    from actors.common.formats import convert_sft_file, messages_to_record
    from actors.data import toolmix
    from actors.tooltask import run_tool

    from actors.agent.styles import parse_react

    recs = convert_sft_file(data_root / "toolcall_sft_demo" / "glaive_toolcall_en_demo.json", "g")[0]
    wiki = (data_root / "pretrain_demo_llamafactory" / "wiki_demo.txt").read_text().split("\n")
    docs = [{"id": f"wiki:{i}", "text": t} for i, t in enumerate(wiki[:6]) if t.strip()]
    held = {"12 + 34"}
    counts = {"simple": 4, "multiple": 6, "parallel": 9, "parallel_multiple": 6, "irrelevance": 6,
              "parallel_arith": 6, "python": 6, "chain": 4, "retrieval": 6, "code": 8, "react": 6}
    held_counts = {"python": 5, "retrieval": 5}
    rows = toolmix.compose(recs, {**counts, "api_calls": 60}, 3, held, docs, held_counts)
    assert Counter(r["kind"] for r in rows) == counts
    assert toolmix.compose(recs, {**counts, "api_calls": 60}, 3, held, docs, held_counts) == rows   # seeded
    assert sum("-parallel-sets-" in r["id"] for r in rows) == 3   # a third of parallel: several argument sets at once
    assert sum("-parallel_multiple-sets-" in r["id"] for r in rows) == 2   # a third of parallel_multiple: 3-4 calls
    heldout = toolmix.heldout(held_counts, docs, 3)
    assert Counter(r["kind"] for r in heldout) == held_counts
    train_text = json.dumps(rows)
    for h in heldout:   # a held-out question never appears in training, nor a retrieval one's sentence phrase
        assert h["messages"][0]["content"] not in train_text
        if h["kind"] == "retrieval":
            assert h["phrase"] not in train_text and h["answer"] in {d["id"] for d in docs}
    assert any("." in t["function"]["name"] for r in rows for t in r.get("tools") or [])   # some dotted names
    for r in rows:
        assert messages_to_record(r, r["id"])[1] is None
        if r["kind"] == "irrelevance":   # offered tools share no name word with the request's own function
            assert len(r["messages"]) == 2 and "none of the available functions" in r["messages"][1]["content"]
            continue
        if r["kind"] == "code":   # the block runs: tools as functions, final_answer gives the answer
            code = re.search(r"```python\n(.*?)```", r["messages"][-1]["content"], re.S).group(1)
            got = []
            exec(code, {"calculator": lambda e: run_tool("calculator", e), "final_answer": got.append})
            assert str(got[0]) == r["answer"] and "final_answer(answer)" in r["messages"][0]["content"]
            continue
        if r["kind"] == "react":
            replies = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
            for reply, obs in zip(replies, [m for m in r["messages"][2:] if m["role"] == "user"]):
                [call] = parse_react(reply)[0]
                tool, arg = call["function"]["name"], json.loads(call["function"]["arguments"])
                if tool == "calculator":
                    assert obs["content"] == f"Observation: {run_tool('calculator', arg['expression'])}"
            assert parse_react(replies[-1]) == ([], r["answer"])
            continue
        if r["kind"] == "chain" and "-one-" in r["id"]:   # a chain frame's one-step twin: one call, then the answer
            assert [m["role"] for m in r["messages"]] == ["user", "assistant", "tool", "assistant"]
            assert r["messages"][2]["content"] in r["messages"][-1]["content"]
            continue
        if r["kind"] == "chain":   # two turns: the second call computes on the first one's result
            tool_msgs = [m for m in r["messages"] if m["role"] == "tool"]
            first, second = (r["messages"][k]["tool_calls"][0] for k in (1, 3))
            assert [m["tool_call_id"] for m in tool_msgs] == [first["id"], second["id"]]
            expr = json.loads(first["function"]["arguments"])["expression"]
            assert json.loads(second["function"]["arguments"])["expression"].startswith(run_tool("calculator", expr))
            assert tool_msgs[1]["content"] in r["messages"][-1]["content"]
            continue
        calls = r["messages"][1]["tool_calls"]
        names = [c["function"]["name"] for c in calls]
        offered = [t["function"]["name"] for t in r["tools"]]
        assert set(names) <= set(offered) and len(set(offered)) == len(offered)
        tool_msgs = [m for m in r["messages"] if m["role"] == "tool"]
        if r["kind"] in ("simple", "multiple", "parallel", "parallel_multiple"):   # composed: end with the calls
            assert len(r["messages"]) == 2 and not tool_msgs
        else:
            assert [m["tool_call_id"] for m in tool_msgs] == [c["id"] for c in calls]
        if r["kind"] == "simple":
            assert len(calls) == 1 and offered == names
        elif r["kind"] == "multiple":
            assert len(calls) == 1 and len(offered) >= 2
        elif r["kind"] == "parallel":   # one function, 2-3 calls differing in values, one request
            args = [json.loads(c["function"]["arguments"]) for c in calls]
            assert 2 <= len(calls) <= (4 if "-sets-" in r["id"] else 3) and len(set(names)) == 1
            assert all(a.keys() == args[0].keys() for a in args)
            assert len({json.dumps(a, sort_keys=True) for a in args}) == len(args)
            assert not re.search(r"Also, (hi|hello|hey)\b", r["messages"][0]["content"], re.I)
            if "-inline-" in r["id"]:   # one request spelling each value of one argument
                diff = [k for k in args[0] if len({json.dumps(a[k]) for a in args}) > 1]
                assert len(diff) == 1 and all(str(a[diff[0]]) in r["messages"][0]["content"] for a in args)
        elif r["kind"] == "parallel_multiple" and "-sets-" in r["id"]:   # 2-3 functions, one of them 2-3 times
            assert 3 <= len(calls) <= 4 and 2 <= len(set(names)) <= 3
            assert max(Counter(names).values()) >= 2 and set(names) <= set(offered)
        elif r["kind"] == "parallel_multiple":
            assert len(calls) == 2 and names[0] != names[1]
        elif r["kind"] == "parallel_arith":
            exprs = [json.loads(c["function"]["arguments"])["expression"] for c in calls]
            assert len(calls) in (2, 3) and not held & set(exprs)
            assert [m["content"] for m in tool_msgs] == [run_tool("calculator", e) for e in exprs]
        elif r["kind"] == "retrieval":
            assert names == ["search_docs"] and f"[{r['answer']}]" in tool_msgs[0]["content"]
            assert r["messages"][-1]["content"].startswith(f"According to [{r['answer']}]")
        else:
            assert names == ["python"] and tool_msgs[0]["content"] in r["messages"][-1]["content"]


def test_tool_mix_is_the_same_under_any_hash_seed(data_root):
    """Two processes with different PYTHONHASHSEED compose the same rows (no set order leaks into a draw)."""
    import subprocess
    import sys

    code = ("import json, sys; from actors.common.formats import convert_sft_file; from actors.data import toolmix; "
            f"recs = convert_sft_file({str(data_root / 'toolcall_sft_demo' / 'glaive_toolcall_en_demo.json')!r}, "
            "'g')[0]; rows = toolmix.compose(recs, {'api_calls': 40, 'multiple': 10, 'parallel': 9, "
            "'parallel_multiple': 6, 'irrelevance': 6}, 3); sys.stdout.write(json.dumps(rows))")
    root = Path(__file__).resolve().parent.parent
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert outs[0] == outs[1] and len(json.loads(outs[0])) == 31


def test_apisynth_calls_fit_their_schemas_and_requests_spell_their_values():
    """Every rule-made exchange, parallel request and near miss over the function pool: arguments of the declared
    JSON types (enums respected, every required one present, no unknown one), each value spelled in the request
    the way the parameter shows it, and a near miss never offers the function it needs."""
    import random as _random

    from actors.data import apisynth

    types = {"integer": int, "number": (int, float), "string": str, "boolean": bool, "array": list, "object": dict}
    rng = _random.Random(5)
    fns = {f.name: f for f in apisynth.FUNCTIONS}
    assert len(fns) == len(apisynth.FUNCTIONS) >= 50

    def check(user: str, call: dict) -> None:
        fn = fns[call["name"]]
        args = json.loads(call["arguments"])
        params = {p.name: p for p in fn.params}
        assert set(args) <= set(params) and {p.name for p in fn.params if p.required} <= set(args)
        for k, v in args.items():
            p = params[k]
            assert isinstance(v, types[p.type]) and not (p.type in ("integer", "number") and isinstance(v, bool))
            assert p.enum is None or v in p.enum
            if p.props:   # every key given, of its type and enum
                assert v.keys() == p.props.keys()
                assert all(isinstance(v[q], types[t]) and (e is None or v[q] in e) for q, (t, e) in p.props.items())
            if p.type != "boolean":   # spelled as the parameter shows it, or leaf by leaf
                leaves = [(p.show or str)(v)] if p.show or p.type not in ("array", "object") else \
                    [str(x) for x in (v.values() if isinstance(v, dict) else v)]
                assert all(x in user for x in leaves), (user, k, v)

    ex = apisynth.exchanges(3 * len(fns), rng)
    assert {e["call"]["name"] for e in ex} == set(fns)
    for e in ex:
        check(e["user"], e["call"])
        assert e["tools"][0]["function"]["name"] == e["call"]["name"]
    for user, calls, tools in apisynth.parallel_clauses(60, rng):
        assert 2 <= len(calls) <= 4 and len({c["arguments"] for c in calls}) == len(calls)
        assert [t["function"]["name"] for t in tools] == [calls[0]["name"]]
        for c in calls:
            check(user, c)
    same = fill = 0
    for user, tools, need in apisynth.near_misses(60, rng):
        offered = [fns[t["function"]["name"]] for t in tools]
        assert 1 <= len(offered) <= 3 and need not in {f.name for f in offered}
        assert not any(apisynth.name_words(f.name) & apisynth.name_words(need) for f in offered)
        if all(f.domain == fns[need].domain for f in offered):
            same += 1
        else:   # another domain's functions whose numeric arguments the request's numbers could fill
            k = sum(p.required and p.type in ("integer", "number") for p in fns[need].params)
            assert all(0 < sum(p.required and p.type in ("integer", "number") for p in f.params) <= k
                       and f.domain != fns[need].domain for f in offered)
            fill += 1
    assert same >= 20 and fill >= 10


def test_config_errors_name_key_and_fix():
    with pytest.raises(ConfigError, match=r"data.seq_len.*>= 2"):
        DataConfig(seq_len=1)
    with pytest.raises(ConfigError, match=r"split"):
        from_dict(DataConfig, {"sources": [{"name": "a", "path": "x", "split": "para"}]})
    with pytest.raises(ConfigError, match=r"did you mean 'vocab_size'"):
        from_dict(DataConfig, {"vocab": 10})
    with pytest.raises(ConfigError, match=r"data.filters.min_alpha_frac"):
        FilterConfig(min_alpha_frac=2)
    srcs = {s.name: s for s in DataConfig().sources}
    assert srcs["tinyshakespeare"].split == "paragraphs" and srcs["wiki_demo"].split == "lines"


def test_default_sources_resolve(data_root):
    tasks = [t for s in DataConfig().sources for t in extract.expand_source(s, data_root)]
    rels = [t["rel"] for t in tasks]
    assert sum(r.endswith("__source.html") for r in rels) == 4 and not any("__expected" in r for r in rels)
    assert sum(r.endswith(".md") for r in rels) == 3
    with pytest.raises(FileNotFoundError, match="data.sources\\[nope\\].path"):
        extract.expand_source(SourceConfig("nope", "no/such/*.txt"), data_root)


# ------------------------------------------------------------------------------------------ the stage


def _good_paragraphs(data_root: Path, n: int) -> list[str]:
    seen, out = set(), []
    for p in (data_root / "tinyshakespeare" / "input.txt").read_text().split("\n\n"):
        p = p.strip()
        if len(p) >= 120 and p not in seen and T.first_failing_rule(p, FilterConfig()) is None:
            seen.add(p)
            out.append(p)
        if len(out) == n:
            return out
    raise AssertionError("not enough paragraphs")


def test_stage_quarantines_bad_input_and_reconciles(ray_session, data_root, tmp_path):
    import ray

    from actors.common.config import to_dict
    from actors.data.stage import run_data_stage
    from actors.model.tokenizer import load_tokenizer

    @ray.remote(num_cpus=1)
    class DataWorker:  # defined here, so Ray pickles it by value (the tests folder is not on workers' path)
        def run(self, cfg_dict: dict, out_dir: str, data_root: str) -> dict:
            return run_data_stage(from_dict(DataConfig, cfg_dict, prefix="data"), Path(out_dir), Path(data_root))

    src = tmp_path / "src"
    src.mkdir()
    paras = _good_paragraphs(data_root, 60)
    (src / "good.txt").write_text("\n\n".join(paras) + "\n")
    prefix = b"This file starts as perfectly good English text, then "
    (src / "bad_utf8.txt").write_bytes(prefix + b"\xff\xfe breaks with bytes that are not UTF-8 at all.")
    jsonl_docs = [
        "The quick brown fox jumps over the lazy dog while the farmer watches from the barn door.",
        "子曰：“学而时习之，不亦说乎？有朋自远方来，不亦乐乎？人不知而不愠，不亦君子乎？”",
        "A third ordinary document about rivers, mountains and the weather in early spring.",
    ]
    lines = [json.dumps({"text": jsonl_docs[0]}, ensure_ascii=False),
             '{"text": "this line is cut off',
             json.dumps({"text": jsonl_docs[1]}, ensure_ascii=False),
             json.dumps({"body": "no text field on this line"}),
             json.dumps({"text": jsonl_docs[2]})]
    (src / "docs.jsonl").write_text("\n".join(lines) + "\n")
    (src / "corrupt.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not really gzip data")
    (src / "dup.txt").write_text("  " + jsonl_docs[2].replace(" ", "   ") + "\n")   # same after normalize
    (src / "short.txt").write_text("Too short.")
    (src / "scan.pdf").write_bytes(b"%PDF-1.4 binary")
    (src / "empty.txt").write_bytes(b"")
    alpaca = [{"instruction": "Name a color.", "input": "", "output": "Blue."},
              {"instruction": "Missing output"}, {"instruction": "", "output": "empty instruction"}]
    (src / "alpaca.json").write_text(json.dumps(alpaca))

    # docs.jsonl first: the tail of each split's token stream (< seq_len, dropped) is then a paragraph
    sources = [SourceConfig(n, str(src / f), split=s) for n, f, s in [
        ("docs", "docs.jsonl", "document"), ("good", "good.txt", "paragraphs"),
        ("bad_utf8", "bad_utf8.txt", "document"), ("corrupt", "corrupt.jsonl.gz", "document"),
        ("dup", "dup.txt", "document"), ("short", "short.txt", "document"), ("pdf", "scan.pdf", "document"),
        ("empty", "empty.txt", "document")]]
    cfg = DataConfig(sources=sources, vocab_size=512, seq_len=64, val_fraction=0.2, rows_per_shard=16,
                     synthetic=SyntheticConfig(n_train=20, n_heldout=5),
                     sft_sources=[SFTSourceConfig("alpaca", str(src / "alpaca.json"))],
                     docs_sources=["good", "docs"],
                     tool_mix=ToolMixConfig(from_sources=["alpaca"], retrieval=4, code=2, heldout_retrieval=1))
    out = tmp_path / "out"
    # inside an actor: the config travels as a plain dict and is re-validated, Ray Data runs from a worker
    worker = DataWorker.remote()
    try:
        res = ray.get(worker.run.remote(to_dict(cfg), str(out), str(tmp_path)))
    finally:
        ray.kill(worker)
    m, o = res["metrics"], res["outputs"]

    # exact accounting: 60 + 1 + 5 + 1 + 1 + 1 + 1 + 1 records read (the empty file is one empty document)
    assert m["read"] == 71
    assert m["kept"] == 63
    assert m["dropped"] == {"duplicate": 1, "empty": 1, "min_chars": 1}
    assert m["quarantined"] == {"bad_json": 1, "bad_pdf": 1, "invalid_utf8": 1, "missing_field": 1,
                                "unreadable": 1}
    assert m["read"] == m["kept"] + sum(m["dropped"].values()) + sum(m["quarantined"].values())
    assert m["by_source"]["dup"]["dropped"] == 1 and m["by_source"]["docs"]["kept"] == 3

    # every bad record is in quarantine.jsonl with its source and a precise reason
    q = [json.loads(x) for x in Path(o["quarantine"]).read_text().splitlines()]
    pre = {r["reason_kind"]: r for r in q if r["stage"] == "pretrain"}
    assert len(pre) == 5
    assert pre["invalid_utf8"]["source"].endswith("bad_utf8.txt")
    assert f"byte offset {len(prefix)}" in pre["invalid_utf8"]["reason"]
    assert pre["bad_json"]["source"].endswith("docs.jsonl") and pre["bad_json"]["doc_id"].endswith(":2")
    assert pre["missing_field"]["doc_id"].endswith(":4") and "'text'" in pre["missing_field"]["reason"]
    assert pre["unreadable"]["source"].endswith("corrupt.jsonl.gz") and "gzip" in pre["unreadable"]["reason"]
    assert pre["bad_pdf"]["source"].endswith("scan.pdf")
    sft_bad = [r for r in q if r["stage"] == "sft"]
    assert sorted(r["reason_kind"] for r in sft_bad) == ["empty_field", "missing_field"]
    assert m["sft"]["alpaca"] == {"read": 3, "kept": 1, "quarantined": 2}

    # the kept documents of docs_sources, for retrieval; the tool mix quotes them, held-out questions apart
    docs = pq.read_table(Path(o["docs"]) / "docs.parquet").to_pylist()
    assert {d["source"] for d in docs} == {"good", "docs"} and len(docs) == 60 + 3
    # (verse lines are short: only the two prose documents have quotable sentences, one held out; fewer rows than
    # asked, counted in stats)
    assert 1 <= m["sft"]["toolmix"]["retrieval"] <= 4 and m["sft"]["toolmix"]["code"] == 2
    held = [json.loads(x) for x in Path(o["tools_heldout"]).read_text().splitlines()]
    assert [h["kind"] for h in held] == ["retrieval"]
    assert {h["answer"] for h in held} <= {d["doc_id"] for d in docs}
    assert Path(o["sft"][-1]).name == "toolmix.jsonl"

    # packed parquet: int32 rows of exactly seq_len; token counts reconcile with the tail
    rows = {}
    for split in ("train", "val"):
        files = sorted(Path(o[f"{split}_dir"]).glob("*.parquet"))
        tables = [pq.read_table(f) for f in files]
        assert all(t.num_rows <= cfg.rows_per_shard for t in tables)
        assert all(str(t.schema.field("input_ids").type) == "list<element: int32>" for t in tables)
        rows[split] = [r for t in tables for r in t.column("input_ids").to_pylist()]
        assert rows[split] and all(len(r) == cfg.seq_len for r in rows[split])
        assert len(rows[split]) == m[f"{split}_sequences"]
    assert m["train_tokens"] + m["val_tokens"] == (
        (m["train_sequences"] + m["val_sequences"]) * cfg.seq_len + m["tokens_dropped_tail"])
    assert 0 <= m["tokens_dropped_tail"] < 2 * cfg.seq_len

    # the good text survives: rows put back in packing order hold every document but each split's tail doc
    from actors.data.stage import row_permutation

    tok = load_tokenizer(o["tokenizer_dir"])
    assert len(tok) == 512
    decoded = ""
    for s in ("train", "val"):
        packed = [None] * len(rows[s])
        for i, j in enumerate(row_permutation(len(rows[s]), cfg.seed)):
            packed[j] = rows[s][i]
        decoded += tok.decode([i for r in packed for i in r])
    good = jsonl_docs + [T.normalize(p) for p in paras]            # incl. the Chinese one, punctuation intact
    assert len([d for d in good if d not in decoded]) <= 2
    assert "not UTF-8" not in decoded and "Too short" not in decoded
    assert decoded.count(jsonl_docs[2]) <= 1                        # the duplicate is gone
    assert decoded.count("<|endoftext|>") >= 60                     # documents separated by EOS

    # baseline entropy: a real number below log(vocab) (the unigram beats uniform)
    assert 0 < m["unigram_entropy_nats"] < np.log(512)
    assert json.loads(Path(o["stats"]).read_text())["metrics"]["read"] == 71
    assert len(Path(o["synthetic_train"]).read_text().splitlines()) == 20
    assert len(Path(o["synthetic_heldout"]).read_text().splitlines()) == 5
    assert [json.loads(x)["messages"][-1]["content"] for x in Path(o["sft"][0]).read_text().splitlines()] == [
        "Blue."]
