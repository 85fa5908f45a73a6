"""`make watch`: sends a chat completion every 200 ms through the demo Envoy
and prints one line per request: time, status, the vendor that answered."""

from __future__ import annotations

import http.client
import json
import sys
import time

URL_HOST, URL_PORT = "127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 10000
BODY = json.dumps({"model": "claude-sonnet", "messages": [{"role": "user", "content": "hi"}]})


def main() -> None:
    conn = http.client.HTTPConnection(URL_HOST, URL_PORT, timeout=30)
    last = None
    while True:
        started = time.time()
        try:
            conn.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
            r = conn.getresponse()
            r.read()
            vendor = r.getheader("x-llm-failover-vendor", "-")
            tried = r.getheader("x-llm-failover-tried")
            line = f"{r.status} {vendor}" + (f" (rescued; tried {tried})" if tried else "")
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            conn = http.client.HTTPConnection(URL_HOST, URL_PORT, timeout=30)
            line = f"error {type(e).__name__}"
        took = (time.time() - started) * 1000
        marker = "" if line == last else "   <- changed"
        print(f"{time.strftime('%H:%M:%S')}  {line:<44} {took:6.0f} ms{marker}", flush=True)
        last = line
        time.sleep(max(0.0, 0.2 - (time.time() - started)))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
