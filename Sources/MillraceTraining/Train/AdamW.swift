import Foundation
import MillraceCore
import MillraceKernels

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

    /// Clips, applies one AdamW update to every parameter and updates the EMA. Returns the
    /// gradient norm before clipping.
    ///
    /// `adding` holds the parameters of data-parallel replicas, in the order of `parameters`:
    /// their gradients are added into these first, in the same pass as the norm. The work runs
    /// on all cores, each taking whole parameters; the norm is summed per parameter and then in
    /// parameter order, so the result does not depend on the number of cores.
    @discardableResult
    public func update(adding replicas: [[Parameter]] = []) -> Double {
        precondition(replicas.allSatisfy { $0.count == parameters.count }, "a replica has other parameters")
        let params = parameters.map(\.1)
        let groups = Self.groups(params.map(\.grad.count), parts: 4 * Int(mr_get_threads()))
        var squares = [Double](repeating: 0, count: params.count)
        squares.withUnsafeMutableBufferPointer { sq in
            let sq = UncheckedSendable(sq)
            DispatchQueue.concurrentPerform(iterations: groups.count) { k in
                for i in groups[k] {
                    params[i].grad.withUnsafeMutableBufferPointer { g in
                        for r in replicas { mr_axpy(g.count, 1, r[i].grad, g.baseAddress) }
                        sq.value[i] = mr_sum_squares(g.count, g.baseAddress)
                    }
                }
            }
        }
        let norm = squares.reduce(0, +).squareRoot()
        let o = options
        let lr = Float(currentLearningRate)
        step += 1
        let k = mr_adamw_step(
            clip: o.gradClip > 0 && norm > o.gradClip ? Float(o.gradClip / norm) : 1,
            lr: lr, weight_decay: 0,
            beta1: Float(o.beta1), beta2: Float(o.beta2), epsilon: Float(o.epsilon),
            correction1: 1 / Float(1 - pow(o.beta1, Double(step))),
            correction2: 1 / Float(1 - pow(o.beta2, Double(step))),
            // EMA warms up too, so early checkpoints are not dominated by the random initialisation.
            ema_decay: Float(min(o.emaDecay, Double(1 + step) / Double(10 + step))))
        m.withUnsafeMutableBufferPointer { mAll in
            v.withUnsafeMutableBufferPointer { vAll in
                ema.withUnsafeMutableBufferPointer { eAll in
                    let state = UncheckedSendable((mAll, vAll, eAll))
                    DispatchQueue.concurrentPerform(iterations: groups.count) { g in
                        let (mAll, vAll, eAll) = state.value
                        for i in groups[g] {
                            let p = params[i]
                            var ki = k
                            ki.weight_decay = p.value.rank >= 2 ? Float(o.weightDecay) : 0
                            p.value.data.withUnsafeMutableBufferPointer { w in
                                p.grad.withUnsafeBufferPointer { gr in
                                    mAll[i].withUnsafeMutableBufferPointer { mm in
                                        vAll[i].withUnsafeMutableBufferPointer { vv in
                                            eAll[i].withUnsafeMutableBufferPointer { e in
                                                mr_adamw_update(w.count, w.baseAddress, gr.baseAddress, mm.baseAddress,
                                                                vv.baseAddress, e.baseAddress, &ki)
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return norm
    }

    /// Splits parameters (by their sizes) into at most `parts` runs of consecutive indices of
    /// about equal size, for the cores to take in turn.
    static func groups(_ sizes: [Int], parts: Int) -> [Range<Int>] {
        let total = max(1, sizes.reduce(0, +)), target = (total + parts - 1) / parts
        var out: [Range<Int>] = [], lo = 0, filled = 0
        for (i, n) in sizes.enumerated() {
            filled += n
            if filled >= target || i == sizes.count - 1 {
                out.append(lo..<(i + 1))
                lo = i + 1
                filled = 0
            }
        }
        return out
    }

    /// Sets every gradient to zero.
    public func zeroGrad() {
        for (_, p) in parameters { p.zeroGrad() }
    }
}
