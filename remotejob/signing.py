"""Signed messages: HMAC-SHA256 over each message's exact bytes, with key ids for rotation.

With ``REMOTEJOB_SIGNING_KEY`` set (``kid:secret``, or several ``kid:secret`` separated by
commas: the first signs, all verify, so keys can be rotated without stopping anything), every
message remotejob sends ends in ``,"at":<unix time>,"kid":"<key id>","sig":"<hex>"}``: the
HMAC-SHA256, under that key, of every byte before ``,"sig":``. A receiver checks that suffix
before it parses anything else, and refuses a message that is unsigned, signed with a key it
does not hold, altered in any byte, or signed longer ago than a queue keeps messages.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import Mapping

from .errors import ConfigError, EnvelopeError

ENV = "REMOTEJOB_SIGNING_KEY"
MIN_SECRET_BYTES = 16
MAX_AGE_S = 4 * 24 * 3600 + 3600
"""Oldest signature accepted: SQS's default retention of a status queue, plus an hour."""
CLOCK_SKEW_S = 300

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SIGNED_TAIL = re.compile(r',"at":([0-9]{1,12}),"kid":"([A-Za-z0-9._-]{1,64})"\Z')
_SIG = re.compile(r',"sig":"([0-9a-f]{64})"}\Z')


REASONS = ("unsigned", "unknown-key", "bad-signature", "stale", "from-the-future")


class Rejected(EnvelopeError):
    """A message failed signature checks; ``reason`` says how (``unsigned``, ``unknown-key``,
    ``bad-signature``, ``stale``, ``from-the-future``). Raised by :meth:`Keyring.verify`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Keyring:
    """The signing keys of a job system: the first signs, every one verifies.

    Args:
        keys: key id to secret, in order (the first signs).

    Raises:
        ConfigError: no keys, a malformed key id, or a secret shorter than 16 bytes.
    """

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ConfigError(f"{ENV} names no key: set it to 'kid:secret' (e.g. 'k1:' + 32 random bytes)")
        for kid, secret in keys.items():
            if not _KEY_ID.fullmatch(kid):
                raise ConfigError(f"signing key id {kid!r} must be 1-64 of A-Z a-z 0-9 . _ -")
            if len(secret) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"signing key {kid!r} is shorter than {MIN_SECRET_BYTES} bytes: use a long random "
                    "secret, e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                )
        self._keys = dict(keys)
        self.signing_kid = next(iter(self._keys))

    def __repr__(self) -> str:  # never the secrets
        return f"Keyring(kids={list(self._keys)!r}, signs_with={self.signing_kid!r})"

    @classmethod
    def parse(cls, value: str) -> Keyring:
        """Read ``kid:secret[,kid:secret...]``.

        Raises:
            ConfigError: a malformed value (the message never repeats a secret).
        """
        keys: dict[str, bytes] = {}
        for part in value.split(","):
            kid, sep, secret = part.strip().partition(":")
            if not sep or not secret:
                raise ConfigError(f"{ENV} must be 'kid:secret' or 'kid1:secret1,kid2:secret2'")
            if kid in keys:
                raise ConfigError(f"{ENV} names key id {kid!r} twice")
            keys[kid] = secret.encode("utf-8")
        return cls(keys)

    @classmethod
    def from_environment(cls) -> Keyring | None:
        """The keyring in ``$REMOTEJOB_SIGNING_KEY``, or None when it is unset or empty."""
        value = os.environ.get(ENV, "").strip()
        return cls.parse(value) if value else None

    def sign(self, text: str, now: float | None = None) -> str:
        """Sign a JSON object's text (as ``envelope.encode`` makes it); returns the signed text."""
        if not text.endswith("}"):
            raise ValueError("only a JSON object can be signed")
        at = int(time.time() if now is None else now)
        signed = f'{strip(text)[:-1]},"at":{at},"kid":"{self.signing_kid}"'
        return f'{signed},"sig":"{self._mac(self.signing_kid, signed)}"}}'

    def verify(self, text: str, now: float | None = None, *, check_age: bool = True) -> None:
        """Check a message's signature before anything else reads it.

        Raises:
            Rejected: unsigned, an unknown key id, a wrong signature, or (with ``check_age``) a
                signature older than a queue keeps messages or from the future.
        """
        sig = _SIG.search(text)
        if sig is None:
            raise Rejected("unsigned", "message is not signed, and this job system requires signatures")
        signed = text[: sig.start()]
        tail = _SIGNED_TAIL.search(signed)
        if tail is None:
            raise Rejected("unsigned", "message has a malformed signature")
        kid = tail[2]
        if kid not in self._keys:
            raise Rejected("unknown-key", f"message is signed with key {kid!r}, which is not configured here")
        if not hmac.compare_digest(sig[1], self._mac(kid, signed)):
            raise Rejected("bad-signature", "message signature does not match: it was altered or forged")
        if check_age:
            age = (time.time() if now is None else now) - int(tail[1])
            hours = age / 3600
            if age > MAX_AGE_S:
                raise Rejected("stale", f"message was signed {hours:.0f} h ago: longer than queues keep it")
            if age < -CLOCK_SKEW_S:
                raise Rejected("from-the-future", "message is signed in the future: check the clocks")

    def _mac(self, kid: str, signed: str) -> str:
        return hmac.new(self._keys[kid], signed.encode("utf-8"), hashlib.sha256).hexdigest()


def strip(text: str) -> str:
    """A message's text without its signature (to sign it again, e.g. when redriving it)."""
    sig = _SIG.search(text)
    if sig is None:
        return text
    tail = _SIGNED_TAIL.search(text, 0, sig.start())
    return text[: tail.start()] + "}" if tail is not None else text
