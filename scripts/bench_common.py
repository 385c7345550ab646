"""What scripts/bench_autoscale.py and scripts/bench_routing.py share: the admin API over
urllib, reading a request trace, keep-alive connections for the load, percentiles, the
machine's CPU counters and a bounded wait. Standard library only; loopback only (the callers
pass their URL)."""

import asyncio
import csv
import datetime
import json
import math
import time
import urllib.error
import urllib.request


def request_json(base_url, method, path, body=None, timeout=30, token=None):
    """(status, body): JSON when the answer says so, else text."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base_url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            raw = res.read()
            ctype = res.headers.get("Content-Type", "")
            return res.status, (json.loads(raw) if raw and "json" in ctype else raw.decode(errors="replace") or None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"null")
        except ValueError:
            return e.code, raw.decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# The trace


def parse_time(text):
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    # Python's fromisoformat wants at most 6 fractional digits before 3.11.
    if "." in text:
        head, frac = text.rsplit(".", 1)
        digits = "".join(c for c in frac if c.isdigit())
        text = f"{head}.{digits[:6]}{frac[len(digits):]}"
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def load_trace(path):
    """[(arrival s from the first, prompt tokens, output tokens)], sorted. The columns are found
    by name (timestamp, context/prompt/input tokens, generated/output tokens), else taken as the
    first three."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]]

    def col(words, default):
        for i, h in enumerate(header):
            if any(w in h for w in words):
                return i
        return default

    try:
        parse_time(rows[0][0])
        has_header = False
    except ValueError:
        has_header = True
    t_i = col(["timestamp", "time", "arrival"], 0)
    p_i = col(["context", "prompt", "input"], 1)
    g_i = col(["generated", "output", "completion"], 2)
    out = []
    for r in rows[1:] if has_header else rows:
        if len(r) < 3 or not r[t_i].strip():
            continue
        out.append((parse_time(r[t_i]), max(0, int(float(r[p_i]))), max(1, int(float(r[g_i])))))
    out.sort()
    t0 = out[0][0]
    return [(t - t0, p, g) for t, p, g in out]


# ---------------------------------------------------------------------------------------------
# The load: keep-alive connections to the load balancer


class Pool:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.idle = []

    async def get(self):
        """(reader, writer, reused)."""
        while self.idle:
            r, w = self.idle.pop()
            if not w.is_closing() and not r.at_eof():
                return r, w, True
            w.close()
        r, w = await asyncio.open_connection(self.host, self.port)
        return r, w, False

    def put(self, r, w):
        self.idle.append((r, w))

    def close(self):
        for _, w in self.idle:
            w.close()
        self.idle.clear()


class Stale(Exception):
    """A reused keep-alive connection the server had closed: send again on a new one."""


async def post_stream(pool, body, headers=None, loop=None):
    """Sends one streamed `POST /v1/chat/completions` (`body`: JSON bytes) on a kept-alive
    connection from `pool`, once more on a fresh connection when a reused one turns out closed,
    and reads the whole answer (chunked, sized or to the close). Returns {"status", "first" (loop
    time of the first `data:`), "end", "node" (X-Skylaunch-Node), "body" (bytes, unchunked),
    "error" (None, "http N", "incomplete stream" without a first event or `data: [DONE]`, or the
    exception's name)}."""
    loop = loop or asyncio.get_running_loop()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {pool.host}:{pool.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode()
    out = {"status": None, "first": None, "end": None, "node": None, "body": b"", "error": None}
    for attempt in range(2):
        r, w, reused = await pool.get()
        got_any = False
        try:
            w.write(head + body)
            line = await r.readline()
            if not line:
                raise Stale()
            got_any = True
            status = int(line.split()[1])
            chunked, length, close = False, None, False
            while True:
                h = await r.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                k, v = k.strip().lower(), v.strip()
                if k == "transfer-encoding" and "chunked" in v.lower():
                    chunked = True
                elif k == "content-length":
                    length = int(v)
                elif k == "connection" and v.lower() == "close":
                    close = True
                elif k == "x-skylaunch-node":
                    out["node"] = v
            parts = []
            if chunked:
                while True:
                    size = int((await r.readline()).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        await r.readline()
                        break
                    data = (await r.readexactly(size + 2))[:-2]
                    if out["first"] is None and b"data:" in data:
                        out["first"] = loop.time()
                    parts.append(data)
            elif length is not None:
                parts.append(await r.readexactly(length))
            else:
                parts.append(await r.read())
                close = True
            out["end"] = loop.time()
            if close:
                w.close()
            else:
                pool.put(r, w)
            out["body"] = b"".join(parts)
            out["status"] = status
            if out["first"] is None and b"data:" in out["body"]:
                out["first"] = out["end"]
            if status != 200:
                out["error"] = f"http {status}"
            elif out["first"] is None or b"data: [DONE]" not in out["body"]:
                out["error"] = "incomplete stream"
            return out
        except (Stale, ConnectionError, asyncio.IncompleteReadError, OSError, ValueError) as e:
            w.close()
            if reused and not got_any and attempt == 0:
                continue  # a kept-alive connection the server had closed: try a fresh one
            out["error"] = type(e).__name__
            return out
        except asyncio.CancelledError:
            w.close()
            raise
    out["error"] = "stale connections"
    return out


# ---------------------------------------------------------------------------------------------
# Figures


def q(sorted_values, p):
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(p * len(sorted_values)) - 1))
    return sorted_values[k]


def fmt_s(v):
    return "failed" if v == math.inf else ("n/a" if v != v else f"{v:.2f} s")


def machine_busy():
    """(busy, total) jiffies of every CPU of the machine, from /proc/stat."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def wait_for(who, what, check, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.25)
    raise SystemExit(f"{who}: timed out waiting for {what}")
