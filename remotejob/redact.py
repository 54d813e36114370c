"""Keeping secrets out of logs: a logging filter that masks credentials, session tokens,
signing keys, request and message signatures, and presigned-URL signatures.

remotejob's own messages never include them; this filter (installed by the command line on its
log handler, and available to applications for theirs) is the second line, for text that other
libraries log or that errors carry.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_PATTERNS = (
    re.compile(r"(Signature=)[0-9a-fA-F]{16,}"),  # SigV4 Authorization headers
    re.compile(r"((?:X-Amz-Signature|X-Amz-Security-Token|X-Amz-Credential|Signature)=)[^&\s'\"]+"),
    re.compile(r"((?:x-amz-security-token|X-Amz-Security-Token)'?\"?:\s*b?'?\"?)[^'\"\s,}]+"),
    re.compile(r'("sig":")[0-9a-f]{64}'),  # a remotejob message's signature
    re.compile(r"(Credential=)[A-Z0-9]{16,}"),
)


class RedactSecrets(logging.Filter):
    """Masks secrets in every record it passes: the values of the AWS secret variables and of
    ``REMOTEJOB_SIGNING_KEY`` in this process's environment, and anything shaped like a
    signature, session token or presigned-URL credential."""

    def __init__(self) -> None:
        super().__init__()
        values = [os.environ.get(name, "") for name in _SECRET_VARIABLES]
        for part in os.environ.get("REMOTEJOB_SIGNING_KEY", "").split(","):
            values.append(part.partition(":")[2].strip())
        self._values = sorted({v for v in values if len(v) >= 8}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` with every secret masked."""
        for value in self._values:
            text = text.replace(value, MASK)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True
