import Dispatch
import Foundation
import MillraceKernels
import Testing
import MillraceTestSupport
@testable import MillraceCore

/// Winograd F(2x2, 3x3) (conv_winograd.c), forward and weight gradient, against the reference
/// loops (its plain twin) and the direct kernel it replaces: the shapes of the shipped UNet, awkward sizes (odd planes, rows of
/// more than 16 tiles, planes smaller than a tile, channel counts that are not multiples of the
/// 6-channel register tile), chunks, splits over cores, and the transformed weights a Conv2d keeps.
/// (Every case has at least the 32 tiles a call needs to take Winograd.)
@Suite(.serialized) struct WinogradTests {
    typealias Case = ConvTests.Case

    static func same(_ batch: Int, _ inC: Int, _ h: Int, _ w: Int, _ outC: Int) -> Case {
        Case(batch: batch, inC: inC, inH: h, inW: w, outC: outC, k: 3, stride: 1, pads: (1, 1, 1, 1))
    }

    static let cases: [Case] = [
        same(2, 32, 32, 32, 32), same(1, 64, 16, 16, 64), same(4, 128, 8, 8, 128),
        same(4, 192, 8, 8, 64),     // an up block's concatenated input
        same(3, 16, 32, 32, 17),    // 768 tiles: more than one chunk; out_c 17 = 2x6 + 5
        same(4, 17, 7, 9, 16),      // odd planes: the last tile row and column half outside
        same(1, 24, 3, 80, 20),     // 40 tiles in a row: three vectors, the last partial
        same(70, 16, 1, 1, 16),     // a plane smaller than a tile
        same(9, 20, 5, 6, 31),
    ]

    private func run(_ c: Case, winograd: Bool, prepared: Bool = false, seed: UInt64 = 3) -> (y: [Float], ref: [Float], applies: Bool) {
        var rng = TestRNG(seed: seed)
        var s = c.shape
        let x = rng.floats(c.batch * c.inC * c.inH * c.inW)
        let w = rng.floats(c.outC * c.inC * 9), b = rng.floats(c.outC)
        var y = [Float](repeating: .nan, count: c.batch * c.outC * c.inH * c.inW), ref = y
        mr_conv2d_set_winograd(winograd ? 1 : 0)
        defer { mr_conv2d_set_winograd(1) }
        let applies = mr_conv2d_winograd_applies(&s) != 0
        if prepared {
            var u = [Float](repeating: 0, count: Int(mr_conv2d_winograd_weights_count(&s)))
            mr_conv2d_winograd_weights(&s, w, &u)
            mr_conv2d_forward_prepared(&s, x, w, u, b, &y)
        } else {
            mr_conv2d_forward(&s, x, w, b, &y)
        }
        mr_ref_conv2d_forward(&s, x, w, b, &ref)
        return (y, ref, applies)
    }

    static var hasAVX512: Bool { mr_cpu_has_avx512f() != 0 }

    @Test(arguments: cases) func matchesTheReferenceAndTheDirectKernel(c: Case) {
        GlobalKernelSettings.exclusive {
            let wino = run(c, winograd: true), prepared = run(c, winograd: true, prepared: true)
            let direct = run(c, winograd: false)
            #expect(wino.applies == Self.hasAVX512, "taken exactly where the CPU has AVX-512F: \(c)")
            #expect(!direct.applies)
            #expect(!wino.y.contains { $0.isNaN }, "every output written: \(c)")
            #expect(relativeError(wino.y, wino.ref) < 1e-5, "Winograd against the reference: \(c)")
            #expect(relativeError(wino.y, direct.y) < 1e-5, "Winograd against the direct kernel: \(c)")
            #expect(prepared.y == wino.y, "weights transformed by the caller give the same bits: \(c)")
        }
    }

    /// The weight gradient through the Winograd domain (dM = A dY Aᵀ, dU = Σ dM Vᵀ, dw = Gᵀ dU G)
    /// against the reference loops, added to what dw held; and the input gradient, which runs
    /// Winograd as the transposed convolution, with it. Batches split over 2 cores, and one core.
    @Test(arguments: cases) func backwardMatchesTheReference(c: Case) {
        GlobalKernelSettings.exclusive {
            let before = mr_get_threads()
            defer { mr_set_threads(before) }
            var rng = TestRNG(seed: 21)
            var s = c.shape
            let x = rng.floats(c.batch * c.inC * c.inH * c.inW), w = rng.floats(c.outC * c.inC * 9)
            let dy = rng.floats(c.batch * c.outC * c.inH * c.inW)
            let start = rng.floats(w.count)
            var refDx = [Float](repeating: 0, count: x.count), refDw = start
            mr_ref_conv2d_backward(&s, x, w, dy, &refDx, &refDw, nil)
            for parts in [Int32(1), 2] {
                mr_set_threads(parts)
                var dx = [Float](repeating: .nan, count: x.count), dw = start
                mr_conv2d_backward(&s, x, w, dy, &dx, &dw, nil)
                #expect(relativeError(dw, refDw) < 1e-5, "weight gradient on \(parts) parts: \(c)")
                #expect(relativeError(dx, refDx) < 1e-5, "input gradient on \(parts) parts: \(c)")
            }
        }
    }

    /// The vector weight transform (16 input channels per gather, the last block masked) gives
    /// the plain twin's bits.
    @Test func weightTransformMatchesItsPlainTwin() {
        for (k, c) in [(16, 16), (7, 37), (32, 33), (64, 5)] {
            var rng = TestRNG(seed: UInt64(k * 100 + c))
            var s = Self.same(1, c, 8, 8, k).shape
            let w = rng.floats(k * c * 9)
            let n = Int(mr_conv2d_winograd_weights_count(&s))
            var fast = [Float](repeating: .nan, count: n), plain = fast
            mr_conv2d_winograd_weights(&s, w, &fast)
            mr_ref_conv2d_winograd_weights(&s, w, &plain)
            #expect(fast.map(\.bitPattern) == plain.map(\.bitPattern), "\(k)x\(c)")
            // ξ = (1, 1) of g is ¼ of the sum of all nine taps
            let sum = w[0..<9].reduce(0, +)
            // (stored by blocks of 6 output channels: ξ = 5, k = 0, c = 0 is at 5 × blocks × 6 × c)
            #expect(abs(plain[5 * ((k + 5) / 6) * 6 * c] - 0.25 * sum) < 1e-5)
        }
    }

    /// Concurrent inference on one model whose transformed weights are not made yet: the threads
    /// race to make them, and every output still equals a sequential run on a twin model bit for
    /// bit (ConcurrentForwardTests' fixture is too small to take Winograd).
    @Test func concurrentForwardsAgreeWithSequentialOnes() {
        GlobalKernelSettings.exclusive {
            var c = UNetConfig()
            c.sampleSize = 16
            c.blockOutChannels = [16, 32]
            c.downBlockTypes = [.down, .attnDown]
            c.upBlockTypes = [.attnUp, .up]
            c.attentionHeadDim = 8
            c.normNumGroups = 4
            c.numClassEmbeds = 3
            let shared = UNet2DModel(config: c, seed: 5), twin = UNet2DModel(config: c, seed: 5)
            var s = Self.same(2, 16, 16, 16, 16).shape
            #expect((mr_conv2d_winograd_applies(&s) != 0) == Self.hasAVX512)
            let inputs = (0..<6).map { k in GaussianSource.draw(count: 2, shape: [3, 16, 16], seed: UInt64(k)) }
            let sequential = inputs.indices.map { Self.call(twin, inputs, $0) }
            final class Box: @unchecked Sendable {
                let lock = NSLock()
                var outputs: [[Float]] = Array(repeating: [], count: 6)
            }
            let box = Box(), both = UncheckedSendable((shared, inputs))
            DispatchQueue.concurrentPerform(iterations: inputs.count) { k in
                let y = Self.call(both.value.0, both.value.1, k)
                box.lock.lock()
                box.outputs[k] = y
                box.lock.unlock()
            }
            for k in inputs.indices {
                #expect(box.outputs[k].map(\.bitPattern) == sequential[k].map(\.bitPattern), "call \(k)")
            }
        }
    }

    static func call(_ model: UNet2DModel, _ inputs: [Tensor], _ k: Int) -> [Float] {
        model.forward(inputs[k], timesteps: [Float(100 * k + 10), 500], classLabels: [k % 3, (k + 1) % 3]).data
    }

    @Test func notTakenWhereItDoesNotApply() {
        GlobalKernelSettings.exclusive {
            let few = Self.same(1, 15, 32, 32, 32).shape        // too few input channels
            let fewOut = Self.same(1, 32, 32, 32, 3).shape      // too few output channels
            let small = Self.same(1, 64, 8, 8, 64).shape        // 16 tiles (32 take it)
            let strided = Case(batch: 1, inC: 32, inH: 16, inW: 16, outC: 32, k: 3, stride: 2, pads: (1, 1, 1, 1)).shape
            let pointwise = Case(batch: 1, inC: 32, inH: 16, inW: 16, outC: 32, k: 1, stride: 1, pads: (0, 0, 0, 0)).shape
            let unpadded = Case(batch: 1, inC: 32, inH: 16, inW: 16, outC: 32, k: 3, stride: 1, pads: (0, 0, 0, 0)).shape
            let five = Case(batch: 1, inC: 32, inH: 16, inW: 16, outC: 32, k: 5, stride: 1, pads: (2, 2, 2, 2)).shape
            for var s in [few, fewOut, small, strided, pointwise, unpadded, five] {
                #expect(mr_conv2d_winograd_applies(&s) == 0, "\(s)")
            }
            var ok = Self.same(2, 64, 8, 8, 64).shape            // 32 tiles
            #expect((mr_conv2d_winograd_applies(&ok) != 0) == Self.hasAVX512)
            mr_conv2d_set_winograd(0)
            #expect(mr_conv2d_winograd_applies(&ok) == 0, "off when turned off")
            mr_conv2d_set_winograd(1)
        }
    }

    /// Every output is computed by the same operations whatever its tile's place, so an image's
    /// result does not depend on its batch position or on the split over 1, 2 or 3 cores (by
    /// tiles, or by output channels when each core would get fewer than 64 tiles).
    @Test func resultsDoNotDependOnBatchPositionOrSplit() {
        GlobalKernelSettings.exclusive {
            guard Self.hasAVX512 else {
                // No Winograd on this CPU; the sgemm path it leaves to makes no such promise.
                var s = Self.same(5, 24, 16, 16, 24).shape
                #expect(mr_conv2d_winograd_applies(&s) == 0)
                return
            }
            let before = mr_get_threads()
            defer { mr_set_threads(before) }
            for (batch, h, w, c) in [(5, 16, 16, 24), (3, 12, 11, 16), (16, 8, 8, 36)] {
                var rng = TestRNG(seed: 8)
                let x = rng.floats(batch * c * h * w), wt = rng.floats(c * c * 9), b = rng.floats(c)
                let yImg = c * h * w
                var results: [[Float]] = []
                for parts in [1, 2, 3] {
                    mr_set_threads(Int32(parts))
                    var s = Self.same(batch, c, h, w, c).shape
                    #expect((mr_conv2d_winograd_applies(&s) != 0) == Self.hasAVX512)
                    var y = [Float](repeating: .nan, count: batch * yImg)
                    mr_conv2d_forward(&s, x, wt, b, &y)
                    results.append(y)
                }
                #expect(results[0] == results[1] && results[1] == results[2], "\(batch)x\(h)x\(w): 1, 2 and 3 parts agree bit for bit")
                // the same images in another order give the same images
                mr_set_threads(2)
                let order = Array((0..<batch).reversed())
                let xImg = c * h * w
                var shuffled: [Float] = []
                for i in order { shuffled += x[(i * xImg)..<((i + 1) * xImg)] }
                var s = Self.same(batch, c, h, w, c).shape
                var y = [Float](repeating: .nan, count: batch * yImg)
                mr_conv2d_forward(&s, shuffled, wt, b, &y)
                for (k, i) in order.enumerated() {
                    #expect(Array(y[(k * yImg)..<((k + 1) * yImg)]) == Array(results[0][(i * yImg)..<((i + 1) * yImg)]),
                            "\(batch)x\(h)x\(w): image \(i) at position \(k)")
                }
            }
        }
    }

    /// A Conv2d keeps its weights in Winograd form; changing the weights (as an optimiser step
    /// does) makes it again, so the next forward uses the new weights.
    @Test func conv2dRemakesItsTransformedWeightsWhenTheWeightsChange() {
        GlobalKernelSettings.exclusive {
            var initializer = Initializer(rng: SplitMix64(seed: 4))
            let conv = Conv2d(32, 32, kernel: 3, padding: 1, initializer: &initializer)
            var rng = TestRNG(seed: 9)
            let x = Tensor(shape: [1, 32, 16, 16], data: rng.floats(32 * 16 * 16))
            func reference() -> [Float] {
                var s = conv.shape(for: x)
                var ref = [Float](repeating: 0, count: 32 * 16 * 16)
                mr_ref_conv2d_forward(&s, x.data, conv.weight.value.data, conv.bias.value.data, &ref)
                return ref
            }
            let first = conv.forward(x, training: false)
            #expect(relativeError(first.data, reference()) < 1e-5)
            let again = conv.forward(x, training: false)
            #expect(again.data == first.data)
            let version = conv.weight.version
            conv.weight.value.data.withUnsafeMutableBufferPointer { w in
                for i in w.indices { w[i] *= -0.5 }
            }
            #expect(conv.weight.version != version, "an in-place change counts as a change")
            let changed = conv.forward(x, training: false)
            #expect(relativeError(changed.data, reference()) < 1e-5, "the new weights are used")
            #expect(relativeError(changed.data, first.data) > 1e-2)
        }
    }
}
