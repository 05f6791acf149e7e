"""The byte-level BPE tokenizer trained on EN+ZH text: exact round trips, HF loading, chat template, SFT mask."""
from __future__ import annotations

import gzip
import json

import pytest

from actors.data.synthetic import TOOLS, make_expression, make_record
from actors.data.transforms import load_fast_tokenizer
from actors.model.tokenizer import EOS, IM_END, TOOL_CALL_OPEN, load_tokenizer, train_tokenizer

SAMPLES = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "子曰：“学而时习之，不亦说乎？有朋自远方来，不亦乐乎？”",
    "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。",
    "Mixed 中英文 text: GPT-4 costs $0.03/1k tokens（约 0.2 元）！",
    "Digits 1234567890 and 3.14159, 12 * (3 + 4) = 84; -7",
    "  leading spaces,\ttabs\nand\r\nwindows newlines  ",
    "emoji 🙂 and accents: café, naïve, Ångström",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, data_root):
    en = (data_root / "tinyshakespeare" / "input.txt").read_text()[:300_000].split("\n\n")
    with gzip.open(data_root / "zh_classical" / "zh_classical.jsonl.gz", "rt") as f:
        zh = [json.loads(line)["text"] for _, line in zip(range(1500), f)]
    return train_tokenizer(en + zh, vocab_size=1024, out_dir=tmp_path_factory.mktemp("tok"))


def test_round_trip_exact_en_zh_mixed_digits(tok_dir):
    tok = load_tokenizer(tok_dir)
    for s in SAMPLES:
        ids = tok.encode(s, add_special_tokens=False)
        assert tok.decode(ids) == s, s
    # digits are split one by one: every digit is its own token
    ids = tok.encode("2024", add_special_tokens=False)
    assert [tok.decode([i]) for i in ids] == ["2", "0", "2", "4"]
    # Chinese got merges of its own: fewer tokens than UTF-8 bytes
    zh = SAMPLES[1]
    assert len(tok.encode(zh, add_special_tokens=False)) < len(zh.encode("utf-8"))


def test_fast_tokenizer_matches_hf_tokenizer(tok_dir):
    """The data stage tokenizes with the raw `tokenizers.Tokenizer`; ids must equal load_tokenizer's."""
    hf, raw = load_tokenizer(tok_dir), load_fast_tokenizer(tok_dir)
    for s in SAMPLES + [f"{EOS} after eos {IM_END}"]:
        assert raw.encode(s, add_special_tokens=False).ids == hf.encode(s, add_special_tokens=False)


def test_auto_tokenizer_loads_with_specials(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert tok.eos_token == EOS and tok.pad_token == EOS
    assert len(tok) == 1024
    # special tokens are single ids and never split
    for t in (EOS, IM_END, TOOL_CALL_OPEN):
        assert len(tok.encode(t, add_special_tokens=False)) == 1


def _runs(ids, mask, value):
    """Contiguous runs of ids whose mask equals value."""
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m == value:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def test_chat_template_tool_call_and_assistant_mask(tok_dir):
    import random

    tok = load_tokenizer(tok_dir)
    rng = random.Random(0)
    expr, value = make_expression(rng)
    rec = make_record(rng, 0, "train", expr, value)
    msgs = rec["messages"]
    text = tok.apply_chat_template(msgs, tools=TOOLS, tokenize=False)
    call = f'<tool_call>{{"name": "calculator", "arguments": {json.dumps({"expression": expr})}}}</tool_call>'
    assert call in text
    assert "# Tools" in text and "calculator(expression: string) - " in text  # tools as signatures

    out = tok.apply_chat_template(msgs, tools=TOOLS, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask) and 0 < sum(mask) < len(ids)
    assert tok.decode(ids) == text                       # tokenization of the rendered chat is lossless
    # the mask covers exactly the two assistant turns (tool call, final answer), each ending in <|im_end|>
    masked = [tok.decode(r) for r in _runs(ids, mask, 1)]
    assert masked == [call + IM_END, msgs[3]["content"] + IM_END]
    unmasked = "".join(tok.decode(r) for r in _runs(ids, mask, 0))
    assert msgs[0]["content"] in unmasked                 # user turn: not trained on
    assert f"<|im_start|>tool\n{value}<|im_end|>" in unmasked   # tool result: not trained on
    assert TOOL_CALL_OPEN not in unmasked.split("<|im_start|>user")[-1]   # calls are all in the mask


CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 3"}}'


@pytest.mark.parametrize("text, content, n_calls, error", [
    ("Sure. " + CALL + "</tool_call>", "Sure.", 1, None),
    # left open right after complete JSON (the model stopped at <|im_end|>): vLLM's Hermes parser takes it
    (CALL, "", 1, None),
    (CALL + "</tool_call>\n" + CALL.replace("2 + 3", "4 * 5"), "", 2, None),
    # cut off mid-JSON (out of tokens): an error naming why, no call
    (CALL[:-5], "", 0, "unterminated tool call: tool call is not valid JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', "", 0, "tool call has no string 'name'"),
    ('<tool_call>{"name": "f", "arguments": "[1]"}</tool_call>', "", 0, "arguments must be an object"),
])
def test_parse_tool_calls(text, content, n_calls, error):
    from actors.tooltask import parse_tool_calls

    got_content, calls, errors = parse_tool_calls(text)
    assert got_content == content and len(calls) == n_calls
    assert all(c["name"] == "calculator" and "expression" in c["arguments"] for c in calls)
    assert (errors == []) if error is None else (len(errors) == 1 and error in errors[0])
