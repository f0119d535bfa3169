import Foundation
import MillraceKernels
import MillraceFormats
import MillraceCore

/// Options of a rectified-flow training run (docs/METHODS.md §1, §4.1).
public struct TrainOptions: Codable, Sendable, Equatable {
    public var steps = 20_000
    public var batchSize = 64
    public var seed: UInt64 = 0
    /// Probability of replacing a label by the null class (classifier-free guidance training).
    public var labelDropout = 0.1
    public var horizontalFlips = true
    /// Draw a class uniformly, then an image of it (the emoji groups differ in size by 25×).
    public var balanceClasses = true
    /// Train on s·x1 with s = E‖x0‖ / E‖x1‖ (§4.1).
    public var normAlign = false
    /// Share of rows trained at t = 0 exactly, the rest at t ~ U[0, 1]: at t = 0 the loss is
    /// minimised by v = E[x1 | condition] − x0, the one-step estimate from noise, which is what
    /// sampling in one Euler step uses (in-context colorization, §9.3).
    public var timeZeroShare = 0.0
    public var checkpointEvery = 500
    /// Data-parallel workers: the batch is split into this many parts, each run forward and
    /// backward on its own thread and model replica, its kernels not splitting further; gradients
    /// are summed in a fixed order. 1 = one model whose kernels split over the cores.
    public var workers = 1
    public var optimizer = AdamW.Options()
    public init() {}
}

/// Training data for the flow trainer: samples x1 as [count, channels, H, W] (images in [−1, 1]
/// for an image model), labels, and for a conditional model such as in-context colorization
/// (`gen dataset colorize`) condition planes [count, conditionChannels, H, W] that the model sees
/// beside x_t (its input is [x_t; condition]).
public struct FlowTrainingData: Sendable {
    public var images: [Float]
    public var labels: [Int]
    public var size: Int
    /// Class names; empty for a model without classes (labels are then all 0 and unused).
    public var classNames: [String]
    /// Channels of a sample (3 for RGB images).
    public var channels = 3
    /// Condition planes per sample (empty: none).
    public var condition: [Float] = []
    public var conditionChannels = 0
    /// flow.json `task` of the model this data trains (nil: an image generator).
    public var task: String? = nil
    /// Pairs of sample channels, and of condition planes, that hold 2-D vectors of one space (the
    /// chroma (a, b) of colorization): with probability `rotationProbability` a row turns all of
    /// them by one random angle, as if the whole world had other hues, so that a model must take
    /// colours from its condition rather than remember them.
    public var rotatedSamplePairs: [[Int]] = []
    public var rotatedConditionPairs: [[Int]] = []
    public var rotationProbability = 0.0
    /// Parts of the data drawn with these probabilities (then uniformly within the part), when
    /// not empty; otherwise every example is equally likely. The shares add up to 1.
    public var parts: [(range: Range<Int>, share: Double)] = []

    public var count: Int { labels.count }

    /// The train split of a dataset file.
    public init(dataset: ImageDataset, split: UInt8 = 0) {
        let idx = dataset.indices(split: split)
        self.images = dataset.modelInputs(idx).data
        self.labels = idx.map { Int(dataset.labels[$0]) }
        self.size = dataset.size
        self.classNames = dataset.classNames
    }

    public init(images: [Float], labels: [Int], size: Int, classNames: [String]) {
        precondition(images.count == labels.count * 3 * size * size)
        self.images = images
        self.labels = labels
        self.size = size
        self.classNames = classNames
    }

    /// Conditional samples without classes: `samples` [count, channels, size, size] and
    /// `condition` [count, conditionChannels, size, size].
    public init(samples: [Float], channels: Int, condition: [Float], conditionChannels: Int, size: Int, task: String?) {
        precondition(channels >= 1 && size >= 1 && samples.count % (channels * size * size) == 0)
        let count = samples.count / (channels * size * size)
        precondition(condition.count == count * conditionChannels * size * size)
        self.images = samples
        self.labels = [Int](repeating: 0, count: count)
        self.size = size
        self.classNames = []
        self.channels = channels
        self.condition = condition
        self.conditionChannels = conditionChannels
        self.task = task
    }

    /// s = E‖x0‖ / E‖x1‖ with E‖x0‖ ≈ √(d − ½) for N(0, I) in d dimensions (§4.1).
    public func normAlignmentScale() -> Double {
        let d = channels * size * size
        var total = 0.0
        for n in 0..<count {
            var s = 0.0
            for j in 0..<d { let v = Double(images[n * d + j]); s += v * v }
            total += s.squareRoot()
        }
        return (Double(d) - 0.5).squareRoot() / (total / Double(max(count, 1)))
    }
}

/// A problem with training input or a checkpoint.
/// Why training refused to start or to go on.
public enum TrainError: Error, CustomStringConvertible, Equatable {
    /// A model config, dataset or option the trainer cannot use.
    case invalidSetup(String)
    /// A checkpoint that cannot be read or belongs to another run's config.
    case checkpoint(String)
    /// The run folder: a checkpoint to resume is missing, or one exists and would be overwritten.
    case runFolder(String)
    /// A log or file could not be written.
    case io(String)
    /// The processes of a data-parallel run: MPI cannot be loaded, or they do not start alike.
    case parallel(String)

    public var message: String {
        switch self { case .invalidSetup(let m), .checkpoint(let m), .runFolder(let m), .io(let m), .parallel(let m): return m }
    }
    public var description: String { message }
}

/// Rectified-flow training of a class-conditional UNet2DModel: x_t = t·x1 + (1 − t)·x0 with
/// x0 ~ N(0, I), t ~ U(0, 1), loss ‖v_θ(x_t, t, c) − (x1 − x0)‖² (mean over elements).
/// Everything random comes from one seeded generator whose state is checkpointed, so a run split
/// by `--resume` gives the same weights as an uninterrupted one.
public final class FlowTrainer {
    public let model: UNet2DModel
    public let data: FlowTrainingData
    public let options: TrainOptions
    public var flow: FlowConfig
    public let optimizer: AdamW
    /// The processes this run is split over (data parallelism across processes, e.g. by mpirun);
    /// a single process by default.
    public let collective: any Collective
    public var rng: SplitMix64
    /// Exponentially smoothed loss (for display).
    public var smoothedLoss: Double = .nan

    public var step: Int { optimizer.step }

    /// With a `collective` of K processes, each computes the gradients of its K-th of every batch
    /// (split further over `options.workers`) and the sums are shared: every process must be
    /// given the same config, data and options.
    public init(config: UNetConfig, data: FlowTrainingData, options: TrainOptions,
                collective: any Collective = SingleProcess()) throws {
        guard config.outChannels == data.channels, config.inChannels == data.channels + data.conditionChannels else {
            throw TrainError.invalidSetup("the model needs \(data.channels + data.conditionChannels) input and \(data.channels) output channels for this data (\(data.channels) per sample, \(data.conditionChannels) condition planes); it has \(config.inChannels) → \(config.outChannels)")
        }
        guard config.dropout == 0 else { throw TrainError.invalidSetup("dropout > 0 is not supported in training") }
        if data.classNames.isEmpty {
            guard config.numClassEmbeds == nil else {
                throw TrainError.invalidSetup("this data has no classes, so the model must have no class embedding")
            }
        } else {
            guard let k = config.numClassEmbeds, k == data.classNames.count + 1 else {
                throw TrainError.invalidSetup("num_class_embeds must be the number of classes + 1 (the null class): \(data.classNames.count + 1)")
            }
        }
        guard data.count > 0 else { throw TrainError.invalidSetup("the training split is empty") }
        if !data.parts.isEmpty {
            guard data.parts.allSatisfy({ !$0.range.isEmpty && $0.range.lowerBound >= 0 && $0.range.upperBound <= data.count && $0.share >= 0 }),
                  abs(data.parts.map(\.share).reduce(0, +) - 1) < 1e-6 else {
                throw TrainError.invalidSetup("the data's parts must be non-empty ranges of its examples with shares that add up to 1")
            }
        }
        guard data.classNames.isEmpty || data.labels.allSatisfy({ $0 >= 0 && $0 < data.classNames.count }) else {
            throw TrainError.invalidSetup("a label is outside 0..<\(data.classNames.count)")
        }
        guard options.batchSize >= 1, options.steps >= 1 else { throw TrainError.invalidSetup("steps and batch size must be positive") }
        guard options.workers >= 1 && options.workers <= options.batchSize else {
            throw TrainError.invalidSetup("workers must be between 1 and the batch size")
        }
        guard options.workers * collective.size <= options.batchSize else {
            throw TrainError.invalidSetup("the batch of \(options.batchSize) cannot be split over \(collective.size) processes of \(options.workers) worker(s) each: it needs at least one row per worker")
        }
        Runtime.keepFreedMemory()   // every step reallocates the same activations
        self.model = UNet2DModel(config: config, seed: options.seed)
        self.replicas = (1..<options.workers).map { _ in UNet2DModel(config: config) }
        self.data = data
        self.options = options
        var flow = FlowConfig()
        flow.classNames = data.classNames
        flow.nullClass = data.classNames.isEmpty ? nil : data.classNames.count
        flow.task = data.task
        flow.normScale = options.normAlign ? data.normAlignmentScale() : 1
        flow.defaultGuidance = 1
        self.flow = flow
        self.optimizer = AdamW(parameters: model.namedParameters(), options: options.optimizer)
        self.collective = collective
        self.rng = SplitMix64(seed: options.seed &+ 0x5EED)
        var groups = [[Int]](repeating: [], count: data.classNames.count)
        for (i, l) in data.labels.enumerated() where !data.classNames.isEmpty { groups[l].append(i) }
        self.byClass = groups.filter { !$0.isEmpty }
    }

    /// Training images by class (classes without images left out).
    let byClass: [[Int]]

    /// Straightening (§3.4): when set, batches are teacher chords instead of data/noise pairs.
    public private(set) var chords: Straightening.Chords?

    /// A trainer that fine-tunes the model of `folder` on teacher chords (§3.4): each row is a
    /// state x_{τk} at τk with the chord (x_{τk+1} − x_{τk}) / (τk+1 − τk) as its target, drawn
    /// uniformly from `chords`; no label dropout and no flips (the chords fix both). Weights and
    /// EMA start from the folder's weights.
    public convenience init(folder: ModelFolder, chords: Straightening.Chords, options: TrainOptions) throws {
        let c = folder.config
        let plane = c.sampleSize * c.sampleSize
        guard chords.count > 0, c.outChannels == 3, chords.dimension == c.outChannels * plane,
              chords.conditionDimension == (c.inChannels - c.outChannels) * plane,
              chords.conditions.count == chords.count * chords.conditionDimension else {
            throw TrainError.invalidSetup("straightening needs chords of the model's sample shape (and its condition planes)")
        }
        guard !folder.flow.classNames.isEmpty else { throw TrainError.invalidSetup("straightening needs a class-conditional model folder with class names") }
        // The data split is not used when chords are set; one blank image keeps the checks simple.
        var placeholder = FlowTrainingData(images: [Float](repeating: 0, count: chords.dimension), labels: [0],
                                           size: c.sampleSize, classNames: folder.flow.classNames)
        placeholder.conditionChannels = c.inChannels - c.outChannels
        placeholder.condition = [Float](repeating: 0, count: chords.conditionDimension)
        var opts = options
        opts.labelDropout = 0
        opts.horizontalFlips = false
        try self.init(config: c, data: placeholder, options: opts)
        try initialize(from: folder)
        flow = folder.flow
        guard let embeds = c.numClassEmbeds, chords.labels.allSatisfy({ $0 >= 0 && $0 < embeds }) else {
            throw TrainError.invalidSetup("a chord label is outside the model's classes")
        }
        self.chords = chords
    }

    /// Replaces the chords a straightening trainer draws from (a consistency-style student gets new
    /// targets each round); the optimizer, EMA and generator go on.
    public func replaceChords(_ new: Straightening.Chords) throws {
        guard let old = chords, new.count > 0, new.dimension == old.dimension, new.conditionDimension == old.conditionDimension else {
            throw TrainError.invalidSetup("chords can only replace chords of the same shape")
        }
        guard let embeds = model.config.numClassEmbeds, new.labels.allSatisfy({ $0 >= 0 && $0 < embeds }) else {
            throw TrainError.invalidSetup("a chord label is outside the model's classes")
        }
        chords = new
    }

    /// Draws a batch of chords: (x_{τk}, τk, labels, chord velocity); a restyle student's rows
    /// are [x_{τk}; condition].
    func drawChordBatch(_ chords: Straightening.Chords) -> (Tensor, [Float], [Int], Tensor) {
        let b = options.batchSize, size = data.size, d = chords.dimension, cd = chords.conditionDimension
        var xt = Tensor(zeros: [b, 3 + cd / (size * size), size, size]), target = Tensor(zeros: [b, 3, size, size])
        var ts = [Float](repeating: 0, count: b), labels = [Int](repeating: 0, count: b)
        for n in 0..<b {
            let i = Int(rng.next() % UInt64(chords.count))
            let o = n * (d + cd)
            xt.data.replaceSubrange(o..<(o + d), with: chords.states[(i * d)..<((i + 1) * d)])
            if cd > 0 { xt.data.replaceSubrange((o + d)..<(o + d + cd), with: chords.conditions[(i * cd)..<((i + 1) * cd)]) }
            target.data.replaceSubrange((n * d)..<((n + 1) * d), with: chords.targets[(i * d)..<((i + 1) * d)])
            ts[n] = chords.times[i]
            labels[n] = chords.labels[i]
        }
        return (xt, ts, labels, target)
    }

    /// Draws one batch: (x_t, t, labels, target velocity). With condition planes, x_t's rows are
    /// [x_t; condition] (the condition flipped with the sample); without classes, labels are empty.
    func drawBatch() -> (Tensor, [Float], [Int], Tensor) {
        if let chords { return drawChordBatch(chords) }
        let b = options.batchSize, size = data.size, ch = data.channels, cc = data.conditionChannels
        let plane = size * size, per = ch * plane, inPer = (ch + cc) * plane
        let s = Float(flow.normScale)
        let classes = !data.classNames.isEmpty
        var xt = Tensor(zeros: [b, ch + cc, size, size]), target = Tensor(zeros: [b, ch, size, size])
        var ts = [Float](repeating: 0, count: b), labels = [Int](repeating: 0, count: classes ? b : 0)
        var noiseStarts = [SplitMix64](repeating: rng, count: b)
        for n in 0..<b {
            let i: Int
            if options.balanceClasses && classes {
                let members = byClass[Int(rng.next() % UInt64(byClass.count))]
                i = members[Int(rng.next() % UInt64(members.count))]
            } else if !data.parts.isEmpty {
                var u = rng.nextUnitDouble(), k = 0
                while k < data.parts.count - 1 && u >= data.parts[k].share { u -= data.parts[k].share; k += 1 }
                let part = data.parts[k].range
                i = part.lowerBound + Int(rng.next() % UInt64(part.count))
            } else {
                i = Int(rng.next() % UInt64(data.count))
            }
            let flip = options.horizontalFlips && rng.next() & 1 == 1
            // No extra draw unless asked, so earlier runs' batches are unchanged.
            let t: Float = options.timeZeroShare > 0 && rng.nextUnitDouble() < options.timeZeroShare ? 0 : rng.nextUnitFloat()
            ts[n] = t
            if classes {
                labels[n] = rng.nextUnitDouble() < options.labelDropout ? flow.nullClass! : data.labels[i]
            }
            // This row's sample and condition, flipped, and turned when it is drawn to be.
            var x1 = [Float](repeating: 0, count: per), cond = [Float](repeating: 0, count: cc * plane)
            for c in 0..<ch {
                for y in 0..<size {
                    for x in 0..<size {
                        let sx = flip ? size - 1 - x : x
                        x1[(c * size + y) * size + x] = s * data.images[i * per + (c * size + y) * size + sx]
                    }
                }
            }
            for c in 0..<cc {
                for y in 0..<size {
                    for x in 0..<size {
                        let sx = flip ? size - 1 - x : x
                        cond[(c * size + y) * size + x] = data.condition[(i * cc + c) * plane + y * size + sx]
                    }
                }
            }
            if !data.rotatedSamplePairs.isEmpty || !data.rotatedConditionPairs.isEmpty,
               rng.nextUnitDouble() < data.rotationProbability {
                let angle = 2 * Float.pi * rng.nextUnitFloat(), cs = cos(angle), sn = sin(angle)
                func turn(_ v: inout [Float], _ pairs: [[Int]]) {
                    for pair in pairs {
                        for p in 0..<plane {
                            let a = v[pair[0] * plane + p], b = v[pair[1] * plane + p]
                            v[pair[0] * plane + p] = cs * a - sn * b
                            v[pair[1] * plane + p] = sn * a + cs * b
                        }
                    }
                }
                turn(&x1, data.rotatedSamplePairs)
                turn(&cond, data.rotatedConditionPairs)
            }
            // The row's noise is drawn below, on all cores: keep where its draws start, skip
            // them here, and park x1 in the target row until then.
            noiseStarts[n] = rng
            rng.skip(2 * per)   // nextGaussian takes two draws
            for j in 0..<per { target.data[n * per + j] = x1[j] }
            for j in 0..<(cc * plane) { xt.data[n * inPer + per + j] = cond[j] }
        }
        // x_t = t·x1 + (1 − t)·x0 and the target x1 − x0, the same values as drawing in order.
        let parts = min(b, Int(mr_get_threads())), starts = noiseStarts, times = ts
        xt.data.withUnsafeMutableBufferPointer { xp in
            target.data.withUnsafeMutableBufferPointer { tp in
                let out = UncheckedSendable((xp, tp))
                DispatchQueue.concurrentPerform(iterations: parts) { k in
                    let (xp, tp) = out.value
                    for n in (k * b / parts)..<((k + 1) * b / parts) {
                        var noise = starts[n]
                        let t = times[n]
                        for j in 0..<per {
                            let x0 = noise.nextGaussian(), x1 = tp[n * per + j]
                            xp[n * inPer + j] = t * x1 + (1 - t) * x0
                            tp[n * per + j] = x1 - x0
                        }
                    }
                }
            }
        }
        return (xt, ts, labels, target)
    }

    /// Extra copies of the model for data-parallel workers (weights shared by reference each step).
    let replicas: [UNet2DModel]

    /// Forward and backward of rows `range` of the batch on `net`; returns the summed squared
    /// error. Gradients are scaled for the mean over the whole batch.
    static func lossAndGradients(_ net: UNet2DModel, _ xt: Tensor, _ ts: [Float], _ labels: [Int],
                                 _ target: Tensor, range: Range<Int>, batchElements: Int) -> Double {
        let x = xt.rows(range), y = target.rows(range)
        let pred = net.forward(x, timesteps: Array(ts[range]), classLabels: labels.isEmpty ? nil : Array(labels[range]), training: true)
        var grad = Tensor(uninitialized: pred.shape)
        var sse = 0.0
        let inv = 2 / Float(batchElements)
        pred.data.withUnsafeBufferPointer { p in
            y.data.withUnsafeBufferPointer { t in
                grad.data.withUnsafeMutableBufferPointer { g in
                    for i in 0..<p.count {
                        let d = p[i] - t[i]
                        sse += Double(d * d)
                        g[i] = inv * d
                    }
                }
            }
        }
        net.backward(grad)
        return sse
    }

    /// One optimisation step; returns the batch loss.
    ///
    /// Every process draws the whole batch, so the generator state stays the same everywhere; each
    /// computes its own rows (`collective.rows(of:)`, split further over its workers), the
    /// gradients and squared errors are summed over processes, and every process applies the same
    /// update.
    @discardableResult
    public func trainStep() -> Double {
        let (xt, ts, labels, target) = drawBatch()
        let scale = Float(flow.timestepScale)
        let tsScaled = ts.map { $0 * scale }
        let mine = collective.rows(of: options.batchSize)
        var sse = 0.0
        var replicaParameters: [[Parameter]] = []
        if replicas.isEmpty {
            optimizer.zeroGrad()
            sse = Self.lossAndGradients(model, xt, tsScaled, labels, target, range: mine, batchElements: target.count)
        } else {
            let workers = [model] + replicas
            let params = workers.map { $0.namedParameters().map(\.1) }
            for k in 1..<workers.count {
                for (p, q) in zip(params[0], params[k]) { q.value = p.value }
            }
            let n = workers.count, lo = mine.lowerBound, rows = mine.count
            let ranges = (0..<n).map { k in (lo + k * rows / n)..<(lo + (k + 1) * rows / n) }
            let box = UncheckedSendable((workers, params, xt, tsScaled, labels, target))
            let results = UncheckedSendable(ResultSlots(count: n))
            DispatchQueue.concurrentPerform(iterations: n) { k in
                // Each worker is one core: its kernels must not split again.
                mr_set_thread_serial(1)
                defer { mr_set_thread_serial(0) }
                let (w, ps, x, t, l, y) = box.value
                for p in ps[k] { p.zeroGrad() }
                results.value.sse[k] = Self.lossAndGradients(w[k], x, t, l, y, range: ranges[k], batchElements: y.count)
            }
            replicaParameters = Array(params.dropFirst())
            sse = results.value.sse.reduce(0, +)
        }
        // The replicas' gradients are summed into the model's by the update (before its norm);
        // with several processes they are summed here first, so that the collective sees them.
        if collective.size > 1 {
            for q in replicaParameters {
                for (p, r) in zip(optimizer.parameters.map(\.1), q) {
                    p.grad.withUnsafeMutableBufferPointer { g in mr_axpy(g.count, 1, r.grad, g.baseAddress) }
                }
            }
            replicaParameters = []
            sse = sumOverProcesses(sse)
        }
        optimizer.update(adding: replicaParameters)
        let loss = sse / Double(target.count)
        smoothedLoss = smoothedLoss.isNaN ? loss : 0.98 * smoothedLoss + 0.02 * loss
        return loss
    }

    /// Sums every gradient over the processes (one collective call on all of them packed
    /// together) and returns the summed squared error.
    func sumOverProcesses(_ sse: Double) -> Double {
        let params = optimizer.parameters.map(\.1)
        var packed = [Float](repeating: 0, count: params.reduce(0) { $0 + $1.grad.count })
        packed.withUnsafeMutableBufferPointer { buf in
            var o = 0
            for p in params {
                p.grad.withUnsafeBufferPointer { g in _ = UnsafeMutableBufferPointer(rebasing: buf[o..<(o + g.count)]).initialize(from: g) }
                o += p.grad.count
            }
            collective.sum(buf)
            o = 0
            for p in params {
                let n = p.grad.count
                p.grad.withUnsafeMutableBufferPointer { g in _ = g.initialize(from: buf[o..<(o + n)]) }
                o += n
            }
        }
        var total = [sse]
        total.withUnsafeMutableBufferPointer { collective.sum($0) }
        return total[0]
    }

    /// Checks that every process holds the same state: options, step, generator, weights, EMA,
    /// moments and training data (checksums of rank 0's are broadcast and compared). Throws
    /// `TrainError.parallel` on every process when one differs, e.g. a machine with another
    /// dataset file or checkpoint.
    public func checkProcessesAgree() throws {
        guard collective.size > 1 else { return }
        func total(_ arrays: [[Float]]) -> Double {
            arrays.reduce(0.0) { acc, a in a.reduce(acc) { $0 + Double($1) } }
        }
        // The options and config as JSON, through a 32-bit FNV-1a hash; workers may differ per
        // process (they only split a process's rows).
        var opts = options
        opts.workers = 1
        let enc = JSONEncoder()
        enc.outputFormatting = .sortedKeys
        let setup = (try enc.encode(opts)) + model.config.jsonData()
        let setupHash = setup.reduce(UInt32(2_166_136_261)) { ($0 ^ UInt32($1)) &* 16_777_619 }
        // Every entry is exact in a Double (the generator state in two 32-bit halves).
        let mine: [Double] = [
            Double(setupHash),
            Double(step), Double(rng.state >> 32), Double(rng.state & 0xFFFF_FFFF),
            Double(data.count), total([data.images]), Double(data.labels.reduce(0, +)),
            total(optimizer.parameters.map(\.1.value.data)), total(optimizer.ema), total(optimizer.m), total(optimizer.v),
            flow.normScale,
        ]
        var first = mine
        first.withUnsafeMutableBufferPointer { collective.broadcast($0, from: 0) }
        let names = ["options or model config", "step", "generator state", "generator state", "training images", "training images", "labels",
                     "weights", "EMA weights", "Adam moments", "Adam moments", "norm scale"]
        let differs = zip(mine, first).enumerated().first { $0.element.0 != $0.element.1 }.map { names[$0.offset] }
        var counts: [Double] = [differs == nil ? 0 : 1]
        counts.withUnsafeMutableBufferPointer { collective.sum($0) }
        guard counts[0] == 0 else {
            throw TrainError.parallel(differs.map { "process \(collective.rank) has other \($0) than process 0: every machine needs the same dataset, options and checkpoint" }
                                      ?? "\(Int(counts[0])) of \(collective.size) processes start from another state than process 0 (another dataset, options or checkpoint)")
        }
    }

    /// Starts from the weights of a model folder (weights and EMA; the optimizer starts fresh),
    /// keeping its flow.json `default_guidance`. The folder may be of another sample size.
    /// With `normAlign` the run keeps the scale computed on its data, so a plain model can be
    /// fine-tuned into a norm-aligned one.
    /// For continuing a model whose checkpoint is gone; `--resume` is exact, this is not.
    public func initialize(from folder: ModelFolder) throws {
        // The weights do not depend on the sample size: a model of 32×32 images can start one of
        // 64×64 (the composition model starts from the emoji model).
        // A model may also gain input channels (the colorization model's new condition planes,
        // appended after the old ones): their weights in conv_in start at 0, so the started model
        // computes what the folder's did until training teaches it to use them.
        var same = folder.config
        same.sampleSize = model.config.sampleSize
        let oldInputs = same.inChannels, newInputs = model.config.inChannels
        if oldInputs < newInputs { same.inChannels = newInputs }
        guard same == model.config else {
            throw TrainError.invalidSetup("\(folder.path) has another architecture than this run's config, so its weights cannot start it")
        }
        var state = folder.model.stateDict()
        if oldInputs < newInputs, let w = state["conv_in.weight"], w.shape.count == 4, w.shape[1] == oldInputs {
            let out = w.shape[0], k = w.shape[2] * w.shape[3]
            var wide = [Float](repeating: 0, count: out * newInputs * k)
            for o in 0..<out {
                for i in 0..<oldInputs {
                    for j in 0..<k { wide[(o * newInputs + i) * k + j] = w.data[(o * oldInputs + i) * k + j] }
                }
            }
            state["conv_in.weight"] = Tensor(shape: [out, newInputs, w.shape[2], w.shape[3]], data: wide)
        }
        try model.load(state)
        optimizer.ema = model.namedParameters().map { $0.1.value.data }
        // A --norm-align run trains on its own s (computed on the data); otherwise the folder's
        // scale carries over, so that continuing a norm-aligned model keeps its s.
        if !options.normAlign { flow.normScale = folder.flow.normScale }
        // The serving guidance is the folder's choice too: a continued model keeps it.
        flow.defaultGuidance = folder.flow.defaultGuidance
    }

    /// A model with the EMA weights (what gets shipped and sampled from).
    public func emaModel() -> UNet2DModel {
        let ema = UNet2DModel(config: model.config)
        for ((_, p), w) in zip(ema.namedParameters(), optimizer.ema) { p.value.data = w }
        return ema
    }

    // MARK: Checkpoints

    /// Writes weights, optimizer moments, EMA, RNG state and step to one safetensors file, atomically.
    public func saveCheckpoint(path: String) throws {
        var tensors: [String: Tensor] = [:]
        for (i, (name, p)) in optimizer.parameters.enumerated() {
            tensors["model." + name] = p.value
            tensors["adam_m." + name] = Tensor(shape: p.value.shape, data: optimizer.m[i])
            tensors["adam_v." + name] = Tensor(shape: p.value.shape, data: optimizer.v[i])
            tensors["ema." + name] = Tensor(shape: p.value.shape, data: optimizer.ema[i])
        }
        let enc = JSONEncoder()
        enc.outputFormatting = .sortedKeys
        let meta: [String: String] = [
            "format": "millrace-checkpoint-1",
            "step": String(optimizer.step),
            "rng": String(rng.state),
            "smoothed_loss": String(smoothedLoss),
            "config": String(decoding: model.config.jsonData(), as: UTF8.self),
            "options": String(decoding: try enc.encode(options), as: UTF8.self),
            "flow": String(decoding: try enc.encode(flow), as: UTF8.self),
        ]
        try SafetensorsFile(tensors: tensors, metadata: meta).write(path: path)
    }

    /// Restores a checkpoint written by `saveCheckpoint`. The model config must match.
    public func loadCheckpoint(path: String) throws {
        let file: SafetensorsFile
        do { file = try SafetensorsFile.read(path: path) } catch {
            throw TrainError.checkpoint("checkpoint \(path) cannot be read: \(error)")
        }
        let meta = file.metadata
        guard meta["format"] == "millrace-checkpoint-1" else {
            throw TrainError.checkpoint("\(path) is not a Millrace checkpoint (no format tag)")
        }
        guard let stepText = meta["step"], let step = Int(stepText), step >= 0,
              let rngText = meta["rng"], let rngState = UInt64(rngText) else {
            throw TrainError.checkpoint("checkpoint \(path) has no valid step or RNG state")
        }
        if let configText = meta["config"] {
            let saved = try UNetConfig(json: Data(configText.utf8))
            guard saved == model.config else {
                throw TrainError.checkpoint("checkpoint \(path) was written for another model config; start a new run or use the same config")
            }
        }
        var m: [[Float]] = [], v: [[Float]] = [], ema: [[Float]] = [], weights: [[Float]] = []
        for (name, p) in optimizer.parameters {
            func get(_ prefix: String) throws -> [Float] {
                guard let t = file.tensors[prefix + name] else {
                    throw TrainError.checkpoint("checkpoint \(path) lacks '\(prefix + name)'")
                }
                guard t.shape == p.value.shape else {
                    throw TrainError.checkpoint("checkpoint \(path): '\(prefix + name)' has shape \(t.shape), expected \(p.value.shape)")
                }
                return t.data
            }
            weights.append(try get("model."))
            m.append(try get("adam_m."))
            v.append(try get("adam_v."))
            ema.append(try get("ema."))
        }
        // Only now, with everything validated, change state.
        for (i, (_, p)) in optimizer.parameters.enumerated() { p.value.data = weights[i] }
        optimizer.m = m
        optimizer.v = v
        optimizer.ema = ema
        optimizer.step = step
        rng = SplitMix64(seed: 0)
        rng.state = rngState
        smoothedLoss = Double(meta["smoothed_loss"] ?? "") ?? .nan
        if let flowText = meta["flow"], let f = try? JSONDecoder().decode(FlowConfig.self, from: Data(flowText.utf8)) {
            flow = f
        }
    }
}

/// Per-worker results, each slot written by one worker only (raw storage: no exclusivity
/// tracking across threads).
final class ResultSlots: @unchecked Sendable {
    let sse: UnsafeMutableBufferPointer<Double>
    init(count: Int) {
        sse = .allocate(capacity: count)
        sse.initialize(repeating: 0)
    }
    deinit { sse.deallocate() }
}
