import Testing
@testable import MillraceTraining
import MillraceTestSupport

@Suite struct MetricsTests {
    /// Gaussians with known moments: FD = ‖μa − μb‖² + Σ (σa − σb)² for diagonal covariances.
    @Test func frechetDistanceOfDiagonalGaussians() throws {
        let n = 3
        let ma: [Double] = [0, 1, 2], mb: [Double] = [1, 1, 0]
        let sa: [Double] = [1, 4, 9], sb: [Double] = [4, 4, 1]  // variances
        var ca = [Double](repeating: 0, count: 9), cb = ca
        for i in 0..<n { ca[i * n + i] = sa[i]; cb[i * n + i] = sb[i] }
        let fd = try Metrics.frechetDistance(meanA: ma, covA: ca, meanB: mb, covB: cb, dim: n)
        let meanPart: Double = 1 + 0 + 4          // ‖μa − μb‖²
        let covPart: Double = 1 + 0 + 4           // Σ (σa − σb)²: (1−2)², (2−2)², (3−1)²
        let expected = meanPart + covPart
        #expect(abs(fd - expected) < 1e-9)
    }

    @Test func frechetDistanceOfASetWithItselfIsZero() throws {
        var rng = TestRNG(seed: 2)
        let f = rng.floats(40 * 4)
        #expect(abs(try Metrics.frechetDistance(f, f, dim: 4)) < 1e-6)
        let shifted = f.map { $0 + 1 }
        #expect(abs(try Metrics.frechetDistance(f, shifted, dim: 4) - 4) < 1e-5)
    }
}
