import Foundation
import MillraceCore

/// AdamW (decoupled weight decay) with linear warm-up, global-norm gradient clipping and an EMA
/// copy of the weights. All state is plain arrays so that a checkpoint can store it exactly.
public final class AdamW {
    public struct Options: Codable, Sendable, Equatable {
        public var learningRate: Double = 2e-4
        public var beta1: Double = 0.9
        public var beta2: Double = 0.999
        public var epsilon: Double = 1e-8
        /// Decoupled weight decay, applied to tensors of rank ≥ 2 only (not to biases or norm scales).
        public var weightDecay: Double = 0.01
        public var warmupSteps: Int = 500
        /// Gradients are scaled down so that their global L2 norm is at most this (0 = off).
        public var gradClip: Double = 1
        public var emaDecay: Double = 0.999
        /// With a value T > warm-up: after the warm-up the rate follows a half cosine from
        /// `learningRate` down to `minLearningRate` at step T, and stays there. 0 = constant rate.
        public var cosineDecaySteps: Int = 0
        public var minLearningRate: Double = 0
        public init() {}
    }

    public let options: Options
    public let parameters: [(String, Parameter)]
    /// First and second moments per parameter, and the EMA weights.
    public var m: [[Float]], v: [[Float]], ema: [[Float]]
    /// Number of updates applied so far.
    public var step: Int = 0

    public init(parameters: [(String, Parameter)], options: Options) {
        self.options = options
        self.parameters = parameters
        m = parameters.map { [Float](repeating: 0, count: $0.1.value.count) }
        v = m
        ema = parameters.map { $0.1.value.data }
    }

    /// Learning rate at the current step: linear warm-up, then constant or a cosine decay.
    public var currentLearningRate: Double { Self.learningRate(at: step, options: options) }

    /// Learning rate of the update that follows `step` earlier updates. A function of the step
    /// alone, so that a resumed run follows the same schedule as an uninterrupted one.
    public static func learningRate(at step: Int, options o: Options) -> Double {
        let w = o.warmupSteps
        if w > 0 && step < w { return o.learningRate * Double(step + 1) / Double(w) }
        let t = o.cosineDecaySteps
        guard t > w else { return o.learningRate }
        let progress = min(1, Double(step - w) / Double(t - w))
        return o.minLearningRate + (o.learningRate - o.minLearningRate) * 0.5 * (1 + cos(Double.pi * progress))
    }

    /// Global L2 norm of all gradients.
    public func gradientNorm() -> Double {
        var total = 0.0
        for (_, p) in parameters {
            var s: Float = 0
            p.grad.withUnsafeBufferPointer { g in for x in g { s += x * x } }
            total += Double(s)
        }
        return total.squareRoot()
    }

    /// Clips, applies one AdamW update to every parameter and updates the EMA. Returns the
    /// gradient norm before clipping.
    @discardableResult
    public func update() -> Double {
        let norm = gradientNorm()
        let clip: Float = options.gradClip > 0 && norm > options.gradClip ? Float(options.gradClip / norm) : 1
        let lr = Float(currentLearningRate)
        step += 1
        let b1 = Float(options.beta1), b2 = Float(options.beta2), eps = Float(options.epsilon)
        let c1 = 1 / Float(1 - pow(options.beta1, Double(step)))
        let c2 = 1 / Float(1 - pow(options.beta2, Double(step)))
        // EMA warms up too, so early checkpoints are not dominated by the random initialisation.
        let decay = Float(min(options.emaDecay, Double(1 + step) / Double(10 + step)))
        for (i, (_, p)) in parameters.enumerated() {
            let wd: Float = p.value.rank >= 2 ? Float(options.weightDecay) : 0
            p.value.data.withUnsafeMutableBufferPointer { w in
                p.grad.withUnsafeBufferPointer { g in
                    m[i].withUnsafeMutableBufferPointer { mm in
                        v[i].withUnsafeMutableBufferPointer { vv in
                            ema[i].withUnsafeMutableBufferPointer { e in
                                for j in 0..<w.count {
                                    let gj = g[j] * clip
                                    mm[j] = b1 * mm[j] + (1 - b1) * gj
                                    vv[j] = b2 * vv[j] + (1 - b2) * gj * gj
                                    let upd = (mm[j] * c1) / ((vv[j] * c2).squareRoot() + eps)
                                    w[j] -= lr * (upd + wd * w[j])
                                    e[j] = decay * e[j] + (1 - decay) * w[j]
                                }
                            }
                        }
                    }
                }
            }
        }
        return norm
    }

    /// Sets every gradient to zero.
    public func zeroGrad() {
        for (_, p) in parameters { p.zeroGrad() }
    }
}
