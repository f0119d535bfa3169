import Foundation
import MillraceFormats

/// Straightening (docs/METHODS.md §3.4): teacher states from K-step uniform Euler, and the chords
/// of a schedule over them, which a copy of the model is fine-tuned to follow in one Euler step.
public enum Straightening {
    /// Teacher states of S source samples at some indices of the K-step uniform grid.
    public struct TeacherStates: Sendable {
        /// K of the grid `t_k = k/K`.
        public let grid: Int
        public let samples: Int
        /// Elements per sample (C·H·W).
        public let dimension: Int
        /// Class label of each sample (the null class for unconditional ones).
        public let labels: [Int]
        /// Guidance the teacher integrated with.
        public let guidance: Float
        /// Kept states: grid index → [samples · dimension].
        public var states: [Int: [Float]]

        public var indices: [Int] { states.keys.sorted() }

        public init(grid: Int, samples: Int, dimension: Int, labels: [Int], guidance: Float, states: [Int: [Float]]) {
            self.grid = grid
            self.samples = samples
            self.dimension = dimension
            self.labels = labels
            self.guidance = guidance
            self.states = states
        }
    }

    /// Pairs `(x_{τk}, τk, label, (x_{τk+1} − x_{τk}) / (τk+1 − τk))`: the training set of §3.4.
    public struct Chords: Sendable {
        public var states: [Float]
        public var targets: [Float]
        public var times: [Float]
        public var labels: [Int]
        /// Elements of a state and of a target (C·H·W of the model's output).
        public let dimension: Int
        /// A restyle model's condition planes per row ([count · conditionDimension]), which
        /// the student sees beside its state; empty for an image model.
        public var conditions: [Float] = []
        public var conditionDimension = 0
        public var count: Int { times.count }
    }

    // MARK: - Restyle chords

    /// Chords for a one-jump restyle student (docs/TRAINING.md, "A one-step restyle student"):
    /// each row takes the condition `conditions[s]` (an input picture, model space), starts from
    /// Gaussian noise N at t = 0 as a restyle stream's slot does, and lets the restyle teacher
    /// integrate [x; condition] from 0 to 1 in `steps` uniform Euler steps at `guidance`
    /// (null-class rows unguided). The chord x1 − N is the velocity whose single jump from the
    /// noise lands where the teacher does. With `inside` (one plane of weights in [0, 1] per row,
    /// e.g. how much the input's emoji cover each pixel) the teacher's end, a change to the
    /// picture, is scaled by it pixel by pixel before the chord is taken: the student learns
    /// the teacher's drawing there and no change elsewhere. Batches of `batch` rows;
    /// deterministic in `seed`.
    public static func restyleChords(sampler: FlowSampler, conditions: [[Float]], labels: [Int], steps: Int, guidance: Float,
                                     seed: UInt64, inside: [[Float]]? = nil, batch: Int = 32,
                                     progress: ((Int, Int) -> Void)? = nil) throws -> Chords {
        let n = labels.count
        guard n >= 1, conditions.count == n else { throw ModelError.invalidArgument("restyle chords need one condition per label (\(conditions.count) conditions, \(n) labels)") }
        guard steps >= 1 else { throw ModelError.invalidArgument("the teacher needs at least 1 step") }
        let c = sampler.model.config
        let plane = c.sampleSize * c.sampleSize, d = c.outChannels * plane, cd = (c.inChannels - c.outChannels) * plane
        guard cd > 0, conditions.allSatisfy({ $0.count == cd }) else {
            throw ModelError.invalidArgument("conditions must have \(cd) values (the model's condition planes)")
        }
        if let inside {
            guard inside.count == n, inside.allSatisfy({ $0.count == plane }) else {
                throw ModelError.invalidArgument("give one weight plane of \(plane) values per row")
            }
        }
        let noise = GaussianSource.draw(count: n, shape: [c.outChannels, c.sampleSize, c.sampleSize], seed: seed &+ 1)
        var out = Chords(states: noise.data, targets: [], times: [Float](repeating: 0, count: n), labels: labels, dimension: d)
        out.conditions = conditions.flatMap { $0 }
        out.conditionDimension = cd
        out.targets.reserveCapacity(n * d)
        for first in stride(from: 0, to: n, by: max(batch, 1)) {
            let range = first..<min(n, first + max(batch, 1))
            var x = noise.rows(range)
            let lb = Array(labels[range])
            for k in 0..<steps {
                var input = Tensor(uninitialized: [range.count, c.inChannels, c.sampleSize, c.sampleSize])
                for (r, s) in range.enumerated() {
                    let o = r * (d + cd)
                    for j in 0..<d { input.data[o + j] = x.data[r * d + j] }
                    for j in 0..<cd { input.data[o + d + j] = conditions[s][j] }
                }
                let v = sampler.velocity(input, t: [Float](repeating: Float(k) / Float(steps), count: range.count), labels: lb, guidance: guidance)
                x.addScaled(v, 1 / Float(steps))
            }
            for (r, s) in range.enumerated() {
                for j in 0..<d {
                    let end = inside.map { x.data[r * d + j] * $0[s][j % plane] } ?? x.data[r * d + j]
                    out.targets.append(end - noise.data[s * d + j])
                }
            }
            progress?(range.upperBound, n)
        }
        return out
    }

    /// Labels of the teacher samples: round-robin over `classes`, with every `nullEvery`-th sample
    /// (if > 0) given the null class, so that the unconditional velocity is straightened too.
    public static func teacherLabels(samples: Int, classes: [Int], null: Int?, nullEvery: Int) -> [Int] {
        var labels: [Int] = []
        var k = 0
        for s in 0..<samples {
            if let null, nullEvery > 0, s % nullEvery == nullEvery - 1 {
                labels.append(null)
            } else {
                labels.append(classes[k % classes.count])
                k += 1
            }
        }
        return labels
    }

    /// Integrates `samples` Gaussian source samples of `seed` with K-step uniform Euler at
    /// `guidance` (rows with the null class get exactly the unguided velocity, since v_c = v_u
    /// there) and keeps the states at `keep`. Batches of `batch` samples; `progress` gets
    /// (samples done, samples).
    public static func teacherStates(sampler: FlowSampler, samples: Int, grid k: Int, keep: Set<Int>,
                                     labels: [Int], guidance: Float, seed: UInt64, batch: Int = 32,
                                     progress: ((Int, Int) -> Void)? = nil) throws -> TeacherStates {
        guard samples >= 1 else { throw ModelError.invalidArgument("straightening needs at least 1 teacher sample") }
        guard k >= 1 else { throw ModelError.invalidArgument("the teacher grid needs K ≥ 1 steps, got \(k)") }
        guard labels.count == samples else { throw ModelError.invalidArgument("\(labels.count) labels for \(samples) teacher samples") }
        if let bad = keep.first(where: { $0 < 0 || $0 > k }) {
            throw ModelError.invalidArgument("teacher index \(bad) is outside 0...\(k)")
        }
        let c = sampler.model.config
        let shape = [c.inChannels, c.sampleSize, c.sampleSize]
        let d = shape.reduce(1, *)
        let x0 = GaussianSource.draw(count: samples, shape: shape, seed: seed)
        let t = BOSS.referenceGrid(k)
        var states: [Int: [Float]] = [:]
        for i in keep { states[i] = [Float](repeating: 0, count: samples * d) }
        for start in stride(from: 0, to: samples, by: max(batch, 1)) {
            let range = start..<min(samples, start + max(batch, 1))
            var x = x0.rows(range)
            let lb = Array(labels[range])
            func store(_ index: Int) {
                guard states[index] != nil else { return }
                states[index]!.replaceSubrange((range.lowerBound * d)..<(range.upperBound * d), with: x.data)
            }
            store(0)
            for step in 0..<k {
                let v = sampler.velocity(x, t: [Float](repeating: t[step], count: range.count), labels: lb, guidance: guidance)
                x.addScaled(v, t[step + 1] - t[step])
                store(step + 1)
            }
            progress?(range.upperBound, samples)
        }
        return TeacherStates(grid: k, samples: samples, dimension: d, labels: labels, guidance: guidance, states: states)
    }

    /// The chords of the schedule `indices` (grid indices, strictly increasing from 0 to K).
    public static func chords(_ teacher: TeacherStates, indices: [Int]) throws -> Chords {
        guard indices.count >= 2, indices.first == 0, indices.last == teacher.grid,
              zip(indices, indices.dropFirst()).allSatisfy({ $0 < $1 }) else {
            throw ModelError.invalidArgument("a straightening schedule must increase strictly from 0 to \(teacher.grid), got \(indices)")
        }
        if let missing = indices.first(where: { teacher.states[$0] == nil }) {
            throw ModelError.invalidArgument("the teacher states do not include grid index \(missing)")
        }
        let d = teacher.dimension
        var out = Chords(states: [], targets: [], times: [], labels: [], dimension: d)
        out.states.reserveCapacity(teacher.samples * (indices.count - 1) * d)
        out.targets.reserveCapacity(teacher.samples * (indices.count - 1) * d)
        for (a, b) in zip(indices, indices.dropFirst()) {
            let ta = Float(a) / Float(teacher.grid), tb = Float(b) / Float(teacher.grid)
            let inv = 1 / (tb - ta)
            let xa = teacher.states[a]!, xb = teacher.states[b]!
            for s in 0..<teacher.samples {
                let o = s * d
                out.states.append(contentsOf: xa[o..<(o + d)])
                for j in o..<(o + d) { out.targets.append((xb[j] - xa[j]) * inv) }
                out.times.append(ta)
                out.labels.append(teacher.labels[s])
            }
        }
        return out
    }

    // MARK: - Image-to-image chords

    /// Chords for a one-jump image-to-image student (docs/TRAINING.md, "An image-to-image
    /// student"): each of `labels.count` rows takes data image `images[s]` (model space, [d]), a
    /// time t0 drawn uniformly in `times`, and Gaussian noise N, starts at x = t0·f + (1 − t0)·N
    /// as a stream's first slot does, and lets the teacher integrate from t0 to 1 in `steps`
    /// uniform Euler steps at `guidance` (null-class rows unguided). The chord (x1 − x)/(1 − t0)
    /// is the velocity whose single jump lands where the teacher does. Batches of `batch` rows;
    /// deterministic in `seed`.
    public static func imageToImageChords(sampler: FlowSampler, images: [[Float]], labels: [Int], times: ClosedRange<Float>,
                                          steps: Int, guidance: Float, seed: UInt64, batch: Int = 32,
                                          progress: ((Int, Int) -> Void)? = nil) throws -> Chords {
        let n = labels.count
        guard n >= 1, images.count == n else { throw ModelError.invalidArgument("image-to-image chords need one image per label (\(images.count) images, \(n) labels)") }
        guard steps >= 1 else { throw ModelError.invalidArgument("the teacher needs at least 1 step") }
        guard times.lowerBound >= 0, times.upperBound < 1 else { throw ModelError.invalidArgument("start times must lie in [0, 1), got \(times)") }
        let c = sampler.model.config
        let shape = [c.inChannels, c.sampleSize, c.sampleSize]
        let d = shape.reduce(1, *)
        guard images.allSatisfy({ $0.count == d }) else { throw ModelError.invalidArgument("images must have \(d) values (the model's sample shape)") }
        var rng = SplitMix64(seed: seed)
        let t0s = (0..<n).map { _ in times.lowerBound + (times.upperBound - times.lowerBound) * rng.nextUnitFloat() }
        return try noisedChords(shape: shape, images: images, labels: labels, times: t0s, seed: seed, batch: batch, progress: progress) { start, t0, lb in
            var x = start, t = t0
            let dt = t.map { (1 - $0) / Float(steps) }
            for _ in 0..<steps {
                let v = sampler.velocity(x, t: t, labels: lb, guidance: guidance)
                for r in 0..<t.count {
                    for j in 0..<d { x.data[r * d + j] += dt[r] * v.data[r * d + j] }
                    t[r] += dt[r]
                }
            }
            return x
        }
    }

    /// The chords of rows that start at x = t·f + (1 − t)·N (`images[s]` = f, N drawn from
    /// `seed` + 1, `times[s]` = t), in batches of `batch`: `landing` gives, for a batch's starts,
    /// times and labels, where each row's one jump must land; the chord is (landing − x)/(1 − t).
    static func noisedChords(shape: [Int], images: [[Float]], labels: [Int], times ts: [Float], seed: UInt64, batch: Int,
                             progress: ((Int, Int) -> Void)? = nil,
                             landing: (Tensor, [Float], [Int]) throws -> Tensor) throws -> Chords {
        let n = labels.count, d = shape.reduce(1, *)
        let noise = GaussianSource.draw(count: n, shape: shape, seed: seed &+ 1)
        var out = Chords(states: [], targets: [], times: ts, labels: labels, dimension: d)
        out.states.reserveCapacity(n * d)
        out.targets.reserveCapacity(n * d)
        for first in stride(from: 0, to: n, by: max(batch, 1)) {
            let range = first..<min(n, first + max(batch, 1))
            var x = Tensor(uninitialized: [range.count] + shape)
            for (r, s) in range.enumerated() {
                let t = ts[s]
                for j in 0..<d { x.data[r * d + j] = t * images[s][j] + (1 - t) * noise.data[s * d + j] }
            }
            let end = try landing(x, range.map { ts[$0] }, Array(labels[range]))
            out.states += x.data
            for (r, s) in range.enumerated() {
                let inv = 1 / (1 - ts[s])
                for j in 0..<d { out.targets.append((end.data[r * d + j] - x.data[r * d + j]) * inv) }
            }
            progress?(range.upperBound, n)
        }
        return out
    }

    /// Consistency-style chords for an image-to-image student (docs/TRAINING.md, "A
    /// consistency-style student"): each row takes data image `images[s]`, a time t drawn
    /// uniformly in [`times.lowerBound`, 1) and noise N, starts at x = t·f + (1 − t)·N, lets the
    /// teacher take one guided Euler step to t' = min(1, t + `delta`), x' = x + (t' − t)·v_g, and
    /// asks the student (`student`, unguided: its guidance is in its weights) where it lands from
    /// there in one jump, x̂ = x' + (1 − t')·v_s(x', t') (x̂ = x' at t' = 1). The chord
    /// (x̂ − x)/(1 − t) makes the student's jump from t land where its own jump from t' lands:
    /// self-consistency along the teacher's trajectories, with the student's targets frozen for a
    /// round (a copy refreshed between rounds, as consistency distillation's EMA target is).
    public static func consistencyChords(teacher: FlowSampler, student: FlowSampler, images: [[Float]], labels: [Int],
                                         times: ClosedRange<Float>, delta: Float, guidance: Float, seed: UInt64,
                                         batch: Int = 32) throws -> Chords {
        let n = labels.count
        guard n >= 1, images.count == n else { throw ModelError.invalidArgument("consistency chords need one image per label (\(images.count) images, \(n) labels)") }
        guard delta > 0, delta <= 1 else { throw ModelError.invalidArgument("the teacher's step must be in (0, 1], got \(delta)") }
        guard times.lowerBound >= 0, times.lowerBound < 1 else { throw ModelError.invalidArgument("start times must lie in [0, 1), got \(times)") }
        let c = teacher.model.config
        guard student.model.config.inChannels == c.inChannels, student.model.config.sampleSize == c.sampleSize else {
            throw ModelError.invalidArgument("the student and the teacher must take the same samples")
        }
        let shape = [c.inChannels, c.sampleSize, c.sampleSize]
        let d = shape.reduce(1, *)
        guard images.allSatisfy({ $0.count == d }) else { throw ModelError.invalidArgument("images must have \(d) values (the model's sample shape)") }
        var rng = SplitMix64(seed: seed)
        let lo = times.lowerBound
        let ts = (0..<n).map { _ in lo + (1 - lo) * rng.nextUnitFloat() * 0.999 }
        return try noisedChords(shape: shape, images: images, labels: labels, times: ts, seed: seed, batch: batch) { x, t, lb in
            let next = t.map { min(1, $0 + delta) }
            let v = teacher.velocity(x, t: t, labels: lb, guidance: guidance)
            var xn = x
            for r in 0..<t.count { for j in 0..<d { xn.data[r * d + j] += (next[r] - t[r]) * v.data[r * d + j] } }
            let vs = student.velocity(xn, t: next, labels: lb, guidance: 1)
            for r in 0..<t.count { for j in 0..<d { xn.data[r * d + j] += (1 - next[r]) * vs.data[r * d + j] } }
            return xn
        }
    }

    // MARK: - Cache file

    /// Writes teacher states to a safetensors file (keys `x.<index>`, `labels`), atomically.
    public static func writeCache(_ teacher: TeacherStates, path: String, key: String) throws {
        var tensors: [String: Tensor] = [:]
        for (i, s) in teacher.states { tensors["x.\(i)"] = Tensor(shape: [teacher.samples, teacher.dimension], data: s) }
        tensors["labels"] = Tensor(shape: [teacher.samples], data: teacher.labels.map(Float.init))
        let meta = ["format": "millrace-teacher-1", "key": key, "grid": String(teacher.grid),
                    "guidance": String(teacher.guidance)]
        try SafetensorsFile(tensors: tensors, metadata: meta).write(path: path)
    }

    /// Reads a cache written by `writeCache`; nil when it was made for other settings (`key`).
    public static func readCache(path: String, key: String) throws -> TeacherStates? {
        let file = try SafetensorsFile.read(path: path)
        guard file.metadata["format"] == "millrace-teacher-1" else {
            throw ModelError.invalidFile("\(path) is not a Millrace teacher cache")
        }
        guard file.metadata["key"] == key else { return nil }
        guard let grid = Int(file.metadata["grid"] ?? ""), let g = Float(file.metadata["guidance"] ?? ""),
              let labels = file.tensors["labels"], labels.shape.count == 1 else {
            throw ModelError.invalidFile("\(path): teacher cache lacks grid, guidance or labels")
        }
        let samples = labels.shape[0]
        var states: [Int: [Float]] = [:]
        var d = 0
        for (name, t) in file.tensors where name.hasPrefix("x.") {
            guard let i = Int(name.dropFirst(2)), t.shape.count == 2, t.shape[0] == samples else {
                throw ModelError.invalidFile("\(path): bad teacher tensor '\(name)' \(t.shape)")
            }
            d = t.shape[1]
            states[i] = t.data
        }
        return TeacherStates(grid: grid, samples: samples, dimension: d, labels: labels.data.map { Int($0) },
                             guidance: g, states: states)
    }
}
