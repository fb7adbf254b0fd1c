"""Which model family a model belongs to, and the rules that family brings: prompts, pooling, length, heads.

Decided from an explicit override, then the model folder's own files, then the model's name. Pure Python
(no torch): the API reports families in ``GET /v1/models`` and the worker applies them in the encoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

from app.catalog.files import read_json

FamilyName = Literal["e5", "bge", "bge-m3", "gte", "sentence-transformers", "generic"]
FAMILY_NAMES: tuple[str, ...] = get_args(FamilyName)

PoolingName = Literal["mean", "cls", "lasttoken"]

# FlagEmbedding's retrieval instructions for BGE v1.5 queries (passages get none).
BGE_EN_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
BGE_ZH_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："

# BGE-M3's extra heads, saved next to the XLM-R weights by FlagEmbedding.
M3_SPARSE_HEAD = "sparse_linear.pt"
M3_COLBERT_HEAD = "colbert_linear.pt"

# config_sentence_transformers.json prompt keys, in the order sentence-transformers' encode_document tries them.
_DOCUMENT_PROMPT_KEYS = ("document", "passage", "corpus")

_E5_NAME = re.compile(r"(^|[/_-])e5([_-]|$)")
_BGE_V15_NAME = re.compile(r"bge-(small|base|large)-(en|zh)-v1\.5")
_GTE_NAME = re.compile(r"(^|[/_-])gte([_-]|$)")


class UnknownFamilyError(ValueError):
    """A family override that names no family embedq knows."""

    def __init__(self, family: str) -> None:
        super().__init__(f"unknown model family {family!r}: use one of {', '.join(FAMILY_NAMES)}")


@dataclass(frozen=True)
class Family:
    """A family's rules. ``None`` means "no opinion": the folder's own config (or the runtime default) decides."""

    name: FamilyName
    query_prompt: str | None = None
    document_prompt: str | None = None
    default_prompt: str | None = None
    pooling: PoolingName | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    hybrid: bool = False
    reason: str = ""

    def prompt_for(self, is_query: bool | None) -> str | None:
        """Return the text to put before each input: the query or document prompt, else the default prompt."""
        if is_query is True and self.query_prompt:
            return self.query_prompt
        if is_query is False and self.document_prompt:
            return self.document_prompt
        return self.default_prompt or None

    def apply_prompt(self, texts: list[str], is_query: bool | None) -> list[str]:
        """Return ``texts`` with this family's prompt for ``is_query`` in front; unchanged when there is none."""
        prompt = self.prompt_for(is_query)
        return [prompt + text for text in texts] if prompt else texts


_FAMILY_DEFAULTS: dict[str, Family] = {
    "e5": Family(
        "e5", query_prompt="query: ", document_prompt="passage: ", pooling="mean", normalize=True, max_seq_length=512
    ),
    "bge": Family("bge", query_prompt=BGE_EN_QUERY_INSTRUCTION, pooling="cls", normalize=True, max_seq_length=512),
    "bge-m3": Family("bge-m3", pooling="cls", normalize=True, max_seq_length=8192, hybrid=True),
    "gte": Family("gte", normalize=True, max_seq_length=512),
    "sentence-transformers": Family("sentence-transformers"),
    "generic": Family("generic"),
}


def detect_family(name: str, folder: Path | None = None, override: str | None = None) -> Family:
    """Return the family of model ``name`` (folder ``folder``): ``override`` if given, else the folder, else the name.

    A folder's ``config_sentence_transformers.json`` prompts replace the family's, since the folder is the
    more specific source; a folder without pooling config takes the family's pooling.
    """
    family = _family_by_override(override) or _family_by_folder(folder) or _family_by_name(name)
    if family is None:
        is_st = folder is not None and (folder / "modules.json").is_file()
        family = replace(
            _FAMILY_DEFAULTS["sentence-transformers" if is_st else "generic"],
            reason="a sentence-transformers folder" if is_st else "no family rule matched",
        )
    if family.name == "bge" and "-zh" in name.lower():
        family = replace(family, query_prompt=BGE_ZH_QUERY_INSTRUCTION)
    return _with_folder_prompts(family, folder)


def _family_by_override(override: str | None) -> Family | None:
    if override is None:
        return None
    key = override.strip().lower()
    if key not in _FAMILY_DEFAULTS:
        raise UnknownFamilyError(override)
    return replace(_FAMILY_DEFAULTS[key], reason="set explicitly")


def _family_by_folder(folder: Path | None) -> Family | None:
    if folder is None:
        return None
    if has_m3_heads(folder):
        return replace(_FAMILY_DEFAULTS["bge-m3"], reason=f"the folder has {M3_SPARSE_HEAD} and {M3_COLBERT_HEAD}")
    return None


def _family_by_name(name: str) -> Family | None:
    lowered = name.lower()
    if "bge-m3" in lowered:
        key, why = "bge-m3", "the name says bge-m3"
    elif _BGE_V15_NAME.search(lowered):
        key, why = "bge", "the name says bge v1.5"
    elif _E5_NAME.search(lowered):
        key, why = "e5", "the name says e5"
    elif _GTE_NAME.search(lowered):
        key, why = "gte", "the name says gte"
    else:
        return None
    return replace(_FAMILY_DEFAULTS[key], reason=why)


def _with_folder_prompts(family: Family, folder: Path | None) -> Family:
    config = read_json(folder / "config_sentence_transformers.json") if folder is not None else None
    prompts = config.get("prompts") if isinstance(config, dict) else None
    if not isinstance(prompts, dict) or not prompts:
        return family
    prompts = {str(key): str(value) for key, value in prompts.items() if isinstance(value, str)}
    document = next((prompts[key] for key in _DOCUMENT_PROMPT_KEYS if key in prompts), None)
    default_name = config.get("default_prompt_name")
    return replace(
        family,
        query_prompt=prompts.get("query", family.query_prompt),
        document_prompt=document if document is not None else family.document_prompt,
        default_prompt=prompts.get(default_name) if isinstance(default_name, str) else family.default_prompt,
    )


def has_m3_heads(folder: Path | None) -> bool:
    """Return whether ``folder`` holds BGE-M3's sparse and ColBERT heads (True when not downloaded yet).

    A BGE-M3 repository on a hub carries its heads, so a model with no folder is taken to have them.
    """
    return folder is None or ((folder / M3_SPARSE_HEAD).is_file() and (folder / M3_COLBERT_HEAD).is_file())
