import ArgumentParser
import Foundation
import MillraceCore

/// The model's forward pass alone: best-of wall time per sample at each batch size.
func forwardMillisecondsPerSample(_ folder: ModelFolder, batches: [Int], log: (String) -> Void) -> [String: Double] {
    var perSample: [String: Double] = [:]
    for b in batches {
        let t = forwardSeconds(folder, batch: b)
        perSample["\(b)"] = round2(t * 1000 / Double(b))
        log(String(format: "forward at batch %2d: %.2f ms per sample", b, t * 1000 / Double(b)))
    }
    return perSample
}

/// Best-of wall time of one forward pass of `batch` Gaussian rows.
func forwardSeconds(_ folder: ModelFolder, batch b: Int, minSeconds: Double = 0.6) -> Double {
    let c = folder.config
    let x = GaussianSource.draw(count: b, shape: [c.inChannels, c.sampleSize, c.sampleSize], seed: 1)
    let labels = c.numClassEmbeds == nil ? nil : (0..<b).map { $0 % max(1, c.numClassEmbeds ?? 1) }
    return bestTime(minSeconds: minSeconds) { _ = folder.model.forward(x, timesteps: [Float](repeating: 500, count: b), classLabels: labels) }
}

/// Two settings of one switch in alternating rounds (the best of each), so that a noisy machine
/// disturbs both alike: the direct convolution against im2col + sgemm (Winograd off), Winograd
/// against the direct convolution, or whole rows per core against every kernel split across the
/// cores.
func compareForward(_ folder: ModelFolder, _ what: BenchForward.Comparison, batches: [Int], rounds: Int,
                    log: (String) -> Void) -> [String: [String: Double]] {
    let (offName, onName): (String, String)
    switch what {
    case .convolution: (offName, onName) = ("im2col_sgemm", "direct")
    case .winograd: (offName, onName) = ("direct", "winograd")
    case .split: (offName, onName) = ("kernel_split", "rows_per_core")
    }
    let winogradBefore = Runtime.winograd
    if what == .convolution { Runtime.winograd = false }
    func set(_ on: Bool) {
        switch what {
        case .convolution: Runtime.directConvolution = on
        case .winograd: Runtime.winograd = on
        case .split: UNet2DModel.splitInferenceOverCores = on
        }
    }
    defer { Runtime.directConvolution = true; Runtime.winograd = winogradBefore; UNet2DModel.splitInferenceOverCores = true }
    var out: [String: [String: Double]] = [:]
    for b in batches {
        var best = (off: Double.infinity, on: Double.infinity)
        for _ in 0..<rounds {
            set(false)
            best.off = min(best.off, forwardSeconds(folder, batch: b, minSeconds: 0.3))
            set(true)
            best.on = min(best.on, forwardSeconds(folder, batch: b, minSeconds: 0.3))
        }
        let g = best.off * 1000 / Double(b), d = best.on * 1000 / Double(b)
        out["\(b)"] = [offName: round2(g), onName: round2(d), "speedup": round2(g / d)]
        log(String(format: "forward at batch %2d: \(offName) %.2f, \(onName) %.2f ms per sample (%.2fx)", b, g, d, g / d))
    }
    return out
}

/// `gen bench forward`: what scripts/bench-peers.sh compares with ONNX Runtime and PyTorch.
struct BenchForward: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forward",
        abstract: "Milliseconds per sample of a model folder's forward pass at several batch sizes.",
        discussion: """
        Best of several runs (at least 0.6 s and 3 runs per batch) on Gaussian inputs, after one
        warm-up call. Class labels cycle through the model's classes.
        Examples:
          gen bench forward --batch 1,4,16
          gen bench forward --model .build-peers/models/bench-unet --batch 1,2,4,16 --json
          gen bench forward --compare winograd      # Winograd F(2x2,3x3) against the direct kernel
          gen bench forward --compare convolution   # direct kernel against im2col + sgemm
          gen bench forward --compare split         # rows per core against kernels split
        """)

    @Option(help: "Model folder (default: the shipped emoji model).")
    var model: String?
    @Option(help: "Batch sizes, comma-separated.")
    var batch: String = "1,2,4,16"
    @Option(help: "Convolutions: auto (Winograd F(2x2,3x3) and the AVX-512 direct kernel where the CPU has AVX-512F, else im2col + sgemm), direct (the direct kernel without Winograd), gemm (im2col + sgemm everywhere) or avx2 (the AVX2 direct kernel).")
    var convolution: ConvolutionChoice = .auto
    @Option(help: "Time both settings of one switch in alternating rounds: winograd (Winograd against the direct kernel), convolution (direct against im2col + sgemm) or split (whole rows per core against every kernel split across the cores).")
    var compare: Comparison?
    @Option(help: "Alternating rounds per batch size with --compare.")
    var rounds: Int = 5
    @Flag(help: "Print JSON instead of lines.")
    var json = false
    @OptionGroup var threads: ThreadOptions

    enum ConvolutionChoice: String, ExpressibleByArgument, CaseIterable {
        case auto, direct, gemm, avx2
        /// Sets the process-wide convolution path this choice names (Winograd only with auto).
        func apply() {
            switch self {
            case .auto, .direct: Runtime.convolutionPath = .auto
            case .gemm: Runtime.convolutionPath = .gemm
            case .avx2: Runtime.convolutionPath = .avx2
            }
            Runtime.winograd = self == .auto
        }
    }
    enum Comparison: String, ExpressibleByArgument, CaseIterable { case convolution, winograd, split }

    func batches() throws -> [Int] {
        let parts = batch.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !parts.isEmpty, parts.allSatisfy({ ($0 ?? 0) >= 1 && ($0 ?? 0) <= 256 }) else {
            throw ValidationError("--batch must be comma-separated integers in 1...256, got '\(batch)'")
        }
        return parts.map { $0! }
    }

    func validate() throws {
        _ = try batches()
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be in 1...100, got \(rounds)") }
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let log: (String) -> Void = { msg in
                if json { FileHandle.standardError.write(Data((msg + "\n").utf8)) } else { print(msg) }
            }
            convolution.apply()
            log("machine: \(Runtime.describe())")
            let path = model ?? ModelFolder.defaultPath()
            let folder = try ModelFolder.load(path)
            if let compare {
                if compare != .split && !Runtime.directConvolutionAvailable {
                    throw ModelError.invalidArgument("this CPU has no AVX-512F, so neither Winograd nor the direct convolution runs here (gen bench forward --convolution avx2 times the AVX2 kernel); nothing to compare")
                }
                let per = compareForward(folder, compare, batches: try batches(), rounds: rounds, log: log)
                if json {
                    let obj: [String: Any] = ["machine": Runtime.describe(), "model": path, "ms_per_sample": per,
                                              "compare": compare.rawValue]
                    let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                    print(String(decoding: data, as: UTF8.self))
                }
                return
            }
            let per = forwardMillisecondsPerSample(folder, batches: try batches(), log: log)
            if json {
                let obj: [String: Any] = ["machine": Runtime.describe(), "model": path, "ms_per_sample": per]
                let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }
}
