"""The hostile client: randomized requests from a seed, sent over raw
asyncio sockets (so header bytes, framing and pacing are the client's to
choose), and each answer read the way a strict HTTP/1.1 client reads it.

`plan(n, seed)` draws every request up front (cheap specs; bodies are built
when sent). `run(specs, port, concurrency)` sends them over keep-alive
connections (1 to 4 requests each) with at most `concurrency` connections
open, and returns one result per request.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field

from common import stormy, ANSWER_HEADER, CRED_HEADERS, FILTER_HEADERS, ID_HEADER, VENDOR_NAME_HEADER, json_verdict, sse_verdict

MAX_HEAD = 1 << 20
RESPONSE_DEADLINE = 15.0
BIG_MIN, BIG_MAX = 600 * 1024, 1200 * 1024  # over the filter's 512 KiB

OTHER_PATHS = [
    ("GET", "/v1/models"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/"),
    ("POST", "/v1/chat/completions?api-version=2024-01-01"),
    ("POST", "/v1/messages/count_tokens"),
    ("POST", "/v1beta/models/gemini-pro:streamGenerateContent?alt=sse"),
    ("POST", "/V1/CHAT/COMPLETIONS"),
    ("POST", "//v1/messages"),
    ("POST", "/v1/chat/completions/"),
]

MODELS = [
    ("claude-sonnet", 35), ("claude-opus", 15), ("long-doc", 8), ("gpt-4o", 14), ("grok-3", 6),
    ("*", 2), ("", 2), ("m" * 5000, 2), ("modèle-ünï-日本", 3), ("claude\u0000sonnet", 2), ("gpt-4.1", 3),
    ("grok-4", 2), ("claude-sonnet\r\nx-injected: 1", 2), ("../../etc/passwd", 1),
]

BODY_KINDS = [
    ("valid", 50), ("malformed", 6), ("dup_model", 7), ("escaped_key", 4), ("nonstring_model", 4),
    ("nested", 2), ("huge_cl", 3), ("huge_chunked", 3), ("unicode", 5), ("empty", 2), ("array", 2),
    ("non_utf8", 2),
]


@dataclass
class Spec:
    rid: int
    phase: str
    method: str
    path: str
    body_kind: str
    send: str  # cl | chunked | trickle | short | none
    stream: bool
    model: str
    header_kinds: list[str] = field(default_factory=list)
    trickle_s: float = 0.0
    give_up_s: float = 0.0
    oversize: int = 0
    storm: bool = False


def plan(n: int, seed: int, slow_share: float = 0.3) -> list[Spec]:
    """N request specs. The first (1 - slow_share) of them ("phase A") have
    bodies that all arrive within 0.8 s; the rest ("phase B") add trickles
    of up to 2 s and bodies shorter than declared that the client abandons
    after 1.5 to 2.5 s."""
    rng = random.Random(f"{seed}|plan")
    specs = []
    phase_b_from = int(n * (1 - slow_share))
    for rid in range(n):
        phase = "A" if rid < phase_b_from else "B"
        r = rng.random()
        if r < 0.45:
            method, path = "POST", "/v1/chat/completions"
        elif r < 0.83:
            method, path = "POST", "/v1/messages"
        else:
            method, path = rng.choice(OTHER_PATHS)
        if method == "POST" and rng.random() < 0.02:
            method = "GET"
        kind = rng.choices([k for k, _ in BODY_KINDS], [w for _, w in BODY_KINDS])[0]
        if method == "GET":
            kind, send = "none", "none"
        elif kind == "huge_cl":
            send = "cl"
        elif kind == "huge_chunked":
            send = "chunked"
        else:
            send = rng.choices(["cl", "chunked", "trickle", "short"], [75, 12, 8, 5])[0]
        s = Spec(
            rid=rid, phase=phase, method=method, path=path, body_kind=kind, send=send,
            stream=rng.random() < 0.5,
            model=rng.choices([m for m, _ in MODELS], [w for _, w in MODELS])[0],
            storm=stormy(seed, rid),
        )
        if send == "trickle":
            s.trickle_s = rng.uniform(0.2, 0.8) if phase == "A" else rng.uniform(1.1, 2.0)
        if send == "short":
            s.give_up_s = 0.7 if phase == "A" else rng.uniform(1.5, 2.5)
        hk = s.header_kinds
        for name, p in [("cred_case", 0.15), ("cred_dup", 0.10), ("cred_non_utf8", 0.05), ("non_utf8", 0.10),
                        ("client_routing", 0.05), ("forge_request", 0.03), ("no_ctype", 0.05),
                        ("anthropic_version", 0.3), ("expect_100", 0.02), ("oversized", 0.03)]:
            if rng.random() < p:
                hk.append(name)
        if "oversized" in hk:
            s.oversize = rng.choice([30_000, 50_000, 70_000])
        specs.append(s)
    return specs


# --------------------------------------------------------------------------
# Building a request
# --------------------------------------------------------------------------


def messages_body(path: str, model, stream: bool, content: str = "hi there") -> dict:
    if "/messages" in path:
        return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": content}], "stream": stream}
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}


def build_body(spec: Spec, seed: int) -> bytes:
    rng = random.Random(f"{seed}|body|{spec.rid}")
    k, path, model, stream = spec.body_kind, spec.path, spec.model, spec.stream
    if k == "none":
        return b""
    if k == "valid":
        return json.dumps(messages_body(path, model, stream), ensure_ascii=rng.random() < 0.5).encode()
    if k == "malformed":
        good = json.dumps(messages_body(path, model, stream)).encode()
        return rng.choice([
            good[: rng.randint(1, len(good) - 1)],
            good + b" trailing garbage",
            good[:-1] + b",}",
            b"hello, not json",
            b"{\"model\": \"claude-sonnet\", \"messages\": [}",
            b"{'model': 'claude-sonnet'}",
            b"{\"model\":\"claude-sonnet\",\"stream\":tru}",
        ])
    if k == "dup_model":
        evil = rng.choice(["grok-evil", "gpt-evil", "claude-opus-evil", "long-doc"])
        first, second = (model, evil) if rng.random() < 0.5 else (evil, model)
        msgs = json.dumps(messages_body(path, "X", stream)["messages"])
        extra = ', "max_tokens": 64' if "/messages" in path else ""
        return (f'{{"model": {json.dumps(first)}, "messages": {msgs}{extra}, '
                f'"stream": {json.dumps(stream)}, "model": {json.dumps(second)}}}').encode()
    if k == "escaped_key":
        msgs = json.dumps(messages_body(path, "X", stream)["messages"])
        extra = ', "max_tokens": 64' if "/messages" in path else ""
        if rng.random() < 0.5:
            return f'{{"mod\\u0065l": "escaped-evil", "messages": {msgs}{extra}, "stream": {json.dumps(stream)}}}'.encode()
        return (f'{{"model": {json.dumps(model)}, "messages": {msgs}{extra}, "stream": {json.dumps(stream)}, '
                f'"mod\\u0065l": "escaped-evil"}}').encode()
    if k == "nonstring_model":
        value = rng.choice([42, None, True, ["claude-sonnet"], {"name": "claude-sonnet"}, 1e309 if False else 1.5])
        return json.dumps(messages_body(path, value, stream)).encode()
    if k == "nested":
        depth = 10_000
        nest = "[" * depth + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
        msgs = json.dumps(messages_body(path, "X", stream)["messages"])
        if rng.random() < 0.5:
            return f'{{"model": {json.dumps(model)}, "messages": {msgs}, "deep": {nest}, "stream": {json.dumps(stream)}}}'.encode()
        return f'{{"deep": {nest}, "messages": {msgs}, "model": {json.dumps(model)}, "stream": {json.dumps(stream)}}}'.encode()
    if k in ("huge_cl", "huge_chunked"):
        size = rng.randint(BIG_MIN, BIG_MAX)
        return json.dumps(messages_body(path, model, stream, "z" * size)).encode()
    if k == "unicode":
        body = json.dumps(messages_body(path, model, stream, "héllo 🌍 \u2028 \ud7ff ﻿"), ensure_ascii=False).encode()
        return rng.choice([b"\xef\xbb\xbf" + body, b"  \n\t" + body + b"\n  ", body])
    if k == "empty":
        return b""
    if k == "array":
        return json.dumps([messages_body(path, model, stream)]).encode()
    if k == "non_utf8":
        return b'{"model": "claude-\xff\xfesonnet", "messages": [{"role": "user", "content": "\xc3\x28"}], "stream": ' + (
            b"true}" if stream else b"false}")
    raise AssertionError(k)


def cred_value(spec: Spec, header: str, tag: str = "") -> str:
    rng = random.Random(f"cred|{spec.rid}|{header}|{tag}")
    return f"hcred-{spec.rid}-{header}-{rng.getrandbits(32):08x}"


def build_head(spec: Spec, body: bytes, seed: int) -> tuple[bytes, list[str]]:
    """The request head, and the credential values it carries."""
    hk = spec.header_kinds
    headers: list[tuple[bytes, bytes]] = [(b"Host", b"hostile.test")]
    creds = []
    for h in CRED_HEADERS:
        value = cred_value(spec, h)
        creds.append(value)
        shown = {"authorization": "Bearer " + value, "proxy-authorization": "Basic " + value}.get(h, value)
        name = h.upper() if "cred_case" in hk and h in ("authorization", "x-api-key") else h
        raw = shown.encode()
        if "cred_non_utf8" in hk and h == "x-api-key":
            raw += b"\xff\xfe"
        headers.append((name.encode(), raw))
    if "cred_dup" in hk:
        for h in ("authorization", "x-api-key"):
            value = cred_value(spec, h, "dup")
            creds.append(value)
            headers.append((h.encode(), value.encode()))
    headers.append((ID_HEADER.encode(), str(spec.rid).encode()))
    if "no_ctype" not in hk and spec.method == "POST":
        headers.append((b"content-type", b"application/json"))
    if "non_utf8" in hk:
        headers.append((b"x-hostile-client-bin", b"\xff\xfe\x80\xc3("))
    if "client_routing" in hk:
        headers.append((b"x-llm-failover-cluster", b"xai"))
    if "forge_request" in hk:
        headers += [(b"x-llm-failover-vendor", b"client-forged"), (b"x-llm-failover-attempts", b"7")]
    if "anthropic_version" in hk and "/messages" in spec.path:
        headers.append((b"anthropic-version", b"2023-06-01"))
    if "expect_100" in hk and body:
        headers.append((b"expect", b"100-continue"))
    if "oversized" in hk:
        headers.append((b"x-hostile-client-big", b"C" * spec.oversize))
    if spec.send in ("cl", "trickle"):
        headers.append((b"content-length", str(len(body)).encode()))
    elif spec.send == "short":
        headers.append((b"content-length", str(len(body) + 100).encode()))
    elif spec.send == "chunked":
        headers.append((b"transfer-encoding", b"chunked"))
    head = f"{spec.method} {spec.path} HTTP/1.1\r\n".encode()
    head += b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    return head, creds


# --------------------------------------------------------------------------
# Reading an answer
# --------------------------------------------------------------------------


class Answer:
    def __init__(self):
        self.status = 0
        self.headers: list[tuple[str, bytes]] = []
        self.body = bytearray()
        self.outcome = "none"  # complete | incomplete | reset | timeout | closed | bad_head | gave_up | send_failed
        self.framing = ""
        self.note = ""
        self.interim: list[int] = []

    def get(self, name: str) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    def all(self, name: str) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


async def read_answer(reader: asyncio.StreamReader, a: Answer) -> None:
    """Reads one answer into `a` (raises on timeouts and resets; `a` keeps
    what was read)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            a.outcome = "closed" if not e.partial else "bad_head"
            a.note = repr(e.partial[:80])
            return
        except asyncio.LimitOverrunError:
            a.outcome = "bad_head"
            return
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            a.outcome = "bad_head"
            a.note = repr(head[:80])
            return
        a.status = int(parts[1])
        a.headers = []
        for line in lines[1:]:
            n, _, v = line.partition(b":")
            a.headers.append((n.strip().lower().decode("latin-1"), v.strip()))
        if 100 <= a.status < 200 and a.status != 101:
            a.interim.append(a.status)
            a.status = 0
            continue
        break
    te = (a.get("transfer-encoding") or b"").lower()
    cl = a.get("content-length")
    try:
        if a.status in (204, 304):
            a.framing = "none"
        elif b"chunked" in te:
            a.framing = "chunked"
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers, then the blank line.
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                a.body += await reader.readexactly(size)
                if await reader.readexactly(2) != b"\r\n":
                    a.outcome = "bad_chunk"
                    return
        elif cl is not None:
            a.framing = "cl"
            want = int(cl)
            while len(a.body) < want:
                chunk = await reader.read(min(1 << 20, want - len(a.body)))
                if not chunk:
                    raise asyncio.IncompleteReadError(bytes(a.body), want)
                a.body += chunk
        else:
            a.framing = "close"
            while True:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    break
                a.body += chunk
    except asyncio.IncompleteReadError as e:
        if a.framing == "chunked":
            a.body += e.partial
        a.outcome = "incomplete"
        return
    except ValueError:
        a.outcome = "bad_chunk"
        return
    a.outcome = "complete"


# --------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------


async def send_body(writer: asyncio.StreamWriter, spec: Spec, body: bytes, rng: random.Random) -> None:
    if spec.send == "cl" or spec.send == "none":
        writer.write(body)
        await writer.drain()
    elif spec.send == "chunked":
        i = 0
        while i < len(body):
            n = rng.randint(1, 64) if len(body) < 4096 else rng.randint(8 * 1024, 128 * 1024)
            piece = body[i : i + n]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            i += n
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    elif spec.send == "trickle" and body:
        pieces = max(2, min(20, len(body)))
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            writer.write(body[i : i + step])
            await writer.drain()
            await asyncio.sleep(spec.trickle_s / pieces)
    elif spec.send == "short":
        writer.write(body[: max(0, len(body) - rng.randint(0, len(body) // 2))])
        await writer.drain()


class Runner:
    def __init__(self, port: int, seed: int, concurrency: int):
        self.port = port
        self.seed = seed
        self.concurrency = concurrency
        self.results: dict[int, dict] = {}
        self.done = 0
        self.connections = 0

    async def run(self, specs: list[Spec], progress=None) -> dict[int, dict]:
        rng = random.Random(f"{self.seed}|conns|{specs[0].rid if specs else 0}")
        groups: list[list[Spec]] = []
        i = 0
        while i < len(specs):
            n = 1 if rng.random() < 0.5 else rng.randint(2, 4)
            groups.append(specs[i : i + n])
            i += n
        queue: asyncio.Queue = asyncio.Queue()
        for g in groups:
            queue.put_nowait(g)

        async def worker():
            while True:
                try:
                    g = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self.connection(g)
                if progress:
                    progress(self.done)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return self.results

    async def connection(self, group: list[Spec]) -> None:
        reader = writer = None
        for position, spec in enumerate(group):
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=MAX_HEAD)
                    self.connections += 1
                    position = 0
                except OSError as e:
                    self.results[spec.rid] = self.result(spec, Answer(), 0.0, position, note=f"connect: {e}")
                    self.results[spec.rid]["outcome"] = "connect_failed"
                    self.done += 1
                    continue
            keep, extra = await self.exchange(spec, reader, writer, position, last=position == len(group) - 1)
            self.done += 1
            if not keep:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def exchange(self, spec: Spec, reader, writer, position: int, last: bool) -> tuple[bool, bytes]:
        body = build_body(spec, self.seed)
        head, creds = build_head(spec, body, self.seed)
        rng = random.Random(f"{self.seed}|send|{spec.rid}")
        a = Answer()
        t0 = time.monotonic()
        # Anything left on the connection before this request is framing debris.
        debris = bytes(reader._buffer) if position > 0 else b""  # noqa: SLF001 (stdlib internals: no public peek)

        async def go():
            try:
                writer.write(head)
                await writer.drain()
                await send_body(writer, spec, body, rng)
            except (ConnectionError, OSError) as e:
                a.note = f"send: {type(e).__name__}"
            if spec.send == "short":
                try:
                    await asyncio.wait_for(read_answer(reader, a), spec.give_up_s)
                except asyncio.TimeoutError:
                    a.outcome = "gave_up"
                return
            await read_answer(reader, a)

        try:
            await asyncio.wait_for(go(), RESPONSE_DEADLINE + spec.trickle_s)
        except asyncio.TimeoutError:
            a.outcome = "timeout"
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, OSError) as e:
            a.outcome = "reset"
            a.note = type(e).__name__
        except Exception as e:  # noqa: BLE001 (a bug of this client must not end the run; it is counted)
            a.outcome = "client_bug"
            a.note = repr(e)[:200]
        elapsed = time.monotonic() - t0
        extra = b""
        if a.outcome == "complete":
            await asyncio.sleep(0)
            extra = bytes(reader._buffer)  # noqa: SLF001
            ctype = (a.get("content-type") or b"").lower()
            if not extra and last and a.status < 300 and b"event-stream" in ctype:
                try:
                    extra = await asyncio.wait_for(reader.read(65536), 0.03)
                except (asyncio.TimeoutError, ConnectionError, OSError):
                    extra = b""
        r = self.result(spec, a, elapsed, position)
        r["creds"] = creds
        r["debris_before"] = len(debris)
        r["extra_after"] = len(extra)
        if extra:
            r["extra_head"] = extra[:120].decode("latin-1")
        self.results[spec.rid] = r
        keep = (
            a.outcome == "complete"
            and not extra
            and (a.get("connection") or b"").lower() != b"close"
            and a.framing != "close"
        )
        return keep, extra

    def result(self, spec: Spec, a: Answer, elapsed: float, position: int, note: str = "") -> dict:
        ctype = (a.get("content-type") or b"").decode("latin-1")
        r = asdict(spec)
        r.pop("model")
        r["model"] = spec.model[:60]
        r.update({
            "status": a.status,
            "outcome": a.outcome,
            "note": note or a.note,
            "elapsed": round(elapsed, 4),
            "position": position,
            "ctype": ctype,
            "framing": a.framing,
            "body_len": len(a.body),
            "interim": a.interim,
            "answer": (a.get(ANSWER_HEADER) or b"").decode("latin-1"),
            "answered_by": (a.get(VENDOR_NAME_HEADER) or b"").decode("latin-1"),
            "filter_headers": {h: [v.decode("latin-1")[:200] for v in a.all(h)] for h in FILTER_HEADERS if a.all(h)},
        })
        if a.status and 200 <= a.status < 300 and "event-stream" in ctype.lower():
            r["sse"] = sse_verdict(bytes(a.body))
        elif a.status:
            r["json"] = json_verdict(bytes(a.body)) if len(a.body) < (16 << 20) else "huge"
        if a.status >= 300 or a.outcome != "complete":
            r["body_head"] = bytes(a.body[:200]).decode("latin-1")
        return r
