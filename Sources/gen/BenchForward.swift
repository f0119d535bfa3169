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

/// The direct convolution against im2col + sgemm, in alternating rounds (the best of each), so
/// that a noisy machine disturbs both alike.
func compareConvolutions(_ folder: ModelFolder, batches: [Int], rounds: Int, log: (String) -> Void) -> [String: [String: Double]] {
    var out: [String: [String: Double]] = [:]
    for b in batches {
        var best = (gemm: Double.infinity, direct: Double.infinity)
        for _ in 0..<rounds {
            Runtime.directConvolution = false
            best.gemm = min(best.gemm, forwardSeconds(folder, batch: b, minSeconds: 0.3))
            Runtime.directConvolution = true
            best.direct = min(best.direct, forwardSeconds(folder, batch: b, minSeconds: 0.3))
        }
        let g = best.gemm * 1000 / Double(b), d = best.direct * 1000 / Double(b)
        out["\(b)"] = ["im2col_sgemm": round2(g), "direct": round2(d), "speedup": round2(g / d)]
        log(String(format: "forward at batch %2d: im2col/sgemm %.2f, direct %.2f ms per sample (%.2fx)", b, g, d, g / d))
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
          gen bench forward --convolution compare     # direct kernel against im2col + sgemm
        """)

    @Option(help: "Model folder (default: the shipped emoji model).")
    var model: String?
    @Option(help: "Batch sizes, comma-separated.")
    var batch: String = "1,2,4,16"
    @Option(help: "Convolutions: auto (the direct kernel where it applies), gemm (im2col + sgemm everywhere), or compare (both, in alternating rounds).")
    var convolution: ConvolutionChoice = .auto
    @Option(help: "Alternating rounds per batch size with --convolution compare.")
    var rounds: Int = 5
    @Flag(help: "Print JSON instead of lines.")
    var json = false
    @OptionGroup var threads: ThreadOptions

    enum ConvolutionChoice: String, ExpressibleByArgument, CaseIterable { case auto, gemm, compare }

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
            Runtime.directConvolution = convolution != .gemm
            log("machine: \(Runtime.describe())")
            let path = model ?? ModelFolder.defaultPath()
            let folder = try ModelFolder.load(path)
            if convolution == .compare {
                guard Runtime.directConvolutionAvailable else {
                    throw ModelError.invalidArgument("this CPU has no AVX-512F, so the direct convolution does not run here; nothing to compare")
                }
                let per = compareConvolutions(folder, batches: try batches(), rounds: rounds, log: log)
                if json {
                    let obj: [String: Any] = ["machine": Runtime.describe(), "model": path, "ms_per_sample": per]
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
