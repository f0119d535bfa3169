import Foundation
import MillraceKernels
import MillraceTestSupport
import Testing

/// The non-convolution kernels (linear, GroupNorm, SiLU, softmax, attention, elementwise and
/// layout ops): each fast kernel against its plain reference on several shapes (odd ones
/// included), the references' backward passes against central finite differences, and the
/// accumulate / overwrite / aliasing rules of the header. The fast exp (mr_exp_approx) that the
/// fast SiLU, softmax and attention share is checked against libm on a dense sweep.
///
/// Tolerance for fast vs reference: max|a - b| <= rel * (1 + max|ref|), rel = 1e-4 unless stated.
/// Tolerance for finite differences (h = 1e-2, losses summed in double from the float
/// reference): |fd - analytic| <= 2e-2 * max(|analytic|, 0.1 * max|gradient|).
@Suite(.serialized) struct KernelTests {

    // MARK: - Helpers

    static func maxAbs(_ a: [Float]) -> Float { a.reduce(0) { max($0, abs($1)) } }

    static func maxDiff(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count)
        var worst: Float = 0
        for i in a.indices {
            let d = abs(a[i] - b[i])
            if d.isNaN { return .infinity }
            worst = max(worst, d)
        }
        return worst
    }

    /// max|a - ref| <= rel * (1 + max|ref|), and every entry of `a` finite.
    static func expectClose(_ a: [Float], _ ref: [Float], rel: Float = 1e-4, _ what: String,
                            sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(a.count == ref.count, "\(what): sizes", sourceLocation: sourceLocation)
        guard a.count == ref.count else { return }
        let d = maxDiff(a, ref), tol = rel * (1 + maxAbs(ref))
        let finite = a.allSatisfy { $0.isFinite }
        #expect(finite, "\(what): non-finite values", sourceLocation: sourceLocation)
        #expect(d <= tol, "\(what): max|a-b| = \(d) > \(tol)", sourceLocation: sourceLocation)
    }

    /// Bitwise-equal arrays (NaN never equals); the failure names the first differing entry
    /// rather than printing the arrays.
    static func expectSame(_ a: [Float], _ b: [Float], _ what: String,
                           sourceLocation: SourceLocation = #_sourceLocation) {
        let firstDiff = a.count != b.count ? -1 : (a.indices.first { a[$0] != b[$0] } ?? a.count)
        let ok = firstDiff == a.count
        let detail = firstDiff < 0 ? "sizes \(a.count) vs \(b.count)" : "first difference at \(firstDiff)"
        #expect(ok, "\(what): \(detail)", sourceLocation: sourceLocation)
    }

    static func dot(_ a: [Float], _ b: [Float]) -> Double {
        var s = 0.0
        for i in a.indices { s += Double(a[i]) * Double(b[i]) }
        return s
    }

    /// Central differences of `loss` at the given entries of x, against `analytic`.
    static func expectFiniteDifferences(_ x: [Float], _ indices: [Int], _ analytic: [Float],
                                        _ what: String, h: Float = 1e-2,
                                        sourceLocation: SourceLocation = #_sourceLocation,
                                        loss: ([Float]) -> Double) {
        let scale = max(0.1 * maxAbs(analytic), 1e-6)
        var xs = x
        for i in indices {
            let x0 = xs[i]
            xs[i] = x0 + h
            let hp = xs[i]
            let fp = loss(xs)
            xs[i] = x0 - h
            let hm = xs[i]
            let fm = loss(xs)
            xs[i] = x0
            let fd = (fp - fm) / (Double(hp) - Double(hm))
            let an = Double(analytic[i])
            let tol = 2e-2 * max(abs(an), Double(scale))
            #expect(abs(fd - an) <= tol,
                    "\(what)[\(i)]: finite difference \(fd) vs analytic \(an) (tol \(tol))",
                    sourceLocation: sourceLocation)
        }
    }

    /// A few indices spread over 0..<n (first, last and some in between).
    static func sampleIndices(_ n: Int, count: Int = 6, rng: inout TestRNG) -> [Int] {
        if n <= count { return Array(0..<n) }
        var out = [0, n - 1]
        while out.count < count { out.append(Int(rng.next() % UInt64(n))) }
        return out
    }

    func i32(_ v: Int) -> Int32 { Int32(v) }

    // MARK: - Linear

    @Test func linearMatchesReference() {
        var rng = TestRNG(seed: 1)
        for (n, inF, outF) in [(1, 1, 1), (3, 7, 5), (17, 33, 9), (64, 40, 130), (5, 1, 3)] {
            let x = rng.array(n * inF), w = rng.array(outF * inF), b = rng.array(outF)
            for useBias in [true, false] {
                var y = [Float](repeating: .nan, count: n * outF), yr = y
                mr_linear_forward(i32(n), i32(inF), i32(outF), x, w, useBias ? b : nil, &y)
                mr_ref_linear_forward(i32(n), i32(inF), i32(outF), x, w, useBias ? b : nil, &yr)
                Self.expectClose(y, yr, "linear fwd \(n)x\(inF)->\(outF) bias \(useBias)")
            }
            let dy = rng.array(n * outF)
            let dw0 = rng.array(outF * inF), db0 = rng.array(outF)
            var dx = [Float](repeating: .nan, count: n * inF), dxr = dx
            var dw = dw0, dwr = dw0, db = db0, dbr = db0
            mr_linear_backward(i32(n), i32(inF), i32(outF), x, w, dy, &dx, &dw, &db)
            mr_ref_linear_backward(i32(n), i32(inF), i32(outF), x, w, dy, &dxr, &dwr, &dbr)
            Self.expectClose(dx, dxr, "linear dx \(n)x\(inF)->\(outF)")
            Self.expectClose(dw, dwr, "linear dw \(n)x\(inF)->\(outF)")
            Self.expectClose(db, dbr, "linear db \(n)x\(inF)->\(outF)")
            // nullable outputs
            var dw2 = dw0
            mr_linear_backward(i32(n), i32(inF), i32(outF), x, w, dy, nil, &dw2, nil)
            Self.expectClose(dw2, dwr, "linear dw only")
        }
    }

    @Test func linearGradientsAccumulate() {
        var rng = TestRNG(seed: 2)
        let (n, inF, outF) = (9, 13, 6)
        let x = rng.array(n * inF), w = rng.array(outF * inF), dy = rng.array(n * outF)
        for fast in [true, false] {
            let f = fast ? mr_linear_backward : mr_ref_linear_backward
            var dx = [Float](repeating: 0, count: n * inF)
            var dw = [Float](repeating: 0, count: outF * inF), db = [Float](repeating: 0, count: outF)
            f(i32(n), i32(inF), i32(outF), x, w, dy, &dx, &dw, &db)
            let dx1 = dx, dw1 = dw, db1 = db
            f(i32(n), i32(inF), i32(outF), x, w, dy, &dx, &dw, &db)
            Self.expectClose(dx, dx1, "linear dx overwritten (fast \(fast))")
            Self.expectClose(dw, dw1.map { 2 * $0 }, "linear dw doubles (fast \(fast))")
            Self.expectClose(db, db1.map { 2 * $0 }, "linear db doubles (fast \(fast))")
        }
    }

    @Test func linearReferenceFiniteDifferences() {
        var rng = TestRNG(seed: 3)
        let (n, inF, outF) = (4, 5, 3)
        let x = rng.array(n * inF), w = rng.array(outF * inF), b = rng.array(outF)
        let g = rng.array(n * outF)  // loss = <y, g>, so dy = g
        var dx = [Float](repeating: 0, count: n * inF)
        var dw = [Float](repeating: 0, count: outF * inF), db = [Float](repeating: 0, count: outF)
        mr_ref_linear_backward(i32(n), i32(inF), i32(outF), x, w, g, &dx, &dw, &db)
        func loss(_ x: [Float], _ w: [Float], _ b: [Float]) -> Double {
            var y = [Float](repeating: 0, count: n * outF)
            mr_ref_linear_forward(i32(n), i32(inF), i32(outF), x, w, b, &y)
            return Self.dot(y, g)
        }
        Self.expectFiniteDifferences(x, Array(0..<(n * inF)), dx, "linear dx") { loss($0, w, b) }
        Self.expectFiniteDifferences(w, Array(0..<(outF * inF)), dw, "linear dw") { loss(x, $0, b) }
        Self.expectFiniteDifferences(b, Array(0..<outF), db, "linear db") { loss(x, w, $0) }
    }

    // MARK: - GroupNorm

    /// (batch, channels, hw, groups, offset of the inputs)
    static let gnCases: [(Int, Int, Int, Int, Float)] = [
        (1, 4, 1, 2, 0), (2, 6, 7, 3, 0.5), (2, 12, 63, 4, 0), (1, 20, 64, 5, 1000),
        (3, 3, 5, 1, -3), (1, 32, 9, 32, 0), (2, 10, 1, 10, 0),
    ]

    @Test func groupNormForwardMatchesReference() {
        var rng = TestRNG(seed: 4)
        for (batch, ch, hw, groups, offset) in Self.gnCases {
            let n = batch * ch * hw
            let x = rng.array(n, scale: 2, offset: offset)
            let gamma = rng.array(ch, scale: 0.5, offset: 1), beta = rng.array(ch, scale: 0.5)
            let tag = "gn \(batch)x\(ch)x\(hw) g\(groups) off \(offset)"
            for fuse in [Int32(0), 1] {
                var y = [Float](repeating: .nan, count: n), yr = y
                var mean = [Float](repeating: .nan, count: batch * groups), rstd = mean
                var meanr = mean, rstdr = mean
                mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, gamma,
                                      beta, &y, &mean, &rstd, fuse)
                mr_ref_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x,
                                          gamma, beta, &yr, &meanr, &rstdr, fuse)
                Self.expectClose(y, yr, "\(tag) y fuse \(fuse)")
                Self.expectClose(mean, meanr, rel: 1e-6, "\(tag) mean")
                Self.expectClose(rstd, rstdr, "\(tag) rstd")
                // mean/rstd nullable
                var y2 = [Float](repeating: .nan, count: n)
                mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, gamma,
                                      beta, &y2, nil, nil, fuse)
                Self.expectSame(y2, y, "\(tag): result without mean/rstd")
            }
        }
    }

    /// A parallel region leaves its caller's serial mark as it found it, whatever the kernel
    /// thread count is meanwhile. (It once read the mark as "parts == 1", so a region started
    /// while one kernel thread was set left its caller serial for good, and that thread's later
    /// forwards took another path and other roundings.)
    @Test func aParallelRegionKeepsItsCallersSerialMark() {
        GlobalKernelSettings.exclusive {
            let before = mr_get_threads()
            defer { mr_set_threads(before); mr_set_thread_serial(0) }
            let tick: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void = { ctx, part in
                ctx!.assumingMemoryBound(to: Int32.self)[Int(part)] = 1
            }
            for threads in [Int32(1), 2] {
                for mark in [Int32(0), 1] {
                    mr_set_threads(threads)
                    mr_set_thread_serial(mark)
                    var ran: [Int32] = [0, 0]
                    ran.withUnsafeMutableBufferPointer { mr_run_parts(2, tick, $0.baseAddress) }
                    #expect(ran == [1, 1])
                    #expect(mr_thread_serial() == mark, "\(threads) kernel threads, caller marked \(mark)")
                }
            }
            mr_set_thread_serial(0)
            mr_set_threads(2)
            #expect(mr_parallel_parts() == 2)
        }
    }

    /// Large enough to be split over the pool: every group is computed whole by one part, so two
    /// threads give the bytes one thread gives, and both match the reference (an odd number of
    /// groups over two parts included).
    @Test func groupNormSplitOverThreadsMatchesOneThread() {
        GlobalKernelSettings.exclusive {
            let before = mr_get_threads()
            defer { mr_set_threads(before) }
            var rng = TestRNG(seed: 12)
            for (batch, ch, hw, groups) in [(3, 32, 1024, 8), (1, 96, 1024, 3), (2, 64, 64, 32)] {
                let n = batch * ch * hw
                let x = rng.array(n, scale: 2, offset: 0.5)
                let gamma = rng.array(ch, scale: 0.5, offset: 1), beta = rng.array(ch, scale: 0.5)
                for fuse in [Int32(0), 1] {
                    var one = [Float](repeating: .nan, count: n), two = one, ref = one
                    var m1 = [Float](repeating: .nan, count: batch * groups), r1 = m1, m2 = m1, r2 = m1, mr = m1, rr = m1
                    mr_set_threads(1)
                    mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, gamma, beta, &one, &m1, &r1, fuse)
                    mr_set_threads(2)
                    mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, gamma, beta, &two, &m2, &r2, fuse)
                    mr_ref_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, gamma, beta, &ref, &mr, &rr, fuse)
                    let tag = "gn \(batch)x\(ch)x\(hw) g\(groups) fuse \(fuse)"
                    Self.expectSame(two, one, "\(tag): 2 threads")
                    Self.expectSame(m2, m1, "\(tag): mean")
                    Self.expectSame(r2, r1, "\(tag): rstd")
                    Self.expectClose(two, ref, "\(tag): reference")
                }
            }
        }
    }

    /// Whether OpenBLAS runs its AVX-512 kernels (those `gen` selects on an AVX-512 CPU unless
    /// OPENBLAS_CORETYPE says otherwise). Its Haswell kernels handle the tail rows and columns of
    /// a part in another order than one serial call does (seen on an AMD EPYC whose environment
    /// set OPENBLAS_CORETYPE=Haswell, 2026-12-08: the last bits differ from row 144 of 300 on 2
    /// cores).
    static let blasKernelsAreAVX512: Bool = {
        let name = String(cString: mr_blas_corename()).lowercased()
        return ["skylakex", "cooperlake", "sapphirerapids"].contains { name.contains($0) }
    }()

    /// Linear layers split over the pool by rows, or by output features when there are fewer
    /// rows than features (an 8x8 image's attention: 64 rows of 256), and attention split by
    /// (batch, head) pairs: the bytes of one core on 2 and 3 with OpenBLAS's AVX-512 kernels
    /// (within 1e-5 with others), and the references.
    @Test func linearAndAttentionSplitsMatchOneThread() {
        GlobalKernelSettings.exclusive {
            let before = mr_get_threads()
            defer { mr_set_threads(before) }
            var rng = TestRNG(seed: 21)
            for (n, inF, outF) in [(64, 256, 256), (40, 96, 250), (300, 64, 48), (7, 512, 100)] {
                let x = rng.array(n * inF), w = rng.array(outF * inF), b = rng.array(outF)
                for bias in [true, false] {
                    var outs: [[Float]] = []
                    for t in [1, 2, 3] {
                        mr_set_threads(Int32(t))
                        var y = [Float](repeating: .nan, count: n * outF)
                        mr_linear_forward(i32(n), i32(inF), i32(outF), x, w, bias ? b : nil, &y)
                        outs.append(y)
                    }
                    var yr = [Float](repeating: .nan, count: n * outF)
                    mr_ref_linear_forward(i32(n), i32(inF), i32(outF), x, w, bias ? b : nil, &yr)
                    let tag = "linear \(n)x\(inF)->\(outF) bias \(bias)"
                    if Self.blasKernelsAreAVX512 {
                        Self.expectSame(outs[1], outs[0], "\(tag): 2 threads")
                        Self.expectSame(outs[2], outs[0], "\(tag): 3 threads")
                    } else {
                        Self.expectClose(outs[1], outs[0], rel: 1e-5, "\(tag): 2 threads")
                        Self.expectClose(outs[2], outs[0], rel: 1e-5, "\(tag): 3 threads")
                    }
                    Self.expectClose(outs[0], yr, "\(tag): reference")
                }
            }
            for (batch, heads, L, d) in [(1, 8, 64, 32), (2, 3, 64, 32), (1, 5, 100, 16)] {
                let count = batch * L * heads * d
                let q = rng.array(count, scale: 2), k = rng.array(count, scale: 2), v = rng.array(count)
                let scale = 1 / Float(d).squareRoot()
                var outs: [[Float]] = [], probs: [[Float]] = []
                for t in [1, 2, 3] {
                    mr_set_threads(Int32(t))
                    var o = [Float](repeating: .nan, count: count), o2 = o
                    var p = [Float](repeating: .nan, count: batch * heads * L * L)
                    mr_attention_forward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, &o, &p)
                    mr_attention_forward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, &o2, nil)
                    Self.expectSame(o2, o, "attention b\(batch) h\(heads): probs NULL, \(t) threads")
                    outs.append(o)
                    probs.append(p)
                }
                var or = [Float](repeating: .nan, count: count), pr = [Float](repeating: .nan, count: batch * heads * L * L)
                mr_ref_attention_forward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, &or, &pr)
                let tag = "attention b\(batch) h\(heads) L\(L) d\(d)"
                Self.expectSame(outs[1], outs[0], "\(tag): 2 threads")
                Self.expectSame(outs[2], outs[0], "\(tag): 3 threads")
                Self.expectSame(probs[2], probs[0], "\(tag): probs, 3 threads")
                Self.expectClose(outs[0], or, "\(tag): reference")
            }
        }
    }

    /// The channels-first attention (an attention block's inference) against the reference on the
    /// token layout, transposed; the same bytes on 1, 2 and 3 cores.
    @Test func channelsFirstAttentionMatchesReference() {
        GlobalKernelSettings.exclusive {
            let before = mr_get_threads()
            defer { mr_set_threads(before) }
            var rng = TestRNG(seed: 31)
            for (batch, heads, L, d) in [(1, 1, 1, 1), (2, 3, 5, 8), (1, 8, 64, 32), (2, 2, 63, 5), (1, 1, 1100, 2)] {
                let count = batch * L * heads * d, c = heads * d
                let q = rng.array(count, scale: 2), k = rng.array(count, scale: 2), v = rng.array(count)
                // [batch, c, L] -> [batch, L, c]
                func tokens(_ a: [Float]) -> [Float] {
                    var t = [Float](repeating: 0, count: count)
                    for b in 0..<batch { for ch in 0..<c { for l in 0..<L { t[(b * L + l) * c + ch] = a[(b * c + ch) * L + l] } } }
                    return t
                }
                let scale = 1 / Float(d).squareRoot()
                var or = [Float](repeating: .nan, count: count), pr = [Float](repeating: .nan, count: batch * heads * L * L)
                mr_ref_attention_forward(i32(batch), i32(heads), i32(L), i32(d), scale, tokens(q), tokens(k), tokens(v), &or, &pr)
                var outs: [[Float]] = []
                for t in [1, 2, 3] {
                    mr_set_threads(Int32(t))
                    var o = [Float](repeating: .nan, count: count)
                    mr_attention_forward_cf(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, &o)
                    outs.append(o)
                }
                let tag = "attention cf b\(batch) h\(heads) L\(L) d\(d)"
                Self.expectClose(tokens(outs[0]), or, "\(tag): reference")
                Self.expectSame(outs[1], outs[0], "\(tag): 2 threads")
                Self.expectSame(outs[2], outs[0], "\(tag): 3 threads")
            }
        }
    }

    @Test func groupNormFusedSiLUMatchesSeparate() {
        var rng = TestRNG(seed: 5)
        for (batch, ch, hw, groups, offset) in Self.gnCases {
            let n = batch * ch * hw
            let x = rng.array(n, scale: 3, offset: offset)
            let gamma = rng.array(ch, scale: 2), beta = rng.array(ch, scale: 2)
            var fused = [Float](repeating: 0, count: n), plain = fused, sep = fused
            mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-6, x, gamma, beta,
                                  &fused, nil, nil, 1)
            mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-6, x, gamma, beta,
                                  &plain, nil, nil, 0)
            mr_silu_forward(n, plain, &sep)
            Self.expectClose(fused, sep, rel: 1e-6, "gn+silu \(batch)x\(ch)x\(hw) g\(groups)")
        }
    }

    @Test func groupNormInPlace() {
        var rng = TestRNG(seed: 6)
        let (batch, ch, hw, groups) = (2, 6, 11, 3)
        let x = rng.array(batch * ch * hw, scale: 2, offset: 1)
        let gamma = rng.array(ch), beta = rng.array(ch)
        for fuse in [Int32(0), 1] {
            var y = [Float](repeating: 0, count: x.count)
            mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, gamma, beta,
                                  &y, nil, nil, fuse)
            var buf = x
            buf.withUnsafeMutableBufferPointer { p in
                mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, p.baseAddress,
                                      gamma, beta, p.baseAddress, nil, nil, fuse)
            }
            Self.expectSame(buf, y, "gn in place, fuse \(fuse)")
        }
    }

    /// gamma = NULL means ones, beta = NULL zeros, in the forward and backward, fast and reference.
    @Test func groupNormNullGammaBeta() {
        var rng = TestRNG(seed: 22)
        let (batch, ch, hw, groups) = (2, 6, 13, 3)
        let n = batch * ch * hw
        let x = rng.array(n, scale: 2, offset: 0.5), dy = rng.array(n)
        let ones = [Float](repeating: 1, count: ch), zeros = [Float](repeating: 0, count: ch)
        for fast in [true, false] {
            let fwd = fast ? mr_group_norm_forward : mr_ref_group_norm_forward
            let bwd = fast ? mr_group_norm_backward : mr_ref_group_norm_backward
            for fuse in [Int32(0), 1] {
                var y = [Float](repeating: .nan, count: n), yNull = y
                var mean = [Float](repeating: 0, count: batch * groups), rstd = mean
                fwd(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, ones, zeros, &y, &mean,
                    &rstd, fuse)
                fwd(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, nil, nil, &yNull, nil, nil,
                    fuse)
                Self.expectSame(yNull, y, "gn NULL gamma/beta = ones/zeros (fast \(fast), fuse \(fuse))")
                var y2 = [Float](repeating: .nan, count: n)
                let beta = rng.array(ch)
                fwd(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, nil, beta, &y2, nil, nil, fuse)
                fwd(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, ones, beta, &y, nil, nil, fuse)
                Self.expectSame(y2, y, "gn NULL gamma alone (fast \(fast), fuse \(fuse))")
                let gamma = rng.array(ch)
                fwd(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, gamma, nil, &y2, nil, nil, fuse)
                fwd(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, gamma, zeros, &y, nil, nil, fuse)
                Self.expectSame(y2, y, "gn NULL beta alone (fast \(fast), fuse \(fuse))")
            }
            var y = [Float](repeating: 0, count: n)
            var mean = [Float](repeating: 0, count: batch * groups), rstd = mean
            fwd(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, nil, nil, &y, &mean, &rstd, 0)
            var dx = [Float](repeating: .nan, count: n), dxNull = dx
            var dg = zeros, db = zeros, dgNull = zeros, dbNull = zeros
            bwd(i32(batch), i32(ch), i32(hw), i32(groups), x, ones, mean, rstd, dy, &dx, &dg, &db)
            bwd(i32(batch), i32(ch), i32(hw), i32(groups), x, nil, mean, rstd, dy, &dxNull, &dgNull,
                &dbNull)
            Self.expectSame(dxNull, dx, "gn bwd NULL gamma dx (fast \(fast))")
            Self.expectSame(dgNull, dg, "gn bwd NULL gamma dgamma (fast \(fast))")
            Self.expectSame(dbNull, db, "gn bwd NULL gamma dbeta (fast \(fast))")
        }
        // and the fast NULL case against the reference NULL case
        var y = [Float](repeating: .nan, count: n), yr = y
        mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, nil, nil, &y, nil,
                              nil, 1)
        mr_ref_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, nil, nil, &yr,
                                  nil, nil, 1)
        Self.expectClose(y, yr, "gn+silu NULL gamma/beta vs reference")
    }

    @Test func groupNormBackwardInPlace() {
        var rng = TestRNG(seed: 23)
        let (batch, ch, hw, groups) = (2, 8, 9, 4)
        let n = batch * ch * hw
        let x = rng.array(n, offset: 0.2), gamma = rng.array(ch), beta = rng.array(ch)
        let dy = rng.array(n)
        var y = [Float](repeating: 0, count: n)
        var mean = [Float](repeating: 0, count: batch * groups), rstd = mean
        mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, gamma, beta, &y,
                              &mean, &rstd, 0)
        for fast in [true, false] {
            let f = fast ? mr_group_norm_backward : mr_ref_group_norm_backward
            var dx = [Float](repeating: 0, count: n)
            var dg = [Float](repeating: 0, count: ch), db = dg, dg2 = dg, db2 = dg
            f(i32(batch), i32(ch), i32(hw), i32(groups), x, gamma, mean, rstd, dy, &dx, &dg, &db)
            var buf = dy
            buf.withUnsafeMutableBufferPointer { p in
                f(i32(batch), i32(ch), i32(hw), i32(groups), x, gamma, mean, rstd, p.baseAddress,
                  p.baseAddress, &dg2, &db2)
            }
            Self.expectSame(buf, dx, "gn backward dx = dy in place (fast \(fast))")
            Self.expectSame(dg2, dg, "gn backward in place dgamma (fast \(fast))")
            Self.expectSame(db2, db, "gn backward in place dbeta (fast \(fast))")
        }
    }

    @Test func groupNormBackwardMatchesReference() {
        var rng = TestRNG(seed: 7)
        for (batch, ch, hw, groups, offset) in Self.gnCases {
            let n = batch * ch * hw
            let x = rng.array(n, scale: 2, offset: offset)
            let gamma = rng.array(ch, scale: 0.5, offset: 1), beta = rng.array(ch)
            var y = [Float](repeating: 0, count: n)
            var mean = [Float](repeating: 0, count: batch * groups), rstd = mean
            mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, gamma, beta,
                                  &y, &mean, &rstd, 0)
            let dy = rng.array(n)
            let dg0 = rng.array(ch), db0 = rng.array(ch)
            var dx = [Float](repeating: .nan, count: n), dxr = dx
            var dg = dg0, dgr = dg0, db = db0, dbr = db0
            mr_group_norm_backward(i32(batch), i32(ch), i32(hw), i32(groups), x, gamma, mean, rstd,
                                   dy, &dx, &dg, &db)
            mr_ref_group_norm_backward(i32(batch), i32(ch), i32(hw), i32(groups), x, gamma, mean,
                                       rstd, dy, &dxr, &dgr, &dbr)
            let tag = "gn bwd \(batch)x\(ch)x\(hw) g\(groups) off \(offset)"
            Self.expectClose(dx, dxr, "\(tag) dx")
            Self.expectClose(dg, dgr, "\(tag) dgamma")
            Self.expectClose(db, dbr, "\(tag) dbeta")
            // dx nullable; parameter gradients alone
            var dg2 = dg0, db2 = db0
            mr_group_norm_backward(i32(batch), i32(ch), i32(hw), i32(groups), x, gamma, mean, rstd,
                                   dy, nil, &dg2, &db2)
            Self.expectClose(dg2, dgr, "\(tag) dgamma without dx")
            Self.expectClose(db2, dbr, "\(tag) dbeta without dx")
        }
    }

    @Test func groupNormGradientsAccumulate() {
        var rng = TestRNG(seed: 8)
        let (batch, ch, hw, groups) = (2, 6, 7, 2)
        let n = batch * ch * hw
        let x = rng.array(n), gamma = rng.array(ch), beta = rng.array(ch), dy = rng.array(n)
        var y = [Float](repeating: 0, count: n)
        var mean = [Float](repeating: 0, count: batch * groups), rstd = mean
        mr_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), 1e-5, x, gamma, beta, &y,
                              &mean, &rstd, 0)
        for fast in [true, false] {
            let f = fast ? mr_group_norm_backward : mr_ref_group_norm_backward
            var dx = [Float](repeating: 0, count: n)
            var dg = [Float](repeating: 0, count: ch), db = dg
            f(i32(batch), i32(ch), i32(hw), i32(groups), x, gamma, mean, rstd, dy, &dx, &dg, &db)
            let dx1 = dx, dg1 = dg, db1 = db
            f(i32(batch), i32(ch), i32(hw), i32(groups), x, gamma, mean, rstd, dy, &dx, &dg, &db)
            Self.expectSame(dx, dx1, "gn dx overwritten (fast \(fast))")
            Self.expectClose(dg, dg1.map { 2 * $0 }, "gn dgamma doubles (fast \(fast))")
            Self.expectClose(db, db1.map { 2 * $0 }, "gn dbeta doubles (fast \(fast))")
        }
    }

    @Test func groupNormReferenceFiniteDifferences() {
        var rng = TestRNG(seed: 9)
        for (batch, ch, hw, groups) in [(2, 6, 5, 3), (1, 4, 7, 1), (1, 3, 1, 3), (1, 2, 3, 1)] {
            let n = batch * ch * hw
            let x = rng.array(n, offset: 0.3), gamma = rng.array(ch, offset: 0.5)
            let beta = rng.array(ch), g = rng.array(n)
            let eps: Float = 1e-5
            var y = [Float](repeating: 0, count: n)
            var mean = [Float](repeating: 0, count: batch * groups), rstd = mean
            mr_ref_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), eps, x, gamma,
                                      beta, &y, &mean, &rstd, 0)
            var dx = [Float](repeating: 0, count: n)
            var dg = [Float](repeating: 0, count: ch), db = dg
            mr_ref_group_norm_backward(i32(batch), i32(ch), i32(hw), i32(groups), x, gamma, mean,
                                       rstd, g, &dx, &dg, &db)
            func loss(_ x: [Float], _ gamma: [Float], _ beta: [Float]) -> Double {
                var y = [Float](repeating: 0, count: n)
                mr_ref_group_norm_forward(i32(batch), i32(ch), i32(hw), i32(groups), eps, x, gamma,
                                          beta, &y, nil, nil, 0)
                return Self.dot(y, g)
            }
            let tag = "gn \(batch)x\(ch)x\(hw) g\(groups)"
            if hw * ch / groups > 1 {  // a group of one value has a zero gradient wrt x
                Self.expectFiniteDifferences(x, Self.sampleIndices(n, count: 8, rng: &rng), dx,
                                             "\(tag) dx") { loss($0, gamma, beta) }
            }
            Self.expectFiniteDifferences(gamma, Array(0..<ch), dg, "\(tag) dgamma") {
                loss(x, $0, beta)
            }
            Self.expectFiniteDifferences(beta, Array(0..<ch), db, "\(tag) dbeta") {
                loss(x, gamma, $0)
            }
        }
    }

    // MARK: - Fast exp

    /// mr_exp_approx against libm's exp (in double) over [-87, 88]: evenly spaced points, the
    /// points where the range reduction switches n (odd multiples of ln2 / 2, and their float
    /// neighbours), and a dense patch around 0.  Bound: relative error <= 1e-6 (2.2e-7 measured
    /// over every float of [-87.33, 88.37]).
    @Test func expApproxMatchesLibm() {
        var xs = [Float]()
        let steps = 1 << 20
        for i in 0...steps { xs.append(-87 + 175 * Float(i) / Float(steps)) }
        let ln2 = 0.6931471805599453
        for k in -126...126 {
            let b = Float((Double(k) + 0.5) * ln2)
            guard b >= -87, b <= 88 else { continue }
            var lo = b, hi = b
            for _ in 0..<8 { lo = lo.nextDown; hi = hi.nextUp; xs.append(lo); xs.append(hi) }
            xs.append(b)
        }
        for i in 0..<(1 << 16) { xs.append(Float(i - (1 << 15)) / Float(1 << 15)) }
        xs += [0, -0.0, 1, -1, Float.leastNormalMagnitude, -Float.leastNormalMagnitude, 1e-30,
               -87, 88, -86.99, 87.99]
        var y = [Float](repeating: .nan, count: xs.count)
        mr_exp_approx(xs.count, xs, &y)
        var worst = 0.0, worstX: Float = 0
        for i in xs.indices {
            let e = Foundation.exp(Double(xs[i]))
            let rel = abs(Double(y[i]) - e) / e
            if !(rel <= worst) { worst = rel; worstX = xs[i] }  // a NaN lands here too
        }
        #expect(worst <= 1e-6, "exp approx: max relative error \(worst) at x = \(worstX)")
        #expect(y[xs.count - 11] == 1 && y[xs.count - 10] == 1, "exp(±0) = 1 exactly")

        // Outside the range: finite saturation above, 0 far below, NaN through.
        let special: [Float] = [.infinity, 1000, 88.5, -.infinity, -1000, -87.7, .nan,
                                -.greatestFiniteMagnitude, .greatestFiniteMagnitude]
        var ys = [Float](repeating: -1, count: special.count)
        mr_exp_approx(special.count, special, &ys)
        #expect(ys[0].isFinite && ys[0] > 2.3e38 && ys[1] == ys[0] && ys[2] == ys[0],
                "exp saturates finitely: \(ys)")
        #expect(ys[3] == 0 && ys[4] == 0 && ys[5] == 0 && ys[7] == 0, "exp underflows to 0: \(ys)")
        #expect(ys[6].isNaN, "exp(NaN) = NaN: \(ys[6])")
        #expect(ys[8] == ys[0], "exp(FLT_MAX) saturates: \(ys[8])")

        // in place, y = x
        var a = Array(xs.prefix(1001))
        a.withUnsafeMutableBufferPointer { mr_exp_approx($0.count, $0.baseAddress, $0.baseAddress) }
        Self.expectSame(a, Array(y.prefix(1001)), "exp approx in place")
    }

    // MARK: - SiLU

    @Test func siluMatchesReference() {
        var rng = TestRNG(seed: 10)
        for n in [1, 7, 63, 1000] {
            var x = rng.array(n, scale: 12)
            if n >= 7 { x[0] = 100; x[1] = -100; x[2] = 0; x[3] = 88.8; x[4] = -88.8; x[5] = 1e-30 }
            var y = [Float](repeating: .nan, count: n), yr = y
            mr_silu_forward(n, x, &y)
            mr_ref_silu_forward(n, x, &yr)
            Self.expectClose(y, yr, rel: 1e-6, "silu fwd n \(n)")
            let dy = rng.array(n)
            var dx = [Float](repeating: .nan, count: n), dxr = dx
            mr_silu_backward(n, x, dy, &dx)
            mr_ref_silu_backward(n, x, dy, &dxr)
            Self.expectClose(dx, dxr, rel: 1e-6, "silu bwd n \(n)")
            let finite = yr.allSatisfy { $0.isFinite } && dxr.allSatisfy { $0.isFinite }
            #expect(finite, "silu reference finite, n \(n)")
        }
    }

    @Test func siluLargeInputs() {
        let x: [Float] = [100, -100, 1000, -1000, .greatestFiniteMagnitude, -.greatestFiniteMagnitude]
        var y = [Float](repeating: .nan, count: x.count)
        var dx = y
        let dy = [Float](repeating: 1, count: x.count)
        mr_silu_forward(x.count, x, &y)
        mr_silu_backward(x.count, x, dy, &dx)
        #expect(y.allSatisfy { $0.isFinite }, "silu: \(y)")
        #expect(dx.allSatisfy { $0.isFinite }, "silu': \(dx)")
        #expect(y[0] == 100 && y[2] == 1000)
        #expect(abs(y[1]) < 1e-30 && abs(y[3]) < 1e-30)
        #expect(dx[0] == 1 && abs(dx[1]) < 1e-30)
    }

    @Test func siluInPlace() {
        var rng = TestRNG(seed: 11)
        let x = rng.array(37, scale: 5), dy = rng.array(37)
        var y = [Float](repeating: 0, count: 37), dx = y
        mr_silu_forward(37, x, &y)
        mr_silu_backward(37, x, dy, &dx)
        var a = x
        a.withUnsafeMutableBufferPointer { mr_silu_forward(37, $0.baseAddress, $0.baseAddress) }
        Self.expectSame(a, y, "silu in place")
        var b = dy
        b.withUnsafeMutableBufferPointer { mr_silu_backward(37, x, $0.baseAddress, $0.baseAddress) }
        Self.expectSame(b, dx, "silu backward in place")
    }

    @Test func siluReferenceFiniteDifferences() {
        let x: [Float] = [-6, -2.5, -1, -0.3, 0, 0.2, 1, 3, 7]
        let ones = [Float](repeating: 1, count: x.count)
        var dx = [Float](repeating: 0, count: x.count)
        mr_ref_silu_backward(x.count, x, ones, &dx)
        for i in x.indices {
            // loss = silu(x[i]) alone
            Self.expectFiniteDifferences([x[i]], [0], [dx[i]], "silu'(\(x[i]))") { v in
                var y: [Float] = [0]
                mr_ref_silu_forward(1, v, &y)
                return Double(y[0])
            }
        }
    }

    // MARK: - Softmax

    @Test func softmaxMatchesReference() {
        var rng = TestRNG(seed: 12)
        for (rows, n, scale, offset) in [(1, 1, Float(1), Float(0)), (3, 5, 4, 0), (7, 64, 10, 50),
                                         (2, 100, 30, -1000), (5, 17, 1, 0)] {
            let x = rng.array(rows * n, scale: scale, offset: offset)
            var y = [Float](repeating: .nan, count: rows * n), yr = y
            mr_softmax_forward(i32(rows), i32(n), x, &y)
            mr_ref_softmax_forward(i32(rows), i32(n), x, &yr)
            Self.expectClose(y, yr, rel: 1e-5, "softmax \(rows)x\(n)")
            for r in 0..<rows {
                let s = y[(r * n)..<((r + 1) * n)].reduce(0, +)
                #expect(abs(s - 1) < 1e-5, "softmax row \(r) sums to \(s)")
            }
            let dy = rng.array(rows * n)
            var dx = [Float](repeating: .nan, count: rows * n), dxr = dx
            mr_softmax_backward(i32(rows), i32(n), y, dy, &dx)
            mr_ref_softmax_backward(i32(rows), i32(n), y, dy, &dxr)
            Self.expectClose(dx, dxr, rel: 1e-5, "softmax bwd \(rows)x\(n)")
            // in place: y = x
            var a = x
            a.withUnsafeMutableBufferPointer {
                mr_softmax_forward(i32(rows), i32(n), $0.baseAddress, $0.baseAddress)
            }
            Self.expectSame(a, y, "softmax in place")
            // backward in place: dx = dy, and dx = y
            var g = dy
            g.withUnsafeMutableBufferPointer {
                mr_softmax_backward(i32(rows), i32(n), y, $0.baseAddress, $0.baseAddress)
            }
            Self.expectSame(g, dx, "softmax backward dx = dy")
            var yy = y
            yy.withUnsafeMutableBufferPointer {
                mr_softmax_backward(i32(rows), i32(n), $0.baseAddress, dy, $0.baseAddress)
            }
            Self.expectSame(yy, dx, "softmax backward dx = y")
        }
    }

    /// Entries far below the row max (beyond exp's range) come out as 0, never NaN, and the rows
    /// still sum to 1; -inf entries (masking) too.
    @Test func softmaxWideRange() {
        let n = 37
        var x = [Float](repeating: 0, count: 2 * n)
        for i in 0..<n { x[i] = Float(i) * -10; x[n + i] = i % 3 == 0 ? -.infinity : Float(i) }
        var y = [Float](repeating: .nan, count: x.count), yr = y
        mr_softmax_forward(2, i32(n), x, &y)
        mr_ref_softmax_forward(2, i32(n), x, &yr)
        Self.expectClose(y, yr, rel: 1e-6, "softmax wide range")
        // row 0: x = 0, -10, ..., -360; from -90 on (beyond -87.68) exp is exactly 0
        #expect(y[0] > 0.9999 && y[1...8].allSatisfy { $0 > 0 && $0 < 1e-4 }
                    && y[9...(n - 1)].allSatisfy { $0 == 0 },
                "softmax: far entries are 0: \(Array(y[0..<n]))")
        #expect(stride(from: n, to: 2 * n, by: 3).allSatisfy { y[$0] == 0 }, "softmax: -inf entries are 0")
        for r in 0..<2 {
            let s = y[(r * n)..<((r + 1) * n)].reduce(0, +)
            #expect(abs(s - 1) < 1e-6, "softmax wide row \(r) sums to \(s)")
        }
    }

    @Test func softmaxReferenceFiniteDifferences() {
        var rng = TestRNG(seed: 13)
        for (rows, n) in [(2, 5), (1, 1), (3, 9)] {
            let x = rng.array(rows * n, scale: 2), g = rng.array(rows * n)
            var y = [Float](repeating: 0, count: rows * n), dx = y
            mr_ref_softmax_forward(i32(rows), i32(n), x, &y)
            mr_ref_softmax_backward(i32(rows), i32(n), y, g, &dx)
            Self.expectFiniteDifferences(x, Array(0..<(rows * n)), dx, "softmax \(rows)x\(n)") { x in
                var y = [Float](repeating: 0, count: rows * n)
                mr_ref_softmax_forward(i32(rows), i32(n), x, &y)
                return Self.dot(y, g)
            }
        }
    }

    // MARK: - Attention

    /// (batch, heads, L, d)
    static let attnCases: [(Int, Int, Int, Int)] = [
        (1, 1, 1, 1), (2, 3, 5, 8), (1, 4, 64, 8), (2, 2, 7, 1), (1, 2, 63, 5), (3, 1, 16, 3),
        (1, 1, 1100, 2),  // L*L > the 2^20-float scratch: several row blocks when probs is NULL
    ]

    @Test func attentionMatchesReference() {
        var rng = TestRNG(seed: 14)
        for (batch, heads, L, d) in Self.attnCases {
            let n = batch * L * heads * d
            let q = rng.array(n, scale: 2), k = rng.array(n, scale: 2), v = rng.array(n)
            let scale = 1 / Float(d).squareRoot()
            let tag = "attn b\(batch) h\(heads) L\(L) d\(d)"
            var o = [Float](repeating: .nan, count: n), or = o, o2 = o
            var p = [Float](repeating: .nan, count: batch * heads * L * L), pr = p
            mr_attention_forward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, &o, &p)
            mr_ref_attention_forward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, &or,
                                     &pr)
            Self.expectClose(o, or, "\(tag) o")
            Self.expectClose(p, pr, rel: 1e-5, "\(tag) probs")
            mr_attention_forward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, &o2, nil)
            Self.expectClose(o2, or, "\(tag) o (probs NULL)")

            let dout = rng.array(n)
            var dq = [Float](repeating: .nan, count: n), dk = dq, dv = dq
            var dqr = dq, dkr = dq, dvr = dq
            mr_attention_backward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, p, dout,
                                  &dq, &dk, &dv)
            mr_ref_attention_backward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, pr,
                                      dout, &dqr, &dkr, &dvr)
            Self.expectClose(dq, dqr, "\(tag) dq")
            Self.expectClose(dk, dkr, "\(tag) dk")
            Self.expectClose(dv, dvr, "\(tag) dv")
            // probs NULL: recomputed in row blocks
            var dq2 = [Float](repeating: .nan, count: n), dk2 = dq2, dv2 = dq2
            mr_attention_backward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, nil,
                                  dout, &dq2, &dk2, &dv2)
            Self.expectClose(dq2, dqr, "\(tag) dq (probs NULL)")
            Self.expectClose(dk2, dkr, "\(tag) dk (probs NULL)")
            Self.expectClose(dv2, dvr, "\(tag) dv (probs NULL)")
        }
    }

    @Test func attentionBackwardOverwrites() {
        var rng = TestRNG(seed: 15)
        let (batch, heads, L, d) = (2, 2, 9, 4)
        let n = batch * L * heads * d
        let q = rng.array(n), k = rng.array(n), v = rng.array(n), dout = rng.array(n)
        var o = [Float](repeating: 0, count: n), p = [Float](repeating: 0, count: batch * heads * L * L)
        mr_attention_forward(i32(batch), i32(heads), i32(L), i32(d), 0.5, q, k, v, &o, &p)
        var dq = [Float](repeating: 0, count: n), dk = dq, dv = dq
        mr_attention_backward(i32(batch), i32(heads), i32(L), i32(d), 0.5, q, k, v, p, dout, &dq,
                              &dk, &dv)
        var dq2 = [Float](repeating: 7, count: n), dk2 = dq2, dv2 = dq2
        mr_attention_backward(i32(batch), i32(heads), i32(L), i32(d), 0.5, q, k, v, p, dout, &dq2,
                              &dk2, &dv2)
        Self.expectSame(dq2, dq, "dq overwritten")
        Self.expectSame(dk2, dk, "dk overwritten")
        Self.expectSame(dv2, dv, "dv overwritten")
    }

    @Test func attentionReferenceFiniteDifferences() {
        var rng = TestRNG(seed: 16)
        for (batch, heads, L, d) in [(1, 2, 4, 3), (2, 1, 3, 2), (1, 1, 1, 2)] {
            let n = batch * L * heads * d
            let q = rng.array(n), k = rng.array(n), v = rng.array(n), g = rng.array(n)
            let scale: Float = 0.7
            var o = [Float](repeating: 0, count: n), p = [Float](repeating: 0, count: batch * heads * L * L)
            mr_ref_attention_forward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, &o, &p)
            var dq = [Float](repeating: 0, count: n), dk = dq, dv = dq
            mr_ref_attention_backward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, p, g,
                                      &dq, &dk, &dv)
            func loss(_ q: [Float], _ k: [Float], _ v: [Float]) -> Double {
                var o = [Float](repeating: 0, count: n)
                mr_ref_attention_forward(i32(batch), i32(heads), i32(L), i32(d), scale, q, k, v, &o,
                                         nil)
                return Self.dot(o, g)
            }
            let tag = "attn b\(batch) h\(heads) L\(L) d\(d)"
            let idx = Self.sampleIndices(n, count: 8, rng: &rng)
            if L > 1 {  // with one token, softmax is constant: dq = dk = 0
                Self.expectFiniteDifferences(q, idx, dq, "\(tag) dq") { loss($0, k, v) }
                Self.expectFiniteDifferences(k, idx, dk, "\(tag) dk") { loss(q, $0, v) }
            } else {
                let zero = dq.allSatisfy { $0 == 0 } && dk.allSatisfy { $0 == 0 }
                #expect(zero, "\(tag): one token, dq = dk = 0")
            }
            Self.expectFiniteDifferences(v, idx, dv, "\(tag) dv") { loss(q, k, $0) }
        }
    }

    // MARK: - Elementwise and layout

    @Test func elementwiseArithmetic() {
        var rng = TestRNG(seed: 17)
        for n in [0, 1, 7, 63, 1001] {
            let a = rng.array(n), b = rng.array(n)
            var y = [Float](repeating: .nan, count: n), yr = y
            mr_add(n, a, b, &y)
            mr_ref_add(n, a, b, &yr)
            Self.expectSame(y, yr, "add n \(n)")
            Self.expectSame(y, zip(a, b).map { $0 + $1 }, "add n \(n)")
            mr_mul(n, a, b, &y)
            mr_ref_mul(n, a, b, &yr)
            Self.expectSame(y, yr, "mul n \(n)")
            Self.expectSame(y, zip(a, b).map { $0 * $1 }, "mul n \(n)")
            // aliasing: y = a, y = b
            var s = a
            s.withUnsafeMutableBufferPointer { mr_add(n, $0.baseAddress, b, $0.baseAddress) }
            Self.expectSame(s, zip(a, b).map { $0 + $1 }, "add in place n \(n)")
            s = b
            s.withUnsafeMutableBufferPointer { mr_mul(n, a, $0.baseAddress, $0.baseAddress) }
            Self.expectSame(s, zip(a, b).map { $0 * $1 }, "mul in place n \(n)")
            s = b
            s.withUnsafeMutableBufferPointer { mr_add(n, a, $0.baseAddress, $0.baseAddress) }
            Self.expectSame(s, zip(a, b).map { $0 + $1 }, "add in place (y = b) n \(n)")
            s = a
            s.withUnsafeMutableBufferPointer { mr_mul(n, $0.baseAddress, b, $0.baseAddress) }
            Self.expectSame(s, zip(a, b).map { $0 * $1 }, "mul in place (y = a) n \(n)")
            // y = a = b
            s = a
            s.withUnsafeMutableBufferPointer { mr_add(n, $0.baseAddress, $0.baseAddress, $0.baseAddress) }
            Self.expectSame(s, a.map { $0 + $0 }, "add y = a = b n \(n)")
            s = a
            s.withUnsafeMutableBufferPointer { mr_mul(n, $0.baseAddress, $0.baseAddress, $0.baseAddress) }
            Self.expectSame(s, a.map { $0 * $0 }, "mul y = a = b n \(n)")
            // axpy, scale
            var ax = b
            mr_axpy(n, 0.75, a, &ax)
            Self.expectClose(ax, zip(a, b).map { Float(0.75 * Double($0) + Double($1)) }, rel: 1e-6,
                             "axpy n \(n)")
            mr_scale(n, -1.5, a, &y)
            Self.expectSame(y, a.map { -1.5 * $0 }, "scale n \(n)")
            s = a
            s.withUnsafeMutableBufferPointer { mr_scale(n, 3, $0.baseAddress, $0.baseAddress) }
            Self.expectSame(s, a.map { 3 * $0 }, "scale in place n \(n)")
        }
    }

    @Test func channelBias() {
        var rng = TestRNG(seed: 18)
        for (batch, ch, hw) in [(1, 1, 1), (2, 3, 7), (3, 5, 63), (1, 13, 1000)] {
            let n = batch * ch * hw
            let x = rng.array(n), bias = rng.array(batch * ch)
            var y = [Float](repeating: .nan, count: n)
            mr_add_channel_bias(i32(batch), i32(ch), i32(hw), x, bias, &y)
            var expected = x
            for p in 0..<(batch * ch) { for i in 0..<hw { expected[p * hw + i] += bias[p] } }
            Self.expectSame(y, expected, "channel bias \(batch)x\(ch)x\(hw)")
            var s = x
            s.withUnsafeMutableBufferPointer {
                mr_add_channel_bias(i32(batch), i32(ch), i32(hw), $0.baseAddress, bias, $0.baseAddress)
            }
            Self.expectSame(s, expected, "channel bias in place")

            let dy = rng.array(n), db0 = rng.array(batch * ch)
            var db = db0
            mr_channel_bias_backward(i32(batch), i32(ch), i32(hw), dy, &db)
            var ref = db0
            for p in 0..<(batch * ch) {
                var acc = 0.0
                for i in 0..<hw { acc += Double(dy[p * hw + i]) }
                ref[p] = Float(Double(db0[p]) + acc)
            }
            Self.expectClose(db, ref, rel: 1e-5, "channel bias backward accumulates")
        }
    }

    @Test func concatAndSplit() {
        var rng = TestRNG(seed: 19)
        for (batch, c1, c2, hw) in [(1, 1, 1, 1), (2, 3, 5, 7), (3, 6, 2, 63), (2, 4, 0, 5), (2, 0, 3, 4)] {
            let a = rng.array(batch * c1 * hw), b = rng.array(batch * c2 * hw)
            let n = batch * (c1 + c2) * hw
            var y = [Float](repeating: .nan, count: n), yr = y
            mr_concat_channels(i32(batch), i32(c1), i32(c2), i32(hw), a, b, &y)
            mr_ref_concat_channels(i32(batch), i32(c1), i32(c2), i32(hw), a, b, &yr)
            Self.expectSame(y, yr, "concat \(batch) \(c1)+\(c2) x\(hw)")
            var da = [Float](repeating: .nan, count: a.count), db = [Float](repeating: .nan, count: b.count)
            mr_split_channels(i32(batch), i32(c1), i32(c2), i32(hw), y, &da, &db)
            Self.expectSame(da, a, "split inverts concat (a)")
            Self.expectSame(db, b, "split inverts concat (b)")
            var db2 = [Float](repeating: .nan, count: b.count)
            mr_split_channels(i32(batch), i32(c1), i32(c2), i32(hw), y, nil, &db2)
            Self.expectSame(db2, b, "split with da NULL")
            var da2 = [Float](repeating: .nan, count: a.count)
            mr_split_channels(i32(batch), i32(c1), i32(c2), i32(hw), y, &da2, nil)
            Self.expectSame(da2, a, "split with db NULL")
        }
    }

    @Test func transposeMatchesReference() {
        var rng = TestRNG(seed: 20)
        for (batch, rows, cols) in [(1, 1, 1), (2, 7, 63), (3, 33, 65), (1, 64, 1), (1, 1, 5),
                                    (2, 100, 37), (1, 32, 32), (1, 130, 70), (2, 64, 128)] {
            let x = rng.array(batch * rows * cols)
            var y = [Float](repeating: .nan, count: x.count), yr = y, back = y
            mr_transpose(i32(batch), i32(rows), i32(cols), x, &y)
            mr_ref_transpose(i32(batch), i32(rows), i32(cols), x, &yr)
            Self.expectSame(y, yr, "transpose \(batch)x\(rows)x\(cols)")
            mr_transpose(i32(batch), i32(cols), i32(rows), y, &back)
            Self.expectSame(back, x, "transpose twice \(batch)x\(rows)x\(cols)")
        }
    }

    @Test func upsampleMatchesReference() {
        var rng = TestRNG(seed: 21)
        for (planes, h, w) in [(1, 1, 1), (3, 2, 5), (2, 7, 7), (4, 8, 63), (1, 1, 9)] {
            let x = rng.array(planes * h * w)
            var y = [Float](repeating: .nan, count: planes * 4 * h * w), yr = y
            mr_upsample_nearest2x_forward(i32(planes), i32(h), i32(w), x, &y)
            mr_ref_upsample_nearest2x_forward(i32(planes), i32(h), i32(w), x, &yr)
            Self.expectSame(y, yr, "upsample \(planes)x\(h)x\(w)")
            let dy = rng.array(y.count)
            var dx = [Float](repeating: .nan, count: x.count), dxr = dx
            mr_upsample_nearest2x_backward(i32(planes), i32(h), i32(w), dy, &dx)
            mr_ref_upsample_nearest2x_backward(i32(planes), i32(h), i32(w), dy, &dxr)
            Self.expectClose(dx, dxr, rel: 1e-6, "upsample bwd \(planes)x\(h)x\(w)")
            // adjoint: <up(x), dy> = <x, up^T(dy)>
            let lhs = Self.dot(y, dy), rhs = Self.dot(x, dxr)
            #expect(abs(lhs - rhs) <= 1e-5 * (1 + abs(lhs)), "upsample adjoint \(lhs) vs \(rhs)")
        }
    }
}
