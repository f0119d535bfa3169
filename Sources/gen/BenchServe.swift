import ArgumentParser
import Foundation
import MillraceCore
import MillraceImaging
import MillracePipelines
import MillraceHTTP

/// `gen bench serve`: the service's model sharing (continuous batching) on and off in one run.
struct BenchServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Streams and generation requests in-process, with shared model calls (continuous batching) on and off.",
        discussion: """
        Runs the service in this process (no HTTP): busy streams (full guidance 3, strength 0.9,
        2 slots, no filter, a new frame always waiting) and generate clients (4 steps, 1 image,
        the model's guidance) that send their next request as soon as one is answered. For each
        of --max-batch-rows 0 (off) and the given value: 1 and N streams, 1 and M clients.
        Also the model's forward time per row at batch 1…32, which decides what sharing can gain.
        Example:
          gen bench serve --json --seconds 8
        """)

    @Option(help: "Model folder (default: the shipped emoji model).")
    var model: String?
    @Option(help: "Busy streams in the many-streams figure.")
    var streams: Int = 8
    @Option(help: "Generate clients in the many-clients figure.")
    var clients: Int = 8
    @Option(help: "Rows of a shared call when batching is on.")
    var maxBatchRows: Int = 32
    @Option(help: "Seconds per figure.")
    var seconds: Double = 8
    @Flag(help: "Print JSON.")
    var json = false
    @OptionGroup var threads: ThreadOptions

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let log: (String) -> Void = { msg in if !json { print(msg) } else { FileHandle.standardError.write(Data((msg + "\n").utf8)) } }
            log("machine: \(Runtime.describe())")
            let folder = try ModelFolder.load(model ?? ModelFolder.defaultPath())
            // The model alone: milliseconds per row at each batch size.
            let perRow = forwardMillisecondsPerSample(folder, batches: [1, 2, 4, 8, 16, 32], log: log)
            let frame = RGBImage(width: 64, height: 64, fill: (0.6, 0.4, 0.3))
            var figures: [String: [String: Double]] = [:]
            for rows in [0, maxBatchRows] {
                let key = rows == 0 ? "off" : "on"
                var f: [String: Double] = [:]
                for n in [1, streams] {
                    let (total, slowest, fastest) = try streamFPS(folder: folder, rows: rows, count: n, frame: frame)
                    f["stream_fps_\(n)"] = round2(total)
                    f["stream_fps_slowest_\(n)"] = round2(slowest)
                    f["stream_fps_fastest_\(n)"] = round2(fastest)
                    log(String(format: "batching %@: %d busy stream(s): %.2f processed frames/s (per stream %.2f to %.2f)", key, n, total, slowest, fastest))
                }
                for m in [1, clients] {
                    let (rps, p99, worst) = try generateRate(folder: folder, rows: rows, clients: m)
                    f["generate_rps_\(m)"] = round2(rps)
                    f["generate_p99_ms_\(m)"] = round2(p99 * 1000)
                    f["generate_worst_ms_\(m)"] = round2(worst * 1000)
                    log(String(format: "batching %@: %d generate client(s): %.2f requests/s, p99 %.0f ms, worst %.0f ms", key, m, rps, p99 * 1000, worst * 1000))
                }
                figures[key] = f
            }
            if json {
                let obj: [String: Any] = ["machine": Runtime.describe(), "forward_ms_per_row": perRow, "figures": figures,
                                          "streams": streams, "clients": clients, "max_batch_rows": maxBatchRows, "seconds": seconds]
                let d = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: d, as: UTF8.self))
            }
        }
    }

    func service(_ folder: ModelFolder, rows: Int) -> MillraceService {
        var o = MillraceService.Options()
        o.maxBatchRows = rows
        o.maxStreams = max(8, streams)
        o.maxJobs = max(8, clients)
        o.requestTimeout = 3600
        return MillraceService(folder: folder, options: o)
    }

    static func request(_ method: String, _ path: String, _ body: String) -> HTTPRequest {
        HTTPRequest(method: method, path: path, query: [:], headers: ["host": "127.0.0.1", "content-type": "application/json"],
                    body: Array(body.utf8), bodyTooLarge: false)
    }

    /// Processed frames per second over `count` streams that always have a frame waiting: all
    /// together, and of the slowest and the fastest stream (a stream starved by the others shows
    /// as a slowest rate near 0).
    func streamFPS(folder: ModelFolder, rows: Int, count: Int, frame: RGBImage) throws -> (Double, Double, Double) {
        let s = service(folder, rows: rows)
        defer { s.beginShutdown() }
        var entries: [StreamScheduler.Entry] = []
        for k in 0..<count {
            let r = s.handle(Self.request("POST", "/v1/streams",
                                          #"{"class": \#(k % 9), "rcfg": "full", "guidance": 3, "strength": 0.9, "steps": 2, "filter": false}"#))
            guard r.status == 201, let e = s.scheduler.streams.last else { throw ModelError.invalidArgument("cannot create a stream: \(r.status)") }
            entries.append(e)
        }
        let feeding = StopFlag()
        let streamsFed = entries
        let feeder = Thread {
            while !feeding.isSet {
                for e in streamsFed where !e.input.hasItem { _ = s.scheduler.submit(frame, to: e.id) }
                usleep(500)
            }
        }
        feeder.start()
        defer { feeding.set() }
        usleep(500_000)  // warm-up
        let before = s.scheduler.totals().processed, start = Date()
        let each = entries.map { $0.counters().out }
        usleep(UInt32(seconds * 1e6))
        let elapsed = Date().timeIntervalSince(start)
        let perStream = zip(entries, each).map { Double($0.0.counters().out - $0.1) / elapsed }
        return (Double(s.scheduler.totals().processed - before) / elapsed, perStream.min() ?? 0, perStream.max() ?? 0)
    }

    /// Requests per second, and the 99th-percentile and worst latency, of `clients` closed-loop
    /// clients.
    func generateRate(folder: ModelFolder, rows: Int, clients: Int) throws -> (Double, Double, Double) {
        let s = service(folder, rows: rows)
        defer { s.beginShutdown() }
        let body = #"{"class": 0, "steps": 4, "count": 1, "upscale": 1}"#
        _ = s.handle(Self.request("POST", "/v1/generate", body))  // warm-up
        let latencies = Latencies()
        let end = Date().addingTimeInterval(seconds)
        let group = DispatchGroup()
        for _ in 0..<clients {
            group.enter()
            Thread {
                while Date() < end {
                    let t0 = Date()
                    let r = s.handle(Self.request("POST", "/v1/generate", body))
                    if r.status == 200 { latencies.add(Date().timeIntervalSince(t0)) }
                }
                group.leave()
            }.start()
        }
        group.wait()
        let v = latencies.sorted
        return (Double(v.count) / seconds, v.isEmpty ? 0 : v[min(v.count - 1, Int(Double(v.count - 1) * 0.99))], v.last ?? 0)
    }

    final class StopFlag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
        func set() { lock.lock(); value = true; lock.unlock() }
    }

    final class Latencies: @unchecked Sendable {
        private let lock = NSLock()
        private var values: [Double] = []
        func add(_ v: Double) { lock.lock(); values.append(v); lock.unlock() }
        var sorted: [Double] { lock.lock(); defer { lock.unlock() }; return values.sorted() }
    }
}
