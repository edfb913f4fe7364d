#!/usr/bin/env python3
"""tests/daemon/peer.py — a client of mixd that test_daemon.py runs as another uid (setpriv),
to see the daemon's per-user limits from the outside.

usage: peer.py SOCKET N MODE WAIT [JSON]

Opens N connections to SOCKET. MODE says what each then does:
  partial   send the first 2 bytes of a frame header, and nothing more
  idle      send nothing
  generate  send one request JSON (a map without "id"; default a long generation; a key
            "prompt_bytes": N stands for a prompt of N bytes of text) and never
            read anything (both lines below then report every connection as accepted, none closed)
After 0.5 s it prints one JSON line: {"accepted": [i...], "refused": {i: "code: message"}} (a
refused connection got an error frame and was closed at once). Then it watches the accepted
ones for up to WAIT seconds and prints {"closed": {i: [seconds, "code: message" or ""]}} once
every accepted connection has been closed by the daemon (or WAIT has passed), and exits.
"""
import json
import select
import socket
import struct
import sys
import time

import msgpack


def first_error(data):
    """'code: message' of the first frame in data if it is an error, else ''."""
    if len(data) < 4:
        return ""
    (n,) = struct.unpack(">I", data[:4])
    if len(data) < 4 + n:
        return ""
    try:
        m = msgpack.unpackb(data[4:4 + n], raw=False)
    except Exception:  # noqa: BLE001
        return ""
    e = m.get("error") if isinstance(m, dict) else None
    return "%s: %s" % (e.get("code"), e.get("message")) if isinstance(e, dict) else ""


def main():
    path, n, mode, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    req = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {"op": "generate", "prompt": "ROMEO:", "n_predict": 100000}
    if "prompt_bytes" in req:  # a long prompt (too long for a command-line argument)
        n_bytes = req.pop("prompt_bytes")
        req["prompt"] = ("To be, or not to be, that is the question. " * (n_bytes // 40 + 1))[:n_bytes]
    conns, data, eof = [], [], []
    for i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        try:
            if mode == "partial":
                s.sendall(b"\x00\x00")
            elif mode == "generate":
                body = msgpack.packb(dict(req, id=1), use_bin_type=True)
                s.sendall(struct.pack(">I", len(body)) + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed already: its error frame is still there to read
        conns.append(s)
        data.append(b"")
        eof.append(None)
    t0 = time.monotonic()

    def poll(until):
        while time.monotonic() < until:
            live = [s for i, s in enumerate(conns) if eof[i] is None]
            if not live:
                return
            ready, _, _ = select.select(live, [], [], max(0.0, until - time.monotonic()))
            for s in ready:
                i = conns.index(s)
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    data[i] += chunk
                else:
                    eof[i] = time.monotonic() - t0

    if mode == "generate":  # the output is never read: hold the connections, then leave
        print(json.dumps({"accepted": list(range(n)), "refused": {}}), flush=True)
        time.sleep(wait)
        print(json.dumps({"closed": {}}), flush=True)
        return
    poll(t0 + 0.5)
    refused = {i: first_error(data[i]) for i in range(n) if eof[i] is not None and first_error(data[i])}
    accepted = [i for i in range(n) if i not in refused]
    print(json.dumps({"accepted": accepted, "refused": refused}), flush=True)
    end = time.monotonic() + wait
    while time.monotonic() < end and any(eof[i] is None for i in accepted):
        poll(min(end, time.monotonic() + 0.2))
    closed = {i: [eof[i], first_error(data[i])] for i in accepted if eof[i] is not None}
    print(json.dumps({"closed": closed}), flush=True)


if __name__ == "__main__":
    main()
