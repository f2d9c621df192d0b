"""The log formats (``--log-format``): podyn's text lines, or one JSON object per line for log shippers.

Neither shows a secret: every line (message, fields, exception) goes through the redaction the CLI installs (the
patterns of ``config.redact_text`` and the exact secrets it knows: the PostgreSQL password, an AWS secret key in the
environment).

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``table`` when the event concerns one,
``message``, the event's structured fields (what the call passed in ``extra``: counts, lag, state, delays) and
``exception`` (type, message, traceback as one string) when there is one. A record's table is, in this order: the
``table`` given in ``extra``; the ``table`` of the PodynError logged or passed as an argument; the first argument of
a message that starts with ``table %s`` (podyn's convention); the table the thread works on (:func:`about`).

Not for choosing what to log: modules log through ``logging.getLogger(__name__)`` and never install handlers.
Imports no podyn module.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has: whatever else a record carries came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}

#: A secret shorter than this is hidden only by the patterns (hiding every "abc" in every line would help no one).
MIN_SECRET_LENGTH = 8

_HANDLER = "podyn_py.logs"
_context = threading.local()
_json = False


@contextlib.contextmanager
def about(table: str) -> Iterator[None]:
    """The current thread works on ``table`` until the block ends: its log records without a table get this one."""
    outer = getattr(_context, "table", None)
    _context.table = table
    try:
        yield
    finally:
        _context.table = outer


def json_mode() -> bool:
    """True once :func:`configure` installed the JSON format (then the CLI logs what it would echo)."""
    return _json


class Redactor:
    """``patterns`` (a function of the text), then each known secret replaced by ``***``."""

    def __init__(self, patterns: Callable[[str], str] | None = None, secrets: Iterable[str] = ()) -> None:
        self.patterns = patterns
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if self.patterns is not None:
            text = self.patterns(text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__(TEXT_FORMAT)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is a string field with its newlines escaped)."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        table = table_of(record)
        if table is not None:
            event["table"] = table
        event["message"] = record.getMessage()
        for name, value in vars(record).items():
            if name not in _STANDARD and name != "table" and not name.startswith("_"):
                event[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            event["exception"] = _exception(record.exc_info)
        if record.stack_info:
            event["stack"] = record.stack_info
        return orjson.dumps(self._clean(event), default=str).decode()

    def _clean(self, value: Any) -> Any:
        """Every string redacted, before the value is serialized (redacting JSON text could break its quoting)."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {str(k): self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.redact(str(value))


def _exception(exc_info: Any) -> dict[str, str]:
    kind, exc, tb = exc_info
    return {
        "type": f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(kind, exc, tb)).rstrip("\n"),
    }


def table_of(record: logging.LogRecord) -> str | None:
    """The table a record concerns, if any (see the module's docstring for the order)."""
    given = getattr(record, "table", None)
    if given is not None:
        return str(given)
    candidates: list[Any] = [record.exc_info[1]] if record.exc_info else []
    args = record.args if isinstance(record.args, tuple) else ()
    candidates.extend(args)
    for each in candidates:
        table = getattr(each, "table", None) if isinstance(each, Exception) else None
        if isinstance(table, str):
            return table
    if isinstance(record.msg, str) and record.msg.startswith("table %s") and args and isinstance(args[0], str):
        return args[0]
    current = getattr(_context, "table", None)
    return str(current) if current is not None else None


def configure(level: int, *, json: bool = False, redact: Redactor | None = None) -> None:
    """Log to stderr at ``level`` in the chosen format, every line through ``redact``.

    In JSON mode, warnings and uncaught exceptions (also in threads) become JSON records too, so that every line
    of stderr parses.
    """
    global _json
    _json = json
    redactor = redact or Redactor()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redactor) if json else TextFormatter(redactor))
    handler.set_name(_HANDLER)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:  # ours from an earlier call; others stay
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if json:
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("podyn_py").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    logging.getLogger("podyn_py").critical(
        "uncaught exception in thread %s",
        args.thread.name if args.thread is not None else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
