import Foundation

/// SplitMix64: a small, fast, seedable generator. Everything random in Millrace draws from a
/// seeded one of these, so the same seed gives the same bytes.
public struct SplitMix64: RandomNumberGenerator, Sendable, Codable, Equatable {
    /// The full generator state (64 bits): saving it and restoring it resumes the sequence.
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// Generator `index` of the family `seed`: sample i of a batch drawn with seed S uses
    /// stream (S, i), so a sample does not depend on the batch it is drawn in.
    public init(seed: UInt64, stream index: Int) {
        state = seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(index) &* 0xD1B5_4A32_D192_ED03
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Moves on as `draws` calls of `next()` would (the state only counts), in constant time.
    public mutating func skip(_ draws: Int) {
        state &+= UInt64(truncatingIfNeeded: draws) &* 0x9E37_79B9_7F4A_7C15
    }

    /// Uniform in [0, 1) with 24 random bits.
    public mutating func nextUnitFloat() -> Float {
        Float(next() >> 40) * (1.0 / 16_777_216.0)
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextUnitDouble() -> Double {
        Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// A standard normal draw (Box–Muller; one value per call, so the sequence is simple to reason about).
    public mutating func nextGaussian() -> Float {
        var u1 = nextUnitDouble()
        if u1 < 1e-300 { u1 = 1e-300 }
        let u2 = nextUnitDouble()
        return Float((-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
    }

    /// `n` standard normal draws.
    public mutating func gaussians(_ n: Int) -> [Float] {
        var out = [Float](repeating: 0, count: n)
        for i in 0..<n { out[i] = nextGaussian() }
        return out
    }
}
