"""Forward passes without padding for BERT-style encoders (BERT, RoBERTa, XLM-R): the CPU's fast path.

A padded pass spends its matrix products on pad tokens: a sync pool of 72 realistic texts, cut into passes of
32 rows and 1,024 padded tokens, multiplies 1.39 tokens for every real one. Here every token of a pass is one
row of a [tokens, hidden] matrix, so the Linear layers (three quarters of the time) run once over real tokens
only, in products as large as the pass; only attention, which mixes tokens of one text, runs per group of
length-sorted texts padded to the group's longest (a few rows, so little padding). Measured on MiniLM bf16,
one thread of a 2-core EPYC, pools of 72 texts: 1.40x the padded passes, at cosine 0.99994 (min) to their
vectors (``bench/packed_passes.py``).

The layers' own modules run the projections, LayerNorms and activations, so LoRA adapters injected by peft,
int8 Linear layers and the model's own epsilon and activation work unchanged; only the self-attention
arithmetic (scaled dot product over the group's keys) is written here. ``supports_packed`` says which models
qualify; any other model runs the padded path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertModel, RobertaModel, XLMRobertaModel

_PACKED_CLASSES = (BertModel, RobertaModel, XLMRobertaModel)


def supports_packed(model: torch.nn.Module) -> bool:
    """Return whether ``model`` is an encoder this module runs: BERT, RoBERTa or XLM-R, self-attention only."""
    if not isinstance(model, _PACKED_CLASSES):
        return False
    config = model.config
    if config.is_decoder or getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    return all(not hasattr(layer, "crossattention") for layer in model.encoder.layer)


@dataclass(frozen=True)
class _Group:
    """Where one attention group's texts lie in a pass: a contiguous run of its token rows."""

    start: int  # first token row of the group in the pass
    end: int  # one past its last token row
    rows: int
    width: int
    # For a group of unequal lengths (None where all are equal: its rows are the padded layout already):
    gather: torch.Tensor | None  # [rows * width] token row per padded slot (pads point at the group's first row)
    real: torch.Tensor | None  # [end - start] the padded slot of each token row
    key_mask: torch.Tensor | None  # [rows, 1, 1, width] bool, True where a key may be attended to


def forward_packed(
    model: torch.nn.Module,
    tokens: dict[str, list[list[int]]],
    groups: Sequence[Sequence[int]],
    device: torch.device,
) -> list[torch.Tensor]:
    """Return the last hidden states of each group of ``tokens`` rows, padded [rows, width, hidden], pads zero.

    One packed pass over all the groups' texts; each group's texts attend among themselves (width: its longest).
    """
    order = [row for group in groups for row in group]
    lengths = [len(tokens["input_ids"][row]) for row in order]
    ids = _packed_ids(tokens["input_ids"], order, device)
    types = _packed_ids(tokens["token_type_ids"], order, device) if "token_type_ids" in tokens else None
    positions = _positions(lengths, _position_offset(model), device)
    layout = _layout(groups, lengths, device)
    with torch.inference_mode():
        hidden = model.embeddings(
            input_ids=ids[None], token_type_ids=None if types is None else types[None], position_ids=positions[None]
        )[0]
        heads = model.config.num_attention_heads
        for layer in model.encoder.layer:
            hidden = _layer(layer, hidden, layout, heads)
        return [_padded(hidden, group) for group in layout]


def _layer(layer: torch.nn.Module, hidden: torch.Tensor, layout: list[_Group], heads: int) -> torch.Tensor:
    attention = layer.attention
    context = _self_attention(attention.self, hidden, layout, heads)
    attended = attention.output(context, hidden)
    return layer.output(layer.intermediate(attended), attended)


def _self_attention(module: torch.nn.Module, hidden: torch.Tensor, layout: list[_Group], heads: int) -> torch.Tensor:
    # Each projection runs as its own module, so hooks (int8 calibration), LoRA and quantized layers see it.
    projections = (module.query(hidden), module.key(hidden), module.value(hidden))
    size = hidden.shape[-1]
    context = hidden.new_empty(hidden.shape)
    for group in layout:
        shape = (group.rows, group.width, heads, size // heads)
        q, k, v = (_slots(t, group).view(shape).transpose(1, 2) for t in projections)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=group.key_mask)
        out = out.transpose(1, 2).reshape(group.rows * group.width, size)
        context[group.start : group.end] = out if group.real is None else out.index_select(0, group.real)
    return context


def _slots(states: torch.Tensor, group: _Group) -> torch.Tensor:
    """Return ``group``'s token rows of ``states`` in its padded layout, [rows * width, hidden]."""
    if group.gather is None:
        return states[group.start : group.end]
    return states.index_select(0, group.gather)


def _padded(hidden: torch.Tensor, group: _Group) -> torch.Tensor:
    states = hidden[group.start : group.end]
    if group.real is None:
        return states.reshape(group.rows, group.width, -1)
    out = hidden.new_zeros(group.rows * group.width, hidden.shape[-1])
    out.index_copy_(0, group.real, states)
    return out.view(group.rows, group.width, -1)


def _layout(groups: Sequence[Sequence[int]], lengths: list[int], device: torch.device) -> list[_Group]:
    layout: list[_Group] = []
    start = 0
    at = 0
    for group in groups:
        sizes = np.asarray(lengths[at : at + len(group)], dtype=np.int64)
        at += len(group)
        width = int(sizes.max())
        end = start + int(sizes.sum())
        if int(sizes.min()) == width:
            layout.append(_Group(start, end, len(group), width, gather=None, real=None, key_mask=None))
        else:
            real = np.arange(width)[None, :] < sizes[:, None]
            offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
            gather = np.where(real, offsets[:, None] + np.arange(width)[None, :], 0) + start
            layout.append(
                _Group(
                    start,
                    end,
                    len(group),
                    width,
                    gather=torch.from_numpy(gather.reshape(-1)).to(device),
                    real=torch.from_numpy(np.flatnonzero(real)).to(device),
                    key_mask=torch.from_numpy(real[:, None, None, :]).to(device),
                )
            )
        start = end
    return layout


def _packed_ids(sequences: list[list[int]], order: list[int], device: torch.device) -> torch.Tensor:
    flat = np.fromiter((i for row in order for i in sequences[row]), dtype=np.int64)
    return torch.from_numpy(flat).to(device)


def _positions(lengths: list[int], offset: int, device: torch.device) -> torch.Tensor:
    flat = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]) + offset
    return torch.from_numpy(flat).to(device)


def _position_offset(model: torch.nn.Module) -> int:
    # RoBERTa-style embeddings number positions from padding_idx + 1 (their table reserves the rows below).
    padding_idx = getattr(model.embeddings, "padding_idx", None)
    return 0 if padding_idx is None else int(padding_idx) + 1
