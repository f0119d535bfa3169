import Foundation
import Testing
import MillraceKernels
@testable import MillraceCore
@testable import MillraceTraining
import MillraceTestSupport

/// The optimiser's kernels (optimizer.c) against their references, and AdamW's parallel update
/// against the plain arithmetic it stands for.
@Suite struct OptimizerTests {
    static func values(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in scale * rng.nextGaussian() }
    }

    @Test func sumOfSquaresMatchesDoubleSumsAtEveryLength() {
        for n in [0, 1, 15, 16, 17, 4095, 4096, 4097, 10_000, 70_001] {
            let x = Self.values(n, seed: UInt64(n) + 3, scale: 0.01)
            let reference = x.reduce(0.0) { $0 + Double($1) * Double($1) }
            let got = mr_sum_squares(n, x)
            #expect(abs(got - reference) <= 1e-6 * max(reference, 1e-30), "n = \(n): \(got) against \(reference)")
        }
    }

    static func step(_ k: Int) -> mr_adamw_step {
        mr_adamw_step(clip: 0.7, lr: 1e-3, weight_decay: k % 2 == 0 ? 0.01 : 0, beta1: 0.9, beta2: 0.999,
                      epsilon: 1e-8, correction1: 1 / (1 - powf(0.9, Float(k))),
                      correction2: 1 / (1 - powf(0.999, Float(k))), ema_decay: 0.99)
    }

    @Test func adamwKernelMatchesItsDoubleTwin() {
        let n = 1000 + 17
        var w = Self.values(n, seed: 1), m = [Float](repeating: 0, count: n), v = m, e = w
        var rw = w, rm = m, rv = v, re = e
        for k in 1...5 {
            let g = Self.values(n, seed: 100 + UInt64(k), scale: 3)
            var s = Self.step(k)
            mr_adamw_update(n, &w, g, &m, &v, &e, &s)
            mr_ref_adamw_update(n, &rw, g, &rm, &rv, &re, &s)
        }
        // Largest difference, relative to the largest value (moments pass near zero).
        func worst(_ a: [Float], _ b: [Float]) -> Float {
            zip(a, b).map { abs($0 - $1) }.max()! / b.map(abs).max()!
        }
        #expect(worst(w, rw) < 1e-5 && worst(e, re) < 1e-5, "weights \(worst(w, rw)), EMA \(worst(e, re))")
        #expect(worst(m, rm) < 1e-5 && worst(v, rv) < 1e-5, "moments \(worst(m, rm)), \(worst(v, rv))")
        // Without an EMA array the weights and moments come out the same.
        var w2 = Self.values(n, seed: 1), m2 = [Float](repeating: 0, count: n), v2 = m2, w3 = w2, m3 = m2, v3 = v2
        var e3 = w3, s = Self.step(1)
        let g = Self.values(n, seed: 7)
        mr_adamw_update(n, &w2, g, &m2, &v2, nil, &s)
        mr_adamw_update(n, &w3, g, &m3, &v3, &e3, &s)
        #expect(w2 == w3 && m2 == m3 && v2 == v3)
    }

    /// Parameters of assorted shapes (vectors, which take no weight decay, and matrices; one large
    /// enough to be a group of its own) with set gradients.
    static func parameters(gradientSeed: UInt64) -> [(String, Parameter)] {
        [[3], [64], [100, 50], [20, 2000], [7], [43, 3]].enumerated().map { i, shape in
            let n = shape.reduce(1, *)
            let p = Parameter(Tensor(shape: shape, data: values(n, seed: UInt64(i))))
            p.grad = values(n, seed: gradientSeed &+ UInt64(i), scale: 0.05)
            return ("p\(i)", p)
        }
    }

    @Test func updateFollowsTheAdamWArithmetic() {
        var o = AdamW.Options()
        o.learningRate = 1e-2
        o.warmupSteps = 0
        o.gradClip = 1
        let params = Self.parameters(gradientSeed: 50)
        let start = params.map(\.1.value.data), grads = params.map(\.1.grad)
        let opt = AdamW(parameters: params, options: o)
        let norm = opt.update()
        let expectedNorm = grads.joined().reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
        #expect(abs(norm - expectedNorm) < 1e-6 * expectedNorm)
        #expect(norm > 1, "the test needs clipping to act")
        let clip = 1 / expectedNorm, decay = min(o.emaDecay, 2.0 / 11.0)
        for (i, (_, p)) in params.enumerated() {
            let wd = p.value.rank >= 2 ? o.weightDecay : 0
            for j in stride(from: 0, to: p.value.count, by: 97) {
                let g = Double(grads[i][j]) * clip
                let m = (1 - o.beta1) * g, v = (1 - o.beta2) * g * g
                let upd = (m / (1 - o.beta1)) / ((v / (1 - o.beta2)).squareRoot() + o.epsilon)
                let w = Double(start[i][j]) - o.learningRate * (upd + wd * Double(start[i][j]))
                let e = decay * Double(start[i][j]) + (1 - decay) * w
                #expect(abs(Double(p.value.data[j]) - w) < 1e-6, "w of p\(i)[\(j)]")
                #expect(abs(Double(opt.ema[i][j]) - e) < 1e-6, "EMA of p\(i)[\(j)]")
            }
        }
        #expect(opt.step == 1)
    }

    @Test func replicaGradientsAddLikeASumDoneFirstAndCoresDoNotChangeTheResult() throws {
        try GlobalKernelSettings.exclusive {
            func run(threads: Int, replicas: Bool) -> ([[Float]], [[Float]], Double) {
                let saved = mr_get_threads()
                mr_set_threads(Int32(threads))
                defer { mr_set_threads(saved) }
                let params = Self.parameters(gradientSeed: 9)
                var others: [[Parameter]] = []
                if replicas {
                    let twin = Self.parameters(gradientSeed: 10).map(\.1)
                    others = [twin]
                } else {
                    for (i, (_, p)) in Self.parameters(gradientSeed: 10).enumerated() {
                        params[i].1.grad.withUnsafeMutableBufferPointer { mr_axpy($0.count, 1, p.grad, $0.baseAddress) }
                    }
                }
                let opt = AdamW(parameters: params, options: AdamW.Options())
                let norm = opt.update(adding: others)
                return (params.map(\.1.value.data), opt.ema, norm)
            }
            let base = run(threads: 1, replicas: false)
            for (threads, replicas) in [(1, true), (2, true), (3, false), (4, true)] {
                let other = run(threads: threads, replicas: replicas)
                #expect(other.0 == base.0 && other.1 == base.1 && other.2 == base.2,
                        "\(threads) cores, replicas \(replicas)")
            }
        }
    }

    @Test func groupsCoverEveryParameterOnceInOrder() {
        for sizes in [[1], [5, 5, 5, 5], [1000, 1, 1, 1, 1], [1, 1, 1, 1000], Array(repeating: 3, count: 50)] {
            for parts in [1, 2, 8] {
                let g = AdamW.groups(sizes, parts: parts)
                #expect(g.first?.lowerBound == 0 && g.last?.upperBound == sizes.count)
                #expect(zip(g, g.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound && !$0.isEmpty })
                #expect(g.count <= max(parts, 1))
            }
        }
    }

    @Test func skipMovesAsManyDrawsOn() {
        var a = SplitMix64(seed: 77), b = a
        for _ in 0..<1234 { _ = a.next() }
        b.skip(1234)
        #expect(a == b && a.next() == b.next())
    }
}
