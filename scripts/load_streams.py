#!/usr/bin/env python3
"""Load test of gen serve's streams: N streams, each posting frames at F frames/s for S seconds
with one viewer reading its multipart output. Prints one JSON object: frames posted, accepted,
refused by status, output frames received, post latency p50/p99, 5xx count.

Usage: scripts/load_streams.py --port 8181 --streams 8 --fps 30 --seconds 60 [--settings JSON]
Only talks to 127.0.0.1. Standard library only.
"""
import argparse, glob, http.client, json, os, threading, time

def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8181)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--fps", type=float, default=30)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--settings", default='{"steps": 2, "strength": 0.6}',
                    help='JSON merged into each POST /v1/streams, e.g. \'{"rcfg": "full", "guidance": 3, "strength": 0.9, "filter": false}\'')
    ap.add_argument("--clip", default=os.path.join(os.path.dirname(__file__), "..", "assets", "clips", "moving"))
    a = ap.parse_args()
    frames = [open(f, "rb").read() for f in sorted(glob.glob(os.path.join(a.clip, "*.png")))]
    assert frames, "no frames in " + a.clip
    lock = threading.Lock()
    stats = {"posted": 0, "accepted": 0, "statuses": {}, "latencies": [], "received": 0, "server_errors": 0}
    deadline = time.time() + a.seconds

    def call(conn, method, path, body=None, headers=None):
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()

    ids = []
    c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
    for i in range(a.streams):
        status, body = call(c, "POST", "/v1/streams", json.dumps({"class": i % 9, **json.loads(a.settings)}),
                            {"Content-Type": "application/json"})
        assert status == 201, (status, body)
        ids.append(json.loads(body)["id"])

    def sender(sid):
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
        k = 0
        nxt = time.time()
        while time.time() < deadline:
            t0 = time.time()
            try:
                status, _ = call(conn, "POST", f"/v1/streams/{sid}/frames", frames[k % len(frames)], {"Content-Type": "image/png"})
            except Exception:
                status = -1
                conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
            dt = time.time() - t0
            with lock:
                stats["posted"] += 1
                stats["statuses"][str(status)] = stats["statuses"].get(str(status), 0) + 1
                stats["latencies"].append(dt)
                if status == 202:
                    stats["accepted"] += 1
                if status >= 500:
                    stats["server_errors"] += 1
            k += 1
            nxt += 1 / a.fps
            time.sleep(max(0, nxt - time.time()))

    def viewer(sid):
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
        conn.request("GET", f"/v1/streams/{sid}/output")
        r = conn.getresponse()
        buf = b""
        while time.time() < deadline + 2:
            chunk = r.read1(65536) if hasattr(r, "read1") else r.read(4096)
            if not chunk:
                break
            buf += chunk
            n = buf.count(b"Content-Type: image/png")
            if n:
                with lock:
                    stats["received"] += n
                buf = buf[buf.rfind(b"Content-Type: image/png") + 23:]
        conn.close()

    threads = [threading.Thread(target=sender, args=(s,)) for s in ids] + [threading.Thread(target=viewer, args=(s,), daemon=True) for s in ids]
    for t in threads:
        t.start()
    for t in threads[:len(ids)]:
        t.join()
    time.sleep(2)
    c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)  # the first one idled out
    dropped = 0
    for sid in ids:
        status, body = call(c, "GET", f"/v1/streams/{sid}")
        if status == 200:
            dropped += json.loads(body)["dropped"]
        call(c, "DELETE", f"/v1/streams/{sid}")
    lat = stats.pop("latencies")
    stats.update({"streams": a.streams, "fps_per_stream": a.fps, "seconds": a.seconds, "dropped": dropped,
                  "post_p50_ms": round(1000 * percentile(lat, 50), 2), "post_p99_ms": round(1000 * percentile(lat, 99), 2),
                  "output_frames_per_second": round(stats["received"] / a.seconds, 2)})
    print(json.dumps(stats, sort_keys=True))

if __name__ == "__main__":
    main()
