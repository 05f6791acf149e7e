"""Quality rules of web-text curation: Gopher quality and repetition (Rae et al. 2021), C4 (Raffel et al. 2020)
and FineWeb's three (Penedo et al. 2024), with the thresholds datatrove uses by default, and rules for Chinese in
the manner of WanJuan-CC. Every rule returns the name of the first check a document fails (None: keep); C4 also
removes lines (javascript, cookie notices, lines without terminal punctuation), so it returns the new text too.

Rules are routed by the document's language (`lang` from actors.data.lid): Chinese and Japanese have no spaces
between words, so word-based rules (Gopher's word counts, C4's words per line) would misjudge them; those
documents get the Chinese rules, which count CJK characters instead. Words elsewhere come from `words()`,
close to spaCy's blank English tokenizer (what datatrove 0.10 uses): punctuation split off as its own tokens.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from actors.common.config import check

# datatrove's punctuation set (datatrove.utils.text), as characters: ASCII and CJK punctuation plus controls
PUNCTUATION = set("!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»") | {
    chr(c) for c in [*range(0, 9), *range(11, 32), *range(127, 160)]}
TERMINAL = (".", "?", "!", "。", "？", "！", "．", "｡")
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_SENTENCE_END = re.compile(r"[.!?。！？]+[\"'”’)]*(?=\s|$)")
CJK_LANGS = ("zh", "ja", "yue", "wuu", "gan", "lzh")


_PREFIX = set("\"'“‘([{<*$£€¥#«„¿¡")
_SUFFIX = set("\"'”’)]}>.,!?;:%»…")
_ABBREV = re.compile(r"^(?:[A-Za-z]\.)+$|^(?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Inc|Ltd|Co|Corp|vs|etc|No|Vol|Jan|Feb|Mar|Apr"
                     r"|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Mt|Ft|approx|Gen|Gov|Sen|Rep|Rev)\.$", re.I)
_INFIX = re.compile(r"(?<=[^\W\d_])(-+|–|—|/)(?=[^\W\d_])|(--+|—|–)")


def _split_chunk(chunk: str, out: list[str]) -> None:
    pre = []
    while chunk and chunk[0] in _PREFIX and len(chunk) > 1:
        pre.append(chunk[0])
        chunk = chunk[1:]
    post = []
    while chunk and len(chunk) > 1:
        if chunk.endswith("...") and len(chunk) > 3:
            post.append("...")
            chunk = chunk[:-3]
        elif chunk[-1] in _SUFFIX and not (chunk[-1] == "." and _ABBREV.match(chunk)):
            post.append(chunk[-1])
            chunk = chunk[:-1]
        elif chunk.lower().endswith("n't") and len(chunk) > 3:
            post.append(chunk[-3:])
            chunk = chunk[:-3]
        elif chunk[-2:].lower() in ("'s", "’s") and len(chunk) > 2:
            post.append(chunk[-2:])
            chunk = chunk[:-2]
        else:
            break
    out.extend(pre)
    if chunk:
        pos = 0
        for m in _INFIX.finditer(chunk):
            if m.start() > pos:
                out.append(chunk[pos:m.start()])
            out.append(m.group(0))
            pos = m.end()
        if pos < len(chunk):
            out.append(chunk[pos:])
    out.extend(reversed(post))


def words(text: str) -> list[str]:
    """Tokens as spaCy's blank English tokenizer makes them, closely: whitespace chunks with leading and
    trailing punctuation split off one mark at a time ("..." whole, abbreviations such as "U.S." and "Mrs." keep
    their period), "n't" and "'s" split off, hyphens and slashes between letters split out."""
    out: list[str] = []
    for chunk in text.split():
        _split_chunk(chunk, out)
    return out


@dataclass
class GopherQuality:
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2

    def __call__(self, text: str, toks: list[str]) -> str | None:
        n_all = len(toks)
        plain = [w for w in toks if any(c not in PUNCTUATION for c in w)]
        if len(plain) < self.min_doc_words:
            return "gopher_short_doc"
        if len(plain) > self.max_doc_words:
            return "gopher_long_doc"
        avg = sum(map(len, plain)) / len(plain)
        if avg < self.min_avg_word_length:
            return "gopher_below_avg_word_length"
        if avg > self.max_avg_word_length:
            return "gopher_above_avg_word_length"
        if text.count("#") / n_all > self.max_symbol_word_ratio:
            return "gopher_too_many_hashes"
        if (text.count("...") + text.count("…")) / n_all > self.max_symbol_word_ratio:
            return "gopher_too_many_ellipsis"
        lines = text.splitlines() or [""]
        if sum(ln.lstrip().startswith(("•", "-")) for ln in lines) / len(lines) > self.max_bullet_lines_ratio:
            return "gopher_too_many_bullets"
        if sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines) > self.max_ellipsis_lines_ratio:
            return "gopher_too_many_end_ellipsis"
        if sum(any(c.isalpha() for c in w) for w in toks) / n_all < self.min_alpha_words_ratio:
            return "gopher_below_alpha_ratio"
        if len(set(STOP_WORDS) & set(toks)) < self.min_stop_words:
            return "gopher_few_stop_words"
        return None


def _dups(items: list[str]) -> tuple[int, int]:
    """(repeated items, their characters): the first occurrence of each is not counted."""
    seen, n, chars = set(), 0, 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


@dataclass
class GopherRepetition:
    dup_para_frac: float = 0.3
    dup_para_char_frac: float = 0.2
    dup_line_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    top_n_grams: list[list[float]] = field(default_factory=lambda: [[2, 0.2], [3, 0.18], [4, 0.16]])
    dup_n_grams: list[list[float]] = field(default_factory=lambda: [
        [5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.10]])

    def __call__(self, text: str, toks: list[str]) -> str | None:
        size = len(text)
        if not size:
            return "empty"
        paras = re.split(r"\n{2,}", text.strip())
        n, chars = _dups(paras)
        if n / len(paras) > self.dup_para_frac:
            return "dup_para_frac"
        if chars / size > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = re.split(r"\n+", text)
        n, chars = _dups(lines)
        if n / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if chars / size > self.dup_line_char_frac:
            return "dup_line_char_frac"
        for n, thr in self.top_n_grams:
            n = int(n)
            grams = [" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)]
            if grams:
                gram, k = Counter(grams).most_common(1)[0]
                if len(gram) * k / size > thr:
                    return f"top_{n}_gram"
        for n, thr in self.dup_n_grams:
            n = int(n)
            # all n-grams built at C speed (zip of shifted lists), joined without spaces as datatrove keys them
            grams = list(map("".join, zip(*(toks[k:] for k in range(n)))))
            seen, chars, i, m = set(), 0, 0, len(grams)
            while i < m:
                gram = grams[i]
                if gram in seen:
                    chars += len(gram)
                    i += n
                else:
                    seen.add(gram)
                    i += 1
            if chars / size > thr:
                return f"duplicated_{n}_n_grams"
        return None


@dataclass
class C4Rules:
    min_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    remove_citations: bool = True

    def __call__(self, text: str) -> tuple[str | None, str]:
        """(rule that drops the document or None, the text with C4's dropped lines removed)."""
        kept, sentences = [], 0
        for raw in text.splitlines():
            line = raw.strip()
            ws = line.split()
            if any(len(w) > self.max_word_length for w in ws):
                continue
            if self.remove_citations:
                line = _CITATION.sub("", line)
            if not line.endswith((".", "?", "!", '"', "'")) or line.endswith("..."):
                continue
            if len(ws) < self.min_words_per_line:
                continue
            low = line.lower()
            if "lorem ipsum" in low:
                return "c4_lorem_ipsum", text
            if "javascript" in low:
                continue
            if "{" in line:
                return "c4_curly_bracket", text
            if any(p in low for p in _POLICY):
                continue
            sentences += max(1, len(_SENTENCE_END.findall(line)))
            kept.append(line)
        if sentences < self.min_sentences:
            return "c4_too_few_sentences", text
        return None, "\n".join(kept).strip()


@dataclass
class FineWebRules:
    line_punct_thr: float = 0.12
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3

    def __call__(self, text: str, toks: list[str]) -> str | None:
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if not lines:
            return "empty"
        if sum(ln.endswith(TERMINAL) for ln in lines) / len(lines) < self.line_punct_thr:
            return "fineweb_line_punct_ratio"
        if sum(len(ln) <= self.short_line_length for ln in lines) / len(lines) > self.short_line_thr:
            return "fineweb_short_line_ratio"
        _, dup_chars = _dups(lines)
        if dup_chars / max(1, len(text.replace("\n", ""))) > self.char_duplicates_ratio:
            return "fineweb_char_dup_ratio"
        if text.count("\n") / max(1, len(toks)) > self.new_line_ratio:
            return "fineweb_list_ratio"
        return None


# Mojibake of Chinese text: GBK bytes of U+FFFD read back as GBK (锟斤拷), uninitialised MSVC stack/heap
# memory printed as GBK (烫烫烫 / 屯屯屯), and UTF-8 read as Latin-1/cp1252 (the lead bytes Ã Â å æ ç è é ä
# followed by one or two continuation bytes shown as Latin-1/cp1252 symbols, e.g. "ä¸­æ–‡" for 中文).
_GARBLED = re.compile(r"\ufffd+|(?:锟斤拷)+|烫{3,}|屯{3,}|[\ue000-\uf8ff]+"
                      r"|(?:[ÃÂåæçèéäï][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192"
                      r"\u02c6\u02dc\u2013-\u2026\u2030\u2039\u203a\u20ac\u2122]{1,2}){2,}")
_DIGIT = re.compile(r"[0-9０-９]")
_ZH_PUNCT = set("，。、；：？！“”‘’（）《》【】「」『』〈〉…—·～")
# Gambling, pornography and spam phrases, as the keyword lists of WanJuan's safety step; a document is dropped
# only when several distinct ones appear (a news story on lottery fraud names one or two).
ZH_BLOCKLIST = ("博彩", "赌场", "百家乐", "六合彩", "时时彩", "北京赛车", "娱乐城", "真人荷官", "彩金", "网上赌",
                "下注", "充值返利", "色情", "成人视频", "裸聊", "一夜情", "约炮", "AV女优", "无码", "代开发票",
                "办证", "刷单", "网赚", "日赚", "加微信", "加QQ", "扫码领取", "免费领取", "点击进入", "棋牌")


@dataclass
class ChineseRules:
    """Rules for Chinese and Japanese in the manner of WanJuan / InternLM's Chinese web data: every count is
    in characters, since the text has no spaces between words. In order:

    - length: at least `min_cjk_chars` CJK characters, and a CJK share of at least `min_cjk_ratio`;
    - garbled text: mojibake (锟斤拷, 烫烫烫, UTF-8 read as Latin-1, U+FFFD, private-use characters) at most
      `max_garbled_ratio` of the characters;
    - punctuation and symbols: lines ending in sentence punctuation, at least `min_terminal_lines_ratio` of the
      lines; symbols other than letters and punctuation, at most `max_special_ratio`; digits, at most
      `max_digit_ratio` (lottery tables, price lists);
    - page furniture: lines of at most `short_line_chars` characters that do not end a sentence, at most
      `max_short_line_ratio` of the lines (menus, tag clouds; a poem's short lines end in 。);
    - repetition: characters in repeated lines at most `max_dup_line_char_frac`; characters covered by
      repeated `dup_char_ngram`-character n-grams at most `max_dup_char_ngram_frac` (Gopher's duplicated-n-gram
      rule on characters: spam that repeats a phrase within lines);
    - safety: at most `max_blocklist_hits - 1` distinct phrases of `blocklist` (gambling, pornography, spam).
    """
    min_cjk_chars: int = 50
    min_cjk_ratio: float = 0.3
    max_garbled_ratio: float = 0.01
    min_terminal_lines_ratio: float = 0.1
    max_special_ratio: float = 0.25
    max_digit_ratio: float = 0.4          # worked arithmetic in prose reaches 0.3; lottery tables 0.6+
    short_line_chars: int = 8
    max_short_line_ratio: float = 0.67
    max_dup_line_char_frac: float = 0.2
    dup_char_ngram: int = 10
    max_dup_char_ngram_frac: float = 0.5    # Shijing refrains reach 0.41, a repeated ad line 0.89
    blocklist: list[str] = field(default_factory=lambda: list(ZH_BLOCKLIST))
    max_blocklist_hits: int = 3

    def __post_init__(self):
        for name in ("min_cjk_ratio", "max_garbled_ratio", "min_terminal_lines_ratio", "max_special_ratio",
                     "max_digit_ratio", "max_short_line_ratio", "max_dup_line_char_frac", "max_dup_char_ngram_frac"):
            v = getattr(self, name)
            check(0.0 <= v <= 1.0, f"quality.chinese.{name}", f"is a fraction in [0, 1], got {v}")
        check(self.dup_char_ngram >= 2, "quality.chinese.dup_char_ngram", f"must be >= 2, got {self.dup_char_ngram}")
        check(self.max_blocklist_hits >= 1, "quality.chinese.max_blocklist_hits",
              f"must be >= 1 (1 drops a document with any listed phrase), got {self.max_blocklist_hits}")

    def __call__(self, text: str) -> str | None:
        non_space = len(text) - sum(c.isspace() for c in text)
        cjk = len(_CJK.findall(text))
        if cjk < self.min_cjk_chars:
            return "zh_short_doc"
        if cjk / max(1, non_space) < self.min_cjk_ratio:
            return "zh_low_cjk_ratio"
        if sum(map(len, _GARBLED.findall(text))) / max(1, non_space) > self.max_garbled_ratio:
            return "zh_garbled"
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        ends = TERMINAL + ("”", "」", "』", "）")
        if sum(ln.endswith(ends) for ln in lines) / len(lines) < self.min_terminal_lines_ratio:
            return "zh_line_punct_ratio"
        special = sum(1 for c in text if not (c.isalnum() or c.isspace() or c in PUNCTUATION or c in _ZH_PUNCT))
        if special / max(1, non_space) > self.max_special_ratio:
            return "zh_special_chars"
        if len(_DIGIT.findall(text)) / max(1, non_space) > self.max_digit_ratio:
            return "zh_digit_ratio"
        if sum(len(ln) <= self.short_line_chars and not ln.endswith(ends) for ln in lines) / len(lines) \
                > self.max_short_line_ratio:
            return "zh_short_line_ratio"
        _, chars = _dups(lines)
        if chars / max(1, len(text)) > self.max_dup_line_char_frac:
            return "zh_dup_line_char_frac"
        if self._dup_ngram_frac(text) > self.max_dup_char_ngram_frac:
            return "zh_dup_char_ngrams"
        if self.blocklist and sum(w in text for w in self.blocklist) >= self.max_blocklist_hits:
            return "zh_blocklist"
        return None

    def _dup_ngram_frac(self, text: str) -> float:
        """Share of the non-space characters inside an n-gram seen earlier (counted once, no overlap)."""
        chars = "".join(text.split())
        n = self.dup_char_ngram
        seen, covered, i, m = set(), 0, 0, len(chars) - n + 1
        while i < m:
            g = chars[i:i + n]
            if g in seen:
                covered += n
                i += n
            else:
                seen.add(g)
                i += 1
        return covered / max(1, len(chars))


@dataclass
class QualityConfig:
    """Which rule sets run (in this order) and their thresholds; each rule set can be switched off."""
    gopher_quality: GopherQuality | None = field(default_factory=GopherQuality)
    gopher_repetition: GopherRepetition | None = field(default_factory=GopherRepetition)
    c4: C4Rules | None = field(default_factory=C4Rules)
    fineweb: FineWebRules | None = field(default_factory=FineWebRules)
    chinese: ChineseRules | None = field(default_factory=ChineseRules)
    max_chars: int = 1_000_000

    def __post_init__(self):
        check(self.max_chars > 0, "quality.max_chars", f"must be > 0, got {self.max_chars}")


def apply_rules(text: str, lang: str, cfg: QualityConfig) -> tuple[str | None, str]:
    """(first failing rule or None, text after C4's line removal) for one document."""
    if len(text) > cfg.max_chars:
        return "max_chars", text
    if lang in CJK_LANGS:
        return (cfg.chinese(text) if cfg.chinese else None), text
    if cfg.gopher_repetition or cfg.gopher_quality or cfg.fineweb:
        toks = words(text)
    if cfg.gopher_repetition and (rule := cfg.gopher_repetition(text, toks)):
        return rule, text
    if cfg.gopher_quality and (rule := cfg.gopher_quality(text, toks)):
        return rule, text
    if cfg.c4:
        rule, text = cfg.c4(text)
        if rule:
            return rule, text
    if cfg.fineweb:
        rule = cfg.fineweb(text, words(text) if cfg.c4 else toks)
        if rule:
            return rule, text
    return None, text
