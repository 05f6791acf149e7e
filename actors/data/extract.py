"""Ray-free readers: files -> document records, bad input -> quarantine records (never an exception).

Every reader yields uniform rows (one Arrow schema for Ray Data):
    document:   {"source_name", "source", "doc_id", "text", "status": "ok", "reason_kind": "", "reason": "",
                 "raw_preview": ""}
    quarantine: {... "text": "", "status": "quarantined", "reason_kind": one of QUARANTINE_KINDS,
                 "reason": precise message (byte offset, line number, JSON error), "raw_preview": first bytes}
`doc_id` is globally unique: "<file relative to the data root><locator>", e.g. "c4/x.jsonl:12" (line 12),
"tinyshakespeare/input.txt#p3" (paragraph 3), "wiki.txt#L7" (line 7), "a.json[4]" (element 4), "d.parquet:9"
(row 9 of a Parquet table of documents, such as the curation pipeline's `docs/part-*.parquet`).

Text is decoded as strict UTF-8 so mojibake never reaches the tokenizer: an undecodable unit (a line of a
JSONL file, a paragraph/line of a text file, or the whole file for split="document") is quarantined with the
byte offset of the first bad byte, and the other units go on.
"""
from __future__ import annotations

import fnmatch
import glob
import gzip
import html
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

QUARANTINE_KINDS = ("invalid_utf8", "binary", "bad_json", "bad_html", "bad_pdf", "extract_timeout",
                    "extract_crash", "missing_field", "unreadable", "unsupported_format")
PREVIEW_BYTES = 160

_EXT_FORMATS = [  # longest suffix first
    (".jsonl.gz", "jsonl.gz"), (".json.gz", "jsonl.gz"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
    (".json", "json"), (".txt", "text"), (".text", "text"), (".html", "html"), (".htm", "html"),
    (".markdown", "markdown"), (".md", "markdown"), (".pdf", "pdf"), (".parquet", "parquet"),
]


# ----------------------------------------------------------------------------------------------- records

def doc_record(task: dict, doc_id: str, text: str, title: str = "", url: str = "", extractor: str = "",
               meta: dict | None = None) -> dict:
    return {"source_name": task["source_name"], "source": task["path"], "doc_id": doc_id, "text": text,
            "title": title, "url": url, "extractor": extractor or task.get("format") or "",
            "meta": json.dumps(meta or {}, ensure_ascii=False, sort_keys=True),
            "status": "ok", "reason_kind": "", "reason": "", "raw_preview": ""}


def quarantine_record(task: dict, doc_id: str, kind: str, reason: str, raw: bytes | str = b"") -> dict:
    assert kind in QUARANTINE_KINDS, kind
    if isinstance(raw, bytes):
        raw = raw[:PREVIEW_BYTES].decode("utf-8", errors="backslashreplace")
    return {"source_name": task["source_name"], "source": task["path"], "doc_id": doc_id, "text": "",
            "title": "", "url": "", "extractor": "", "meta": "{}",
            "status": "quarantined", "reason_kind": kind, "reason": f"{kind}: {reason}",
            "raw_preview": raw[:PREVIEW_BYTES]}


def detect_format(path: str) -> str | None:
    low = path.lower()
    for ext, fmt in _EXT_FORMATS:
        if low.endswith(ext):
            return fmt
    return None


def expand_source(src, data_root: str | Path) -> list[dict]:
    """One task per file matched by `src.path` (a SourceConfig); sorted so runs are reproducible.

    Raises FileNotFoundError when nothing matches: a misspelled source is a config error, not bad data.
    """
    root = Path(data_root)
    pattern = src.path if Path(src.path).is_absolute() else str(root / src.path)
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if src.exclude:
        paths = [p for p in paths if not fnmatch.fnmatch(Path(p).name, src.exclude)]
    paths = [p for p in paths if not Path(p).is_dir()]
    if not paths or (not glob.has_magic(pattern) and not Path(pattern).exists()):
        raise FileNotFoundError(f"data.sources[{src.name}].path: {src.path!r} matches no file under {root}; "
                                "fix the path (relative to the data root, or absolute) or remove the source")
    tasks = []
    for p in paths:
        try:
            rel = str(Path(p).resolve().relative_to(root.resolve()))
        except ValueError:
            rel = p
        tasks.append({"source_name": src.name, "path": p, "rel": rel, "format": src.format,
                      "text_field": src.text_field, "split": src.split})
    return tasks


def read_task(task: dict) -> Iterator[dict]:
    """All records of one file task (see `expand_source`). Never raises for bad input. A file with no text at
    all still gives one (empty) document, so the `empty` rule counts it instead of it vanishing."""
    n = 0
    for rec in _read_task(task):
        n += 1
        yield rec
    if n == 0:
        yield doc_record(task, task["rel"], "")


def _read_task(task: dict) -> Iterator[dict]:
    fmt = task["format"] if task["format"] != "auto" else detect_format(task["path"])
    rel = task["rel"]
    if fmt is None:
        yield quarantine_record(task, rel, "unsupported_format",
                                f"{rel}: extension not one of {[e for e, _ in _EXT_FORMATS]}; set "
                                "data.sources[].format explicitly or convert the file")
        return
    if fmt == "jsonl.gz":
        yield from _read_jsonl(task, gz=True)
        return
    if fmt == "parquet":
        yield from _read_parquet(task)
        return
    try:
        data = Path(task["path"]).read_bytes()
    except OSError as e:  # permission denied, vanished file, I/O error
        yield quarantine_record(task, rel, "unreadable", f"{rel}: {type(e).__name__}: {e.strerror or e}")
        return
    if fmt != "pdf":
        data, binary = transcode(data)
        if binary:
            yield quarantine_record(task, rel, "binary", f"{rel}: {binary}", data)
            return
    if fmt == "jsonl":
        yield from _jsonl_lines(task, _split_lines_bytes(data))
    elif fmt == "json":
        yield from _read_json(task, data)
    elif fmt == "text":
        yield from _read_text(task, data)
    elif fmt in ("html", "pdf"):
        yield from _read_extracted(task, data, fmt)
    elif fmt == "markdown":
        text, err = _decode(data)
        if err:
            yield quarantine_record(task, rel, "invalid_utf8", f"{rel}: {err}", data[max(0, _err_pos(data) - 40):])
            return
        yield from _split_docs(task, rel, markdown_to_text(text), extractor="markdown")
    else:  # config validation makes this unreachable; still a record, not a crash
        yield quarantine_record(task, rel, "unsupported_format", f"{rel}: format {fmt!r}")


# ----------------------------------------------------------------------------------------------- helpers

_BOMS = [(b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe", "utf-16-le"),
         (b"\xfe\xff", "utf-16-be")]


def _utf16_without_bom(data: bytes) -> str | None:
    """'utf-16-le'/'utf-16-be' when NULs sit on one byte parity only (ASCII-range text in UTF-16), else None."""
    if len(data) < 8 or len(data) % 2:
        return None
    sample = data[:4096]
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = len(sample) // 2
    if odd >= 0.4 * half and even <= 0.05 * half:
        return "utf-16-le"
    if even >= 0.4 * half and odd <= 0.05 * half:
        return "utf-16-be"
    return None


def transcode(data: bytes) -> tuple[bytes, str]:
    """(UTF-8 bytes, "") for UTF-8 input and for UTF-16/32 input (with a BOM, or UTF-16 recognised by its NUL
    bytes), decoded rather than dropped; (data, reason) for binary data (NUL bytes in what is not UTF-16/32)."""
    enc = next((e for bom, e in _BOMS if data.startswith(bom)), None) or _utf16_without_bom(data)
    if enc is not None:
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            enc = None
        else:
            return text.lstrip("\ufeff").encode("utf-8"), ""
    nul = data.count(0)
    if nul:
        return data, f"binary data: {nul} NUL bytes in {len(data)} (not text in UTF-8, UTF-16 or UTF-32)"
    return data, ""


def _decode(data: bytes) -> tuple[str, str]:
    """(text, "") or ("", precise error) with strict UTF-8; a leading BOM is dropped."""
    try:
        return data.decode("utf-8-sig" if data[:3] == b"\xef\xbb\xbf" else "utf-8"), ""
    except UnicodeDecodeError as e:
        return "", f"invalid UTF-8 byte 0x{data[e.start]:02x} at byte offset {e.start} ({e.reason})"


def _err_pos(data: bytes) -> int:
    try:
        data.decode("utf-8")
        return 0
    except UnicodeDecodeError as e:
        return e.start


def _split_lines_bytes(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset, line bytes without the newline)."""
    off = 0
    for i, line in enumerate(data.split(b"\n"), start=1):
        yield i, off, line.rstrip(b"\r")
        off += len(line) + 1


_PARA_SPLIT_B = re.compile(rb"\n[ \t\r]*\n")
_PARA_SPLIT = re.compile(r"\n[ \t\r]*\n")


def _read_text(task: dict, data: bytes) -> Iterator[dict]:
    rel, split = task["rel"], task["split"]
    if split == "document":
        units = [(rel, 0, data)]
    elif split == "lines":
        units = [(f"{rel}#L{n}", off, b) for n, off, b in _split_lines_bytes(data)]
    else:  # paragraphs: split on blank lines at the byte level so one bad byte costs one paragraph
        units, start, k = [], 0, 0
        for m in _PARA_SPLIT_B.finditer(data):
            units.append((start, data[start:m.start()]))
            start = m.end()
        units.append((start, data[start:]))
        units = [(f"{rel}#p{k}", off, b) for k, (off, b) in enumerate(u for u in units if u[1].strip())]
    for doc_id, off, b in units:
        if not b.strip():
            continue
        text, err = _decode(b)
        yield _utf8_quarantine(task, doc_id, rel, err, b, off) if err else doc_record(task, doc_id, text)


def _utf8_quarantine(task: dict, doc_id: str, where: str, err: str, b: bytes, off: int) -> dict:
    """A piece `b` that starts at byte `off` of its file failed to decode: report the offset in the file."""
    pos = _err_pos(b)
    return quarantine_record(task, doc_id, "invalid_utf8",
                             f"{where}: {err.replace(f'offset {pos}', f'offset {off + pos}')}", b[max(0, pos - 40):])


def _read_extracted(task: dict, data: bytes, fmt: str) -> Iterator[dict]:
    """HTML (trafilatura on the raw bytes: it reads the page's declared charset itself) or PDF, in this worker's
    sandbox under the time limit; a failure is one quarantine record."""
    from actors.data.html import extract_html
    from actors.data.pdf import extract_pdf
    from actors.data.sandbox import ExtractCrash, ExtractTimeout, sandbox

    rel = task["rel"]
    fn, failed = (extract_html, "bad_html") if fmt == "html" else (extract_pdf, "bad_pdf")
    try:
        doc = sandbox(task.get("timeout_s", 30.0))(fn, data)
    except (ExtractTimeout, ExtractCrash, ValueError) as e:
        kind = {ExtractTimeout: "extract_timeout", ExtractCrash: "extract_crash"}.get(type(e), failed)
        yield quarantine_record(task, rel, kind, f"{rel}: {e}", data)
        return
    meta = {**doc.meta, "pages": doc.pages} if fmt == "pdf" else doc.meta
    yield from _split_docs(task, rel, doc.text, title=doc.title, url=getattr(doc, "url", ""),
                           extractor=doc.extractor, meta=meta)


def _split_docs(task: dict, doc_id: str, text: str, **fields) -> Iterator[dict]:
    """Apply the source's `split` to an already decoded text (JSON/HTML/Markdown/PDF documents); `fields`
    (title, url, extractor, meta) go on every piece."""
    split = task["split"]
    if split == "document":
        parts = [(doc_id, text)]
    elif split == "lines":
        parts = [(f"{doc_id}#L{i}", t) for i, t in enumerate(text.split("\n"), start=1)]
    else:
        parts = [(f"{doc_id}#p{i}", t) for i, t in enumerate(p for p in _PARA_SPLIT.split(text) if p.strip())]
    for d, t in parts:
        if t.strip():
            yield doc_record(task, d, t, **fields)


def _json_record(task: dict, doc_id: str, obj, raw) -> Iterator[dict]:
    field = task["text_field"]
    if not isinstance(obj, dict):
        yield quarantine_record(task, doc_id, "missing_field",
                                f"{doc_id}: expected a JSON object with {field!r}, got {type(obj).__name__}", raw)
    elif field not in obj:
        yield quarantine_record(task, doc_id, "missing_field",
                                f"{doc_id}: no {field!r} key (keys: {sorted(obj)[:8]}); set "
                                "data.sources[].text_field if the text lives under another key", raw)
    elif not isinstance(obj[field], str):
        yield quarantine_record(task, doc_id, "missing_field",
                                f"{doc_id}: {field!r} is {type(obj[field]).__name__}, not a string", raw)
    else:
        yield from _split_docs(task, doc_id, obj[field])


def _jsonl_lines(task: dict, lines) -> Iterator[dict]:
    rel = task["rel"]
    for n, off, b in lines:
        if not b.strip():
            continue
        doc_id = f"{rel}:{n}"
        text, err = _decode(b)
        if err:
            yield _utf8_quarantine(task, doc_id, f"line {n}", err, b, off)
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield quarantine_record(task, doc_id, "bad_json", f"line {n}: {e.msg} at column {e.colno}", b)
            continue
        yield from _json_record(task, doc_id, obj, b)


def _read_jsonl(task: dict, gz: bool) -> Iterator[dict]:
    """Streamed JSONL(.gz): a corrupt/truncated gzip keeps the lines before the damage, then quarantines."""
    rel = task["rel"]
    n, off = 0, 0
    try:
        with (gzip.open if gz else open)(task["path"], "rb") as f:
            for raw in f:
                n += 1
                line = raw.rstrip(b"\n").rstrip(b"\r")
                yield from _jsonl_lines(task, [(n, off, line)])
                off += len(raw)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        what = "corrupt or truncated gzip" if gz else "read error"
        yield quarantine_record(task, f"{rel}:{n + 1}", "unreadable",
                                f"{rel}: {what} after {n} lines (uncompressed byte {off}): {type(e).__name__}: {e}")


def _read_parquet(task: dict) -> Iterator[dict]:
    """A Parquet table of documents, one per row, streamed a batch at a time: the `text_field` column is the
    text, and `title` / `url` / `meta` go along where the table has them (the curation pipeline's schema), with
    the row's own `id` kept in meta as `source_id`.
    A row whose text is null is quarantined; a file that is not Parquet, or breaks midway, keeps the rows
    before the damage and is quarantined from there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rel, field = task["rel"], task["text_field"]
    n = 0
    try:
        pf = pq.ParquetFile(task["path"])
        names = pf.schema_arrow.names
        if field not in names:
            yield quarantine_record(task, rel, "missing_field", f"{rel}: no {field!r} column (columns: "
                                    f"{names[:8]}); set data.sources[].text_field to the text column")
            return
        cols = [c for c in (field, "id", "title", "url", "meta") if c in names]
        for batch in pf.iter_batches(batch_size=1024, columns=cols):
            d = batch.to_pydict()
            for i, text in enumerate(d[field]):
                doc_id = f"{rel}:{n}"
                n += 1
                if not isinstance(text, str):
                    yield quarantine_record(task, doc_id, "missing_field",
                                            f"{doc_id}: {field!r} is {type(text).__name__}, not a string")
                    continue
                row = {k: d[k][i] for k in cols[1:]}
                try:
                    meta = json.loads(row["meta"]) if isinstance(row.get("meta"), str) else {}
                except json.JSONDecodeError:
                    meta = {"meta": row["meta"]}
                meta = meta if isinstance(meta, dict) else {"meta": meta}
                if row.get("id") is not None:
                    meta["source_id"] = row["id"]
                yield from _split_docs(task, doc_id, text, title=row.get("title") or "", url=row.get("url") or "",
                                       meta=meta)
    except (pa.ArrowException, OSError) as e:
        yield quarantine_record(task, f"{rel}:{n}", "unreadable",
                                f"{rel}: not readable as Parquet after {n} rows: {type(e).__name__}: {e}")


def _read_json(task: dict, data: bytes) -> Iterator[dict]:
    rel = task["rel"]
    text, err = _decode(data)
    if err:
        yield quarantine_record(task, rel, "invalid_utf8", f"{rel}: {err}", data[max(0, _err_pos(data) - 40):])
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        yield quarantine_record(task, rel, "bad_json", f"{rel}: {e.msg} at line {e.lineno} column {e.colno}",
                                data[max(0, e.pos - 40):])
        return
    if isinstance(obj, list):
        for i, o in enumerate(obj):
            yield from _json_record(task, f"{rel}[{i}]", o, json.dumps(o, ensure_ascii=False)[:PREVIEW_BYTES])
    else:
        yield from _json_record(task, rel, obj, text[:PREVIEW_BYTES])


# ----------------------------------------------------------------------------------------------- Markdown

_FENCE = re.compile(r"^\s*(```|~~~)")
_MD_RULES = [
    (re.compile(r"<!--.*?-->", re.S), ""),                              # HTML comments
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),                     # images -> alt text
    (re.compile(r"\[([^\[\]]*)\]\([^)]*\)"), r"\1"),                    # [text](url) -> text
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),                     # [text][ref] -> text
    (re.compile(r"<(https?://[^>\s]+)>"), r"\1"),                       # <http://autolink>
    (re.compile(r"</?[A-Za-z][^>]*>"), ""),                             # inline/ block HTML tags
    (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), r"\2"),              # **bold** __bold__
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])"), r"\1"),  # *em*
    (re.compile(r"(?<![\w])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w])"), r"\1"),     # _em_ (not snake_case)
    (re.compile(r"~~(.+?)~~"), r"\1"),                                   # ~~strike~~
    (re.compile(r"`([^`\n]+)`"), r"\1"),                                 # `inline code`
    (re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>])"), r"\1"),                # backslash escapes
]
_MD_LINE_RULES = [
    (re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$"), r"\1"),             # ATX headings
    (re.compile(r"^\s{0,3}>\s?"), ""),                                    # blockquotes
    (re.compile(r"^(\s*)[-*+]\s+(\[[ xX]\]\s+)?"), r"\1"),                # bullets / task boxes
]
_HRULE = re.compile(r"^\s{0,3}([-*_=])(\s*\1){2,}\s*$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)+\|?\s*$")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+\S+")


def markdown_to_text(md: str) -> str:
    """Plain text of a Markdown document: markup stripped, code blocks verbatim, table cells tab-joined."""
    blocks: list[tuple[bool, list[str]]] = []   # (is_code, lines): inline rules never touch code
    in_code = False
    for line in md.replace("\r\n", "\n").split("\n"):
        if _FENCE.match(line):
            in_code = not in_code            # the fence line itself (```python) is markup
            continue
        if not in_code:
            if _HRULE.match(line) or _TABLE_SEP.match(line) or _REF_DEF.match(line):
                continue
            for rx, rep in _MD_LINE_RULES:
                line = rx.sub(rep, line)
            s = line.strip()
            if s.count("|") >= 2 and (s.startswith("|") or s.endswith("|")):   # GFM table row
                line = "\t".join(c.strip() for c in s.strip("|").split("|") if c.strip())
        if not blocks or blocks[-1][0] != in_code:
            blocks.append((in_code, []))
        blocks[-1][1].append(line)
    parts = []
    for is_code, lines in blocks:
        text = "\n".join(lines)
        if not is_code:
            for rx, rep in _MD_RULES:
                text = rx.sub(rep, text)
            text = html.unescape(text)
        parts.append(text)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(parts)).strip()
