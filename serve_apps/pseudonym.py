"""Keyed pseudonyms for member ids: HMAC-SHA256 under a rotating, versioned secret key.

The prediction log and the label joins need to know that two requests came from the same
member without ever holding the member id. A plain hash does not do that safely: member ids
come from a small, guessable space (``M000123``...), so anyone with the log can hash every
candidate id and read the members back (a dictionary attack). HMAC (RFC 2104, Krawczyk,
Bellare and Canetti 1997) with SHA-256 is a pseudorandom function of the member id *under a
secret key*; without the key a pseudonym reveals nothing and cannot be recomputed.

The key therefore lives outside the log store, in a secret the serving process reads at start:

- ``DISPATCHML_PSEUDONYM_KEYS="k2:<base64>,k1:<base64>"``, or
- ``DISPATCHML_PSEUDONYM_KEYS_FILE=/run/secrets/pseudonym_keys`` holding the same text
  (commas or newlines between keys).

The first key is current: new records are pseudonymised under it. Older keys stay in the ring
so records written before a rotation still join, by the key id stored next to each pseudonym
(``k1:9f2c...``). Retiring a key (dropping it from the ring) makes its pseudonyms unlinkable,
which is also how member data is forgotten wholesale. Generate a key with
``openssl rand -base64 32``.

There is no default key. A process without one fails at start with a message saying what to
set; only :meth:`KeyRing.ephemeral` (tests, the demo) makes up a random key, and it logs that
its pseudonyms will not join across restarts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

KEYS_ENV = "DISPATCHML_PSEUDONYM_KEYS"
KEYS_FILE_ENV = "DISPATCHML_PSEUDONYM_KEYS_FILE"
#: RFC 2104 section 3: keys shorter than the hash output (32 bytes for SHA-256) weaken HMAC.
MIN_KEY_BYTES = 32
#: Separates pseudonyms of member ids from any other use of the same key.
_DOMAIN = b"dispatchml/member_id/v1\x00"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

log = logging.getLogger(__name__)


class PseudonymKeyError(RuntimeError):
    """The pseudonym key ring is missing, malformed, or lacks the key a record was written under."""


@dataclass(frozen=True)
class PseudonymKey:
    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KEY_ID.match(self.key_id):
            raise PseudonymKeyError(
                f"pseudonym key id {self.key_id!r} must be 1-32 characters of letters, digits, '_' or '-'"
            )
        if len(self.secret) < MIN_KEY_BYTES:
            raise PseudonymKeyError(
                f"pseudonym key {self.key_id!r} is {len(self.secret)} bytes; use at least {MIN_KEY_BYTES} "
                "(generate one with `openssl rand -base64 32`)"
            )


def hmac_pseudonym(secret: bytes, member_id: str) -> str:
    """HMAC-SHA256(secret, domain || member_id) as 64 hex characters (RFC 2104)."""
    return hmac.new(secret, _DOMAIN + member_id.encode("utf-8"), hashlib.sha256).hexdigest()


def same_pseudonym(a: str, b: str) -> bool:
    """Constant-time equality, so timing does not reveal how much of a guessed pseudonym matched."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def format_token(key_id: str, pseudonym: str) -> str:
    """``key_id:pseudonym``, the form stored in the prediction log."""
    return f"{key_id}:{pseudonym}"


def parse_token(token: str) -> tuple[str, str]:
    """Split ``key_id:pseudonym``; PseudonymKeyError if there is no key id."""
    key_id, sep, pseudonym = token.partition(":")
    if not sep or not key_id or not pseudonym:
        raise PseudonymKeyError("a pseudonym token must look like 'key_id:hex'")
    return key_id, pseudonym


class KeyRing:
    """The current pseudonym key plus the retired-but-joinable ones, newest first."""

    def __init__(self, keys: Sequence[PseudonymKey], *, ephemeral: bool = False) -> None:
        if not keys:
            raise PseudonymKeyError(f"the pseudonym key ring is empty; set {KEYS_ENV} or {KEYS_FILE_ENV}")
        ids = [k.key_id for k in keys]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise PseudonymKeyError(f"pseudonym key ids must be unique; repeated: {', '.join(duplicates)}")
        self._keys = {k.key_id: k for k in keys}
        self._current = keys[0]
        self.is_ephemeral = ephemeral

    @classmethod
    def from_spec(cls, spec: str) -> KeyRing:
        """Parse ``"k2:<base64>,k1:<base64>"`` (commas or newlines); the first key is current."""
        keys = []
        for item in re.split(r"[,\n]", spec):
            item = item.strip()
            if not item:
                continue
            key_id, sep, encoded = item.partition(":")
            if not sep:
                raise PseudonymKeyError("each pseudonym key must be written 'key_id:base64secret'")
            try:
                secret = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                # Name the key, never echo the secret text.
                raise PseudonymKeyError(f"pseudonym key {key_id.strip()!r} is not valid base64") from None
            keys.append(PseudonymKey(key_id.strip(), secret))
        return cls(keys)

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        try:
            return cls.from_spec(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise PseudonymKeyError(f"cannot read the pseudonym key file {path}: {exc.strerror}") from exc

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyRing:
        """The production constructor: exactly one of the two environment variables must be set."""
        environ = os.environ if environ is None else environ
        spec, path = environ.get(KEYS_ENV), environ.get(KEYS_FILE_ENV)
        if spec and path:
            raise PseudonymKeyError(f"set only one of {KEYS_ENV} and {KEYS_FILE_ENV}, not both")
        if path:
            return cls.from_file(Path(path))
        if spec:
            return cls.from_spec(spec)
        raise PseudonymKeyError(
            f"no pseudonym key: set {KEYS_ENV}='k1:<base64 key>' or {KEYS_FILE_ENV}=<path> "
            "(generate a key with `openssl rand -base64 32`); there is deliberately no default"
        )

    @classmethod
    def ephemeral(cls) -> KeyRing:
        """A random key for tests and the demo. Its pseudonyms die with the process: never for production."""
        key = PseudonymKey(f"ephemeral-{secrets.token_hex(4)}", secrets.token_bytes(MIN_KEY_BYTES))
        log.warning(
            "using an ephemeral pseudonym key %s: pseudonyms will not join across restarts; set %s in production",
            key.key_id,
            KEYS_ENV,
        )
        return cls([key], ephemeral=True)

    @property
    def current_key_id(self) -> str:
        return self._current.key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def pseudonymize(self, member_id: str) -> tuple[str, str]:
        """``(key_id, pseudonym)`` under the current key; store both."""
        return self._current.key_id, hmac_pseudonym(self._current.secret, member_id)

    def pseudonym_under(self, key_id: str, member_id: str) -> str:
        """The pseudonym ``member_id`` had under ``key_id``, to join records written before a rotation."""
        key = self._keys.get(key_id)
        if key is None:
            raise PseudonymKeyError(
                f"pseudonym key {key_id!r} is not in the key ring (have: {', '.join(self._keys)}); "
                "records written under a retired key can no longer be joined"
            )
        return hmac_pseudonym(key.secret, member_id)

    def token(self, member_id: str) -> str:
        """``key_id:pseudonym`` under the current key."""
        return format_token(*self.pseudonymize(member_id))

    def matches(self, token: str, member_id: str) -> bool:
        """Whether a stored ``key_id:pseudonym`` token belongs to ``member_id`` (constant-time)."""
        key_id, pseudonym = parse_token(token)
        return same_pseudonym(self.pseudonym_under(key_id, member_id), pseudonym)

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current_key_id!r}, keys={list(self._keys)!r}, ephemeral={self.is_ephemeral})"
