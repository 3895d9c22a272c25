"""Errors of running a model; the rest are the kernel's (``serving.errors``)."""

from __future__ import annotations

from serving.errors import ServingError


class ModelLoadError(ServingError, RuntimeError):
    """The model could not be loaded; the server reports not-ready and exits."""
