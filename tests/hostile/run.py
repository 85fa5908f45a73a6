#!/usr/bin/env python3
"""`make hostile`: the built filter in real Envoy 1.40 (--concurrency 2)
between a hostile client and a hostile vendor, then the checks.

    run.py [--n N] [--seed S] [--concurrency C] [--slow-share F] [--strict]

N (default $HOSTILE_N or 10000) requests from seed S (default $HOSTILE_SEED
or 1). Must be 0, or the exit status is 1: wasm traps (Envoy's log and its
wasm stats), Envoy dying, client credentials reaching a vendor, cut vendor
answers that reach the client looking complete. Everything else found is
reported (with --strict, findings fail the run too). Results go to
tests/hostile/results/latest.json (with the Envoy log and the vendor's
records next to it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "e2e"))

import client as hclient  # noqa: E402
from common import FORGED_MARK, KEY_ENV, VENDOR_KEYS, VENDORS, filter_config  # noqa: E402
from harness import WASM, Envoy, envoy_config  # noqa: E402
from vendor import CUT, PRE_BYTE_FAILURES  # noqa: E402

RESULTS = HERE / "results"

# Envoy timeouts: short, so a stuck request ends within seconds.
ROUTE_TIMEOUT = "5s"
ROUTE_IDLE_TIMEOUT = "2s"
STREAM_IDLE_TIMEOUT = "3s"

# What a wasm panic or VM failure looks like in Envoy's log.
TRAP_PATTERNS = [
    r"panicked at",
    r"\bpanic\b",
    r"RuntimeError",
    r"Function: proxy_on_\S+ failed",
    r"wasm trap",
    r"\bunreachable\b",
    r"Wasm VM failed",
    r"VM (?:has )?failed",
    r"failed to (?:call|run)",
    r"out of bounds memory access",
    r"call stack exhausted",
    r"Maximum call stack",
]
TRAP_RE = re.compile("|".join(TRAP_PATTERNS), re.IGNORECASE)
# Stats of Envoy's wasm extension that count VM failures and reloads.
WASM_FAILURE_STAT = re.compile(r"^wasm\..*(fail|crash|restart|reload|abort|trap)", re.IGNORECASE)
BODY_OFF_LOG = "request bodies are not reaching the filter"

# First attempts the filter is documented to rescue when they fail before
# any byte reached the client (a 400 moves only for a context overflow to a
# larger window; a hang outlives the rescue deadline).
RESCUABLE = PRE_BYTE_FAILURES - {"status_400_ctx", "hang"}


def load_records(path: Path) -> list[dict]:
    """The vendor's records, each with what it then sent (`sent`: status,
    framing, bytes, declared length; `ended`: fin, rst, keep or close)."""
    records, details = [], {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        if "detail_for" in obj:
            details[obj["detail_for"]] = obj
        else:
            records.append(obj)
    for r in records:
        d = details.get(r["answer_id"], {})
        r["sent"] = d.get("sent") or {}
        r["ended"] = d.get("ended", "unknown")
    return records


def how_sent(rec: dict, numbers: bool = True) -> str:
    s = rec.get("sent") or {}
    framing = s.get("framing", "?")
    if framing == "cl" and s.get("declared") is not None and s.get("declared") != s.get("bytes"):
        if numbers:
            framing += f" (declared {s['declared']}, sent {s['bytes']})"
        else:
            framing += " (declared " + ("less" if s["declared"] < s["bytes"] else "more") + " than sent)"
    if framing == "chunked" and not s.get("terminated", True):
        framing += " (no last chunk)"
    return f"{framing}, then {rec.get('ended')}"


def admin_get(envoy: Envoy, path: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(envoy.admin + path, timeout=timeout) as r:
        return r.read().decode()


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def stats_text_to_dict(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


class Monitor:
    """Watches Envoy during the run: alive, ready, resident memory."""

    def __init__(self, envoy: Envoy):
        self.envoy = envoy
        self.died_at: float | None = None
        self.not_ready: list[float] = []
        self.rss_max = 0
        self.samples = 0
        self.t0 = time.time()

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            proc = self.envoy.proc
            if proc is None or proc.poll() is not None:
                if self.died_at is None:
                    self.died_at = time.time() - self.t0
            else:
                rss = rss_kib(proc.pid)
                if rss:
                    self.rss_max = max(self.rss_max, rss)
                try:
                    ready = await asyncio.to_thread(admin_get, self.envoy, "/ready", 3)
                    if ready.strip() != "LIVE":
                        self.not_ready.append(time.time() - self.t0)
                except OSError:
                    self.not_ready.append(time.time() - self.t0)
                self.samples += 1
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass


def start_vendor(seed: int, records: Path) -> tuple[subprocess.Popen, dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "vendor.py"), "--seed", str(seed), "--records", str(records)],
        stdout=subprocess.PIPE,
        stderr=open(records.with_suffix(".stderr"), "wb"),
        start_new_session=True,
    )
    line = proc.stdout.readline().decode()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"hostile vendor did not start: {line!r}; see {records.with_suffix('.stderr')}")
    return proc, json.loads(line[6:])


def stop_vendor(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# --------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------


def status_class(r: dict) -> str:
    if not r["status"]:
        return "no answer"
    return f"{r['status'] // 100}xx"


def client_category(r: dict) -> str:
    """One word for what the client got."""
    if not r["status"]:
        return f"no answer ({r['outcome']})"
    if r["outcome"] != "complete":
        return f"{status_class(r)} broken ({r['outcome']})"
    if 200 <= r["status"] < 300:
        if "sse" in r:
            s = r["sse"]
            if s["last_is_error"]:
                return "2xx stream ending in an error event"
            if s["error"]:
                return "2xx stream with an error event"
            return "2xx stream, complete" if s["end_marker"] else "2xx stream without end marker"
        return f"2xx json {r.get('json')}"
    return status_class(r)


def known_format(path: str) -> bool:
    """The filter reads a request as OpenAI or Anthropic by its path's end
    (query left off): `/chat/completions` or `/messages`."""
    path = path.split("?", 1)[0]
    return path.endswith("/chat/completions") or path.endswith("/messages")


def documented_bypass(spec: dict | None) -> str:
    """Why a mapped vendor may receive an unmapped model, as the README
    documents it: a body too large to read, or a path in no known format
    (routed at its headers, unchanged)."""
    if not spec:
        return ""
    if spec["body_kind"].startswith("huge"):
        return "body over 512 KiB"
    if not known_format(spec["path"]):
        return "path in no known format"
    return ""


def single_candidate(spec: dict) -> bool:
    """Requests only one vendor can serve: the `long-doc` group in the
    Anthropic format (openai serves no Anthropic path)."""
    return (spec["path"].split("?")[0].endswith("/messages") and spec["model"] == "long-doc"
            and spec["body_kind"] in ("valid", "unicode"))


def request_shape(spec: dict) -> str:
    """How the filter takes a request: read whole before routing, or not."""
    if not known_format(spec["path"]) or spec["method"] != "POST":
        return "path in no known format"
    if spec["body_kind"].startswith("huge"):
        return "body over 512 KiB"
    return "body read"


def short_spec(spec: dict) -> dict:
    return {k: spec[k] for k in ("rid", "phase", "method", "path", "body_kind", "send", "stream", "header_kinds") if k in spec}


def analyse(specs: dict[int, dict], results: dict[int, dict], records: list[dict], ctx: dict) -> dict:
    by_answer = {r["answer_id"]: r for r in records}
    by_rid: dict[str, list[dict]] = collections.defaultdict(list)
    for r in records:
        by_rid[r["rid"]].append(r)
    for lst in by_rid.values():
        lst.sort(key=lambda r: r["order"])

    report: dict = {}

    # -- what the client saw -----------------------------------------------
    res = list(results.values())
    report["client"] = {
        "sent": len(res),
        "statuses": dict(collections.Counter(str(r["status"] or "none") for r in res).most_common()),
        "status_classes": dict(collections.Counter(status_class(r) for r in res).most_common()),
        "outcomes": dict(collections.Counter(r["outcome"] for r in res).most_common()),
        "categories": dict(collections.Counter(client_category(r) for r in res).most_common()),
        "connection_errors": sum(1 for r in res if r["outcome"] not in ("complete", "gave_up")),
        "by_phase": {
            ph: dict(collections.Counter(status_class(r) for r in res if r["phase"] == ph).most_common())
            for ph in ("A", "B")
        },
        "by_weather": {
            w: dict(collections.Counter(status_class(r) for r in res if r["storm"] == (w == "storm")).most_common())
            for w in ("calm", "storm")
        },
    }

    # -- client credentials upstream -------------------------------------
    cred_examples: dict[str, list] = collections.defaultdict(list)
    by_header: collections.Counter = collections.Counter()
    by_case: collections.Counter = collections.Counter()
    leaking_requests = 0
    cross = 0
    for rec in records:
        if not rec["markers"]:
            continue
        leaking_requests += 1
        for header, marker in rec["markers"]:
            m = re.match(r"hcred-(\d+)-([a-z-]+)-", marker, re.IGNORECASE)
            origin = int(m.group(1)) if m else None
            if origin is not None and str(origin) != rec["rid"]:
                cross += 1
            spec = specs.get(origin, {})
            h = header.lower()
            by_header[h] += 1
            case = f"{h} | {spec.get('send')} body {spec.get('body_kind')} | attempt {rec['order']} | {spec.get('path')}"
            by_case[case] += 1
            if len(cred_examples[h]) < 6:
                cred_examples[h].append({
                    "vendor": rec["vendor"], "rid": rec["rid"], "attempt": rec["order"], "path": rec["path"],
                    "header": header, "marker": marker, "body_len_upstream": rec["body_len"],
                    "client": short_spec(spec),
                })
    report["credentials"] = {
        "violations": sum(by_header.values()),
        "upstream_requests_with_client_credentials": leaking_requests,
        "upstream_requests": len(records),
        "cross_request": cross,
        "by_header": dict(by_header.most_common()),
        "by_case": dict(by_case.most_common(40)),
        "examples": cred_examples,
    }

    # -- cut answers presented as complete ---------------------------------
    trunc_examples = []
    trunc_cases: collections.Counter = collections.Counter()
    trunc_framing: collections.Counter = collections.Counter()
    cut_fate: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for rec in records:
        if rec["cut"]:
            r = results.get(int(rec["rid"])) if rec["rid"].isdigit() else None
            if r is None:
                cut_fate[rec["behaviour"]]["client result missing"] += 1
            elif r["answer"] != rec["answer_id"]:
                cut_fate[rec["behaviour"]]["another answer reached the client"] += 1
            else:
                cut_fate[rec["behaviour"]][client_category(r)] += 1
    for r in res:
        rec = by_answer.get(r["answer"])
        if rec is None or not rec["cut"]:
            continue
        if not (200 <= r["status"] < 300) or r["outcome"] != "complete":
            continue
        if "sse" in r:
            violation = not r["sse"]["last_is_error"]
        else:
            violation = r.get("json") == "answer"
        if violation:
            trunc_cases[rec["behaviour"]] += 1
            trunc_framing[f"{rec['behaviour']} ({request_shape(specs[r['rid']])}): vendor sent {how_sent(rec, False)}; "
                          f"client got {r['framing']}"
                          + (", bytes after the response" if r.get("extra_after") else "")] += 1
            if len(trunc_examples) < 25:
                trunc_examples.append({
                    "rid": r["rid"], "vendor": rec["vendor"], "vendor_behaviour": rec["behaviour"],
                    "vendor_sent": how_sent(rec),
                    "attempt": rec["order"], "client_status": r["status"], "client_framing": r["framing"],
                    "client_body_len": r["body_len"], "sse": r.get("sse"), "json": r.get("json"),
                    "extra_bytes_after": r.get("extra_after"), "client": short_spec(specs[r["rid"]]),
                })
    report["truncation"] = {
        "violations": sum(trunc_cases.values()),
        "by_vendor_behaviour": dict(trunc_cases.most_common()),
        "by_case": dict(trunc_framing.most_common()),
        "examples": trunc_examples,
        "cut_answers_sent": sum(1 for r in records if r["cut"]),
        "what_became_of_cut_answers": {k: dict(v.most_common()) for k, v in sorted(cut_fate.items())},
    }

    # -- findings (reported; --strict fails on them) ----------------------
    findings: dict[str, dict] = {}

    forged = [r for r in res if any(
        FORGED_MARK in v or v == "99" or "evil" in v for vals in r["filter_headers"].values() for v in vals)]
    dup_filter = [r for r in res if any(len(v) > 1 for v in r["filter_headers"].values())]
    findings["forged_filter_headers_reach_client"] = {
        "count": len(forged),
        "duplicated_filter_headers": len(dup_filter),
        "forging_answers_sent": sum(1 for r in records if "forge" in r.get("modifiers", [])),
        "examples": [{"rid": r["rid"], "status": r["status"], "filter_headers": r["filter_headers"], "answer": r["answer"]}
                     for r in forged[:8]],
    }

    bypass = [rec for rec in records if rec["model_bypass"]]
    bypass_cases: collections.Counter = collections.Counter()
    for rec in bypass:
        spec = specs.get(int(rec["rid"])) if rec["rid"].isdigit() else {}
        label = documented_bypass(spec)
        bypass_cases[f"{spec.get('body_kind')} ({spec.get('send')}, phase {spec.get('phase')})"
                     + (f" [documented: {label}]" if label else "")] += 1
    findings["model_map_bypass"] = {
        "count": len(bypass),
        "count_excluding_documented": sum(
            1 for rec in bypass if not documented_bypass(specs.get(int(rec["rid"])) if rec["rid"].isdigit() else None)),
        "by_client_body": dict(bypass_cases.most_common()),
        "examples": [{"vendor": rec["vendor"], "rid": rec["rid"], "models_received": rec["model_bypass"],
                      "attempt": rec["order"], "body_head": rec["body_head"][:120],
                      "client": short_spec(specs.get(int(rec["rid"]), {})) if rec["rid"].isdigit() else None}
                     for rec in bypass[:8]],
    }

    not_rescued = collections.Counter()
    not_rescued_ex = []
    rescuable_first = collections.Counter()
    for rid_s, recs in by_rid.items():
        if not rid_s.isdigit():
            continue
        rid = int(rid_s)
        spec, r = specs.get(rid), results.get(rid)
        first = recs[0]
        if spec is None or r is None or first["behaviour"] not in RESCUABLE:
            continue
        if first["behaviour"] == "status_big" and first["status"] == 400:
            continue
        held = (spec["method"] == "POST" and known_format(spec["path"]) and spec["body_kind"] != "empty"
                and not spec["body_kind"].startswith("huge") and spec["send"] != "short")
        if not held or single_candidate(spec):
            continue
        if first["behaviour"] == "garbage" and r["status"] == 999:
            continue  # the vendor's status 999 passed through: neutral, as any other status over 400
        # A 200 stream is held for its first event only when the request
        # asked for a stream (in a body the filter can read).
        if first["behaviour"].startswith("sse_") and not (
                first["asked_stream"] and spec["body_kind"] not in ("nested", "dup_model", "malformed")):
            continue
        key = (first["behaviour"], spec["phase"], "storm" if spec["storm"] else "calm")
        rescuable_first[key] += 1
        ok = 200 <= r["status"] < 300 and r["outcome"] == "complete"
        filter_gave_up = "x-llm-failover-tried" in r["filter_headers"] and r["answer"] == ""
        if len(recs) == 1 and not ok and not filter_gave_up:
            not_rescued[key] += 1
            if len(not_rescued_ex) < 12:
                not_rescued_ex.append({"rid": rid, "vendor": first["vendor"], "behaviour": first["behaviour"],
                                       "vendor_status": first["status"], "client": client_category(r),
                                       "client_status": r["status"], "phase": spec["phase"]})
    findings["failed_first_attempts_not_rescued"] = {
        "count": sum(not_rescued.values()),
        "note": "first attempt failed before any byte reached the client, the request was held (known path, "
                "a body of 1 byte to 512 KiB), more than one vendor could serve it, only one was asked, and the "
                "client got no 2xx and no filter 503",
        "by_behaviour_phase_weather": {f"{b} (phase {p}, {w})": f"{n} of {rescuable_first[(b, p, w)]}"
                                       for (b, p, w), n in sorted(not_rescued.items())},
        "examples": not_rescued_ex,
    }

    replaced = collections.Counter()
    replaced_ex = []
    for rid_s, recs in by_rid.items():
        r = results.get(int(rid_s)) if rid_s.isdigit() else None
        if r is None or r["answer"] or "x-llm-failover-tried" in r["filter_headers"]:
            continue  # a vendor's answer, or the filter's own 503
        for i, rec in enumerate(recs):
            if rec["behaviour"] == "status_big":
                head = (r.get("body_head") or "")[:40]
                replaced[f"vendor {rec['status']} with a 10 MB body (attempt {i + 1} of {len(recs)}) -> client "
                         f"{r['status'] or r['outcome']} {head!r}"] += 1
                if len(replaced_ex) < 8:
                    replaced_ex.append({"rid": r["rid"], "vendor": rec["vendor"], "vendor_status": rec["status"],
                                        "attempt": i, "vendor_attempts": len(recs), "client_status": r["status"],
                                        "client_outcome": r["outcome"], "client_body_head": head})
                break
    findings["big_error_bodies_replaced"] = {
        "count": sum(replaced.values()),
        "note": "a vendor answered an error with a 10 MB body; the client got neither a vendor's answer nor the "
                "filter's own 503",
        "big_error_answers_sent": sum(1 for r in records if r["behaviour"] == "status_big"),
        "cases": dict(replaced.most_common()),
        "examples": replaced_ex,
    }

    framing = [r for r in res if r.get("extra_after") or r.get("debris_before")
               or (r["outcome"] == "bad_head" and r["position"] > 0)]
    findings["response_framing_broken"] = {
        "count": len(framing),
        "note": "bytes after a complete response, or a garbled response on a reused connection",
        "examples": [{"rid": r["rid"], "status": r["status"], "outcome": r["outcome"], "position": r["position"],
                      "extra_after": r.get("extra_after"), "extra_head": r.get("extra_head"),
                      "answer": r["answer"], "vendor_behaviour": by_answer.get(r["answer"], {}).get("behaviour"),
                      "note": r.get("note")} for r in framing[:10]],
    }

    refused = [r for r in res if r["status"] == 413 and specs[r["rid"]]["body_kind"].startswith("huge")]
    findings["large_bodies_refused_413"] = {
        "count": len(refused),
        "note": "a body over 512 KiB is documented to pass through untouched; Envoy answered 413 (its 1 MiB "
                "buffer limit), so something held more than that",
        "by_client_body": dict(collections.Counter(
            f"{specs[r['rid']]['body_kind']} ({specs[r['rid']]['send']}, phase {r['phase']})" for r in refused)),
        "huge_requests": sum(1 for s_ in specs.values() if s_["body_kind"].startswith("huge") and s_["rid"] in results),
    }

    key_missing = [rec for rec in records if not rec["own_key"]]
    findings["vendor_key_missing"] = {
        "count": len(key_missing),
        "by_client_body": dict(collections.Counter(
            f"{specs[int(rec['rid'])]['body_kind']} ({specs[int(rec['rid'])]['send']})" if rec["rid"].isdigit() else "?"
            for rec in key_missing).most_common()),
    }
    findings["another_vendors_key_sent"] = {
        "count": sum(1 for rec in records if rec["foreign_keys"]),
    }
    routing = []
    for rec in records:
        vals = [v for n, v in rec["headers"] if n.lower() == "x-llm-failover-cluster"]
        if vals and vals != [rec["vendor"]]:
            routing.append({"vendor": rec["vendor"], "routing_header": vals, "rid": rec["rid"]})
    findings["routing_header_mismatch_upstream"] = {"count": len(routing), "examples": routing[:5]}
    log_body_off = [l for l in ctx["log_lines"] if BODY_OFF_LOG in l]
    findings["body_reading_switched_off"] = {
        "count": len(log_body_off),
        "note": "the filter decided Envoy does not hand it request bodies (a body slower than 1 s): from then "
                "on that worker routes every request at its headers (no model maps, no rescue)",
        "log": [l[:300] for l in log_body_off[:4]],
    }
    report["findings"] = findings

    # -- rescues -------------------------------------------------------------
    rescued_by_records = sum(
        1 for r in res if r["answer"] and (rec := by_answer.get(r["answer"])) and rec["order"] > 0
        and 200 <= r["status"] < 300)
    rescued_by_header = several_any = 0
    for r in res:
        vals = r["filter_headers"].get("x-llm-failover-attempts", [])
        honest = [v for v in vals if v.isdigit() and v != "99"]
        if honest and int(honest[-1]) > 1:
            several_any += 1
            rescued_by_header += 200 <= r["status"] < 300
    report["rescues"] = {
        "2xx_answers_with_attempts_over_1": rescued_by_header,
        "answers_with_attempts_over_1": several_any,
        "filter_stat_rescued": ctx.get("filter_stats", {}).get("wasmcustom.llm_failover.rescued"),
        "2xx_answers_from_a_later_attempt": rescued_by_records,
        "requests_with_several_vendor_attempts": sum(1 for v in by_rid.values() if len(v) > 1),
    }

    # -- what each first-attempt behaviour became -------------------------------
    matrix: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for rid_s, recs in by_rid.items():
        r = results.get(int(rid_s)) if rid_s.isdigit() else None
        if r is not None:
            matrix[recs[0]["behaviour"]][client_category(r)] += 1
    report["first_behaviour_to_client"] = {k: dict(v.most_common()) for k, v in sorted(matrix.items())}
    report["vendor_behaviours"] = dict(collections.Counter(r["behaviour"] for r in records).most_common())
    return report


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


async def drive(envoy: Envoy, specs: list, seed: int, concurrency: int, monitor: Monitor, n: int) -> tuple[dict, dict]:
    stop = asyncio.Event()
    watcher = asyncio.create_task(monitor.watch(stop))
    results: dict[int, dict] = {}
    phase_stats = {}
    t0 = time.time()
    last = [0.0]

    for phase in ("A", "B"):
        part = [s for s in specs if s.phase == phase]
        if not part:
            continue
        runner = hclient.Runner(envoy.port, seed, concurrency)
        base = len(results)

        def progress(done, base=base):
            if time.time() - last[0] > 10:
                last[0] = time.time()
                print(f"  {base + done}/{n} requests, {time.time() - t0:.0f} s", flush=True)

        results.update(await runner.run(part, progress))
        try:
            phase_stats[phase] = stats_text_to_dict(await asyncio.to_thread(admin_get, envoy, "/stats?filter=wasmcustom"))
        except OSError:
            phase_stats[phase] = {}
    stop.set()
    await watcher
    return results, phase_stats


def run_once(n: int, seed: int, concurrency: int, slow_share: float, out: Path, wasm: Path = WASM,
             strict: bool = False) -> dict:
    """One run: Envoy with `wasm`, the vendor, the client; the report (also
    written to `out`, with `<stem>-work/` and `<stem>-envoy.log` beside it)."""
    out_dir = out.parent
    work = out_dir / f"{out.stem}-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t_start = time.time()

    specs = hclient.plan(n, seed, slow_share)
    records_path = work / "vendor-records.jsonl"
    vendor_proc, ports = start_vendor(seed, records_path)
    env = {KEY_ENV[v]: VENDOR_KEYS[v] for v in VENDORS}
    config = envoy_config(
        filter_config(route_deadline=ROUTE_TIMEOUT),
        ports,
        route_timeout=ROUTE_TIMEOUT,
        wasm=wasm,
        failure_policy="FAIL_RELOAD",
        stream_idle_timeout=STREAM_IDLE_TIMEOUT,
        route_idle_timeout=ROUTE_IDLE_TIMEOUT,
        env=env,
    )
    envoy = Envoy(config, concurrency=2, workdir=work / "envoy", log_level=os.environ.get("HOSTILE_WASM_LOG", "info"))
    try:
        envoy.start()
        print(f"hostile: {n} requests, seed {seed}, concurrency {concurrency}, {wasm.name}; "
              f"Envoy pid {envoy.proc.pid} on {envoy.url}, vendors {ports}", flush=True)
        stats_before = envoy.stats()
        rss_before = rss_kib(envoy.proc.pid)
        monitor = Monitor(envoy)
        t_run = time.time()
        results, phase_stats = asyncio.run(drive(envoy, specs, seed, concurrency, monitor, n))
        run_s = time.time() - t_run
        alive = envoy.proc.poll() is None
        try:
            stats_after = envoy.stats()
            filter_stats_text = admin_get(envoy, "/stats?filter=wasmcustom")
        except OSError:
            stats_after, filter_stats_text = {}, ""
        rss_after = rss_kib(envoy.proc.pid) if alive else None
    finally:
        envoy.stop()
        stop_vendor(vendor_proc)
    exit_status = envoy.proc.returncode if envoy.proc else None

    log_lines = envoy.log().splitlines()
    records = load_records(records_path)
    spec_dicts = {s.rid: hclient.asdict(s) for s in specs}

    # Traps: each matching log line, and each increase of a wasm VM failure
    # or reload counter (or of the VMs created after start: a reload).
    trap_lines = [l for l in log_lines if TRAP_RE.search(l)]
    wasm_changes = {
        k: [stats_before.get(k, 0), v] for k, v in stats_after.items()
        if k.startswith("wasm.") and v != stats_before.get(k, 0)
    }
    failure_stats = {k: v for k, v in wasm_changes.items() if WASM_FAILURE_STAT.search(k)}
    vm_created = wasm_changes.get("wasm.envoy.wasm.runtime.v8.created")
    stat_signals = sum(max(0, v[1] - v[0]) for v in failure_stats.values()) + (
        max(0, vm_created[1] - vm_created[0]) if vm_created else 0)
    traps = len(trap_lines) + stat_signals

    report = analyse(spec_dicts, results, records,
                     {"log_lines": log_lines, "filter_stats": stats_text_to_dict(filter_stats_text)})
    report["traps"] = {
        "count": traps,
        "log_lines_matching": len(trap_lines),
        "wasm_stat_signals": stat_signals,
        "log_lines": trap_lines[:20],
        "wasm_stats_changed": wasm_changes,
        "wasm_failure_stats": failure_stats,
        "wasm_stats_after": {k: v for k, v in stats_after.items() if k.startswith("wasm.")},
        "patterns": TRAP_PATTERNS,
    }
    report["envoy"] = {
        "alive_at_end": alive,
        "died_during_run_at_s": monitor.died_at,
        "not_ready_samples": monitor.not_ready[:20],
        "monitor_samples": monitor.samples,
        "exit_status_after_stop": exit_status,
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "rss_kib_max": monitor.rss_max,
        "log_lines": len(log_lines),
        "log_warnings_and_errors": dict(collections.Counter(
            re.sub(r"\d+", "#", l.split("] ", 3)[-1])[:140] for l in log_lines
            if "[warning]" in l or "[error]" in l or "[critical]" in l).most_common(25)),
    }
    report["filter_stats"] = stats_text_to_dict(filter_stats_text)
    report["filter_stats_after_phase"] = phase_stats
    report["run"] = {
        "n": n, "seed": seed, "concurrency": concurrency, "slow_share": slow_share,
        "seconds_total": round(time.time() - t_start, 1), "seconds_requests": round(run_s, 1),
        "envoy": {"route_timeout": ROUTE_TIMEOUT, "route_idle_timeout": ROUTE_IDLE_TIMEOUT,
                  "stream_idle_timeout": STREAM_IDLE_TIMEOUT, "concurrency": 2, "failure_policy": "FAIL_RELOAD"},
        "filter_config": filter_config(route_deadline=ROUTE_TIMEOUT),
        "work_dir": str(work),
        "wasm": str(wasm),
        "wasm_bytes": wasm.stat().st_size,
    }
    conclude(report, strict)
    report["exchanges"] = [results[k] for k in sorted(results)]

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    shutil.copy(envoy.log_path, out_dir / f"{out.stem}-envoy.log")
    return report


def conclude(report: dict, strict: bool) -> None:
    """The must-be-0 counts, the findings' counts, and the verdict."""
    report["must_be_zero"] = {
        "traps": report["traps"]["count"],
        "envoy_died": 0 if report["envoy"]["alive_at_end"] and report["envoy"]["died_during_run_at_s"] is None else 1,
        "client_credentials_upstream": report["credentials"]["violations"],
        "truncated_answers_presented_complete": report["truncation"]["violations"],
    }
    report["findings_summary"] = {k: v["count"] for k, v in report["findings"].items()}
    failed = any(report["must_be_zero"].values()) or (strict and any(report["findings_summary"].values()))
    report["passed"] = not failed


def reanalyse(path: Path, strict: bool) -> dict:
    """The checks again over a finished run's exchanges, vendor records and
    Envoy log (traps, Envoy and stats sections are kept as they were)."""
    old = json.loads(path.read_text())
    work = Path(old["run"]["work_dir"])
    results = {r["rid"]: r for r in old["exchanges"]}
    specs = {s.rid: hclient.asdict(s) for s in hclient.plan(old["run"]["n"], old["run"]["seed"], old["run"]["slow_share"])}
    log_lines = (work / "envoy" / "envoy.log").read_text(errors="replace").splitlines()
    report = analyse(specs, results, load_records(work / "vendor-records.jsonl"),
                     {"log_lines": log_lines, "filter_stats": old.get("filter_stats", {})})
    for key in ("traps", "envoy", "filter_stats", "filter_stats_after_phase", "run"):
        report[key] = old[key]
    conclude(report, strict)
    report["exchanges"] = old["exchanges"]
    path.write_text(json.dumps(report, indent=1, default=str))
    return report


def self_check(args: argparse.Namespace) -> int:
    """Proves the detectors fire: a module that traps must show traps; the
    bench's empty filter (which strips nothing and closes no cut stream)
    must show client credentials upstream and cut answers shown complete."""
    import trapwasm

    RESULTS.mkdir(parents=True, exist_ok=True)
    ok = True
    trap = trapwasm.write(RESULTS / "selfcheck-trap.wasm")
    r = run_once(60, args.seed, 8, 0.0, RESULTS / "selfcheck-trap.json", wasm=trap)
    seen = r["must_be_zero"]["traps"]
    print(f"self-check: trapping module -> traps {seen} "
          f"({r['traps']['log_lines_matching']} log lines, {r['traps']['wasm_stat_signals']} stat signals: "
          f"{r['traps']['wasm_failure_stats']})")
    ok &= seen > 0
    empty = WASM.parent / "empty_filter.wasm"
    if not empty.exists():
        print(f"self-check: {empty} is missing (make build builds it)")
        return 2
    r = run_once(400, args.seed, 16, 0.0, RESULTS / "selfcheck-empty.json", wasm=empty)
    creds, cut = r["must_be_zero"]["client_credentials_upstream"], r["must_be_zero"]["truncated_answers_presented_complete"]
    print(f"self-check: empty filter -> client credentials upstream {creds} (by header "
          f"{r['credentials']['by_header']}), cut answers shown complete {cut}, traps {r['must_be_zero']['traps']}")
    ok &= creds > 0 and cut > 0 and r["must_be_zero"]["traps"] == 0
    print("self-check PASSED: the detectors fire" if ok else "self-check FAILED")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=int(os.environ.get("HOSTILE_N", 10000)))
    p.add_argument("--seed", type=int, default=int(os.environ.get("HOSTILE_SEED", 1)))
    p.add_argument("--concurrency", type=int, default=int(os.environ.get("HOSTILE_CONCURRENCY", 48)))
    p.add_argument("--slow-share", type=float, default=0.3,
                   help="share of requests (the last ones, phase B) that may trickle for up to 2 s or stop short")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument("--wasm", type=Path, default=WASM, help="the filter to run (default: the release build)")
    p.add_argument("--strict", action="store_true", help="findings fail the run too")
    p.add_argument("--reanalyse", type=Path, metavar="REPORT",
                   help="recompute the checks of an earlier run (its report, work dir and log) without running")
    p.add_argument("--self-check", action="store_true",
                   help="instead of a run: show that a trapping module and the empty filter are caught")
    args = p.parse_args()
    if args.self_check:
        return self_check(args)
    if args.reanalyse:
        report = reanalyse(args.reanalyse, args.strict)
        print_summary(report, args.reanalyse)
        return 0 if report["passed"] else 1
    if not args.wasm.exists():
        print(f"{args.wasm} is missing: build it first (make build)", file=sys.stderr)
        return 2
    report = run_once(args.n, args.seed, args.concurrency, args.slow_share, args.out, args.wasm, args.strict)
    print_summary(report, args.out)
    return 0 if report["passed"] else 1


def print_summary(r: dict, out: Path) -> None:
    c = r["client"]
    print()
    print(f"hostile run: N={c['sent']} seed={r['run']['seed']} in {r['run']['seconds_requests']} s "
          f"({r['run']['seconds_total']} s total)")
    print(f"  client statuses: {c['status_classes']}; outcomes: {c['outcomes']}")
    print(f"  connection errors seen by the client: {c['connection_errors']}")
    if c["outcomes"].get("client_bug"):
        print(f"  WARNING: {c['outcomes']['client_bug']} exchanges hit a bug of the hostile client (see latest.json)")
    rs = r["rescues"]
    print(f"  rescued: {rs['2xx_answers_with_attempts_over_1']} 2xx answers with x-llm-failover-attempts > 1 "
          f"({rs['2xx_answers_from_a_later_attempt']} by the vendor's records, {rs['filter_stat_rescued']} by the "
          f"filter's stat); {rs['answers_with_attempts_over_1']} answers of any status with attempts > 1")
    e = r["envoy"]
    print(f"  Envoy RSS: {e['rss_kib_before']} KiB before, {e['rss_kib_after']} KiB after (max {e['rss_kib_max']})")
    print("MUST BE 0:")
    for k, v in r["must_be_zero"].items():
        print(f"  {'FAIL' if v else 'ok  '} {k}: {v}")
    cred = r["credentials"]
    if cred["violations"]:
        print(f"       {cred['upstream_requests_with_client_credentials']} of {cred['upstream_requests']} upstream "
              f"requests carried client credentials; by header: {cred['by_header']}")
        shown = collections.Counter()
        for case, n in cred["by_case"].items():
            header = case.split(" | ")[0]
            if shown[header] < 3:
                shown[header] += 1
                print(f"       {n:6d}  {case}")
    tr = r["truncation"]
    if tr["violations"]:
        for case, n in tr["by_case"].items():
            print(f"       {n:6d}  {case}")
    if r["traps"]["log_lines"]:
        for l in r["traps"]["log_lines"][:5]:
            print(f"       log: {l[:200]}")
    print("FINDINGS (reported):")
    for k, v in r["findings_summary"].items():
        print(f"  {v:6d}  {k}")
    print(f"everything: {out}")
    print("PASSED" if r["passed"] else "FAILED")


if __name__ == "__main__":
    sys.exit(main())
