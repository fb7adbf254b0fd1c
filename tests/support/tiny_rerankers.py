"""Tiny random cross-encoders (one-label sequence classifiers), BERT and XLM-R, written as reranker folders are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from transformers import BertForSequenceClassification, XLMRobertaForSequenceClassification

from support.tiny_m3 import tiny_xlmr_config
from support.tiny_models import tiny_bert_config

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
        BertForSequenceClassification(tiny_bert_config(directory, num_labels=1)).eval().save_pretrained(directory)
    else:
        XLMRobertaForSequenceClassification(tiny_xlmr_config(directory, num_labels=1)).eval().save_pretrained(directory)
    if sentence_transformers:
        st_config = {"model_type": "CrossEncoder", "activation_fn": "torch.nn.modules.activation.Sigmoid"}
        (directory / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    return directory
