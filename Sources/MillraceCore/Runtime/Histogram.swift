import Foundation

/// A cumulative histogram with fixed upper bounds, for Prometheus' text format.
public final class Histogram: @unchecked Sendable {
    public let bounds: [Double]
    private let lock = NSLock()
    private var counts: [Int]
    private var sum = 0.0

    public init(bounds: [Double]) {
        self.bounds = bounds
        counts = [Int](repeating: 0, count: bounds.count + 1)
    }

    public func record(_ value: Double) {
        lock.lock()
        counts[bounds.firstIndex { value <= $0 } ?? bounds.count] += 1
        sum += value
        lock.unlock()
    }

    /// (upper bound, cumulative count) pairs ending with +Inf, the sum and the count.
    public var snapshot: (buckets: [(String, Int)], sum: Double, count: Int) {
        lock.lock()
        defer { lock.unlock() }
        var c = 0
        var out: [(String, Int)] = []
        for (i, b) in bounds.enumerated() { c += counts[i]; out.append((String(format: "%g", b), c)) }
        c += counts[bounds.count]
        out.append(("+Inf", c))
        return (out, sum, c)
    }

    /// The exposition lines of this histogram under `name`.
    public func render(_ name: String, help: String) -> String {
        let s = snapshot
        var text = "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for (le, c) in s.buckets { text += "\(name)_bucket{le=\"\(le)\"} \(c)\n" }
        return text + "\(name)_sum \(s.sum)\n\(name)_count \(s.count)\n"
    }
}
