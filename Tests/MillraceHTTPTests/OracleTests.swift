import Foundation
import Testing
@testable import MillraceCore
@testable import MillraceImaging
@testable import MillracePipelines
@testable import MillraceHTTP
import MillraceTestSupport

/// Independent oracles: reference implementations written here, straight from the mathematics of
/// docs/METHODS.md (not from the code under test), compared with the library.
///
/// - The stream batch with every guidance mode (§5, §6) against a frame-by-frame pipeline that
///   carries each frame's own state and reference through the slots, one model call per frame,
///   slot and class, with the guidance formulas written out in double.
/// - Batch Styles Standardization (§8) against a naive O(N²) 2-D DFT in double with an explicit
///   fftshift and the centred window.
/// - `FlowSampler.integrate` (§1, §2) against a hand-written guided Euler / Heun loop, one model
///   call per sample and per class.
/// - Retrieval colorization keeps the input's Lab L (§9), in float and through POST /v1/colorize
///   (8-bit PNG), with Lab written out in double.
///
/// Tolerances: `relativeError` is max|a − b| / (1 + max|b|). The model is the diffusers fixture
/// unet-tiny-a (8×8, 3 channels, classes 0, 1 and the null class 2).
@Suite struct OracleTests {
    static func folder() throws -> ModelFolder { try ModelFolder.load(Fixtures.path("unet-tiny-a")) }

    static func doubles(_ t: Tensor) -> [Double] { t.data.map(Double.init) }

    // MARK: - 1. Stream batch and guidance (§5, §6)

    /// The stream of §5/§6 run frame by frame. Each frame carries its own state x (the state at
    /// the slot it is in) and its own RCFG reference r; it enters slot 0, moves one slot per call
    /// and leaves after the last slot. Every model evaluation is its own call (one frame, one
    /// slot, one class); the guidance arithmetic is in double.
    struct StreamOracle {
        let model: UNet2DModel
        let times: [Float]
        let noise: [[Double]]
        let label: Int, null: Int
        let mode: StreamGuidance
        let g: Double, delta: Double
        let timestepScale: Double
        let shape: [Int]

        struct Frame {
            let id: Int
            /// State at the frame's current slot.
            var x: [Double]
            /// RCFG reference (self: the frame; onetime: from the null row at slot 0).
            var ref: [Double]?
        }

        /// Slot i holds a frame (nil until the first call). slots[0] is rewritten by every call.
        var slots: [Frame?]
        /// Largest |x̂_g − x̂_c| / (1 + max|x̂_c|) seen: how much guidance changed an estimate.
        var guidanceEffect = 0.0
        /// Model calls made by the oracle.
        var calls = 0

        init(model: UNet2DModel, times: [Float], noise: [[Double]], label: Int, null: Int, mode: StreamGuidance,
             g: Double, delta: Double, timestepScale: Double) {
            self.model = model; self.times = times; self.noise = noise; self.label = label; self.null = null
            self.mode = mode; self.g = g; self.delta = delta; self.timestepScale = timestepScale
            shape = [1, model.config.inChannels, model.config.sampleSize, model.config.sampleSize]
            slots = [Frame?](repeating: nil, count: times.count)
        }

        /// v_θ(x, t_i, c) from a call of its own.
        mutating func v(_ x: [Double], slot i: Int, label c: Int) -> [Double] {
            calls += 1
            let t = Float(Double(times[i]) * timestepScale)
            return OracleTests.doubles(model.forward(Tensor(shape: shape, data: x.map { Float($0) }),
                                                     timesteps: [t], classLabels: [c]))
        }

        /// t·a + (1 − t)·N_i.
        func mix(_ a: [Double], slot i: Int) -> [Double] {
            let t = Double(times[i])
            return zip(a, noise[i]).map { t * $0 + (1 - t) * $1 }
        }

        /// A frame f entering slot 0: x_0 = t_0·f + (1 − t_0)·N_0, with its reference.
        mutating func enter(_ f: [Double], id: Int) -> Frame {
            let x = mix(f, slot: 0)
            var ref: [Double]?
            switch mode {
            case .none, .full: ref = nil
            case .selfNegative: ref = f  // r = the input frame
            case .onetime:
                // r = x_0 + (1 − t_0)·v_null(x_0, t_0), computed once and kept with the frame.
                let vn = v(x, slot: 0, label: null)
                let t0 = Double(times[0])
                ref = zip(x, vn).map { $0 + (1 - t0) * $1 }
            }
            return Frame(id: id, x: x, ref: ref)
        }

        /// The data estimate x̂ = x + (1 − t_i)·v_g of a frame at slot i (§6).
        mutating func estimate(_ fr: Frame, slot i: Int) -> [Double] {
            let t = Double(times[i])
            let x = fr.x
            let vc = v(x, slot: i, label: label)
            let vg: [Double]
            switch mode {
            case .none:
                vg = vc
            case .full:
                let vu = v(x, slot: i, label: null)
                vg = (0..<x.count).map { vu[$0] + g * (vc[$0] - vu[$0]) }
            case .selfNegative, .onetime:
                let r = fr.ref!
                vg = (0..<x.count).map { k in
                    let eps = (x[k] - t * r[k]) / (1 - t)  // ε' = (x − t·r)/(1 − t)
                    let vu = (x[k] - delta * eps) / t  // v_u = (x − δ·ε')/t
                    return vu + g * (vc[k] - vu)
                }
            }
            let est = (0..<x.count).map { x[$0] + (1 - t) * vg[$0] }
            var worst = 0.0, scale = 0.0
            for k in 0..<x.count {
                worst = max(worst, abs((1 - t) * (vg[k] - vc[k])))
                scale = max(scale, abs(x[k] + (1 - t) * vc[k]))
            }
            guidanceEffect = max(guidanceEffect, worst / (1 + scale))
            return est
        }

        /// One call: returns the output estimate and the id of the frame it belongs to.
        mutating func process(_ f: [Double], id: Int) -> (output: [Double], id: Int) {
            let n = times.count
            if slots[0] == nil {
                // Warm-up (§5): the first frame runs through all n stages; its state at stage i
                // fills slot i, so the next n − 1 calls output it again. With onetime, every stage
                // uses the one reference from the frame's slot-0 null row (§6: r is computed once
                // and travels with its frame), so calls 0…n−1 give the same output.
                var fr = enter(f, id: id)
                var out: [Double] = []
                for i in 0..<n {
                    slots[i] = fr
                    let est = estimate(fr, slot: i)
                    if i + 1 < n { fr.x = mix(est, slot: i + 1) } else { out = est }
                }
                return (out, id)
            }
            slots[0] = enter(f, id: id)
            let estimates = (0..<n).map { i in estimate(slots[i]!, slot: i) }
            let leaving = slots[n - 1]!
            // Every frame moves one slot down, re-noised with that slot's noise; r goes with it.
            for i in stride(from: n - 1, to: 0, by: -1) {
                var moved = slots[i - 1]!
                moved.x = mix(estimates[i - 1], slot: i)
                slots[i] = moved
            }
            return (estimates[n - 1], leaving.id)
        }
    }

    static func streamFrames(_ count: Int) -> [Tensor] {
        (0..<count).map { GaussianSource.draw(count: 1, shape: [3, 8, 8], seed: 500 + UInt64($0)).scaled(0.6) }
    }

    /// Every guidance mode × n = 1…4, 6 frames: the stream batch agrees with the frame-by-frame
    /// oracle within 1e-5 (relative to 1 + the output's largest magnitude). Measured: at most
    /// 7e-7; batching changes the rounding of the model's sums, and RCFG divides by t_i and 1 − t_i.
    @Test(arguments: StreamGuidance.allCases, [1, 2, 3, 4])
    func streamBatchMatchesFrameByFrameOracle(mode: StreamGuidance, n: Int) throws {
        let folder = try Self.folder()
        let sampler = FlowSampler(model: folder.model, flow: folder.flow)
        let strength: Float = 0.6
        let times = try StreamPipeline.times(strength: strength, steps: n)
        // §5: t_0 = 1 − σ, t_i = t_0 + i·σ/n.
        for (i, t) in times.enumerated() { #expect(abs(Double(t) - (0.4 + Double(i) * 0.6 / Double(n))) < 1e-6) }
        var settings = StreamSettings(classIndex: 1)
        settings.guidance = mode
        settings.scale = 2.5
        settings.delta = 0.7
        let stream = try StreamPipeline(sampler: sampler, times: times, settings: settings, seed: 11)
        // The per-slot noises are the pipeline's (drawn once from its seed); all different.
        #expect(stream.noise.count == n && Set(stream.noise.map(\.data)).count == n)
        var oracle = StreamOracle(model: folder.model, times: times, noise: stream.noise.map(Self.doubles),
                                  label: 1, null: try #require(folder.flow.nullClass), mode: mode,
                                  g: 2.5, delta: 0.7, timestepScale: folder.flow.timestepScale)
        let frames = Self.streamFrames(6)
        for (k, f) in frames.enumerated() {
            let out = try stream.process(f)
            let want = oracle.process(Self.doubles(f), id: k)
            #expect(want.id == max(0, k - n + 1), "call \(k): the output is frame k − n + 1")
            let err = relativeError(out.data, want.output.map { Float($0) })
            #expect(err < 1e-5, "\(mode.rawValue), n = \(n), call \(k) (frame \(want.id)): relative error \(err)")
        }
        // One batched model call per frame, after n warm-up calls for the first.
        #expect(stream.modelCalls == n + frames.count - 1)
        // The comparison is not vacuous: guidance moves the estimates by far more than the tolerance.
        if mode != .none { #expect(oracle.guidanceEffect > 1e-2, "guidance effect \(oracle.guidanceEffect)") }
    }

    /// A seeded image in [0, 1]: a smooth pattern per channel plus noise.
    static func bssImage(width w: Int, height h: Int, seed: UInt64) -> RGBImage {
        var rng = TestRNG(seed: seed)
        var planes: [Float] = []
        for c in 0..<3 {
            let fx = Float.random(in: 1...4, using: &rng), fy = Float.random(in: 1...4, using: &rng)
            for y in 0..<h {
                for x in 0..<w {
                    let smooth = 0.5 + 0.3 * sin(fx * Float(x) + Float(c)) * cos(fy * Float(y) / Float(h) * 6.28)
                    planes.append(min(1, max(0, smooth + Float.random(in: -0.1...0.1, using: &rng))))
                }
            }
        }
        return RGBImage(width: w, height: h, planes: planes)
    }

    // MARK: - 2. BSS against a naive DFT (§8)

    /// Naive 2-D DFT of a complex plane (re, im) in double: F[u][v] = Σ p[y][x]·e^{∓2πi(uy/H + vx/W)};
    /// the inverse divides by H·W.
    static func dft(_ re: [Double], _ im: [Double], height h: Int, width w: Int, inverse: Bool) -> ([Double], [Double]) {
        let sign = inverse ? 1.0 : -1.0
        var ore = [Double](repeating: 0, count: h * w), oim = ore
        for u in 0..<h {
            for v in 0..<w {
                var sr = 0.0, si = 0.0
                for y in 0..<h {
                    for x in 0..<w {
                        // Reduce the phase index exactly before the angle.
                        let a = sign * 2 * Double.pi * (Double((u * y) % h) / Double(h) + Double((v * x) % w) / Double(w))
                        let c = cos(a), s = sin(a)
                        sr += re[y * w + x] * c - im[y * w + x] * s
                        si += re[y * w + x] * s + im[y * w + x] * c
                    }
                }
                let norm = inverse ? 1 / Double(h * w) : 1
                ore[u * w + v] = sr * norm
                oim[u * w + v] = si * norm
            }
        }
        return (ore, oim)
    }

    /// fftshift of a row-major plane: the zero frequency moves to (⌊H/2⌋, ⌊W/2⌋), i.e. shifted
    /// index k holds frequency k − ⌊H/2⌋ (mod H).
    static func fftshift(_ p: [Double], height h: Int, width w: Int) -> [Double] {
        var out = p
        for k in 0..<h {
            for l in 0..<w {
                out[k * w + l] = p[((k - h / 2 + h) % h) * w + (l - w / 2 + w) % w]
            }
        }
        return out
    }

    /// The inverse of `fftshift`.
    static func ifftshift(_ p: [Double], height h: Int, width w: Int) -> [Double] {
        var out = p
        for k in 0..<h {
            for l in 0..<w {
                out[((k - h / 2 + h) % h) * w + (l - w / 2 + w) % w] = p[k * w + l]
            }
        }
        return out
    }

    /// §8 on one batch, by hand: per image and channel, shifted spectrum; inside the centred
    /// window of h = round(√r·H) (kept within 1…H) rows from ⌊H/2⌋ − ⌊h/2⌋ and likewise w columns,
    /// amplitude ← the reference's, phase kept (phase 0 for a zero coefficient); unshift, inverse,
    /// real part. Unclipped.
    static func bssOracle(_ images: [RGBImage], reference j: Int, ratio r: Double) -> [[Double]] {
        let h = images[0].height, w = images[0].width, n = h * w
        let wh = min(h, max(1, Int(round(r.squareRoot() * Double(h)))))
        let ww = min(w, max(1, Int(round(r.squareRoot() * Double(w)))))
        let r0 = h / 2 - wh / 2, c0 = w / 2 - ww / 2
        var outs = [[Double]](repeating: [Double](repeating: 0, count: 3 * n), count: images.count)
        let zeros = [Double](repeating: 0, count: n)
        for c in 0..<3 {
            let spectra = images.map { image -> ([Double], [Double]) in
                let plane = image.planes[(c * n)..<((c + 1) * n)].map(Double.init)
                let (re, im) = dft(plane, zeros, height: h, width: w, inverse: false)
                return (fftshift(re, height: h, width: w), fftshift(im, height: h, width: w))
            }
            let refAmp = (0..<n).map { (spectra[j].0[$0] * spectra[j].0[$0] + spectra[j].1[$0] * spectra[j].1[$0]).squareRoot() }
            for (b, (re0, im0)) in spectra.enumerated() {
                var re = re0, im = im0
                for k in r0..<(r0 + wh) {
                    for l in c0..<(c0 + ww) {
                        let q = k * w + l
                        let a = (re[q] * re[q] + im[q] * im[q]).squareRoot()
                        // A zero coefficient (here: below 1e-9, the double DFT's rounding of an exact
                        // zero) takes phase 0.
                        if a > 1e-9 { re[q] = re[q] / a * refAmp[q]; im[q] = im[q] / a * refAmp[q] } else { re[q] = refAmp[q]; im[q] = 0 }
                    }
                }
                let (back, _) = dft(ifftshift(re, height: h, width: w), ifftshift(im, height: h, width: w),
                                    height: h, width: w, inverse: true)
                outs[b].replaceSubrange((c * n)..<((c + 1) * n), with: back)
            }
        }
        return outs
    }

    /// Odd, even and mixed sizes, window ratios giving odd and even h and w (and the whole plane):
    /// the library agrees with the naive DFT within 1e-5 absolute on values in [0, 1] (float FFT
    /// against double DFT; measured at most 5e-7).
    @Test(arguments: [(5, 7), (6, 8), (9, 9), (4, 5), (8, 3)])
    func bssMatchesNaiveDFT(height: Int, width: Int) throws {
        let images = (0..<3).map { Self.bssImage(width: width, height: height, seed: 40 + UInt64($0)) }
        var windows = Set<[Int]>()
        for r in [0.01, 0.09, 0.2, 0.33, 0.6, 1.0] {
            let s = r.squareRoot()
            windows.insert([Int(round(s * Double(height))), Int(round(s * Double(width)))])
            for j in [0, 2] {
                let lib = try BatchStyleStandardization.applyUnclipped(images: images, reference: j, ratio: r)
                let want = Self.bssOracle(images, reference: j, ratio: r)
                for b in 0..<3 {
                    let err = zip(lib[b].planes, want[b]).map { abs(Double($0) - $1) }.max()!
                    #expect(err < 1e-5, "\(width)x\(height), r \(r), reference \(j), image \(b): error \(err)")
                }
                // The clipped version is the oracle clipped to [0, 1].
                let clipped = try BatchStyleStandardization.apply(images: images, reference: j, ratio: r)
                let errClip = zip(clipped[1].planes, want[1]).map { abs(Double($0) - min(1, max(0, $1))) }.max()!
                #expect(errClip < 1e-5)
            }
        }
        // Both parities of the window were exercised on each side that allows them.
        #expect(Set(windows.map { $0[0] % 2 }).count == 2 && Set(windows.map { $0[1] % 2 }).count == 2)
        // Not vacuous: image 1 changes by far more than the tolerance.
        let moved = try BatchStyleStandardization.applyUnclipped(images: images, reference: 0, ratio: 0.2)
        #expect(zip(moved[1].planes, images[1].planes).map { abs($0 - $1) }.max()! > 1e-2)
    }

    /// A flat image has exact zero coefficients off the zero frequency (KissFFT is exact on a
    /// constant plane of side 4 or 8): inside the window they take the reference's amplitude
    /// with phase 0 (§8), as in the oracle.
    @Test func bssZeroCoefficientsTakePhaseZero() throws {
        let flat = RGBImage(width: 8, height: 4, fill: (0.3, 0.55, 0.8))
        let images = [flat, Self.bssImage(width: 8, height: 4, seed: 9), Self.bssImage(width: 8, height: 4, seed: 10)]
        let fft = FFT2D(height: 4, width: 8)
        let spectrum = fft.forward(Array(flat.planes[0..<32]))
        #expect(spectrum.dropFirst(2).allSatisfy { $0 == 0 }, "KissFFT gives exact zeros on a constant plane")
        for r in [0.1, 0.3, 0.7] {
            let lib = try BatchStyleStandardization.applyUnclipped(images: images, reference: 1, ratio: r)
            let want = Self.bssOracle(images, reference: 1, ratio: r)
            let err = zip(lib[0].planes, want[0]).map { abs(Double($0) - $1) }.max()!
            #expect(err < 1e-5, "r \(r): error \(err)")
            // Not vacuous: the flat image gains the reference's low-frequency pattern.
            #expect(lib[0].planes[0..<32].max()! - lib[0].planes[0..<32].min()! > 1e-2)
        }
    }

    // MARK: - 3. FlowSampler.integrate against a hand-written guided Euler / Heun loop (§1, §2)

    /// Integrates each sample on its own: v_c and v_u (null class) from separate model calls at
    /// timestep_scale·t, v = v_u + g·(v_c − v_u) (v = v_c for g = 1), Euler x += (t1 − t0)·v or
    /// Heun's mean of the velocities at both ends. Also returns the data estimates
    /// x + (1 − t0)·v after each step (the last one x_N), as `progress` reports them.
    static func integrateOracle(model: UNet2DModel, flow: FlowConfig, x0: Tensor, labels: [Int], g: Double,
                                schedule: [Float], heun: Bool) -> (x: [Double], estimates: [[Double]]) {
        let b = x0.shape[0], per = x0.count / b
        let shape = [1] + Array(x0.shape.dropFirst())
        let null = flow.nullClass!
        func velocity(_ x: [Double], _ t: Float, _ c: Int) -> [Double] {
            func call(_ label: Int) -> [Double] {
                doubles(model.forward(Tensor(shape: shape, data: x.map { Float($0) }),
                                      timesteps: [Float(Double(t) * flow.timestepScale)], classLabels: [label]))
            }
            let vc = call(c)
            if g == 1 { return vc }
            let vu = call(null)
            return (0..<per).map { vu[$0] + g * (vc[$0] - vu[$0]) }
        }
        var result: [Double] = []
        var estimates = [[Double]](repeating: [], count: schedule.count - 1)
        for s in 0..<b {
            var x = x0.data[(s * per)..<((s + 1) * per)].map(Double.init)
            for k in 0..<(schedule.count - 1) {
                let t0 = schedule[k], t1 = schedule[k + 1], dt = Double(t1) - Double(t0)
                let v = velocity(x, t0, labels[s])
                var next = (0..<per).map { x[$0] + dt * v[$0] }
                if heun {
                    let v1 = velocity(next, t1, labels[s])
                    next = (0..<per).map { x[$0] + dt / 2 * (v[$0] + v1[$0]) }
                }
                estimates[k] += k + 2 == schedule.count ? next : (0..<per).map { x[$0] + (1 - Double(t0)) * v[$0] }
                x = next
            }
            result += x
        }
        return (result, estimates)
    }

    /// Uniform and non-uniform schedules, Euler and Heun, guidance 3 and 1, a non-default
    /// timestep_scale (700): agreement within 1e-5 relative, final state and every reported
    /// estimate (batched rows against single-row calls change only the rounding; measured at
    /// most 3.3e-7).
    @Test(arguments: [Solver.euler, .heun], [false, true])
    func samplerMatchesHandWrittenGuidedLoop(solver: Solver, uniform: Bool) throws {
        let folder = try Self.folder()
        var flow = folder.flow
        flow.timestepScale = 700
        let sampler = FlowSampler(model: folder.model, flow: flow)
        let schedule: [Float] = uniform ? Schedule.uniform(steps: 5) : [0, 0.03, 0.15, 0.4, 0.72, 1]
        try Schedule.validate(schedule)
        let x0 = GaussianSource.draw(count: 3, shape: [3, 8, 8], seed: 77)
        let labels = [0, 1, 0]
        for g in [3.0, 1.0] {
            var reported: [Tensor] = []
            let out = sampler.integrate(x0, schedule: schedule, labels: labels, guidance: Float(g), solver: solver,
                                        progress: { _, _, est in reported.append(est); return true })
            let want = Self.integrateOracle(model: folder.model, flow: flow, x0: x0, labels: labels, g: g,
                                            schedule: schedule, heun: solver == .heun)
            let err = relativeError(out.data, want.x.map { Float($0) })
            #expect(err < 1e-5, "\(solver), uniform \(uniform), g \(g): relative error \(err)")
            #expect(reported.count == schedule.count - 1)
            for (k, est) in reported.enumerated() {
                #expect(relativeError(est.data, want.estimates[k].map { Float($0) }) < 1e-5, "estimate after step \(k + 1)")
            }
            // Without progress, and in calls of one sample: the same result.
            let chunked = sampler.integrate(x0, schedule: schedule, labels: labels, guidance: Float(g), solver: solver,
                                            samplesPerCall: 1)
            #expect(relativeError(chunked.data, want.x.map { Float($0) }) < 1e-5)
        }
        // Not vacuous: guidance 3 and guidance 1 end far apart, and the path moved far from x0.
        let guided = Self.integrateOracle(model: folder.model, flow: flow, x0: x0, labels: labels, g: 3,
                                          schedule: schedule, heun: solver == .heun).x
        let plain = Self.integrateOracle(model: folder.model, flow: flow, x0: x0, labels: labels, g: 1,
                                         schedule: schedule, heun: solver == .heun).x
        #expect(relativeError(guided.map { Float($0) }, plain.map { Float($0) }) > 1e-2)
        #expect(relativeError(x0.data, plain.map { Float($0) }) > 1e-2)
    }

    // MARK: - 4. Colorization keeps L (§9)

    /// CIE L* (D65, sRGB companding) of one sRGB pixel, in double: Y from the linearised channels
    /// with the sRGB luminance row, normalised by the white's Y (the row's sum), L = 116·f(Y) − 16.
    static func lightness(_ r: Double, _ g: Double, _ b: Double) -> Double {
        func linear(_ c: Double) -> Double { c <= 0.04045 ? c / 12.92 : pow((c + 0.055) / 1.055, 2.4) }
        let row = (0.2126729, 0.7151522, 0.0721750)
        let y = (row.0 * linear(r) + row.1 * linear(g) + row.2 * linear(b)) / (row.0 + row.1 + row.2)
        let d = 6.0 / 29.0
        let f = y > d * d * d ? cbrt(y) : y / (3 * d * d) + 4.0 / 29.0
        return 116 * f - 16
    }

    static func lightness(_ image: RGBImage) -> [Double] {
        let n = image.pixelCount
        return (0..<n).map { lightness(Double(image.planes[$0]), Double(image.planes[n + $0]), Double(image.planes[2 * n + $0])) }
    }

    /// Mean Lab chroma √(a² + b²) (the library's Lab; only a check that colour was added).
    static func chroma(_ img: RGBImage) -> Double {
        let lab = img.toLab(), n = img.pixelCount
        var s = 0.0
        for p in 0..<n { s += (Double(lab.planes[n + p]) * Double(lab.planes[n + p]) + Double(lab.planes[2 * n + p]) * Double(lab.planes[2 * n + p])).squareRoot() }
        return s / Double(n)
    }

    /// A pool folder of four saturated colour pictures (so that predicted chroma often falls
    /// outside sRGB at the input's L, where L must still be kept).
    static func pool() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("millrace-oracle-pool-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Fixtures.picture(48, 48, kind: 0, ink: (0.95, 0.05, 0.1), fill: (1, 1, 0.6)).writePNG(path: dir + "/red-disc.png")
        try Fixtures.picture(48, 48, kind: 1, ink: (0.05, 0.2, 0.95), fill: (0.1, 0.1, 0.1)).writePNG(path: dir + "/blue-bar.png")
        try Fixtures.picture(48, 48, kind: 2, ink: (0.1, 0.8, 0.1), fill: (0.9, 0.2, 0.9)).writePNG(path: dir + "/green-stripes.png")
        try Fixtures.picture(40, 56, kind: 0, ink: (1, 0.85, 0), fill: (0, 0.4, 0.6)).writePNG(path: dir + "/yellow-disc.png")
        return dir
    }

    /// Gray inputs quantised to 8 bits (as a decoded PNG would be): a disc, a bar over a
    /// diagonal gradient (many L values, odd size) and one larger than the 128-pixel working
    /// side (chroma computed small and upsampled; L taken at full size).
    static func grayInputs() -> [RGBImage] {
        func quantised(_ image: RGBImage) -> RGBImage {
            let g = Colorizer.grayscale(image)
            return RGBImage(width: g.width, height: g.height, planes: g.planes.map { ($0 * 255).rounded() / 255 })
        }
        var gradient = Fixtures.picture(37, 23, kind: 1, ink: (0.05, 0.05, 0.05), fill: (0, 0, 0))
        let n = 37 * 23
        for y in 0..<23 { for x in 0..<37 where gradient.planes[y * 37 + x] == 0 {
            let v = Float(x + y) / Float(36 + 22)
            gradient.planes[y * 37 + x] = v; gradient.planes[n + y * 37 + x] = v * v; gradient.planes[2 * n + y * 37 + x] = 1 - v
        } }
        return [quantised(Fixtures.picture(40, 40, kind: 0, ink: (0.9, 0.1, 0.1), fill: (1, 1, 1))),
                quantised(gradient),
                quantised(Fixtures.picture(150, 90, kind: 2, ink: (0.2, 0.6, 0.9), fill: (0.95, 0.9, 0.3)))]
    }

    /// Retrieval colorization's float output has the input's L within 2e-3 (L in 0…100; "up to
    /// float rounding" in `toRGBPreservingLightness`: float Lab, and its 1e-6 gamut slack is up to
    /// 1e-3 in L near black; measured at most 1.2e-4).
    @Test func colorizationKeepsLightness() throws {
        let dir = try Self.pool()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let colorizer = Colorizer(pool: ReferencePool(folder: dir))
        for (k, gray) in Self.grayInputs().enumerated() {
            let (out, refs) = try colorizer.colorize(gray: gray)
            #expect(refs.count == 12)
            #expect(out.width == gray.width && out.height == gray.height)
            let lin = Self.lightness(gray), lout = Self.lightness(out)
            let worst = zip(lin, lout).map { abs($0 - $1) }.max()!
            #expect(worst < 2e-3, "input \(k): L moved by \(worst)")
            // Not vacuous: the output has colour.
            #expect(Self.chroma(out) > 5, "input \(k): chroma \(Self.chroma(out))")
        }
    }

    /// POST /v1/colorize (server pool): the 8-bit PNG's L agrees with the input's within the 8-bit
    /// quantisation. The encoder rounds each channel to the nearest of k/255, so the float output
    /// lies in the cube q ± 0.5/255; L increases with each channel, so the input's L must lie
    /// between L(q − 0.5/255) and L(q + 0.5/255) (plus 2e-3 for float rounding as above). The
    /// plain difference, up to 0.21 here, is only bounded loosely (0.5).
    @Test func colorizeRouteKeepsLightnessWithin8BitRounding() throws {
        let dir = try Self.pool()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = MillraceService.Options()
        options.referencesDir = dir
        let service = MillraceService(folder: try Self.folder(), options: options)
        defer { service.beginShutdown() }
        for (k, gray) in Self.grayInputs().enumerated() {
            let response = HardeningTests.form(service, "/v1/colorize", [try ColorServerTests.file("image", "gray.png", gray)])
            guard case .bytes(let body) = response.body else { Issue.record("streamed body"); continue }
            #expect(response.status == 200, "input \(k): \(String(decoding: body.prefix(200), as: UTF8.self))")
            guard response.status == 200 else { continue }
            let out = try RGBImage.decode(body)
            #expect(out.width == gray.width && out.height == gray.height)
            let n = out.pixelCount, half = 0.5 / 255
            let lin = Self.lightness(gray)
            var outside = 0, worstPlain = 0.0
            for p in 0..<n {
                let q = (Double(out.planes[p]), Double(out.planes[n + p]), Double(out.planes[2 * n + p]))
                let lo = Self.lightness(q.0 - half, q.1 - half, q.2 - half), hi = Self.lightness(q.0 + half, q.1 + half, q.2 + half)
                if lin[p] < lo - 2e-3 || lin[p] > hi + 2e-3 { outside += 1 }
                worstPlain = max(worstPlain, abs(lin[p] - Self.lightness(q.0, q.1, q.2)))
            }
            #expect(outside == 0, "input \(k): \(outside) of \(n) pixels have an L the 8-bit output cannot round from")
            #expect(worstPlain < 0.5, "input \(k): L differs by \(worstPlain)")
            #expect(Self.chroma(out) > 5)
        }
    }
}
