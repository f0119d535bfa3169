@testable import Millrace
import Testing

@Suite struct MetricsTests {
    @Test func jacobiEigenDecomposesASymmetricMatrix() {
        let n = 5
        var rng = TestRNG(seed: 1)
        var a = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in i..<n { let v = Double(Float.random(in: -1...1, using: &rng)); a[i * n + j] = v; a[j * n + i] = v } }
        let (values, vectors) = Metrics.symmetricEigen(a, n: n)
        // A v_k = λ_k v_k, and the vectors are orthonormal.
        for k in 0..<n {
            for i in 0..<n {
                var av = 0.0
                for j in 0..<n { av += a[i * n + j] * vectors[j * n + k] }
                #expect(abs(av - values[k] * vectors[i * n + k]) < 1e-9)
            }
            for m in 0..<n {
                var dot = 0.0
                for i in 0..<n { dot += vectors[i * n + k] * vectors[i * n + m] }
                #expect(abs(dot - (k == m ? 1 : 0)) < 1e-9)
            }
        }
    }

    /// Gaussians with known moments: FD = ‖μa − μb‖² + Σ (σa − σb)² for diagonal covariances.
    @Test func frechetDistanceOfDiagonalGaussians() {
        let n = 3
        let ma: [Double] = [0, 1, 2], mb: [Double] = [1, 1, 0]
        let sa: [Double] = [1, 4, 9], sb: [Double] = [4, 4, 1]  // variances
        var ca = [Double](repeating: 0, count: 9), cb = ca
        for i in 0..<n { ca[i * n + i] = sa[i]; cb[i * n + i] = sb[i] }
        let fd = Metrics.frechetDistance(meanA: ma, covA: ca, meanB: mb, covB: cb, dim: n)
        let meanPart: Double = 1 + 0 + 4          // ‖μa − μb‖²
        let covPart: Double = 1 + 0 + 4           // Σ (σa − σb)²: (1−2)², (2−2)², (3−1)²
        let expected = meanPart + covPart
        #expect(abs(fd - expected) < 1e-9)
    }

    @Test func frechetDistanceOfASetWithItselfIsZero() {
        var rng = TestRNG(seed: 2)
        let f = rng.floats(40 * 4)
        #expect(abs(Metrics.frechetDistance(f, f, dim: 4)) < 1e-6)
        let shifted = f.map { $0 + 1 }
        #expect(abs(Metrics.frechetDistance(f, shifted, dim: 4) - 4) < 1e-5)
    }
}
