"""PDF -> text with pypdfium2 (PDFium, BSD/Apache licensed; not PyMuPDF or MinerU, which are AGPL).

PDFium returns text in content-stream order, which on real files is often not reading order (a footnote or a
running footer drawn first). So each page's lines are placed by their boxes:
- PDFium's own lines are kept, each placed by the box of its characters, and read top to bottom (PDF y grows
  upwards); lines on one baseline left to right;
- a page of vertical CJK text (most lines tall and narrow) is read in columns from right to left;
- a page with a clear gutter (a vertical strip in the middle third that no segment crosses, with at least a
  quarter of the segments on each side) is read as two columns, left column first;
- a line that repeats in the top or bottom two lines of at least half of the pages (3 pages or more), with
  digits masked so "Page 3" matches "Page 4", is a running header or footer and is removed, as are bare page
  numbers there.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

EXTRACTOR = "pypdfium2"
_DIGITS = re.compile(r"\d+")
_PAGE_NO = re.compile(r"^[\s\-–—]*(page\s*)?\d{1,4}([\s/]*(of\s*)?\d{1,4})?[\s\-–—]*$", re.I)
EDGE_LINES = 2


class PdfExtractError(ValueError):
    """A file PDFium cannot open (not a PDF, truncated, encrypted): the reader quarantines it."""


@dataclass
class PdfDoc:
    text: str
    title: str = ""
    pages: int = 0
    extractor: str = EXTRACTOR
    meta: dict = field(default_factory=dict)


@dataclass
class _Line:
    text: str
    left: float
    bottom: float
    right: float
    top: float

    @property
    def mid(self) -> float:
        return (self.top + self.bottom) / 2

    @property
    def height(self) -> float:
        return max(self.top - self.bottom, 1.0)

    @property
    def vertical(self) -> bool:  # a column of vertical CJK text: tall and narrow
        return len(self.text) > 2 and (self.top - self.bottom) > 2 * (self.right - self.left)


def _raw_lines(page) -> list[_Line]:
    """PDFium's lines (its text with the line breaks it generates), each with the box of its characters."""
    tp = page.get_textpage()
    try:
        n = tp.count_chars()
        text = tp.get_text_range(0, n) if n else ""
        out, start = [], 0
        for m in re.finditer(r"\r\n|\n|$", text):
            end = m.start()
            chars = [i for i in range(start, min(end, n)) if not text[i].isspace()]
            start = m.end()
            if not chars:
                continue
            boxes = [tp.get_charbox(i) for i in chars]
            out.append(_Line(text[chars[0]:chars[-1] + 1], min(b[0] for b in boxes), min(b[1] for b in boxes),
                             max(b[2] for b in boxes), max(b[3] for b in boxes)))
        return out
    finally:
        tp.close()


def _order(lines: list[_Line]) -> list[str]:
    """Top to bottom; lines on one baseline left to right."""
    rows: list[list[_Line]] = []
    for ln in sorted(lines, key=lambda ln: (-ln.mid, ln.left)):
        if rows and abs(rows[-1][0].mid - ln.mid) <= min(rows[-1][0].height, ln.height) / 2:
            rows[-1].append(ln)
        else:
            rows.append([ln])
    return [ln.text for row in rows for ln in sorted(row, key=lambda ln: ln.left)]


def _gutter(lines: list[_Line], width: float) -> float | None:
    """x of a column gutter in the middle third of the page, or None."""
    if len(lines) < 8 or width <= 0:
        return None
    for x in [width * (0.34 + 0.01 * i) for i in range(33)]:
        if any(ln.left < x < ln.right for ln in lines):
            continue
        left = sum(ln.right <= x for ln in lines)
        if min(left, len(lines) - left) >= len(lines) / 4:
            return x
    return None


def page_lines(page) -> list[str]:
    lines = _raw_lines(page)
    if lines and sum(ln.vertical for ln in lines) > len(lines) / 2:
        return [ln.text for ln in sorted(lines, key=lambda ln: (-ln.right, -ln.top))]  # right to left
    x = _gutter(lines, page.get_width())
    if x is None:
        return _order(lines)
    return _order([ln for ln in lines if ln.right <= x]) + _order([ln for ln in lines if ln.left >= x])


def strip_running_lines(pages: list[list[str]]) -> tuple[list[list[str]], int]:
    """Remove running headers/footers and bare page numbers from the first/last EDGE_LINES lines of each page.
    Returns (pages, lines removed)."""
    def key(line: str) -> str:
        return _DIGITS.sub("#", line.strip().lower())

    seen = Counter()
    for lines in pages:
        seen.update({key(ln) for ln in lines[:EDGE_LINES] + lines[-EDGE_LINES:]})
    need = max(3, (len(pages) + 1) // 2)
    running = {k for k, n in seen.items() if n >= need and k}
    out, removed = [], 0
    for lines in pages:
        n = len(lines)
        keep = []
        for i, ln in enumerate(lines):
            edge = i < EDGE_LINES or i >= n - EDGE_LINES
            if edge and (key(ln) in running or (len(pages) > 1 and _PAGE_NO.match(ln))):
                removed += 1
            else:
                keep.append(ln)
        out.append(keep)
    return out, removed


def extract_pdf(data: bytes, password: str | None = None) -> PdfDoc:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data, password=password)
    except pdfium.PdfiumError as e:
        raise PdfExtractError(f"PDFium cannot open it: {e}") from e
    try:
        pages = []
        for i in range(len(pdf)):
            page = pdf[i]
            try:
                pages.append(page_lines(page))
            finally:
                page.close()
        title = ""
        try:
            title = (pdf.get_metadata_dict().get("Title") or "").strip()
        except pdfium.PdfiumError:
            pass
    finally:
        pdf.close()
    cleaned, removed = strip_running_lines(pages)
    text = "\n\n".join("\n".join(p) for p in cleaned if p).strip()
    return PdfDoc(text, title, len(pages), EXTRACTOR, {"pages": len(pages), "running_lines_removed": removed})
