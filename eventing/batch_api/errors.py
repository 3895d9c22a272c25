"""The batch API's refusals; ``app`` turns them into OpenAI-shaped HTTP errors, and only there."""

from __future__ import annotations

from serving.errors import InvalidInput


class FileTooLarge(InvalidInput):
    """An upload over ``--max_file_bytes`` (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__("file", f"larger than the limit of {limit} bytes")


class WrongState(InvalidInput):
    """An operation the batch's status does not allow, e.g. cancelling a completed batch (409)."""
