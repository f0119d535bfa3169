#!/usr/bin/env python3
"""Closed-loop load on POST /v1/generate: C clients, each sending the next request as soon as the
previous one is answered, for S seconds. Prints one JSON object: requests answered 200 per second,
latency p50/p99 (ms) of those, count by status, and which upstreams answered (nginx's
X-Millrace-Upstream header, when present).

Usage: scripts/load_generate.py --port 18480 --concurrency 6 --seconds 20 [--body JSON]
Only talks to 127.0.0.1; MILLRACE_TOKEN, when set, is sent as the bearer token. Standard library only.
"""
import argparse, http.client, json, os, threading, time


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--body", default='{"class": 0, "steps": 4, "count": 1, "upscale": 1}')
    a = ap.parse_args()
    body = a.body.encode()
    headers = {"Content-Type": "application/json"}
    if os.environ.get("MILLRACE_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["MILLRACE_TOKEN"]
    lock = threading.Lock()
    lat, statuses, upstreams = [], {}, {}
    start = time.monotonic()
    deadline = start + a.seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                conn.request("POST", "/v1/generate", body=body, headers=headers)
                r = conn.getresponse()
                r.read()
                status, up = r.status, r.getheader("X-Millrace-Upstream", "direct")
            except (OSError, http.client.HTTPException):
                status, up = -1, "error"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
            dt = time.monotonic() - t0
            with lock:
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                upstreams[up] = upstreams.get(up, 0) + 1
                if status == 200:
                    lat.append(dt)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    print(json.dumps({"concurrency": a.concurrency, "seconds": round(took, 1), "body": json.loads(a.body),
                      "ok_per_second": round(len(lat) / took, 1),
                      "p50_ms": round(1000 * percentile(lat, 50), 1) if lat else None,
                      "p99_ms": round(1000 * percentile(lat, 99), 1) if lat else None,
                      "statuses": statuses, "upstreams": upstreams}, sort_keys=True))


if __name__ == "__main__":
    main()
