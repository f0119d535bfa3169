#!/usr/bin/env python3
"""End-to-end check of replicas behind nginx (scripts/cluster.sh, docs/DEPLOY.md).

Drives streams and generations through nginx on 127.0.0.1:PORT, then SIGKILLs one replica and
checks what clients see: generations still succeed (nginx sends them to another replica),
streams on the dead replica get a prompt 410 that says to create a new stream, streams on the
live replicas go on, and a stream's output arrives through nginx frame by frame.

    scripts/cluster.sh up 3 18480
    python3 scripts/cluster_check.py --port 18480 --pids "scripts/cluster.sh pids"
    scripts/cluster.sh down
(or `scripts/cluster.sh check`, which does the three). The pids command prints the replicas'
process ids; their ports and names are read from /proc/PID/cmdline (`gen serve --port P
--instance rN`), so the replicas must run on this machine. MILLRACE_TOKEN, when set, is sent as
the bearer token. Only 127.0.0.1 is contacted. Prints PASS/FAIL per check and `N passed, M
failed`; exit code 1 on any failure. Standard library only; bounded to --budget seconds (60).
"""
import argparse, glob, http.client, json, os, re, signal, socket, subprocess, sys, threading, time

HOST = "127.0.0.1"
ID_RE = re.compile(r"^(r\d+)-[0-9a-f]{8}-s\d+$")
results = []  # (passed, name, detail)


def check(name, ok, detail=""):
    results.append((bool(ok), name, detail))
    print(("PASS " if ok else "FAIL ") + name + (": " + detail if detail else ""), flush=True)
    return ok


class Client:
    def __init__(self, token):
        self.auth = {"Authorization": "Bearer " + token} if token else {}

    def request(self, port, method, path, body=None, headers=None, timeout=10):
        """(status, headers with lower-case names, body bytes, seconds); status -1 on a
        connection error (the error text as body)."""
        h = dict(self.auth)
        h.update(headers or {})
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data, time.monotonic() - t0
        except (OSError, http.client.HTTPException) as e:
            return -1, {}, str(e).encode(), time.monotonic() - t0
        finally:
            conn.close()

    def json(self, port, method, path, obj, headers=None, timeout=10):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        return self.request(port, method, path, json.dumps(obj).encode(), h, timeout)


class PartReader:
    """Reads the parts of a multipart/x-mixed-replace response as they arrive."""

    def __init__(self, client, port, path, timeout=5):
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        self.conn.request("GET", path, headers=client.auth)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.upstream = self.resp.getheader("X-Millrace-Upstream", "")
        self.buf = b""
        self.ended = False

    def _more(self, deadline):
        if time.monotonic() > deadline:
            raise TimeoutError("no data in time")
        self.conn.sock.settimeout(max(0.05, deadline - time.monotonic()))
        chunk = self.resp.read1(65536)
        if not chunk:
            self.ended = True
            raise EOFError("response ended")
        self.buf += chunk

    def next_part(self, timeout):
        """(content type, bytes) of the next part; TimeoutError or EOFError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0 and b"--millraceframe" in self.buf[:i]:
                head = self.buf[:i].decode("latin-1")
                if "--millraceframe--" in head:
                    self.ended = True
                    raise EOFError("closing boundary")
                m = re.search(r"(?i)content-length:\s*(\d+)", head)
                t = re.search(r"(?i)content-type:\s*(\S+)", head)
                if m:
                    n = int(m.group(1))
                    while len(self.buf) < i + 4 + n:
                        self._more(deadline)
                    body = self.buf[i + 4:i + 4 + n]
                    self.buf = self.buf[i + 4 + n:]
                    return (t.group(1) if t else ""), body
            self._more(deadline)

    def wait_end(self, timeout):
        """Seconds until the response ends (EOF, reset or closing boundary), or None."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            while True:
                self.buf = b""
                self._more(deadline)
        except TimeoutError:
            return None
        except (EOFError, OSError, http.client.HTTPException):
            return time.monotonic() - t0

    def close(self):
        try:
            self.conn.close()
        except OSError:
            pass


def replicas_from_pids(cmd):
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10)
    reps = {}
    for line in out.stdout.split():
        pid = int(line)
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")
        except OSError:
            continue
        opt = lambda k: args[args.index(k) + 1] if k in args and args.index(k) + 1 < len(args) else None
        name, port = opt("--instance"), opt("--port")
        if name and port:
            reps[name] = {"pid": pid, "port": int(port), "addr": f"{HOST}:{port}"}
    return reps


def generate_counts(client, reps):
    """Successful /v1/generate requests each replica has answered (its own /metrics)."""
    counts = {}
    for name, r in reps.items():
        s, _, body, _ = client.request(r["port"], "GET", "/metrics", timeout=5)
        m = re.search(rb'millrace_requests_total\{route="/v1/generate",status="200"\} (\d+)', body) if s == 200 else None
        counts[name] = int(m.group(1)) if m else 0
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=18480, help="nginx's port on 127.0.0.1")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--pids", default=f"bash {here}/cluster.sh pids", help="command printing the replicas' pids")
    ap.add_argument("--budget", type=float, default=60, help="seconds the whole check may take")
    ap.add_argument("--slow-generate", default=os.environ.get("CLUSTER_CHECK_SLOW_GENERATE", '{"steps": 20, "count": 2}'),
                    help="JSON body of the generations in flight when a replica is killed: long enough to be "
                         "running then (default for the shipped model; env CLUSTER_CHECK_SLOW_GENERATE)")
    ap.add_argument("--frame", default=os.path.join(here, "..", "assets", "clips", "moving", "frame-000.png"))
    a = ap.parse_args()
    started = time.monotonic()
    client = Client(os.environ.get("MILLRACE_TOKEN", ""))
    P = a.port
    frame = open(a.frame, "rb").read()
    frame2 = open(sorted(glob.glob(os.path.join(os.path.dirname(a.frame), "*.png")))[-1], "rb").read()
    png = {"Content-Type": "image/png"}
    gen_body = {"steps": 1, "count": 1}
    slow_body = json.loads(a.slow_generate)

    reps = replicas_from_pids(a.pids)
    if not check("replicas found", len(reps) >= 2, ", ".join(f"{n} pid {r['pid']} port {r['port']}" for n, r in sorted(reps.items()))
                 or "fewer than 2 replicas from: " + a.pids):
        return finish(started, a.budget)
    names = sorted(reps)
    addr_name = {r["addr"]: n for n, r in reps.items()}

    # Stateless routes through nginx, and the page's same-origin calls.
    s, _, _, _ = client.request(P, "GET", "/healthz")
    s2, h2, _, _ = client.request(P, "GET", "/")
    check("healthz and page through nginx", s == 200 and s2 == 200 and h2.get("content-type", "").startswith("text/html"),
          f"/healthz {s}, / {s2} {h2.get('content-type')}")
    s, _, _, _ = client.json(P, "POST", "/v1/generate", gen_body,
                             {"Origin": f"http://{HOST}:{P}", "Sec-Fetch-Site": "same-origin"})
    s2, _, _, _ = client.json(P, "POST", "/v1/generate", gen_body, {"Origin": "http://attacker.example"})
    check("page origin accepted, foreign origin refused", s == 200 and s2 == 403,
          f"Origin http://{HOST}:{P}: {s}; Origin http://attacker.example: {s2}")

    # Streams: created through nginx, spread over the replicas.
    streams = []  # (id, replica name)
    bad = []
    for _ in range(2 * len(reps)):
        s, _, body, _ = client.json(P, "POST", "/v1/streams", {"filter": False, "steps": 1})
        sid = json.loads(body).get("id", "") if s == 201 else ""
        m = ID_RE.match(sid)
        if m and m.group(1) in reps:
            streams.append((sid, m.group(1)))
        else:
            bad.append(f"{s} {body[:80]!r}")
    per = {n: sum(1 for _, r in streams if r == n) for n in names}
    check("streams created on every replica", not bad and all(per.values()),
          ", ".join(f"{n}: {c}" for n, c in per.items()) + ("; failures: " + "; ".join(bad) if bad else ""))

    # Affinity: every request of a stream reaches the replica its id names. Consecutive requests
    # of one stream (which round robin would send to different replicas) all reach it.
    wrong = []
    for sid, name in streams:
        for method, path, body, h in (("POST", f"/v1/streams/{sid}/frames", frame, png),
                                      ("GET", f"/v1/streams/{sid}", None, None),
                                      ("PATCH", f"/v1/streams/{sid}", b'{"guidance": 1.5}', {"Content-Type": "application/json"})):
            s, hh, _, _ = client.request(P, method, path, body, h)
            if s not in (200, 202) or hh.get("x-millrace-upstream") != reps[name]["addr"]:
                wrong.append(f"{method} {path}: {s} via {hh.get('x-millrace-upstream')}")
        if wrong:
            continue
        s, _, body, _ = client.request(reps[name]["port"], "GET", f"/v1/streams/{sid}")
        if s != 200 or json.loads(body).get("frames_in", 0) < 1:
            wrong.append(f"{sid}: its replica {name} says {s} {body[:80]!r}")
        other = next(n for n in names if n != name)
        s, _, _, _ = client.request(reps[other]["port"], "GET", f"/v1/streams/{sid}")
        if s != 404:
            wrong.append(f"{sid}: replica {other} answers {s}")
    check("stream requests reach the replica the id names", not wrong,
          f"{len(streams)} streams: frame, GET, PATCH answered by its own replica; unknown to another" if not wrong else "; ".join(wrong[:4]))

    # Output through nginx, one stream per replica: the first part arrives while the response is
    # open, before the second frame is even posted; then the second part.
    def frame_by_frame(sid, out):
        try:
            v = PartReader(client, P, f"/v1/streams/{sid}/output")
            if v.status != 200:
                out.append(f"{sid}: output {v.status}")
                return
            got = []
            for body in (frame, frame2):
                t0 = time.monotonic()
                s, _, _, _ = client.request(P, "POST", f"/v1/streams/{sid}/frames", body, png)
                ctype, part = v.next_part(5)
                got.append(f"{ctype} {len(part)} B in {time.monotonic() - t0:.2f} s")
                if s != 202 or ctype != "image/png" or not part.startswith(b"\x89PNG") or v.ended:
                    out.append(f"{sid}: frame {s}, part {ctype}, ended {v.ended}")
            v.close()
            out.append(("ok", sid, got))
        except Exception as e:  # noqa: BLE001 - reported as a failure
            out.append(f"{sid}: {type(e).__name__} {e}")

    firsts = {}
    for sid, name in streams:
        firsts.setdefault(name, sid)
    outs = []
    ts = [threading.Thread(target=frame_by_frame, args=(sid, outs)) for sid in firsts.values()]
    [t.start() for t in ts]
    [t.join(12) for t in ts]
    errs = [o for o in outs if not isinstance(o, tuple)]
    oks = [o for o in outs if isinstance(o, tuple)]
    check("stream output arrives frame by frame through nginx", not errs and len(oks) == len(firsts),
          "; ".join(f"{sid}: {', '.join(g)}" for _, sid, g in oks[:2]) if not errs else "; ".join(errs[:3]))

    # Generation spread over the replicas (X-Millrace-Upstream and each replica's /metrics).
    before = generate_counts(client, reps)
    seen, fails = {}, []
    n_gen = 3 * len(reps)
    for _ in range(n_gen):
        s, h, body, _ = client.json(P, "POST", "/v1/generate", gen_body)
        if s != 200 or not body.startswith(b"\x89PNG"):
            fails.append(str(s))
        name = addr_name.get(h.get("x-millrace-upstream", ""), "?")
        seen[name] = seen.get(name, 0) + 1
    after = generate_counts(client, reps)
    delta = {n: after[n] - before[n] for n in names}
    check("generations spread over every replica", not fails and all(delta.values()) and sum(delta.values()) == n_gen,
          f"{n_gen} requests; by header {seen}; by /metrics {delta}" + (f"; failures {fails}" if fails else ""))

    # Kill one replica, with a viewer open on one of its streams and a generation running on
    # every replica (least_conn gives each of them one of the concurrent requests).
    victim = names[1]
    vstreams = [sid for sid, n in streams if n == victim]
    live = [(sid, n) for sid, n in streams if n != victim]
    viewer = PartReader(client, P, f"/v1/streams/{vstreams[0]}/output")
    inflight = []

    def slow():
        s, h, body, dt = client.json(P, "POST", "/v1/generate", slow_body, timeout=30)
        inflight.append((s, h.get("x-millrace-upstream", ""), body.startswith(b"\x89PNG"), dt))

    slow_threads = [threading.Thread(target=slow) for _ in names]
    [t.start() for t in slow_threads]
    until = time.monotonic() + 3   # kill once the victim is running its generation
    while time.monotonic() < until:
        _, _, m, _ = client.request(reps[victim]["port"], "GET", "/metrics", timeout=2)
        running = re.search(rb"^millrace_jobs_running (\d+)", m, re.M)
        if running and int(running.group(1)) >= 1:
            break
        time.sleep(0.02)
    os.kill(reps[victim]["pid"], signal.SIGKILL)
    print(f"killed {victim} (pid {reps[victim]['pid']}, {reps[victim]['addr']}) with SIGKILL", flush=True)

    ended = viewer.wait_end(3)
    viewer.close()
    check("a viewer of the dead replica's stream sees its response end", ended is not None and ended < 2,
          f"ended {ended:.2f} s after the kill" if ended is not None else "still open 3 s after the kill")

    [t.join(30) for t in slow_threads]
    resent = [u for s, u, _, _ in inflight if u.split(",")[0].strip() == reps[victim]["addr"]]
    check("a generation running on the killed replica is answered by another",
          len(inflight) == len(names) and all(s == 200 and png_ok for s, _, png_ok, _ in inflight) and resent and "," in resent[0],
          "; ".join(f"{s} via {u} in {dt:.1f} s" for s, u, _, dt in inflight))

    slow, wrong = [], []
    for sid in vstreams:
        for method, path, body, h in (("GET", f"/v1/streams/{sid}", None, None),
                                      ("POST", f"/v1/streams/{sid}/frames", frame, png),
                                      ("GET", f"/v1/streams/{sid}/output", None, None),
                                      ("PATCH", f"/v1/streams/{sid}", b'{"guidance": 2}', {"Content-Type": "application/json"}),
                                      ("DELETE", f"/v1/streams/{sid}", None, None)):
            s, hh, data, dt = client.request(P, method, path, body, h, timeout=5)
            try:
                msg = json.loads(data).get("error", "")
            except ValueError:
                msg = ""
            if s not in (404, 410) or "create a new stream" not in msg or not hh.get("content-type", "").startswith("application/json"):
                wrong.append(f"{method} {path}: {s} {data[:100]!r}")
            if dt >= 2:
                slow.append(f"{method} {path}: {dt:.2f} s")
    check("dead replica's streams answer 410 with a clear JSON error, under 2 s", not wrong and not slow,
          f"{5 * len(vstreams)} requests on {len(vstreams)} streams; e.g. {msg!r}" if not wrong and not slow
          else "; ".join((wrong + slow)[:3]))

    # Generation after the kill: every one succeeds, some after a retry.
    fails, retried, on_victim = [], 0, 0
    for _ in range(3 * len(reps)):
        s, h, body, dt = client.json(P, "POST", "/v1/generate", gen_body)
        ups = h.get("x-millrace-upstream", "")
        if s != 200 or not body.startswith(b"\x89PNG"):
            fails.append(f"{s} {body[:80]!r}")
        retried += "," in ups
        on_victim += ups.split(",")[-1].strip() == reps[victim]["addr"]
    burst = []

    def one():
        burst.append(client.json(P, "POST", "/v1/generate", gen_body)[0])

    ts = [threading.Thread(target=one) for _ in range(2 * len(reps))]
    [t.start() for t in ts]
    [t.join(15) for t in ts]
    fails += [str(s) for s in burst if s != 200]
    check("generation succeeds every time after the kill", not fails and not on_victim and len(burst) == len(ts),
          f"{3 * len(reps)} sequential ({retried} retried on another replica) and {len(ts)} concurrent, all 200"
          if not fails else f"failures: {fails[:4]}")

    s_list = [client.json(P, "POST", "/v1/streams", {"filter": False, "steps": 1}) for _ in range(2 * len(reps))]
    new_ids = [json.loads(b).get("id", "") for s, _, b, _ in s_list if s == 201]
    check("new streams are created on live replicas", len(new_ids) == len(s_list) and not any(i.startswith(victim + "-") for i in new_ids),
          ", ".join(new_ids))

    # Live replicas' streams go on.
    outs = []
    firsts = {}
    for sid, name in live:
        firsts.setdefault(name, sid)
    ts = [threading.Thread(target=frame_by_frame, args=(sid, outs)) for sid in firsts.values()]
    [t.start() for t in ts]
    [t.join(12) for t in ts]
    wrong = [o for o in outs if not isinstance(o, tuple)]
    for sid, name in live:
        s, _, _, _ = client.request(P, "POST", f"/v1/streams/{sid}/frames", frame, png)
        s2, _, body, _ = client.request(P, "GET", f"/v1/streams/{sid}")
        if s != 202 or s2 != 200:
            wrong.append(f"{sid}: frame {s}, GET {s2}")
    check("live replicas' streams still work", not wrong and len(outs) == len(firsts),
          f"{len(live)} streams take frames; output frame by frame on {len(firsts)}" if not wrong else "; ".join(map(str, wrong[:3])))

    # Ids that name no replica, or a replica that never made them.
    cases = ["/v1/streams/r99-deadbeef-s1", "/v1/streams/nope/output", f"/v1/streams/{names[0]}-00000000-s1"]
    got = [client.request(P, "GET", c, timeout=5) for c in cases]
    check("unknown stream ids get 404 JSON", all(s == 404 and h.get("content-type", "").startswith("application/json") for s, h, _, _ in got),
          ", ".join(f"{c.split('/')[3]}: {s}" for c, (s, _, _, _) in zip(cases, got)))

    for sid in [sid for sid, _ in live] + new_ids:
        client.request(P, "DELETE", f"/v1/streams/{sid}", timeout=5)
    return finish(started, a.budget)


def finish(started, budget):
    took = time.monotonic() - started
    check("whole check within budget", took < budget, f"{took:.1f} s (budget {budget:.0f} s)")
    passed = sum(1 for ok, _, _ in results if ok)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    # A hard stop, whatever hangs: the check is bounded in time.
    signal.signal(signal.SIGALRM, lambda *_: (print("FAIL check timed out (90 s)"), os._exit(1)))
    signal.alarm(90)
    sys.exit(main())
