import Foundation

/// SplitMix64: a tiny seeded generator so that every test draws the same numbers on every run.
struct TestRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func floats(_ n: Int, scale: Float = 1) -> [Float] {
        (0..<n).map { _ in Float.random(in: -scale...scale, using: &self) }
    }
}

/// Largest absolute difference, relative to the reference's magnitude: |a - b| / (1 + max|b|).
func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    var worst: Float = 0, scale: Float = 0
    for i in 0..<a.count {
        worst = max(worst, abs(a[i] - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return worst / (1 + scale)
}

/// Process-wide kernel settings (the OpenBLAS thread count, the convolution tile budget) decide
/// how work is split, and so the rounding of sums. Tests that change them, and tests that need
/// bit-identical results across two runs, hold this lock, so suites running in parallel cannot
/// change the settings under them.
enum GlobalKernelSettings {
    static let lock = NSLock()
    static func exclusive<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }
}
