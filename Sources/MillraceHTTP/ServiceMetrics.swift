import Foundation
import MillracePipelines

/// Request counters and latency histograms, rendered in Prometheus' text format.
public final class ServiceMetrics: @unchecked Sendable {
    private let lock = NSLock()
    private var requests: [String: Int] = [:]          // "route|status" → count
    private var latency: [String: [Int]] = [:]         // route → bucket counts
    private var latencySum: [String: Double] = [:]
    private var counters: [String: (help: String, value: Int)] = [:]
    public static let buckets: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    public init() {}

    public func record(route: String, status: Int, seconds: Double) {
        lock.lock()
        defer { lock.unlock() }
        requests["\(route)|\(status)", default: 0] += 1
        var b = latency[route] ?? [Int](repeating: 0, count: Self.buckets.count + 1)
        let i = Self.buckets.firstIndex { seconds <= $0 } ?? Self.buckets.count
        b[i] += 1
        latency[route] = b
        latencySum[route, default: 0] += seconds
    }

    /// Adds `n` to a named counter (`millrace_<name>_total`), e.g. images colorized.
    public func add(_ name: String, help: String, _ n: Int = 1) {
        lock.lock()
        defer { lock.unlock() }
        let old = counters[name]?.value ?? 0
        counters[name] = (help, old + n)
    }

    /// The exposition text, with the stream counters appended. `streams` are the scheduler's
    /// counters over the server's life (streams deleted or expired included), so they never
    /// decrease; `activeStreams` is the gauge of live ones.
    public func render(streams t: StreamScheduler.Totals, generateCalls: Int, activeStreams: Int) -> String {
        lock.lock()
        defer { lock.unlock() }
        var out = "# HELP millrace_requests_total HTTP requests by route and status.\n# TYPE millrace_requests_total counter\n"
        for key in requests.keys.sorted() {
            let parts = key.split(separator: "|")
            out += "millrace_requests_total{route=\"\(parts[0])\",status=\"\(parts[1])\"} \(requests[key]!)\n"
        }
        out += "# HELP millrace_request_seconds Request latency by route.\n# TYPE millrace_request_seconds histogram\n"
        for route in latency.keys.sorted() {
            var cumulative = 0
            for (i, le) in Self.buckets.enumerated() {
                cumulative += latency[route]![i]
                out += "millrace_request_seconds_bucket{route=\"\(route)\",le=\"\(le)\"} \(cumulative)\n"
            }
            cumulative += latency[route]!.last!
            out += "millrace_request_seconds_bucket{route=\"\(route)\",le=\"+Inf\"} \(cumulative)\n"
            out += "millrace_request_seconds_sum{route=\"\(route)\"} \(latencySum[route]!)\n"
            out += "millrace_request_seconds_count{route=\"\(route)\"} \(cumulative)\n"
        }
        for (name, help, value) in [
            ("millrace_stream_frames_in_total", "Frames received by streams (live, deleted or expired).", t.framesIn),
            ("millrace_stream_frames_processed_total", "Frames run through the pipeline.", t.processed),
            ("millrace_stream_frames_skipped_total", "Frames skipped by the similarity filter.", t.skipped),
            ("millrace_stream_frames_dropped_total", "Frames replaced before the worker took them.", t.dropped),
            ("millrace_stream_frames_out_total", "Frames published to viewers.", t.out),
            ("millrace_model_calls_total", "Batched model calls (generation steps and stream calls).", generateCalls + t.modelCalls),
        ] {
            out += "# HELP \(name) \(help)\n# TYPE \(name) counter\n\(name) \(value)\n"
        }
        for name in counters.keys.sorted() {
            let (help, value) = counters[name]!
            out += "# HELP millrace_\(name)_total \(help)\n# TYPE millrace_\(name)_total counter\nmillrace_\(name)_total \(value)\n"
        }
        out += "# HELP millrace_streams_active Live streams.\n# TYPE millrace_streams_active gauge\nmillrace_streams_active \(activeStreams)\n"
        return out
    }
}
