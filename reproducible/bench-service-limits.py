#!/usr/bin/env python3
"""Listener limits of a running `dcr-attest serve` on 127.0.0.1 (BENCHMARKS.md).

  bench-service-limits.py slowloris PORT   half a request header; seconds until the cut
  bench-service-limits.py conns PORT       1700 idle connections from 17 loopback addresses
  bench-service-limits.py flood PORT N     N challenges from 127.0.0.2 (one connection,
                                           64 pipelined), then 100 from 127.0.0.3
"""
import collections
import socket
import sys
import time


def conn(port, src):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def slowloris(port):
    s = conn(port, "127.0.0.1")
    s.send(b"POST /v1/challenge HTTP/1.1\r\nHost: t\r\nContent-Le")
    t0 = time.time()
    s.settimeout(120)
    try:
        r = s.recv(100)
        print(f"slowloris: half header cut after {time.time() - t0:.2f} s ({r!r})")
    except OSError as e:
        print(f"slowloris: still connected after {time.time() - t0:.0f} s ({e})")


def state(c):
    c.setblocking(False)
    try:
        return "closed" if c.recv(1) == b"" else "data"
    except BlockingIOError:
        return "open"
    except ConnectionResetError:
        return "reset"


def get(port, src):
    c = conn(port, src)
    c.settimeout(5)
    try:
        c.send(b"GET /v1/service HTTP/1.1\r\nHost: t\r\n\r\n")
        return c.recv(15)
    except OSError as e:
        return repr(e)


def conns(port):
    held = [conn(port, f"127.0.0.{a}") for a in range(2, 17) for _ in range(100)]
    held += [conn(port, "127.0.0.20") for _ in range(200)]
    time.sleep(1)
    by = collections.Counter(state(c) for c in held)
    print(f"conns: {len(held)} idle connections opened, {by['open']} kept open, "
          f"{by['closed'] + by['reset']} closed at once")
    print(f"conns: a request from 127.0.0.1 while they are held: {get(port, '127.0.0.1')!r}")
    for c in held:
        c.close()
    time.sleep(0.5)
    print(f"conns: once they are gone: {get(port, '127.0.0.1')!r}")


def challenges(s, k, pipeline=64):
    body = b'{"tee":"snp"}'
    req = (b"POST /v1/challenge HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    f = s.makefile("rb")
    codes = collections.Counter()
    sent = got = 0
    while got < k:
        while sent < k and sent - got < pipeline:
            s.sendall(req)
            sent += 1
        codes[int(f.readline().split()[1])] += 1
        n = 0
        while True:
            h = f.readline()
            if h in (b"\r\n", b""):
                break
            if h.lower().startswith(b"content-length:"):
                n = int(h.split(b":")[1])
        f.read(n)
        got += 1
    return dict(codes)


def flood(port, n):
    t0 = time.time()
    codes = challenges(conn(port, "127.0.0.2"), n)
    dt = time.time() - t0
    print(f"flood: {n} challenges from 127.0.0.2 in {dt:.1f} s = {n / dt:.0f}/s, statuses {codes}")
    print(f"flood: then 100 from 127.0.0.3: statuses {challenges(conn(port, '127.0.0.3'), 100)}")


if __name__ == "__main__":
    what, port = sys.argv[1], int(sys.argv[2])
    if what == "slowloris":
        slowloris(port)
    elif what == "conns":
        conns(port)
    else:
        flood(port, int(sys.argv[3]))
