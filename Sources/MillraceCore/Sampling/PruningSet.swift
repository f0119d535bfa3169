import Foundation
import MillraceFormats

// SourceFM source pruning (docs/METHODS.md §4.2 pruning set, §4.3 pruned sampling).
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

/// A SourceFM pruning set (§4.2): the signed principal axes along which no training image points.
public struct PruningSet: Sendable, Equatable {
    /// File name inside a model folder.
    public static let fileName = "prune-axes.safetensors"
    /// Value of the `format` metadata key.
    public static let format = "millrace-prune-axes/1"
    /// τ of the shipped emoji set: the best of a sweep from 2 to 4,090 signed axes on the emoji
    /// model (docs/RESULTS.md, "Calibrating the pruned source"); the paper's value at d = 3072
    /// is 0.01.
    public static let defaultTau: Float = 0.002

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
            throw ModelError.invalidArgument("the pruning set is empty (no signed axis has γ ≤ τ = \(tau)); raise τ")
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

    /// Reads and validates a pruning set file: `.missingFile` when there is none, `.invalidFile`
    /// naming what is wrong otherwise.
    public static func read(path: String) throws -> PruningSet {
        func fail(_ why: String) -> ModelError { ModelError.invalidFile("\(path) \(why); it is not a pruning set this version can use, so rebuild it") }
        guard FileManager.default.fileExists(atPath: path) else {
            throw ModelError.missingFile(path: path, kind: .pruningSet, detail: "")
        }
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: path) } catch {
            throw ModelError.invalidFile("\(error) — not a readable pruning set; rebuild it")
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
        let axes = Tensor(file.tensors["axes"]!)
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
        let file = path(modelFolder: modelFolder)
        if !FileManager.default.fileExists(atPath: file) {
            throw ModelError.missingFile(path: file, kind: .pruningSet, detail: "the model folder \(modelFolder) has no \(fileName), which pruned sampling needs")
        }
        return try read(path: file)
    }
}
