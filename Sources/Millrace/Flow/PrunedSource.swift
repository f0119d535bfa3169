import Foundation
import MillraceKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// SourceFM source pruning (docs/METHODS.md §4.2 pruning set, §4.3 pruned sampling).
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
// ## What is stored (prune-axes.safetensors in the model folder)
//
// Only what sampling needs: the m distinct selected axes v_k as rows of `axes` [m, d], `sides`
// [m] saying which signs of each are in R (+1, −1, or 2 for both), and `gammas` [2, m]; metadata
// holds the format, τ, τ_r, |R|, m, d, shape, the dataset path, image and row counts and the
// component indices (as ranges). The rule reads `s·⟨v_k, z/‖z‖⟩ ≤ τ_r` for every signed axis.
// An axis with both signs in R is stored once, which matters: on the emoji set R has 4090 signed
// axes on 2095 components (the images span only part of ℝ^3072), so signed rows would take more
// room than the full basis V (d × d, 37 MB); stored once, the emoji set is 25.7 MB in F32. F32 is
// the default because the sampler below relies on the rows being orthonormal: the F32 rounding
// of the double-precision eigenvectors keeps them orthonormal to ~2e-8, F16 (12.9 MB, available
// through `write(precision:)`) only to ~2e-4, which makes the proposal step approximate within
// ~1e-3 of the boundary (every sample still satisfies the rule of the stored rows exactly, but
// the restricted Gaussian is then only approximated). The full basis is not needed: see below.
//
// ## Pruned sampling (§4.3) without the full basis
//
// Let A be the m distinct selected axes v_k (orthonormal rows; m ≤ |R|), each constrained from
// above (s = +1 in R), from below (s = −1) or both. Any z ∈ ℝ^d splits as z = Aᵀy + z⊥ with
// y = A z ∈ ℝ^m and z⊥ ⊥ rows of A. For z ~ N(0, I): y ~ N(0, I_m), ‖z⊥‖² ~ χ²_{d−m}, the direction
// of z⊥ is uniform on the unit sphere of the complement, and the three are independent. The rule
// depends only on y and r = ‖z⊥‖: `s·y_k ≤ τ_r·√(r² + ‖y‖²)`.
//
// The rule is a cone K (scale invariant) and N(0, I) is radial, so the target (N(0, I) restricted
// to K) is: a direction distributed uniformly over K's part of the unit sphere, times an
// independent radius ~ χ_d. The sampler draws from N(0, I) restricted to K ∩ {‖z‖ ≤ ρ0}, which
// has exactly that direction distribution, and then replaces the radius by a fresh χ_d draw.
// Inside the ball the rule implies the box `s·y_k ≤ c` with c = τ_r·ρ0, so the constrained
// coordinates can be proposed from truncated normals:
//
//  1. y_k from N(0, 1) truncated to the box `s·y_k ≤ c` (one- or two-sided); r² from χ²_{d−m}
//     (Marsaglia–Tsang gamma draw). This is N(0, I) restricted to the box.
//  2. Accept iff ‖z‖ = √(r² + ‖y‖²) ≤ ρ0 and the rule holds, checked in these m + 1 numbers (O(m),
//     no d-vector yet). The accepted set is K ∩ ball(ρ0), a subset of the box, so accepted
//     proposals are N(0, I) restricted to K ∩ ball(ρ0): exact, for any ρ0.
//  3. Only then: draw w ~ N(0, I_d), remove its components along A (modified Gram–Schmidt
//     against the rows of A), rescale it to norm r, add Aᵀy, and rescale the whole vector to a
//     fresh radius ρ ~ χ_d (√ of a χ²_d draw). This is z.
//  4. Check the EXACT rule on the final float z against the stored rows (in double); on failure
//     (float rounding at the boundary; essentially never) start again.
//
// ρ0 only sets the speed. The acceptance rate is P(K)·F_d(ρ0) / P(box at τ_r·ρ0) (F_d the χ_d
// CDF), and ρ0 maximises it over a grid of ±12 standard deviations around E‖z‖, with F_d from
// the regularised incomplete gamma function and the box probability in closed form (erfc). For the
// emoji set (d = 3072, τ_r = 0.048, 4090 signed axes on 2095 components) that is ρ0 ≈ 54.5,
// c ≈ 2.62 and about 20% of attempts accepted, where naive rejection from N(0, I) keeps about
// 4·10⁻⁸. The acceptance rate reported is accepted samples / attempts (steps 2 and 4 count).
//
// Every sample i of seed S draws from its own SplitMix64 stream seeded from (S, i) as
// GaussianSource does, so a sample does not depend on the batch it is drawn in.

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

/// A SourceFM pruning set (§4.2): the signed principal axes along which no training image points.
public struct PruningSet: Sendable, Equatable {
    /// File name inside a model folder.
    public static let fileName = "prune-axes.safetensors"
    /// Value of the `format` metadata key.
    public static let format = "millrace-prune-axes/1"
    /// The paper's τ at d = 3072.
    public static let defaultTau: Float = 0.01

    /// The rule-of-thumb τ_r ≈ 2.7/√d, truncated to three decimals: 0.048 at d = 3072 (the
    /// paper's value), 0.389 at d = 48.
    public static func defaultTauR(dimension d: Int) -> Float {
        precondition(d >= 1)
        let raw = 2.7 / Double(d).squareRoot()
        return Float(max((raw * 1000).rounded(.down) / 1000, 0.001))
    }

    /// The distinct selected principal axes v_k, [m, d] (unit rows, orthonormal), one row per
    /// component with at least one sign in R.
    public var axes: Tensor
    /// Principal component index k of each row (0 = largest variance), increasing.
    public var components: [Int]
    /// Whether +v_k is in R: the rule includes ⟨v_k, z/‖z‖⟩ ≤ τ_r.
    public var upper: [Bool]
    /// Whether −v_k is in R: the rule includes ⟨−v_k, z/‖z‖⟩ ≤ τ_r.
    public var lower: [Bool]
    /// γ(+v_k) and γ(−v_k) of each row (both, whichever signs were selected).
    public var gammaPositive: [Float]
    public var gammaNegative: [Float]
    /// Sample shape, [C, H, W]; d is its product.
    public var shape: [Int]
    /// Selection threshold τ.
    public var tau: Float
    /// Default sampling threshold τ_r.
    public var tauR: Float
    /// Dataset the set was built from (path as given).
    public var dataset: String
    /// Training images used (before flips).
    public var imageCount: Int

    public init(axes: Tensor, components: [Int], upper: [Bool], lower: [Bool], gammaPositive: [Float],
                gammaNegative: [Float], shape: [Int], tau: Float, tauR: Float, dataset: String, imageCount: Int) {
        self.axes = axes
        self.components = components
        self.upper = upper
        self.lower = lower
        self.gammaPositive = gammaPositive
        self.gammaNegative = gammaNegative
        self.shape = shape
        self.tau = tau
        self.tauR = tauR
        self.dataset = dataset
        self.imageCount = imageCount
    }

    /// d = C·H·W.
    public var dimension: Int { shape.reduce(1, *) }
    /// m, the number of distinct axes stored.
    public var axisCount: Int { components.count }
    /// |R|, the number of signed axes: the rule has this many inequalities.
    public var count: Int { upper.filter { $0 }.count + lower.filter { $0 }.count }
    /// Axes with both signs in R.
    public var twoSidedCount: Int { zip(upper, lower).filter { $0.0 && $0.1 }.count }

    /// Path of the pruning set inside a model folder.
    public static func path(modelFolder: String) -> String {
        (modelFolder as NSString).appendingPathComponent(fileName)
    }

    // MARK: - Building

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
                                    out[dst + rowBase + x] = Float(px[src + rowBase + sx]) / 127.5 - 1
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
            throw ModelError("PCA needs at least one row of \(d) values; got \(data.count) values for \(n) rows")
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
        let eigenvalues = try LAPACK.symmetricEigen(&a, dimension: d)
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
        guard tau.isFinite else { throw ModelError("τ must be a finite number, got \(tau)") }
        let d = dataset.bytesPerImage
        let r = tauR ?? defaultTauR(dimension: d)
        guard r.isFinite, r > 0 else { throw ModelError("τ_r must be positive, got \(r)") }
        let trainCount = dataset.indices(split: 0).count
        guard trainCount >= 1 else {
            throw ModelError("dataset \(datasetPath) has no training images (split 0): nothing to build a pruning set from")
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

    // MARK: - Files

    /// Component indices as ranges, "3-9,12,40-47" (compact for the long runs of low-variance axes).
    static func encodeRanges(_ values: [Int]) -> String {
        var parts: [String] = []
        var i = 0
        while i < values.count {
            var j = i
            while j + 1 < values.count && values[j + 1] == values[j] + 1 { j += 1 }
            parts.append(i == j ? "\(values[i])" : "\(values[i])-\(values[j])")
            i = j + 1
        }
        return parts.joined(separator: ",")
    }

    /// Inverse of `encodeRanges`; nil if malformed.
    static func decodeRanges(_ text: String) -> [Int]? {
        var out: [Int] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let ends = part.split(separator: "-", omittingEmptySubsequences: false)
            guard ends.count == 1 || ends.count == 2, let a = Int(ends[0]), a >= 0,
                  let b = ends.count == 2 ? Int(ends[1]) : a, b >= a, b - a < 1 << 24 else { return nil }
            out += Array(a...b)
        }
        return out
    }

    /// Writes the set as safetensors (atomically): tensors `axes` [m, d], `sides` [m] (+1: only
    /// +v_k in R, −1: only −v_k, 2: both) and `gammas` [2, m] (γ(+v_k), γ(−v_k)); metadata with
    /// τ, τ_r, counts, shape, dataset and the component indices. `precision` is the dtype of every
    /// tensor: keep F32 (25.7 MB for the emoji set) unless size matters more than exactness; F16
    /// halves the file but leaves the rows orthonormal only to ~2e-4 (see the notes at the top).
    /// An empty set is refused.
    public func write(path: String, precision: SafetensorsDType = .f32) throws {
        guard count > 0 else {
            throw ModelError("the pruning set is empty (no signed axis has γ ≤ τ = \(tau)); raise τ")
        }
        let metadata: [String: String] = [
            "format": Self.format,
            "tau": String(tau), "tau_r": String(tauR), "count": String(count), "axes": String(axisCount),
            "dimension": String(dimension), "shape": shape.map(String.init).joined(separator: ","),
            "dataset": dataset, "images": String(imageCount), "rows": String(2 * imageCount), "flips": "true",
            "components": Self.encodeRanges(components),
            "eigensolver": "LAPACK dsyevd (OpenBLAS), double precision",
        ]
        let sides = zip(upper, lower).map { (u, l) -> Float in u && l ? 2 : (u ? 1 : -1) }
        let tensors: [String: Tensor] = [
            "axes": axes,
            "sides": Tensor(shape: [axisCount], data: sides),
            "gammas": Tensor(shape: [2, axisCount], data: gammaPositive + gammaNegative),
        ]
        try SafetensorsFile(tensors: tensors, metadata: metadata).write(path: path, dtype: precision)
    }

    /// Writes `prune-axes.safetensors` into a model folder.
    public func write(modelFolder: String, precision: SafetensorsDType = .f32) throws {
        try write(path: Self.path(modelFolder: modelFolder), precision: precision)
    }

    /// Reads and validates a pruning set file. `rebuild` is the advice appended to errors.
    public static func read(path: String, rebuild: String? = nil) throws -> PruningSet {
        let advice = rebuild ?? "rebuild it with `gen prune-axes --data data/emoji32.mrds`"
        func fail(_ why: String) -> ModelError { ModelError("\(path) \(why); \(advice)") }
        guard FileManager.default.fileExists(atPath: path) else {
            throw ModelError("no pruning set at \(path); \(rebuild ?? "run `gen prune-axes --data data/emoji32.mrds` first")")
        }
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: path) } catch {
            throw ModelError("\(error) — not a readable pruning set; \(advice)")
        }
        let meta = file.metadata
        guard meta["format"] == format else {
            throw fail("is not a Millrace pruning set (format \(meta["format"].map { "\"\($0)\"" } ?? "missing"), expected \"\(format)\")")
        }
        guard let shapeText = meta["shape"] else { throw fail("has no 'shape' metadata") }
        let shapeParts = shapeText.split(separator: ",", omittingEmptySubsequences: false)
        let shape = shapeParts.compactMap { Int($0) }
        guard shape.count == 3, shapeParts.count == 3, shape.allSatisfy({ $0 >= 1 && $0 <= 1 << 16 }) else {
            throw fail("has an unreadable 'shape' metadata \"\(shapeText)\" (expected C,H,W)")
        }
        let d = shape.reduce(1, *)
        guard let tau = meta["tau"].flatMap(Float.init), tau.isFinite else { throw fail("has no valid 'tau' metadata") }
        guard let tauR = meta["tau_r"].flatMap(Float.init), tauR.isFinite, tauR > 0 else {
            throw fail("has no valid 'tau_r' metadata (a positive number)")
        }
        let images = meta["images"].flatMap { Int($0) } ?? 0
        for name in ["axes", "sides", "gammas"] where file.tensors[name] == nil {
            throw fail("has no tensor '\(name)'")
        }
        let axes = file.tensors["axes"]!
        guard axes.shape.count == 2, axes.shape[1] == d, axes.shape[0] >= 1 else {
            throw fail("has 'axes' of shape \(axes.shape), expected [m, \(d)] with m ≥ 1")
        }
        let m = axes.shape[0]
        guard let components = meta["components"].flatMap(decodeRanges), components.count == m,
              components.allSatisfy({ $0 < d }), zip(components, components.dropFirst()).allSatisfy({ $0 < $1 }) else {
            throw fail("has no valid 'components' metadata (\(m) increasing indices below \(d))")
        }
        guard file.tensors["sides"]!.shape == [m] else {
            throw fail("has 'sides' of shape \(file.tensors["sides"]!.shape), expected [\(m)]")
        }
        guard file.tensors["gammas"]!.shape == [2, m] else {
            throw fail("has 'gammas' of shape \(file.tensors["gammas"]!.shape), expected [2, \(m)]")
        }
        let sides = file.tensors["sides"]!.data
        guard sides.allSatisfy({ $0 == 1 || $0 == -1 || $0 == 2 }) else {
            throw fail("has 'sides' other than 1 (+v), −1 (−v) or 2 (both)")
        }
        let upper = sides.map { $0 != -1 }, lower = sides.map { $0 != 1 }
        if let stated = meta["count"].flatMap({ Int($0) }), stated != upper.filter({ $0 }).count + lower.filter({ $0 }).count {
            throw fail("says it holds \(stated) signed axes but 'sides' lists \(upper.filter { $0 }.count + lower.filter { $0 }.count)")
        }
        guard axes.data.allSatisfy({ $0.isFinite }) else { throw fail("has non-finite values in 'axes'") }
        for r in 0..<m {
            var n2 = 0.0
            for j in 0..<d { n2 += Double(axes.data[r * d + j]) * Double(axes.data[r * d + j]) }
            guard abs(n2.squareRoot() - 1) <= 1e-3 else {
                throw fail("has axis row \(r) of length \(String(format: "%.4f", n2.squareRoot())), expected 1")
            }
        }
        let gammas = file.tensors["gammas"]!.data
        return PruningSet(axes: axes, components: components, upper: upper, lower: lower,
                          gammaPositive: Array(gammas[0..<m]), gammaNegative: Array(gammas[m..<(2 * m)]),
                          shape: shape, tau: tau, tauR: tauR, dataset: meta["dataset"] ?? "", imageCount: images)
    }

    /// Reads `prune-axes.safetensors` from a model folder.
    public static func load(modelFolder: String) throws -> PruningSet {
        let command = modelFolder == ModelFolder.defaultPath()
            ? "gen prune-axes --data data/emoji32.mrds"
            : "gen prune-axes --data data/emoji32.mrds --model \(modelFolder)"
        let file = path(modelFolder: modelFolder)
        if !FileManager.default.fileExists(atPath: file) {
            throw ModelError("model folder \(modelFolder) has no \(fileName) (the pruning set for --source pruned); run `\(command)` first")
        }
        return try read(path: file, rebuild: "rebuild it with `\(command)`")
    }
}

/// Pruned source samples (§4.3): z ~ N(0, I) restricted to `s·⟨v_k, z/‖z‖⟩ ≤ τ_r` for every
/// signed axis (k, s) of the pruning set. See the notes at the top of this file for the method
/// and its exactness.
public struct PrunedSource: Sendable {
    /// The pruning set.
    public let set: PruningSet
    /// The threshold in use.
    public let tauR: Float
    let radius: Double

    /// Attempts allowed per sample before giving up.
    public static let maxAttemptsPerSample = 5_000_000

    /// A sampler for `set`, with τ_r from the set unless given.
    public init(_ set: PruningSet, tauR: Float? = nil) throws {
        let r = tauR ?? set.tauR
        guard r.isFinite, r > 0 else { throw ModelError("τ_r must be positive, got \(r)") }
        let d = set.dimension, m = set.axisCount
        guard set.axes.shape == [m, d], set.upper.count == m, set.lower.count == m else {
            throw ModelError("pruning set axes have shape \(set.axes.shape), expected [\(m), \(d)] with \(m) sides")
        }
        self.set = set
        self.tauR = r
        let both = set.twoSidedCount
        self.radius = Self.bestBallRadius(dimension: d, twoSided: both, oneSided: m - both, tauR: Double(r))
    }

    /// Loads the model folder's pruning set.
    public static func load(modelFolder: String, tauR: Float? = nil) throws -> PrunedSource {
        try PrunedSource(PruningSet.load(modelFolder: modelFolder), tauR: tauR)
    }

    /// Number of distinct constrained axes m.
    public var constrainedAxes: Int { self.set.axisCount }

    /// max over the signed axes (k, s) of s·⟨v_k, z⟩/‖z‖, accumulated in double (+∞ for z = 0).
    /// The rule holds iff this is ≤ τ_r.
    public func ruleValue(_ z: UnsafeBufferPointer<Float>) -> Double {
        let d = set.dimension
        precondition(z.count == d, "a sample has \(z.count) values, the pruning set needs \(d)")
        var n2 = 0.0
        for j in 0..<d { n2 += Double(z[j]) * Double(z[j]) }
        guard n2 > 0 else { return .infinity }
        let norm = n2.squareRoot()
        var best = -Double.infinity
        set.axes.data.withUnsafeBufferPointer { a in
            for r in 0..<set.axisCount {
                let base = r * d
                var dot = 0.0
                for j in 0..<d { dot += Double(a[base + j]) * Double(z[j]) }
                if set.upper[r] { best = max(best, dot / norm) }
                if set.lower[r] { best = max(best, -dot / norm) }
            }
        }
        return best
    }

    /// `ruleValue` of an array.
    public func ruleValue(_ z: [Float]) -> Double { z.withUnsafeBufferPointer { ruleValue($0) } }

    /// Whether z satisfies the rule exactly.
    public func satisfies(_ z: [Float]) -> Bool { ruleValue(z) <= Double(tauR) }

    /// ρ0: the radius of the ball the proposals are restricted to (see the notes at the top).
    public var ballRadius: Double { radius }

    /// argmax over ρ0 of log F_d(ρ0) − log P(box at c = τ_r·ρ0), on a grid of ±12 standard
    /// deviations (1/√2) around √(d − ½). +∞ when nothing is constrained.
    static func bestBallRadius(dimension d: Int, twoSided: Int, oneSided: Int, tauR: Double) -> Double {
        guard twoSided + oneSided > 0 else { return .infinity }
        let centre = (Double(d) - 0.5).squareRoot(), sd = 0.5.squareRoot()
        func logBox(_ c: Double) -> Double {
            let tail2 = Foundation.erfc(c / 2.0.squareRoot())  // P(|y| > c)
            return Double(twoSided) * Foundation.log1p(-tail2) + Double(oneSided) * Foundation.log1p(-tail2 / 2)
        }
        var best = (value: -Double.infinity, rho: centre + 12 * sd)
        let steps = 960
        for i in 0...steps {
            let rho = centre + sd * (-12 + 24 * Double(i) / Double(steps))
            guard rho > 0 else { continue }
            // F_d(ρ) = P(χ²_d ≤ ρ²) = P(d/2, ρ²/2).
            let value = logRegularizedGammaP(Double(d) / 2, rho * rho / 2) - logBox(tauR * rho)
            if value.isFinite && value > best.value { best = (value, rho) }
        }
        return best.rho
    }

    /// log P(a, x), P the regularised lower incomplete gamma function (a > 0): the power series
    /// for x < a + 1, else 1 − Q with Q from its continued fraction (modified Lentz).
    static func logRegularizedGammaP(_ a: Double, _ x: Double) -> Double {
        guard x > 0 else { return -.infinity }
        let logPrefix = -x + a * Foundation.log(x) - Foundation.lgamma(a)
        if x < a + 1 {
            // P = e^{−x} x^a / Γ(a) · Σ_n x^n / (a (a+1) … (a+n)).
            var term = 1 / a, sum = term, n = 1.0
            while n < 1_000_000 {
                term *= x / (a + n)
                sum += term
                if term < sum * 1e-17 { break }
                n += 1
            }
            return logPrefix + Foundation.log(sum)
        }
        let tiny = 1e-300
        var b = x + 1 - a, c = 1 / tiny, dd = 1 / b, h = dd
        var i = 1.0
        while i < 1_000_000 {
            let an = -i * (i - a)
            b += 2
            dd = an * dd + b
            if abs(dd) < tiny { dd = tiny }
            c = b + an / c
            if abs(c) < tiny { c = tiny }
            dd = 1 / dd
            let delta = dd * c
            h *= delta
            if abs(delta - 1) < 1e-16 { break }
            i += 1
        }
        return Foundation.log1p(-Foundation.exp(logPrefix + Foundation.log(h)))
    }

    /// `count` samples of `shape` (whose product must be d) for `seed`; sample i depends only on
    /// (seed, i). Returns them as [count] + shape and the acceptance rate (samples / attempts).
    public func draw(count: Int, shape: [Int], seed: UInt64) throws -> (samples: Tensor, acceptanceRate: Double) {
        let d = set.dimension
        guard shape.reduce(1, *) == d else {
            throw ModelError("the pruning set is for samples of shape \(set.shape) (\(d) values); asked for \(shape)")
        }
        guard count >= 0 else { throw ModelError("cannot draw \(count) samples") }
        var data = [Float](repeating: 0, count: count * d)
        var attempts = 0
        for i in 0..<count {
            var rng = SplitMix64(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(i) &* 0xD1B5_4A32_D192_ED03)
            let (z, tries) = try drawOne(&rng)
            attempts += tries
            data.replaceSubrange((i * d)..<((i + 1) * d), with: z)
        }
        return (Tensor(shape: [count] + shape, data: data), count == 0 ? 1 : Double(count) / Double(attempts))
    }

    /// One accepted sample and the attempts it took.
    func drawOne(_ rng: inout SplitMix64) throws -> ([Float], Int) {
        let d = set.dimension, m = constrainedAxes
        let tau = Double(tauR), rho0 = radius, c = tau * rho0
        let upper = set.upper, lower = set.lower
        var y = [Double](repeating: 0, count: m)
        var w = [Float](repeating: 0, count: d)
        var attempts = 0
        while attempts < Self.maxAttemptsPerSample {
            attempts += 1
            // 1–2: the constrained coordinates and the complement's norm, checked in m + 1 numbers.
            var y2 = 0.0
            for j in 0..<m {
                let v = Self.truncatedNormal(&rng, lower: lower[j] ? -c : -.infinity, upper: upper[j] ? c : .infinity)
                y[j] = v
                y2 += v * v
            }
            let r2 = Self.chiSquared(&rng, degrees: d - m)
            let norm = (r2 + y2).squareRoot()
            guard norm <= rho0, norm > 0 else { continue }
            let limit = tau * norm
            var ok = true
            for j in 0..<m where (upper[j] && y[j] > limit) || (lower[j] && -y[j] > limit) {
                ok = false
                break
            }
            if !ok { continue }
            // 3: complement direction rescaled to norm r, plus Aᵀy, then a fresh χ_d radius.
            for j in 0..<d { w[j] = rng.nextGaussian() }
            let fresh = Self.chiSquared(&rng, degrees: d).squareRoot()
            set.axes.data.withUnsafeBufferPointer { a in
                w.withUnsafeMutableBufferPointer { wp in
                    for k in 0..<m {
                        let base = k * d
                        var dot = 0.0
                        for j in 0..<d { dot += Double(a[base + j]) * Double(wp[j]) }
                        let f = Float(dot)
                        for j in 0..<d { wp[j] -= f * a[base + j] }
                    }
                    var n2 = 0.0
                    for j in 0..<d { n2 += Double(wp[j]) * Double(wp[j]) }
                    let out = fresh / norm
                    let scale = n2 > 0 ? Float(r2.squareRoot() / n2.squareRoot() * out) : 0
                    for j in 0..<d { wp[j] *= scale }
                    for k in 0..<m {
                        let base = k * d, yk = Float(y[k] * out)
                        for j in 0..<d { wp[j] += yk * a[base + j] }
                    }
                }
            }
            // 4: the exact rule on the final floats.
            if ruleValue(w) <= tau { return (w, attempts) }
        }
        throw ModelError("pruned sampling found no sample in \(Self.maxAttemptsPerSample) attempts: τ_r = \(tauR) is too small for \(set.count) pruned axes in d = \(d)")
    }

    /// N(0, 1) restricted to [lower, upper], an interval that contains 0 (exact rejection):
    /// from N(0, 1) when it is wide (acceptance ≥ 0.5 one-sided, ≥ 0.68 two-sided with width ≥ 2),
    /// else uniform on the interval accepted with probability exp(−x²/2) (≥ 0.6).
    static func truncatedNormal(_ rng: inout SplitMix64, lower: Double, upper: Double) -> Double {
        if upper - lower >= 2 {
            while true {
                let g = Double(rng.nextGaussian())
                if g >= lower && g <= upper { return g }
            }
        }
        while true {
            let x = lower + (upper - lower) * rng.nextUnitDouble()
            if rng.nextUnitDouble() < Foundation.exp(-0.5 * x * x) { return x }
        }
    }

    /// χ² with `degrees` degrees of freedom: 2·Gamma(degrees/2), Marsaglia–Tsang (with the
    /// U^{1/a} boost for shape < 1). 0 degrees gives 0.
    static func chiSquared(_ rng: inout SplitMix64, degrees: Int) -> Double {
        guard degrees > 0 else { return 0 }
        let shape = Double(degrees) / 2
        let a = shape < 1 ? shape + 1 : shape
        let dd = a - 1.0 / 3, cc = 1 / (9 * dd).squareRoot()
        var g = 0.0
        while true {
            let x = Double(rng.nextGaussian())
            let t = 1 + cc * x
            guard t > 0 else { continue }
            let v = t * t * t
            var u = rng.nextUnitDouble()
            if u <= 0 { u = .leastNonzeroMagnitude }
            if Foundation.log(u) < 0.5 * x * x + dd - dd * v + dd * Foundation.log(v) {
                g = dd * v
                break
            }
        }
        if shape < 1 {
            var u = rng.nextUnitDouble()
            if u <= 0 { u = .leastNonzeroMagnitude }
            g *= Foundation.pow(u, 1 / shape)
        }
        return 2 * g
    }
}

/// LAPACK from the OpenBLAS the kernels link against, looked up at run time (Fortran symbols are
/// not in any header here). Fortran calling convention: every argument by pointer, then one hidden
/// length (size_t) per CHARACTER argument, in order (gfortran).
enum LAPACK {
    typealias DSYEVD = @convention(c) (
        UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafePointer<Int32>, UnsafeMutablePointer<Double>,
        UnsafePointer<Int32>, UnsafeMutablePointer<Double>, UnsafeMutablePointer<Double>, UnsafePointer<Int32>,
        UnsafeMutablePointer<Int32>, UnsafePointer<Int32>, UnsafeMutablePointer<Int32>, Int, Int) -> Void

    static func symbol(_ name: String) -> UnsafeMutableRawPointer? {
        if let handle = dlopen(nil, RTLD_NOW), let s = dlsym(handle, name) { return s }
        for lib in ["libopenblas.so.0", "libopenblas.so", "liblapack.so.3"] {
            if let handle = dlopen(lib, RTLD_NOW), let s = dlsym(handle, name) { return s }
        }
        return nil
    }

    /// Eigen-decomposition of the symmetric n × n matrix `a` (row- or column-major: it is
    /// symmetric). Returns the eigenvalues ascending; `a` is overwritten with the orthonormal
    /// eigenvectors, eigenvector j in `a[j*n ..< (j+1)*n]`.
    static func symmetricEigen(_ a: inout [Double], dimension n: Int) throws -> [Double] {
        precondition(a.count == n * n)
        guard let sym = symbol("dsyevd_") else {
            throw ModelError("LAPACK's dsyevd_ was not found in the loaded OpenBLAS (install libopenblas0-pthread)")
        }
        let dsyevd = unsafeBitCast(sym, to: DSYEVD.self)
        var nn = Int32(n), lda = Int32(max(n, 1)), info: Int32 = 0
        var w = [Double](repeating: 0, count: n)
        var workSize = 0.0, iworkSize: Int32 = 0
        var query: Int32 = -1, iquery: Int32 = -1
        dsyevd("V", "U", &nn, &a, &lda, &w, &workSize, &query, &iworkSize, &iquery, &info, 1, 1)
        guard info == 0 else { throw ModelError("dsyevd workspace query failed (info \(info))") }
        var lwork = Int32(workSize.rounded(.up)), liwork = max(iworkSize, 1)
        var work = [Double](repeating: 0, count: Int(max(lwork, 1)))
        var iwork = [Int32](repeating: 0, count: Int(liwork))
        lwork = max(lwork, 1)
        dsyevd("V", "U", &nn, &a, &lda, &w, &work, &lwork, &iwork, &liwork, &info, 1, 1)
        guard info == 0 else {
            throw ModelError("dsyevd failed (info \(info)): the eigen-decomposition did not converge")
        }
        return w
    }
}
