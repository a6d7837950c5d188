"""Secrets never reach the logs: bearer tokens are redacted from every log line this process writes.

Websocket clients pass their JWT as ``?token=``, so uvicorn's access log and
its websocket lines (``"WebSocket /v1/ws/customer?token=eyJ..." [accepted]``)
would carry full, replayable tokens. :class:`RedactSecrets` rewrites a record's
message (and its traceback) before any handler formats it:

* ``token=<anything>`` in a query string -> ``token=[redacted]``;
* ``Authorization: Bearer <anything>`` / ``Bearer <anything>`` -> ``Bearer [redacted]``;
* anything shaped like a JWT (``eyJ<header>.<payload>.<signature>``) -> ``[redacted-jwt]``.

:func:`install_log_redaction` puts the filter where records pass: on the
loggers uvicorn writes to (a logger's filters survive uvicorn's own logging
configuration, which replaces its handlers) and on the root logger's handlers,
where this project's ``hexdispatch.*`` records end up.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

_QUERY_TOKEN = re.compile(r"((?:^|[?&;\s\"'])(?:access_)?token=)[^&\s\"']+", re.IGNORECASE)
_BEARER = re.compile(r"(\bbearer\s+)[^\s\"',;]+", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")

#: Loggers uvicorn writes to directly (access lines, websocket handshakes, errors).
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    """``text`` with bearer tokens, ``token=`` query values and JWT-shaped strings replaced."""
    lowered = text.lower()
    if "token" not in lowered and "bearer" not in lowered and "eyj" not in lowered:
        return text  # the common case: nothing to look for
    text = _QUERY_TOKEN.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _JWT.sub("[redacted-jwt]", text)


class RedactSecrets(logging.Filter):
    """Rewrites each record's message and traceback with :func:`redact`; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Arguments are redacted one by one, so formatters that read them (uvicorn's access lines) still can.
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(a) if isinstance(a, str) else a for k, a in record.args.items()}
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the handler report it as it would
            return True
        clean = redact(message)
        if clean != message:  # a token inside some other argument (a dict, an exception...)
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_redaction() -> None:
    """Put one :class:`RedactSecrets` on uvicorn's loggers and the root logger's handlers (idempotent)."""
    targets = [logging.getLogger(name) for name in UVICORN_LOGGERS] + list(logging.getLogger().handlers)
    for target in targets:
        if not any(isinstance(f, RedactSecrets) for f in target.filters):
            target.addFilter(RedactSecrets())
