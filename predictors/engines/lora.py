"""LoRA adapters beside the base model, with ``peft``: loaded at start or at run time, chosen per row.

A row names its adapter (or none, the base model); one ``generate`` call serves rows of different
adapters through peft's mixed-batch forward (``adapter_names=``, ``"__base__"`` for the base), so
adapters never split a batch and none waits for another's turn. Adapters are read from peft's own
layout (``adapter_config.json`` + ``adapter_model.safetensors``); QLoRA-trained adapters load the
same way onto the unquantized base. Only safetensors: a pickle (``adapter_model.bin``) could run code.

Loading and unloading change the model's modules, so they run on the model thread, between batches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.errors import InvalidInput, NotFound

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class AdapterNotFound(NotFound):
    def __init__(self, name: str, loaded: Sequence[str]) -> None:
        super().__init__(f"adapter {name!r} is not loaded; loaded adapters: {', '.join(loaded) or 'none'}")
        self.name = name


def check_adapter_dir(path: Path, field: str = "path") -> None:
    """Refuse a directory that is not a peft LoRA adapter, naming what is wrong (before any weights are read)."""
    if not path.is_dir():
        raise InvalidInput(field, f"{path} is not a directory")
    config_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_file.is_file():
        raise InvalidInput(field, f"{path} has no {CONFIG_FILE} (a directory as peft's save_pretrained writes it)")
    if not weights.is_file():
        raise InvalidInput(field, f"{path} has no {WEIGHTS_FILE} (only safetensors adapters are loaded)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InvalidInput(field, f"{config_file} is not readable JSON: {err}") from err
    if not isinstance(config, dict):
        raise InvalidInput(field, f"{config_file} is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise InvalidInput(field, f"{config_file}: peft_type is {config.get('peft_type')!r}, not 'LORA'")
    if not config.get("target_modules") and not config.get("target_parameters"):
        raise InvalidInput(field, f"{config_file}: target_modules is empty")


class LoraAdapters:
    """The adapters of one base model. With the first adapter a ``PeftModel`` wraps the base model (its
    layers gain LoRA branches in place); while no adapter is loaded, batches run on the base model itself,
    since peft's ``generate`` needs an active adapter."""

    def __init__(self, model: Any) -> None:
        self._base = model
        self._peft: Any = None
        self._loaded: list[str] = []

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._loaded)

    @property
    def model(self) -> Any:
        """What runs a batch."""
        return self._peft if self._loaded else self._base

    def load(self, name: str, path: Path) -> None:
        """Blocking; on the model thread. A directory peft cannot apply to this model is ``InvalidInput``."""
        from peft import PeftModel

        if name in self._loaded:
            raise InvalidInput("model_name", f"adapter {name!r} is already loaded; unload it first")
        check_adapter_dir(path)
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._base, str(path), adapter_name=name, is_trainable=False)
            else:
                self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
                # Rows pick their adapter (``adapter_names``), but peft runs hooks only with an active one.
                self._peft.set_adapter(name, inference_mode=True)
        except Exception as err:  # peft raises ValueError, KeyError, RuntimeError (shapes) alike
            self._forget(name)
            raise InvalidInput("path", f"cannot apply the adapter in {path} to this model: "
                                       f"{type(err).__name__}: {err}") from err
        self._peft.eval()
        self._loaded.append(name)

    def unload(self, name: str) -> None:
        """Blocking; on the model thread."""
        if name not in self._loaded:
            raise AdapterNotFound(name, self.names)
        self._loaded.remove(name)
        self._forget(name)

    def _forget(self, name: str) -> None:
        """Take ``name``'s weights out of the model, also after a load that failed half-way (a first
        ``from_pretrained`` that failed leaves its LoRA branches in the base model's layers)."""
        from peft.tuners.lora import LoraLayer

        if self._peft is not None and name in self._peft.peft_config:
            self._peft.delete_adapter(name)
        for module in self._base.modules():
            if isinstance(module, LoraLayer) and name in module.lora_A:
                module.delete_adapter(name)
        if self._peft is None and "peft_config" in vars(self._base):
            del self._base.peft_config  # left by the failed first load; the next would take it for a second adapter

    def row_names(self, adapters: Sequence[str | None]) -> list[str] | None:
        """peft's ``adapter_names`` for rows naming ``adapters`` (None: the base model); None without adapters."""
        if not self._loaded:
            return None
        return [BASE if a is None else a for a in adapters]
