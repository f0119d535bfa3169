import MillraceKernels
import Testing
import MillraceTestSupport

/// The direct convolution (conv_direct.c: stride-1 "same" convolutions; its AVX-512 and AVX2
/// kernels) against the reference loops and against the im2col + sgemm path it replaces, at the
/// shapes of the shipped UNet and at awkward ones. (ConvTests' backward cases run it too, through
/// the transposed input gradient.)
@Suite(.serialized) struct DirectConvTests {
    typealias Case = ConvTests.Case

    static let cases: [Case] = [
        // the shipped model's shapes: 32x32, 16x16, 8x8 planes; out_c a multiple of 6 or not
        Case(batch: 2, inC: 32, inH: 32, inW: 32, outC: 32, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        Case(batch: 3, inC: 64, inH: 16, inW: 16, outC: 64, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        Case(batch: 1, inC: 48, inH: 8, inW: 8, outC: 40, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        Case(batch: 1, inC: 3, inH: 32, inW: 32, outC: 32, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        Case(batch: 2, inC: 32, inH: 32, inW: 32, outC: 3, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        // planes that are not a whole number of 16-float vectors, rows shorter than a vector
        Case(batch: 3, inC: 5, inH: 7, inW: 5, outC: 11, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        Case(batch: 1, inC: 4, inH: 4, inW: 4, outC: 7, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        Case(batch: 2, inC: 3, inH: 1, inW: 1, outC: 2, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        Case(batch: 2, inC: 6, inH: 17, inW: 19, outC: 13, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        // other kernel sizes and lopsided padding that still keeps the size
        Case(batch: 2, inC: 3, inH: 9, inW: 10, outC: 5, k: 5, stride: 1, pads: (2, 1, 2, 3)),
        Case(batch: 1, inC: 2, inH: 6, inW: 7, outC: 4, k: 3, stride: 1, pads: (0, 2, 2, 0)),
        Case(batch: 1, inC: 2, inH: 5, inW: 40, outC: 7, k: 2, stride: 1, pads: (0, 1, 1, 0)),
    ]

    /// mode: 0 im2col + sgemm, 1 the default (the AVX-512 kernel where the CPU has it), 2 the AVX2 kernel.
    private func run(_ c: Case, mode: Int32, seed: UInt64 = 11) -> (y: [Float], ref: [Float], applies: Bool) {
        var rng = TestRNG(seed: seed)
        var s = c.shape
        let n = c.batch * c.outC * c.inH * c.inW
        let x = rng.floats(c.batch * c.inC * c.inH * c.inW)
        let w = rng.floats(c.outC * c.inC * c.k * c.k), b = rng.floats(c.outC)
        var y = [Float](repeating: .nan, count: n), ref = y
        mr_conv2d_set_direct(mode)
        mr_conv2d_set_winograd(0)  // the direct kernel itself (WinogradTests cover Winograd)
        defer { mr_conv2d_set_direct(1); mr_conv2d_set_winograd(1) }
        let applies = mr_conv2d_direct_applies(&s) != 0
        mr_conv2d_forward(&s, x, w, b, &y)
        mr_ref_conv2d_forward(&s, x, w, b, &ref)
        return (y, ref, applies)
    }

    static var hasAVX512: Bool { mr_cpu_has_avx512f() != 0 }
    static var hasAVX2: Bool { mr_cpu_has_avx2_fma() != 0 }

    @Test(arguments: cases) func forwardMatchesReferenceAndSgemm(c: Case) {
        GlobalKernelSettings.exclusive {
            let widest = run(c, mode: 1), avx2 = run(c, mode: 2), gemm = run(c, mode: 0)
            // the direct path is taken exactly where the CPU has the kernel asked for
            #expect(widest.applies == Self.hasAVX512, "\(c)")
            #expect(avx2.applies == Self.hasAVX2, "\(c)")
            #expect(!gemm.applies)
            #expect(relativeError(widest.y, widest.ref) < 1e-5, "default path \(c)")
            #expect(relativeError(avx2.y, avx2.ref) < 1e-5, "AVX2 direct kernel \(c)")
            #expect(relativeError(gemm.y, gemm.ref) < 1e-5, "sgemm \(c)")
            #expect(relativeError(widest.y, gemm.y) < 1e-5, "direct against sgemm \(c)")
        }
    }

    /// Shapes the direct kernel must leave to im2col + sgemm.
    @Test func notTakenWhereItDoesNotApply() {
        var strided = Case(batch: 1, inC: 4, inH: 8, inW: 8, outC: 4, k: 3, stride: 2, pads: (1, 1, 1, 1)).shape
        var pointwise = Case(batch: 1, inC: 4, inH: 8, inW: 8, outC: 4, k: 1, stride: 1, pads: (0, 0, 0, 0)).shape
        var shrinking = Case(batch: 1, inC: 4, inH: 8, inW: 8, outC: 4, k: 3, stride: 1, pads: (0, 0, 0, 0)).shape
        var growing = Case(batch: 1, inC: 4, inH: 8, inW: 8, outC: 4, k: 3, stride: 1, pads: (2, 2, 2, 2)).shape
        #expect(mr_conv2d_direct_applies(&strided) == 0)
        #expect(mr_conv2d_direct_applies(&pointwise) == 0)
        #expect(mr_conv2d_direct_applies(&shrinking) == 0)
        #expect(mr_conv2d_direct_applies(&growing) == 0)
    }

    /// Each output is summed in one fixed order, so an image's result does not depend on the
    /// batch it is in or on how the work is split over cores (1, 2 or 3 parts: whole images, a
    /// leftover image split by pixel chunks or by output channels).
    @Test(arguments: [Int32(1), 2]) func resultsDoNotDependOnBatchOrSplit(mode: Int32) {
        GlobalKernelSettings.exclusive {
            mr_conv2d_set_direct(mode)
            defer { mr_conv2d_set_direct(1) }
            guard mr_conv2d_direct_kernel() != 0 else {
                // No direct kernel on this CPU (checked above); the sgemm path makes no such
                // promise across splits, so there is nothing more to check here.
                var s = Case(batch: 1, inC: 2, inH: 8, inW: 8, outC: 2, k: 3, stride: 1, pads: (1, 1, 1, 1)).shape
                #expect(mr_conv2d_direct_applies(&s) == 0)
                return
            }
            let before = mr_get_threads()
            defer { mr_set_threads(before) }
            for (h, w, outC) in [(32, 32, 8), (8, 8, 14), (7, 5, 6)] {
                let batch = 3
                var rng = TestRNG(seed: 5)
                let x = rng.floats(batch * 4 * h * w), wt = rng.floats(outC * 4 * 9), b = rng.floats(outC)
                let yImg = outC * h * w, xImg = 4 * h * w
                var results: [[Float]] = []
                for parts in [1, 2, 3] {
                    mr_set_threads(Int32(parts))
                    var s = Case(batch: batch, inC: 4, inH: h, inW: w, outC: outC, k: 3, stride: 1, pads: (1, 1, 1, 1)).shape
                    var y = [Float](repeating: .nan, count: batch * yImg)
                    mr_conv2d_forward(&s, x, wt, b, &y)
                    results.append(y)
                    // each image alone
                    for i in 0..<batch {
                        var one = s
                        one.batch = 1
                        var yi = [Float](repeating: .nan, count: yImg)
                        Array(x[(i * xImg)..<((i + 1) * xImg)]).withUnsafeBufferPointer { xi in
                            mr_conv2d_forward(&one, xi.baseAddress, wt, b, &yi)
                        }
                        #expect(yi == Array(y[(i * yImg)..<((i + 1) * yImg)]), "\(h)x\(w) image \(i) alone on \(parts) parts, kernel \(mr_conv2d_direct_kernel())")
                    }
                }
                #expect(results[0] == results[1] && results[1] == results[2], "\(h)x\(w): 1, 2 and 3 parts agree bit for bit, kernel \(mr_conv2d_direct_kernel())")
            }
        }
    }
}
