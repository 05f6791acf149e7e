"""Byte-level BPE tokenizer (trained with `tokenizers`) and the chat template with tool-call markup.

Saved as `tokenizer.json` + `tokenizer_config.json` (chat template inside) so `AutoTokenizer` loads it;
every stage loads it back as a `transformers.PreTrainedTokenizerFast` through `load_tokenizer()`.

Chat format (ChatML, as InternLM2/Qwen use it):
    <|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n
An assistant turn may hold tool calls, one per line:
    <tool_call>{"name": "calculator", "arguments": {"expression": "2 + 3"}}</tool_call>
and a tool result comes back as a `tool` turn. HF renders templates with trim_blocks, so a newline
right after a block tag is written as {{ '\\n' }}. Assistant content is wrapped in {% generation %} so
`apply_chat_template(..., return_assistant_tokens_mask=True)` yields the SFT loss mask.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from actors.tooltask import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

EOS = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOS, IM_START, IM_END, TOOL_CALL_OPEN, TOOL_CALL_CLOSE]

# Our chat template (ChatML with tools as one-line signatures, as InternLM2/Qwen use ChatML): kept as Jinja in
# actors/model/templates/ours.jinja with the other named templates (actors.model.chat.TEMPLATES).
CHAT_TEMPLATE = (Path(__file__).parent / "templates" / "ours.jinja").read_text()


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path, min_frequency: int = 2,
                    model_max_length: int = 1024) -> Path:
    """Train byte-level BPE on `texts`; digits are split one by one (as Llama-3/InternLM2 do)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    _unmark_tool_markers(out / "tokenizer.json")
    write_tokenizer_config(out, model_max_length)
    return out


def _unmark_tool_markers(path: Path) -> None:
    """Tool-call markers stay atomic added tokens but are not "special": tokenizer.json decides decoding,
    so decode(skip_special_tokens=True) keeps them and `actors.tooltask.parse_tool_calls` can find the calls."""
    data = json.loads(path.read_text())
    for t in data.get("added_tokens", []):
        if t["content"] in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE):
            t["special"] = False
    path.write_text(json.dumps(data, ensure_ascii=False))


def write_tokenizer_config(out: Path, model_max_length: int = 1024) -> None:
    added = {}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for t in SPECIAL_TOKENS:
        added[str(tok.token_to_id(t))] = {
            "content": t, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
            # tool-call markers are not "special": decode(skip_special_tokens=True) keeps them for parsing
            "special": t not in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE),
        }
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "extra_special_tokens": {"im_start_token": IM_START, "im_end_token": IM_END},
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    (out / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOS, "pad_token": EOS}, indent=2))


def load_tokenizer(path: str | Path):
    """Our tokenizer folder (or any HF tokenizer folder) as a PreTrainedTokenizerFast."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / "tokenizer.json").exists():
        raise FileNotFoundError(f"{p}: no tokenizer.json; run the data stage (it trains the tokenizer) "
                                "or point at a Hugging Face tokenizer folder")
    tok = AutoTokenizer.from_pretrained(str(p))
    if tok.chat_template is None:
        tok.chat_template = CHAT_TEMPLATE
    return tok


# End-of-turn tokens of common chat formats (ChatML, Llama-3, Phi-3, Gemma) besides the tokenizer's own EOS.
END_OF_TURN = (EOS, IM_END, "<|eot_id|>", "<|end|>", "<end_of_turn>")


def stop_token_ids(tok) -> list[int]:
    """Tokens that end an assistant turn: the tokenizer's EOS and any end-of-turn token its vocabulary has
    (looked up in the vocabulary: convert_tokens_to_ids would map an unknown name to the unk id)."""
    vocab = tok.get_vocab()
    ids = {vocab[t] for t in END_OF_TURN if t in vocab}
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    return sorted(ids)


def document_end_id(tok) -> int:
    """The token closing each pretraining document (a `tokenizers.Tokenizer`): ours is <|endoftext|>; a base
    model's tokenizer may name it otherwise."""
    for name in (EOS, "</s>", "<|end_of_text|>", "<eos>"):
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise ValueError("the tokenizer has no end-of-document token (<|endoftext|>, </s>, <|end_of_text|>, <eos>)")
