"""LoRA adapter folders, served over one resident copy of their base model.

A fine-tuned LoRA alias is a sentence-transformers folder (tokenizer, pooling, modules.json) whose weights are
only a peft adapter. peft records the base as the absolute path it was trained from, which breaks as soon as
the models volume is mounted elsewhere or the base comes from another package version, so embedq writes its
own pointer, ``embedq_adapter.json``, naming the base by model name; the resolver finds that base wherever
this host keeps it.

A worker keeps one ``SharedBase`` per base model folder (and dtype and device): the base's weights, loaded
once, with every adapter loaded over them attached by name (transformers' ``load_adapter``, backed by peft).
Each Encoder runs a ``ModelView`` of it that selects its adapter, or none for the base itself, for each
forward pass under the shared base's lock, so the base and any number of its adapters cost one base in
memory plus the small adapter matrices. An adapter costs a little compute per pass (unmerged low-rank
products). Loads that cannot share weights (int8 dynamic quantization, bitsandbytes, ONNX export) merge the
adapter into a private copy of the base instead, as fast as the base itself.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import threading
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from app.catalog.files import ADAPTER_POINTER
from app.catalog.resolver import ResolvedModel, folder_revision, resolve_model
from app.core.config import get_settings

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class AdapterBaseError(RuntimeError):
    """An adapter folder whose base model cannot be found or is itself an adapter."""


def write_pointer(folder: Path, base_model: str) -> None:
    """Record in adapter folder ``folder`` that its base is the model named ``base_model``."""
    (folder / ADAPTER_POINTER).write_text(json.dumps({"base_model": base_model, "kind": "lora"}, indent=2) + "\n")


def base_model_of(folder: Path | None) -> str | None:
    """Return the base model name an adapter folder points at, or None for an ordinary model folder."""
    if folder is None or not (folder / ADAPTER_POINTER).is_file():
        return None
    pointer: dict[str, Any] = json.loads((folder / ADAPTER_POINTER).read_text())
    return str(pointer["base_model"])


def served_revision(model: ResolvedModel) -> str | None:
    """Return the revision of what serving ``model`` reads: its folder's, and for a LoRA folder its base's too.

    A LoRA alias over a fine-tuned full alias must be reloaded when that base is overwritten, though its own
    folder did not change.
    """
    base_name = base_model_of(model.path) if model.revision is not None else None
    if base_name is None:
        return model.revision
    try:
        base = resolve_model(base_name, get_settings())
    except (LookupError, ValueError):
        return model.revision  # loading says what is wrong with the base
    return f"{model.revision}+{base.revision}"


def load_transformer(
    model_dir: Path, transformer_dir: Path, dtype: torch.dtype, device: torch.device, *, shared: bool = True
) -> PreTrainedModel | ModelView:
    """Return the model an Encoder runs for a model folder, on ``device`` and in eval mode.

    With ``shared``, a view of this process's one copy of the base (``SharedBase``) with the folder's
    adapter attached if it is a LoRA folder; without, the folder's own weights, or its base's with its
    adapter merged in, for a caller that transforms the module (quantization, export).
    """
    base_name = base_model_of(model_dir)
    if base_name is None:
        if shared:
            return ModelView(shared_base(transformer_dir, dtype, device), adapter=None)
        return AutoModel.from_pretrained(transformer_dir, dtype=dtype, local_files_only=True).to(device).eval()
    base = _adapter_base(model_dir, base_name)
    assert base.path is not None
    if not shared:
        return _merged_adapter(model_dir, base, dtype).to(device).eval()
    sharing = shared_base(_hf_folder(base.path), dtype, device)
    view = ModelView(sharing, adapter=sharing.attach(model_dir))
    logger.info("attached LoRA adapter %s to the resident base %s (%s)", model_dir, base_name, base.path)
    return view


class SharedBase:
    """One base model's weights on one device, run bare or with one of its attached LoRA adapters selected."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._adapters: set[str] = set()
        self._selected: str | None = None
        self._names = itertools.count(1)
        # Adapters whose view is gone, detached at the next use under the lock: a view may be collected in
        # any thread, even one inside ``run``, where taking the lock again would deadlock.
        self._retired: collections.deque[str] = collections.deque()

    def attach(self, adapter_dir: Path) -> str:
        """Load the adapter in ``adapter_dir`` over the base; return the name a view selects it by."""
        # A name of our own: aliases may hold '.', which module names may not.
        name = f"embedq_{next(self._names)}"
        with self._lock, warnings.catch_warnings():
            self._detach_retired()
            # peft warns that a model holding an adapter gets another: holding several is the point here.
            warnings.filterwarnings("ignore", message=".*multiple adapters", category=UserWarning)
            self.model.load_adapter(str(adapter_dir), adapter_name=name, hotswap=False)
            self._adapters.add(name)
            self._select(None, force=True)
        return name

    def retire(self, name: str) -> None:
        """Mark an adapter for removal (its view is gone); it is detached at the base's next use."""
        self._retired.append(name)

    def adapters(self) -> list[str]:
        """Return the names of the attached adapters."""
        with self._lock:
            self._detach_retired()
            return sorted(self._adapters)

    def run(self, adapter: str | None, inputs: dict[str, torch.Tensor]) -> Any:
        """Return the base's output for ``inputs`` with ``adapter`` (None: no adapter) in effect."""
        return self.apply(adapter, lambda model: model(**inputs))

    def apply(self, adapter: str | None, run: Callable[[PreTrainedModel], _T]) -> _T:
        """Return ``run(model)`` for the base model with ``adapter`` (None: no adapter) in effect."""
        with self._lock:
            self._detach_retired()
            self._select(adapter)
            return run(self.model)

    def _detach_retired(self) -> None:
        while self._retired:
            name = self._retired.popleft()
            if name not in self._adapters:
                continue
            with warnings.catch_warnings():
                # peft warns when the adapter it deletes was the active one, and activates another.
                warnings.filterwarnings("ignore", message=".*now deleted", category=UserWarning)
                self.model.delete_adapter(name)
            self._adapters.discard(name)
            self._select(None, force=True)
            logger.info("detached LoRA adapter %s", name)

    def _select(self, adapter: str | None, *, force: bool = False) -> None:
        if not self._adapters or (adapter == self._selected and not force):
            self._selected = adapter
            return
        if adapter is None:
            self.model.disable_adapters()
        else:
            self.model.enable_adapters()
            self.model.set_adapter(adapter)
        self._selected = adapter


class ModelView:
    """The model an Encoder calls: a shared base, run with this view's adapter (or none) selected.

    Quacks like the Hugging Face model where an Encoder uses it (call, ``config``, ``to``, ``eval``). The
    adapter is detached from the base once the view is garbage-collected, i.e. once its Encoder was unloaded
    and no request still holds it.
    """

    def __init__(self, base: SharedBase, adapter: str | None) -> None:
        self.base = base
        self.adapter = adapter
        self.config: PretrainedConfig = base.model.config
        if adapter is not None:
            weakref.finalize(self, base.retire, adapter)

    def __call__(self, **inputs: torch.Tensor) -> Any:
        return self.base.run(self.adapter, inputs)

    def apply(self, run: Callable[[PreTrainedModel], _T]) -> _T:
        """Return ``run(model)`` for the shared base model with this view's adapter (or none) in effect."""
        return self.base.apply(self.adapter, run)

    def to(self, device: torch.device) -> ModelView:
        """Return self: the shared base was put on its device when it was loaded."""
        return self

    def eval(self) -> ModelView:
        """Return self: the shared base is always in eval mode."""
        return self


_bases: weakref.WeakValueDictionary[tuple[str, str | None, str, str], SharedBase] = weakref.WeakValueDictionary()
_bases_lock = threading.Lock()


def shared_base(hf_folder: Path, dtype: torch.dtype, device: torch.device) -> SharedBase:
    """Return this process's SharedBase for the model in ``hf_folder``, loading it if no view holds it yet.

    Keyed by the folder's revision too, so a base replaced on disk is loaded afresh, never mixed with the old.
    """
    key = (str(hf_folder.resolve()), folder_revision(hf_folder), str(dtype), str(device))
    with _bases_lock:
        base = _bases.get(key)
        if base is None:
            model = AutoModel.from_pretrained(hf_folder, dtype=dtype, local_files_only=True)
            base = SharedBase(model.to(device).eval())
            _bases[key] = base
        return base


def _adapter_base(adapter_dir: Path, base_name: str) -> ResolvedModel:
    try:
        base = resolve_model(base_name, get_settings())
    except (LookupError, ValueError) as exc:
        raise AdapterBaseError(
            f"the LoRA adapter {adapter_dir} needs its base model {base_name!r}, which this host cannot load "
            f"({exc}): make {base_name!r} available (EMBEDQ_MODELS_DIR or the Hugging Face cache)"
        ) from exc
    if base.path is None:
        raise AdapterBaseError(
            f"the LoRA adapter {adapter_dir} needs its base model {base_name!r} on disk: pull it first"
        )
    if base_model_of(base.path) is not None:
        raise AdapterBaseError(f"{adapter_dir}'s base {base_name!r} is itself an adapter; embedq stacks none")
    return base


def _merged_adapter(adapter_dir: Path, base: ResolvedModel, dtype: torch.dtype) -> PreTrainedModel:
    from peft import PeftModel

    assert base.path is not None
    model = AutoModel.from_pretrained(_hf_folder(base.path), dtype=dtype, local_files_only=True)
    # Merged once at load, the adapter costs nothing per request: the model runs like its base.
    merged = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).merge_and_unload()
    logger.info("merged LoRA adapter %s into a private copy of base %s (%s)", adapter_dir, base.name, base.path)
    return merged


def _hf_folder(model_dir: Path) -> Path:
    # A sentence-transformers folder may keep the Hugging Face model in a subfolder (0_Transformer).
    modules_file = model_dir / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    for module in modules:
        if str(module.get("type", "")).endswith(".Transformer"):
            return model_dir / str(module.get("path", ""))
    return model_dir
