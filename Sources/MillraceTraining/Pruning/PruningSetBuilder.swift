import Foundation
import MillraceKernels
import MillraceCore

// Building a SourceFM pruning set (docs/METHODS.md §4.2) from a dataset's train split. The set's
// file and the sampler that reads it are in MillraceCore (Sampling/PruningSet.swift, PrunedSource.swift).
//
// ## The pruning set (§4.2), as read here
//
// Rows: every train-split image (split 0) scaled to [−1, 1] as the trainer does (`u8/127.5 − 1`),
// plus its horizontal flip, so N = 2 × (train images) rows of d = 3·H·W. Each row is divided by
// its L2 norm: x̃_i. PCA: the mean μ of the x̃_i is subtracted and the covariance
// Σ = (1/N) Σ_i (x̃_i − μ)(x̃_i − μ)ᵀ (d × d) is formed with one sgemm per chunk of rows
// (`mr_linear_backward`'s `dw += dyᵀ·x`, with dy = x = the centred chunk). All d eigenvectors of Σ
// come from LAPACK's `dsyevd` (divide and conquer, in double) in Debian's OpenBLAS; they are
// ordered by decreasing variance: v_0 (largest) … v_{d−1}.
//
// γ uses the normalised images themselves, NOT the centred ones: γ(±v_k) = max_i ⟨±v_k, x̃_i⟩.
// The centring only serves to find the axes; the rule at sampling time compares a direction of
// zero-mean noise, z/‖z‖, with these axes, so what matters is where the (uncentred) normalised
// images point. A signed axis with γ ≤ τ is one along which no training image points (by more
// than τ); R is the set of them. Both signs of one axis can be in R (every image nearly
// orthogonal to v_k).
//
/// Stages of building a pruning set, for progress reporting.
public enum PruneBuildStage: String, Sendable {
    /// The covariance matrix, one sgemm per chunk of rows.
    case covariance
    /// LAPACK dsyevd on the d × d covariance (one call; reported as 0 of 1, then 1 of 1).
    case eigendecomposition
    /// ⟨v_k, x̃_i⟩ for every axis and row, one sgemm per chunk of rows.
    case projections
}

/// The principal axes of a set of rows.
public struct PCABasis: Sendable, Equatable {
    /// d.
    public var dimension: Int
    /// [d, d] row-major: row k is v_k, unit length; rows are orthonormal.
    public var axes: [Float]
    /// Eigenvalue of each axis (variance of the centred rows along it), decreasing.
    public var variances: [Float]
    /// Mean of the rows, [d].
    public var mean: [Float]

    /// Row k (v_k).
    public func axis(_ k: Int) -> ArraySlice<Float> { axes[(k * dimension)..<((k + 1) * dimension)] }
}

/// Everything a build computed: the stored set plus the full basis and every γ, for diagnostics.
public struct PruningAnalysis: Sendable {
    /// All d principal axes.
    public var basis: PCABasis
    /// γ(+v_k) = max_i ⟨v_k, x̃_i⟩, per component k.
    public var gammaPositive: [Float]
    /// γ(−v_k) = max_i ⟨−v_k, x̃_i⟩ = −min_i ⟨v_k, x̃_i⟩, per component k.
    public var gammaNegative: [Float]
    /// Number of rows N (train images × 2 for the flips).
    public var rows: Int
    /// The selected signed axes, ready to write.
    public var set: PruningSet
}

extension PruningSet {

    /// The rows of §4.2: each train image (split 0, ascending index) then its horizontal flip,
    /// scaled with `u8/127.5 − 1`, flattened [C, H, W] and divided by its L2 norm (a zero row,
    /// which 8-bit pixels cannot produce, would stay zero). Returns N and the [N, d] rows.
    public static func normalisedTrainingRows(_ dataset: ImageDataset) -> (rows: Int, data: [Float]) {
        let train = dataset.indices(split: 0)
        let s = dataset.size, d = dataset.bytesPerImage
        var data = [Float](repeating: 0, count: 2 * train.count * d)
        data.withUnsafeMutableBufferPointer { out in
            dataset.pixels.withUnsafeBufferPointer { px in
                for (j, i) in train.enumerated() {
                    let src = i * d
                    for flip in 0..<2 {
                        let dst = (2 * j + flip) * d
                        for c in 0..<3 {
                            for y in 0..<s {
                                let rowBase = c * s * s + y * s
                                for x in 0..<s {
                                    let sx = flip == 0 ? x : s - 1 - x
                                    out[dst + rowBase + x] = ImageDataset.modelValue(px[src + rowBase + sx])
                                }
                            }
                        }
                        var norm2 = 0.0
                        for k in 0..<d { norm2 += Double(out[dst + k]) * Double(out[dst + k]) }
                        if norm2 > 0 {
                            let inv = Float(1 / norm2.squareRoot())
                            for k in 0..<d { out[dst + k] *= inv }
                        }
                    }
                }
            }
        }
        return (2 * train.count, data)
    }

    /// PCA with all d components of `rows` × `dimension` row-major data: covariance of the
    /// mean-centred rows (float sgemm), then LAPACK dsyevd. Axes come back by decreasing variance.
    public static func principalAxes(rows n: Int, dimension d: Int, data: [Float],
                                     progress: ((PruneBuildStage, Int, Int) -> Void)? = nil) throws -> PCABasis {
        guard n >= 1, d >= 1, data.count == n * d else {
            throw ModelError.invalidArgument("PCA needs at least one row of \(d) values; got \(data.count) values for \(n) rows")
        }
        // Mean (double accumulation), then the centred rows.
        var meanD = [Double](repeating: 0, count: d)
        data.withUnsafeBufferPointer { x in
            for r in 0..<n {
                let base = r * d
                for k in 0..<d { meanD[k] += Double(x[base + k]) }
            }
        }
        let mean = meanD.map { Float($0 / Double(n)) }
        var centred = data
        centred.withUnsafeMutableBufferPointer { x in
            for r in 0..<n {
                let base = r * d
                for k in 0..<d { x[base + k] -= mean[k] }
            }
        }

        // Σ·N = Σ_chunks Xcᵀ·Xc, accumulated by mr_linear_backward (dw += dyᵀ·x).
        var cov = [Float](repeating: 0, count: d * d)
        let chunk = 512
        let chunks = (n + chunk - 1) / chunk
        progress?(.covariance, 0, chunks)
        centred.withUnsafeBufferPointer { x in
            cov.withUnsafeMutableBufferPointer { c in
                for ci in 0..<chunks {
                    let r0 = ci * chunk, rows = min(chunk, n - r0)
                    let p = x.baseAddress! + r0 * d
                    mr_linear_backward(Int32(rows), Int32(d), Int32(d), p, nil, p, nil, c.baseAddress!, nil)
                    progress?(.covariance, ci + 1, chunks)
                }
            }
        }
        centred = []

        // dsyevd (column-major; Σ is symmetric, so the layout of the input does not matter).
        // Eigenvector j comes back as column j of a column-major matrix = row j of our buffer.
        var a = [Double](repeating: 0, count: d * d)
        let scale = 1 / Double(n)
        for i in 0..<d {
            for j in 0..<d {
                // Symmetrise away sgemm rounding.
                a[i * d + j] = 0.5 * (Double(cov[i * d + j]) + Double(cov[j * d + i])) * scale
            }
        }
        cov = []
        progress?(.eigendecomposition, 0, 1)
        let eigenvalues = try SymmetricEigen.decomposeInPlace(&a, dimension: d)
        progress?(.eigendecomposition, 1, 1)

        var axes = [Float](repeating: 0, count: d * d)
        var variances = [Float](repeating: 0, count: d)
        for k in 0..<d {
            let src = (d - 1 - k) * d  // ascending → descending
            for j in 0..<d { axes[k * d + j] = Float(a[src + j]) }
            variances[k] = Float(eigenvalues[d - 1 - k])
        }
        return PCABasis(dimension: d, axes: axes, variances: variances, mean: mean)
    }

    /// γ(+v_k) = max_i ⟨v_k, x̃_i⟩ and γ(−v_k) = −min_i ⟨v_k, x̃_i⟩ over the (uncentred) rows,
    /// with one sgemm (mr_linear_forward) per chunk of rows.
    public static func gammas(rows n: Int, data: [Float], basis: PCABasis,
                              progress: ((PruneBuildStage, Int, Int) -> Void)? = nil) -> (positive: [Float], negative: [Float]) {
        let d = basis.dimension
        precondition(data.count == n * d)
        var hi = [Float](repeating: -.infinity, count: d)
        var lo = [Float](repeating: .infinity, count: d)
        let chunk = 256
        let chunks = (n + chunk - 1) / chunk
        var proj = [Float](repeating: 0, count: chunk * d)
        progress?(.projections, 0, chunks)
        data.withUnsafeBufferPointer { x in
            basis.axes.withUnsafeBufferPointer { v in
                proj.withUnsafeMutableBufferPointer { p in
                    for ci in 0..<chunks {
                        let r0 = ci * chunk, rows = min(chunk, n - r0)
                        // p[r, k] = Σ_j x[r, j]·v[k, j]
                        mr_linear_forward(Int32(rows), Int32(d), Int32(d), x.baseAddress! + r0 * d,
                                          v.baseAddress!, nil, p.baseAddress!)
                        for r in 0..<rows {
                            let base = r * d
                            for k in 0..<d {
                                let value = p[base + k]
                                if value > hi[k] { hi[k] = value }
                                if value < lo[k] { lo[k] = value }
                            }
                        }
                        progress?(.projections, ci + 1, chunks)
                    }
                }
            }
        }
        return (hi, lo.map { -$0 })
    }

    /// Builds the pruning set of §4.2 from the train split of `dataset`.
    /// `tauR` defaults to `defaultTauR(dimension:)`; `datasetPath` is recorded in the metadata.
    public static func build(dataset: ImageDataset, datasetPath: String, tau: Float = defaultTau,
                             tauR: Float? = nil,
                             progress: ((PruneBuildStage, Int, Int) -> Void)? = nil) throws -> PruningAnalysis {
        guard tau.isFinite else { throw ModelError.invalidArgument("τ must be a finite number, got \(tau)") }
        let d = dataset.bytesPerImage
        let r = tauR ?? defaultTauR(dimension: d)
        guard r.isFinite, r > 0 else { throw ModelError.invalidArgument("τ_r must be positive, got \(r)") }
        let trainCount = dataset.indices(split: 0).count
        guard trainCount >= 1 else {
            throw ModelError.invalidArgument("dataset \(datasetPath) has no training images (split 0): nothing to build a pruning set from")
        }
        let (n, rows) = normalisedTrainingRows(dataset)
        let basis = try principalAxes(rows: n, dimension: d, data: rows, progress: progress)
        let (gp, gn) = gammas(rows: n, data: rows, basis: basis, progress: progress)

        var axes: [Float] = [], components: [Int] = [], upper: [Bool] = [], lower: [Bool] = []
        for k in 0..<d where gp[k] <= tau || gn[k] <= tau {
            axes += basis.axis(k)
            components.append(k)
            upper.append(gp[k] <= tau)
            lower.append(gn[k] <= tau)
        }
        let set = PruningSet(axes: Tensor(shape: [components.count, d], data: axes), components: components,
                             upper: upper, lower: lower,
                             gammaPositive: components.map { gp[$0] }, gammaNegative: components.map { gn[$0] },
                             shape: [3, dataset.size, dataset.size], tau: tau, tauR: r,
                             dataset: datasetPath, imageCount: trainCount)
        return PruningAnalysis(basis: basis, gammaPositive: gp, gammaNegative: gn, rows: n, set: set)
    }
}
