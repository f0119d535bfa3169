import ArgumentParser
import Foundation
import MillraceCore

/// The model's forward pass alone: best-of wall time per sample at each batch size.
func forwardMillisecondsPerSample(_ folder: ModelFolder, batches: [Int], log: (String) -> Void) -> [String: Double] {
    let c = folder.config
    var perSample: [String: Double] = [:]
    for b in batches {
        let x = GaussianSource.draw(count: b, shape: [c.inChannels, c.sampleSize, c.sampleSize], seed: 1)
        let labels = c.numClassEmbeds == nil ? nil : (0..<b).map { $0 % max(1, c.numClassEmbeds ?? 1) }
        let t = bestTime { _ = folder.model.forward(x, timesteps: [Float](repeating: 500, count: b), classLabels: labels) }
        perSample["\(b)"] = round2(t * 1000 / Double(b))
        log(String(format: "forward at batch %2d: %.2f ms per sample", b, t * 1000 / Double(b)))
    }
    return perSample
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
        """)

    @Option(help: "Model folder (default: the shipped emoji model).")
    var model: String?
    @Option(help: "Batch sizes, comma-separated.")
    var batch: String = "1,2,4,16"
    @Flag(help: "Print JSON instead of lines.")
    var json = false
    @OptionGroup var threads: ThreadOptions

    func batches() throws -> [Int] {
        let parts = batch.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !parts.isEmpty, parts.allSatisfy({ ($0 ?? 0) >= 1 && ($0 ?? 0) <= 256 }) else {
            throw ValidationError("--batch must be comma-separated integers in 1...256, got '\(batch)'")
        }
        return parts.map { $0! }
    }

    func validate() throws { _ = try batches() }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let log: (String) -> Void = { msg in
                if json { FileHandle.standardError.write(Data((msg + "\n").utf8)) } else { print(msg) }
            }
            log("machine: \(Runtime.describe())")
            let path = model ?? ModelFolder.defaultPath()
            let folder = try ModelFolder.load(path)
            let per = forwardMillisecondsPerSample(folder, batches: try batches(), log: log)
            if json {
                let obj: [String: Any] = ["machine": Runtime.describe(), "model": path, "ms_per_sample": per]
                let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }
}
