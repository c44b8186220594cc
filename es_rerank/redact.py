"""One place that keeps secrets and terminal control sequences out of what es-rerank shows.

:func:`redact_url` masks the credentials of any URL-like string (also of URLs that do not
parse, such as a password holding ``/``, ``#`` or ``?``, or a bad port); :func:`redact`
applies it to every URL in a text and replaces known secret values; :func:`safe_text`
strips control characters before anything reaches a terminal.

Example:
    >>> redact_url("https://elastic:s3cr/t#x@es.example:9243/path")
    'https://***@es.example:9243/path'
"""

from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import quote

MASK = "***"

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` part replaced by ``***@``.

    Works on strings that are not valid URLs: everything between ``scheme://`` and the
    last ``@`` of the token is treated as credentials.
    """
    if not isinstance(url, str):
        url = str(url)
    match = re.match(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>.*)", url, re.S)
    if match is None:
        return url
    rest = match.group("rest")
    # userinfo runs to the LAST "@": a password may hold "/", "#", "?" or ":", which make
    # urlsplit fail or misparse. An "@" later in the path masks too much, never too little.
    at = rest.rfind("@")
    if at < 0:
        return url
    return match.group("scheme") + MASK + rest[at:]


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with the credentials of every URL in it masked and each secret replaced by ``***``.

    Args:
        text: Any message, log line, command line or file content.
        secrets: Values that must never appear (passwords, API keys); empty ones are ignored.
    """
    if not isinstance(text, str):
        text = str(text)
    out = _URL.sub(lambda m: redact_url(m.group(0)), text)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        out = out.replace(secret, MASK)
        encoded = quote(secret, safe="")  # as it appears percent-encoded in a URL
        if encoded != secret:
            out = out.replace(encoded, MASK)
    return out


def safe_text(text: str) -> str:
    """``text`` without terminal control characters (ESC, BEL, C1 controls, bidi overrides).

    Newlines and tabs are kept; everything else below U+0020, DEL, the C1 range and the
    Unicode bidirectional controls are removed, so a title cannot set the window title,
    write the clipboard or reorder what the terminal shows.
    """
    if not isinstance(text, str):
        text = str(text)
    return _CONTROL.sub("", text)
