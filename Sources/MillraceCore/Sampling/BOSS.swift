import Foundation
import MillraceFormats

/// BOSS: Bellman optimal step sizes (docs/METHODS.md §3.1–3.3).
///
/// 1. Reference trajectories: M source samples integrated with K-step uniform Euler on the grid
///    `t_k = k/K`, keeping every state `x_k` and velocity `v_k`.
/// 2. Jump costs: `c[i][j] = mean over samples of ‖x_i + (t_j − t_i)·v_i − x_j‖²` for i < j;
///    `c[i][i+1] = 0` exactly, because the integrator computes `x_{i+1}` with the same float
///    expression as the jump prediction.
/// 3. The Bellman recursion picks the N + 1 grid points from 0 to K with the least summed cost.
public enum BOSS {
    // MARK: - Bellman recursion (§3.3)

    /// Checks a cost matrix: at least 2 rows, square (K + 1 rows of K + 1 entries), and every
    /// entry above the diagonal (the only ones used) finite and non-negative. Returns K.
    @discardableResult
    public static func validate(costs: [[Double]]) throws -> Int {
        let rows = costs.count
        guard rows >= 2 else {
            throw ModelError.invalidArgument("cost matrix has \(rows) row\(rows == 1 ? "" : "s"): it needs K + 1 ≥ 2 rows for a grid of K ≥ 1 intervals")
        }
        for (r, row) in costs.enumerated() where row.count != rows {
            throw ModelError.invalidArgument("cost matrix is not square: row \(r) has \(row.count) entries, expected \(rows)")
        }
        for i in 0..<rows {
            for j in (i + 1)..<rows {
                let c = costs[i][j]
                guard c.isFinite else { throw ModelError.invalidArgument("cost matrix entry [\(i)][\(j)] is not finite (\(c))") }
                guard c >= 0 else { throw ModelError.invalidArgument("cost matrix entry [\(i)][\(j)] is negative (\(c)); jump costs must be ≥ 0") }
            }
        }
        return rows - 1
    }

    /// The N-step schedule of least summed jump cost on the grid 0…K of `costs` (K + 1 rows).
    ///
    /// `V[1][i] = c[i][K]`; `V[n][i] = min over i < j < K of c[i][j] + V[n−1][j]`; the cost is
    /// `V[N][0]`. Backtracking from 0 takes, at each stage, the smallest j whose sum
    /// `c[i][j] + V[n−1][j]` (computed exactly as in the forward pass) equals `V[n][i]`.
    /// Returns the N + 1 strictly increasing grid indices from 0 to K and the cost.
    public static func solve(costs: [[Double]], steps: Int) throws -> (indices: [Int], cost: Double) {
        let k = try validate(costs: costs)
        guard steps >= 1 else { throw ModelError.invalidArgument("the number of steps must be at least 1, got \(steps)") }
        guard steps <= k else {
            throw ModelError.invalidArgument("cannot take \(steps) steps on a grid of K = \(k) intervals: at most \(k)")
        }
        // value[n][i]: least cost of reaching K from i in exactly n jumps (+∞ when impossible).
        var value = [[Double]](repeating: [Double](repeating: .infinity, count: k + 1), count: steps + 1)
        for i in 0..<k { value[1][i] = costs[i][k] }
        if steps >= 2 {
            for n in 2...steps {
                // From i, n jumps need K − i ≥ n.
                // j < K, and the remaining n − 1 jumps from j need K − j ≥ n − 1.
                for i in 0...(k - n) {
                    var best = Double.infinity
                    for j in (i + 1)...(k - n + 1) {
                        let total = costs[i][j] + value[n - 1][j]
                        if total < best { best = total }
                    }
                    value[n][i] = best
                }
            }
        }
        var indices = [0]
        var i = 0
        var n = steps
        while n > 1 {
            let target = value[n][i]
            var next = -1
            for j in (i + 1)...(k - n + 1) where costs[i][j] + value[n - 1][j] == target {
                next = j
                break
            }
            precondition(next > i, "BOSS backtracking found no minimiser (stage \(n), index \(i))")
            indices.append(next)
            i = next
            n -= 1
        }
        indices.append(k)
        guard value[steps][0].isFinite else {
            throw ModelError.invalidArgument("the summed jump cost overflows a Double; scale the cost matrix down")
        }
        return (indices, value[steps][0])
    }

    // MARK: - Reference trajectories (§3.1)

    /// The K-step uniform Euler trajectories of some source samples: every state and velocity.
    public struct ReferenceTrajectories: Sendable {
        /// K: the number of intervals of the grid `t_k = k/K`.
        public let grid: Int
        /// Number of samples held.
        public let samples: Int
        /// Elements of one state (C·H·W).
        public let dimension: Int
        /// States `x_k`, k = 0…K, sample-major: `[samples, K + 1, dimension]`.
        public var states: [Float]
        /// Velocities `v_k`, k = 0…K − 1 (`v_K` is never used): `[samples, K, dimension]`.
        public var velocities: [Float]

        /// `x_k` of sample s.
        public func state(sample s: Int, step k: Int) -> ArraySlice<Float> {
            let o = (s * (grid + 1) + k) * dimension
            return states[o..<(o + dimension)]
        }

        /// `v_k` of sample s.
        public func velocity(sample s: Int, step k: Int) -> ArraySlice<Float> {
            let o = (s * grid + k) * dimension
            return velocities[o..<(o + dimension)]
        }
    }

    /// The reference grid `t_k = k/K` in Float, the same values as `Schedule.uniform(steps: K)`.
    public static func referenceGrid(_ k: Int) -> [Float] {
        (0...k).map { Float($0) / Float(k) }
    }

    /// One Euler update, `x + dt·v`. The integrator and the jump prediction of the costs both use
    /// this one expression, so the prediction of a one-interval jump is the next state bit for bit.
    @inline(__always)
    static func eulerUpdate(_ x: Float, _ v: Float, _ dt: Float) -> Float { x + dt * v }

    /// The class label of sample number `index`: round-robin over `classes`.
    static func label(forSample index: Int, classes: [Int]) -> Int { classes[index % classes.count] }

    /// Integrates source samples `sampleOffset ..< sampleOffset + samples` of `seed` (the same
    /// samples as `GaussianSource.draw`, whatever the batching) with K-step uniform Euler, keeping
    /// every state and velocity.
    ///
    /// - classes: for a class-conditional model, the labels to spread the samples over
    ///   (round-robin by sample number; pass the real classes, not the null class). Ignored for an
    ///   unconditional model.
    /// - guidance: the classifier-free guidance scale used at serving time.
    /// - progress: called after each grid step with (steps done, K).
    public static func referenceTrajectories(sampler: FlowSampler, samples: Int, grid k: Int,
                                             classes: [Int]?, guidance: Float, seed: UInt64,
                                             sampleOffset: Int = 0,
                                             progress: ((Int, Int) -> Void)? = nil) throws -> ReferenceTrajectories {
        guard samples >= 1 else { throw ModelError.invalidArgument("BOSS needs at least 1 reference sample, got \(samples)") }
        guard k >= 1 else { throw ModelError.invalidArgument("the BOSS grid needs K ≥ 1 intervals, got \(k)") }
        guard sampleOffset >= 0 else { throw ModelError.invalidArgument("sample offset must be ≥ 0, got \(sampleOffset)") }
        guard guidance.isFinite else { throw ModelError.invalidArgument("guidance must be finite, got \(guidance)") }
        let config = sampler.model.config
        var labels: [Int]? = nil
        if let embeds = config.numClassEmbeds {
            guard let classes, !classes.isEmpty else {
                throw ModelError.invalidArgument("this model is class-conditional: BOSS needs the classes to spread the reference samples over")
            }
            if let bad = classes.first(where: { $0 < 0 || $0 >= embeds }) {
                throw ModelError.invalidArgument("class index \(bad) is out of range: this model has classes 0...\(embeds - 1)")
            }
            labels = (sampleOffset..<(sampleOffset + samples)).map { label(forSample: $0, classes: classes) }
        }
        let shape = [config.inChannels, config.sampleSize, config.sampleSize]
        let d = shape.reduce(1, *)
        let x0 = GaussianSource.draw(count: sampleOffset + samples, shape: shape, seed: seed)
            .rows(sampleOffset..<(sampleOffset + samples))
        let t = referenceGrid(k)

        var states = [Float](repeating: 0, count: samples * (k + 1) * d)
        var velocities = [Float](repeating: 0, count: samples * k * d)
        var x = x0
        for s in 0..<samples {
            let o = s * (k + 1) * d
            states.replaceSubrange(o..<(o + d), with: x.data[(s * d)..<((s + 1) * d)])
        }
        for step in 0..<k {
            let v = sampler.velocity(x, t: [Float](repeating: t[step], count: samples), labels: labels, guidance: guidance)
            let dt = t[step + 1] - t[step]
            x.data.withUnsafeMutableBufferPointer { xs in
                v.data.withUnsafeBufferPointer { vs in
                    for p in 0..<(samples * d) { xs[p] = eulerUpdate(xs[p], vs[p], dt) }
                }
            }
            for s in 0..<samples {
                let so = (s * (k + 1) + step + 1) * d
                states.replaceSubrange(so..<(so + d), with: x.data[(s * d)..<((s + 1) * d)])
                let vo = (s * k + step) * d
                velocities.replaceSubrange(vo..<(vo + d), with: v.data[(s * d)..<((s + 1) * d)])
            }
            progress?(step + 1, k)
        }
        return ReferenceTrajectories(grid: k, samples: samples, dimension: d, states: states, velocities: velocities)
    }

    // MARK: - Jump costs (§3.2)

    /// Adds, for every sample of `trajectories`, `‖x_i + (t_j − t_i)·v_i − x_j‖²` to `sums[i][j]`
    /// for all i < j (`sums` is (K + 1)×(K + 1); entries with j ≤ i are left alone).
    public static func accumulateCosts(of trajectories: ReferenceTrajectories, into sums: inout [[Double]]) {
        let k = trajectories.grid, d = trajectories.dimension
        precondition(sums.count == k + 1 && sums.allSatisfy { $0.count == k + 1 }, "sums must be (K+1)×(K+1)")
        let t = referenceGrid(k)
        trajectories.states.withUnsafeBufferPointer { xs in
            trajectories.velocities.withUnsafeBufferPointer { vs in
                for s in 0..<trajectories.samples {
                    for i in 0..<k {
                        let xi = xs.baseAddress! + (s * (k + 1) + i) * d
                        let vi = vs.baseAddress! + (s * k + i) * d
                        for j in (i + 1)...k {
                            let xj = xs.baseAddress! + (s * (k + 1) + j) * d
                            let dt = t[j] - t[i]
                            var total: Double = 0
                            for p in 0..<d {
                                let e = eulerUpdate(xi[p], vi[p], dt) - xj[p]
                                total += Double(e * e)
                            }
                            sums[i][j] += total
                        }
                    }
                }
            }
        }
    }

    /// The mean jump costs of the given trajectories: (K + 1)×(K + 1), zero on and below the diagonal.
    public static func costs(of trajectories: ReferenceTrajectories) -> [[Double]] {
        let k = trajectories.grid
        var sums = [[Double]](repeating: [Double](repeating: 0, count: k + 1), count: k + 1)
        accumulateCosts(of: trajectories, into: &sums)
        let m = Double(trajectories.samples)
        return sums.map { $0.map { $0 / m } }
    }

    /// Estimates the jump-cost matrix from M reference trajectories (§3.1–3.2), integrating
    /// `batchSize` samples at a time and accumulating their costs, so memory stays at one batch's
    /// trajectories. Cost: M·K velocity evaluations. `progress` receives (sample-steps done, M·K).
    public static func estimateCosts(sampler: FlowSampler, samples m: Int, grid k: Int, classes: [Int]?,
                                     guidance: Float, seed: UInt64, batchSize: Int = 10,
                                     progress: ((Int, Int) -> Void)? = nil) throws -> [[Double]] {
        guard m >= 1 else { throw ModelError.invalidArgument("BOSS needs at least 1 reference sample, got \(m)") }
        guard batchSize >= 1 else { throw ModelError.invalidArgument("batch size must be at least 1, got \(batchSize)") }
        var sums = [[Double]](repeating: [Double](repeating: 0, count: k + 1), count: k + 1)
        var start = 0
        while start < m {
            let b = min(batchSize, m - start)
            let done = start * k
            let batch = try referenceTrajectories(sampler: sampler, samples: b, grid: k, classes: classes,
                                                  guidance: guidance, seed: seed, sampleOffset: start) { step, _ in
                progress?(done + step * b, m * k)
            }
            accumulateCosts(of: batch, into: &sums)
            start += b
        }
        let mean = Double(m)
        return sums.map { $0.map { $0 / mean } }
    }

    /// Reads a cost matrix from JSON: an array of K + 1 rows of K + 1 numbers. Validated as in
    /// `validate(costs:)`; every error names the file.
    public static func readCosts(path: String) throws -> [[Double]] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelError.invalidFile("cannot read costs file '\(path)'")
        }
        let costs: [[Double]]
        do { costs = try StrictJSON.decode([[Double]].self, from: [UInt8](data)) } catch let DecodingError.typeMismatch(_, context) {
            throw ModelError.invalidFile("\(path): not a JSON array of rows of numbers (\(describe(context.codingPath)))")
        } catch let DecodingError.valueNotFound(_, context) {
            throw ModelError.invalidFile("\(path): not a JSON array of rows of numbers (\(describe(context.codingPath)))")
        } catch {
            throw ModelError.invalidFile("\(path) is not valid JSON: expected an array of K + 1 rows of K + 1 numbers")
        }
        do { try validate(costs: costs) } catch let e as ModelError { throw ModelError.invalidFile("\(path): \(e.message)") }
        return costs
    }

    static func describe(_ path: [CodingKey]) -> String {
        let idx = path.compactMap(\.intValue)
        switch idx.count {
        case 0: return "the top level is not an array"
        case 1: return "row \(idx[0]) is not an array"
        default: return "row \(idx[0]) entry \(idx[1]) is not a number"
        }
    }

    /// Writes a cost matrix as JSON (one row per line), atomically.
    public static func writeCosts(_ costs: [[Double]], path: String) throws {
        let rows = costs.map { "[" + $0.map { jsonNumber($0) }.joined(separator: ", ") + "]" }
        let text = "[\n" + rows.map { "  " + $0 }.joined(separator: ",\n") + "\n]\n"
        try writeAtomically(Data(text.utf8), path: path)
    }

    /// A finite Double as a JSON number (Swift's shortest round-tripping form).
    public static func jsonNumber(_ x: Double) -> String {
        precondition(x.isFinite, "JSON has no \(x)")
        return "\(x)"
    }

    /// Writes `data` over `path` atomically (`AtomicFile.write`).
    static func writeAtomically(_ data: Data, path: String) throws {
        do { try AtomicFile.write(data, to: path) } catch let failure as AtomicFile.Failure { throw ModelError.io(failure.description) }
    }
}

// MARK: - schedules.json

extension BOSS {
    /// A model folder's BOSS schedules: `schedules.json`.
    ///
    /// ```json
    /// {
    ///   "grid": 100,          // K: the reference grid t_k = k/K the schedules are chosen from
    ///   "samples": 100,       // M: reference trajectories the costs were estimated from
    ///   "guidance": 1.0,      // classifier-free guidance used for the trajectories
    ///   "seed": 0,            // (optional) seed of the reference source samples
    ///   "schedules": {
    ///     "4": {"indices": [0, 31, 70, 92, 100],          // N + 1 grid indices, 0 … K, increasing
    ///           "times": [0, 0.31, 0.7, 0.92, 1],         // indices / K
    ///           "cost": 12.5},                            // summed jump cost V[N][0]
    ///     ...
    ///   }
    /// }
    /// ```
    /// Keys of `schedules` are the step counts N. The times used for sampling are
    /// `Float(index) / Float(K)`, the reference grid's own values; `times` is informative and
    /// must agree with the indices.
    public struct Schedules: Codable, Equatable, Sendable {
        public struct Entry: Codable, Equatable, Sendable {
            public var indices: [Int]
            public var times: [Double]
            public var cost: Double

            public init(indices: [Int], times: [Double], cost: Double) {
                self.indices = indices
                self.times = times
                self.cost = cost
            }
        }

        public var grid: Int
        public var samples: Int
        public var guidance: Double
        public var seed: UInt64?
        public var schedules: [String: Entry]

        public static let fileName = "schedules.json"

        public init(grid: Int, samples: Int, guidance: Double, seed: UInt64? = nil, schedules: [String: Entry] = [:]) {
            self.grid = grid
            self.samples = samples
            self.guidance = guidance
            self.seed = seed
            self.schedules = schedules
        }

        /// The path of schedules.json inside a model folder.
        public static func path(inModelFolder folder: String) -> String {
            (folder as NSString).appendingPathComponent(fileName)
        }

        /// Stores the schedule of `indices.count − 1` steps (indices 0 … K, strictly increasing).
        public mutating func set(indices: [Int], cost: Double) throws {
            let entry = Entry(indices: indices, times: indices.map { Double($0) / Double(grid) }, cost: cost)
            try Self.validate(entry: entry, steps: indices.count - 1, grid: grid, context: "schedule")
            schedules[String(indices.count - 1)] = entry
        }

        /// Step counts that have a schedule, ascending.
        public var stepCounts: [Int] { schedules.keys.compactMap { Int($0) }.sorted() }

        /// The grid indices for N steps, or nil.
        public func indices(steps: Int) -> [Int]? { schedules[String(steps)]?.indices }

        /// The sampling times for N steps (`Float(index) / Float(K)`), or nil.
        public func times(steps: Int) -> [Float]? {
            indices(steps: steps).map { $0.map { Float($0) / Float(grid) } }
        }

        /// Checks the header and every entry.
        public func validate() throws {
            guard grid >= 1 else { throw ModelError.invalidArgument("grid must be at least 1, got \(grid)") }
            guard samples >= 1 else { throw ModelError.invalidArgument("samples must be at least 1, got \(samples)") }
            guard guidance.isFinite else { throw ModelError.invalidArgument("guidance must be finite") }
            for (key, entry) in schedules {
                guard let n = Int(key), n >= 1 else {
                    throw ModelError.invalidFile("schedule key \"\(key)\" is not a step count ≥ 1")
                }
                try Self.validate(entry: entry, steps: n, grid: grid, context: "schedule \"\(key)\"")
            }
        }

        static func validate(entry: Entry, steps n: Int, grid k: Int, context: String) throws {
            let ix = entry.indices
            guard ix.count == n + 1 else {
                throw ModelError.invalidFile("\(context): \(ix.count) indices, expected N + 1 = \(n + 1)")
            }
            guard ix.first == 0, ix.last == k, zip(ix, ix.dropFirst()).allSatisfy({ $0 < $1 }) else {
                throw ModelError.invalidFile("\(context): indices must increase strictly from 0 to the grid's K = \(k), got \(ix)")
            }
            guard entry.times.count == ix.count,
                  zip(entry.times, ix).allSatisfy({ abs($0 - Double($1) / Double(k)) <= 1e-9 }) else {
                throw ModelError.invalidFile("\(context): times do not match indices / K (K = \(k))")
            }
            guard entry.cost.isFinite, entry.cost >= 0 else {
                throw ModelError.invalidFile("\(context): cost must be finite and ≥ 0, got \(entry.cost)")
            }
        }

        /// Reads and validates a schedules file; errors name the file.
        public static func read(path: String) throws -> Schedules {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ModelError.invalidFile("cannot read '\(path)'")
            }
            let file: Schedules
            do { file = try StrictJSON.decode(Schedules.self, from: [UInt8](data)) } catch {
                throw ModelError.invalidFile("\(path) is not a valid BOSS schedules file: \(error)")
            }
            do { try file.validate() } catch let e as ModelError { throw ModelError.invalidFile("\(path): \(e.message)") }
            return file
        }

        /// Writes the file (pretty-printed, sorted keys) atomically: a temporary file, then rename.
        public func write(path: String) throws {
            try validate()
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try BOSS.writeAtomically(try enc.encode(self), path: path)
        }

        /// The BOSS times for N steps from a model folder's schedules.json; `.missingFile` when
        /// the file or its N-step schedule is not there.
        public static func times(steps: Int, modelFolder folder: String) throws -> [Float] {
            let path = path(inModelFolder: folder)
            let missing = ModelError.missingFile(path: path, kind: .bossSchedules, detail: "no schedule for \(steps) steps")
            guard FileManager.default.fileExists(atPath: path) else { throw missing }
            guard let times = try read(path: path).times(steps: steps) else { throw missing }
            return times
        }
    }
}
