"""Ray-free document transforms: normalize, rule filters, exact-dedup helpers, split, tokenize, pack, unigram
baseline. The data stage maps these over Ray Data batches; tests call them directly.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------- normalize

# C0/C1 controls except \t and \n (\r is turned into \n first), zero-width space, BOM.
_CTRL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_HSPACE = re.compile(r"[^\S\n]+")          # any whitespace run except newlines (incl. NBSP, U+3000)
_INDENT = re.compile(r"[ \t]*")
_BLANKS = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """NFC (not NFKC: that would turn Chinese full-width punctuation ，。！ into ASCII), drop control
    chars, collapse in-line whitespace runs to one space, keep a line's leading indentation (code),
    keep single newlines and at most one blank line between paragraphs, trim."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CTRL.sub("", text)
    lines = []
    for line in text.split("\n"):
        indent = _INDENT.match(line).group(0)
        body = _HSPACE.sub(" ", line[len(indent):]).rstrip()
        lines.append(indent + body if body else "")
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


# ---------------------------------------------------------------------------------------------- filters

_ALPHA = re.compile(r"[^\W\d_]")            # letters in any script; CJK ideographs are letters (Lo)
_SPACE = re.compile(r"\s")
_NONWORD = re.compile(r"[^\w\s]|_")         # punctuation/symbol candidates (few per doc: cheap to classify)
_MARKUP = set("#*/\\_{}[]@|<>~^`")


def non_space_len(text: str) -> int:
    return len(text) - len(_SPACE.findall(text))


def alpha_frac(text: str) -> float:
    n = non_space_len(text)
    return len(_ALPHA.findall(text)) / n if n else 0.0


def symbol_ratio(text: str) -> float:
    """Fraction of non-space chars that are Unicode symbols (S*) or markup/code punctuation."""
    n = non_space_len(text)
    if not n:
        return 0.0
    sym = sum(1 for ch in _NONWORD.findall(text) if ch in _MARKUP or unicodedata.category(ch)[0] == "S")
    return sym / n


def dup_line_frac(text: str) -> float:
    """Fraction of non-empty lines that repeat an earlier line of the same document."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


RULES = ("empty", "min_chars", "max_chars", "min_alpha_frac", "max_symbol_ratio", "max_dup_line_frac")
DUPLICATE = "duplicate"                     # the drop reason of exact dedup (not a per-document rule)


def first_failing_rule(text: str, f) -> str | None:
    """Name of the first rule (in RULES order; names = FilterConfig keys) that `text` fails, else None.

    `f` is a FilterConfig. Cheap rules first, so most drops cost one len().
    """
    if not text.strip():
        return "empty"
    if len(text) < f.min_chars:
        return "min_chars"
    if len(text) > f.max_chars:
        return "max_chars"
    if alpha_frac(text) < f.min_alpha_frac:
        return "min_alpha_frac"
    if symbol_ratio(text) > f.max_symbol_ratio:
        return "max_symbol_ratio"
    if dup_line_frac(text) > f.max_dup_line_frac:
        return "max_dup_line_frac"
    return None


# ---------------------------------------------------------------------------------------------- dedup / split

def content_hash(text: str) -> str:
    """Exact-dedup key of a normalized document (128-bit: collisions are negligible at any corpus size)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def split_of(h: str, val_fraction: float, seed: int = 0) -> str:
    """'val' for a stable `val_fraction` of documents chosen by content hash, else 'train'.

    By content, not position: the split does not change when sources are added or reordered, and
    identical documents can never straddle train and val.
    """
    if val_fraction <= 0:
        return "train"
    u = int.from_bytes(hashlib.blake2b(f"{seed}:{h}".encode(), digest_size=8).digest(), "big") / 2.0 ** 64
    return "val" if u < val_fraction else "train"


def find_duplicates(hashes: Sequence[str], order: Sequence[int], doc_ids: Sequence[str]) -> set[str]:
    """doc_ids of every document whose hash was already seen at a smaller `order` (first one is kept).

    Keyed on the order of the inputs, not on arrival: parallel readers finish in any order, yet the
    same copy is always the one kept.
    """
    best: dict[str, tuple[int, str]] = {}
    for h, o, d in zip(hashes, order, doc_ids):
        cur = best.get(h)
        if cur is None or (o, d) < cur:
            best[h] = (o, d)
    keep = {d for _, d in best.values()}
    return {d for d in doc_ids if d not in keep}


def clean_rows(rows: list[dict], filters, val_fraction: float, seed: int) -> list[dict]:
    """Normalize + filter + hash + split one batch of reader rows (see extract.py for the row schema).

    Adds: status "kept" | "dropped" | "quarantined" (quarantined rows pass through untouched),
    reason_kind = the failing rule for drops, hash, split, n_chars.
    """
    out = []
    for r in rows:
        r = dict(r)
        if r["status"] == "quarantined":
            r.update(hash="", split="", n_chars=0)
            out.append(r)
            continue
        text = normalize(r["text"])
        rule = first_failing_rule(text, filters)
        h = content_hash(text)
        r.update(text=text, hash=h, split=split_of(h, val_fraction, seed), n_chars=len(text))
        if rule is None:
            r.update(status="kept")
        else:
            r.update(status="dropped", reason_kind=rule, reason=f"{rule}: failed the {rule} filter",
                     raw_preview=text[:160])
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------------- tokens

def tokenize_texts(tok, texts: list[str], eos_id: int) -> list[list[int]]:
    """Token ids of each document with EOS appended (the document boundary the LM learns to predict).

    `tok`: the `tokenizers.Tokenizer` of tokenizer.json (what the stage's workers use: importing
    transformers costs ~4 s per worker) or the PreTrainedTokenizerFast of `load_tokenizer` (same ids).
    """
    if not texts:
        return []
    if hasattr(tok, "encode_batch"):
        ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    else:  # verbose=False: documents longer than model_max_length are fine, they get packed, not fed whole
        ids = tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return [list(x) + [eos_id] for x in ids]


def load_fast_tokenizer(tok_dir: str):
    """The raw `tokenizers.Tokenizer` behind `actors.model.tokenizer.load_tokenizer(tok_dir)`."""
    from pathlib import Path

    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))


def pack(token_lists: Iterable[Sequence[int]], seq_len: int) -> tuple[np.ndarray, int]:
    """Concatenate documents and cut into rows of exactly `seq_len` tokens.

    Returns (rows int32 [n_rows, seq_len], tail) where `tail` tokens (< seq_len) at the end of the
    stream did not fill a row and were dropped; callers count them, nothing is lost silently.
    """
    arrays = [np.asarray(t, dtype=np.int32) for t in token_lists]
    return pack_flat(np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32), seq_len)


def pack_flat(flat: np.ndarray, seq_len: int) -> tuple[np.ndarray, int]:
    """`pack` of an already concatenated token stream [n_tokens] -> ([n_rows, seq_len] int32, tail)."""
    flat = np.asarray(flat, dtype=np.int32)
    n = len(flat) // seq_len
    return flat[: n * seq_len].reshape(n, seq_len), int(len(flat) - n * seq_len)


def unigram_cross_entropy(train_counts: np.ndarray, val_counts: np.ndarray) -> float:
    """Cross-entropy (nats/token) of val tokens under the add-one-smoothed unigram model of train tokens.

    train_counts, val_counts: [vocab_size] token counts. The LM baseline: a model that ignores context
    entirely scores this; a pretrained LM must do clearly better.
    """
    v = len(train_counts)
    logp = np.log(train_counts.astype(np.float64) + 1.0) - np.log(float(train_counts.sum()) + v)
    n = val_counts.sum()
    return float(-(val_counts.astype(np.float64) * logp).sum() / n) if n else float("nan")
