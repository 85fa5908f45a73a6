"""A proxy-wasm module that traps, assembled byte by byte (no toolchain):
every request's headers callback executes `unreachable`. The self-check
(`run.py --self-check`) loads it into Envoy to prove that the trap detector
sees a trapping VM.
"""

from __future__ import annotations

from pathlib import Path

I32 = 0x7F


def uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def vec(items: list[bytes]) -> bytes:
    return uleb(len(items)) + b"".join(items)


def name(s: str) -> bytes:
    return uleb(len(s)) + s.encode()


def section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + uleb(len(payload)) + payload


def functype(params: list[int], results: list[int]) -> bytes:
    return b"\x60" + vec([bytes([p]) for p in params]) + vec([bytes([r]) for r in results])


def module() -> bytes:
    types = [
        functype([], []),  # 0: proxy_abi_version_0_2_1
        functype([I32], [I32]),  # 1: proxy_on_memory_allocate
        functype([I32, I32], []),  # 2: proxy_on_context_create
        functype([I32, I32], [I32]),  # 3: proxy_on_vm_start, proxy_on_configure
        functype([I32, I32, I32], [I32]),  # 4: proxy_on_request_headers
    ]
    # (export name, type index, body)
    funcs = [
        ("proxy_abi_version_0_2_1", 0, b"\x0b"),
        # A bump allocator would do; the host only asks for small buffers
        # before the trap, so hand out a fixed region.
        ("proxy_on_memory_allocate", 1, b"\x41" + uleb(1024) + b"\x0b"),
        ("proxy_on_context_create", 2, b"\x0b"),
        ("proxy_on_vm_start", 3, b"\x41\x01\x0b"),
        ("proxy_on_configure", 3, b"\x41\x01\x0b"),
        ("proxy_on_request_headers", 4, b"\x00\x0b"),  # unreachable
    ]
    type_sec = section(1, vec(types))
    func_sec = section(3, vec([uleb(t) for _, t, _ in funcs]))
    mem_sec = section(5, vec([b"\x00" + uleb(2)]))  # 2 pages, no maximum
    exports = [name("memory") + b"\x02" + uleb(0)]
    exports += [name(n) + b"\x00" + uleb(i) for i, (n, _, _) in enumerate(funcs)]
    export_sec = section(7, vec(exports))
    bodies = []
    for _, _, code in funcs:
        body = vec([]) + code  # no locals
        bodies.append(uleb(len(body)) + body)
    code_sec = section(10, vec(bodies))
    return b"\x00asm\x01\x00\x00\x00" + type_sec + func_sec + mem_sec + export_sec + code_sec


def write(path: Path) -> Path:
    path.write_bytes(module())
    return path
