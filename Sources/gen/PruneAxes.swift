import ArgumentParser
import Foundation
import MillraceCore
import MillraceFormats
import MillraceTraining

/// `gen prune-axes`: build a model folder's SourceFM pruning set (docs/METHODS.md §4.2).
struct PruneAxes: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune-axes",
        abstract: "Build the SourceFM pruning set (prune-axes.safetensors) used by --source pruned.",
        discussion: """
        PCA (all d components) of the L2-normalised training images and their horizontal flips;
        keeps the signed principal axes ±v_k along which no training image points by more than
        τ (γ = max over images of ⟨±v_k, x̃⟩ ≤ τ). Sampling with --source pruned then draws
        Gaussian noise z with ⟨a, z/‖z‖⟩ ≤ τ_r for every kept axis a (§4.3).
        At 32×32 (d = 3072) this is a 3072×3072 covariance and eigen-decomposition: well under a
        minute on two cores.

        The shipped model's set was made with τ = 0.002 (the best of the sweep in docs/RESULTS.md)
        and F16 storage; this rewrites it when --model is left out.

        Examples:
          gen prune-axes --data data/emoji32.mrds --precision f16     # the shipped set
          gen prune-axes --data data/emoji32.mrds --model runs/my-model --tau 0.01
          gen --steps 8 --source pruned
        """)

    @Option(help: "Dataset file (its train split is used).")
    var data: String
    @Option(help: "Model folder to write prune-axes.safetensors into (default: the shipped model).")
    var model: String?
    @Option(help: "Selection threshold τ: keep signed axes with γ ≤ τ.")
    var tau: Float = PruningSet.defaultTau
    @Option(name: .customLong("tau-r"), help: "Sampling threshold τ_r stored as the default (default: 2.7/√d truncated to 3 decimals, 0.048 at d = 3072).")
    var tauR: Float?
    @Option(help: "Storage of the axes: f32 (exact orthonormal rows) or f16 (half the size; the restricted Gaussian is then approximated within ~1e-3 of the boundary). The shipped set is f16.")
    var precision: Precision = .f32
    @OptionGroup var threads: ThreadOptions

    enum Precision: String, ExpressibleByArgument, CaseIterable {
        case f32, f16
        var dtype: SafetensorsDType { self == .f32 ? .f32 : .f16 }
    }

    func validate() throws {
        guard tau.isFinite && tau > -1 && tau < 1 else { throw ValidationError("--tau must be between -1 and 1, got \(tau)") }
        if let r = tauR, !(r.isFinite && r > 0 && r < 1) { throw ValidationError("--tau-r must be between 0 and 1, got \(r)") }
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let folder = model ?? ModelFolder.defaultPath()
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
                throw ModelError.invalidModel("model folder '\(folder)' does not exist; give one with --model")
            }
            let dataset = try ImageDataset.read(path: data)
            let configPath = (folder as NSString).appendingPathComponent("config.json")
            if let json = FileManager.default.contents(atPath: configPath) {
                let config = try UNetConfig(json: json)
                guard config.inChannels == 3, config.sampleSize == dataset.size else {
                    throw ModelError.invalidArgument("\(data) holds 3×\(dataset.size)×\(dataset.size) images but the model in \(folder) takes \(config.inChannels)×\(config.sampleSize)×\(config.sampleSize)")
                }
            }
            let d = dataset.bytesPerImage
            let train = dataset.indices(split: 0).count
            print("pruning set from \(data): \(train) train images + flips = \(2 * train) rows, d = \(d), τ = \(tau)")

            var bars: [PruneBuildStage: ProgressBar] = [:]
            var eigenStart = Date()
            let start = Date()
            let analysis = try PruningSet.build(dataset: dataset, datasetPath: data, tau: tau, tauR: tauR) { stage, done, total in
                switch stage {
                case .eigendecomposition:
                    if done == 0 {
                        bars[.covariance]?.finish()
                        eigenStart = Date()
                        FileHandle.standardError.write(Data("eigendecomposition of the \(d)×\(d) covariance (LAPACK dsyevd)…\n".utf8))
                    } else {
                        FileHandle.standardError.write(Data(String(format: "eigendecomposition done in %.1f s\n", Date().timeIntervalSince(eigenStart)).utf8))
                    }
                case .covariance, .projections:
                    if bars[stage] == nil {
                        bars[stage] = ProgressBar(stage == .covariance ? "covariance" : "projections", total: total, unit: "chunks")
                    }
                    bars[stage]?.update(done)
                    if done == total && stage == .projections { bars[stage]?.finish() }
                }
            }
            let set = analysis.set

            // γ distribution over all 2d signed axes.
            let all = (analysis.gammaPositive + analysis.gammaNegative).sorted()
            func quantile(_ q: Double) -> Float { all[min(all.count - 1, Int((q * Double(all.count - 1)).rounded()))] }
            print(String(format: "built in %.1f s", Date().timeIntervalSince(start)))
            print("γ over the \(all.count) signed axes:")
            print(String(format: "  min %.4f  1%% %.4f  5%% %.4f  25%% %.4f  median %.4f  75%% %.4f  95%% %.4f  max %.4f",
                         quantile(0), quantile(0.01), quantile(0.05), quantile(0.25), quantile(0.5),
                         quantile(0.75), quantile(0.95), quantile(1)))
            let cuts: [Float] = [0, 0.005, 0.01, 0.02, 0.05, 0.1]
            print("  signed axes with γ ≤ t: " + cuts.map { t in "t=\(t): \(all.filter { $0 <= t }.count)" }.joined(separator: ", "))
            print("|R| = \(set.count) signed axes on \(set.axisCount) components (\(set.twoSidedCount) with both signs) at τ = \(tau)")
            guard set.count > 0 else {
                throw ModelError.invalidArgument("no signed axis has γ ≤ τ = \(tau): nothing to prune; raise --tau (the smallest γ is \(quantile(0)))")
            }
            let kept = set.components.map { analysis.basis.variances[$0] }
            print(String(format: "  variance along the kept axes: %.3g … %.3g (largest of all: %.3g); first kept component %ld",
                         kept.min() ?? 0, kept.max() ?? 0, analysis.basis.variances.first ?? 0, set.components.first ?? 0 as Int))

            let out = PruningSet.path(modelFolder: folder)
            try set.write(path: out, precision: precision.dtype)
            let bytes = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
            print("wrote \(out) (\(String(format: "%.1f", Double(bytes) / 1e6)) MB)")

            // A quick check of the sampler with the set as written.
            let source = try PrunedSource.load(modelFolder: folder)
            let (_, rate) = try source.draw(count: 4, shape: set.shape, seed: 0)
            print(String(format: "pruned sampling at τ_r = %.3f: acceptance %.3f of attempts (4 test draws, ball radius ρ0 = %.2f)",
                         source.tauR, rate, source.ballRadius))
        }
    }
}
