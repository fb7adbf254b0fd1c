"""Token-id inputs: ids of the model's own vocabulary, embedded as the text they came from would be.

Like OpenAI's token arrays, the ids carry no special tokens: the model's own ([CLS] ... [SEP], <s> ... </s>)
are put around them, and ids past the model's limit are cut, as text is. No prompt is put in front.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.inference.ops import OpError

if TYPE_CHECKING:
    from workers.runtime.encoder import Encoder, Tokens

_PROBE = "hello world"


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Return the special token ids the tokenizer puts before and after one sequence's own ids."""
    full = list(tokenizer(_PROBE)["input_ids"])
    bare = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


def content_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Return each text's token ids without special tokens and without truncation."""
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
    return [list(ids) for ids in encoded["input_ids"]]


def check_ids(tokenizer: Any, ids_lists: list[list[int]]) -> None:
    """Raise an OpError naming the first input that holds an id outside the model's vocabulary."""
    vocabulary = len(tokenizer)
    for i, ids in enumerate(ids_lists):
        bad = next((t for t in ids if not 0 <= t < vocabulary), None)
        if bad is not None:
            raise OpError(
                f"input[{i}] holds token id {bad}, outside this model's vocabulary of {vocabulary} ids: "
                "send ids from POST /tokenize with the same model",
                param="input",
                code="invalid_token_id",
            )


def id_inputs(encoder: Encoder, ids_lists: list[list[int]]) -> Tokens:
    """Return model inputs for ``ids_lists``: special tokens around each, cut to the model's limit."""
    prefix, suffix = special_affixes(encoder.tokenizer)
    room = max(0, encoder.max_seq_length - len(prefix) - len(suffix))
    sequences = [prefix + list(ids[:room]) + suffix for ids in ids_lists]
    tokens: Tokens = {"input_ids": sequences, "attention_mask": [[1] * len(s) for s in sequences]}
    if "token_type_ids" in encoder.tokenizer.model_input_names:
        tokens["token_type_ids"] = [[0] * len(s) for s in sequences]
    return tokens
