import Foundation
import MillraceCore

/// Evaluation metrics (docs/METHODS.md §10).
public enum Metrics {
    /// Mean and covariance (unbiased, n − 1) of `rows` feature vectors of dimension `dim`.
    public static func meanAndCovariance(_ features: [Float], dim: Int) -> (mean: [Double], cov: [Double]) {
        let n = features.count / dim
        var mean = [Double](repeating: 0, count: dim)
        for r in 0..<n { for j in 0..<dim { mean[j] += Double(features[r * dim + j]) } }
        for j in 0..<dim { mean[j] /= Double(max(n, 1)) }
        var cov = [Double](repeating: 0, count: dim * dim)
        var centred = [Double](repeating: 0, count: dim)
        for r in 0..<n {
            for j in 0..<dim { centred[j] = Double(features[r * dim + j]) - mean[j] }
            for a in 0..<dim {
                let ca = centred[a]
                if ca == 0 { continue }
                for b in a..<dim { cov[a * dim + b] += ca * centred[b] }
            }
        }
        let denom = Double(max(n - 1, 1))
        for a in 0..<dim {
            for b in a..<dim {
                cov[a * dim + b] /= denom
                cov[b * dim + a] = cov[a * dim + b]
            }
        }
        return (mean, cov)
    }

    static func matmul(_ a: [Double], _ b: [Double], n: Int) -> [Double] {
        var c = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for k in 0..<n { let aik = a[i * n + k]; if aik == 0 { continue }; for j in 0..<n { c[i * n + j] += aik * b[k * n + j] } } }
        return c
    }

    /// ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^{1/2}). The trace of the square root is computed
    /// as Σ √λ over the eigenvalues of Σ_a^{1/2} Σ_b Σ_a^{1/2} (similar to Σ_a Σ_b, and symmetric
    /// positive semi-definite, so its eigenvalues are real and ≥ 0 up to rounding).
    public static func frechetDistance(meanA: [Double], covA: [Double], meanB: [Double], covB: [Double], dim n: Int) throws -> Double {
        var d = 0.0
        for j in 0..<n { d += (meanA[j] - meanB[j]) * (meanA[j] - meanB[j]) }
        var trace = 0.0
        for j in 0..<n { trace += covA[j * n + j] + covB[j * n + j] }
        let (ea, va) = try SymmetricEigen.decompose(covA, dimension: n)
        var sqrtA = [Double](repeating: 0, count: n * n)  // V diag(√λ) Vᵀ; eigenvector k is row k of va
        for i in 0..<n {
            for j in 0..<n {
                var s = 0.0
                for k in 0..<n { s += va[k * n + i] * max(ea[k], 0).squareRoot() * va[k * n + j] }
                sqrtA[i * n + j] = s
            }
        }
        var m = matmul(matmul(sqrtA, covB, n: n), sqrtA, n: n)
        for i in 0..<n { for j in (i + 1)..<n { let s = (m[i * n + j] + m[j * n + i]) / 2; m[i * n + j] = s; m[j * n + i] = s } }
        let (em, _) = try SymmetricEigen.decompose(m, dimension: n)
        let traceSqrt = em.reduce(0) { $0 + max($1, 0).squareRoot() }
        return d + trace - 2 * traceSqrt
    }

    /// Fréchet distance between two feature sets (rows of `dim` values).
    public static func frechetDistance(_ a: [Float], _ b: [Float], dim: Int) throws -> Double {
        let (ma, ca) = meanAndCovariance(a, dim: dim)
        let (mb, cb) = meanAndCovariance(b, dim: dim)
        return try frechetDistance(meanA: ma, covA: ca, meanB: mb, covB: cb, dim: dim)
    }

    /// Mean squared difference per element.
    public static func meanSquaredError(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count)
        var s = 0.0
        for i in 0..<a.count { let d = Double(a[i] - b[i]); s += d * d }
        return s / Double(max(a.count, 1))
    }
}
