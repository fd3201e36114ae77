"""Where log lines go, without slowing requests: every logger of the process (dockyard's,
hypercorn's, warnings) hands its records to a queue; one writer thread formats them
(observability/logformat.py) and writes them, buffered, to stderr or ``[log] file``.

A task that logs only renders the message and puts the record on the queue; a request's
access line is queued as its RequestRecord (``log_request``) and made in the writer thread.
A slow disk or a stalled pipe holds up the writer thread, never the event loop. If the writer falls
that far behind, records are dropped and counted (a line says how many) rather than
growing memory without bound. ``configure_logging`` starts the writer and registers its
stop at exit, which writes out everything queued, so a graceful stop loses no line.
"""

from __future__ import annotations

import atexit
import io
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
import traceback
from types import TracebackType

from dockyard.config import Settings
from dockyard.observability.logformat import (
    ACCESS_LOGGER,
    RequestFormatter,
    detach,
    formatter,
    request_message,
)
from dockyard.observability.record import RequestRecord

Queued = logging.LogRecord | RequestRecord

# Records waiting for the writer: a few seconds of a busy server's requests.
QUEUE_SIZE = 20_000
# After the queue runs empty the writer naps this long before it looks again, so a busy
# server's lines are written in batches, one wake-up of the thread (and one write and one
# stat of the log file) for many lines. 10 ms cost 11% of a manifest HEAD's CPU at 2,000
# HEADs/s per worker (py-spy: flushes, per-line stats, wake-ups); 100 ms a few per cent.
BATCH_SECONDS = 0.1
# Bytes of output kept before a write: a burst of lines becomes one write.
BUFFER_BYTES = 64 * 1024


class _Enqueue(logging.handlers.QueueHandler):
    """The one handler every record passes; never blocks."""

    def __init__(self, records: queue.SimpleQueue[Queued]) -> None:
        super().__init__(records)
        self.records = records
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Not QueueHandler.prepare: that formats the line here, on the request's task, and
        # throws the exception away (the ECS formatter needs it as fields).
        detach(record)
        return record

    def enqueue(self, record: Queued) -> None:
        # A SimpleQueue (put is one C call, no lock of Python's queue.Queue) bounded here.
        if self.records.qsize() >= QUEUE_SIZE:
            self.dropped += 1
        else:
            self.records.put_nowait(record)


class _Writer(logging.handlers.QueueListener):
    """The writer thread: writes each record, flushes when the queue runs empty (so an
    idle server's lines are out within BATCH_SECONDS and a busy one's go out in large
    writes)."""

    def __init__(
        self,
        records: queue.SimpleQueue[Queued],
        enqueue: _Enqueue,
        out: _Output,
    ) -> None:
        super().__init__(records, out)
        self.enqueue = enqueue
        self.out = out
        self.pid = os.getpid()

    def handle(self, record: Queued) -> None:
        dropped = self.enqueue.dropped
        if dropped:
            self.enqueue.dropped -= dropped
            note = logging.LogRecord(
                "dockyard.log",
                logging.WARNING,
                __file__,
                0,
                "%d log records were dropped: the log output was too slow",
                (dropped,),
                None,
            )
            self.out.handle(note)
        if isinstance(record, RequestRecord):
            self.out.write_line(self.out.formatter.format_request(record, self.pid))
        else:
            self.out.handle(record)
        if self.queue.empty():  # type: ignore[attr-defined]
            self.out.flush()
            time.sleep(BATCH_SECONDS)


class _BufferedStream(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream written without a flush per line (the writer flushes)."""

    formatter: RequestFormatter

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        try:
            self.stream.write(line + self.terminator)
        except Exception:
            _write_failed()


class LogFile(logging.handlers.WatchedFileHandler):
    """``[log] file``: appended to, buffered, and reopened when it was moved or deleted
    (logrotate's default rotation; with copytruncate the same file is appended to)."""

    formatter: RequestFormatter

    def __init__(self, path: str) -> None:
        self._checked = False  # whether this batch looked for a moved file yet
        super().__init__(path, encoding="utf-8", errors="backslashreplace")

    def _open(self) -> io.TextIOWrapper:
        return open(self.baseFilename, "a", BUFFER_BYTES, "utf-8", "backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record))
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        try:
            self._write(line)
        except Exception:
            _write_failed()

    def _write(self, line: str) -> None:
        # One stat per batch, before its first line, not one per line (WatchedFileHandler's
        # way): the writer flushes at the end of every batch.
        if not self._checked:
            self.reopenIfNeeded()
            self._checked = True
        if self.stream is None:
            self.stream = self._open()
        self.stream.write(line + self.terminator)

    def flush(self) -> None:
        super().flush()
        self._checked = False

    def reopen(self) -> None:
        """Close and open the path again (a SIGHUP after a rotation)."""
        with self.lock:  # type: ignore[union-attr]
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
            self._statstream()


_Output = _BufferedStream | LogFile


def _write_failed() -> None:
    # What logging.Handler.handleError does for a record: a note on stderr, never a raise.
    if logging.raiseExceptions and sys.stderr:
        traceback.print_exc(file=sys.stderr)


def _stderr() -> _Output:
    try:
        fd = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # a test runner's stand-in stderr
        return _BufferedStream(sys.stderr)
    stream = open(fd, "w", BUFFER_BYTES, "utf-8", "backslashreplace")  # noqa: SIM115
    return _BufferedStream(stream)


class LogPipeline:
    """The queue, its writer thread and the output handler of this process."""

    def __init__(self, out: _Output) -> None:
        records: queue.SimpleQueue[Queued] = queue.SimpleQueue()
        self.out = out
        self.enqueue = _Enqueue(records)
        self.writer = _Writer(records, self.enqueue, out)

    def start(self) -> None:
        self.writer.start()

    def stop(self) -> None:
        """Write out what is queued, then close the output."""
        if self.writer._thread is not None:
            self.writer.stop()
        self.out.flush()
        self.out.close()

    def reopen(self) -> None:
        if isinstance(self.out, LogFile):
            self.out.reopen()


_current: LogPipeline | None = None
_access_log = logging.getLogger(ACCESS_LOGGER)


def log_request(r: RequestRecord) -> None:
    """Queue ``r``'s access line, when the access log is on (``[log] access``); the writer
    thread makes it. Without a pipeline (a test's app) the line goes through logging."""
    if not _access_log.isEnabledFor(logging.INFO):
        return
    if _current is not None:
        _current.enqueue.enqueue(r)
    else:
        _access_log.info("%s", request_message(r))


def _log_thread_error(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("dockyard").error(
        "unhandled error in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


def _log_uncaught(
    kind: type[BaseException], error: BaseException, tb: TracebackType | None
) -> None:
    logging.getLogger("dockyard").critical("unhandled error", exc_info=(kind, error, tb))


def configure_logging(settings: Settings) -> LogPipeline:
    """Send every record of this process through one pipeline, at ``log.level`` (the
    access log at info whatever the level, when ``log.access`` is on). Called in
    ``dockyard serve`` and again in each worker: a spawned process inherits no logging
    set-up. Raises ``OSError`` if ``log.file`` cannot be opened."""
    global _current
    log = settings.log
    out = LogFile(os.path.abspath(log.file)) if log.file else _stderr()
    out.setFormatter(formatter(log.format))
    pipeline = LogPipeline(out)
    root = logging.getLogger()
    if _current is not None:
        root.removeHandler(_current.enqueue)
        _current.stop()
        atexit.unregister(_current.stop)
    # Handlers set up before (logging.basicConfig, a library's) would print a second copy.
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(pipeline.enqueue)
    root.setLevel(log.level.upper())
    logging.getLogger("dockyard.access").setLevel(logging.INFO if log.access else logging.NOTSET)
    logging.captureWarnings(True)
    # Neither format shows thread or process names: not looking them up for every record
    # saves a fifth of a LogRecord's making (the access log makes one per request).
    logging.logThreads = False
    logging.logMultiprocessing = False
    # An exception nothing caught would be printed to stderr, past [log] file and format.
    threading.excepthook = _log_thread_error
    sys.excepthook = _log_uncaught
    pipeline.start()
    atexit.register(pipeline.stop)
    _current = pipeline
    return pipeline
