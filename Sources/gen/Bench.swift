import ArgumentParser
import Foundation
import MillraceKernels
import MillraceCore
import MillraceImaging
import MillraceTraining
import MillracePipelines

/// `gen bench ...`: speed figures. Benchmarks print numbers; tests never depend on timing.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure kernel, model and training speed.",
        subcommands: [BenchKernels.self, BenchForward.self, BenchTrain.self, BenchStream.self, BenchServe.self])
}

/// Repeats `body` until `minSeconds` have passed (at least `minReps` times) after one warm-up
/// call, and returns the fastest single call in seconds (the least disturbed by a noisy machine).
func bestTime(minSeconds: Double = 0.6, minReps: Int = 3, _ body: () -> Void) -> Double {
    body()
    var best = Double.infinity
    let start = Date()
    var reps = 0
    while reps < minReps || Date().timeIntervalSince(start) < minSeconds {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        let t = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        best = min(best, t)
        reps += 1
    }
    return best
}

/// cblas_sgemm at n×n×n: this machine's practical single-precision peak.
func measureSgemm(n: Int = 2048) -> Double {
    var rng = SplitMix64(seed: 1)
    let a = (0..<(n * n)).map { _ in rng.nextUnitFloat() - 0.5 }
    let b = (0..<(n * n)).map { _ in rng.nextUnitFloat() - 0.5 }
    var c = [Float](repeating: 0, count: n * n)
    // The practical peak: OpenBLAS's own threads, one per core, for this measurement only.
    mr_set_blas_threads(Int32(ProcessInfo.processInfo.activeProcessorCount))
    defer { mr_set_blas_threads(1) }
    let t = bestTime(minSeconds: 1.5, minReps: 4) {
        c.withUnsafeMutableBufferPointer { cp in
            mr_sgemm(Int32(n), Int32(n), Int32(n), a, b, cp.baseAddress)
        }
    }
    return 2 * Double(n * n * n) / t / 1e9
}

/// The reference UNet of the kernel benchmark: 32×32, [64, 128, 256], 2 layers per block,
/// attention at 8×8 (the third level), head dim 32.
func benchUNetConfig() -> UNetConfig {
    var c = UNetConfig()
    c.sampleSize = 32
    c.blockOutChannels = [64, 128, 256]
    c.layersPerBlock = 2
    c.downBlockTypes = [.down, .down, .attnDown]
    c.upBlockTypes = [.attnUp, .up, .up]
    c.attentionHeadDim = 32
    c.normNumGroups = 32
    c.numClassEmbeds = 10
    return c
}

struct BenchKernels: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "sgemm peak, conv 3x3 forward/backward at UNet shapes, and a whole UNet forward.",
        discussion: """
        Every figure is GFLOP/s and a fraction of the sgemm figure measured in the same run.
        Convolutions count the multiply-adds of a direct 3x3 convolution, so Winograd's figure (the
        default where it applies, with the weights transformed once as a model keeps them) can
        exceed sgemm's; "direct" times the same call without it.
        Example:
          gen bench kernels --json > kernels.json
        """)

    @Flag(help: "Print JSON instead of a table.")
    var json = false
    @Flag(help: "Fewer, shorter measurements (for a smoke test).")
    var quick = false
    @OptionGroup var threads: ThreadOptions

    struct ConvCase { let channels, size: Int }

    func run() throws {
        threads.apply()
        let log: (String) -> Void = { msg in if !json { print(msg) } else { FileHandle.standardError.write(Data((msg + "\n").utf8)) } }
        log("machine: \(Runtime.describe())")
        let sgemm = measureSgemm(n: quick ? 512 : 2048)
        log(String(format: "sgemm %d³: %.1f GFLOP/s", quick ? 512 : 2048, sgemm))

        let cases = [ConvCase(channels: 32, size: 64), ConvCase(channels: 64, size: 32),
                     ConvCase(channels: 128, size: 16), ConvCase(channels: 256, size: 8)]
        let batches = quick ? [1, 2] : [1, 2, 4]
        var forward: [[String: Any]] = [], backward: [[String: Any]] = []
        var rng = SplitMix64(seed: 2)
        for cc in cases {
            for b in batches {
                var s = mr_conv2d_shape(batch: Int32(b), in_c: Int32(cc.channels), in_h: Int32(cc.size), in_w: Int32(cc.size),
                                        out_c: Int32(cc.channels), k_h: 3, k_w: 3, stride: 1,
                                        pad_top: 1, pad_left: 1, pad_bottom: 1, pad_right: 1)
                let n = b * cc.channels * cc.size * cc.size
                let x = (0..<n).map { _ in rng.nextUnitFloat() - 0.5 }
                let w = (0..<(cc.channels * cc.channels * 9)).map { _ in rng.nextUnitFloat() - 0.5 }
                let bias = [Float](repeating: 0.1, count: cc.channels)
                var y = [Float](repeating: 0, count: n), dx = y
                var dw = w, db = bias
                let flops = 2.0 * Double(b * cc.channels * cc.channels * 9 * cc.size * cc.size)
                let secs = quick ? 0.1 : 0.4
                let winograd = Runtime.winograd
                Runtime.winograd = false
                let td = bestTime(minSeconds: secs) { mr_conv2d_forward(&s, x, w, bias, &y) }
                Runtime.winograd = winograd
                // weights transformed once, as a model's Conv2d keeps them
                var u = [Float](repeating: 0, count: Int(mr_conv2d_winograd_weights_count(&s)))
                mr_conv2d_winograd_weights(&s, w, &u)
                let tf = bestTime(minSeconds: secs) { mr_conv2d_forward_prepared(&s, x, w, u, bias, &y) }
                let tb = bestTime(minSeconds: secs) { mr_conv2d_backward(&s, x, w, y, &dx, &dw, &db) }
                let gf = flops / tf / 1e9, gb = 2 * flops / tb / 1e9, gd = flops / td / 1e9
                forward.append(["batch": b, "channels": cc.channels, "size": cc.size,
                                "gflops": round2(gf), "fraction": round3(gf / sgemm),
                                "direct_gflops": round2(gd), "direct_fraction": round3(gd / sgemm)])
                backward.append(["batch": b, "channels": cc.channels, "size": cc.size,
                                 "gflops": round2(gb), "fraction": round3(gb / sgemm)])
                log(String(format: "conv3x3 %3d ch %2dx%-2d batch %d: forward %6.1f GFLOP/s (%.2f; direct %6.1f, %.2f), backward %6.1f GFLOP/s (%.2f)",
                           cc.channels, cc.size, cc.size, b, gf, gf / sgemm, gd, gd / sgemm, gb, gb / sgemm))
            }
        }

        let config = benchUNetConfig()
        let model = UNet2DModel(config: config, seed: 1)
        let perImage = Double(model.forwardFLOPs(height: 32, width: 32))
        var unet: [[String: Any]] = []
        for b in (quick ? [1, 2] : [1, 2, 4]) {
            let x = GaussianSource.draw(count: b, shape: [3, 32, 32], seed: 3)
            let labels = (0..<b).map { $0 % 9 }
            let t = bestTime(minSeconds: quick ? 0.2 : 1.0) {
                _ = model.forward(x, timesteps: [500], classLabels: labels)
            }
            let g = perImage * Double(b) / t / 1e9
            unet.append(["batch": b, "gflops": round2(g), "fraction": round3(g / sgemm),
                         "ms": round2(t * 1000), "images_per_second": round2(Double(b) / t)])
            log(String(format: "unet forward 32x32 [64,128,256] batch %d: %.2f ms, %.1f GFLOP/s (%.2f of sgemm)",
                       b, t * 1000, g, g / sgemm))
        }
        if json {
            let obj: [String: Any] = [
                "machine": Runtime.describe(), "sgemm_gflops": round2(sgemm),
                "conv3x3_forward": forward, "conv3x3_backward": backward, "unet_forward": unet,
                "unet_forward_gflop_per_image": round3(perImage / 1e9),
            ]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        }
    }
}

func round2(_ x: Double) -> Double { (x * 100).rounded() / 100 }
func round3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }

struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Images/s and GFLOP/s of a training step for the shipped architecture.",
        discussion: """
        Uses the architecture of --model (default: the shipped emoji model) at --batch, on random
        data. FLOPs of a step are counted as 3 × the forward FLOPs (backward ≈ 2 × forward).
        Examples:
          gen bench train --json
          gen bench train --convolution gemm     # without the direct convolution kernel
        """)

    @Option(help: "Model folder whose architecture is measured (default: the shipped model).")
    var model: String?
    @Option(help: "Images per step (the shipped model was trained at 32).")
    var batch: Int = 32
    @Option(help: "Timed steps.")
    var steps: Int = 8
    @Option(help: "Data-parallel workers (default: all cores; 1 = one model whose convolutions are split over the cores).")
    var workers: Int?
    @Option(help: "Convolutions: auto (Winograd F(2x2,3x3) and the AVX-512 direct kernel where the CPU has AVX-512F, else im2col + sgemm), direct (the direct kernel without Winograd), gemm (im2col + sgemm everywhere) or avx2 (the AVX2 direct kernel).")
    var convolution: BenchForward.ConvolutionChoice = .auto
    @Flag(help: "Print JSON.")
    var json = false
    @OptionGroup var threads: ThreadOptions

    func run() throws {
        threads.apply()
        convolution.apply()
        try runReportingErrors {
            let path = model ?? ModelFolder.defaultPath()
            let config = try UNetConfig(json: try Data(contentsOf: URL(fileURLWithPath: path + "/config.json")))
            let log: (String) -> Void = { msg in if !json { print(msg) } else { FileHandle.standardError.write(Data((msg + "\n").utf8)) } }
            log("machine: \(Runtime.describe())")
            let sgemm = measureSgemm()
            let size = config.sampleSize
            let classes = max((config.numClassEmbeds ?? 2) - 1, 1)
            var rng = SplitMix64(seed: 9)
            let n = 4 * batch
            let images = (0..<(n * 3 * size * size)).map { _ in rng.nextUnitFloat() * 2 - 1 }
            let data = FlowTrainingData(images: images, labels: (0..<n).map { $0 % classes }, size: size,
                                        classNames: (0..<classes).map { "class \($0)" })
            var opts = TrainOptions()
            opts.batchSize = batch
            opts.workers = max(1, min(workers ?? ProcessInfo.processInfo.activeProcessorCount, batch))
            var cfg = config
            cfg.numClassEmbeds = classes + 1
            let trainer = try FlowTrainer(config: cfg, data: data, options: opts)
            trainer.trainStep()  // warm-up
            var best = Double.infinity
            for _ in 0..<steps {
                let t0 = DispatchTime.now().uptimeNanoseconds
                trainer.trainStep()
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            }
            let flops = 3 * Double(trainer.model.forwardFLOPs(height: size, width: size)) * Double(batch)
            let ips = Double(batch) / best
            let gflops = flops / best / 1e9
            log(String(format: "sgemm %.1f GFLOP/s; train step batch %d: %.1f ms, %.1f images/s, %.1f GFLOP/s (%.2f of sgemm)",
                       sgemm, batch, best * 1000, ips, gflops, gflops / sgemm))
            if json {
                let obj: [String: Any] = ["machine": Runtime.describe(), "model": path, "batch": batch,
                                          "workers": opts.workers,
                                          "images_per_second": round2(ips), "gflops": round2(gflops),
                                          "fraction": round3(gflops / sgemm), "sgemm_gflops": round2(sgemm),
                                          "step_ms": round2(best * 1000)]
                let d = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: d, as: UTF8.self))
            }
        }
    }
}

struct BenchStream: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stream",
        abstract: "Frames/s of the stream pipeline: sequential vs stream batch, guidance modes, the filter.",
        discussion: """
        Uses the stream model (as `gen stream`) and the sample clips in assets/clips (make them with `gen clips`).
        Examples:
          gen bench stream --json
          gen bench stream --model assets/models/emoji32
        """)

    @Option(help: "Model folder (default: the stream model, as `gen stream`).")
    var model: String?
    @Option(help: "Folder with the still/ and moving/ clips.")
    var clips: String = "assets/clips"
    @Option(help: "Timed frames per figure.")
    var frames: Int = 16
    @Flag(help: "Print JSON.")
    var json = false
    @OptionGroup var threads: ThreadOptions

    func loadClip(_ name: String) throws -> [RGBImage] {
        let dir = (clips as NSString).appendingPathComponent(name)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".png") }.sorted()
        guard !names.isEmpty else { throw CLIError("no frames in \(dir); run `gen clips --data data/emoji32.mrds`") }
        return try names.map { try RGBImage.load(path: (dir as NSString).appendingPathComponent($0)) }
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let log: (String) -> Void = { msg in if !json { print(msg) } else { FileHandle.standardError.write(Data((msg + "\n").utf8)) } }
            log("machine: \(Runtime.describe())")
            let folder = try ModelFolder.load(model ?? ModelFolder.defaultStreamPath())
            let sampler = FlowSampler(model: folder.model, flow: folder.flow)
            let still = try loadClip("still"), moving = try loadClip("moving")

            /// CPU seconds (user + system, all threads) of this process so far.
            func cpuSeconds() -> Double {
                var u = rusage()
                getrusage(RUSAGE_SELF.rawValue, &u)
                return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
            }
            /// Frames/s and CPU milliseconds per output frame (what a frame costs the machine, not
            /// only how soon it comes: an idle core shows in the first, not in the second).
            func measure(n: Int, mode: StreamGuidance, sequential: Bool) throws -> (fps: Double, cpuMs: Double) {
                var settings = StreamSettings(classIndex: 0)
                settings.guidance = mode
                settings.scale = 1.5
                return try measure(times: try StreamPipeline.times(strength: 0.6, steps: n), settings: settings, sequential: sequential)
            }
            func measure(times: [Float], settings: StreamSettings, sequential: Bool) throws -> (fps: Double, cpuMs: Double) {
                let pipeline = try StreamPipeline(sampler: sampler, times: times, settings: settings, seed: 1)
                let session = StreamSession(pipeline: pipeline, filter: nil)
                let inputs = moving.map { session.prepare($0) }
                _ = try pipeline.process(inputs[0])  // warm-up
                let start = Date(), cpu0 = cpuSeconds()
                for k in 0..<frames {
                    let f = inputs[(k + 1) % inputs.count]
                    if sequential { _ = pipeline.sequential(f) } else { _ = try pipeline.process(f) }
                }
                let wall = Date().timeIntervalSince(start), cpu = cpuSeconds() - cpu0
                return (Double(frames) / wall, 1000 * cpu / Double(frames))
            }
            func fps(n: Int, mode: StreamGuidance, sequential: Bool) throws -> Double {
                try measure(n: n, mode: mode, sequential: sequential).fps
            }
            // What `gen stream` runs on this model without options (StreamPipeline.Defaults).
            // Measured twice, the first run discarded: the first figure of a process came out
            // 1.7× slower than the same configuration later in the run (docs/BENCHMARKS.md,
            // "The 128×128 stream model").
            let d = StreamPipeline.Defaults(flow: folder.flow)
            let ownTimes = try StreamPipeline.times(strength: d.strength, steps: d.steps)
            let ownSettings = StreamSettings.defaults(classIndex: 0, flow: folder.flow)
            _ = try measure(times: ownTimes, settings: ownSettings, sequential: false)
            let own = try measure(times: ownTimes, settings: ownSettings, sequential: false)
            let defaults: [String: Any] = ["strength": d.strength, "steps": d.steps, "stepping": d.stepping.rawValue,
                                           "guidance": folder.flow.nullClass == nil ? "none" : d.guidance.rawValue, "scale": d.scale,
                                           "fps": round2(own.fps), "cpu_ms_per_frame": round2(own.cpuMs)]
            log(String(format: "the model's defaults (strength %.2g, %d slot(s), %@, guidance %@ at %.2g): %.2f frames/s, %.1f ms of CPU per frame",
                       d.strength, d.steps, d.stepping.rawValue, defaults["guidance"] as! String, d.scale, own.fps, own.cpuMs))
            var seq: [String: Double] = [:], batch: [String: Double] = [:], guidance: [String: Double] = [:]
            for n in 1...4 {
                seq["\(n)"] = round2(try fps(n: n, mode: .none, sequential: true))
                batch["\(n)"] = round2(try fps(n: n, mode: .none, sequential: false))
                log(String(format: "n = %d: sequential %.2f frames/s, stream batch %.2f frames/s (%.2fx)",
                           n, seq["\(n)"]!, batch["\(n)"]!, batch["\(n)"]! / seq["\(n)"]!))
            }
            for mode in StreamGuidance.allCases {
                guidance[mode.rawValue] = round2(try fps(n: 2, mode: mode, sequential: false))
                log(String(format: "guidance %@ at n = 2: %.2f frames/s", mode.rawValue, guidance[mode.rawValue]!))
            }
            // Every guidance mode at n = 1…4: frames/s and CPU time per output frame.
            var byN: [String: [String: [String: Double]]] = [:]
            for mode in StreamGuidance.allCases {
                for n in 1...4 {
                    let m = try measure(n: n, mode: mode, sequential: false)
                    byN[mode.rawValue, default: [:]]["\(n)"] = ["fps": round2(m.fps), "cpu_ms_per_frame": round2(m.cpuMs)]
                    log(String(format: "guidance %@ at n = %d: %.2f frames/s, %.1f ms of CPU per frame", mode.rawValue, n, m.fps, m.cpuMs))
                }
            }
            var filter: [String: Double] = [:]
            for (name, clip) in [("static", still), ("moving", moving)] {
                var f = SimilarityFilter(threshold: 0.98, maxSkip: 10, side: SimilarityFilter.defaultSide, seed: 1)
                let processed = clip.filter { !f.shouldSkip($0) }.count
                filter[name] = round3(Double(processed) / Double(clip.count))
                log(String(format: "filter η 0.98, max_skip 10 on the %@ clip: %d of %d frames processed (%.3f)",
                           name, processed, clip.count, filter[name]!))
            }
            // The filter's saving as the StreamDiffusion paper counts it (their 2.39× is energy): CPU
            // seconds per input frame with and without the filter, on a clip with still stretches
            // (the still clip, then the moving one, then the still one again), n = 2, full guidance.
            let mixed = Array(still.prefix(frames * 2)) + Array(moving.prefix(frames * 2)) + Array(still.prefix(frames * 2))
            func cpuPerInputFrame(filtered: Bool) throws -> (cpuMs: Double, processed: Int) {
                var settings = StreamSettings(classIndex: 0)
                settings.guidance = .full
                settings.scale = 1.5
                let pipeline = try StreamPipeline(sampler: sampler, times: try StreamPipeline.times(strength: 0.6, steps: 2),
                                                  settings: settings, seed: 1)
                let session = StreamSession(pipeline: pipeline, filter: filtered
                    ? SimilarityFilter(threshold: 0.98, maxSkip: 10, side: SimilarityFilter.defaultSide, seed: 1) : nil)
                _ = try session.process(mixed[0])  // warm-up
                let cpu0 = cpuSeconds()
                for f in mixed.dropFirst() { _ = try session.process(f) }
                return (1000 * (cpuSeconds() - cpu0) / Double(mixed.count - 1), session.framesProcessed - 1)
            }
            let unfiltered = try cpuPerInputFrame(filtered: false), filtered = try cpuPerInputFrame(filtered: true)
            let saving: [String: Double] = ["frames": Double(mixed.count - 1),
                                            "cpu_ms_per_input_frame_without": round2(unfiltered.cpuMs),
                                            "cpu_ms_per_input_frame_with": round2(filtered.cpuMs),
                                            "processed_with": Double(filtered.processed),
                                            "saving": round2(unfiltered.cpuMs / max(filtered.cpuMs, 1e-9))]
            log(String(format: "filter on a clip with still stretches (%d frames, full guidance, n = 2): %.1f ms of CPU per input frame without, %.1f with (%d processed): %.2fx",
                       mixed.count - 1, unfiltered.cpuMs, filtered.cpuMs, filtered.processed, saving["saving"]!))
            log(String(format: "ratios: stream batch / sequential at n = 4: %.2fx; self / full: %.2fx",
                       batch["4"]! / seq["4"]!, guidance["self"]! / guidance["full"]!))
            if json {
                let obj: [String: Any] = ["machine": Runtime.describe(), "sequential": seq, "stream_batch": batch,
                                          "guidance": guidance, "guidance_by_n": byN, "filter": filter,
                                          "filter_cpu_saving": saving, "frames": frames, "model": folder.path, "defaults": defaults]
                let d = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: d, as: UTF8.self))
            }
        }
    }
}
