import Foundation

/// ODE solvers for the flow `dx/dt = v(x, t)` (docs/METHODS.md §2).
public enum Solver: String, Sendable, CaseIterable {
    /// One evaluation per step.
    case euler
    /// Heun's second-order method: an Euler predictor, then the mean of the velocities at both
    /// ends of the step; two evaluations per step.
    case heun
}

/// Step schedules: strictly increasing grids from 0 to 1.
public enum Schedule {
    /// `τ_k = k / N`, k = 0…N.
    public static func uniform(steps: Int) -> [Float] {
        precondition(steps >= 1)
        return (0...steps).map { Float($0) / Float(steps) }
    }

    /// Throws unless `grid` starts at 0, ends at 1 and strictly increases.
    public static func validate(_ grid: [Float]) throws {
        guard grid.count >= 2, grid.first == 0, grid.last == 1,
              zip(grid, grid.dropFirst()).allSatisfy({ $0 < $1 }) else {
            throw ModelError.invalidArgument("a schedule must increase strictly from 0 to 1, got \(grid)")
        }
    }
}

/// Runs a flow-matching model: velocity evaluations with classifier-free guidance, and
/// Euler/Heun integration over a schedule.
public struct FlowSampler {
    public let model: UNet2DModel
    public let flow: FlowConfig

    /// Runs the model's forward pass in place of `model.forward` (a server shares calls between
    /// its callers this way: ModelBatcher); nil: `model.forward`.
    public var forwardCall: ((Tensor, [Float], [Int]?) -> Tensor)?

    public init(model: UNet2DModel, flow: FlowConfig) {
        self.model = model
        self.flow = flow
    }

    /// The model's velocity rows for `x` at raw timesteps (already scaled), through `forwardCall`.
    public func forward(_ x: Tensor, timesteps: [Float], classLabels: [Int]? = nil) -> Tensor {
        if let forwardCall { return forwardCall(x, timesteps, classLabels) }
        return model.forward(x, timesteps: timesteps, classLabels: classLabels)
    }

    /// Why this model cannot generate RGB images, or nil when it can: a flow's velocity has the
    /// shape of its input, and the images are 3-channel (a latent-space model would need a
    /// decoder that Millrace does not have). Checked before sampling, so that such a model gets
    /// this message instead of a shape failure halfway through.
    public var imageProblem: String? {
        let c = model.config
        if let task = flow.task {
            return "the model is a \(task) model (flow.json \"task\": \"\(task)\"), not an image generator\(task == "colorize" ? ": use it with gen colorize --color-model" : task == "restyle" ? ": it redraws pictures, use it with gen stream --model" : "")"
        }
        if c.inChannels != c.outChannels {
            return "the model has in_channels \(c.inChannels) and out_channels \(c.outChannels): a flow model's velocity must have the shape of its input"
        }
        if c.inChannels != 3 {
            return "the model has \(c.inChannels) channels: Millrace generates RGB images (3 channels) and has no decoder for a latent-space model"
        }
        return nil
    }

    /// Throws `imageProblem` as a ModelError.
    public func requireImageModel() throws {
        if let problem = imageProblem { throw ModelError.unsupported(problem) }
    }

    /// Number of network rows one velocity evaluation costs per sample.
    public func rowsPerSample(guidance: Float) -> Int { guidance == 1 || flow.nullClass == nil ? 1 : 2 }

    /// v_g = v_u + g (v_c − v_u) (§1), with conditional and null-class rows in one batched call.
    /// `t` holds one time per row of `x`.
    public func velocity(_ x: Tensor, t: [Float], labels: [Int]?, guidance: Float) -> Tensor {
        let b = x.shape[0]
        let scale = Float(flow.timestepScale)
        guard model.config.numClassEmbeds != nil else {
            return forward(x, timesteps: t.map { $0 * scale })
        }
        let null = flow.nullClass ?? 0
        let cond = labels ?? [Int](repeating: null, count: b)
        if guidance == 1 {
            return forward(x, timesteps: t.map { $0 * scale }, classLabels: cond)
        }
        let both = forward(Tensor.stack(rows: [x, x]), timesteps: (t + t).map { $0 * scale },
                                 classLabels: cond + [Int](repeating: null, count: b))
        let vc = both.rows(0..<b), vu = both.rows(b..<(2 * b))
        var out = vu
        for i in 0..<out.count { out.data[i] += guidance * (vc.data[i] - vu.data[i]) }
        return out
    }

    /// `velocity` in calls of at most `samplesPerCall` samples, each made inside `around` (a
    /// server takes its model lock there, so that other callers get the model between calls).
    /// With `samplesPerCall` ≥ the batch it is one call, exactly `velocity`.
    public func velocity(_ x: Tensor, t: [Float], labels: [Int]?, guidance: Float, samplesPerCall: Int,
                         around: (() -> Tensor) -> Tensor) -> Tensor {
        let b = x.shape[0]
        let per = max(1, samplesPerCall)
        if b <= per { return around { velocity(x, t: t, labels: labels, guidance: guidance) } }
        var parts: [Tensor] = []
        for start in stride(from: 0, to: b, by: per) {
            let r = start..<min(b, start + per)
            parts.append(around { velocity(x.rows(r), t: Array(t[r]), labels: labels.map { Array($0[r]) }, guidance: guidance) })
        }
        return Tensor.stack(rows: parts)
    }

    /// Integrates from the source samples `x0` over `schedule`. After each step `progress`
    /// receives (step, steps, data estimate x̂1 in model space) and returns false to cancel.
    /// Each velocity evaluation is made in calls of at most `samplesPerCall` samples inside
    /// `around` (see `velocity(_:t:labels:guidance:samplesPerCall:around:)`).
    /// Returns x1 in model space (not divided by the norm scale, not clipped).
    public func integrate(_ x0: Tensor, schedule: [Float], labels: [Int]?, guidance: Float,
                          solver: Solver = .euler,
                          progress: ((Int, Int, Tensor) -> Bool)? = nil,
                          samplesPerCall: Int = .max,
                          around: (() -> Tensor) -> Tensor = { $0() }) -> Tensor {
        var x = x0
        let b = x.shape[0]
        let steps = schedule.count - 1
        func evaluate(_ x: Tensor, _ t: Float) -> Tensor {
            velocity(x, t: [Float](repeating: t, count: b), labels: labels, guidance: guidance,
                     samplesPerCall: samplesPerCall, around: around)
        }
        for k in 0..<steps {
            let (t0, t1) = (schedule[k], schedule[k + 1])
            let v = evaluate(x, t0)
            var next = x
            next.addScaled(v, t1 - t0)
            if solver == .heun {
                let v1 = evaluate(next, t1)
                next = x
                next.addScaled(v, (t1 - t0) / 2)
                next.addScaled(v1, (t1 - t0) / 2)
            }
            if let progress {
                var estimate = x
                estimate.addScaled(v, 1 - t0)
                x = next
                if !progress(k + 1, steps, k + 1 == steps ? x : estimate) { return x }
            } else {
                x = next
            }
        }
        return x
    }

    /// Model space → image space: divide by the norm scale s, clip to [−1, 1].
    public func toImageSpace(_ x: Tensor) -> Tensor {
        let inv = Float(1 / flow.normScale)
        return Tensor(shape: x.shape, data: x.data.map { min(max($0 * inv, -1), 1) })
    }
}
