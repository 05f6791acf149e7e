"""HTML -> main text: trafilatura as a library, then our own cleaning of what it leaves in; our structural parser
when trafilatura finds no main text (a table of links, a page of short blocks).

On the scrapinghub article-extraction benchmark's shared half (91 pages, its token-shingle F1;
`python -m bench.data_extraction`): trafilatura 2.3.1 with its defaults 0.962, favor_precision without comments
0.975, and with the two cleanings below 0.979. The cleanings:
- a leading line that repeats the page's title (<title>, <h1>, og:title): the headline is not the body;
- a line whose whole text is the text of one link (>= 20 characters) on the page: related-article lists,
  "read more" teasers and newsletter links that trafilatura keeps as paragraphs. Body paragraphs are almost
  never a single link.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

_WS = re.compile(r"\s+")
MIN_LINK_LINE_CHARS = 20
TRAFILATURA = "trafilatura"
PARSER = "html-parser"


@dataclass
class HtmlDoc:
    text: str
    title: str = ""
    url: str = ""
    extractor: str = TRAFILATURA
    meta: dict = field(default_factory=dict)   # date, sitename, author, description where the page has them


def _norm(s: str) -> str:
    return _WS.sub(" ", s).strip()


def _page_links_and_titles(markup: str | bytes) -> tuple[set[str], set[str]]:
    import lxml.html

    try:
        doc = lxml.html.fromstring(markup)
    except (ValueError, lxml.etree.ParserError):  # empty or unparseable: nothing to clean against
        return set(), set()
    links = {t for a in doc.iter("a") if len(t := _norm(a.text_content())) >= MIN_LINK_LINE_CHARS}
    titles = {t for el in doc.xpath("//title|//h1") if (t := _norm(el.text_content()))}
    titles |= {t for m in doc.xpath("//meta[@property='og:title' or @name='twitter:title']/@content")
               if (t := _norm(str(m)))}
    return links, titles


def _is_title(line: str, titles: set[str]) -> bool:
    # "Headline | Site name" titles start with the headline; a headline line may carry a few extra chars
    return any(line == t or (len(line) > 20 and t.startswith(line)) or
               (len(t) > 20 and line.startswith(t) and len(line) - len(t) < 5) for t in titles)


def clean_main_text(text: str, links: set[str], titles: set[str]) -> tuple[str, dict]:
    """Drop title lines at the top and whole-link lines; returns (text, {"title_lines": n, "link_lines": n})."""
    out, dropped = [], {"title_lines": 0, "link_lines": 0}
    for i, line in enumerate(ln for ln in text.split("\n") if ln.strip()):
        n = _norm(line)
        if len(out) == 0 and i < 2 and _is_title(n, titles):
            dropped["title_lines"] += 1
        elif n in links:
            dropped["link_lines"] += 1
        else:
            out.append(line)
    return "\n".join(out), dropped


def extract_html(markup: str | bytes, url: str | None = None) -> HtmlDoc:
    """Main text and metadata of one page. Raises HTMLExtractError when neither extractor gets through it."""
    import trafilatura

    doc = trafilatura.bare_extraction(markup, url=url, favor_precision=True, include_comments=False,
                                      with_metadata=True)
    links, titles = _page_links_and_titles(markup)
    if doc is not None and (doc.text or "").strip():
        text, dropped = clean_main_text(doc.text, links, titles)
        meta = {k: v for k in ("date", "sitename", "author", "description")
                if isinstance(v := getattr(doc, k, None), str) and v}
        return HtmlDoc(text, doc.title or "", doc.url or url or "", TRAFILATURA, {**meta, **dropped})
    if isinstance(markup, bytes):
        markup = markup.decode("utf-8", errors="replace")
    text = html_to_text(markup)
    title = next(iter(sorted(titles, key=len)), "") if titles else ""
    return HtmlDoc(text, title, url or "", PARSER, {})


# ------------------------------------------------------------------------- the structural parser (fallback)

_DROP_TAGS = {"script", "style", "nav", "header", "footer", "aside", "form", "noscript", "head", "template",
              "svg", "iframe", "button", "select", "textarea", "object", "canvas", "map"}
_VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
              "track", "wbr"}
_BLOCK_TAGS = {"p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "ol",
               "dl", "dt", "dd", "table", "tr", "thead", "tbody", "tfoot", "caption", "blockquote", "figure",
               "figcaption", "pre", "address", "hr", "br", "center", "details", "summary"}
_CELL_TAGS = {"td", "th"}
_LINE_TAGS = {"li", "tr", "dt", "dd", "br", "hr", "caption", "figcaption", "summary"}  # one newline; others: blank line
# Boilerplate containers by id/class token (MediaWiki chrome, site menus, share/cookie widgets). A token
# must *start* with the word ("navbox", "footer-links"), so "feature-footer-v2" on <body> is not chrome.
_BOILERPLATE = re.compile(
    r"^(nav|navbar|navbox|navigation|menu|sidebar|footer|breadcrumbs?|cookie|share|social|advert|ads|banner|"
    r"mw-jump-link|mw-editsection|printfooter|catlinks|mw-navigation|toc|noprint|sitenotice|site-notice|"
    r"skip|hidden|comments?)([-_].*)?$", re.I)
_NEVER_BOILERPLATE = {"html", "body", "main", "article"}


class _Pre(str):
    """Text from inside <pre>: its whitespace is content, never trimmed."""


def _break(tag: str) -> int:
    return 1 if tag in _LINE_TAGS else 2


class _TextExtractor(HTMLParser):
    """Main-text extraction: drop chrome (scripts, navigation, headers/footers, forms, boilerplate by
    id/class), keep headings, paragraphs, list items, <pre> verbatim and table cells, one block per line."""

    def __init__(self):
        super().__init__(convert_charrefs=True)   # entities (&amp; &#160;) decoded by the parser
        self.out: list[str] = []
        self.skip_tag: str | None = None          # tag that opened the dropped subtree
        self.skip_depth = 0                       # nesting of skip_tag inside the dropped subtree
        self.pre = 0

    def _is_boilerplate(self, attrs) -> bool:
        for k, v in attrs:
            if k in ("id", "class", "role") and v and any(_BOILERPLATE.match(t) for t in v.split()):
                return True
            if k == "hidden" or (k == "aria-hidden" and v == "true"):
                return True
            if k == "style" and v and re.search(r"display\s*:\s*none", v):
                return True
        return False

    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            if tag == self.skip_tag and tag not in _VOID_TAGS:
                self.skip_depth += 1
            return
        if tag in _DROP_TAGS or (tag not in _VOID_TAGS and tag not in _NEVER_BOILERPLATE
                                 and self._is_boilerplate(attrs)):
            if tag not in _VOID_TAGS:
                self.skip_tag, self.skip_depth = tag, 1
            return
        if tag == "pre":
            self.pre += 1
        if tag in _BLOCK_TAGS:
            self.out.append(_break(tag))
            if tag == "li":
                self.out.append("- ")
        elif tag in _CELL_TAGS:
            self.out.append("\t")
        elif tag == "img":
            pass  # alt text is mostly file names on real pages: left out

    def handle_startendtag(self, tag, attrs):
        if self.skip_tag is None and tag in ("br", "hr"):
            self.out.append(1)

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in _BLOCK_TAGS:
            self.out.append(_break(tag))

    def handle_data(self, data):
        if self.skip_tag is not None:
            return
        if self.pre:
            self.out.append(_Pre(data))
        else:  # HTML collapses source whitespace (newlines inside a <p> are spaces)
            self.out.append(_WS.sub(" ", data))


class HTMLExtractError(ValueError):
    """A page html.parser cannot get through (e.g. `<![foo[...]]>`): the reader quarantines it as bad_html."""


def html_to_text(markup: str) -> str:
    """Main text of an HTML page, one block (heading, paragraph, list item, table row) per line.
    Raises HTMLExtractError where the parser gives up (the rest of such a page would be lost)."""
    p = _TextExtractor()
    try:
        p.feed(markup)
        p.close()
    except Exception as e:  # noqa: BLE001 - html.parser is lenient, but a few constructs still raise
        line, col = p.getpos()
        raise HTMLExtractError(f"HTML parsing stopped at line {line}, column {col + 1}: "
                               f"{type(e).__name__}: {e}") from e
    # consecutive breaks merge into the strongest one: 1 = newline, 2 = paragraph break
    pieces, pending = [], 0
    for x in p.out:
        if isinstance(x, int):
            pending = max(pending, x)
        elif x.strip() or (x and not pending and pieces):  # whitespace between blocks is not content
            if (pending or not pieces) and not isinstance(x, _Pre):
                x = x.lstrip(" ")                 # a block starts at the left margin
            if pending and pieces:
                pieces.append("\n" * pending)
            pending = 0
            pieces.append(x)
    text = "".join(pieces)
    lines = [ln.rstrip(" ") for ln in text.split("\n")]
    # blank-line runs left by nested blocks collapse to one paragraph break
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
