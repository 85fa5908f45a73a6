"""Failover scenarios in real Envoy 1.40 (--concurrency 2) with mock vendors.

Each test starts its own Envoy around the built filter. The test filter
config ejects after 5 consecutive failures for 1 s at first (see
harness.filter_config), so scenarios run in seconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from conftest import VENDORS, Client
from harness import CLUSTER_HEADER, VENDOR_HEADER


def served_by(headers: dict) -> str | None:
    return headers.get(VENDOR_HEADER)


def seen(vendors, name: str) -> int:
    return vendors.stats(name)["requests"]


def wait_for(predicate, timeout: float = 10, interval: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


# (a) ---------------------------------------------------------------------------


def test_all_healthy_traffic_goes_to_the_primary(vendors, make_envoy, client_for):
    envoy = make_envoy()
    client = client_for(envoy)
    for _ in range(20):
        status, headers, body = client.chat()
        assert status == 200
        assert served_by(headers) == "anthropic"
        assert json.loads(body)["choices"][0]["message"]["content"] == "Hello from anthropic"
    assert (seen(vendors, "anthropic"), seen(vendors, "openai"), seen(vendors, "xai")) == (20, 0, 0)


def test_a_client_cannot_choose_the_cluster(vendors, make_envoy, client_for):
    envoy = make_envoy()
    client = client_for(envoy)
    for target in ["xai", "openai", "no-such-cluster", ""]:
        status, headers, _ = client.chat(headers={CLUSTER_HEADER: target})
        assert status == 200
        assert served_by(headers) == "anthropic"
    assert seen(vendors, "xai") == 0
    # The routing header the vendor saw is the filter's, not the client's.
    assert {r["headers"].get(CLUSTER_HEADER) for r in vendors.requests("anthropic")} == {"anthropic"}


# (b) and (c) ------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 529])
def test_failing_primary_is_ejected_within_the_trip_volume_and_returns_after_recovery(
    status, vendors, make_envoy, client_for
):
    envoy = make_envoy()
    client = client_for(envoy)
    for _ in range(5):
        assert served_by(client.chat()[1]) == "anthropic"

    vendors.set_fault("anthropic", mode="status", status=status)
    broke_at = time.time()
    before = seen(vendors, "anthropic")
    answers = [client.chat() for _ in range(30)]
    ejected_after = None
    for i, (code, headers, _) in enumerate(answers):
        if served_by(headers) == "openai":
            ejected_after = ejected_after if ejected_after is not None else i
            assert code == 200
        else:
            assert ejected_after is None, "traffic went back to the failing vendor"
            assert code == status
    # Trip volume: 5 consecutive failures; not one request more reached it.
    assert ejected_after == 5
    assert seen(vendors, "anthropic") - before == 5
    assert seen(vendors, "xai") == 0
    eject_time = time.time() - broke_at
    changes = envoy.state_changes()
    assert len([c for c in changes if "anthropic: closed -> open" in c]) == 1, changes

    # (c) The vendor heals; after the 1 s ejection, 3 probes close it again.
    vendors.heal("anthropic")
    healed_at = time.time()
    back = wait_for(lambda: served_by(client.chat()[1]) == "anthropic", timeout=10)
    assert back
    returned_in = time.time() - healed_at
    for _ in range(10):
        assert served_by(client.chat()[1]) == "anthropic"
    changes = envoy.state_changes()
    assert any("anthropic: open -> half-open" in c for c in changes), changes
    assert any("anthropic: half-open -> closed" in c for c in changes), changes
    assert envoy.vendor_stat("anthropic", "ejections") == 1
    print(f"\n[{status}] trip volume 5 requests; ejected after {eject_time:.3f}s; back {returned_in:.2f}s after heal")


def test_ejection_reaches_every_worker_at_once(vendors, make_envoy):
    """A new connection per request spreads requests over both workers: once
    one worker trips the vendor, the other stops sending to it too (it is told
    through its shared queue, not on its next tick)."""
    envoy = make_envoy(refresh_interval="60s")  # no tick to help
    for _ in range(20):
        c = Client(envoy.port)
        assert served_by(c.chat()[1]) == "anthropic"
        c.close()
    vendors.set_fault("anthropic", mode="status", status=503)
    before = seen(vendors, "anthropic")
    served = []
    for _ in range(40):
        c = Client(envoy.port)
        served.append(served_by(c.chat()[1]))
        c.close()
    assert seen(vendors, "anthropic") - before == 5, served
    assert served[5:] == ["openai"] * 35
    workers = {k: v for k, v in envoy.stats().items() if k.endswith("downstream_cx_total") and ".worker_" in k}
    assert len([v for v in workers.values() if v > 5]) >= 2, workers


def test_trip_by_failure_ratio(vendors, make_envoy, client_for):
    """Every other request fails: the consecutive rule never fires, the ratio does."""
    envoy = make_envoy(trip={"min_requests": 10, "failure_ratio": 0.5, "consecutive_failures": 0})
    client = client_for(envoy)
    served = []
    for i in range(30):
        if i % 2 == 1:
            vendors.set_fault("anthropic", mode="status", status=503, count=1)
        served.append(served_by(client.chat()[1]))
    first_openai = served.index("openai")
    assert first_openai == 10, served
    assert set(served[first_openai:]) == {"openai"}


def test_a_probe_failure_ejects_again_for_longer(vendors, make_envoy, client_for):
    envoy = make_envoy()
    client = client_for(envoy)
    vendors.set_fault("anthropic", mode="status", status=503)
    for _ in range(5):
        client.chat()
    time.sleep(1.1)  # first ejection: 1 s
    client.chat()  # the probe fails
    changes = envoy.state_changes()
    assert any("half-open -> open" in c and "ejected for 2000 ms" in c for c in changes), changes


# (d) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault,expect",
    [
        ({"mode": "refuse"}, 503),
        ({"mode": "reset"}, 503),
        ({"mode": "hang"}, 504),
    ],
    ids=["connection-refused", "reset", "timeout"],
)
def test_transport_failures_count_as_vendor_failures(fault, expect, vendors, make_envoy, client_for):
    envoy = make_envoy(
        trip={"min_requests": 10, "failure_ratio": 0.5, "consecutive_failures": 3},
        envoy={"route_timeout": "0.5s"},
    )
    client = client_for(envoy)
    assert served_by(client.chat()[1]) == "anthropic"
    vendors.set_fault("anthropic", **fault)
    codes = [client.chat()[0] for _ in range(3)]
    assert codes == [expect] * 3
    status, headers, _ = client.chat()
    assert (status, served_by(headers)) == (200, "openai")
    assert envoy.vendor_stat("anthropic", "failures") == 3
    assert envoy.vendor_stat("anthropic", "ejections") == 1
    vendors.heal("anthropic")


# (e) ---------------------------------------------------------------------------


def test_concurrent_clients_on_all_workers_lose_no_outcome(vendors, make_envoy):
    threads, per_thread = 16, 60
    envoy = make_envoy(window={"length": "60s", "buckets": 60}, concurrency=2)
    errors: list[str] = []

    def worker():
        c = Client(envoy.port)
        try:
            for _ in range(per_thread):
                status, headers, _ = c.chat()
                if status != 200 or served_by(headers) != "anthropic":
                    errors.append(f"{status} {served_by(headers)}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
        finally:
            c.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    total = threads * per_thread
    assert errors == []
    assert seen(vendors, "anthropic") == total
    # Both workers served connections.
    stats = envoy.stats()
    workers = {k: v for k, v in stats.items() if k.endswith("downstream_cx_total") and ".worker_" in k}
    assert len([v for v in workers.values() if v > 0]) >= 2, workers
    # The shared window holds every outcome exactly once (gauges refresh every 200 ms).
    wait_for(lambda: envoy.vendor_stat("anthropic", "window_requests") == total, timeout=5)
    assert envoy.vendor_stat("anthropic", "window_failures") == 0
    assert envoy.vendor_stat("anthropic", "requests") == total


# All vendors down ----------------------------------------------------------


def test_all_down_reject_answers_503_in_openai_format(vendors, make_envoy, client_for):
    envoy = make_envoy(all_down="reject", trip={"min_requests": 10, "failure_ratio": 0.5, "consecutive_failures": 2},
                       ejection={"base": "5s", "max": "10s", "decay": "10s"})
    client = client_for(envoy)
    for v in ("anthropic", "openai", "xai"):
        vendors.set_fault(v, mode="status", status=503)
    for _ in range(6):
        client.chat()
    before = {v: seen(vendors, v) for v in ("anthropic", "openai", "xai")}
    status, headers, body = client.chat()
    assert status == 503
    assert 1 <= int(headers["retry-after"]) <= 5
    err = json.loads(body)["error"]
    assert err["code"] == "all_vendors_unavailable"
    assert err["type"] == "service_unavailable"
    assert {v["name"] for v in err["vendors"]} == {"anthropic", "openai", "xai"}
    assert {v: seen(vendors, v) for v in before} == before, "no vendor saw the rejected request"
    assert envoy.stats()["wasmcustom.llm_failover.rejected"] == 1


def test_all_down_soonest_sends_to_the_vendor_back_first(vendors, make_envoy, client_for):
    envoy = make_envoy(trip={"min_requests": 10, "failure_ratio": 0.5, "consecutive_failures": 2},
                       ejection={"base": "5s", "max": "10s", "decay": "10s"})
    client = client_for(envoy)
    for v in ("anthropic", "openai", "xai"):
        vendors.set_fault(v, mode="status", status=503)
    for _ in range(6):
        client.chat()
    # anthropic was ejected first, so it is due back first.
    vendors.heal("anthropic")
    status, headers, _ = client.chat()
    assert (status, served_by(headers)) == (200, "anthropic")
    assert envoy.vendor_stat("anthropic", "forced") == 1


# Robustness ------------------------------------------------------------------


def raw_request(port: int, header_block: bytes) -> bytes:
    body = b'{"model":"m","messages":[]}'
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n"
        + header_block
        + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_non_utf8_header_values_do_not_trap_the_vm(vendors, make_envoy, client_for):
    envoy = make_envoy()
    for block in [
        b"x-junk: \xff\xfe\xfd\r\n",
        CLUSTER_HEADER.encode() + b": \xc3\x28\r\n",
        b"authorization: Bearer \x80\x81\r\n",
    ]:
        answer = raw_request(envoy.port, block)
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    client = client_for(envoy)
    for _ in range(10):
        status, headers, _ = client.chat()
        assert (status, served_by(headers)) == (200, "anthropic")
    assert "panic" not in envoy.log().lower()
    assert envoy.stats().get("wasm.envoy.wasm.runtime.v8.active", 1) >= 1


def test_vendor_with_unknown_cluster_is_skipped_without_failing_requests(vendors, make_envoy, client_for):
    vendor_list = [{"name": "ghost", "cluster": "no-such-cluster", "priority": 0}] + VENDORS
    envoy = make_envoy(vendor_list=vendor_list)
    client = client_for(envoy)
    for _ in range(10):
        status, headers, _ = client.chat()
        assert (status, served_by(headers)) == (200, "anthropic")
    assert "no cluster named \"no-such-cluster\"" in envoy.log()


def test_stats_are_exported_with_a_vendor_tag(vendors, make_envoy, client_for):
    envoy = make_envoy()
    client_for(envoy).chat()
    # Request counts are reported by each worker on its tick (200 ms here).
    wait_for(lambda: 'llm_failover_vendor_requests{vendor="anthropic"} 1' in envoy.prometheus(), timeout=3)
    assert 'llm_failover_vendor_state{vendor="openai"} 0' in envoy.prometheus()
    vendors.set_fault("anthropic", mode="status", status=503, count=1)
    client_for(envoy).chat()
    prom = envoy.prometheus()
    assert 'llm_failover_vendor_failures_by_reason{vendor="anthropic",reason="status"} 1' in prom
    assert 'llm_failover_vendor_failures{vendor="anthropic"} 1' in prom
