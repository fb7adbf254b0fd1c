"""Tiny random cross-encoders (one-label sequence classifiers), BERT and XLM-R, written as reranker folders are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from support.tiny_m3 import MAX_TOKENS, _tokenizer
from support.tiny_models import HIDDEN_SIZE, _write_vocab

RerankerKind = Literal["bert", "xlm-roberta"]


def make_tiny_reranker(
    directory: Path, kind: RerankerKind = "bert", *, seed: int = 0, sentence_transformers: bool = False
) -> Path:
    """Return ``directory`` holding a random 2-layer ``*ForSequenceClassification`` (hidden 32, one label).

    ``kind`` "bert" is laid out as cross-encoder/ms-marco-MiniLM is (a WordPiece tokenizer, token type ids),
    "xlm-roberta" as BAAI/bge-reranker-base is (a sentencepiece-style tokenizer, no token types).
    ``sentence_transformers`` adds the config_sentence_transformers.json a CrossEncoder saves.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if kind == "bert":
        vocab_file = _write_vocab(directory / "vocab.txt")
        BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True).save_pretrained(directory)
        config = BertConfig(
            vocab_size=len(vocab_file.read_text().splitlines()),
            hidden_size=HIDDEN_SIZE,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            initializer_range=0.2,
            num_labels=1,
        )
        BertForSequenceClassification(config).eval().save_pretrained(directory)
    else:
        tokenizer = _tokenizer()
        tokenizer.save_pretrained(directory)
        config = XLMRobertaConfig(
            vocab_size=len(tokenizer),
            hidden_size=HIDDEN_SIZE,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=MAX_TOKENS + 2,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            initializer_range=0.2,
            num_labels=1,
        )
        XLMRobertaForSequenceClassification(config).eval().save_pretrained(directory)
    if sentence_transformers:
        st_config = {"model_type": "CrossEncoder", "activation_fn": "torch.nn.modules.activation.Sigmoid"}
        (directory / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    return directory
