"""Hostile clients and broken vendors in real Envoy 1.40 (--concurrency 2):
each defect found by trying to break the filter, end to end. The same
cases run through the fake host in src/proxy/tests/hostile.rs."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import anthropic
import openai
import pytest

from raw_vendor import RawVendor, response

KEYS = {"ANTHROPIC_KEY": "sk-ant-vendor", "OPENAI_KEY": "sk-openai-vendor", "XAI_KEY": "xai-vendor"}
SECRET = "client-secret-marker"
KEYED = [
    {"name": "anthropic", "cluster": "anthropic", "api_key_env": "ANTHROPIC_KEY"},
    {"name": "openai", "cluster": "openai", "priority": 1, "api_key_env": "OPENAI_KEY"},
    {"name": "xai", "cluster": "xai", "priority": 2, "api_key_env": "XAI_KEY"},
]
MAPPED = [
    {**KEYED[0], "models": {"claude-sonnet": "claude-sonnet-4-5"}},
    KEYED[1],
    {**KEYED[2], "models": {"*": "grok-4"}},
]
CREDENTIALS = {
    "authorization": f"Bearer {SECRET}",
    "x-api-key": SECRET,
    "proxy-authorization": f"Basic {SECRET}",
    "api-key": SECRET,
    "x-goog-api-key": SECRET,
}
START = b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant","model":"c","content":[],"stop_reason":null,"usage":{"input_tokens":1,"output_tokens":0}}}\n\n'
STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


@pytest.fixture
def gateway(make_envoy):
    def make(vendor_list=KEYED, envoy=None, **overrides):
        settings = {"rescue": {"max_attempts": 3, "deadline": "10s"}}
        settings.update(overrides)
        return make_envoy(vendor_list=vendor_list, envoy={"env": KEYS, **(envoy or {})}, **settings)

    return make


@pytest.fixture
def raw():
    v = RawVendor()
    yield v
    v.stop()


def post(envoy, path, body: bytes, headers=None, chunked=False, timeout=15):
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=timeout)
    h = {"content-type": "application/json", **(headers or {})}
    if chunked:
        conn.request("POST", path, body=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]), headers=h, encode_chunked=True)
    else:
        conn.request("POST", path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def big(model: str, n: int) -> bytes:
    head = json.dumps({"model": model, "messages": [{"role": "user", "content": ""}]})[:-4]
    return head.encode() + b"a" * (n - len(head) - 4) + b'"}]}'


def counts(vendors):
    return {v: len(vendors.requests(v)) for v in ("anthropic", "openai", "xai")}


# 1. Client credentials ---------------------------------------------------------------


def test_a_chunked_body_too_large_to_hold_leaves_with_the_vendors_key_and_none_of_the_clients(vendors, gateway):
    envoy = gateway()
    body = big("m", 524_300)
    status, _, _ = post(envoy, "/v1/chat/completions", body, headers=CREDENTIALS, chunked=True)
    assert status == 200
    seen = vendors.requests("anthropic")[-1]
    assert SECRET not in json.dumps(seen["headers"]), seen["headers"]
    assert seen["headers"]["authorization"] == "Bearer sk-ant-vendor"
    assert envoy.stats()["wasmcustom.llm_failover.body_too_large"] == 1
    # Where a model map would change it, it is refused instead.
    mapped = gateway(vendor_list=MAPPED)
    before = counts(vendors)
    status, _, data = post(mapped, "/v1/chat/completions", big("claude-sonnet", 524_300), headers=CREDENTIALS, chunked=True)
    assert status == 413, data[:300]
    assert json.loads(data)["error"]["code"] == "request_too_large"
    assert counts(vendors) == before


# 2. Model maps ----------------------------------------------------------------------


def test_a_model_that_reads_two_ways_is_refused_in_the_clients_format(vendors, gateway):
    envoy = gateway(vendor_list=MAPPED)
    vendors.set_fault("anthropic", mode="status", status=503)
    before = counts(vendors)
    dup = b'{"model":"claude-sonnet","messages":[],"model":"o1-pro"}'
    status, _, data = post(envoy, "/v1/chat/completions", dup)
    assert status == 400 and json.loads(data)["error"]["code"] == "invalid_request_body"
    status, _, data = post(envoy, "/v1/messages", dup)
    assert status == 400 and json.loads(data)["error"]["type"] == "invalid_request_error"
    assert counts(vendors) == before, "no vendor saw either"
    vendors.heal("anthropic")
    status, _, _ = post(envoy, "/v1/chat/completions", b'{"mod\\u0065l":"claude-sonnet","messages":[]}')
    assert status == 200
    assert vendors.requests("anthropic")[-1]["body"]["model"] == "claude-sonnet-4-5", "an escaped key is mapped too"


# 3. Slow clients -------------------------------------------------------------------


def trickle(envoy, body: bytes, seconds: float, declared: int | None = None):
    """Sends a request whose body arrives a byte at a time over `seconds`."""
    s = socket.create_connection(("127.0.0.1", envoy.port))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + b"content-length: %d\r\n\r\n" % (declared or len(body))
    )
    for b in body:
        s.sendall(bytes([b]))
        time.sleep(seconds / len(body))
    return s


def test_a_slow_client_leaves_body_handling_on(vendors, gateway):
    envoy = gateway(envoy={"stream_idle_timeout": "3s"})
    s = trickle(envoy, b'{"model":"m","messages":[]}', 1.5)
    s.settimeout(10)
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    s.close()
    time.sleep(0.5)
    # Body handling is still on for both workers: a failing first attempt is rescued.
    for _ in range(4):
        vendors.set_fault("anthropic", mode="status", status=503, count=1)
        status, headers, _ = post(envoy, "/v1/chat/completions", b'{"model":"m","messages":[]}')
        assert (status, headers.get("x-llm-failover-attempts")) == (200, "2")
    assert "not reaching the filter" not in envoy.log()


def test_without_body_access_requests_are_still_served_and_it_says_so_once(vendors, gateway):
    envoy = gateway(envoy={"body_access": False})
    for _ in range(3):
        status, _, _ = post(envoy, "/v1/chat/completions", b'{"model":"m","messages":[]}')
        assert status == 200
    assert envoy.log().count("request bodies are not reaching the filter") >= 1


# 4. Unfinished uploads ----------------------------------------------------------------


def test_uploads_that_never_complete_are_the_clients_doing(vendors, gateway):
    envoy = gateway(envoy={"stream_idle_timeout": "1s"})
    before = counts(vendors)
    answers = []

    def one():
        s = trickle(envoy, b'{"model":"m","messages":[]}', 0.1, declared=37)
        s.settimeout(5)
        answers.append(s.recv(100))
        s.close()

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers
    assert counts(vendors) == before, "no vendor saw them"
    time.sleep(0.5)
    assert envoy.vendor_stat("anthropic", "failures") == 0
    assert envoy.vendor_stat("anthropic", "ejections") == 0
    status, headers, _ = post(envoy, "/v1/chat/completions", b'{"model":"m","messages":[]}')
    assert (status, headers.get("x-llm-failover-vendor")) == (200, "anthropic")


# 5. A declared length on a stream ----------------------------------------------------


def test_an_appended_error_event_takes_the_declared_length_away(raw, gateway):
    events = START + b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    events += b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"half"}}\n\n'
    raw.play([response(200, {"content-type": "text/event-stream"}, events)])
    envoy = gateway(ports={"anthropic": raw.port}, rescue={"max_attempts": 1})
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    status, headers, data = post(envoy, "/v1/messages", body.encode())
    assert status == 200
    assert "content-length" not in headers
    assert data.startswith(events) and b"event: error" in data[len(events) :]
    client = anthropic.Anthropic(base_url=envoy.url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]) as s:
            for _ in s:
                pass


# 6. Large held answers -------------------------------------------------------------


def test_a_failed_answer_with_a_10_mb_body_is_rescued(vendors, raw, gateway):
    raw.play([response(503, {"content-type": "application/json"}, b"x" * 10_000_000)])
    envoy = gateway(ports={"anthropic": raw.port})
    status, headers, data = post(envoy, "/v1/chat/completions", b'{"model":"m","messages":[]}')
    assert (status, headers.get("x-llm-failover-vendor")) == (200, "openai"), data[:200]


def test_a_stream_whose_first_event_is_1_mb_passes_whole(raw, gateway):
    huge = b'event: content_block_delta\ndata: {"t":"' + b"y" * 1_000_000 + b'"}\n\n'
    raw.play([response(200, {"content-type": "text/event-stream"}, huge + STOP)])
    envoy = gateway(ports={"anthropic": raw.port})
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True, "messages": []}).encode()
    status, headers, data = post(envoy, "/v1/messages", body)
    assert (status, headers.get("x-llm-failover-vendor")) == (200, "anthropic")
    assert data == huge + STOP
    assert envoy.vendor_stat("anthropic", "failures") == 0


# 7. A reset before the first event ---------------------------------------------------


def test_a_reset_before_the_first_event_reaches_the_client_in_its_own_format(vendors, raw, gateway):
    """Envoy 1.40 answers a reset that comes while a filter holds the
    response headers itself, straight to the client, past every filter: the
    filter cannot rescue it (the fake-host test shows the rescue it would
    make). The shipped local_reply_config says it in the client's format,
    and the vendor is charged the reset."""
    raw.play([b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n", ("sleep", 0.05), "reset"])
    envoy = gateway(ports={"anthropic": raw.port})
    client = anthropic.Anthropic(base_url=envoy.url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(model="m", max_tokens=5, stream=True, messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502
    assert failed.value.body["type"] == "error" and failed.value.body["error"]["type"] == "api_error"
    time.sleep(0.3)
    assert envoy.vendor_stat("anthropic", "failures_by_reason.reset") == 1
    # The OpenAI SDK gets OpenAI's error shape.
    with pytest.raises(openai.APIStatusError) as failed:
        openai.OpenAI(base_url=f"{envoy.url}/v1", api_key="k", max_retries=0).chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "hi"}]
        )
    assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_failure"


# 8. Forged headers ----------------------------------------------------------------------


def test_vendors_cannot_forge_the_filters_headers(vendors, gateway):
    envoy = gateway()
    forged = {"x-llm-failover-attempts": "99", "x-llm-failover-tried": "evil", "x-llm-failover-vendor": "evil"}
    vendors.set_fault("anthropic", mode="ok", headers=forged)
    status, headers, _ = post(envoy, "/v1/chat/completions", b'{"model":"m","messages":[]}')
    assert status == 200
    assert "x-llm-failover-attempts" not in headers and "x-llm-failover-tried" not in headers
    assert headers["x-llm-failover-vendor"] == "anthropic"
    vendors.set_fault("anthropic", mode="status", status=503, count=1)
    vendors.set_fault("openai", mode="ok", headers=forged)
    status, headers, _ = post(envoy, "/v1/chat/completions", b'{"model":"m","messages":[]}')
    assert (headers["x-llm-failover-attempts"], headers["x-llm-failover-tried"]) == ("2", "anthropic,openai")
    assert headers["x-llm-failover-vendor"] == "openai"


# 9. One request every vendor fails ---------------------------------------------------


def test_a_request_every_vendor_fails_ejects_no_vendor_that_serves_others(vendors, gateway):
    envoy = gateway()
    nested = b'{"model":"m","x":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    for _ in range(5):
        status, _, data = post(envoy, "/v1/chat/completions", nested)
        assert status == 503, data[:300]
        assert b"due back: ." not in data
        for _ in range(5):
            status, headers, _ = post(envoy, "/v1/chat/completions", b'{"model":"m","messages":[]}')
            assert (status, headers["x-llm-failover-vendor"]) == (200, "anthropic")
    time.sleep(0.5)
    for v in ("anthropic", "openai", "xai"):
        assert envoy.vendor_stat(v, "ejections") == 0, v
    assert envoy.stats()["wasmcustom.llm_failover.failed_everywhere"] == 5
    # A burst of them alone: at most the vendor that took them first goes.
    for _ in range(5):
        post(envoy, "/v1/chat/completions", nested)
    status, headers, _ = post(envoy, "/v1/chat/completions", b'{"model":"m","messages":[]}')
    assert status == 200
    assert envoy.stats()["wasmcustom.llm_failover.all_down"] == 0, "never forced"
    assert envoy.vendor_stat("openai", "ejections") == envoy.vendor_stat("xai", "ejections") == 0


def rss_kib(envoy) -> int:
    for line in open(f"/proc/{envoy.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_rescued_answer_too_large_to_hold_is_not_held(vendors, raw, gateway):
    """Eight requests at once whose rescue answers 10 MB each: none is read
    into a VM (whose memory never shrinks); each client gets a 502 in its
    format. Prints the RSS figure for the README."""
    vendors.set_fault("anthropic", mode="status", status=503)
    raw.play([response(200, {"content-type": "application/json"}, b'{"x":"' + b"z" * 10_000_000 + b'"}')])
    envoy = gateway(ports={"openai": raw.port}, trip={"min_requests": 1000, "failure_ratio": 1.0, "consecutive_failures": 0})
    post(envoy, "/v1/chat/completions", b'{"model":"m","messages":[]}')
    before = rss_kib(envoy)
    results = []

    def one():
        results.append(post(envoy, "/v1/chat/completions", b'{"model":"m","messages":[]}', timeout=30))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = rss_kib(envoy)
    assert [r[0] for r in results] == [502] * 8, [r[2][:200] for r in results]
    assert all(json.loads(r[2])["error"]["code"] == "answer_too_large" for r in results)
    print(f"\nRSS with 8 rescued 10 MB answers at once: {before} KiB before, {after} KiB after (+{(after - before) / 1024:.1f} MiB)")
