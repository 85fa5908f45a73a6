"""Self-test of the mock vendors (tests/mock/vendors.py): wire formats, every
fault mode, the control port, the command line, and the official SDKs parsing
the answers. Standard library plus pytest; runs in a few seconds."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from vendors import FaultError, MockVendors  # noqa: E402

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
OPENAI_BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "Say hello"}]}
ANTHROPIC_BODY = {"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture(scope="module")
def mock():
    m = MockVendors({"anthropic": 0, "openai": 0, "xai": 0}).start()
    yield m
    m.stop()


@pytest.fixture(autouse=True)
def clean(mock):
    mock.reset()
    yield


# -- helpers -----------------------------------------------------------------


def connect(port: int, timeout: float = 5) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def call(port_or_conn, path: str, body=None, method: str = "POST", timeout: float = 5):
    """One request; returns (response, raw body bytes)."""
    conn = port_or_conn if isinstance(port_or_conn, http.client.HTTPConnection) else connect(port_or_conn, timeout)
    payload = json.dumps(body) if body is not None else None
    conn.request(method, path, body=payload, headers={"content-type": "application/json"})
    response = conn.getresponse()
    return response, response.read()


def parse_sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per event; every event must end with a blank line."""
    text = raw.decode()
    assert text.endswith("\n\n"), text[-80:]
    events = []
    for block in text.split("\n\n")[:-1]:
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        events.append((name, "\n".join(data)))
    return events


def read_events(response: http.client.HTTPResponse, n: int) -> list[tuple[str | None, str]]:
    """Read exactly n events off a streaming response (blocking)."""
    buf = b""
    while buf.count(b"\n\n") < n:
        chunk = response.read1(65536)
        assert chunk, "stream ended early"
        buf += chunk
    return parse_sse(buf)


def control(mock, method: str, path: str, body=None):
    response, raw = call(mock.control_port, path, body, method)
    return response.status, json.loads(raw)


# -- healthy answers -----------------------------------------------------------


def test_openai_json(mock):
    response, raw = call(mock.ports["openai"], CHAT, OPENAI_BODY)
    assert response.status == 200
    assert response.getheader("x-mock-vendor") == "openai"
    assert response.getheader("content-type") == "application/json"
    body = json.loads(raw)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-test"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Hello from openai"
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_openai_sse(mock):
    body = {**OPENAI_BODY, "stream": True, "stream_options": {"include_usage": True}}
    response, raw = call(mock.ports["xai"], CHAT, body)
    assert response.status == 200
    assert response.getheader("content-type").startswith("text/event-stream")
    assert response.getheader("transfer-encoding") == "chunked"
    assert response.getheader("x-mock-vendor") == "xai"
    events = parse_sse(raw)
    assert all(name is None for name, _ in events)
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello from xai"
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 2
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0

    # Without include_usage there is no usage chunk.
    _, raw = call(mock.ports["xai"], CHAT, {**OPENAI_BODY, "stream": True})
    chunks = [json.loads(d) for _, d in parse_sse(raw)[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


def test_anthropic_json(mock):
    response, raw = call(mock.ports["anthropic"], MESSAGES, ANTHROPIC_BODY)
    assert response.status == 200
    assert response.getheader("x-mock-vendor") == "anthropic"
    body = json.loads(raw)
    assert body["id"].startswith("msg_")
    assert (body["type"], body["role"], body["model"]) == ("message", "assistant", "claude-test")
    assert body["content"] == [{"type": "text", "text": "Hello from anthropic"}]
    assert (body["stop_reason"], body["stop_sequence"]) == ("end_turn", None)
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0


def test_anthropic_sse(mock):
    response, raw = call(mock.ports["anthropic"], MESSAGES, {**ANTHROPIC_BODY, "stream": True})
    assert response.status == 200
    assert response.getheader("transfer-encoding") == "chunked"
    events = parse_sse(raw)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = names[3:-3]
    assert len(deltas) >= 2 and set(deltas) == {"content_block_delta"}
    data = [json.loads(d) for _, d in events]
    assert [d["type"] for d in data] == names  # the data repeats the event name
    assert data[0]["message"]["model"] == "claude-test"
    assert data[0]["message"]["content"] == []
    assert "".join(d["delta"]["text"] for d in data[3:-3]) == "Hello from anthropic"
    assert {d["delta"]["type"] for d in data[3:-3]} == {"text_delta"}
    assert data[-2]["delta"]["stop_reason"] == "end_turn"
    assert data[-2]["usage"]["output_tokens"] > 0


def test_both_formats_on_every_vendor_with_keep_alive(mock):
    conn = connect(mock.ports["openai"])
    for _ in range(3):
        r, raw = call(conn, MESSAGES, ANTHROPIC_BODY)
        assert r.status == 200 and json.loads(raw)["content"][0]["text"] == "Hello from openai"
        r, raw = call(conn, CHAT, OPENAI_BODY)
        assert r.status == 200 and json.loads(raw)["object"] == "chat.completion"
    conn.close()
    assert mock.stats("openai")["requests"] == 6


def test_unknown_path_and_bad_body(mock):
    r, raw = call(mock.ports["openai"], "/v1/nope", {})
    assert r.status == 404
    assert r.getheader("x-mock-vendor") == "openai"
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    r, raw = call(mock.ports["openai"], CHAT, method="GET")
    assert r.status == 404
    r, raw = call(mock.ports["anthropic"], MESSAGES, [1, 2])
    assert r.status == 400
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"


def test_custom_content(mock):
    mock.set_content("xai", "Grok says hi")
    _, raw = call(mock.ports["xai"], CHAT, OPENAI_BODY)
    assert json.loads(raw)["choices"][0]["message"]["content"] == "Grok says hi"
    mock.set_content("xai", "Hello from xai")


def test_requests_are_recorded(mock):
    call(mock.ports["anthropic"], MESSAGES, ANTHROPIC_BODY)
    (record,) = mock.requests("anthropic")
    assert record["method"] == "POST" and record["path"] == MESSAGES
    assert record["headers"]["content-type"] == "application/json"
    assert record["body"] == ANTHROPIC_BODY
    assert abs(record["time"] - time.time()) < 5


# -- faults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status,kind", [(529, "overloaded_error"), (429, "rate_limit_error"), (503, "api_error"),
                    (500, "api_error"), (400, "invalid_request_error")]
)
def test_status_in_anthropic_format(mock, status, kind):
    mock.set_fault("anthropic", mode="status", status=status)
    r, raw = call(mock.ports["anthropic"], MESSAGES, ANTHROPIC_BODY)
    assert r.status == status
    body = json.loads(raw)
    assert body["type"] == "error"
    assert body["error"]["type"] == kind and body["error"]["message"]


@pytest.mark.parametrize("status,kind", [(503, "server_error"), (429, "requests"), (400, "invalid_request_error")])
def test_status_in_openai_format(mock, status, kind):
    mock.set_fault("openai", mode="status", status=status)
    r, raw = call(mock.ports["openai"], CHAT, OPENAI_BODY)
    assert r.status == status
    error = json.loads(raw)["error"]
    assert error["type"] == kind and error["param"] is None and "code" in error


def test_status_with_body_and_headers(mock):
    mock.set_fault("openai", mode="status", status=429, headers={"retry-after": "7"}, body="slow down")
    r, raw = call(mock.ports["openai"], CHAT, OPENAI_BODY)
    assert (r.status, r.getheader("retry-after"), raw) == (429, "7", b"slow down")
    assert r.getheader("x-mock-vendor") == "openai"
    mock.set_fault("openai", {"mode": "status", "status": 503, "body": {"custom": True}})
    r, raw = call(mock.ports["openai"], CHAT, OPENAI_BODY)
    assert (r.status, json.loads(raw)) == (503, {"custom": True})


def test_count_limited_fault_returns_to_healthy(mock):
    mock.set_fault("openai", mode="status", status=503, count=2)
    conn = connect(mock.ports["openai"])
    codes = [call(conn, CHAT, OPENAI_BODY)[0].status for _ in range(2)]
    assert mock.stats("openai")["fault"] == {"mode": "ok"}
    codes += [call(conn, CHAT, OPENAI_BODY)[0].status for _ in range(2)]
    assert codes == [503, 503, 200, 200]
    assert mock.stats("openai")["requests"] == 4


def test_latency(mock):
    mock.set_fault("xai", mode="ok", latency=0.3)
    started = time.monotonic()
    r, _ = call(mock.ports["xai"], CHAT, OPENAI_BODY)
    assert r.status == 200 and time.monotonic() - started >= 0.3


def test_refuse_closes_port_and_idle_connections(mock):
    port = mock.ports["xai"]
    idle = connect(port)
    assert call(idle, CHAT, OPENAI_BODY)[0].status == 200
    mock.set_fault("xai", mode="refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        call(idle, CHAT, OPENAI_BODY)
    mock.heal("xai")
    assert mock.ports["xai"] == port
    assert call(port, CHAT, OPENAI_BODY)[0].status == 200
    assert mock.stats("xai")["requests"] == 2  # the refused one never arrived


def test_refuse_with_delay_reopens_by_itself(mock):
    port = mock.ports["xai"]
    mock.set_fault("xai", mode="refuse", delay=0.3)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    time.sleep(0.6)
    assert call(port, CHAT, OPENAI_BODY)[0].status == 200


def test_reset(mock):
    mock.set_fault("anthropic", mode="reset")
    with pytest.raises(ConnectionResetError):
        call(mock.ports["anthropic"], MESSAGES, ANTHROPIC_BODY)
    assert mock.stats("anthropic")["requests"] == 1


def test_hang_with_delay_then_close(mock):
    mock.set_fault("openai", mode="hang", delay=0.3)
    started = time.monotonic()
    with pytest.raises(http.client.RemoteDisconnected):
        call(mock.ports["openai"], CHAT, OPENAI_BODY)
    assert 0.3 <= time.monotonic() - started < 3
    assert mock.stats("openai")["requests"] == 1


def test_hang_until_healed_does_not_block_others(mock):
    mock.set_fault("openai", mode="hang")
    with pytest.raises(TimeoutError):
        call(mock.ports["openai"], CHAT, OPENAI_BODY, timeout=0.3)
    # Meanwhile the other vendors and the control port answer.
    assert call(mock.ports["xai"], CHAT, OPENAI_BODY)[0].status == 200
    assert control(mock, "GET", "/vendors")[0] == 200
    threading.Timer(0.3, mock.heal, ("openai",)).start()
    started = time.monotonic()
    with pytest.raises(http.client.RemoteDisconnected):
        call(mock.ports["openai"], CHAT, OPENAI_BODY)  # hangs until the heal
    assert time.monotonic() - started < 3
    assert call(mock.ports["openai"], CHAT, OPENAI_BODY)[0].status == 200


def test_stream_error_openai(mock):
    mock.set_fault("openai", mode="stream_error")
    r, raw = call(mock.ports["openai"], CHAT, {**OPENAI_BODY, "stream": True})
    assert r.status == 200
    events = parse_sse(raw)
    assert "[DONE]" not in [d for _, d in events]
    assert json.loads(events[1][1])["choices"][0]["delta"]["content"] == "Hello"
    error = json.loads(events[-1][1])["error"]
    assert error["type"] == "server_error" and error["message"]
    # Non-streamed: a 500 in the vendor's format.
    r, raw = call(mock.ports["openai"], CHAT, OPENAI_BODY)
    assert r.status == 500 and json.loads(raw)["error"]["type"] == "server_error"


def test_stream_error_anthropic(mock):
    mock.set_fault("anthropic", mode="stream_error")
    _, raw = call(mock.ports["anthropic"], MESSAGES, {**ANTHROPIC_BODY, "stream": True})
    events = parse_sse(raw)
    assert [n for n, _ in events] == [
        "message_start", "content_block_start", "ping", "content_block_delta", "error"
    ]
    assert json.loads(events[-1][1]) == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    r, raw = call(mock.ports["anthropic"], MESSAGES, ANTHROPIC_BODY)
    assert r.status == 500 and json.loads(raw)["error"]["type"] == "api_error"


def test_truncate(mock):
    mock.set_fault("openai", mode="truncate")
    r, raw = call(mock.ports["openai"], CHAT, {**OPENAI_BODY, "stream": True})
    events = parse_sse(raw)  # a clean chunked end...
    assert events and "[DONE]" not in [d for _, d in events]  # ...without the marker
    mock.set_fault("anthropic", mode="truncate", events=5)
    _, raw = call(mock.ports["anthropic"], MESSAGES, {**ANTHROPIC_BODY, "stream": True})
    names = [n for n, _ in parse_sse(raw)]
    assert len(names) == 5 and "message_stop" not in names
    # Non-streamed: the body is shorter than its content-length.
    with pytest.raises(http.client.IncompleteRead):
        call(mock.ports["anthropic"], MESSAGES, ANTHROPIC_BODY)


def test_reset_mid_stream(mock):
    mock.set_fault("anthropic", mode="reset_mid_stream")
    conn = connect(mock.ports["anthropic"])
    conn.request("POST", MESSAGES, body=json.dumps({**ANTHROPIC_BODY, "stream": True}))
    r = conn.getresponse()
    assert r.status == 200
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
        r.read()


def test_slow_first_byte(mock):
    mock.set_fault("openai", mode="slow_first_byte", delay=0.3)
    started = time.monotonic()
    r, raw = call(mock.ports["openai"], CHAT, OPENAI_BODY)
    assert r.status == 200 and json.loads(raw)["object"] == "chat.completion"
    assert time.monotonic() - started >= 0.3


def test_stall_then_finish(mock):
    mock.set_fault("openai", mode="stall", delay=0.4)
    conn = connect(mock.ports["openai"])
    started = time.monotonic()
    conn.request("POST", CHAT, body=json.dumps({**OPENAI_BODY, "stream": True}))
    r = conn.getresponse()
    first = read_events(r, 2)  # role chunk and the first content piece
    assert time.monotonic() - started < 0.3
    rest = parse_sse(r.read())
    assert time.monotonic() - started >= 0.4
    assert rest[-1][1] == "[DONE]" and len(first) + len(rest) > 4


def test_bad_faults_are_rejected(mock):
    for fault in ({"mode": "explode"}, {"mode": "status"}, {"mode": "status", "status": 99},
                  {"mode": "hang", "delay": -1}, {"mode": "ok", "count": 0}):
        with pytest.raises(FaultError):
            mock.set_fault("openai", fault)
    with pytest.raises(KeyError):
        mock.heal("nobody")


def test_stop_does_not_wait_for_hung_or_idle_connections():
    m = MockVendors({"a": 0}, control_port=None).start()
    port = m.ports["a"]
    idle = connect(port)
    assert call(idle, CHAT, OPENAI_BODY)[0].status == 200
    m.set_fault("a", mode="hang")
    hung = socket.create_connection(("127.0.0.1", port))
    hung.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
    deadline = time.monotonic() + 2
    while m.stats("a")["requests"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    m.stop()
    assert time.monotonic() - started < 1.5
    hung.settimeout(2)
    try:
        assert hung.recv(100) == b""  # closed, nothing sent
    except ConnectionResetError:
        pass
    hung.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


# -- control port -------------------------------------------------------------


def test_control_api(mock):
    status, body = control(mock, "GET", "/vendors")
    assert status == 200 and set(body) == {"anthropic", "openai", "xai"}
    assert body["openai"] == {"port": mock.ports["openai"], "fault": {"mode": "ok"}, "requests": 0}

    fault = {"mode": "status", "status": 503, "count": 5, "headers": {"retry-after": "1"}}
    assert control(mock, "POST", "/vendors/openai/fault", fault) == (200, {"ok": True})
    r, _ = call(mock.ports["openai"], CHAT, OPENAI_BODY)
    assert (r.status, r.getheader("retry-after")) == (503, "1")
    _, body = control(mock, "GET", "/vendors")
    assert body["openai"]["fault"] == {**fault, "count": 4}
    assert body["openai"]["requests"] == 1

    _, records = control(mock, "GET", "/vendors/openai/requests")
    assert [(r["method"], r["path"], r["body"]) for r in records] == [("POST", CHAT, OPENAI_BODY)]
    assert records[0]["headers"]["host"].startswith("127.0.0.1")

    assert control(mock, "POST", "/vendors/openai/heal") == (200, {"ok": True})
    assert call(mock.ports["openai"], CHAT, OPENAI_BODY)[0].status == 200

    control(mock, "POST", "/vendors/xai/fault", {"mode": "refuse"})
    assert control(mock, "POST", "/reset") == (200, {"ok": True})
    _, body = control(mock, "GET", "/vendors")
    assert all(v == {"port": mock.ports[k], "fault": {"mode": "ok"}, "requests": 0} for k, v in body.items())
    assert call(mock.ports["xai"], CHAT, OPENAI_BODY)[0].status == 200

    status, body = control(mock, "POST", "/vendors/openai/fault", {"mode": "explode"})
    assert status == 400 and not body["ok"] and "explode" in body["error"]
    assert control(mock, "POST", "/vendors/nobody/heal")[0] == 404
    assert control(mock, "GET", "/nothing")[0] == 404


def test_records_keep_the_last_1000(mock):
    mock.set_fault("xai", mode="status", status=503)
    conn = connect(mock.ports["xai"])
    for i in range(1005):
        call(conn, "/x", {"i": i})
    records = mock.requests("xai")
    assert len(records) == 1000 and records[0]["body"] == {"i": 5}
    assert mock.stats("xai")["requests"] == 1005


# -- command line (separate process) -------------------------------------------------


def test_command_line_server_and_ctl():
    script = str(HERE / "vendors.py")
    proc = subprocess.Popen(
        [sys.executable, script, "--vendor", "anthropic=0", "--vendor", "openai=0", "--control", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), line + proc.stderr.read()
        ready = json.loads(line[len("READY "):])
        assert set(ready["vendors"]) == {"anthropic", "openai"}

        def ctl(*args):
            out = subprocess.run([sys.executable, script, "ctl", "--control", str(ready["control"]), *args],
                                 capture_output=True, text=True, timeout=10)
            assert out.returncode == 0, out.stderr
            return out.stdout

        ctl("break", "anthropic", "529", "--count", "3")
        r, raw = call(ready["vendors"]["anthropic"], MESSAGES, ANTHROPIC_BODY)
        assert r.status == 529 and json.loads(raw)["error"]["type"] == "overloaded_error"
        table = ctl("status").splitlines()
        assert table[0].split() == ["VENDOR", "PORT", "FAULT", "REQUESTS"]
        assert "status 529 count=2" in table[1] and table[1].split()[-1] == "1"
        ctl("break", "openai", '{"mode": "hang", "delay": 5}')
        assert "hang delay=5" in ctl("status")
        ctl("heal", "anthropic")
        assert call(ready["vendors"]["anthropic"], MESSAGES, ANTHROPIC_BODY)[0].status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        proc.stdout.close()
        proc.stderr.close()


# -- official SDKs ------------------------------------------------------------------


def test_openai_sdk_parses_the_mock(mock):
    openai = pytest.importorskip("openai")
    # The SDK appends "chat/completions" to base_url, so base_url carries /v1.
    client = openai.OpenAI(api_key="sk-test", base_url=f"http://127.0.0.1:{mock.ports['openai']}/v1", max_retries=0)
    answer = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello from openai"
    assert answer.usage.total_tokens > 0

    stream = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}],
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from openai"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    (first, second) = mock.requests("openai")
    assert first["path"] == second["path"] == CHAT
    assert first["headers"]["authorization"] == "Bearer sk-test"

    mock.set_fault("openai", mode="status", status=503)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503 and err.value.body["type"] == "server_error"

    mock.set_fault("openai", mode="stream_error")
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}],
                                            stream=True))


def test_anthropic_sdk_parses_the_mock(mock):
    anthropic = pytest.importorskip("anthropic")
    # The SDK's paths already start with /v1, so base_url is just the origin.
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=f"http://127.0.0.1:{mock.ports['anthropic']}",
                                 max_retries=0)
    message = client.messages.create(model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "Hello from anthropic"
    assert message.stop_reason == "end_turn"

    with client.messages.stream(model="claude-test", max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from anthropic" == final.content[0].text
    assert final.usage.output_tokens > 0 and final.stop_reason == "end_turn"

    (first, second) = mock.requests("anthropic")
    assert first["path"] == second["path"] == MESSAGES
    # Older SDKs send x-api-key; 2.14 sends "authorization: Bearer <key>".
    headers = first["headers"]
    assert headers.get("x-api-key") == "sk-ant-test" or headers.get("authorization") == "Bearer sk-ant-test"
    assert "anthropic-version" in first["headers"]

    mock.set_fault("anthropic", mode="status", status=529)
    with pytest.raises(anthropic.APIStatusError) as err:
        client.messages.create(model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 529 and err.value.body["error"]["type"] == "overloaded_error"

    mock.set_fault("anthropic", mode="stream_error")
    with pytest.raises(anthropic.APIStatusError) as err:
        list(client.messages.create(model="claude-test", max_tokens=64, stream=True,
                                    messages=[{"role": "user", "content": "hi"}]))
    assert err.value.body["error"]["type"] == "overloaded_error"
