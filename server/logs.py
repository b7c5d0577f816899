"""Structured logs: one JSON object per line on stderr.

Every line names the process that wrote it (`worker`: its index, `pid`), and a line written while a
call is served names that call's request (`request_id`, set by server/interceptors/access_log.py).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

# The request id of the call being served; "" outside calls and for calls without one.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("kassa_request_id", default="")


class JsonFormatter(logging.Formatter):
    def __init__(self, worker_index: int | None = None):
        super().__init__()
        self._worker_index = worker_index  # None: the supervisor of several workers

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        # After the line's own fields, so that "msg" stays next to the first of them for grep.
        if self._worker_index is None:
            entry["supervisor"] = True
        else:
            entry["worker"] = self._worker_index
        entry["pid"] = record.process
        request_id = REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def setup_logging(level: str = "info", worker_index: int | None = 0) -> None:
    """Log at `level` (config key log.level) and above, each line naming worker `worker_index`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker_index))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def event(logger: logging.Logger, message: str, **fields) -> None:
    logger.info(message, extra={"fields": fields})
