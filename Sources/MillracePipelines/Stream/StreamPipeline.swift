import Foundation
import MillraceCore
import MillraceImaging

/// Guidance in a stream (docs/METHODS.md §6).
public enum StreamGuidance: String, Sendable, CaseIterable, Codable {
    /// n rows, v = v_c.
    case none
    /// 2n rows: standard classifier-free guidance per row (null-class rows).
    case full
    /// Residual CFG, self-negative: the reference is the input frame the slot holds. n rows.
    case selfNegative = "self"
    /// Residual CFG, onetime-negative: one extra null-class row for slot 0. n + 1 rows.
    case onetime
}

/// How a frame moves from one slot time to the next (docs/STREAMS.md, "Stepping").
public enum StreamStepping: String, Sendable, CaseIterable, Codable {
    /// StreamDiffusion's way: jump to the data estimate x̂ = x + (1 − t_i)·v, then noise it
    /// again to t_{i+1} with the slot's fixed noise. Suits distilled few-step models.
    case renoise
    /// An Euler step of the flow: x_{i+1} = x_i + (t_{i+1} − t_i)·v. No fresh noise after slot 0,
    /// so the slots integrate one trajectory from the noised frame (only the last slot jumps to 1).
    case euler
}

/// Parameters of a stream that may change between frames.
public struct StreamSettings: Sendable, Equatable, Codable {
    /// Class of the condition (the null class for unconditional).
    public var classIndex: Int
    public var guidance: StreamGuidance = .none
    /// Guidance scale g (§6).
    public var scale: Float = 1.5
    /// RCFG damping δ ∈ (0, 1].
    public var delta: Float = 1
    /// How frames move between slot times.
    public var stepping: StreamStepping = .renoise
    /// Temporal blending β ∈ [0, 1): a frame enters slot 0 as (1 − β)·frame + β·(the previous
    /// output), which keeps still parts of a picture from flickering.
    public var blend: Float = 0
    /// Structure guidance w ∈ [0, 1]: each data estimate's coarse luma (a Gaussian blur of
    /// width `structureSigma` pixels) moves the share w of the way to the frame's, the same
    /// shift on all three channels, so the colours and the detail stay the model's
    /// (docs/STREAMS.md, "Structure guidance").
    public var structure: Float = 0
    /// σ of that blur, in pixels at the model's size.
    public var structureSigma: Float = StreamPipeline.defaultStructureSigma
    /// Structure floor ρ ∈ [0, 1): where an output's luma, after structure guidance w,
    /// correlates with its frame's by less than ρ, w rises for that output (up to 1) until the
    /// correlation reaches ρ; 0 turns it off (docs/STREAMS.md, "A floor on structure").
    public var structureFloor: Float = 0
    /// What structure guidance pulls each output's coarse luma towards: the frame's luma, or
    /// the frame's layout at the output's own contrast (`StructureTarget`).
    public var structureTarget: StructureTarget = .frame
    public init(classIndex: Int) { self.classIndex = classIndex }

    /// The settings `gen stream` and `POST /v1/streams` start from: those of
    /// `StreamPipeline.Defaults(flow:)` (guidance, scale, stepping), with no guidance where the
    /// model has no null class.
    public static func defaults(classIndex: Int, flow: FlowConfig) -> StreamSettings {
        let d = StreamPipeline.Defaults(flow: flow)
        var s = StreamSettings(classIndex: classIndex)
        s.scale = d.scale
        s.stepping = d.stepping
        s.structure = d.structure
        s.structureSigma = d.structureSigma
        s.structureFloor = d.structureFloor
        s.structureTarget = d.structureTarget
        if flow.nullClass != nil { s.guidance = d.guidance }
        return s
    }
}

extension Collection where Element == Float {
    /// Mean and population standard deviation of the values, summed in Double; (0, 0) when empty.
    public func meanAndDeviation() -> (mean: Float, deviation: Float) {
        guard !isEmpty else { return (0, 0) }
        var sum = 0.0, sq = 0.0
        for x in self { sum += Double(x); sq += Double(x) * Double(x) }
        let mean = sum / Double(count)
        return (Float(mean), Float(Swift.max(0, sq / Double(count) - mean * mean).squareRoot()))
    }
}

/// The luma structure guidance pulls an output towards (docs/STREAMS.md, "Structure guidance").
public enum StructureTarget: String, Sendable, CaseIterable, Codable {
    /// The frame's luma Y(f): the output takes the frame's light and dark as they are.
    case frame
    /// The frame's luma with its departures from its median m_f (in a scene, the background)
    /// scaled up to the output's contrast where the output has more: m_f + max(1, σ_o/σ_f)·(Y(f)
    /// − m_f), σ the standard deviations of the two lumas. The output takes the frame's layout
    /// at its own contrast, so a dark drawing on a light frame stays dark where it follows the
    /// frame, while the background keeps its light; a pale drawing is aimed at the frame's luma
    /// as it is. The anchor is the frame's, not the output's mean, so that the background's aim
    /// does not move from frame to frame with the drawing's size and shade.
    case matched
}

/// A problem with stream parameters or frames.
/// Why a stream refused its settings or a frame.
public enum StreamError: Error, CustomStringConvertible, Equatable {
    /// Slot times, strength, steps, class, guidance or δ out of range for this model.
    case invalidSettings(String)
    /// A frame of the wrong shape or with values that are not finite.
    case badFrame(String)

    public var message: String {
        switch self { case .invalidSettings(let m), .badFrame(let m): return m }
    }
    public var description: String { message }
}

/// The StreamDiffusion pipeline in flow form (docs/METHODS.md §5): n slots at times
/// t_0 < … < t_{n−1} < 1, fixed per-slot noise, one batched model call per frame. The output of
/// call k is frame k − n + 1 run through all n stages.
public final class StreamPipeline {
    public let sampler: FlowSampler
    /// Slot times t_0 … t_{n−1}.
    public let times: [Float]
    public var settings: StreamSettings
    /// Per-slot noise N_i, drawn once from the stream's seed.
    let noise: [Tensor]
    let frameShape: [Int]
    /// Rows 1 … n−1 of the buffer (row i holds the frame that arrived i calls ago, at stage i);
    /// nil until the first frame.
    var buffer: [Tensor]?
    /// RCFG references travelling with each buffered frame (same indexing as `buffer`).
    var references: [Tensor]?
    /// A restyle model's condition travelling with each buffered frame: the frame itself.
    var conditions: [Tensor]?
    /// Whether the model is a restyle model (`isRestyleModel`): every row also gets the frame
    /// it came from as condition planes.
    public let conditional: Bool
    /// Model calls so far (one per processed frame; warm-up adds n − 1 sequential calls).
    public private(set) var modelCalls = 0

    public var slots: Int { times.count }

    /// The defaults of `gen stream` and `POST /v1/streams` on an image model: one slot at
    /// t_0 = 1 − 0.6, which the composition model's image-to-image student (scenes64-i2i) jumps
    /// from (docs/STREAMS.md). The stream model itself is a restyle model (`Defaults`).
    public static let defaultStrength: Float = 0.6
    public static let defaultSteps = 1
    /// Guidance of the defaults (`StreamSettings.defaults`): full classifier-free guidance at 3
    /// takes the class far more often than the student's guidance-free jump and keeps most of
    /// the layout (docs/STREAMS.md).
    public static let defaultGuidance = StreamGuidance.full
    public static let defaultScale: Float = 3

    /// What a stream runs with where nothing else is asked for, by the kind of model: a one-step
    /// restyle student (the stream model) jumps once from noise, its guidance in its weights,
    /// with structure guidance `restyleStudentStructure`; another restyle model redraws its frame
    /// from noise (strength 1) in `restyleSteps` Euler steps with full guidance at
    /// `restyleScale` and structure guidance `restyleStructure` (docs/STREAMS.md, "The stream
    /// model"); an image model (the image-to-image student) jumps once from
    /// t_0 = 1 − `defaultStrength` with full guidance at `defaultScale`.
    public struct Defaults: Sendable, Equatable {
        public var strength: Float
        public var steps: Int
        public var stepping: StreamStepping
        public var guidance: StreamGuidance
        public var scale: Float
        /// Structure guidance (`StreamSettings.structure`): `restyleStructure` for a restyle
        /// model, `defaultStructure` (off) for an image model.
        public var structure: Float = 0
        public var structureSigma: Float = StreamPipeline.defaultStructureSigma
        /// Structure floor (`StreamSettings.structureFloor`): `restyleStructureFloor` for a
        /// one-step restyle student, 0 (off) otherwise.
        public var structureFloor: Float = 0
        /// What structure guidance aims at (`StreamSettings.structureTarget`):
        /// `restyleStudentStructureTarget` for a one-step restyle student, the frame otherwise.
        public var structureTarget: StructureTarget = .frame

        public init(flow: FlowConfig) {
            if flow.task == StreamPipeline.restyleTask && flow.distilledGuidance != nil {
                // A one-step restyle student: its teacher's guided run is in its weights.
                strength = 1
                steps = 1
                stepping = .renoise
                guidance = StreamPipeline.restyleStudentGuidance
                scale = StreamPipeline.restyleStudentScale
                structure = StreamPipeline.restyleStudentStructure
                structureFloor = StreamPipeline.restyleStructureFloor
                structureTarget = StreamPipeline.restyleStudentStructureTarget
            } else if flow.task == StreamPipeline.restyleTask {
                strength = 1
                steps = StreamPipeline.restyleSteps
                stepping = .euler
                guidance = StreamPipeline.defaultGuidance
                scale = StreamPipeline.restyleScale
                structure = StreamPipeline.restyleStructure
            } else {
                strength = StreamPipeline.defaultStrength
                steps = StreamPipeline.defaultSteps
                stepping = .renoise
                guidance = StreamPipeline.defaultGuidance
                scale = StreamPipeline.defaultScale
                structure = StreamPipeline.defaultStructure
            }
        }
    }

    /// Structure guidance of an image model's defaults: off. On the stream model it trades class
    /// for layout much as strength does (docs/STREAMS.md, "Structure guidance"), so it is an
    /// option, with σ 1.5 px at 64×64.
    public static let defaultStructure: Float = 0
    public static let defaultStructureSigma: Float = 1.5

    /// Structure guidance of a restyle model's defaults: the coarse luma of its estimate (the
    /// change to the frame) moves the share w of the way to none. A restyle model draws its
    /// group's few emoji at the frame's places, not in the frame's light and dark; structure
    /// guidance gives back the light and dark and leaves the group to the model. Chosen on 40
    /// rows of scene clips (docs/STREAMS.md, "The stream model"): 0.35 for two guided Euler slots,
    /// 0.55 for a one-step student, whose drawing is softer.
    public static let restyleStructure: Float = 0.35
    public static let restyleStudentStructure: Float = 0.55
    /// Structure floor of a one-step restyle student's defaults (docs/STREAMS.md, "A floor on
    /// structure").
    public static let restyleStructureFloor: Float = 0.77
    /// Structure target of a one-step restyle student's defaults: its drawings keep their own
    /// contrast (docs/STREAMS.md, "Structure at the drawing's contrast").
    public static let restyleStudentStructureTarget = StructureTarget.matched

    /// Steps and guidance scale of a restyle model's defaults.
    public static let restyleSteps = 2
    public static let restyleScale: Float = 2
    /// Guidance of a one-step restyle student's defaults (`gen straighten` on a restyle set).
    public static let restyleStudentGuidance = StreamGuidance.none
    public static let restyleStudentScale: Float = 1

    /// Times for `strength` and `steps`: t_0 = 1 − strength, then evenly spaced towards 1.
    public static func times(strength: Float, steps: Int) throws -> [Float] {
        guard strength > 0 && strength <= 1 else { throw StreamError.invalidSettings("strength must be in (0, 1], got \(strength)") }
        guard steps >= 1 && steps <= 50 else { throw StreamError.invalidSettings("steps must be between 1 and 50, got \(steps)") }
        let t0 = 1 - strength
        return (0..<steps).map { t0 + Float($0) * strength / Float(steps) }
    }

    /// - Parameters:
    ///   - times: strictly increasing slot times in [0, 1).
    ///   - seed: seeds the per-slot noise.
    public init(sampler: FlowSampler, times: [Float], settings: StreamSettings, seed: UInt64) throws {
        guard !times.isEmpty, times.allSatisfy({ $0 >= 0 && $0 < 1 }),
              zip(times, times.dropFirst()).allSatisfy({ $0 < $1 }) else {
            throw StreamError.invalidSettings("slot times must increase strictly within [0, 1), got \(times)")
        }
        self.sampler = sampler
        self.times = times
        self.settings = settings
        let c = sampler.model.config
        conditional = Self.isRestyleModel(sampler)
        let shape = [1, c.outChannels, c.sampleSize, c.sampleSize]
        frameShape = shape
        noise = (0..<times.count).map { i in
            GaussianSource.draw(count: 1, shape: Array(shape.dropFirst()), seed: seed &+ UInt64(i) &* 7919)
        }
        try validate(settings)
    }

    /// flow.json `task` of an image-to-image model that redraws its condition, the input picture
    /// (`gen dataset restyle`): in_channels = 2 × out_channels = 6. Its sample is the change to
    /// the picture (output − input), so a stream's output is the estimate plus the frame.
    public static let restyleTask = "restyle"

    /// Whether `sampler`'s model is a restyle model: its input is [x_t; frame].
    public static func isRestyleModel(_ sampler: FlowSampler) -> Bool {
        let c = sampler.model.config
        return sampler.flow.task == restyleTask && c.outChannels == 3 && c.inChannels == 6
    }

    /// Why `sampler`'s model cannot run a stream, or nil when it can: an image model or a
    /// restyle model.
    public static func streamProblem(_ sampler: FlowSampler) -> String? {
        isRestyleModel(sampler) ? nil : sampler.imageProblem
    }

    /// Rows [x_i; condition_i] of a restyle model (each [1, C, H, W]); `xs` unchanged otherwise.
    func withConditions(_ xs: [Tensor], _ conds: [Tensor]) -> [Tensor] {
        guard conditional else { return xs }
        return zip(xs, conds).map { x, c in
            Tensor(shape: [1, x.shape[1] + c.shape[1], x.shape[2], x.shape[3]], data: x.data + c.data)
        }
    }

    /// Throws if `settings` cannot run with these slot times and this model.
    public func validate(_ s: StreamSettings) throws {
        let k = sampler.model.config.numClassEmbeds ?? 1
        guard s.classIndex >= 0 && s.classIndex < k else {
            throw StreamError.invalidSettings("class \(s.classIndex) is out of range 0..<\(k)")
        }
        if s.guidance == .selfNegative || s.guidance == .onetime {
            guard times[0] > 0 else {
                throw StreamError.invalidSettings("RCFG (\(s.guidance.rawValue)) divides by t_0 and needs t_0 > 0 (strength < 1)")
            }
        }
        if s.guidance == .full || s.guidance == .onetime {
            guard sampler.flow.nullClass != nil else { throw StreamError.invalidSettings("guidance \(s.guidance.rawValue) needs a model with a null class") }
        }
        guard s.delta > 0 && s.delta <= 1 else { throw StreamError.invalidSettings("δ must be in (0, 1], got \(s.delta)") }
        guard s.scale.isFinite && s.scale >= 0 && s.scale <= 50 else { throw StreamError.invalidSettings("guidance scale must be in [0, 50]") }
        guard s.blend.isFinite && s.blend >= 0 && s.blend < 1 else { throw StreamError.invalidSettings("blend β must be in [0, 1), got \(s.blend)") }
        guard s.structure.isFinite && s.structure >= 0 && s.structure <= 1 else {
            throw StreamError.invalidSettings("structure guidance must be in [0, 1], got \(s.structure)")
        }
        guard s.structureSigma.isFinite && s.structureSigma >= 0.5 && s.structureSigma <= 16 else {
            throw StreamError.invalidSettings("structure σ must be in [0.5, 16] pixels, got \(s.structureSigma)")
        }
        guard s.structureFloor.isFinite && s.structureFloor >= 0 && s.structureFloor < 1 else {
            throw StreamError.invalidSettings("structure floor must be in [0, 1), got \(s.structureFloor)")
        }
    }

    /// Changes class or guidance between frames.
    public func update(_ s: StreamSettings) throws {
        try validate(s)
        settings = s
    }

    /// Noises a frame (model space) to time t with slot noise N: t·f + (1 − t)·N.
    static func mix(_ f: Tensor, _ t: Float, _ n: Tensor) -> Tensor {
        var x = f.scaled(t)
        x.addScaled(n, 1 - t)
        return x
    }

    /// One batched evaluation of rows `xs` (each [1, C, H, W]) at `ts`, with guidance from
    /// `refs` (RCFG references per row) — returns the data estimates x̂_i and, for onetime, the
    /// reference computed for row 0. `firstRowIsNew`: row 0 is a frame entering slot 0, whose
    /// onetime reference is computed now (one null row); otherwise every row brings its reference
    /// (the warm-up's later stages: the frame keeps the reference of its slot 0, §6).
    func evaluate(_ xs: [Tensor], _ ts: [Float], refs: [Tensor?], conds: [Tensor] = [], firstRowIsNew: Bool = true) -> (estimates: [Tensor], newReference: Tensor?) {
        var s = settings
        // Rows that carry their references are guided as in `self`, without a null row.
        if s.guidance == .onetime && !firstRowIsNew { s.guidance = .selfNegative }
        let n = xs.count
        let cond = s.classIndex
        let null = sampler.flow.nullClass ?? cond
        let scale = Float(sampler.flow.timestepScale)
        let inputs = withConditions(xs, conds)
        var rows = inputs, rowT = ts, labels = [Int](repeating: cond, count: n)
        switch s.guidance {
        case .none, .selfNegative: break
        case .full:
            rows += inputs; rowT += ts; labels += [Int](repeating: null, count: n)
        case .onetime:
            rows.append(inputs[0]); rowT.append(ts[0]); labels.append(null)
        }
        let v = sampler.forward(Tensor.stack(rows: rows), timesteps: rowT.map { $0 * scale }, classLabels: labels)
        modelCalls += 1
        var newRef: Tensor?
        if s.guidance == .onetime {
            var r = xs[0]
            r.addScaled(v.rows(n..<(n + 1)), 1 - ts[0])
            newRef = r
        }
        var estimates: [Tensor] = []
        for i in 0..<n {
            let vc = v.rows(i..<(i + 1))
            var vg = vc
            switch s.guidance {
            case .none: break
            case .full:
                let vu = v.rows((n + i)..<(n + i + 1))
                vg = Self.guide(vu: vu, vc: vc, g: s.scale)
            case .selfNegative, .onetime:
                let r = (s.guidance == .onetime && i == 0) ? newRef! : refs[i]!
                vg = Self.guide(vu: Self.residualNegative(x: xs[i], t: ts[i], reference: r, delta: s.delta), vc: vc, g: s.scale)
            }
            var est = xs[i]
            est.addScaled(vg, 1 - ts[i])
            if (s.structure > 0 || s.structureFloor > 0) && i < conds.count {
                // A restyle model's estimate is the change to its frame, whose coarse luma
                // matches the frame's where the change's is 0.
                Self.alignStructure(&est, to: conds[i], estimateIsChange: conditional, weight: s.structure,
                                    sigma: s.structureSigma, floor: s.structureFloor, bound: Float(sampler.flow.normScale),
                                    target: s.structureTarget)
            }
            estimates.append(est)
        }
        return (estimates, newRef)
    }

    /// Row i's state at the next slot time t_{i+1} from its data estimate x̂_i: noised again with
    /// the slot's noise (`renoise`), or the Euler step x_i + (t_{i+1} − t_i)·v_i, which is
    /// x_i + (x̂_i − x_i)·(t_{i+1} − t_i)/(1 − t_i) since x̂_i = x_i + (1 − t_i)·v_i (`euler`).
    func advance(row x: Tensor, estimate: Tensor, slot i: Int) -> Tensor {
        switch settings.stepping {
        case .renoise:
            return Self.mix(estimate, times[i + 1], noise[i + 1])
        case .euler:
            var next = x
            let k = (times[i + 1] - times[i]) / (1 - times[i])
            for j in 0..<next.count { next.data[j] += k * (estimate.data[j] - x.data[j]) }
            return next
        }
    }

    /// Structure guidance on one data estimate ([1, 3, H, W], model space): adds
    /// w·blur(G − Y(output)) to every channel, Y the Rec. 601 luma, blur a Gaussian of σ pixels
    /// (edges clamped) and G the aim: Y(frame), or with `target` matched the frame's layout at
    /// the output's contrast (`StructureTarget.matched`). The output is the estimate, or frame +
    /// estimate where the estimate is a restyle model's change to its frame. Y of the output
    /// moves the share w of the way to G at coarse scales; the chroma and the fine detail stay
    /// the model's.
    /// With a floor ρ > 0, w rises (at most to 1) to the least value, within 0.01, at which the
    /// correlation of the picture's luma with the frame's reaches ρ, or to the value of the
    /// highest correlation where none does; the picture is the output with each channel
    /// clipped to ±`bound` (the model space's image range), as it will be shown. Returns the w
    /// used.
    @discardableResult
    static func alignStructure(_ est: inout Tensor, to frame: Tensor, estimateIsChange: Bool = false,
                               weight w: Float, sigma: Float, floor rho: Float = 0, bound: Float = 1,
                               target: StructureTarget = .frame) -> Float {
        guard est.shape.count == 4, est.shape[1] == 3, frame.shape == est.shape else { return 0 }
        let h = est.shape[2], wd = est.shape[3], n = h * wd
        let k: [Float] = [0.299, 0.587, 0.114]
        // The output's channels, and the luma of frame and output.
        var out = est.data
        if estimateIsChange { for j in 0..<(3 * n) { out[j] += frame.data[j] } }
        var yFrame = [Float](repeating: 0, count: n), yOut = [Float](repeating: 0, count: n)
        for c in 0..<3 {
            for p in 0..<n {
                yFrame[p] += k[c] * frame.data[c * n + p]
                yOut[p] += k[c] * out[c * n + p]
            }
        }
        // The luma to move towards: the frame's, or (matched) the frame's with its departures
        // from its median, the background of a scene, scaled up to the output's contrast. A
        // flat frame has no layout to scale, and is taken as it is.
        var goal = yFrame
        if target == .matched {
            let sdF = yFrame.meanAndDeviation().deviation, sdO = yOut.meanAndDeviation().deviation
            if sdF > 1e-4 && sdO > sdF {
                let gain = sdO / sdF, median = Self.median(yFrame)
                for p in 0..<n { goal[p] = median + gain * (yFrame[p] - median) }
            }
        }
        var d = [Float](repeating: 0, count: n)
        for p in 0..<n { d[p] = goal[p] - yOut[p] }
        let blurred = GaussianBlur.plane(d, width: wd, height: h, sigma: sigma)
        var weight = w
        if rho > 0 {
            var y = [Float](repeating: 0, count: n)
            // Correlation of the clipped picture's luma with the frame's at weight x.
            func corr(_ x: Double) -> Double {
                let xf = Float(x)
                for p in 0..<n {
                    var v: Float = 0
                    for c in 0..<3 { v += k[c] * min(max(out[c * n + p] + xf * blurred[p], -bound), bound) }
                    y[p] = v
                }
                return StreamMeasures.correlation(y, yFrame)
            }
            var best = (w: Double(w), c: corr(Double(w)))
            if best.c < Double(rho) {
                // Coarse steps of 0.05 to the first w that reaches ρ, then halves down to 0.01.
                var lo = Double(w), hi: Double? = nil
                while lo < 1 {
                    let x = min(1, lo + 0.05), c = corr(x)
                    if c >= Double(rho) { hi = x; best = (x, c); break }
                    if c > best.c { best = (x, c) }
                    lo = x
                }
                if var top = hi {
                    while top - lo > 0.01 {
                        let mid = (lo + top) / 2, c = corr(mid)
                        if c >= Double(rho) { top = mid; best = (mid, c) } else { lo = mid }
                    }
                }
            }
            weight = Float(best.w)
        }
        guard weight > 0 else { return 0 }
        for c in 0..<3 {
            let base = c * n
            for p in 0..<n { est.data[base + p] += weight * blurred[p] }
        }
        return weight
    }

    /// The median of a plane to within 1/4096 of its range: the middle of the histogram bin
    /// (4,096 over [min, max]) where the count passes half, one pass instead of a sort.
    static func median(_ v: [Float]) -> Float {
        guard let lo = v.min(), let hi = v.max() else { return 0 }
        guard hi - lo > 1e-6 else { return lo }
        let bins = 4096, scale = Float(bins) / (hi - lo)
        var counts = [Int](repeating: 0, count: bins)
        for x in v { counts[min(bins - 1, Int((x - lo) * scale))] += 1 }
        var seen = 0
        for (b, c) in counts.enumerated() {
            seen += c
            if 2 * seen > v.count { return lo + (Float(b) + 0.5) / scale }
        }
        return hi
    }

    /// v_g = v_u + g·(v_c − v_u).
    static func guide(vu: Tensor, vc: Tensor, g: Float) -> Tensor {
        var out = vu
        for i in 0..<out.count { out.data[i] += g * (vc.data[i] - vu.data[i]) }
        return out
    }

    /// RCFG's virtual negative velocity (§6): ε' = (x − t·r)/(1 − t), ẑ_u = δ·ε', v_u = (x − ẑ_u)/t.
    public static func residualNegative(x: Tensor, t: Float, reference r: Tensor, delta: Float) -> Tensor {
        var vu = x
        for i in 0..<vu.count {
            let eps = (x.data[i] - t * r.data[i]) / (1 - t)
            vu.data[i] = (x.data[i] - delta * eps) / t
        }
        return vu
    }

    /// Processes one frame ([1, C, H, W] in model space: [−1, 1] times the norm scale) and
    /// returns the output data estimate (model space): frame k − n + 1 after n stages. The first
    /// frame warms the buffer up by running itself through all stages, so outputs are real images
    /// from the first call on.
    public func process(_ frame: Tensor) throws -> Tensor {
        guard frame.shape == frameShape else {
            throw StreamError.badFrame("frame has shape \(frame.shape), the model needs \(frameShape)")
        }
        // A non-finite value would spread through every slot of the stream batch and stay there.
        guard frame.data.allSatisfy(\.isFinite) else {
            throw StreamError.badFrame("frame has non-finite values (NaN or infinity); it was not processed")
        }
        let n = slots
        let x0 = Self.mix(entering(frame, previous: previousOutput), times[0], noise[0])
        if buffer == nil {
            // Warm-up: run this frame stage by stage; row i of the buffer gets its stage-i state.
            var rows: [Tensor] = [], refs: [Tensor] = []
            var x = x0
            var ref: Tensor? = settings.guidance == .selfNegative ? frame.scaled(1) : nil
            for i in 0..<n {
                if i > 0 { rows.append(x); refs.append(ref ?? frame) }
                let (est, newRef) = evaluate([x], [times[i]], refs: [ref], conds: [frame], firstRowIsNew: i == 0)
                if i == 0, let newRef { ref = newRef }
                if i + 1 < n { x = advance(row: x, estimate: est[0], slot: i) } else { x = est[0] }
            }
            // The buffer now holds frame 0 at stages 1…n−1; the next n−1 outputs repeat it.
            buffer = rows
            references = refs
            conditions = [Tensor](repeating: frame, count: n - 1)
            return remember(conditional ? Self.adding(x, frame) : x)
        }
        var xs = [x0] + buffer!
        let firstRef: Tensor? = settings.guidance == .selfNegative ? frame : nil
        let refs: [Tensor?] = [firstRef] + (references ?? []).map { Optional($0) }
        let conds = [frame] + (conditions ?? [])
        let (est, newRef) = evaluate(xs, Array(times), refs: refs, conds: conds)
        // A restyle model's estimate is the change to the frame that row came from.
        let output = conditional ? Self.adding(est[n - 1], conds[n - 1]) : est[n - 1]
        // Advance: row i+1 ← t_{i+1}·x̂_i + (1 − t_{i+1})·N_{i+1}; references travel with frames.
        var next: [Tensor] = []
        for i in 0..<(n - 1) { next.append(advance(row: xs[i], estimate: est[i], slot: i)) }
        let rowRefs = refs.enumerated().map { i, r in (i == 0 ? (newRef ?? r) : r) ?? frame }
        buffer = next
        references = Array(rowRefs.prefix(n - 1))
        conditions = Array(conds.prefix(n - 1))
        xs.removeAll()
        return remember(output)
    }

    /// The previous output (model space), blended into the next frame when β > 0.
    private(set) var previousOutput: Tensor?
    /// Keeps `output` for blending and returns it.
    private func remember(_ output: Tensor) -> Tensor {
        previousOutput = output
        return output
    }

    /// What enters slot 0, to be noised to t_0: the frame, leaning on the previous output with
    /// blend β, (1 − β)·frame + β·ŷ. A restyle model's state is the change to its frame, so for
    /// one it is no change, or with β the previous output's change to this frame, β·(ŷ − frame);
    /// at strength 1 (t_0 = 0) either is noise alone.
    func entering(_ frame: Tensor, previous: Tensor?) -> Tensor {
        let beta = previous == nil ? 0 : settings.blend
        if conditional {
            guard beta > 0, var change = previous else { return Tensor(zeros: frame.shape) }
            change.addScaled(frame, -1)
            return change.scaled(beta)
        }
        guard beta > 0, let previous else { return frame }
        var out = frame.scaled(1 - beta)
        out.addScaled(previous, beta)
        return out
    }

    /// The same computation without batching: frame f through the n stages one model call at a
    /// time (guidance `none`; the reference the stream-batch result must equal, §5).
    public func sequential(_ frame: Tensor) -> Tensor {
        var x = Self.mix(entering(frame, previous: nil), times[0], noise[0])
        for i in 0..<slots {
            let (est, _) = evaluate([x], [times[i]], refs: [nil], conds: [frame])
            x = i + 1 < slots ? advance(row: x, estimate: est[0], slot: i) : est[0]
        }
        return conditional ? Self.adding(x, frame) : x
    }

    /// a + b.
    static func adding(_ a: Tensor, _ b: Tensor) -> Tensor {
        var out = a
        out.addScaled(b, 1)
        return out
    }
}
