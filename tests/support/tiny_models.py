"""Tiny random but real checkpoints, written to disk in well under a second, for tests that need a model."""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from app.core.config import get_settings

TinyPooling = Literal["mean", "cls", "lasttoken"]

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = (
    "the a an and or of to in on for with is are was were be it this that we you they he she "
    "model models embed embedding vector vectors text texts query document search queue job jobs "
    "worker fast slow small large red green blue cat dog house river mountain city music book "
    "time day night year people water food language machine learning data"
).split()

HIDDEN_SIZE = 32


def tiny_bert_config(directory: Path, **extra: Any) -> BertConfig:
    """Write a WordPiece tokenizer into ``directory`` and return the config of a 2-layer BERT (hidden 32) for it."""
    vocab_file = _write_vocab(directory / "vocab.txt")
    BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True).save_pretrained(directory)
    return BertConfig(
        vocab_size=len(vocab_file.read_text().splitlines()),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        # Wider than BERT's 0.02 so the CLS state differs between texts and pooling modes give distinct vectors.
        initializer_range=0.2,
        **extra,
    )


def make_tiny_bert(
    directory: Path,
    pooling: TinyPooling | None = "mean",
    normalize: bool = True,
    *,
    max_seq_length: int = 64,
    seed: int = 0,
) -> Path:
    """Return ``directory`` holding a random 2-layer BertModel (hidden 32) as a sentence-transformers folder.

    ``pooling=None`` writes a plain Hugging Face folder (no modules.json, no pooling config).
    ``max_seq_length`` goes to sentence_bert_config.json; the model itself accepts 128 positions.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_bert_config(directory)
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(directory)
    if pooling is not None:
        _write_sentence_transformers_files(directory, pooling, normalize, max_seq_length)
    return directory


def _write_vocab(path: Path) -> Path:
    # Every lowercase letter and digit, alone and as a "##" continuation, so WordPiece never needs [UNK]
    # for plain ASCII words; whole words make realistic, shorter token sequences.
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    continuations = [f"##{c}" for c in string.ascii_lowercase + string.digits]
    vocab = list(dict.fromkeys([*_SPECIAL_TOKENS, *pieces, *continuations, *_WORDS]))
    path.write_text("\n".join(vocab) + "\n")
    return path


def _write_sentence_transformers_files(
    directory: Path, pooling: TinyPooling, normalize: bool, max_seq_length: int
) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": HIDDEN_SIZE,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_lasttoken": pooling == "lasttoken",
            },
            indent=2,
        )
    )
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )


def in_models_dir(name: str, make: Callable[..., Any] = make_tiny_bert, **options: Any) -> Path:
    """Return the folder ``name`` of the session's models dir, written first by ``make`` when it is missing."""
    models_dir = get_settings().models_dir
    assert models_dir is not None
    folder = models_dir / name
    if not folder.exists():
        make(folder, **options)
    return folder
