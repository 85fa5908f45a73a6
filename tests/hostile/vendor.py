#!/usr/bin/env python3
"""The hostile vendor: a raw-socket asyncio HTTP/1.1 server that stands in
for every vendor cluster (one port per vendor), records everything it
receives and answers each request with a behaviour drawn from the seed.

For each request it writes one JSON line to the records file: the vendor,
the request id the client put in `x-hostile-id`, every request header as
raw bytes (latin-1 in JSON), credential markers found anywhere in the
headers, the body's length, hash and top-level `model` values, and the
behaviour it chose (with `cut`: whether the answer it sends is cut).

The behaviour of the k-th request a vendor sees for a request id is drawn
from Random(f"{seed}|{vendor}|{rid}|{k}"), so the same request meets the
same vendor behaviour in every run with that seed (which vendor it meets
depends on the filter's health decisions, which depend on timing).

    vendor.py --seed S --records FILE   (prints READY {"anthropic": port, ...})
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mock"))

from common import (  # noqa: E402
    ALLOWED_MODELS,
    CALM_SCALE,
    ANSWER_HEADER,
    FORGED_MARK,
    ID_HEADER,
    MARKER_PREFIX,
    MARKER_RE,
    VENDOR_KEYS,
    VENDOR_NAME_HEADER,
    VENDORS,
    latin1,
    stormy,
    top_level_models,
)
from vendors import (  # noqa: E402  (the e2e mock's wire formats)
    anthropic_error,
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_error,
    openai_stream,
    sse,
)

sys.setrecursionlimit(60000)  # 10,000-level JSON bodies

MAX_HEAD = 1 << 20
BIG_ERROR_BYTES = 10 * 1024 * 1024
HUGE_EVENT_BYTES = 1_100_000
ANSWER_DEADLINE = 12.0  # no answer takes longer than this (hang included)

# --------------------------------------------------------------------------
# Behaviours: (name, weight for a streamed request, weight for a plain one)
# `cut` behaviours send an answer that is cut (no end marker, shorter than
# declared, or reset mid-body).
# --------------------------------------------------------------------------

BEHAVIOURS: list[tuple[str, float, float]] = [
    # complete answers
    ("json_ok", 3, 30),
    ("sse_ok", 30, 3),
    ("sse_bytewise", 4, 0.5),
    ("sse_random_split", 5, 0.5),
    ("sse_huge_event", 1.5, 0.2),
    ("slow_first_byte", 2, 2),
    ("trickle", 2, 2),
    ("interim_1xx", 0.7, 0.7),
    # cut answers
    ("json_half_fin", 0.5, 3),
    ("json_half_rst", 0.5, 3),
    ("json_cl_overdeclared", 0.3, 2),
    ("json_chunked_unterminated", 0.3, 2),
    ("sse_cut_clean", 5, 0.8),  # framing complete, end marker missing
    ("sse_cut_unterminated", 2, 0.3),  # chunked without its last chunk, then FIN
    ("sse_cut_rst", 4, 0.6),
    ("sse_rst_first", 3, 0.4),  # 200 headers, then RST before any event
    ("sse_fin_first", 1.5, 0.2),  # 200 headers, then a clean end with no event
    ("sse_bytewise_cut", 1.5, 0.2),
    ("sse_huge_event_cut", 0.7, 0.1),
    ("sse_cl_short", 2, 0.3),  # content-length covers only part: no end marker inside it
    ("sse_cl_long", 1.5, 0.2),  # content-length larger than the whole stream, then FIN
    ("sse_cl_exact_cut", 1.5, 0.2),  # content-length exact, no end marker
    # errors inside 200 streams
    ("sse_error_first", 3, 0.4),
    ("sse_error_mid", 3, 0.4),
    # error statuses
    ("status_429", 3, 3),
    ("status_500", 2, 2),
    ("status_503", 2, 2),
    ("status_529", 2, 2),
    ("status_401", 1, 1),
    ("status_400_ctx", 1.5, 1.5),
    ("status_400", 1, 1),
    ("status_big", 1, 1),  # 429/500/503/529/401/400 with a 10 MB body
    # broken connections and protocol
    ("conn_rst", 1, 1),
    ("conn_fin", 1, 1),
    ("garbage", 1, 1),
    ("hang", 0.3, 0.3),
]

# Answers a vendor in good health gives (a 400 is the client's doing).
HEALTHY = {"json_ok", "sse_ok", "sse_bytewise", "sse_random_split", "sse_huge_event", "slow_first_byte", "trickle",
           "interim_1xx", "status_400"}

CUT = {
    "json_half_fin",
    "json_half_rst",
    "json_cl_overdeclared",
    "json_chunked_unterminated",
    "sse_cut_clean",
    "sse_cut_unterminated",
    "sse_cut_rst",
    "sse_rst_first",
    "sse_fin_first",
    "sse_bytewise_cut",
    "sse_huge_event_cut",
    "sse_cl_short",
    "sse_cl_long",
    "sse_cl_exact_cut",
}

# Failures before any byte of an answer could reach a client: the filter
# may rescue these.
PRE_BYTE_FAILURES = {
    "sse_rst_first",
    "sse_fin_first",
    "sse_error_first",
    "status_500",
    "status_503",
    "status_529",
    "status_401",
    "status_429",
    "status_400_ctx",
    "status_big",
    "conn_rst",
    "conn_fin",
    "garbage",
    "hang",
}

STATUS_REASONS = {
    200: "OK", 100: "Continue", 103: "Early Hints", 400: "Bad Request", 401: "Unauthorized",
    429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable", 529: "Overloaded",
}


class Answer:
    """What the vendor sends, built up piece by piece."""

    def __init__(self, rng: random.Random, vendor: str, answer_id: str, dialect: str):
        self.rng = rng
        self.vendor = vendor
        self.answer_id = answer_id
        self.dialect = dialect
        self.headers: list[tuple[bytes, bytes]] = []
        self.modifiers: list[str] = []
        self.status: int | None = 200
        self.sent: dict = {}

    def add_modifiers(self) -> None:
        """Hostile response headers, each with its own chance."""
        rng = self.rng
        if rng.random() < 0.15:
            self.modifiers.append("forge")
            self.headers += [
                (b"x-llm-failover-vendor", f"{FORGED_MARK}-{self.answer_id}".encode()),
                (b"x-llm-failover-attempts", b"99"),
                (b"x-llm-failover-tried", f"{FORGED_MARK},evil".encode()),
            ]
        if rng.random() < 0.10:
            self.modifiers.append("non_utf8")
            self.headers.append((b"x-hostile-bin", b"\xff\xfe\x80caf\xe9\xc3("))
        if rng.random() < 0.03:
            size = rng.choice([20_000, 40_000, 61_000, 90_000])
            self.modifiers.append(f"oversized_{size}")
            self.headers.append((b"x-hostile-big", b"B" * size))
        if rng.random() < 0.10:
            self.modifiers.append("duplicates")
            self.headers += [(b"x-hostile-dup", b"one"), (b"x-hostile-dup", b"two"), (b"X-Hostile-Dup", b"three")]
        if rng.random() < 0.05:
            self.modifiers.append("mixed_case")

    def head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {STATUS_REASONS.get(status, 'Whatever')}".encode()]
        all_headers = [
            (VENDOR_NAME_HEADER.encode(), self.vendor.encode()),
            (ANSWER_HEADER.encode(), self.answer_id.encode()),
            *headers,
            *self.headers,
        ]
        for name, value in all_headers:
            if "mixed_case" in self.modifiers:
                name = name.title()
            lines.append(name + b": " + value)
        return b"\r\n".join(lines) + b"\r\n\r\n"


def split_random(rng: random.Random, data: bytes, low: int, high: int) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.randint(low, high)
        out.append(data[i : i + n])
        i += n
    return out


class Conn:
    """One connection from Envoy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.ended = ""  # how the vendor ended the connection after its answer: fin | rst

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def rst(self) -> None:
        """Reset the connection (SO_LINGER 0), after letting what was
        written reach the peer."""
        try:
            await self.writer.drain()
            await asyncio.sleep(0.02)
        except (ConnectionError, OSError):
            pass
        self.ended = "rst"
        sock = self.writer.get_extra_info("socket")
        try:
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.writer.transport.abort()

    async def fin(self) -> None:
        self.ended = "fin"
        try:
            await self.writer.drain()
            if self.writer.can_write_eof():
                self.writer.write_eof()
            await asyncio.sleep(0.01)
        except (ConnectionError, OSError):
            pass
        self.writer.close()


class HostileVendor:
    def __init__(self, seed: int, records_path: Path):
        self.seed = seed
        self.records = open(records_path, "w", buffering=1 << 16)
        self.seen: dict[tuple[str, str], int] = {}
        self.order: dict[str, int] = {}
        self.servers: dict[str, asyncio.base_events.Server] = {}
        self.ports: dict[str, int] = {}
        self.count = 0
        self.big_error = {
            "openai": json.dumps(openai_error(503, "x" * BIG_ERROR_BYTES)).encode(),
            "anthropic": json.dumps(anthropic_error(503, "x" * BIG_ERROR_BYTES)).encode(),
        }

    async def start(self) -> None:
        for name in VENDORS:
            server = await asyncio.start_server(
                lambda r, w, n=name: self.serve(n, r, w), "127.0.0.1", 0, limit=MAX_HEAD, backlog=1024
            )
            self.servers[name] = server
            self.ports[name] = server.sockets[0].getsockname()[1]

    def close(self) -> None:
        for s in self.servers.values():
            s.close()
        self.records.flush()
        self.records.close()

    # -- reading requests ---------------------------------------------------

    async def read_request(self, reader: asyncio.StreamReader) -> dict | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head[:-4].split(b"\r\n")
        request_line = lines[0].split(b" ")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip(), value.strip()))
        req = {
            "method": latin1(request_line[0]),
            "path": latin1(request_line[1]) if len(request_line) > 1 else "",
            "headers": headers,
            "complete": True,
        }
        get = lambda n: next((v for k, v in headers if k.lower() == n), None)  # noqa: E731
        body = b""
        try:
            if b"chunked" in (get(b"transfer-encoding") or b"").lower():
                parts = []
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")
                        break
                    parts.append(await reader.readexactly(size))
                    await reader.readexactly(2)
                body = b"".join(parts)
            elif get(b"content-length") is not None:
                body = await reader.readexactly(int(get(b"content-length")))
        except asyncio.IncompleteReadError as e:
            body = e.partial
            req["complete"] = False
        except (ValueError, asyncio.LimitOverrunError):
            req["complete"] = False
        req["body"] = body
        return req

    # -- recording -----------------------------------------------------------

    def record(self, vendor: str, req: dict, behaviour: str, answer_id: str, rid: str, k: int, order: int,
               status: int | None, modifiers: list[str], asked_stream: bool) -> dict:
        headers = req["headers"]
        raw = b"\n".join(n + b": " + v for n, v in headers)
        markers = []
        if MARKER_PREFIX in raw.lower():
            for name, value in headers:
                for blob in (name, value):
                    for m in MARKER_RE.finditer(blob):
                        markers.append([latin1(name), latin1(m.group(0))])
                if MARKER_PREFIX in (name + value).lower() and not MARKER_RE.search(name + value):
                    markers.append([latin1(name), latin1((name + value)[:120])])
        own_key = VENDOR_KEYS[vendor].encode()
        foreign = [v for v, key in VENDOR_KEYS.items() if v != vendor and key.encode() in raw]
        body = req["body"]
        models = top_level_models(body) if body[:1] in (b"{", b" ", b"\n", b"\t", b"\r") else None
        rec = {
            "t": time.time(),
            "vendor": vendor,
            "rid": rid,
            "k": k,
            "order": order,
            "answer_id": answer_id,
            "behaviour": behaviour,
            "cut": behaviour in CUT,
            "status": status,
            "method": req["method"],
            "path": req["path"],
            "headers": [[latin1(n), latin1(v[:400]) + (f"...(+{len(v) - 400} bytes)" if len(v) > 400 else "")] for n, v in headers],
            "markers": markers,
            "own_key": own_key in raw,
            "foreign_keys": foreign,
            "body_len": len(body),
            "body_complete": req["complete"],
            "body_sha": hashlib.sha1(body).hexdigest()[:12],
            "body_head": latin1(body[:160]),
            "models": models,
            "model_bypass": self.model_bypass(vendor, models),
            "modifiers": modifiers,
            "asked_stream": asked_stream,
            "storm": rid.isdigit() and stormy(self.seed, int(rid)),
        }
        self.records.write(json.dumps(rec) + "\n")
        return rec

    @staticmethod
    def model_bypass(vendor: str, models: list | None) -> list:
        allowed = ALLOWED_MODELS.get(vendor)
        if allowed is None or not models:
            return []
        return [m for m in models if m not in allowed]

    # -- serving ---------------------------------------------------------------

    async def serve(self, vendor: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(reader, writer)
        try:
            while True:
                req = await self.read_request(reader)
                if req is None:
                    break
                keep = await asyncio.wait_for(self.answer(vendor, req, conn), ANSWER_DEADLINE)
                if not keep or not req["complete"]:
                    break
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ValueError):
            pass
        finally:
            try:
                writer.close()
            except (ConnectionError, OSError, RuntimeError):
                pass

    def choose(self, rng: random.Random, stream: bool, storm: bool) -> str:
        names = [b[0] for b in BEHAVIOURS]
        weights = [(b[1] if stream else b[2]) * (1 if storm or b[0] in HEALTHY else CALM_SCALE) for b in BEHAVIOURS]
        return rng.choices(names, weights)[0]

    async def answer(self, vendor: str, req: dict, conn: Conn) -> bool:
        rid = next((latin1(v) for n, v in req["headers"] if n.lower() == ID_HEADER.encode()), "-")
        k = self.seen.get((vendor, rid), 0)
        self.seen[(vendor, rid)] = k + 1
        order = self.order.get(rid, 0)
        self.order[rid] = order + 1
        self.count += 1
        rng = random.Random(f"{self.seed}|{vendor}|{rid}|{k}")
        body = req["body"]
        stream = False
        try:
            obj = json.loads(body) if body[:1] == b"{" else None
            stream = isinstance(obj, dict) and obj.get("stream") is True
        except (ValueError, RecursionError, UnicodeDecodeError):
            stream = b'"stream":true' in body.replace(b" ", b"")[:4096]
        asked_stream = stream
        # A vendor mostly answers in the request's own kind, sometimes not.
        if rng.random() < 0.08:
            stream = not stream
        storm = rid.isdigit() and stormy(self.seed, int(rid))
        behaviour = self.choose(rng, stream, storm)
        dialect = "anthropic" if "/messages" in req["path"] else "openai"
        if rng.random() < 0.05:
            dialect = "openai" if dialect == "anthropic" else "anthropic"
        answer_id = f"{vendor}:{rid}:{k}"
        a = Answer(rng, vendor, answer_id, dialect)
        if behaviour == "status_big":
            a.status = rng.choice([429, 500, 503, 529, 401, 400])
        elif behaviour.startswith("status_"):
            a.status = int(behaviour.split("_")[1])
        elif behaviour in ("conn_rst", "conn_fin", "garbage", "hang"):
            a.status = None
        a.add_modifiers()
        self.record(vendor, req, behaviour, answer_id, rid, k, order, a.status, a.modifiers, asked_stream)
        conn.ended = ""
        keep, error = False, ""
        try:
            keep = await self.perform(behaviour, a, conn)
        except (ConnectionError, OSError, asyncio.CancelledError) as e:
            error = type(e).__name__
            raise
        finally:
            self.records.write(json.dumps({"detail_for": answer_id, "sent": a.sent, "ended": conn.ended or ("keep" if keep else "close"),
                                           "error": error, "dialect": dialect}) + "\n")
        return keep

    # -- bodies -------------------------------------------------------------

    @staticmethod
    def words(rng: random.Random, n: int) -> str:
        pool = ["alpha", "bravo", "charlie", "delta", "echo", "fox", "golf", "hotel", "ünïcödé", "日本", "\"q\"", "\\b"]
        return " ".join(rng.choice(pool) for _ in range(n))

    def json_answer(self, a: Answer) -> bytes:
        text = self.words(a.rng, a.rng.randint(3, 40))
        if a.dialect == "anthropic":
            return json.dumps(anthropic_message("hostile-model", text, 10)).encode()
        return json.dumps(openai_completion("hostile-model", text, 10)).encode()

    def events(self, a: Answer, huge: bool = False) -> list[bytes]:
        text = self.words(a.rng, a.rng.randint(3, 25))
        if a.dialect == "anthropic":
            events, _ = anthropic_stream("hostile-model", text, 10)
            if huge:
                delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "H" * HUGE_EVENT_BYTES}}
                events.insert(4, sse(delta, "content_block_delta"))
        else:
            events, _ = openai_stream("hostile-model", text, 10, include_usage=a.rng.random() < 0.3)
            if huge:
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "hostile-model",
                         "choices": [{"index": 0, "delta": {"content": "H" * HUGE_EVENT_BYTES}, "finish_reason": None}]}
                events.insert(2, sse(chunk))
        if a.rng.random() < 0.2:
            # Keep-alive comments and CRLF line ends: both legal.
            events.insert(1, b": keep-alive\n\n")
        if a.rng.random() < 0.15 and not huge:
            events = [e.replace(b"\n", b"\r\n") for e in events]
        return events

    def error_event(self, a: Answer) -> bytes:
        if a.dialect == "anthropic":
            return sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")
        return sse({"error": {"message": "The server had an error", "type": "server_error", "code": None}})

    def error_body(self, a: Answer, status: int, message: str) -> bytes:
        if a.dialect == "anthropic":
            return json.dumps(anthropic_error(status, message)).encode()
        return json.dumps(openai_error(status, message)).encode()

    # -- writing -----------------------------------------------------------

    async def send(self, conn: Conn, a: Answer, status: int, ctype: bytes, pieces: list[bytes], framing: str,
                   delay: float = 0.0, extra: list[tuple[bytes, bytes]] | None = None,
                   declared: int | None = None, terminate: bool = True) -> None:
        """Head and body. framing: `cl` (content-length, `declared` or the
        true length), `chunked` (each piece one chunk; the last chunk only
        if `terminate`), `close` (no length: the body ends at FIN)."""
        body_len = sum(len(p) for p in pieces)
        a.sent = {"status": status, "framing": framing, "bytes": body_len, "terminated": terminate,
                  "declared": (body_len if declared is None else declared) if framing == "cl" else None}
        headers = [(b"content-type", ctype)] + (extra or [])
        if framing == "cl":
            headers.append((b"content-length", str(body_len if declared is None else declared).encode()))
        elif framing == "chunked":
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            headers.append((b"connection", b"close"))
        head = a.head(status, headers)
        if not pieces:
            await conn.write(head + (b"0\r\n\r\n" if framing == "chunked" and terminate else b""))
            return
        first = True
        for p in pieces:
            data = b"%x\r\n%s\r\n" % (len(p), p) if framing == "chunked" else p
            await conn.write(head + data if first else data)
            first = False
            if delay:
                await asyncio.sleep(delay)
        if framing == "chunked" and terminate:
            await conn.write(b"0\r\n\r\n")

    async def perform(self, behaviour: str, a: Answer, conn: Conn) -> bool:
        """Sends the answer; returns whether the connection may be reused."""
        rng = a.rng
        sse_type = b"text/event-stream" if rng.random() < 0.9 else b"text/event-stream; charset=utf-8"
        json_type = b"application/json"
        framing = rng.choices(["cl", "chunked", "close"], [5, 4, 1])[0]
        sse_framing = rng.choices(["chunked", "close", "cl"], [7, 1.5, 1.5])[0]
        keep = framing != "close"

        if behaviour == "json_ok":
            await self.send(conn, a, 200, json_type, [self.json_answer(a)], framing)
            return keep
        if behaviour == "slow_first_byte":
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            inner = "sse_ok" if rng.random() < 0.5 else "json_ok"
            return await self.perform(inner, a, conn)
        if behaviour == "interim_1xx":
            await conn.write(b"HTTP/1.1 100 Continue\r\n\r\n" if rng.random() < 0.5 else b"HTTP/1.1 103 Early Hints\r\nlink: </x>; rel=preload\r\n\r\n")
            inner = "sse_ok" if rng.random() < 0.5 else "json_ok"
            return await self.perform(inner, a, conn)
        if behaviour == "trickle":
            body = self.json_answer(a) if rng.random() < 0.5 else b"".join(self.events(a))
            ctype = json_type if body[:1] == b"{" else sse_type
            pieces = split_random(rng, body, max(1, len(body) // 20), max(2, len(body) // 10))
            await self.send(conn, a, 200, ctype, pieces, framing, delay=min(0.08, 1.5 / max(1, len(pieces))))
            return keep
        if behaviour in ("sse_ok", "sse_bytewise", "sse_random_split", "sse_huge_event"):
            events = self.events(a, huge=behaviour == "sse_huge_event")
            data = b"".join(events)
            if behaviour == "sse_bytewise":
                pieces = [data[i : i + 1] for i in range(len(data))]
                await self.send_paced(conn, a, sse_type, pieces, sse_framing, every=8)
            elif behaviour == "sse_random_split":
                pieces = split_random(rng, data, 1, 64)
                await self.send_paced(conn, a, sse_type, pieces, sse_framing, every=4)
            else:
                await self.send(conn, a, 200, sse_type, events, sse_framing)
            return sse_framing != "close"

        # -- cut JSON --------------------------------------------------------
        if behaviour in ("json_half_fin", "json_half_rst"):
            body = self.json_answer(a)
            cut = rng.randint(1, len(body) - 1)
            if framing == "chunked":
                await self.send(conn, a, 200, json_type, [body[:cut]], "chunked", terminate=False)
            else:
                await self.send(conn, a, 200, json_type, [body[:cut]], "cl", declared=len(body))
            await (conn.fin() if behaviour == "json_half_fin" else conn.rst())
            return False
        if behaviour == "json_cl_overdeclared":
            body = self.json_answer(a)
            await self.send(conn, a, 200, json_type, [body], "cl", declared=len(body) + rng.randint(1, 500))
            await conn.fin()
            return False
        if behaviour == "json_chunked_unterminated":
            body = self.json_answer(a)
            await self.send(conn, a, 200, json_type, [body], "chunked", terminate=False)
            await conn.fin()
            return False

        # -- cut streams -----------------------------------------------------
        if behaviour in ("sse_cut_clean", "sse_cut_unterminated", "sse_cut_rst", "sse_bytewise_cut",
                         "sse_huge_event_cut", "sse_cl_short", "sse_cl_long", "sse_cl_exact_cut"):
            events = self.events(a, huge=behaviour == "sse_huge_event_cut")
            data = b"".join(events)
            end = self.end_marker_at(data, a.dialect)
            # Cut somewhere before the end marker: at an event boundary or mid-event.
            if rng.random() < 0.5:
                bounds = [i for i in range(1, end) if data[i - 1 : i] == b"\n" and data[i - 2 : i] in (b"\n\n", b"\r\n")]
                cut = rng.choice(bounds) if bounds else end // 2
            else:
                cut = rng.randint(1, end - 1)
            part = data[:cut]
            if behaviour == "sse_cut_clean":
                f = rng.choice(["chunked", "close", "cl"])
                await self.send(conn, a, 200, sse_type, split_random(rng, part, 50, 400), f)
                if f == "close":
                    await conn.fin()
                    return False
                return True
            if behaviour == "sse_cut_unterminated":
                await self.send(conn, a, 200, sse_type, split_random(rng, part, 50, 400), "chunked", terminate=False)
                await conn.fin()
                return False
            if behaviour == "sse_cut_rst":
                await self.send(conn, a, 200, sse_type, split_random(rng, part, 50, 400), sse_framing, terminate=False,
                                declared=len(data) if sse_framing == "cl" else None)
                await conn.rst()
                return False
            if behaviour == "sse_bytewise_cut":
                pieces = [part[i : i + 1] for i in range(len(part))]
                await self.send_paced(conn, a, sse_type, pieces, "chunked", every=8, terminate=rng.random() < 0.5)
                await (conn.fin() if rng.random() < 0.5 else conn.rst())
                return False
            if behaviour == "sse_huge_event_cut":
                # Cut after the huge event (it is before the end), cleanly.
                huge_end = data.find(b"\n\n", data.find(b"HHHH")) + 2  # huge streams use LF only
                part = data[: max(huge_end, 2)]
                await self.send(conn, a, 200, sse_type, split_random(rng, part, 60000, 300000), "chunked")
                return True
            if behaviour == "sse_cl_short":
                # The whole stream is written, but the length covers only `part`.
                await self.send(conn, a, 200, sse_type, [data], "cl", declared=len(part))
                return False
            if behaviour == "sse_cl_long":
                await self.send(conn, a, 200, sse_type, events, "cl", declared=len(data) + rng.randint(1, 2000))
                await conn.fin()
                return False
            if behaviour == "sse_cl_exact_cut":
                await self.send(conn, a, 200, sse_type, split_random(rng, part, 50, 400), "cl")
                return True
        if behaviour == "sse_rst_first":
            await self.send(conn, a, 200, sse_type, [], sse_framing if sse_framing != "cl" else "chunked", terminate=False)
            await conn.rst()
            return False
        if behaviour == "sse_fin_first":
            f = rng.choice(["chunked", "close"])
            await self.send(conn, a, 200, sse_type, [], f)
            if f == "close":
                await conn.fin()
                return False
            return True
        if behaviour in ("sse_error_first", "sse_error_mid"):
            events = self.events(a)
            at = 0 if behaviour == "sse_error_first" else rng.randint(1, len(events) - 2)
            out = events[:at] + [self.error_event(a)]
            await self.send(conn, a, 200, sse_type, out, sse_framing)
            return sse_framing != "close"

        # -- statuses ----------------------------------------------------------
        if behaviour.startswith("status_"):
            status = a.status
            if behaviour == "status_big":
                body = self.big_error[a.dialect]
                pieces = split_random(rng, body, 256 * 1024, 1024 * 1024)
            else:
                if behaviour == "status_400_ctx":
                    msg = ("This model's maximum context length is 8192 tokens (context_length_exceeded)"
                           if a.dialect == "openai" else "prompt is too long: 250000 tokens > 200000 maximum")
                else:
                    msg = f"hostile {status}"
                body = self.error_body(a, status, msg)
                if behaviour == "status_400_ctx" and a.dialect == "openai":
                    obj = json.loads(body)
                    obj["error"]["code"] = "context_length_exceeded"
                    body = json.dumps(obj).encode()
                pieces = [body]
            extra = []
            if status == 429:
                extra = rng.choice([[], [(b"retry-after", b"1")], [(b"retry-after-ms", b"400")],
                                    [(b"retry-after", b"Wed, 21 Oct 2015 07:28:00 GMT")],
                                    [(b"x-ratelimit-reset-requests", b"1s")], [(b"retry-after", b"\xff\xfe")]])
            try:
                await self.send(conn, a, status, json_type, pieces, framing, extra=extra)
            except (ConnectionError, OSError):
                return False
            return keep

        # -- connections -------------------------------------------------------
        if behaviour == "conn_rst":
            await conn.rst()
            return False
        if behaviour == "conn_fin":
            await conn.fin()
            return False
        if behaviour == "garbage":
            junk = rng.choice([
                b"\x00\xff\xfegarbage\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n{}",
                b"HTTP/1.1 999 Weird\r\ncontent-length: 2\r\n\r\n{}",
                b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 2\r\n\r\n{}",
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                b"HTTP/1.1 200",
            ])
            await conn.write(junk)
            await conn.fin()
            return False
        if behaviour == "hang":
            await asyncio.sleep(ANSWER_DEADLINE - 1)
            await conn.fin()
            return False
        raise AssertionError(behaviour)

    async def send_paced(self, conn: Conn, a: Answer, ctype: bytes, pieces: list[bytes], framing: str,
                         every: int, terminate: bool = True) -> None:
        """Pieces one write each, with a short sleep every few writes (a
        stream of a few hundred bytes takes well under 2 s)."""
        headers = [(b"content-type", ctype)]
        total = sum(len(p) for p in pieces)
        a.sent = {"status": 200, "framing": framing, "bytes": total, "terminated": terminate,
                  "declared": total if framing == "cl" else None, "paced": every}
        if framing == "cl":
            headers.append((b"content-length", str(total).encode()))
        elif framing == "chunked":
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            headers.append((b"connection", b"close"))
        await conn.write(a.head(200, headers))
        pause = min(0.004, 1.5 / max(1, len(pieces) / every))
        for i, p in enumerate(pieces):
            conn.writer.write(b"%x\r\n%s\r\n" % (len(p), p) if framing == "chunked" else p)
            if i % every == 0:
                await conn.writer.drain()
                await asyncio.sleep(pause)
        if framing == "chunked" and terminate:
            conn.writer.write(b"0\r\n\r\n")
        await conn.writer.drain()

    @staticmethod
    def end_marker_at(data: bytes, dialect: str) -> int:
        """Offset where the stream's end marker event begins (the first
        finish_reason chunk for OpenAI counts as an end too)."""
        if dialect == "anthropic":
            i = data.find(b"event: message_stop")
        else:
            i = data.find(b'"finish_reason":"')
            if i >= 0:
                i = data.rfind(b"data:", 0, i)
            else:
                i = data.find(b"data: [DONE]")
        return i if i > 1 else len(data)


async def main_async(args: argparse.Namespace) -> None:
    vendor = HostileVendor(args.seed, Path(args.records))
    await vendor.start()
    print("READY " + json.dumps(vendor.ports), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in vendor.servers.values():
        server.close()
    # Answers still under way (hangs, mostly) end before the records close.
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    vendor.close()
    print(f"STOPPED {vendor.count}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--records", required=True)
    args = p.parse_args()
    asyncio.run(main_async(args))
    os._exit(0)


if __name__ == "__main__":
    main()
