"""API keys of the session's keyed servers (``keyed_embed_server``), for the authentication tests."""

from __future__ import annotations

KEYS = ("kz-test-key-alpha-0001", "kz-test-key-beta-0002")
KEY = KEYS[1]  # the second, so that a match is not only ever found first
WRONG = "kz-test-key-wrong-0003"


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
