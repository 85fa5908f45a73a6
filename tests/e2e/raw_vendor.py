"""A scripted upstream on a raw socket, for answers no well-behaved HTTP
server sends: a wrong content-length, a reset after the headers, a 10 MB
error body, forged headers. Each connection reads one request and plays
the script given for it: a list of ``bytes`` to send, ``("sleep", s)``,
``"close"`` or ``"reset"``."""

from __future__ import annotations

import socket
import struct
import threading
import time


class RawVendor:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.script: list = [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        self.requests: list[bytes] = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def play(self, script: list) -> None:
        self.script = script

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(rest) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                rest += chunk
            self.requests.append(head + b"\r\n\r\n" + rest)
            for step in self.script:
                if isinstance(step, bytes):
                    conn.sendall(step)
                elif step == "close":
                    conn.shutdown(socket.SHUT_WR)
                    time.sleep(0.05)
                    break
                elif step == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                elif isinstance(step, tuple) and step[0] == "sleep":
                    time.sleep(step[1])
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop = True
        self.sock.close()


def response(status: int, headers: dict[str, str], body: bytes, length: int | None = None) -> bytes:
    """An HTTP/1.1 response; ``length`` overrides the content-length sent."""
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
