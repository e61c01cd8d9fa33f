#!/usr/bin/env python3
"""Writes seed corpora for lb's fuzz targets into corpus/<target>/: the request cases of
sluice/tests/http-cases/sluice.json (and ../shared/http-cases when present), plus a few
response heads and chunked bodies. Seeds only start the search; libFuzzer mutates them."""
import base64, json, os, pathlib, sys

here = pathlib.Path(__file__).resolve().parent
root = here.parent.parent
cases = json.loads((root / "sluice/tests/http-cases/sluice.json").read_text())
shared = root.parent / "shared/http-cases/requests.json"
if shared.exists():
    cases += json.loads(shared.read_text())

def raw(c):
    if "raw_base64" in c:
        return base64.b64decode(c["raw_base64"])
    return c["raw"].encode("latin-1")

requests = [raw(c) for c in cases]
heads = [r.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" for r in requests]
bodies = [r.split(b"\r\n\r\n", 1)[1] for r in requests if b"chunked" in r.lower() and b"\r\n\r\n" in r]
bodies += [b"5\r\nhello\r\n0\r\n\r\n", b"1;a=b\r\nx\r\n0\r\nX-T: v\r\n\r\n", b"000\r\n\r\n"]
responses = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nSet-Cookie: a=b\r\n\r\n",
]
trailers = [b"X-A: v\r\n\r\n", b"\r\n", b"A:\r\nB: c\r\n\r\n"]
edits = [b"X-Set=v\nX-Add=w\nHost\x00" + h for h in heads[:40]]

out = {
    "request_head": heads,
    "request_head_vs_httparse": heads,
    "header_edits": edits,
    "response_head": [bytes([f]) + r for r in responses for f in (0, 1, 2, 6)],
    "chunked_request": [b"\x00" * 8 + b for b in bodies],
    "chunked_response": [b"\x03\x07\x00\x00\x00\x00\x00\x00" + b for b in bodies],
    "trailers": trailers,
}
only = sys.argv[1:]
for target, seeds in out.items():
    if only and target not in only:
        continue
    d = here / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(seeds):
        (d / f"seed-{i:03}").write_bytes(s)
print("seeds:", {t: len(s) for t, s in out.items()})
