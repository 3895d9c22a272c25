"""A default read from the pydantic model that owns it, so parsers and other configs never restate one; and
the command line's true/false values."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def default_of(model: type[BaseModel], field: str) -> Any:
    """``model``'s default for ``field``; a field without one is a programming error (KeyError)."""
    info = model.model_fields[field]
    if info.is_required():
        raise KeyError(f"{model.__name__}.{field} has no default")
    return info.get_default(call_default_factory=True)


def flag(value: str) -> bool:
    """A command-line true/false value (argparse ``type``): ``1``, ``true`` or ``yes`` in any case is true."""
    return value.lower() in ("1", "true", "yes")
