"""A tiny random XLM-R with BGE-M3's sparse and ColBERT heads, written as BAAI/bge-m3's folder is laid out."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

HIDDEN_SIZE = 32
MAX_TOKENS = 128

_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
_WORDS = (
    "the a of and to in is for on with search query document vector sparse dense colbert model models "
    "embedding embeddings text hybrid rerank late interaction score token tokens city river music cat dog "
    "machine learning data fast small red blue green"
).split()


def tiny_xlmr_config(directory: Path, **extra: object) -> XLMRobertaConfig:
    """Write a sentencepiece-style tokenizer into ``directory`` and return a 2-layer XLM-R config (hidden 32)."""
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(directory)
    return XLMRobertaConfig(
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
        **extra,
    )


def make_tiny_m3(directory: Path, *, seed: int = 0, sentence_transformers: bool = True) -> Path:
    """Return ``directory`` holding a 2-layer XLM-R (hidden 32) plus ``sparse_linear.pt`` and ``colbert_linear.pt``.

    ``sentence_transformers`` adds modules.json with CLS pooling and Normalize, as BAAI/bge-m3 has.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_xlmr_config(directory)
    torch.manual_seed(seed)
    XLMRobertaModel(config).eval().save_pretrained(directory)
    sparse, colbert = torch.nn.Linear(HIDDEN_SIZE, 1), torch.nn.Linear(HIDDEN_SIZE, HIDDEN_SIZE)
    with torch.no_grad():
        # Random heads score every token of this model below zero; a positive bias gives the mix of kept
        # and ReLU-dropped tokens that a trained sparse head has.
        sparse.bias.fill_(1.0)
    torch.save(sparse.state_dict(), directory / "sparse_linear.pt")
    torch.save(colbert.state_dict(), directory / "colbert_linear.pt")
    if sentence_transformers:
        _write_sentence_transformers_files(directory)
    return directory


def _tokenizer() -> XLMRobertaTokenizerFast:
    # A unigram vocabulary of whole words (with the sentencepiece word marker) and single characters, so any
    # ASCII text tokenizes without <unk> and repeated words repeat token ids, as they do in real text.
    pieces = [f"▁{word}" for word in _WORDS] + ["▁"] + list(string.ascii_lowercase + string.digits + ".,;!?'")
    vocab = [(token, 0.0) for token in _SPECIALS] + [(p, -1.0 if p.startswith("▁") else -5.0) for p in pieces]
    vocab.append(("<mask>", 0.0))
    backend = Tokenizer(models.Unigram(vocab, unk_id=3))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=MAX_TOKENS,
    )


def _write_sentence_transformers_files(directory: Path) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": HIDDEN_SIZE, "pooling_mode_cls_token": True})
    )
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_TOKENS}))
