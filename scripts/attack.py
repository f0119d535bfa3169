#!/usr/bin/env python3
"""Hostile-client checks of `gen serve` on loopback.

Starts a real `gen serve --port 0` bound to 127.0.0.1, runs a series of attacks against it (each
bounded in count and in time) and after each one checks that the server is still healthy:

  * GET /healthz answers 200 within 1 s,
  * POST /v1/generate {"steps":1} (application/json) answers 200 with a PNG within 2 s,
  * the server's peak RSS during the attack and its RSS now stay under --rss-mb,
  * the process is alive.

Prints one line per attack, `PASS name: ...` or `FAIL name: ...` with the figures seen
(status codes, seconds, RSS MB), then `N passed, M failed`; exits 1 when any failed. Progress
and diagnostics go to stderr, so stdout holds only those lines. The whole run stops by itself
(--max-seconds, default 300): every attack's own bound is cut to fit what is left, and a
watchdog ends the run if something still hangs. The server is killed at the end, always.

Usage (normally through scripts/attack.sh, which builds the binary when it is missing):
  scripts/attack.py [--quick] [--rss-mb 1500] [--gen PATH] [--only a,b] [-- SERVER FLAGS...]
e.g.  scripts/attack.py --quick -- --memory-budget 512

Only ever talks to 127.0.0.1, and refuses server flags that would bind another address.
Standard library only.
"""
import argparse
import atexit
import errno
import http.client
import json
import os
import random
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

HOST = "127.0.0.1"  # the only address the script connects to, and the only one the server binds
PORT = 0            # the server's port, set once it has started

# Server defaults the checks are measured against (the script does not change them).
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
MAX_BODY = 8 << 20
# A within-limit long generation: 16 images × 2 (guidance) × 200 steps = 6400 model rows×steps
# (limit 9216), tens of seconds of work on a small CPU.
LONG_GEN_QUERY = "class=0&count=16&steps=200"
LONG_GEN_JSON = {"class": 0, "count": 16, "steps": 200}
JSON_CT = {"Content-Type": "application/json"}

_print_lock = threading.Lock()


def log(msg):
    """Progress and diagnostics, on stderr (stdout is kept for the PASS/FAIL lines)."""
    with _print_lock:
        sys.stderr.write(f"  [{time.strftime('%H:%M:%S')}] {msg}\n")
        sys.stderr.flush()


def out(msg):
    with _print_lock:
        sys.stdout.write(msg + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Payload builders
# ---------------------------------------------------------------------------------------------

def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_rgb(width, height, rows=None, level=9):
    """A valid 8-bit RGB PNG. `rows`: the raw pixel bytes (height rows of 3·width bytes). None
    means all black, built cheaply however large the declared image (a decompression bomb:
    2000×2000 is about 12 KB that decodes to 12 MB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    if rows is None:
        idat = _zero_zlib(height * (1 + 3 * width))  # each row: filter byte 0, then 0 pixels
    else:
        stride = 3 * width
        idat = zlib.compress(b"".join(b"\x00" + rows[y * stride:(y + 1) * stride] for y in range(height)), level)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _zero_zlib(n):
    """A zlib stream of n zero bytes without compressing n bytes: one 4 MiB block of zeros is
    deflated once and repeated (each copy ends on a full flush, so it refers to nothing before
    it and copies can be concatenated), then the rest, an empty final block, and the Adler-32
    of n zeros, which is (n mod 65521) << 16 | 1."""
    def piece(k):
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(bytes(k)) + c.flush(zlib.Z_FULL_FLUSH)
    block = 4 << 20
    full, rest = divmod(n, block)
    parts = [piece(block)] * full + ([piece(rest)] if rest else [])
    return b"\x78\xda" + b"".join(parts) + b"\x03\x00" + struct.pack(">I", ((n % 65521) << 16) | 1)


def random_png(side=32):
    """A small PNG of random colours (a stream frame that no similarity filter would skip)."""
    return png_rgb(side, side, os.urandom(3 * side * side), level=1)


def multipart(fields, boundary="millraceattack4f2a"):
    """multipart/form-data body. fields: (name, filename or None, data bytes); files are sent as
    image/png. Returns (body, content_type)."""
    b = boundary.encode()
    body = []
    for name, filename, data in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"Content-Disposition: {disp}\r\n" + ("Content-Type: image/png\r\n" if filename else "")
        body.append(b"--" + b + b"\r\n" + head.encode() + b"\r\n" + data + b"\r\n")
    body.append(b"--" + b + b"--\r\n")
    return b"".join(body), f"multipart/form-data; boundary={boundary}"


# ---------------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------------

def _error_name(e):
    """Short name of a failed exchange, used in place of a status code."""
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(e, (http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return "closed"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    return "error:" + type(e).__name__


def request(method, path, body=b"", headers=None, timeout=10.0, head_only=False):
    """One HTTP request on a fresh connection. Returns (status, headers, body, seconds): status
    is the int code, or a string when no response came ("timeout", "reset", "closed",
    "refused", "error:..."); headers are a dict with lowercased names. `timeout` bounds the
    whole exchange (a timer shuts the socket down, so a server that trickles bytes cannot hold
    the caller). head_only: return once the status and headers are in (for endless or long
    responses), closing the connection."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
    fired, sock, r = [], [], None

    def expire():
        fired.append(1)
        for s in sock:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        conn.connect()
        # Our own reference: http.client drops conn.sock when the response says it will close.
        sock.append(conn.sock)
        conn.request(method, path, body=body if body else None, headers=headers or {})
        r = conn.getresponse()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        data = b"" if head_only else r.read()
        return r.status, hdrs, data, time.monotonic() - t0
    except Exception as e:  # noqa: BLE001 — every failure is a result to report
        return ("timeout" if fired else _error_name(e)), {}, b"", time.monotonic() - t0
    finally:
        timer.cancel()
        if r is not None:
            r.close()
        conn.close()


def parse_status(data):
    """The status code of the first response in raw bytes, or None."""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


def raw_exchange(payload, timeout=10.0, chunk=65536):
    """Sends raw bytes and reads the answer until the server closes or `timeout` (total) passes.
    Sends and reads at the same time, so a server that answers early (413 to a big body) and
    stops reading is seen rather than deadlocking the sender. Returns (status, seconds, info,
    head): status as in request(); info says how much of the payload went out; head is the
    response's status line and headers (lowercased), b"" when none came."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(min(timeout, 5))
    try:
        s.connect((HOST, PORT))
    except OSError as e:
        s.close()
        return _error_name(e), time.monotonic() - t0, "connect failed", b""
    s.setblocking(False)
    sent, got, err = 0, b"", None
    closed = False
    view = memoryview(payload)
    p = select.poll()  # not select(): descriptors may be above 1024 while other sockets are open
    try:
        while time.monotonic() < deadline:
            want_write = sent < len(payload)
            p.register(s, select.POLLIN | (select.POLLOUT if want_write else 0))
            events = p.poll(int(1000 * max(0.0, min(0.5, deadline - time.monotonic()))))
            ev = events[0][1] if events else 0
            r = ev & (select.POLLIN | select.POLLERR | select.POLLHUP)
            w = ev & select.POLLOUT
            if r:
                try:
                    d = s.recv(65536)
                except (ConnectionResetError, BrokenPipeError) as e:
                    err = e
                    break
                if not d:
                    closed = True
                    break
                got += d
                if len(got) > 1 << 20:
                    break
            if w and want_write:
                try:
                    sent += s.send(view[sent:sent + chunk])
                except (ConnectionResetError, BrokenPipeError) as e:
                    err = e
                    # A reset while sending may still leave the server's answer readable.
                    try:
                        s.setblocking(True)
                        s.settimeout(0.5)
                        got += s.recv(65536)
                    except OSError:
                        pass
                    break
    finally:
        s.close()
    status = parse_status(got)
    if status is None:
        status = "reset" if err else ("closed" if closed else "timeout")
    return status, time.monotonic() - t0, f"sent {sent}/{len(payload)} bytes", got.split(b"\r\n\r\n")[0].lower()


def http_bytes(method, path, body=b"", headers=None):
    """A raw HTTP/1.1 request with Host and Connection: close (for raw_exchange)."""
    h = {"Host": f"{HOST}:{PORT}", "Connection": "close"}
    if body or method in ("POST", "PATCH", "PUT"):
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + body


class MultipartReader:
    """Reads an endless multipart/x-mixed-replace response (a generation's progress or a
    stream's output), or waits for a long one, on its own connection in a thread, recording
    when each part starts. abandon() closes the connection abruptly, as a browser tab that goes
    away does. status stays None until the status line has come."""

    def __init__(self, method, path, body=b"", headers=None, name="reader"):
        self.method, self.path, self.body, self.headers = method, path, body, headers or {}
        self.status = None
        self.part_times = []
        self.error = None
        self.ended = False
        self.sock = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        # No short socket timeout: after one, http.client's reader cannot be used again. The
        # thread blocks in recv until data comes or abandon() shuts the socket down.
        conn = http.client.HTTPConnection(HOST, PORT, timeout=600)
        try:
            conn.connect()
            self.sock = conn.sock
            if self._stop.is_set():
                return
            conn.request(self.method, self.path, body=self.body or None, headers=self.headers)
            r = conn.getresponse()
            self.status = r.status
            m = re.search(r"boundary=([^;\s]+)", r.getheader("Content-Type", ""))
            if r.status != 200 or not m:
                r.read()
                self.ended = True
                return
            delim = b"--" + m.group(1).strip('"').encode() + b"\r\n"
            keep = len(delim) - 1
            tail = b""
            while not self._stop.is_set():
                chunk = r.read1(65536)
                if not chunk:
                    self.ended = True
                    return
                buf = tail + chunk
                n = buf.count(delim)
                if n:
                    now = time.monotonic()
                    self.part_times.extend([now] * n)
                    buf = buf[buf.rfind(delim) + len(delim):]
                tail = buf[-keep:]
        except Exception as e:  # noqa: BLE001
            if not self._stop.is_set():
                self.error = _error_name(e)
                self.ended = True
        finally:
            conn.close()

    def parts_between(self, t0, t1):
        return sum(1 for t in list(self.part_times) if t0 <= t <= t1)

    def abandon(self):
        self._stop.set()
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(3)


def abandon_after(method, path, body, headers, seconds):
    """Sends a request on a raw socket, waits `seconds` (reading whatever comes) and closes the
    socket. Returns the status if an answer came first, else "abandoned"."""
    s = socket.create_connection((HOST, PORT), timeout=5)
    try:
        s.sendall(http_bytes(method, path, body, headers))
        s.settimeout(0.2)
        got = b""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                d = s.recv(65536)
            except socket.timeout:
                continue
            if not d:
                break
            got += d
        st = parse_status(got)
        return st if st is not None else "abandoned"
    finally:
        s.close()


def metric(name):
    """A counter from /metrics, or None when the server does not export it."""
    st, _, body, _ = request("GET", "/metrics", timeout=3)
    if st != 200:
        return None
    vals = re.findall(rb"^" + re.escape(name.encode()) + rb"(?:\{[^}]*\})? ([0-9.e+]+)\s*$", body, re.M)
    return sum(float(v) for v in vals) if vals else None


def signal_name(rc):
    """' (SIGSEGV)' for a return code that means killed by a signal, else ''."""
    try:
        return f" ({signal.Signals(-rc).name})" if rc is not None and rc < 0 else ""
    except ValueError:
        return ""


def tally(statuses):
    """'200×3 503×2' from a list of statuses."""
    counts = {}
    for s in statuses:
        counts[str(s)] = counts.get(str(s), 0) + 1
    return " ".join(f"{k}×{v}" for k, v in sorted(counts.items())) or "none"


def run_parallel(fn, n, join_timeout):
    """Runs fn(i) for i < n in threads; returns the results (None for those not done in time)."""
    results = [None] * n

    def one(i):
        results[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    end = time.monotonic() + join_timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    return results


class SocketWatch:
    """Many raw sockets, noticing when the server closes each (recv gives b"" or an error; a
    response before the close, e.g. 408, is recorded). Uses poll(), since select() cannot take
    descriptors above 1024."""

    def __init__(self):
        self.socks = {}          # fd -> socket
        self.opened = {}         # fd -> monotonic time opened
        self.closed_at = {}      # fd -> seconds after opening when the server closed it
        self.status = {}         # fd -> status of a response the server sent, if any
        self.poll = select.poll()

    def add(self, s):
        fd = s.fileno()
        self.socks[fd] = s
        self.opened[fd] = time.monotonic()
        self.poll.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)

    def open_count(self):
        return len(self.socks) - len(self.closed_at)

    def check(self, wait=0.0):
        for fd, ev in self.poll.poll(int(wait * 1000)):
            if fd in self.closed_at:
                continue
            s = self.socks[fd]
            try:
                d = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                d = b""
            if d:
                st = parse_status(d)
                if st is not None and fd not in self.status:
                    self.status[fd] = st
                continue
            self.closed_at[fd] = time.monotonic() - self.opened[fd]
            self.poll.unregister(fd)

    def send_each(self, byte_for):
        """Sends byte_for(fd) to each socket still open; a failed send means closed."""
        for fd, s in self.socks.items():
            if fd in self.closed_at:
                continue
            try:
                s.send(byte_for(fd))
            except BlockingIOError:
                pass
            except OSError:
                self.closed_at[fd] = time.monotonic() - self.opened[fd]
                try:
                    self.poll.unregister(fd)
                except KeyError:
                    pass

    def close_all(self):
        for s in self.socks.values():
            try:
                s.close()
            except OSError:
                pass
        self.socks.clear()


def open_nonblocking(count, first_bytes, connect_timeout=5.0):
    """Opens `count` connections at once (non-blocking connects, so a server that stops
    accepting costs at most connect_timeout overall), sends each `first_bytes`. Returns
    (SocketWatch of the connected ones, number that failed to connect)."""
    pending = {}
    failed = 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex((HOST, PORT))
        if rc not in (0, errno.EINPROGRESS):
            failed += 1
            s.close()
            continue
        pending[s.fileno()] = s
    p = select.poll()
    for fd in pending:
        p.register(fd, select.POLLOUT)
    watch = SocketWatch()
    end = time.monotonic() + connect_timeout
    while pending and time.monotonic() < end:
        for fd, ev in p.poll(200):
            s = pending.pop(fd, None)
            if s is None:
                continue
            p.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                failed += 1
                s.close()
                continue
            try:
                s.send(first_bytes)
            except OSError:
                failed += 1
                s.close()
                continue
            watch.add(s)
    for s in pending.values():
        failed += 1
        s.close()
    return watch, failed


# ---------------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------------

class Server:
    """`gen serve --port 0` on 127.0.0.1, its port read from its `serving ... on http://...`
    line (or, if stdout is block-buffered and the line has not come, from the socket it
    listens on in /proc), its output drained by threads so it never blocks on a full pipe."""

    def __init__(self, gen, flags):
        self.gen, self.flags = gen, flags
        self.proc = None
        self.port = None
        self.stderr_tail = []
        self.stdout_lines = []

    def start(self, wait=60.0):
        global PORT
        cmd = [self.gen, "serve", "--port", "0"] + self.flags
        log("starting " + " ".join(cmd))
        # A new session: a Ctrl-C in the terminal reaches the script, which then stops the
        # server itself (and reports), instead of the server dying under a half-run attack.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.port = None
        got_line = threading.Event()

        def drain_out(f):
            for line in iter(f.readline, b""):
                text = line.decode(errors="replace").rstrip()
                self.stdout_lines.append(text)
                m = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)", text)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    got_line.set()

        def drain_err(f):
            for line in iter(f.readline, b""):
                self.stderr_tail.append(line.decode(errors="replace").rstrip())
                del self.stderr_tail[:-300]

        threading.Thread(target=drain_out, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=drain_err, args=(self.proc.stderr,), daemon=True).start()
        end = time.monotonic() + wait
        while time.monotonic() < end and not got_line.is_set():
            if self.proc.poll() is not None:
                raise RuntimeError(f"gen serve exited with {self.proc.returncode}: " + " | ".join(self.stderr_tail[-5:]))
            got_line.wait(0.2)
            if self.port is None:
                p = self._listening_port()
                # Use the /proc port only once the server answers (it prints after it listens).
                if p is not None and self._answers(p):
                    self.port = p
                    break
        if self.port is None:
            raise RuntimeError(f"no 'serving ... on http://127.0.0.1:PORT' line within {wait:.0f} s")
        PORT = self.port
        log(f"server pid {self.proc.pid} on {HOST}:{PORT}")

    def _listening_port(self):
        """The port of a TCP socket of this process listening on 127.0.0.1, from /proc."""
        try:
            inodes = set()
            for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{self.proc.pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
            with open(f"/proc/{self.proc.pid}/net/tcp") as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if state == "0A" and inode in inodes and local.startswith("0100007F:"):
                        return int(local.split(":")[1], 16)
        except OSError:
            return None
        return None

    @staticmethod
    def _answers(port):
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=1)
            c.request("GET", "/healthz")
            ok = c.getresponse().status == 200
            c.close()
            return ok
        except Exception:  # noqa: BLE001
            return False

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, AttributeError):
            pass
        return None

    def nofile_limit(self):
        try:
            with open(f"/proc/{self.proc.pid}/limits") as f:
                for line in f:
                    if line.startswith("Max open files"):
                        return line.split()[3]
        except OSError:
            pass
        return "?"

    def stop(self):
        """SIGTERM, then SIGKILL after 3 s. Safe to call any number of times."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                pass
        except OSError:
            pass


class RSSMonitor:
    """Samples the server's RSS every 0.1 s in a thread; peak() since the last reset()."""

    def __init__(self, server):
        self.server = server
        self._peak = 0.0
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            r = self.server.rss_mb()
            if r is not None:
                with self._lock:
                    self._peak = max(self._peak, r)
            time.sleep(0.1)

    def reset(self):
        with self._lock:
            self._peak = self.server.rss_mb() or 0.0

    def peak(self):
        with self._lock:
            return self._peak


# ---------------------------------------------------------------------------------------------
# The attacks. Each returns (ok, text); the runner adds the health check.
# ---------------------------------------------------------------------------------------------

class Attacks:
    def __init__(self, runner, quick):
        self.r = runner
        self.quick = quick

    # 1 -------------------------------------------------------------------------------------
    def bss_prime_size(self):
        """FFT sizes with a large prime factor make the transform quadratic; the server must
        refuse them at once (400) and still take a fast size (1024x1024)."""
        tiny = png_rgb(1, 1)
        body, ct = multipart([("image", "a.png", tiny), ("image", "b.png", tiny), ("size", None, b"1021x1021")])
        st, _, resp, sec = request("POST", "/v1/bss", body, {"Content-Type": ct}, timeout=self.r.bound(5))
        msg = ""
        try:
            msg = json.loads(resp).get("error", "")
        except Exception:  # noqa: BLE001
            pass
        body2, ct2 = multipart([("image", "a.png", tiny), ("image", "b.png", tiny), ("size", None, b"1024x1024")])
        st2, _, _, sec2 = request("POST", "/v1/bss", body2, {"Content-Type": ct2}, timeout=self.r.bound(20))
        ok = st == 400 and sec <= 2 and st2 == 200
        return ok, (f"size=1021x1021 → {st} in {sec:.2f} s (want 400 within 2 s) {json.dumps(msg[:100])}; "
                    f"size=1024x1024 → {st2} in {sec2:.2f} s (want 200)")

    # 2 -------------------------------------------------------------------------------------
    def abandoned_generations(self):
        """Clients that go away must not leave their generations running: every abandoned
        request has to be cancelled (counted in millrace_requests_cancelled_total), or the
        model stays busy with work nobody reads."""
        n_stream, n_post = (4, 1) if self.quick else (10, 3)
        before = metric("millrace_requests_cancelled_total")
        _, _, text, _ = request("GET", "/metrics", timeout=3)
        typed = b"# TYPE millrace_requests_cancelled_total counter" in text
        stream_statuses, parts = [], []
        for i in range(n_stream):
            rd = MultipartReader("GET", f"/v1/generate/stream?{LONG_GEN_QUERY}&seed={i}", name=f"abandon{i}").start()
            time.sleep(1.0)
            rd.abandon()
            stream_statuses.append(rd.status if rd.status is not None else "no-answer")
            parts.append(len(rd.part_times))
        post_statuses = []
        for i in range(n_post):
            body = json.dumps(dict(LONG_GEN_JSON, seed=100 + i)).encode()
            post_statuses.append(abandon_after("POST", "/v1/generate", body, JSON_CT, 1.0))
        # Only admitted requests can be cancelled: a stream answered 200, a POST that had no
        # answer after 1 s (a 503 from the job limit or memory budget is not work to cancel).
        admitted = sum(1 for s in stream_statuses if s == 200) + sum(1 for s in post_statuses if s == "abandoned")
        want = min(n_stream, admitted)
        # With the server's default limits each request comes after the previous one was
        # abandoned (and cancelled), so every one must be admitted; flags such as a small
        # --memory-budget may refuse some.
        all_needed = not self.r.server.flags
        # Cancellation happens within a model step; give the counter a few seconds to move.
        after = before
        end = time.monotonic() + self.r.bound(10)
        while time.monotonic() < end:
            after = metric("millrace_requests_cancelled_total")
            if before is not None and after is not None and after - before >= admitted:
                break
            time.sleep(0.5)
        grew = None if before is None or after is None else after - before
        ok = (grew is not None and grew >= want and want >= 1 and typed
              and (admitted == n_stream + n_post or not all_needed))
        counter = ("millrace_requests_cancelled_total missing from /metrics" if grew is None
                   else f"cancelled counter +{grew:.0f} (want ≥ {want}; {admitted} of {n_stream + n_post} abandoned ones were admitted)"
                   + ("" if typed else ", but /metrics has no '# TYPE millrace_requests_cancelled_total counter'"))
        return ok, (f"{n_stream} GET streams closed after 1 s: {tally(stream_statuses)}, "
                    f"{sum(parts)} parts read; {n_post} POSTs closed after 1 s: {tally(post_statuses)}; {counter}")

    # 3 -------------------------------------------------------------------------------------
    def over_limit_generation(self):
        """The largest request the parameters allow (all classes × 16 × 200 steps × upscale 16)
        is far over the cost limit and must be refused before any work."""
        st, _, _, sec = request("GET", "/v1/generate/stream?class=all&count=16&steps=200&upscale=16",
                                timeout=self.r.bound(3), head_only=True)
        body = json.dumps({"class": "all", "count": 16, "steps": 200, "upscale": 16}).encode()
        st2, _, _, sec2 = request("POST", "/v1/generate", body, JSON_CT, timeout=self.r.bound(3), head_only=True)
        ok = st == 413 and sec < 1 and st2 == 413 and sec2 < 1
        return ok, f"GET stream → {st} in {sec:.2f} s; POST → {st2} in {sec2:.2f} s (want 413 within 1 s)"

    # 4 -------------------------------------------------------------------------------------
    def decompression_bomb_bss(self):
        """Small files that declare huge images: the pixel limits must be applied from the PNG
        headers, before any decoding allocates (4 MP per image, 16 MP per request)."""
        big = png_rgb(2000, 2000)  # ~12 KB that decodes to 12 MB
        body, ct = multipart([("image", f"bomb{k}.png", big) for k in range(16)])
        res = run_parallel(lambda i: request("POST", "/v1/bss", body, {"Content-Type": ct}, timeout=self.r.bound(20)),
                           4, self.r.bound(25))
        bss = [x[0] if x else "hung" for x in res]
        bss_sec = max((x[3] for x in res if x), default=0.0)
        # Two images, each alone over the per-image limit (4096² = 16.7 MP).
        huge = png_rgb(4096, 4096)
        body2, ct2 = multipart([("image", "h1.png", huge), ("image", "h2.png", huge)])
        st2, _, _, sec2 = request("POST", "/v1/bss", body2, {"Content-Type": ct2}, timeout=self.r.bound(20))
        # One 20000×20000 PNG (~1.2 MB; 1.2 GB decoded) to colorize.
        t = time.monotonic()
        bomb = png_rgb(20000, 20000)
        log(f"20000×20000 PNG: {len(bomb) / 1e6:.1f} MB, built in {time.monotonic() - t:.1f} s")
        body3, ct3 = multipart([("image", "bomb.png", bomb)])
        st3, _, _, sec3 = request("POST", "/v1/colorize", body3, {"Content-Type": ct3}, timeout=self.r.bound(20))
        ok = all(s == 413 for s in bss) and st2 == 413 and st3 == 413
        return ok, (f"bss 4×(16 × 2000×2000, {len(body) // 1024} KB) → {tally(bss)} (max {bss_sec:.2f} s); "
                    f"bss 2 × 4096×4096 → {st2} in {sec2:.2f} s; colorize 20000×20000 ({len(bomb) // 1024} KB) → "
                    f"{st3} in {sec3:.2f} s (want all 413)")

    # 5 -------------------------------------------------------------------------------------
    def idle_connections(self):
        """Connections that send part of a header and wait must cost a socket, not a thread:
        the server holds 1000 of them and still answers at once."""
        n = 500 if self.quick else 1000
        hold = 3.0 if self.quick else 5.0
        t0 = time.monotonic()
        watch, failed = open_nonblocking(n, b"GET / HTTP/1.1\r\nHost: x\r\n", connect_timeout=self.r.bound(5))
        log(f"{n - failed} of {n} idle connections open in {time.monotonic() - t0:.1f} s")
        checks = []
        try:
            end = time.monotonic() + hold
            while time.monotonic() < end:
                st, _, _, sec = request("GET", "/healthz", timeout=2)
                checks.append((st, sec))
                watch.check(wait=min(0.8, max(0.0, end - time.monotonic())))
            watch.check()
            still = watch.open_count()
        finally:
            watch.close_all()
        worst = max(s for _, s in checks)
        good = all(st == 200 and s <= 1 for st, s in checks)
        ok = good and failed == 0 and still == n
        return ok, (f"{n} partial-header connections: {n - failed} connected, {still} still open after {hold:.0f} s "
                    f"(server nofile limit {self.r.server.nofile_limit()}); healthz ×{len(checks)}: "
                    f"{tally([c[0] for c in checks])}, worst {worst:.2f} s (want all 200 within 1 s)")

    def _drip(self, watch, bound, next_byte, health_first, health_every, health_count):
        """Sends `next_byte(fd)` to every open connection once a second for up to `bound`
        seconds, or until the server has closed them all, checking /healthz meanwhile
        (`health_count` times, the first at `health_first` s, then every `health_every` s).
        Returns (still open, close times in seconds from the start, [(status, seconds)], start)."""
        healths = []
        start = time.monotonic()
        try:
            next_drip = start + 1
            while time.monotonic() - start < bound and watch.open_count() > 0:
                watch.check(wait=0.2)
                if time.monotonic() >= next_drip:
                    watch.send_each(next_byte)
                    next_drip += 1
                if len(healths) < health_count and time.monotonic() - start > health_first + health_every * len(healths):
                    st, _, _, sec = request("GET", "/healthz", timeout=2)
                    healths.append((st, sec))
            still = watch.open_count()
            times = sorted(watch.closed_at.values())
        finally:
            watch.close_all()
        return still, times, healths, start

    @staticmethod
    def _health_text(healths):
        return f"healthz meanwhile {tally([h[0] for h in healths])} worst {max((h[1] for h in healths), default=0):.2f} s"

    # 6 -------------------------------------------------------------------------------------
    def slowloris(self):
        """Headers dripped a byte a second never finish; the header timeout (10 s, counted from
        the connection's start, not reset by each byte) must close them."""
        n = 20 if self.quick else 50
        limit = HEADER_TIMEOUT + 5
        line = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: " + b"a" * 10000
        watch, failed = open_nonblocking(n, line[:1])
        pos = {fd: 1 for fd in watch.socks}

        def byte(fd):
            b = line[pos[fd]:pos[fd] + 1] or b"a"
            pos[fd] += 1
            return b
        still, times, healths, start = self._drip(watch, self.r.bound(20), byte, 2, 3, 3)
        late = [t for t in times if t > limit]
        hok = all(st == 200 and s <= 1 for st, s in healths)
        ok = failed == 0 and still == 0 and not late and hok
        closed = (f"{len(times)} closed by the server (first {times[0]:.1f} s, last {times[-1]:.1f} s; want all by {limit:.0f} s)"
                  if times else "none closed by the server")
        answered = tally(watch.status.values()) if watch.status else "no response"
        return ok, (f"{n - failed} dripping connections: {closed}, {still} still open at "
                    f"{time.monotonic() - start:.0f} s; server sent {answered}; {self._health_text(healths)}")

    # 7 -------------------------------------------------------------------------------------
    def slow_body(self):
        """A body that trickles in a byte a second must be cut off by the body timeout (30 s),
        and must not block the others meanwhile."""
        n = 10 if self.quick else 20
        head = (f"POST /v1/generate HTTP/1.1\r\nHost: {HOST}:{PORT}\r\nContent-Type: application/json\r\n"
                f"Content-Length: 100000\r\n\r\n").encode()
        watch, failed = open_nonblocking(n, head)
        bound = self.r.bound(6 if self.quick else BODY_TIMEOUT + 10)
        still, times, healths, start = self._drip(watch, bound, lambda fd: b" ", 3, 8, 4)
        hok = bool(healths) and all(st == 200 and s <= 1 for st, s in healths)
        hdesc = self._health_text(healths)
        if self.quick:
            # Quick: only that the trickling bodies do not stall the server while they last.
            ok = failed == 0 and hok
            return ok, (f"{n - failed} trickling bodies held {bound:.0f} s ({len(times)} closed meanwhile; "
                        f"the close itself is checked without --quick); {hdesc}")
        ok = failed == 0 and still == 0 and hok
        closed = f"{len(times)} closed by the server at {times[0]:.1f}–{times[-1]:.1f} s" if times else "none closed by the server"
        return ok, (f"{n - failed} trickling bodies (Content-Length 100000, 1 byte/s): {closed}, "
                    f"{still} still open at {time.monotonic() - start:.0f} s (want all closed within {bound:.0f} s); {hdesc}")

    # 8 -------------------------------------------------------------------------------------
    def cross_site(self):
        """A web page elsewhere (or a DNS-rebinding host name) must not drive the API: foreign
        Origin, Sec-Fetch-Site: cross-site and non-loopback Host get 403; JSON routes refuse
        the content types a form can send without a preflight (415). Same-origin requests are
        the controls: they must still work. Security headers on every response."""
        own = f"http://{HOST}:{PORT}"
        gen_json = b'{"steps":1}'
        bad = []
        cases = [
            # (description, method, path, body, headers, expected statuses)
            ("generate Origin evil text/plain", "POST", "/v1/generate", gen_json,
             {"Origin": "http://evil.example", "Content-Type": "text/plain"}, {403}),
            ("generate Origin evil json", "POST", "/v1/generate", gen_json,
             {"Origin": "http://evil.example", "Content-Type": "application/json"}, {403}),
            ("generate Origin null", "POST", "/v1/generate", gen_json, {"Origin": "null", **JSON_CT}, {403}),
            ("generate Origin other port", "POST", "/v1/generate", gen_json,
             {"Origin": f"http://{HOST}:{PORT + 1 if PORT < 65535 else 1}", **JSON_CT}, {403}),
            ("info Origin evil", "GET", "/v1/info", b"", {"Origin": "https://evil.example"}, {403}),
            ("generate Sec-Fetch-Site cross-site", "POST", "/v1/generate", gen_json,
             {"Sec-Fetch-Site": "cross-site", **JSON_CT}, {403}),
            ("info Sec-Fetch-Site cross-site", "GET", "/v1/info", b"", {"Sec-Fetch-Site": "cross-site"}, {403}),
            ("generate Host evil.example", "POST", "/v1/generate", gen_json, {"Host": "evil.example", **JSON_CT}, {403}),
            ("info Host evil.example:PORT", "GET", "/v1/info", b"", {"Host": f"evil.example:{PORT}"}, {403}),
            ("info Host 127.0.0.1.evil.example", "GET", "/v1/info", b"", {"Host": f"127.0.0.1.evil.example:{PORT}"}, {403}),
            ("streams Origin evil", "POST", "/v1/streams", b'{"class":0}', {"Origin": "http://evil.example", **JSON_CT}, {403}),
            ("generate text/plain (no Origin)", "POST", "/v1/generate", gen_json, {"Content-Type": "text/plain"}, {415}),
            ("generate form-urlencoded", "POST", "/v1/generate", gen_json,
             {"Content-Type": "application/x-www-form-urlencoded"}, {415}),
            ("generate multipart", "POST", "/v1/generate", gen_json,
             {"Content-Type": "multipart/form-data; boundary=x"}, {415}),
            ("generate no Content-Type", "POST", "/v1/generate", gen_json, {}, {415}),
            ("streams text/plain", "POST", "/v1/streams", b'{"class":0}', {"Content-Type": "text/plain"}, {415}),
            # Controls: the server's own origins and loopback host names work.
            ("info Origin own", "GET", "/v1/info", b"", {"Origin": own}, {200}),
            # Both loopback origins are the server's own (the brief); note the Host here is
            # 127.0.0.1:PORT, so a server that compares Origin with Host refuses this one.
            ("info Origin localhost", "GET", "/v1/info", b"", {"Origin": f"http://localhost:{PORT}"}, {200}),
            ("info Host+Origin localhost", "GET", "/v1/info", b"",
             {"Host": f"localhost:{PORT}", "Origin": f"http://localhost:{PORT}"}, {200}),
            ("info Host localhost:PORT", "GET", "/v1/info", b"", {"Host": f"localhost:{PORT}"}, {200}),
            ("info Host [::1]:PORT", "GET", "/v1/info", b"", {"Host": f"[::1]:{PORT}"}, {200}),
            ("info Host localhost", "GET", "/v1/info", b"", {"Host": "localhost"}, {200}),
            ("info Sec-Fetch-Site same-origin", "GET", "/v1/info", b"", {"Sec-Fetch-Site": "same-origin"}, {200}),
            ("info Sec-Fetch-Site none", "GET", "/v1/info", b"", {"Sec-Fetch-Site": "none"}, {200}),
            ("generate Origin own json;charset", "POST", "/v1/generate", gen_json,
             {"Origin": own, "Content-Type": "application/json; charset=utf-8"}, {200}),
        ]
        seen = []
        missing_headers = set()
        for desc, method, path, body, headers, want in cases:
            # 3 s: a refusal is immediate; the one generation control takes a fraction of that.
            st, h, resp, sec = request(method, path, body, headers, timeout=self.r.bound(3))
            seen.append(st)
            if st == 201 and path == "/v1/streams" and 201 not in want:
                try:  # a stream created although it should not have been: remove it again
                    request("DELETE", f"/v1/streams/{json.loads(resp)['id']}", timeout=3)
                except (ValueError, KeyError):
                    pass
            if st not in want:
                bad.append(f"{desc} → {st} (want {'/'.join(map(str, sorted(want)))})")
            if isinstance(st, int):
                for name in ("x-content-type-options", "referrer-policy"):
                    if name not in h:
                        missing_headers.add(f"{name} on {desc}")
                if h.get("x-content-type-options", "nosniff").lower() != "nosniff":
                    missing_headers.add(f"x-content-type-options={h['x-content-type-options']} on {desc}")
        # PATCH on a live stream with a form content type.
        st, _, resp, _ = request("POST", "/v1/streams", b'{"class":0,"filter":false}', JSON_CT, timeout=self.r.bound(5))
        if st == 201:
            sid = json.loads(resp)["id"]
            stp, _, _, _ = request("PATCH", f"/v1/streams/{sid}", b'{"class":1}', {"Content-Type": "text/plain"}, timeout=5)
            seen.append(stp)
            if stp != 415:
                bad.append(f"PATCH stream text/plain → {stp} (want 415)")
            request("DELETE", f"/v1/streams/{sid}", timeout=5)
        else:
            bad.append(f"control POST /v1/streams json → {st} (want 201)")
        # Security headers on the page, a 404, healthz and metrics.
        for path in ("/", "/healthz", "/metrics", "/no-such-file", "/v1/no-such-route"):
            st, h, _, _ = request("GET", path, timeout=5)
            for name in ("x-content-type-options", "referrer-policy") + (("content-security-policy",) if path == "/" else ()):
                if name not in h:
                    missing_headers.add(f"{name} on GET {path} ({st})")
        ok = not bad and not missing_headers
        problems = "; ".join(bad + sorted(missing_headers)[:6] + ([f"... {len(missing_headers) - 6} more"] if len(missing_headers) > 6 else []))
        return ok, f"{len(cases) + 1} requests: {tally(seen)}" + (f"; wrong: {problems}" if problems else "; all as expected, security headers present")

    # 9 -------------------------------------------------------------------------------------
    def oversized_bodies(self):
        """Bodies over --max-body are refused without being buffered (413 or an early close);
        many bodies just under it are either served or refused by the memory budget, never a
        hang, and RSS stays bounded."""
        n_big, n_under = (8, 10) if self.quick else (20, 30)
        big = b" " * (MAX_BODY + (1 << 20))  # 9 MiB
        req_big = http_bytes("POST", "/v1/generate", big, JSON_CT)
        res = run_parallel(lambda i: raw_exchange(req_big, timeout=self.r.bound(30)), n_big, self.r.bound(35))
        big_st = [x[0] if x else "hung" for x in res]
        big_sec = max((x[1] for x in res if x), default=0)
        # The same size without a Content-Length (chunked): the limit must hold while reading.
        n_chunked = 4
        piece = b" " * 65536
        chunked = b"".join(b"%x\r\n" % len(piece) + piece + b"\r\n" for _ in range(len(big) // len(piece))) + b"0\r\n\r\n"
        req_chunked = (f"POST /v1/generate HTTP/1.1\r\nHost: {HOST}:{PORT}\r\nContent-Type: application/json\r\n"
                       f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + chunked
        res_c = run_parallel(lambda i: raw_exchange(req_chunked, timeout=self.r.bound(30)), n_chunked, self.r.bound(35))
        chunked_st = [x[0] if x else "hung" for x in res_c]
        under = b" " * (MAX_BODY - (1 << 20) - 11) + b'{"steps":1}'  # 7 MiB of valid JSON
        req_under = http_bytes("POST", "/v1/generate", under, JSON_CT)
        res2 = run_parallel(lambda i: raw_exchange(req_under, timeout=self.r.bound(60)), n_under, self.r.bound(65))
        under_st = [x[0] if x else "hung" for x in res2]
        under_sec = max((x[1] for x in res2 if x), default=0)
        # A 503 from the memory budget or the job limit must say when to come back.
        no_retry = sum(1 for x in res2 if x and x[0] == 503 and b"\r\nretry-after:" not in x[3])
        ok = (all(s in (413, "reset", "closed") for s in big_st + chunked_st)
              and all(s in (200, 400, 413, 503) for s in under_st) and no_retry == 0)
        return ok, (f"{n_big} × 9 MiB → {tally(big_st)} (want 413 or closed; slowest {big_sec:.1f} s); "
                    f"{n_chunked} × 9 MiB chunked → {tally(chunked_st)}; "
                    f"{n_under} × 7 MiB → {tally(under_st)} (want 200/400/413/503; slowest {under_sec:.1f} s; "
                    f"503s without Retry-After: {no_retry})")

    # 10 ------------------------------------------------------------------------------------
    def job_flood(self):
        """More heavy jobs than --max-jobs (8) at once: the excess gets 503 with Retry-After at
        once instead of queueing without bound; the admitted ones finish."""
        # Quick: fewer and shorter jobs; still more than 8 arrive at once.
        n, steps = (12, 20) if self.quick else (30, 50)
        body = json.dumps({"steps": steps, "count": 4}).encode()
        bound = self.r.bound(120)
        res = run_parallel(lambda i: request("POST", "/v1/generate", body, JSON_CT, timeout=bound), n, bound + 2)
        sts = [x[0] if x else "hung" for x in res]
        n503 = sum(1 for s in sts if s == 503)
        no_retry = sum(1 for x in res if x and x[0] == 503 and "retry-after" not in x[1])
        others = [s for s in sts if s not in (200, 503)]
        slow503 = max((x[3] for x in res if x and x[0] == 503), default=0)
        slowest = max((x[3] for x in res if x), default=0)
        ok = n503 > 0 and no_retry == 0 and not others
        return ok, (f"{n} parallel generations (steps {steps}, count 4) → {tally(sts)}; 503s without Retry-After: {no_retry}; "
                    f"slowest 503 {slow503:.2f} s, slowest answer {slowest:.1f} s (bound {bound:.0f} s)")

    # 11 ------------------------------------------------------------------------------------
    def header_and_json_garbage(self):
        """Malformed requests get a 4xx and never take the server down (deep JSON nesting can
        overflow a recursive parser's stack)."""
        def post(body, ct="application/json"):
            return http_bytes("POST", "/v1/generate", body, {"Content-Type": ct})
        cases = [
            ("truncated JSON", post(b'{"steps":'), "4xx"),
            ("JSON array 100000 deep", post(b"[" * 100000), "4xx"),
            ("JSON object 50000 deep", post(b'{"a":' * 50000), "4xx"),
            ("JSON number 1e999", post(b'{"steps":1e999}'), "4xx"),
            ("JSON not UTF-8", post(b'{"steps":"\xff\xfe"}'), "4xx"),
            ("header line 100 KB", http_bytes("GET", "/healthz", b"", {"X-Big": "a" * 100000}), "4xx"),
            ("5000 headers", http_bytes("GET", "/healthz", b"", {f"X-H{i}": "v" for i in range(5000)}), "4xx"),
            ("URL 100 KB", http_bytes("GET", "/healthz?" + "a" * 100000), "4xx"),
            ("invalid method token", b"G(E)T / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", "4xx"),
            ("unknown method", http_bytes("BREW", "/v1/generate"), "4xx/501"),
            # Harmless if served as "/" (the C parser may stop at the NUL): only no 5xx or crash.
            ("NUL in path", b"GET /\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", "<500"),
            ("Content-Length -1", b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: -1\r\nConnection: close\r\n\r\n{}", "4xx"),
            ("Content-Length abc", b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: abc\r\nConnection: close\r\n\r\n{}", "4xx"),
            ("TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(random.Random(7).randbytes(500)), "4xx/closed"),
        ]
        results, bad = [], []
        for desc, payload, want in cases:
            st, sec, _, _ = raw_exchange(payload, timeout=self.r.bound(5))
            results.append(st)
            good = isinstance(st, int) and 400 <= st < 500
            if want == "4xx/501":
                good = good or st == 501
            if want == "<500":
                good = isinstance(st, int) and st < 500
            if want == "4xx/closed":
                good = good or st in ("closed", "reset")
            if not good:
                bad.append(f"{desc} → {st} in {sec:.1f} s (want {want})")
            if not self.r.server.alive():
                bad.append(f"server died after: {desc}")
                break
        ok = not bad
        return ok, f"{len(results)} malformed requests → {tally(results)}" + (f"; wrong: {'; '.join(bad)}" if bad else "")

    # 12 ------------------------------------------------------------------------------------
    def stream_fairness(self):
        """A long generation must share the model: a live stream keeps producing frames while
        a 16×200-step generation runs."""
        st, _, resp, _ = request("POST", "/v1/streams",
                                 json.dumps({"class": 0, "steps": 2, "strength": 0.6, "filter": False}).encode(),
                                 JSON_CT, timeout=self.r.bound(5))
        if st != 201:
            return False, f"POST /v1/streams → {st} (want 201)"
        sid = json.loads(resp)["id"]
        stop = threading.Event()
        posted = []

        def poster():
            conn = http.client.HTTPConnection(HOST, PORT, timeout=5)
            while not stop.is_set():
                t = time.monotonic()
                try:
                    conn.request("POST", f"/v1/streams/{sid}/frames", body=random_png(), headers={"Content-Type": "image/png"})
                    r = conn.getresponse()
                    r.read()
                    posted.append(r.status)
                except Exception as e:  # noqa: BLE001
                    posted.append(_error_name(e))
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, PORT, timeout=5)
                stop.wait(max(0.0, 0.1 - (time.monotonic() - t)))
            conn.close()

        viewer = MultipartReader("GET", f"/v1/streams/{sid}/output", name="viewer").start()
        post_thread = threading.Thread(target=poster, daemon=True)
        post_thread.start()
        gen = None
        try:
            time.sleep(2.5)
            t_base = time.monotonic()
            base_frames = viewer.parts_between(t_base - 2, t_base)
            gen = MultipartReader("POST", "/v1/generate", json.dumps(LONG_GEN_JSON).encode(), JSON_CT, name="longgen").start()
            time.sleep(0.5)
            w0 = time.monotonic()
            time.sleep(min(5.0, self.r.bound(5)))
            w1 = time.monotonic()
            during = viewer.parts_between(w0, w1)
            gen_running = gen.status is None
            gen_state = ("generation still running" if gen_running
                         else f"generation answered {gen.status} before the window ended")
        finally:
            stop.set()
            post_thread.join(3)
            if gen is not None:
                gen.abandon()  # also cancels it on a server that cancels abandoned work
            viewer.abandon()
            std, _, _, _ = request("DELETE", f"/v1/streams/{sid}", timeout=5)
        ok = during >= 3 and base_frames >= 1 and gen_running
        return ok, (f"viewer got {base_frames} frames in 2 s before, {during} in {w1 - w0:.1f} s during the long "
                    f"generation (want ≥ 3; {gen_state}); frames posted {tally(posted)}; DELETE → {std}")

    # 13 ------------------------------------------------------------------------------------
    def sigterm(self):
        """Graceful shutdown must not wait for a long generation or an endless viewer."""
        srv = self.r.server
        gen = MultipartReader("GET", f"/v1/generate/stream?{LONG_GEN_QUERY}&seed=7", name="sig-gen").start()
        st, _, resp, _ = request("POST", "/v1/streams", json.dumps({"class": 0, "filter": False}).encode(), JSON_CT, timeout=5)
        viewer = None
        if st == 201:
            sid = json.loads(resp)["id"]
            viewer = MultipartReader("GET", f"/v1/streams/{sid}/output", name="sig-viewer").start()
            request("POST", f"/v1/streams/{sid}/frames", random_png(), {"Content-Type": "image/png"}, timeout=5)
        time.sleep(1.5)
        in_flight = f"generation {'streaming' if gen.status == 200 and not gen.ended else gen.status}, viewer " + \
                    (f"{'open' if viewer.status == 200 and not viewer.ended else viewer.status}" if viewer else f"none (POST /v1/streams → {st})")
        t = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        try:
            rc = srv.proc.wait(5)  # not cut by bound(): the watchdog leaves 20 s past --max-seconds
            sec = time.monotonic() - t
            ok = rc == 0
            result = f"exit code {rc}{signal_name(rc)} in {sec:.2f} s"
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait(5)
            ok = False
            result = f"still running {time.monotonic() - t:.1f} s after SIGTERM (killed)"
        gen.abandon()
        if viewer:
            viewer.abandon()
        return ok, f"SIGTERM with {in_flight}: {result} (want exit 0 within 5 s)"


ORDER = ["bss_prime_size", "abandoned_generations", "over_limit_generation", "decompression_bomb_bss",
         "idle_connections", "slowloris", "slow_body", "cross_site", "oversized_bodies", "job_flood",
         "header_and_json_garbage", "stream_fairness", "sigterm"]


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, args, flags):
        self.args = args
        self.server = Server(args.gen, flags)
        self.t_start = time.monotonic()
        self.deadline = self.t_start + args.max_seconds
        self.results = []        # (name, ok, line)
        self.current = None
        self.remaining = []
        self.lock = threading.Lock()
        self.finished = False

    def time_left(self):
        return self.deadline - time.monotonic()

    def bound(self, seconds):
        """An attack's own bound, cut so that the attacks still to come (and the health checks
        after them) keep some seconds each, sigterm, the last, a few more."""
        reserve = sum(12 if n == "sigterm" else 10 for n in self.remaining)
        return max(1.0, min(seconds, self.time_left() - reserve))

    def health(self, peak):
        """The four health checks; returns (ok, text)."""
        if not self.server.alive():
            rc = self.server.proc.returncode
            tail = " | ".join(self.server.stderr_tail[-3:])
            return False, f"server DEAD (exit {rc}{signal_name(rc)}{'; stderr: ' + tail if tail else ''})"
        st, _, _, s1 = request("GET", "/healthz", timeout=1.5)
        st2, h2, body, s2 = request("POST", "/v1/generate", b'{"steps":1}', JSON_CT, timeout=2.5)
        rss = self.server.rss_mb() or 0.0
        peak = max(peak, rss)
        png = body.startswith(b"\x89PNG")
        why = []
        if not (st == 200 and s1 <= 1):
            why.append("healthz")
        if not (st2 == 200 and png and s2 <= 2):
            why.append("generate")
        if peak >= self.args.rss_mb:
            why.append("RSS")
        if not self.server.alive():
            why.append("server DEAD")
        text = (f"healthz {st} {s1:.2f} s, generate {st2}{'' if png or st2 != 200 else ' (not a PNG)'} {s2:.2f} s, "
                f"RSS {rss:.0f} MB (peak during the attack {peak:.0f}, bound {self.args.rss_mb:.0f})")
        return not why, text + (f" — UNHEALTHY: {', '.join(why)}" if why else "")

    def record(self, name, ok, text):
        with self.lock:
            if self.finished:
                return
            self.results.append((name, ok))
            out(f"{'PASS' if ok else 'FAIL'} {name}: {text}")

    def summary(self):
        with self.lock:
            if self.finished:
                return 1
            self.finished = True
            passed = sum(1 for _, ok in self.results if ok)
            failed = len(self.results) - passed
            out(f"{passed} passed, {failed} failed")
            return 1 if failed else 0

    def watchdog(self):
        """Last resort when an attack outlives its bounds: report, kill the server, exit."""
        name = self.current or "run"
        self.record(name, False, f"run stopped by the watchdog after {time.monotonic() - self.t_start:.0f} s")
        for n in self.remaining:
            self.record(n, False, "not run (watchdog)")
        self.server.stop()
        self.summary()
        os._exit(1)

    def run(self, names):
        attacks = Attacks(self, self.args.quick)
        timer = threading.Timer(self.args.max_seconds + 20, self.watchdog)
        timer.daemon = True
        timer.start()
        self.server.start(wait=self.args.startup_wait)
        monitor = RSSMonitor(self.server)
        # Raised only now, so the server keeps the limits it was started with (a shell's),
        # while this script can open its >1000 sockets.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log(f"script nofile limit {hard}, server's {self.server.nofile_limit()}")
        ok, text = self.health(0.0)
        log(f"baseline: {text}")
        self.remaining = list(names)
        while self.remaining:
            name = self.remaining.pop(0)
            self.current = name
            if not self.server.alive():
                log("server is dead: restarting it for the next attack")
                self.server.start(wait=self.args.startup_wait)
            if self.time_left() < (3 if name == "sigterm" else 5):
                self.record(name, False, "not run: out of time (--max-seconds)")
                continue
            log(f"{name} ...")
            monitor.reset()
            t0 = time.monotonic()
            try:
                ok, text = getattr(attacks, name)()
            except Exception as e:  # noqa: BLE001 — a bug or an unexpected failure is a FAIL, not a crash
                ok, text = False, f"attack raised {type(e).__name__}: {e}"
            text += f" [{time.monotonic() - t0:.1f} s]"
            if name == "sigterm":
                self.record(name, ok, text)
                continue
            hok, htext = self.health(monitor.peak())
            self.record(name, ok and hok, f"{text}; health: {htext}")
        self.current = None
        timer.cancel()
        if self.server.stderr_tail and any(not ok for _, ok in self.results):
            rc = self.server.proc.returncode
            # A crash (killed by a signal) leaves a backtrace on stderr: show more of it.
            lines = self.server.stderr_tail[-8:]
            if rc is not None and rc < 0:
                tail = self.server.stderr_tail
                first = next((i for i, l in enumerate(tail) if "crashed" in l or "Signal" in l), max(0, len(tail) - 40))
                end = next((i for i, l in enumerate(tail) if i > first and l.strip().startswith("Registers")), len(tail))
                lines = tail[first:min(end, first + 60)]
            log("server stderr (last lines):\n    " + "\n    ".join(lines))
        return self.summary()


def main():
    argv = sys.argv[1:]
    flags = []
    if "--" in argv:
        i = argv.index("--")
        argv, flags = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(
        prog="attack.sh",
        description="Hostile-client checks of `gen serve` on 127.0.0.1. After each attack: /healthz 200 within 1 s, "
                    "POST /v1/generate {\"steps\":1} 200 within 2 s, RSS under --rss-mb, process alive. "
                    "Arguments after -- are passed to `gen serve` (e.g. -- --memory-budget 512).",
        epilog="Attacks, in order: " + ", ".join(ORDER) + ". Exit status 1 when any check fails.")
    ap.add_argument("--quick", action="store_true", help="smaller counts and shorter holds (every attack still runs)")
    ap.add_argument("--rss-mb", type=float, default=1500, help="bound on the server's RSS in MB (default 1500)")
    ap.add_argument("--gen", default=".build/release/gen", help="the gen binary (default .build/release/gen)")
    ap.add_argument("--only", default="", help="comma-separated attack names to run (default all; sigterm stays last)")
    ap.add_argument("--max-seconds", type=float, default=300, help="bound on the whole run (default 300)")
    ap.add_argument("--startup-wait", type=float, default=60, help="seconds to wait for the server's port (default 60)")
    args = ap.parse_args(argv)

    for i, f in enumerate(flags):
        # The server must stay on loopback: never pass it another address.
        if f == "--host" or f.startswith("--host="):
            val = f.split("=", 1)[1] if "=" in f else (flags[i + 1] if i + 1 < len(flags) else "")
            if val != HOST:
                ap.error(f"refusing server flag --host {val}: the server is only ever bound to {HOST}")
        if f in ("--port",) or f.startswith("--port="):
            ap.error("the port is chosen by the script (--port 0)")
    names = ORDER
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in ORDER]
        if unknown:
            ap.error(f"unknown attack(s) {', '.join(unknown)}; known: {', '.join(ORDER)}")
        names = [n for n in ORDER if n in wanted]
    if not os.access(args.gen, os.X_OK):
        ap.error(f"{args.gen} is not an executable (build it: swift build -c release)")

    runner = Runner(args, flags)
    # The server is killed however the script ends: normal exit, exception, Ctrl-C, SIGTERM.
    atexit.register(runner.server.stop)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        rc = runner.run(names)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping the server")
        if runner.current:
            runner.record(runner.current, False, "interrupted")
        for n in runner.remaining:
            runner.record(n, False, "not run (interrupted)")
        rc = runner.summary() or 1
    except Exception as e:  # noqa: BLE001
        log(f"error: {type(e).__name__}: {e}")
        if runner.server.stderr_tail:
            log("server stderr: " + " | ".join(runner.server.stderr_tail[-8:]))
        runner.record(runner.current or "startup", False, f"{type(e).__name__}: {e}")
        for n in runner.remaining:
            runner.record(n, False, "not run (the run stopped on the error above)")
        rc = runner.summary() or 1
    finally:
        runner.server.stop()
    sys.exit(rc)


if __name__ == "__main__":
    main()
