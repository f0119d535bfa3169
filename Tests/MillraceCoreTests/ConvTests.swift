import MillraceKernels
import Testing
import MillraceTestSupport

/// The fast convolution (im2col + sgemm, tiled) against the plain reference loops.
@Suite(.serialized) struct ConvTests {
    struct Case: CustomStringConvertible, Sendable {
        var batch, inC, inH, inW, outC, k, stride: Int
        var pads: (Int, Int, Int, Int)  // top, left, bottom, right
        var tile: Int = 0               // 0 = default budget
        var description: String {
            "b\(batch) \(inC)x\(inH)x\(inW)->\(outC) k\(k) s\(stride) pad\(pads) tile\(tile)"
        }
        var shape: mr_conv2d_shape {
            mr_conv2d_shape(batch: Int32(batch), in_c: Int32(inC), in_h: Int32(inH), in_w: Int32(inW),
                            out_c: Int32(outC), k_h: Int32(k), k_w: Int32(k), stride: Int32(stride),
                            pad_top: Int32(pads.0), pad_left: Int32(pads.1),
                            pad_bottom: Int32(pads.2), pad_right: Int32(pads.3))
        }
    }

    static let cases: [Case] = [
        Case(batch: 1, inC: 3, inH: 7, inW: 5, outC: 4, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        Case(batch: 2, inC: 5, inH: 8, inW: 8, outC: 7, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        Case(batch: 3, inC: 4, inH: 9, inW: 6, outC: 3, k: 3, stride: 2, pads: (1, 1, 1, 1)),
        Case(batch: 2, inC: 4, inH: 8, inW: 8, outC: 4, k: 3, stride: 2, pads: (0, 0, 1, 1)),
        Case(batch: 2, inC: 6, inH: 5, inW: 7, outC: 5, k: 1, stride: 1, pads: (0, 0, 0, 0)),
        Case(batch: 1, inC: 2, inH: 11, inW: 13, outC: 3, k: 5, stride: 3, pads: (2, 1, 0, 2)),
        Case(batch: 1, inC: 1, inH: 1, inW: 1, outC: 2, k: 3, stride: 1, pads: (1, 1, 1, 1)),
        // stride 1 with asymmetric and wide padding (the row-wise unfolding's edges)
        Case(batch: 2, inC: 2, inH: 9, inW: 10, outC: 3, k: 5, stride: 1, pads: (2, 1, 0, 2)),
        Case(batch: 1, inC: 3, inH: 6, inW: 3, outC: 2, k: 3, stride: 1, pads: (0, 2, 1, 0)),
        // small tile budgets: tiles that split one image, and tiles of several whole images
        Case(batch: 2, inC: 3, inH: 13, inW: 11, outC: 4, k: 3, stride: 1, pads: (1, 1, 1, 1), tile: 64 * 31),
        Case(batch: 5, inC: 3, inH: 4, inW: 4, outC: 4, k: 3, stride: 1, pads: (1, 1, 1, 1), tile: 31 * 40),
        // tiles of whole rows inside one image (64 columns of an 8-wide image)
        Case(batch: 2, inC: 3, inH: 16, inW: 8, outC: 4, k: 3, stride: 1, pads: (1, 1, 1, 1), tile: 31 * 64),
        Case(batch: 2, inC: 3, inH: 12, inW: 9, outC: 2, k: 3, stride: 2, pads: (1, 1, 1, 1), tile: 29 * 64),
    ]

    @Test(arguments: cases) func forwardMatchesReference(c: Case) {
        GlobalKernelSettings.exclusive {
            var rng = TestRNG(seed: 7)
            var s = c.shape
            let oh = Int(mr_conv2d_out_h(&s)), ow = Int(mr_conv2d_out_w(&s))
            let x = rng.floats(c.batch * c.inC * c.inH * c.inW)
            let w = rng.floats(c.outC * c.inC * c.k * c.k)
            let b = rng.floats(c.outC)
            var fast = [Float](repeating: .nan, count: c.batch * c.outC * oh * ow)
            var ref = fast
            mr_conv2d_set_tile_floats(c.tile)
            defer { mr_conv2d_set_tile_floats(0) }
            mr_conv2d_forward(&s, x, w, b, &fast)
            mr_ref_conv2d_forward(&s, x, w, b, &ref)
            #expect(relativeError(fast, ref) < 1e-5, "\(c)")
        }
    }

    @Test(arguments: cases) func backwardMatchesReference(c: Case) {
        GlobalKernelSettings.exclusive {
            var rng = TestRNG(seed: 11)
            var s = c.shape
            let oh = Int(mr_conv2d_out_h(&s)), ow = Int(mr_conv2d_out_w(&s))
            let x = rng.floats(c.batch * c.inC * c.inH * c.inW)
            let w = rng.floats(c.outC * c.inC * c.k * c.k)
            let dy = rng.floats(c.batch * c.outC * oh * ow)
            // Parameter gradients accumulate: start both from the same non-zero values.
            let dw0 = rng.floats(w.count), db0 = rng.floats(c.outC)
            var dx = [Float](repeating: .nan, count: x.count), dxRef = dx
            var dw = dw0, dwRef = dw0, db = db0, dbRef = db0
            mr_conv2d_set_tile_floats(c.tile)
            defer { mr_conv2d_set_tile_floats(0) }
            mr_conv2d_backward(&s, x, w, dy, &dx, &dw, &db)
            mr_ref_conv2d_backward(&s, x, w, dy, &dxRef, &dwRef, &dbRef)
            #expect(relativeError(dx, dxRef) < 1e-5, "dx \(c)")
            #expect(relativeError(dw, dwRef) < 1e-5, "dw \(c)")
            #expect(relativeError(db, dbRef) < 1e-5, "db \(c)")
        }
    }

    /// The reference itself against finite differences of the reference forward pass.
    @Test func referenceBackwardMatchesFiniteDifferences() {
        let c = Case(batch: 2, inC: 2, inH: 5, inW: 4, outC: 3, k: 3, stride: 2, pads: (1, 0, 1, 1))
        var rng = TestRNG(seed: 3)
        var s = c.shape
        let oh = Int(mr_conv2d_out_h(&s)), ow = Int(mr_conv2d_out_w(&s))
        var x = rng.floats(c.batch * c.inC * c.inH * c.inW)
        var w = rng.floats(c.outC * c.inC * 9)
        var b = rng.floats(c.outC)
        let dy = rng.floats(c.batch * c.outC * oh * ow)
        var dx = [Float](repeating: 0, count: x.count)
        var dw = [Float](repeating: 0, count: w.count), db = [Float](repeating: 0, count: 3)
        mr_ref_conv2d_backward(&s, x, w, dy, &dx, &dw, &db)
        func loss() -> Double {
            var y = [Float](repeating: 0, count: dy.count)
            mr_ref_conv2d_forward(&s, x, w, b, &y)
            return zip(y, dy).reduce(0) { $0 + Double($1.0) * Double($1.1) }
        }
        let h: Float = 1e-2
        // Central difference; `set` writes one input so that loss() sees it.
        func numeric(_ old: Float, _ set: (Float) -> Void) -> Double {
            set(old + h); let up = loss()
            set(old - h); let down = loss()
            set(old)
            return (up - down) / (2 * Double(h))
        }
        for i in stride(from: 0, to: x.count, by: 7) {
            #expect(abs(numeric(x[i]) { x[i] = $0 } - Double(dx[i])) < 2e-3, "dx[\(i)]")
        }
        for i in stride(from: 0, to: w.count, by: 5) {
            #expect(abs(numeric(w[i]) { w[i] = $0 } - Double(dw[i])) < 2e-3, "dw[\(i)]")
        }
        for i in 0..<3 { #expect(abs(numeric(b[i]) { b[i] = $0 } - Double(db[i])) < 2e-3, "db[\(i)]") }
    }
}

extension ConvTests {
    /// One image split over 2 or 3 parts (pixel chunks, or output channels for small images)
    /// matches the reference, and repeated runs give identical bits.
    @Test(arguments: [2, 3]) func oneImageSplitOverPartsMatchesReference(parts: Int) {
        GlobalKernelSettings.exclusive {
            let before = mr_get_threads()
            mr_set_threads(Int32(parts))
            defer { mr_set_threads(before) }
            for c in [Case(batch: 1, inC: 5, inH: 23, inW: 17, outC: 6, k: 3, stride: 1, pads: (1, 1, 1, 1)),
                      Case(batch: 1, inC: 6, inH: 8, inW: 8, outC: 7, k: 3, stride: 1, pads: (1, 1, 1, 1)),
                      Case(batch: 2, inC: 4, inH: 9, inW: 9, outC: 5, k: 3, stride: 1, pads: (1, 1, 1, 1)),
                      Case(batch: 1, inC: 4, inH: 16, inW: 16, outC: 4, k: 3, stride: 2, pads: (0, 0, 1, 1)),
                      // 1x1: the input read in place, by pixel chunks and by output channels
                      Case(batch: 1, inC: 5, inH: 23, inW: 17, outC: 6, k: 1, stride: 1, pads: (0, 0, 0, 0)),
                      Case(batch: 1, inC: 6, inH: 8, inW: 8, outC: 7, k: 1, stride: 1, pads: (0, 0, 0, 0))] {
                var rng = TestRNG(seed: 21)
                var s = c.shape
                let oh = Int(mr_conv2d_out_h(&s)), ow = Int(mr_conv2d_out_w(&s))
                let x = rng.floats(c.batch * c.inC * c.inH * c.inW)
                let w = rng.floats(c.outC * c.inC * c.k * c.k), b = rng.floats(c.outC)
                let dy = rng.floats(c.batch * c.outC * oh * ow)
                var y = [Float](repeating: .nan, count: dy.count), yRef = y, y2 = y
                mr_conv2d_forward(&s, x, w, b, &y)
                mr_conv2d_forward(&s, x, w, b, &y2)
                mr_ref_conv2d_forward(&s, x, w, b, &yRef)
                #expect(relativeError(y, yRef) < 1e-5, "forward \(c)")
                #expect(y == y2, "forward repeats bit for bit")
                var dx = [Float](repeating: .nan, count: x.count), dxRef = dx
                var dw = [Float](repeating: 0, count: w.count), dwRef = dw, db = [Float](repeating: 0, count: c.outC), dbRef = db
                mr_conv2d_backward(&s, x, w, dy, &dx, &dw, &db)
                mr_ref_conv2d_backward(&s, x, w, dy, &dxRef, &dwRef, &dbRef)
                #expect(relativeError(dx, dxRef) < 1e-5, "dx \(c)")
                #expect(relativeError(dw, dwRef) < 1e-5, "dw \(c)")
                #expect(relativeError(db, dbRef) < 1e-5, "db \(c)")
            }
        }
    }
}

extension ConvTests {
    /// A batch that does not divide into the parts (3 or 5 images on 2 parts, 4 on 3): whole
    /// images split by images, the rest split within each image. Matches the reference and
    /// repeats bit for bit; both kinds of split are exercised (pixel chunks and output channels).
    @Test(arguments: [(2, 3), (2, 5), (3, 4)]) func oddBatchSplitMatchesReference(parts: Int, batch: Int) {
        GlobalKernelSettings.exclusive {
            let before = mr_get_threads()
            mr_set_threads(Int32(parts))
            defer { mr_set_threads(before) }
            for c in [Case(batch: batch, inC: 5, inH: 23, inW: 17, outC: 6, k: 3, stride: 1, pads: (1, 1, 1, 1)),
                      Case(batch: batch, inC: 6, inH: 8, inW: 8, outC: 7, k: 3, stride: 1, pads: (1, 1, 1, 1))] {
                var rng = TestRNG(seed: 31)
                var s = c.shape
                let oh = Int(mr_conv2d_out_h(&s)), ow = Int(mr_conv2d_out_w(&s))
                let x = rng.floats(c.batch * c.inC * c.inH * c.inW)
                let w = rng.floats(c.outC * c.inC * c.k * c.k), b = rng.floats(c.outC)
                var y = [Float](repeating: .nan, count: c.batch * c.outC * oh * ow), yRef = y, y2 = y
                mr_conv2d_forward(&s, x, w, b, &y)
                mr_conv2d_forward(&s, x, w, b, &y2)
                mr_ref_conv2d_forward(&s, x, w, b, &yRef)
                #expect(relativeError(y, yRef) < 1e-5, "forward \(c) on \(parts) parts")
                #expect(y == y2, "forward repeats bit for bit")
            }
        }
    }
}
