"""API keys of a kzero server: where they come from, and whether a presented key is one of them.

Keys come from ``KZERO_API_KEYS`` (comma-separated) or ``--api_keys_file`` (one per line, ``#``
comments, re-read at most once a second, so a rotated Kubernetes Secret takes effect without a
restart); with neither, authentication is off. ``serving.access`` enforces them at the edge.

A presented key is compared with every configured key through SHA-256 digests and
``hmac.compare_digest``, so neither which key matched nor a key's length shows in the timing.
Keys are never logged, and configs hold them as ``SecretStr``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr

from serving.errors import ServingError

log = logging.getLogger(__name__)

API_KEYS_ENV = "KZERO_API_KEYS"
PREDICTOR_API_KEY_ENV = "KZERO_PREDICTOR_API_KEY"
API_KEYS_FLAG = "--api_keys_file"


def add_api_keys_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(API_KEYS_FLAG, type=Path, help=f"API keys, one per line, re-read when it changes (or env "
                                                       f"{API_KEYS_ENV}; with neither, no authentication)")


class AuthConfigError(ServingError, ValueError):
    """Keys missing, empty or contradictory at start: the server refuses to start (exit 2)."""


class AuthConfig(BaseModel):
    """Where a server's API keys come from; neither source turns authentication off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_keys: tuple[SecretStr, ...] | None = None  # from KZERO_API_KEYS; repr shows '**********'
    api_keys_file: Path | None = None

    @classmethod
    def from_sources(cls, env: Mapping[str, str], api_keys_file: Path | None) -> AuthConfig:
        raw = env.get(API_KEYS_ENV)
        if raw is not None and api_keys_file is not None:
            raise AuthConfigError(f"{API_KEYS_ENV} and {API_KEYS_FLAG} are both set; give one of them")
        if raw is None:
            return cls(api_keys_file=api_keys_file)
        keys = parse_keys(raw.split(","), API_KEYS_ENV, "item")
        if not keys:
            raise AuthConfigError(f"{API_KEYS_ENV} is set but holds no key")
        return cls(api_keys=tuple(SecretStr(k) for k in keys))

    @property
    def enabled(self) -> bool:
        return self.api_keys is not None or self.api_keys_file is not None


def parse_keys(items: Iterable[str], source: str, unit: str) -> list[str]:
    """The keys among ``items`` (blank ones and ``#`` comments skipped); a bad one names its position."""
    keys = []
    for number, item in enumerate(items, start=1):
        key = item.strip()
        if not key or key.startswith("#"):
            continue
        if not all(33 <= ord(c) <= 126 for c in key):  # what a Bearer token may hold, besides no spaces
            raise AuthConfigError(f"{source}: {unit} {number} is not a usable key (printable ASCII, no spaces)")
        keys.append(key)
    return keys


def predictor_api_key(env: Mapping[str, str]) -> SecretStr | None:
    """The key a client sends to its predictor (``KZERO_PREDICTOR_API_KEY``); set but empty is an error."""
    raw = env.get(PREDICTOR_API_KEY_ENV)
    if raw is None:
        return None
    keys = parse_keys([raw], PREDICTOR_API_KEY_ENV, "value")
    if len(keys) != 1:
        raise AuthConfigError(f"{PREDICTOR_API_KEY_ENV} is set but holds no key")
    return SecretStr(keys[0])


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The keys a server accepts now. From a file, re-read when its content changes (checked at most
    every ``check_every_s``); a file that becomes unreadable or empty keeps the last good keys."""

    def __init__(
        self, keys: Iterable[str], *, path: Path | None = None, content: bytes = b"", check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._digests = tuple(_digest(k) for k in keys)
        self._path = path
        self._content = content  # the file's content the keys came from
        self._check_every_s = check_every_s
        self._clock = clock
        self._next_check = clock() + check_every_s
        self._warned = False

    @classmethod
    def from_config(cls, config: AuthConfig, clock: Callable[[], float] = time.monotonic) -> ApiKeys | None:
        if config.api_keys is not None:
            return cls(k.get_secret_value() for k in config.api_keys)
        if config.api_keys_file is None:
            return None
        path = config.api_keys_file
        try:
            content = path.read_bytes()
            keys = _parse_file(content, path)
        except (OSError, UnicodeDecodeError) as err:
            raise AuthConfigError(f"{API_KEYS_FLAG} {path}: cannot read it ({type(err).__name__})") from err
        if not keys:
            raise AuthConfigError(f"{API_KEYS_FLAG} {path}: holds no key")
        return cls(keys, path=path, content=content, clock=clock)

    @property
    def source(self) -> str:
        return f"{API_KEYS_FLAG} {self._path}" if self._path is not None else API_KEYS_ENV

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, key: str) -> bool:
        self._refresh()
        presented = _digest(key)
        matched = False
        for digest in self._digests:  # every key, no early exit
            matched |= hmac.compare_digest(presented, digest)
        return matched

    def _refresh(self) -> None:
        if self._path is None or self._clock() < self._next_check:
            return
        self._next_check = self._clock() + self._check_every_s
        try:
            content = self._path.read_bytes()
            if content == self._content:
                return
            keys = _parse_file(content, self._path)
            if not keys:
                raise AuthConfigError(f"{self._path} holds no key")
        except (OSError, UnicodeDecodeError, AuthConfigError) as err:
            if not self._warned:  # once until it is usable again; the message never quotes a key
                self._warned = True
                reason = str(err) if isinstance(err, AuthConfigError) else type(err).__name__
                log.error("API keys file %s is unusable (%s); keeping the %d keys read before",
                          self._path, reason, len(self))
            return
        self._digests = tuple(_digest(k) for k in keys)
        self._content = content
        self._warned = False
        log.info("API keys reloaded from %s: %d keys", self._path, len(keys))


def _parse_file(content: bytes, path: Path) -> list[str]:
    return parse_keys(content.decode().splitlines(), str(path), "line")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def refusal(keys: ApiKeys, authorization: str | None) -> str | None:
    """Why a request with this ``Authorization`` value is refused, or None when its key is accepted."""
    if authorization is None:
        return "missing API key: send 'authorization: Bearer <key>'"
    token = bearer_token(authorization)
    if token is None:
        return "the authorization value is not 'Bearer <key>'"
    return None if keys.accepts(token) else "invalid API key"
