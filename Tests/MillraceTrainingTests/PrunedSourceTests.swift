import Foundation
import Testing
@testable import MillraceFormats
@testable import MillraceCore
@testable import MillraceTraining
import MillraceKernels
import MillraceTestSupport

/// SourceFM pruning set (docs/METHODS.md §4.2) and pruned sampling (§4.3) on a small synthetic
/// dataset: 4×4 RGB images (d = 48), each a horizontally symmetric base image plus a few
/// symmetric patterns and a little asymmetric noise, so that many low-variance principal axes
/// have every training image on one side (or close to zero on both).
@Suite struct PrunedSourceTests {
    static let size = 4
    static let d = 3 * size * size

    /// 60 train images of the structure above, then 10 held-out images of plain noise (which
    /// must not influence anything).
    static func dataset() -> ImageDataset {
        var rng = TestRNG(seed: 42)
        let s = size
        func symmetric(_ scale: Float) -> [Float] {
            var v = [Float](repeating: 0, count: d)
            for c in 0..<3 {
                for y in 0..<s {
                    for x in 0..<(s / 2) {
                        let value = Float.random(in: -scale...scale, using: &rng)
                        v[c * s * s + y * s + x] = value
                        v[c * s * s + y * s + (s - 1 - x)] = value
                    }
                }
            }
            return v
        }
        let base = symmetric(0.5).map { $0 + 0.3 }
        let patterns = (0..<3).map { _ in symmetric(1) }
        var pixels: [UInt8] = [], labels: [UInt8] = [], split: [UInt8] = [], items: [DatasetItem] = []
        func quantise(_ v: Float) -> UInt8 { UInt8(max(0, min(255, ((v + 1) * 127.5).rounded()))) }
        for i in 0..<70 {
            var img = [Float](repeating: 0, count: d)
            if i < 60 {
                let coef = (0..<3).map { _ in Float.random(in: -0.25...0.25, using: &rng) }
                for j in 0..<d {
                    img[j] = base[j] + coef[0] * patterns[0][j] + coef[1] * patterns[1][j] + coef[2] * patterns[2][j]
                        + Float.random(in: -0.012...0.012, using: &rng)
                }
            } else {
                img = (0..<d).map { _ in Float.random(in: -1...1, using: &rng) }
            }
            pixels += img.map(quantise)
            labels.append(0)
            split.append(i < 60 ? 0 : 1)
            items.append(DatasetItem(codepoints: "1F600", name: "test \(i)", subgroup: "test"))
        }
        return ImageDataset(size: s, classNames: ["all"], labels: labels, split: split, pixels: pixels, items: items)
    }

    /// Train rows by brute force, in double: u8/127.5 − 1, image then its mirror, unit L2 norm.
    static func bruteRows(_ ds: ImageDataset) -> [[Double]] {
        let s = ds.size
        var rows: [[Double]] = []
        for i in 0..<ds.count where ds.split[i] == 0 {
            for flip in [false, true] {
                var r = [Double](repeating: 0, count: d)
                for c in 0..<3 {
                    for y in 0..<s {
                        for x in 0..<s {
                            let sx = flip ? s - 1 - x : x
                            r[c * s * s + y * s + x] = Double(ds.pixels[i * d + c * s * s + y * s + sx]) / 127.5 - 1
                        }
                    }
                }
                let n = r.reduce(0) { $0 + $1 * $1 }.squareRoot()
                rows.append(r.map { $0 / n })
            }
        }
        return rows
    }

    static func dot(_ a: ArraySlice<Float>, _ b: [Double]) -> Double {
        var s = 0.0
        for (x, y) in zip(a, b) { s += Double(x) * y }
        return s
    }

    static let tau: Float = 0.01

    static func analysis() throws -> PruningAnalysis {
        try PruningSet.build(dataset: dataset(), datasetPath: "synthetic.mrds", tau: tau)
    }

    static func tempDir() -> String {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("millrace-prune-tests-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.path
    }

    /// The exact rule by brute force: max over signed axes (k, s) ∈ R of s·⟨v_k, z⟩/‖z‖, in double.
    static func bruteRule(_ set: PruningSet, _ z: ArraySlice<Float>) -> Double {
        let zd = z.map(Double.init)
        let norm = zd.reduce(0) { $0 + $1 * $1 }.squareRoot()
        var best = -Double.infinity
        for r in 0..<set.axisCount {
            let p = dot(set.axes.data[(r * d)..<((r + 1) * d)], zd) / norm
            if set.upper[r] { best = max(best, p) }
            if set.lower[r] { best = max(best, -p) }
        }
        return best
    }

    // MARK: Building

    @Test func trainingRowsAreNormalisedAndFlipped() {
        let ds = Self.dataset()
        let (n, data) = PruningSet.normalisedTrainingRows(ds)
        #expect(n == 120)
        let brute = Self.bruteRows(ds)
        var worst = 0.0
        for r in 0..<n {
            for j in 0..<Self.d { worst = max(worst, abs(Double(data[r * Self.d + j]) - brute[r][j])) }
        }
        #expect(worst < 1e-6)
    }

    @Test func principalAxesAreOrthonormalEigenvectors() throws {
        let a = try Self.analysis()
        let b = a.basis, d = Self.d
        #expect(b.dimension == d && b.axes.count == d * d && b.variances.count == d)
        // Orthonormal rows.
        var worst = 0.0
        for i in 0..<d {
            for j in 0..<d {
                let g = Self.dot(b.axis(i), b.axis(j).map(Double.init))
                worst = max(worst, abs(g - (i == j ? 1 : 0)))
            }
        }
        #expect(worst < 1e-4, "‖VVᵀ − I‖_max = \(worst)")
        // Decreasing variances, and Σ v_k = λ_k v_k against a brute-force covariance of the centred rows.
        #expect(zip(b.variances, b.variances.dropFirst()).allSatisfy { $0 >= $1 })
        let rows = Self.bruteRows(Self.dataset())
        let n = Double(rows.count)
        var mean = [Double](repeating: 0, count: d)
        for r in rows { for j in 0..<d { mean[j] += r[j] / n } }
        var cov = [[Double]](repeating: [Double](repeating: 0, count: d), count: d)
        for r in rows {
            for i in 0..<d { for j in 0..<d { cov[i][j] += (r[i] - mean[i]) * (r[j] - mean[j]) / n } }
        }
        var residual = 0.0
        for k in 0..<d {
            let v = b.axis(k).map(Double.init)
            for i in 0..<d {
                let sv = zip(cov[i], v).reduce(0) { $0 + $1.0 * $1.1 }
                residual = max(residual, abs(sv - Double(b.variances[k]) * v[i]))
            }
        }
        #expect(residual < 1e-5, "max |Σv − λv| = \(residual)")
        #expect(b.variances[0] > 1e-3)
    }

    @Test func gammaMatchesBruteForceAndSelectsR() throws {
        let a = try Self.analysis()
        let rows = Self.bruteRows(Self.dataset())
        let d = Self.d
        var expected: [(k: Int, s: Float)] = []
        for k in 0..<d {
            let proj = rows.map { Self.dot(a.basis.axis(k), $0) }
            let gp = proj.max()!, gn = -proj.min()!
            #expect(abs(Double(a.gammaPositive[k]) - gp) < 1e-5, "γ(+v_\(k)) \(a.gammaPositive[k]) vs \(gp)")
            #expect(abs(Double(a.gammaNegative[k]) - gn) < 1e-5, "γ(−v_\(k)) \(a.gammaNegative[k]) vs \(gn)")
            // Away from the threshold the selection must agree with brute force.
            if abs(gp - Double(Self.tau)) > 1e-5 && gp <= Double(Self.tau) { expected.append((k, 1)) }
            if abs(gn - Double(Self.tau)) > 1e-5 && gn <= Double(Self.tau) { expected.append((k, -1)) }
        }
        let set = a.set
        #expect(set.count >= expected.count && set.count > 0)
        var got = Set<String>()
        for (r, k) in set.components.enumerated() {
            if set.upper[r] { got.insert("\(k)+") }
            if set.lower[r] { got.insert("\(k)-") }
        }
        #expect(got.count == set.count)
        for e in expected { #expect(got.contains("\(e.k)\(e.s > 0 ? "+" : "-")")) }
        // The structure gives both one-sided axes and axes pruned on both sides.
        #expect(set.twoSidedCount > 0 && set.twoSidedCount < set.axisCount)
        // Rows are v_k with both γ; a side is in R iff its γ ≤ τ; the top components are never pruned.
        #expect(zip(set.components, set.components.dropFirst()).allSatisfy { $0 < $1 })
        for r in 0..<set.axisCount {
            let k = set.components[r]
            let row = set.axes.data[(r * d)..<((r + 1) * d)]
            #expect(Array(row) == Array(a.basis.axis(k)))
            #expect(set.gammaPositive[r] == a.gammaPositive[k] && set.gammaNegative[r] == a.gammaNegative[k])
            #expect(set.upper[r] == (a.gammaPositive[k] <= Self.tau) && set.lower[r] == (a.gammaNegative[k] <= Self.tau))
            #expect(set.upper[r] || set.lower[r])
            #expect(k >= 3)
        }
        #expect(set.axisCount == (0..<d).filter { a.gammaPositive[$0] <= Self.tau || a.gammaNegative[$0] <= Self.tau }.count)
        #expect(set.shape == [3, 4, 4] && set.imageCount == 60 && a.rows == 120)
        #expect(set.tauR == PruningSet.defaultTauR(dimension: 48))
    }

    @Test func defaultThresholds() {
        #expect(PruningSet.defaultTauR(dimension: 3072) == 0.048)
        #expect(PruningSet.defaultTauR(dimension: 48) == 0.389)
    }

    /// The shipped model's pruning set is the one `gen prune-axes` makes by default (its τ), is
    /// the size the docs state, and samples: every draw keeps the rule of every pruned axis.
    @Test func theShippedSetMatchesTheDefaultsAndSamples() throws {
        let folder = Fixtures.repositoryRoot + "/assets/models/emoji32"
        let set = try PruningSet.load(modelFolder: folder)
        #expect(set.tau == PruningSet.defaultTau)
        #expect(set.tauR == PruningSet.defaultTauR(dimension: 3072))
        #expect(set.shape == [3, 32, 32])
        #expect(set.count == 2227 && set.axisCount == 1157)
        let source = try PrunedSource.load(modelFolder: folder)
        let n = 3, d = 3072, m = set.axisCount
        let (x, rate) = try source.draw(count: n, shape: set.shape, seed: 11)
        #expect(rate > 0)
        // projections [m, n] = axes [m, d] · zᵀ [d, n], through BLAS (a debug build's loops are slow)
        var zt = [Float](repeating: 0, count: d * n)
        for i in 0..<n { for j in 0..<d { zt[j * n + i] = x.data[i * d + j] } }
        var proj = [Float](repeating: 0, count: m * n)
        mr_sgemm(Int32(m), Int32(n), Int32(d), set.axes.data, zt, &proj)
        for i in 0..<n {
            let norm = (0..<d).reduce(Float(0)) { $0 + x.data[i * d + $1] * x.data[i * d + $1] }.squareRoot()
            let worst = (0..<m).map { r -> Float in
                let c = proj[r * n + i] / norm
                return max(set.upper[r] ? c : -.infinity, set.lower[r] ? -c : -.infinity)
            }.max()!
            #expect(worst <= set.tauR + 1e-5, "sample \(i): a pruned axis at \(worst) > τ_r")
        }
    }

    // MARK: Sampling

    @Test func everySampleSatisfiesTheRuleExactly() throws {
        let set = try Self.analysis().set
        for tauR: Float? in [nil, 0.2] {
            let source = try PrunedSource(set, tauR: tauR)
            let (x, rate) = try source.draw(count: 300, shape: [3, 4, 4], seed: 11)
            #expect(x.shape == [300, 3, 4, 4])
            #expect(rate > 0 && rate <= 1)
            for i in 0..<300 {
                let z = x.data[(i * Self.d)..<((i + 1) * Self.d)]
                #expect(Self.bruteRule(set, z) <= Double(source.tauR))
            }
        }
        // The rule binds at τ_r = 0.2: plain Gaussian noise breaks it often.
        let tight = try PrunedSource(set, tauR: 0.2)
        let g = GaussianSource.draw(count: 300, shape: [3, 4, 4], seed: 11)
        let broken = (0..<300).filter { Self.bruteRule(set, g.data[($0 * Self.d)..<(($0 + 1) * Self.d)]) > 0.2 }.count
        #expect(broken > 30)
        #expect((0..<300).allSatisfy { i in
            tight.satisfies(Array(g.data[(i * Self.d)..<((i + 1) * Self.d)])) == (Self.bruteRule(set, g.data[(i * Self.d)..<((i + 1) * Self.d)]) <= 0.2)
        })
    }

    @Test func samplingIsDeterministicPerSeedAndIndex() throws {
        let source = try PrunedSource(Self.analysis().set, tauR: 0.2)
        let a = try source.draw(count: 6, shape: [3, 4, 4], seed: 7)
        let b = try source.draw(count: 6, shape: [3, 4, 4], seed: 7)
        let c = try source.draw(count: 3, shape: [3, 4, 4], seed: 7)
        let e = try source.draw(count: 6, shape: [3, 4, 4], seed: 8)
        #expect(a.samples == b.samples && a.acceptanceRate == b.acceptanceRate)
        #expect(Array(a.samples.data[0..<(3 * Self.d)]) == c.samples.data)
        #expect(a.samples.data != e.samples.data)
        #expect(try source.draw(count: 0, shape: [3, 4, 4], seed: 7).samples.count == 0)
        #expect(throws: ModelError.self) { try source.draw(count: 2, shape: [3, 8, 8], seed: 0) }
    }

    /// The pruned sampler against naive rejection from N(0, I) (exact by construction): the mean
    /// norm, the mean rule value and the mean coordinate along every pruned axis agree.
    @Test func distributionMatchesNaiveRejection() throws {
        let set = try Self.analysis().set
        let tauR: Float = 0.3
        let source = try PrunedSource(set, tauR: tauR)
        let d = Self.d
        // Per sample: ‖z‖, max_r ⟨a_r, z⟩/‖z‖ and ⟨a_r, z⟩ for every stored row, in double.
        func measure(_ flat: [Float], _ indices: [Int]) -> [[Double]] {
            flat.withUnsafeBufferPointer { z in
                set.axes.data.withUnsafeBufferPointer { a in
                    indices.map { i in
                        var n2 = 0.0
                        for j in 0..<d { n2 += Double(z[i * d + j]) * Double(z[i * d + j]) }
                        var dots: [Double] = []
                        for r in 0..<set.axisCount {
                            var s = 0.0
                            for j in 0..<d { s += Double(a[r * d + j]) * Double(z[i * d + j]) }
                            if set.upper[r] { dots.append(s) }
                            if set.lower[r] { dots.append(-s) }
                        }
                        let norm = n2.squareRoot()
                        return [norm, dots.max()! / norm] + dots
                    }
                }
            }
        }
        func mean(_ rows: [[Double]]) -> [Double] {
            var out = [Double](repeating: 0, count: rows[0].count)
            for row in rows { for (k, v) in row.enumerated() { out[k] += v / Double(rows.count) } }
            return out
        }
        let g = GaussianSource.draw(count: 12000, shape: [3, 4, 4], seed: 99)
        let naive = measure(g.data, Array(0..<12000)).filter { $0[1] <= Double(tauR) }
        #expect(naive.count > 1500, "naive rejection kept \(naive.count) of 12000 (|R| = \(set.count))")
        let (x, rate) = try source.draw(count: 3000, shape: [3, 4, 4], seed: 5)
        let pruned = measure(x.data, Array(0..<3000))
        #expect(pruned.allSatisfy { $0[1] <= Double(tauR) })
        let sn = mean(naive), sp = mean(pruned)
        // The spread of the norm too (radius resampled from χ_d): sd ≈ 0.7 both ways.
        let sdN = (naive.map { ($0[0] - sn[0]) * ($0[0] - sn[0]) }.reduce(0, +) / Double(naive.count)).squareRoot()
        let sdP = (pruned.map { ($0[0] - sp[0]) * ($0[0] - sp[0]) }.reduce(0, +) / Double(pruned.count)).squareRoot()
        #expect(abs(sdN - sdP) < 0.06, "norm sd \(sdN) vs \(sdP)")
        // Standard errors: norm ≈ 0.7/√n, rule value ≈ 0.1/√n, coordinates ≈ 1/√n.
        let se = { (sd: Double) in sd * (1 / Double(naive.count) + 1 / Double(pruned.count)).squareRoot() }
        #expect(abs(sn[0] - sp[0]) < 5 * se(0.71), "mean norm \(sn[0]) vs \(sp[0])")
        #expect(abs(sn[1] - sp[1]) < 5 * se(0.12), "mean rule value \(sn[1]) vs \(sp[1])")
        var worst = 0.0
        for r in 0..<set.count { worst = max(worst, abs(sn[2 + r] - sp[2 + r]) / se(1)) }
        #expect(worst < 5, "largest coordinate-mean gap \(worst) standard errors")
        // The truncated proposal accepts more often than naive rejection.
        #expect(rate > Double(naive.count) / 12000 && rate <= 1, "acceptance \(rate)")
    }

    @Test func chiSquaredAndTruncatedNormalDraws() {
        var rng = SplitMix64(seed: 3)
        for k in [1, 2, 7, 40] {
            let n = 20000
            var s = 0.0, s2 = 0.0
            for _ in 0..<n { let v = PrunedSource.chiSquared(&rng, degrees: k); s += v; s2 += v * v }
            let mean = s / Double(n), variance = s2 / Double(n) - mean * mean
            #expect(abs(mean - Double(k)) < 5 * (2 * Double(k) / Double(n)).squareRoot(), "χ²_\(k) mean \(mean)")
            #expect(abs(variance / (2 * Double(k)) - 1) < 0.1, "χ²_\(k) variance \(variance)")
        }
        #expect(PrunedSource.chiSquared(&rng, degrees: 0) == 0)
        for (lo, hi) in [(-Double.infinity, 0.3), (-0.4, Double.infinity), (-0.3, 0.3), (-2.5, 2.5)] {
            let v = (0..<5000).map { _ in PrunedSource.truncatedNormal(&rng, lower: lo, upper: hi) }
            #expect(v.allSatisfy { $0 >= lo && $0 <= hi })
        }
        // Symmetric narrow box: mean 0, variance below the uniform's c²/3.
        let v = (0..<20000).map { _ in PrunedSource.truncatedNormal(&rng, lower: -0.5, upper: 0.5) }
        let m = v.reduce(0, +) / 20000, var2 = v.reduce(0) { $0 + $1 * $1 } / 20000
        #expect(abs(m) < 0.01)
        #expect(var2 < 0.25 / 3 && var2 > 0.075)
    }

    /// ρ0 for the emoji set's shape of constraints (d = 3072, τ_r = 0.048, 1995 two-sided and
    /// 100 one-sided axes) lands where a simulation of the acceptance rate peaks (≈ 54.5); with
    /// nothing constrained the ball is unbounded.
    @Test func ballRadiusMaximisesAcceptance() {
        let rho = PrunedSource.bestBallRadius(dimension: 3072, twoSided: 1995, oneSided: 100, tauR: 0.048)
        #expect(rho > 54.0 && rho < 55.0, "ρ0 = \(rho)")
        #expect(PrunedSource.bestBallRadius(dimension: 48, twoSided: 0, oneSided: 0, tauR: 0.3) == .infinity)
        // Few, loose constraints: the ball grows towards the upper end of the grid (naive rejection).
        let loose = PrunedSource.bestBallRadius(dimension: 3072, twoSided: 0, oneSided: 1, tauR: 0.2)
        #expect(loose > 3072.0.squareRoot() + 5)
    }

    /// The incomplete gamma ratio behind ρ0 against closed forms: P(1, x) = 1 − e^{−x},
    /// P(½, x) = erf(√x), P(2, x) = 1 − (1 + x)e^{−x}; both branches (x below and above a + 1).
    @Test func incompleteGammaRatio() {
        for x in [0.01, 0.3, 1.5, 4, 12, 30] {
            let cases = [(1.0, 1 - Foundation.exp(-x)), (0.5, Foundation.erf(x.squareRoot())),
                         (2.0, 1 - (1 + x) * Foundation.exp(-x))]
            for (a, p) in cases {
                let got = Foundation.exp(PrunedSource.logRegularizedGammaP(a, x))
                #expect(abs(got - p) < 1e-12 * max(1, p) + 1e-15, "P(\(a), \(x)) = \(got), expected \(p)")
            }
        }
        // Large a (d = 3072): the χ_d median sits near √(d − ½)·(1 − 1/(9d))^{…}: P ≈ ½ there.
        let mid = Foundation.exp(PrunedSource.logRegularizedGammaP(1536, 1536 - 1.0 / 3))
        #expect(abs(mid - 0.5) < 0.01, "\(mid)")
    }

    // MARK: Files

    @Test func storeAndLoadRoundTrip() throws {
        let set = try Self.analysis().set
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // F32 (the default): exact.
        try set.write(modelFolder: dir)
        #expect(try PruningSet.load(modelFolder: dir) == set)
        #expect(try SafetensorsFile.read(path: PruningSet.path(modelFolder: dir)).dtypes["axes"] == .f32)
        // F16: everything but the rounding of the floats.
        try set.write(modelFolder: dir, precision: .f16)
        let back = try PruningSet.load(modelFolder: dir)
        #expect(back.components == set.components && back.upper == set.upper && back.lower == set.lower)
        #expect(back.shape == set.shape && back.tau == set.tau && back.tauR == set.tauR)
        #expect(back.dataset == set.dataset && back.imageCount == set.imageCount)
        #expect(relativeError(back.axes.data, set.axes.data) < 1e-3)
        #expect(relativeError(back.gammaPositive + back.gammaNegative, set.gammaPositive + set.gammaNegative) < 1e-3)
        var worst = 0.0
        for i in 0..<back.axisCount {
            for j in 0..<back.axisCount {
                let g = Self.dot(back.axes.data[(i * Self.d)..<((i + 1) * Self.d)],
                                 back.axes.data[(j * Self.d)..<((j + 1) * Self.d)].map(Double.init))
                worst = max(worst, abs(g - (i == j ? 1 : 0)))
            }
        }
        #expect(worst < 1e-3, "F16 rows orthonormal to \(worst)")
        let file = try SafetensorsFile.read(path: PruningSet.path(modelFolder: dir))
        #expect(file.dtypes["axes"] == .f16)
        #expect(file.metadata["tau"] == "0.01" && file.metadata["tau_r"] == "0.389")
        #expect(file.metadata["count"] == String(set.count) && file.metadata["axes"] == String(set.axisCount))
        #expect(file.metadata["dataset"] == "synthetic.mrds" && file.metadata["images"] == "60")
        #expect(file.metadata["shape"] == "3,4,4")
        #expect(PruningSet.decodeRanges(file.metadata["components"] ?? "") == set.components)
        // Sampling from the loaded set: every sample satisfies the rule of the rows as loaded.
        let source = try PrunedSource.load(modelFolder: dir)
        let (x, _) = try source.draw(count: 50, shape: [3, 4, 4], seed: 1)
        for i in 0..<50 { #expect(Self.bruteRule(back, x.data[(i * Self.d)..<((i + 1) * Self.d)]) <= Double(back.tauR)) }
    }

    @Test func componentRanges() {
        for values in [[], [0], [3, 4, 5, 9, 11, 12], Array(1000..<3072), [0, 2, 4]] {
            let text = PruningSet.encodeRanges(values)
            #expect(PruningSet.decodeRanges(text) == values || (values.isEmpty && text.isEmpty))
        }
        #expect(PruningSet.encodeRanges([3, 4, 5, 9, 11, 12]) == "3-5,9,11-12")
        for bad in ["a", "3-", "5-3", "-1", "1,,2", "1-2-3"] { #expect(PruningSet.decodeRanges(bad) == nil, "\(bad)") }
    }

    @Test func missingAndCorruptFilesAreRefused() throws {
        let set = try Self.analysis().set
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = PruningSet.path(modelFolder: dir)
        func message(_ body: () throws -> Void) -> String {
            do { try body(); return "" } catch { return "\(error)" }
        }
        // Missing.
        let missing = message { _ = try PruningSet.load(modelFolder: dir) }
        #expect(missing.contains(PruningSet.fileName))
        #expect(throws: ModelError.missingFile(path: path, kind: .pruningSet,
                                               detail: "the model folder \(dir) has no \(PruningSet.fileName), which pruned sampling needs")) {
            try PruningSet.load(modelFolder: dir)
        }
        // Not safetensors at all.
        try Data("not a safetensors file".utf8).write(to: URL(fileURLWithPath: path))
        let garbage = message { _ = try PruningSet.load(modelFolder: dir) }
        #expect(!garbage.isEmpty && garbage.contains("rebuild"), "\(garbage)")
        #expect { try PruningSet.load(modelFolder: dir) } throws: { if case ModelError.invalidFile = $0 { true } else { false } }
        // Truncated real file.
        try set.write(path: path)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count - 7).write(to: URL(fileURLWithPath: path))
        #expect(throws: ModelError.self) { try PruningSet.load(modelFolder: dir) }
        // Valid safetensors with the wrong contents.
        func variant(_ edit: (inout [String: Tensor], inout [String: String]) -> Void) throws -> String {
            var file = try { () throws -> SafetensorsFile in
                try set.write(path: path)
                return try SafetensorsFile.read(path: path)
            }()
            var tensors = file.tensors.mapValues(Tensor.init)
            edit(&tensors, &file.metadata)
            try SafetensorsFile(tensors: tensors, metadata: file.metadata).write(path: path)
            return message { _ = try PruningSet.load(modelFolder: dir) }
        }
        #expect(try variant { _, m in m["format"] = "something else" }.contains("format"))
        #expect(try variant { t, _ in t["axes"] = nil }.contains("'axes'"))
        #expect(try variant { t, _ in t["axes"] = t["axes"]!.scaled(2) }.contains("length"))
        #expect(try variant { t, _ in t["sides"] = Tensor(shape: [set.axisCount], repeating: 0.5) }.contains("sides"))
        #expect(try variant { _, m in m["components"] = "1-3" }.contains("components"))
        #expect(try variant { _, m in m["count"] = "1" }.contains("signed axes"))
        #expect(try variant { _, m in m["shape"] = "3,4" }.contains("shape"))
        #expect(try variant { _, m in m["tau_r"] = "-1" }.contains("tau_r"))
        #expect(try variant { t, _ in t["gammas"] = Tensor(shape: [1], data: [0]) }.contains("gammas"))
        #expect(try variant { _, _ in }.isEmpty)
        // An empty set is refused at write time.
        var empty = set
        empty.axes = Tensor(shape: [0, Self.d], data: [])
        empty.components = []; empty.upper = []; empty.lower = []; empty.gammaPositive = []; empty.gammaNegative = []
        #expect(throws: ModelError.self) { try empty.write(path: path) }
    }
}
