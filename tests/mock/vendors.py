#!/usr/bin/env python3
"""Mock LLM vendors for llm-failover's end-to-end tests and the `make run` demo.

This file owns the fake upstreams that Envoy fails over between. One process
serves several vendors, each on its own port, and speaks the real wire formats
of the two APIs the filter carries:

* ``POST /v1/chat/completions`` -- OpenAI Chat Completions (JSON and SSE);
* ``POST /v1/messages``         -- Anthropic Messages (JSON and SSE).

Every vendor answers both paths (the filter moves a request between clusters
without rewriting it), and every response carries ``x-mock-vendor: <name>`` so
a test can tell who answered. Anything else gets a 404 in OpenAI's error format.

Each vendor can be told to misbehave at run time (a "fault", see
``normalize_fault`` for the fields): error statuses in the vendor's own error
format, a closed port, TCP resets, hangs, broken or stalled streams. Faults are
switched through a small JSON control port, through the ``ctl`` command line
below, or in process through ``MockVendors`` (pytest imports this module).

Standard library only, Python 3.11+.

Command line::

    vendors.py [--vendor NAME=PORT ...] [--control PORT] [--host HOST]
               [--content NAME=TEXT ...] [--verbose]
    vendors.py ctl [--control PORT] [--host HOST] status
    vendors.py ctl [--control PORT] break VENDOR (CODE|MODE|JSON) [--count N]
               [--delay S] [--latency S]
    vendors.py ctl [--control PORT] heal VENDOR
    vendors.py ctl [--control PORT] reset
    vendors.py ctl [--control PORT] requests VENDOR [--last N]

The server prints ``READY {"control": ..., "vendors": {...}}`` on stdout once
every socket listens (port 0 picks a free port) and exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import collections
import email.utils
import http.client
import http.server
import json
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

__all__ = ["MockVendors", "FaultError", "normalize_fault", "MODES", "DEFAULT_VENDORS"]

DEFAULT_VENDORS = {"anthropic": 18001, "openai": 18002, "xai": 18003}
DEFAULT_CONTROL_PORT = 18000

MODES = (
    "ok",
    "status",
    "refuse",
    "reset",
    "hang",
    "stream_error",
    "truncate",
    "reset_mid_stream",
    "slow_first_byte",
    "stall",
)

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"

# How many requests each vendor remembers for GET /vendors/<name>/requests.
RECORD_LIMIT = 1000

# Headers that frame the HTTP message: a fault may not override them, or the
# connection would desynchronise instead of showing the intended failure.
_FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection"}


class FaultError(ValueError):
    """A fault description that cannot be applied."""


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------


def _number(fault: dict, key: str) -> None:
    value = fault.get(key)
    if value is None:
        fault.pop(key, None)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise FaultError(f"{key!r} must be a non-negative number of seconds, got {value!r}")
    fault[key] = float(value)


def _integer(fault: dict, key: str, low: int, high: int | None = None) -> None:
    value = fault.get(key)
    if value is None:
        fault.pop(key, None)
        return
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise FaultError(f"{key!r} must be an integer {bounds}, got {value!r}")
    fault[key] = value


def normalize_fault(fault: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a fault description and return a clean copy.

    Fields (all optional except ``status`` in mode ``status``):

    ``mode``      one of ``MODES``; default ``ok``.
    ``status``    HTTP status for ``status`` (and ``stream_error`` on a
                  non-streamed request, default 500).
    ``body``      string (sent verbatim) or JSON value replacing the error body.
    ``headers``   extra response headers, e.g. ``{"retry-after": "3"}``.
    ``count``     apply to the next N requests only, then back to ``ok``
                  (ignored by ``refuse``, which sees no requests).
    ``delay``     seconds; meaning depends on the mode: before the error
                  (``status``, ``reset``), how long to hang/stall (default:
                  until healed), before the first byte (``slow_first_byte``, default 1),
                  before the failure of a broken stream, or how long the port
                  stays closed (``refuse``, default: until healed).
    ``latency``   seconds to wait after reading any request, before the mode
                  acts (the way to slow down healthy answers).
    ``interval``  seconds between stream events (makes demos watchable).
    ``events``    how many stream events go out before a stream fault hits
                  (default: up to and including the first text delta).
    ``message``, ``error_type``  override the in-stream error of ``stream_error``.
    ``model``     break only requests for this model (the request body's
                  ``model``); requests for other models are served normally.
    ``every``     break only one request in N (the N-th, 2N-th, ... since the
                  fault was set); the others are served normally. ``every: 2``
                  fails one request in two. With ``count``, only the broken
                  requests count.
    """

    if fault is None:
        fault = {}
    if not isinstance(fault, Mapping):
        raise FaultError("a fault is a JSON object like {\"mode\": \"status\", \"status\": 503}")
    f = dict(fault)
    mode = f.setdefault("mode", "ok")
    if mode not in MODES:
        raise FaultError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "status" and f.get("status") is None:
        raise FaultError("mode 'status' needs a 'status' code")
    _integer(f, "status", 100, 599)
    _integer(f, "count", 1)
    _integer(f, "events", 0)
    _integer(f, "every", 1)
    for key in ("delay", "latency", "interval"):
        _number(f, key)
    headers = f.get("headers")
    if headers is None:
        f.pop("headers", None)
    elif not isinstance(headers, Mapping):
        raise FaultError("'headers' must be an object of header name to value")
    else:
        f["headers"] = {str(k): str(v) for k, v in headers.items()}
    return f


def describe_fault(fault: Mapping[str, Any]) -> str:
    """One-line human description, e.g. ``status 503 count=2``."""
    parts = [str(fault.get("mode", "ok"))]
    if "status" in fault:
        parts.append(str(fault["status"]))
    for key, value in fault.items():
        if key in ("mode", "status"):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        parts.append(f"{key}={json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return " ".join(parts)


# --------------------------------------------------------------------------
# Wire formats (pure functions: easy to read next to the vendors' docs)
# --------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _text_of(value: Any) -> str:
    """Text inside a message content: a string or a list of content blocks."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(block.get("text", "")) for block in value if isinstance(block, dict))
    return ""


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """A deterministic stand-in for a tokenizer: about four characters a token."""
    text = _text_of(body.get("system", ""))
    messages = body.get("messages")
    if isinstance(messages, list):
        text += " ".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
    return max(1, len(text) // 4 + 1)


def prefill_of(body: Mapping[str, Any]) -> str | None:
    """The text of a trailing assistant message (a prefill to continue from),
    if the request ends with one."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    return _text_of(last.get("content")) if last.get("role") == "assistant" else None


def split_pieces(text: str) -> list[str]:
    """Split an answer into stream deltas: ``Hello``, `` from``, `` xai``."""
    return re.findall(r"\s*\S+", text) or [text]


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event; ``data`` is JSON-encoded unless already a string."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def openai_completion(model: str, content: str, prompt_tokens: int) -> dict[str, Any]:
    pieces = split_pieces(content)
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        },
        "system_fingerprint": "fp_mock",
    }


def openai_stream(
    model: str, content: str, prompt_tokens: int, include_usage: bool
) -> tuple[list[bytes], int]:
    """Chat completion chunks; returns the events and the index just after the
    first content delta (where stream faults strike by default)."""
    cid, created = _new_id("chatcmpl-"), int(time.time())
    pieces = split_pieces(content)

    def chunk(delta: dict, finish: str | None = None) -> dict[str, Any]:
        out = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None  # every chunk but the last carries usage: null
        return out

    events = [sse(chunk({"role": "assistant", "content": "", "refusal": None}))]
    events += [sse(chunk({"content": piece})) for piece in pieces]
    events.append(sse(chunk({}, "stop")))
    if include_usage:
        final = chunk({})
        final["choices"] = []
        final["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        events.append(sse(final))
    events.append(sse("[DONE]"))
    return events, 2


def anthropic_message(model: str, content: str, input_tokens: int) -> dict[str, Any]:
    return {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": content}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": len(split_pieces(content)),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def anthropic_stream(model: str, content: str, input_tokens: int) -> tuple[list[bytes], int]:
    """Messages stream events; returns the events and the index just after the
    first text delta."""
    pieces = split_pieces(content)
    start = anthropic_message(model, "", input_tokens)
    start["content"] = []
    start["stop_reason"] = None
    start["usage"]["output_tokens"] = 1
    events = [
        sse({"type": "message_start", "message": start}, "message_start"),
        sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        ),
        sse({"type": "ping"}, "ping"),
    ]
    events += [
        sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            "content_block_delta",
        )
        for piece in pieces
    ]
    events += [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(pieces)},
            },
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    return events, 4


# status -> (type, code) in OpenAI's error object.
_OPENAI_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "unknown_url"),
    429: ("requests", "rate_limit_exceeded"),
}

# status -> error.type in Anthropic's error object; other 5xx are api_error.
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _reason(status: int) -> str:
    if status == 529:
        return "Overloaded"  # not in the IANA registry, but what Anthropic sends
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def openai_error(status: int, message: str) -> dict[str, Any]:
    kind, code = _OPENAI_ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if kind == "overloaded_error":
        message = "Overloaded"
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": _new_id("req_")}


# --------------------------------------------------------------------------
# Vendor servers
# --------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    """Threaded HTTP server that never waits for its connection threads."""

    daemon_threads = True
    block_on_close = False  # a hanging request must not block stop()
    allow_reuse_address = True  # reopen a refused port despite TIME_WAIT
    request_queue_size = 512  # Envoy may open many connections at once

    def __init__(self, address: tuple[str, int], handler: type, owner: Any):
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can
        # take seconds without DNS; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # clients hang up all the time; that is not news
        super().handle_error(request, client_address)


class _Vendor:
    """State of one mock vendor: its listener, fault, connections and records."""

    def __init__(self, name: str, port: int, host: str, content: str, verbose: bool):
        self.name = name
        self.port = port
        self.host = host
        self.content = content
        self.verbose = verbose
        self.lock = threading.Lock()  # fault, counters, records
        self.admin = threading.RLock()  # serialises opening/closing the listener
        self.fault: dict[str, Any] = {"mode": "ok"}
        self.remaining: int | None = None  # requests left for a counted fault
        self.matched = 0  # requests the current fault applied to (for ``every``)
        self.generation = 0  # bumped by every explicit fault change
        # Set (and replaced) whenever the fault is changed from outside or the
        # server stops: wakes hanging and stalled requests.
        self.release = threading.Event()
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECORD_LIMIT)
        self.total = 0
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None
        self.conns: set[_VendorHandler] = set()
        self.conn_lock = threading.Lock()
        self.refused = False
        self.stopping = False

    # -- listener --------------------------------------------------------

    def open(self) -> None:
        with self.admin:
            if self.server is not None:
                return
            server = _Server((self.host, self.port), _VendorHandler, self)
            self.port = server.server_address[1]  # the real one when asked for 0
            self.thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},  # how fast shutdown() returns
                name=f"mock-{self.name}",
                daemon=True,
            )
            self.server = server
            self.thread.start()
            self.refused = False

    def close(self) -> None:
        with self.admin:
            server, self.server = self.server, None
            if server is None:
                return
            server.shutdown()
            server.server_close()
            if self.thread is not None:
                self.thread.join(timeout=2)

    # -- connections -----------------------------------------------------

    def track(self, conn: _VendorHandler) -> None:
        with self.conn_lock:
            self.conns.add(conn)

    def untrack(self, conn: _VendorHandler) -> None:
        with self.conn_lock:
            self.conns.discard(conn)

    def mark_idle(self, conn: _VendorHandler) -> bool:
        """Called before waiting for the next request; False: close instead."""
        with self.conn_lock:
            conn.busy = False
            return not (self.refused or self.stopping)

    def mark_busy(self, conn: _VendorHandler) -> bool:
        """Called once a request arrived; False: it must not be served."""
        with self.conn_lock:
            conn.busy = True
            return not (self.refused or self.stopping)

    def drop_connections(self, idle_only: bool) -> None:
        # shutdown() (unlike close()) wakes a thread blocked reading the socket.
        with self.conn_lock:
            for conn in list(self.conns):
                if idle_only and conn.busy:
                    continue
                try:
                    conn.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # -- faults ----------------------------------------------------------

    def set_fault(self, fault: Mapping[str, Any] | None) -> None:
        fault = normalize_fault(fault)
        with self.admin:
            with self.lock:
                old = self.release
                self.release = threading.Event()
                self.fault = fault
                self.remaining = fault.get("count") if fault["mode"] != "refuse" else None
                self.matched = 0
                self.generation += 1
                generation = self.generation
            old.set()
            if fault["mode"] == "refuse":
                self.refused = True
                self.close()
                self.drop_connections(idle_only=True)
                if fault.get("delay") is not None:
                    timer = threading.Timer(fault["delay"], self._expire_refuse, (generation,))
                    timer.daemon = True
                    timer.start()
            elif not self.stopping:
                self.open()

    def _expire_refuse(self, generation: int) -> None:
        with self.admin:
            if self.generation == generation and not self.stopping:
                self.set_fault(None)

    def take(self, record: dict[str, Any]) -> tuple[dict[str, Any], threading.Event]:
        """Record a request and return the fault that applies to it."""
        with self.lock:
            self.records.append(record)
            self.total += 1
            fault = self.fault
            # A fault may name the one model it breaks; other models are served.
            body = record.get("body")
            asked = body.get("model") if isinstance(body, dict) else None
            if fault.get("model") is not None and fault["model"] != asked:
                return {"mode": "ok"}, self.release
            # A fault may break only one request in N.
            if fault.get("every", 1) > 1:
                self.matched += 1
                if self.matched % fault["every"]:
                    return {"mode": "ok"}, self.release
            if self.remaining is not None:

                self.remaining -= 1
                if self.remaining <= 0:
                    # Back to healthy, without waking requests still in the
                    # fault (a counted hang keeps hanging for its delay).
                    self.fault, self.remaining = {"mode": "ok"}, None
            return fault, self.release

    def fault_view(self) -> dict[str, Any]:
        with self.lock:
            view = dict(self.fault)
            if self.remaining is not None:
                view["count"] = self.remaining
            return view

    def stats(self) -> dict[str, Any]:
        return {"port": self.port, "fault": self.fault_view(), "requests": self.total}

    def requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r) for r in self.records]

    def clear(self) -> None:
        with self.lock:
            self.records.clear()
            self.total = 0

    def stop(self) -> None:
        with self.admin:
            self.stopping = True
            with self.lock:
                self.release.set()
            self.close()
            self.drop_connections(idle_only=False)


class _Aborted(Exception):
    """The connection was reset on purpose; stop handling it."""


class _VendorHandler(http.server.BaseHTTPRequestHandler):
    """One client connection to a vendor port (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "llm-failover-mock"
    sys_version = ""
    disable_nagle_algorithm = True  # each SSE event must leave at once
    vendor: _Vendor
    busy: bool

    # -- connection lifecycle ---------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.vendor = self.server.owner
        self.busy = False
        self.vendor.track(self)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, _Aborted):
            pass  # client went away, or we reset it on purpose

    def handle_one_request(self) -> None:
        if not self.vendor.mark_idle(self):
            self.close_connection = True
            return
        super().handle_one_request()

    def finish(self) -> None:
        self.vendor.untrack(self)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        if self.vendor.verbose:
            sys.stderr.write(f"[{self.vendor.name}] {format % args}\n")

    # -- low-level writing ------------------------------------------------

    def _abort(self) -> None:
        """Reset the connection: SO_LINGER 0 turns close() into an RST."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # The buffered reader holds a reference to the socket; while it is
        # open, socket.close() would not really close the descriptor.
        try:
            self.rfile.close()
        except OSError:
            pass
        self.connection.close()
        raise _Aborted

    def _head(self, status: int, headers: list[tuple[str, str]], fault: Mapping[str, Any] | None) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {_reason(status)}",
            f"date: {email.utils.formatdate(usegmt=True)}",
            f"server: {self.server_version}",
            f"x-mock-vendor: {self.vendor.name}",
        ]
        merged = dict((k.lower(), (k, v)) for k, v in headers)
        for name, value in ((fault or {}).get("headers") or {}).items():
            if name.lower() not in _FRAMING_HEADERS:
                merged[name.lower()] = (name, value)
        lines += [f"{k}: {v}" for k, v in merged.values()]
        if self.close_connection:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        headers: list[tuple[str, str]],
        fault: Mapping[str, Any] | None = None,
        content_length: int | None = None,
    ) -> None:
        # Head and body in one write: two small writes can cost a delayed ACK.
        length = len(payload) if content_length is None else content_length
        all_headers = [("content-type", content_type), ("content-length", str(length)), *headers]
        head = self._head(status, all_headers, fault)
        self.wfile.write(head if self.command == "HEAD" else head + payload)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _pause(self, release: threading.Event, seconds: float | None, forever: bool = False) -> None:
        """Sleep ``seconds`` (None: not at all, or until released if
        ``forever``). A heal, a new fault or stop() cuts it short; once the
        server is stopping the connection is reset instead of carrying on."""
        if seconds is None and forever:
            release.wait()
        elif seconds:
            release.wait(seconds)
        if self.vendor.stopping:
            self._abort()

    # -- request handling ---------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ConnectionError("bad chunked request body") from None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:
            raise ConnectionError("client closed before sending its body")
        return body

    def _dispatch(self) -> None:
        vendor = self.vendor
        if not vendor.mark_busy(self):
            self._abort()  # arrived while the port was being closed
        raw = self._read_body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        record = {"method": self.command, "path": self.path, "headers": headers, "body": body, "time": time.time()}
        fault, release = vendor.take(record)
        self._serve(fault, release, body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch

    def _serve(self, fault: dict[str, Any], release: threading.Event, body: Any) -> None:
        mode = fault["mode"]
        path = self.path.split("?", 1)[0]
        # Vendors serve these APIs under prefixes of their own
        # (/openai/v1/chat/completions): the ending decides.
        fmt = "anthropic" if path.endswith(ANTHROPIC_PATH) else "openai"
        self._pause(release, fault.get("latency"))

        if mode == "reset":
            self._pause(release, fault.get("delay"))
            self._abort()
        if mode == "hang":
            self._pause(release, fault.get("delay"), forever=True)
            self.close_connection = True  # then a plain close, nothing sent
            return
        if mode == "slow_first_byte":
            self._pause(release, fault.get("delay", 1.0))
        if mode == "status":
            self._pause(release, fault.get("delay"))
            self._send_error(fmt, fault["status"], fault)
            return

        if self.command != "POST" or not path.endswith((OPENAI_PATH, ANTHROPIC_PATH)):

            self._send_error("openai", 404, message=f"Unknown request URL: {self.command} {path}")
            return
        if not isinstance(body, dict):
            self._send_error(fmt, 400, message="The request body must be a JSON object.")
            return
        stream = body.get("stream") is True
        if mode == "stream_error" and not stream:
            self._pause(release, fault.get("delay"))
            self._send_error(fmt, fault.get("status", 500), fault)
            return

        model = body.get("model") if isinstance(body.get("model"), str) else "mock-model"
        tokens = count_prompt_tokens(body)
        content = self.vendor.content
        prefix = prefill_of(body)
        if prefix is not None:
            # Asked to continue an answer: what is left of this vendor's own,
            # or a marker when the answer so far is not the start of it.
            if fault.get("prefill") == "reject":
                self._send_error(fmt, 400, message="This model does not support assistant message prefill.")
                return
            if fmt == "anthropic" and prefix != prefix.rstrip():
                self._send_error(fmt, 400, message="final assistant content cannot end with trailing whitespace")
                return
            content = content[len(prefix):] if content.startswith(prefix) else " [continued]"
        if fmt == "openai":
            if stream:
                options = body.get("stream_options")
                usage = isinstance(options, dict) and options.get("include_usage") is True
                self._stream(fmt, *openai_stream(model, content, tokens, usage), fault, release)
            else:
                self._answer(fmt, openai_completion(model, content, tokens), fault, release)
        else:
            if stream:
                self._stream(fmt, *anthropic_stream(model, content, tokens), fault, release)
            else:
                self._answer(fmt, anthropic_message(model, content, tokens), fault, release)

    def _id_header(self, fmt: str, request_id: str | None = None) -> tuple[str, str]:
        request_id = request_id or _new_id("req_")
        return ("request-id" if fmt == "anthropic" else "x-request-id", request_id)

    def _send_error(
        self, fmt: str, status: int, fault: Mapping[str, Any] | None = None, message: str | None = None
    ) -> None:
        fault = fault or {}
        request_id = None
        if "body" in fault:
            custom = fault["body"]
            if isinstance(custom, str):
                payload = custom.encode()
                try:
                    json.loads(custom)
                    ctype = "application/json"
                except ValueError:
                    ctype = "text/plain; charset=utf-8"
            else:
                payload, ctype = json.dumps(custom).encode(), "application/json"
        else:
            message = message or f"{self.vendor.name} mock: simulated {status} {_reason(status).lower()}"
            if fmt == "anthropic":
                error = anthropic_error(status, message)
                request_id = error["request_id"]  # the header repeats it, as Anthropic's does
            else:
                error = openai_error(status, message)
            payload, ctype = json.dumps(error).encode(), "application/json"
        self._send(status, payload, ctype, [self._id_header(fmt, request_id)], fault)

    def _answer(self, fmt: str, answer: dict[str, Any], fault: dict[str, Any], release: threading.Event) -> None:
        """A non-streamed 200, possibly broken by the fault."""
        mode = fault["mode"]
        payload = json.dumps(answer).encode()
        headers = [self._id_header(fmt)]
        if mode == "truncate":
            # Promise more than we send, then close: the client sees a short body.
            self.close_connection = True
            self._send(200, payload, "application/json", headers, fault, content_length=len(payload) + 64)
            return
        if mode in ("reset_mid_stream", "stall"):
            half = len(payload) // 2
            self._send(200, payload[:half], "application/json", headers, fault, content_length=len(payload))
            if mode == "reset_mid_stream":
                self._pause(release, fault.get("delay"))
                self._abort()
            self._pause(release, fault.get("delay"), forever=True)  # stall, then finish
            self.wfile.write(payload[half:])
            return
        self._send(200, payload, "application/json", headers, fault)

    def _stream(
        self, fmt: str, events: list[bytes], cut: int, fault: dict[str, Any], release: threading.Event
    ) -> None:
        """An SSE answer, one HTTP chunk per event, possibly broken by the fault."""
        mode = fault["mode"]
        interval = fault.get("interval")
        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            ("transfer-encoding", "chunked"),
            self._id_header(fmt),
        ]
        self.wfile.write(self._head(200, headers, fault))
        if self.command == "HEAD":
            return

        def emit(batch: list[bytes]) -> None:
            for event in batch:
                self._chunk(event)
                self._pause(release, interval)

        if mode not in ("stream_error", "truncate", "reset_mid_stream", "stall"):
            emit(events)
            self._end_chunks()
            return

        # Never let the fault's cut include the terminal marker.
        cut = min(fault.get("events", cut), len(events) - 1)
        emit(events[:cut])
        if mode == "stall":
            self._pause(release, fault.get("delay"), forever=True)
            emit(events[cut:])
            self._end_chunks()
            return
        self._pause(release, fault.get("delay"))
        if mode == "reset_mid_stream":
            self._abort()
        if mode == "stream_error":
            if fmt == "anthropic":
                error = {
                    "type": "error",
                    "error": {
                        "type": fault.get("error_type", "overloaded_error"),
                        "message": fault.get("message", "Overloaded"),
                    },
                }
                self._chunk(sse(error, "error"))
            else:
                message = fault.get("message", f"{self.vendor.name} mock: simulated error mid-stream")
                error = openai_error(500, message)
                error["error"]["type"] = fault.get("error_type", "server_error")
                self._chunk(sse(error))
        self._end_chunks()  # truncate: a clean end, minus the terminal marker


# --------------------------------------------------------------------------
# Control port
# --------------------------------------------------------------------------


class _ControlHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llm-failover-mock-control"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            pass

    def _reply(self, status: int, obj: Any) -> None:
        payload = json.dumps(obj, indent=None).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _route(self) -> None:
        mock: MockVendors = self.server.owner
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        method = self.command
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as err:
            self._reply(400, {"ok": False, "error": f"body is not JSON: {err}"})
            return
        try:
            if parts == ["vendors"] and method == "GET":
                self._reply(200, mock.snapshot())
            elif parts == ["reset"] and method == "POST":
                mock.reset()
                self._reply(200, {"ok": True})
            elif len(parts) >= 2 and parts[0] == "vendors":
                name, action = parts[1], parts[2:]
                if name not in mock.ports:
                    self._reply(404, {"ok": False, "error": f"no vendor named {name!r}"})
                elif action == [] and method == "GET":
                    self._reply(200, mock.stats(name))
                elif action == ["requests"] and method == "GET":
                    self._reply(200, mock.requests(name))
                elif action == ["fault"] and method == "POST":
                    mock.set_fault(name, body)
                    self._reply(200, {"ok": True})
                elif action == ["heal"] and method == "POST":
                    mock.heal(name)
                    self._reply(200, {"ok": True})
                elif action == ["content"] and method == "POST":
                    if not isinstance(body, dict) or not isinstance(body.get("content"), str):
                        self._reply(400, {"ok": False, "error": 'expected {"content": "..."}'})
                    else:
                        mock.set_content(name, body["content"])
                        self._reply(200, {"ok": True})
                else:
                    self._reply(404, {"ok": False, "error": f"no route for {method} {self.path}"})
            else:
                self._reply(404, {"ok": False, "error": f"no route for {method} {self.path}"})
        except FaultError as err:
            self._reply(400, {"ok": False, "error": str(err)})

    do_GET = do_POST = do_PUT = do_DELETE = _route


# --------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------


class MockVendors:
    """Several mock vendors plus a control port, served from daemon threads.

    >>> mock = MockVendors({"anthropic": 0, "openai": 0}).start()
    >>> mock.set_fault("anthropic", mode="status", status=529, count=3)
    >>> mock.stop()
    """

    def __init__(
        self,
        vendors: Mapping[str, int],
        control_port: int | None = 0,
        host: str = "127.0.0.1",
        content: Mapping[str, str] | None = None,
        verbose: bool = False,
    ):
        """``control_port=None`` runs without a control port."""
        if not vendors:
            raise ValueError("at least one vendor is needed")
        for name in vendors:
            if not name or "/" in name or "=" in name:
                raise ValueError(f"bad vendor name {name!r}")
        content = content or {}
        self.host = host
        self._vendors = {
            name: _Vendor(name, port, host, content.get(name, f"Hello from {name}"), verbose)
            for name, port in vendors.items()
        }
        self._control_port = control_port
        self._control: _Server | None = None
        self._control_thread: threading.Thread | None = None
        self._started = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> MockVendors:
        try:
            for vendor in self._vendors.values():
                vendor.open()
            if self._control_port is not None:
                self._control = _Server((self.host, self._control_port), _ControlHandler, self)
                self._control_port = self._control.server_address[1]
                self._control_thread = threading.Thread(
                    target=self._control.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name="mock-control",
                    daemon=True,
                )
                self._control_thread.start()
        except BaseException:
            self.stop()
            raise
        self._started = True
        return self

    def stop(self) -> None:
        for vendor in self._vendors.values():
            vendor.stop()
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
            self._control = None
        self._started = False

    def __enter__(self) -> MockVendors:
        return self if self._started else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------

    @property
    def ports(self) -> dict[str, int]:
        """Vendor name -> port (the real one once started)."""
        return {name: v.port for name, v in self._vendors.items()}

    @property
    def control_port(self) -> int | None:
        return self._control_port

    def url(self, name: str) -> str:
        """``http://host:port`` of a vendor (no path)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._vendor(name).port}"

    # -- faults and records --------------------------------------------------

    def _vendor(self, name: str) -> _Vendor:
        try:
            return self._vendors[name]
        except KeyError:
            raise KeyError(f"no vendor named {name!r}") from None

    def set_fault(self, name: str, fault: Mapping[str, Any] | None = None, /, **fields: Any) -> None:
        """``set_fault("openai", mode="status", status=503, count=2)``, or pass
        a fault dict as the second argument. Raises ``FaultError`` if invalid."""
        self._vendor(name).set_fault({**(fault or {}), **fields})

    def heal(self, name: str) -> None:
        """Back to healthy; reopens a refused port and wakes hung requests."""
        self._vendor(name).set_fault(None)

    def set_content(self, name: str, content: str) -> None:
        """The text every healthy answer of this vendor carries."""
        self._vendor(name).content = content

    def stats(self, name: str) -> dict[str, Any]:
        """``{"port": .., "fault": {..}, "requests": N}``; ``count`` in the
        fault is what remains of a counted fault."""
        return self._vendor(name).stats()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``stats`` of every vendor, keyed by name (``GET /vendors``)."""
        return {name: v.stats() for name, v in self._vendors.items()}

    def requests(self, name: str) -> list[dict[str, Any]]:
        """The last requests seen, oldest first."""
        return self._vendor(name).requests()

    def reset(self) -> None:
        """Heal every vendor and forget all requests."""
        for vendor in self._vendors.values():
            vendor.set_fault(None)
            vendor.clear()


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vendors.py",
        description="Serve mock LLM vendors (OpenAI and Anthropic wire formats) with switchable faults.",
        epilog="Control them with: vendors.py ctl --help",
    )
    parser.add_argument(
        "--vendor", action="append", type=_name_value, metavar="NAME=PORT",
        help="a vendor and its port (0: any free port); repeatable; "
        "default anthropic=18001 openai=18002 xai=18003",
    )
    parser.add_argument("--control", type=int, default=DEFAULT_CONTROL_PORT, metavar="PORT",
                        help=f"control port (default {DEFAULT_CONTROL_PORT}; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--content", action="append", type=_name_value, default=[], metavar="NAME=TEXT",
                        help="answer text of a vendor (default 'Hello from NAME')")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    vendors: dict[str, int] = {}
    for name, port in args.vendor or DEFAULT_VENDORS.items():
        try:
            vendors[name] = int(port)
        except ValueError:
            parser.error(f"bad port for vendor {name!r}: {port!r}")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    mock = MockVendors(vendors, args.control, args.host, dict(args.content), args.verbose)
    try:
        mock.start()
    except OSError as err:
        print(f"vendors.py: cannot listen: {err}", file=sys.stderr)
        return 1
    print("READY " + json.dumps({"control": mock.control_port, "vendors": mock.ports}), flush=True)
    try:
        while not stop.wait(0.5):  # a timed wait keeps signals prompt
            pass
    finally:
        mock.stop()
    return 0


def _control_call(host: str, port: int, method: str, path: str, body: Any = None) -> Any:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"content-type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read() or b"null")
    finally:
        conn.close()
    if response.status != 200:
        message = data.get("error") if isinstance(data, dict) else data
        raise SystemExit(f"vendors.py ctl: {method} {path}: {response.status}: {message}")
    return data


def ctl_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vendors.py ctl", description="Drive running mock vendors.")
    parser.add_argument("--control", type=int, default=DEFAULT_CONTROL_PORT, metavar="PORT",
                        help=f"control port (default {DEFAULT_CONTROL_PORT})")
    parser.add_argument("--host", default="127.0.0.1")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="table of vendors, ports, faults and requests seen")
    brk = sub.add_parser(
        "break", help="inject a fault",
        description="WHAT is an HTTP status (mode status), a mode name "
        f"({', '.join(MODES)}) or a full fault as JSON.",
    )
    brk.add_argument("vendor")
    brk.add_argument("what")
    brk.add_argument("--count", type=int, help="only the next N requests")
    brk.add_argument("--delay", type=float, help="seconds (meaning depends on the mode)")
    brk.add_argument("--latency", type=float, help="seconds before acting on each request")
    heal = sub.add_parser("heal", help="make a vendor healthy again")
    heal.add_argument("vendor")
    sub.add_parser("reset", help="heal all vendors and clear their records")
    reqs = sub.add_parser("requests", help="print the requests a vendor recorded (JSON)")
    reqs.add_argument("vendor")
    reqs.add_argument("--last", type=int, default=10, help="how many (default 10; 0: all)")
    args = parser.parse_args(argv)

    def call(method: str, path: str, body: Any = None) -> Any:
        try:
            return _control_call(args.host, args.control, method, path, body)
        except OSError as err:
            raise SystemExit(f"vendors.py ctl: cannot reach {args.host}:{args.control}: {err}") from None

    if args.command == "status":
        rows = [("VENDOR", "PORT", "FAULT", "REQUESTS")]
        for name, info in call("GET", "/vendors").items():
            rows.append((name, str(info["port"]), describe_fault(info["fault"]), str(info["requests"])))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    elif args.command == "break":
        what = args.what.strip()
        if what.isdigit():
            fault: dict[str, Any] = {"mode": "status", "status": int(what)}
        elif what.startswith("{"):
            try:
                fault = json.loads(what)
            except ValueError as err:
                raise SystemExit(f"vendors.py ctl: bad fault JSON: {err}") from None
        else:
            fault = {"mode": what}
        for key in ("count", "delay", "latency"):
            if getattr(args, key) is not None:
                fault[key] = getattr(args, key)
        call("POST", f"/vendors/{args.vendor}/fault", fault)
        print(f"{args.vendor}: {describe_fault(normalize_fault(fault))}")
    elif args.command == "heal":
        call("POST", f"/vendors/{args.vendor}/heal")
        print(f"{args.vendor}: ok")
    elif args.command == "reset":
        call("POST", "/reset")
        print("all vendors healed, records cleared")
    elif args.command == "requests":
        records = call("GET", f"/vendors/{args.vendor}/requests")
        print(json.dumps(records[-args.last:] if args.last else records, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        return ctl_main(argv[1:])
    return serve_main(argv)


if __name__ == "__main__":
    sys.exit(main())
