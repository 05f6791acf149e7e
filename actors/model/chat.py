"""Chat rendering for any tokenizer's template: prompts, and SFT token ids with the assistant-token mask.

Templates that render `tools` themselves (ours, Qwen2.5, Hermes-style) get tools and tool calls natively;
for the others (SmolLM2's ChatML, Llama-3-style templates without tool support) `actors.tooltask.fold_tools`
rewrites the messages first (tools into the system turn, calls and results as text), so every stage renders
the same conversation the same way through `render_chat`.

The assistant mask needs no `{% generation %}` markers: each assistant turn's characters are the part that
rendering messages[:i+1] adds to rendering messages[:i] with the generation prompt (its content and the
template's end-of-turn marker, e.g. `...<|im_end|>`; the newline a template writes after it is left out, as
the model never generates it); the text is tokenized span by span and the spans' tokens are trained.
"""
from __future__ import annotations

from pathlib import Path

from actors.tooltask import fold_tools, template_supports_tools

_TEMPLATE_DIR = Path(__file__).parent / "templates"
# Chat templates by name, as Jinja files in the repo (applied with any tokenizer): ours (ChatML + tool
# signatures), chatml (Qwen/SmolLM2), internlm2 (ChatML after the BOS), llama3 (header ids, <|eot_id|>).
TEMPLATES = tuple(sorted(p.stem for p in _TEMPLATE_DIR.glob("*.jinja")))


def named_template(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}: choose one of {list(TEMPLATES)} or '' for the "
                         "tokenizer's own")
    return (_TEMPLATE_DIR / f"{name}.jinja").read_text()


def use_template(tok, name: str):
    """`tok` rendering with the named template ('' keeps the tokenizer's own); returns tok."""
    if name:
        tok.chat_template = named_template(name)
    return tok


class ChatTemplateError(ValueError):
    """The chat template cannot render these messages, or renders earlier turns differently later on."""


def template_messages(tok, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[dict], list | None]:
    """(messages, tools) in the form `tok.chat_template` takes them."""
    if template_supports_tools(tok.chat_template):
        msgs = [{**m, "content": m.get("content") or ""} for m in messages]
        return msgs, (tools or None)
    return fold_tools(messages, tools), None


def _apply(tok, messages: list[dict], tools, add_generation_prompt: bool) -> str:
    try:
        return tok.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                       tokenize=False)
    except Exception as e:  # jinja errors: name the template, not a traceback from deep inside
        raise ChatTemplateError(f"the chat template cannot render these messages: {type(e).__name__}: {e}") from None


def render_chat(tok, messages: list[dict], tools: list[dict] | None = None,
                add_generation_prompt: bool = True) -> str:
    """The conversation as text, through the tokenizer's chat template (tools folded in when it has none)."""
    msgs, tl = template_messages(tok, messages, tools)
    return _apply(tok, msgs, tl, add_generation_prompt)


def encode_chat(tok, messages: list[dict], tools: list[dict] | None = None,
                add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `render_chat` (the template writes any BOS itself, so none is added)."""
    return list(tok(render_chat(tok, messages, tools, add_generation_prompt), add_special_tokens=False)["input_ids"])


def assistant_spans(tok, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation's text and the character span [start, end) of every assistant turn (an empty
    turn gets an empty span, so spans stay aligned with the assistant turns)."""
    msgs, tl = template_messages(tok, messages, tools)
    full = _apply(tok, msgs, tl, False)
    spans = []
    for i, m in enumerate(msgs):
        if m.get("role") != "assistant":
            continue
        before = _apply(tok, msgs[:i], tl, True)
        after = _apply(tok, msgs[: i + 1], tl, False)
        if not (after.startswith(before) and full.startswith(after)):
            raise ChatTemplateError(
                f"the chat template renders turn {i} differently once later turns follow (it is not prefix-"
                "stable, e.g. it drops earlier reasoning), so assistant tokens cannot be located; fine-tune "
                "with a template that renders earlier turns verbatim (finetune.template: one of "
                "actors/model/templates)")
        end = len(after.rstrip())
        spans.append((len(before), max(end, len(before))))
    return full, spans


def chat_ids_and_mask(tok, messages: list[dict], tools: list[dict] | None = None, train: list[bool] | None = None,
                      train_on_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and 1 for every token of an assistant turn (SFT loss mask).
    `train` picks the assistant turns trained, in order (default all; e.g. OpenAI `loss: false` turns or only
    the last one); `train_on_prompt` trains every token (the prompts and the template's markup too).

    The text is tokenized piece by piece at the turn boundaries (as LLaMA-Factory encodes prompt and response
    separately): the prompt before the first assistant turn is then exactly the tokens the model is given at
    inference, and each assistant turn exactly the tokens it would generate. Tokenizing the whole text at once
    can merge across a boundary (Llama-3's `\n\n` + content), training on a prompt the model never sees."""
    full, spans = assistant_spans(tok, messages, tools)
    if train is None:
        train = [True] * len(spans)
    if len(train) != len(spans):
        raise ValueError(f"train flags for {len(train)} assistant turns, the conversation has {len(spans)}")
    # cut at every assistant turn whether trained or not: the ids do not depend on the loss options
    pieces = [(0, spans[0][0] if spans else len(full), False)]
    for i, ((a, b), t) in enumerate(zip(spans, train)):
        nxt = spans[i + 1][0] if i + 1 < len(spans) else len(full)
        pieces += [(a, b, t), (b, nxt, False)]
    ids: list[int] = []
    mask: list[int] = []
    for a, b, trained in pieces:
        if b <= a:
            continue
        piece = list(tok(full[a:b], add_special_tokens=False)["input_ids"])
        ids += piece
        mask += [1 if train_on_prompt or trained else 0] * len(piece)
    return ids, mask
