import ArgumentParser
import Foundation
import MillraceCore

/// `gen info MODEL_DIR`: what a model folder holds.
struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a model folder's config, parameter count and FLOPs of one forward pass.",
        discussion: "Example:\n  gen info assets/models/emoji32")

    @Argument(help: "Model folder (config.json + model.safetensors or diffusion_pytorch_model.safetensors).")
    var modelDir: String?

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        try runReportingErrors {
            let folder = try ModelFolder.load(modelDir ?? ModelFolder.defaultPath())
            let c = folder.config
            let flops = folder.model.forwardFLOPs(height: c.sampleSize, width: c.sampleSize)
            if json {
                let obj: [String: Any] = [
                    "path": folder.path, "parameters": folder.model.parameterCount,
                    "forward_flops_batch1": flops, "sample_size": c.sampleSize,
                    "block_out_channels": c.blockOutChannels, "layers_per_block": c.layersPerBlock,
                    "classes": folder.flow.classNames, "null_class": folder.flow.nullClass as Any? ?? NSNull(),
                    "norm_scale": folder.flow.normScale,
                    "default_guidance": folder.flow.defaultGuidance,
                    "distilled_guidance": folder.flow.distilledGuidance as Any? ?? NSNull(),
                    "machine": Runtime.describe(),
                ]
                let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            print("model        \(folder.path)")
            print("sample       \(c.inChannels)×\(c.sampleSize)×\(c.sampleSize) → \(c.outChannels) channels")
            print("blocks       \(c.blockOutChannels) channels, \(c.layersPerBlock) layer(s) per block")
            print("down         \(c.downBlockTypes.map(\.rawValue).joined(separator: ", "))")
            print("up           \(c.upBlockTypes.map(\.rawValue).joined(separator: ", "))")
            print("mid          \(c.hasMidBlock ? "UNetMidBlock2D\(c.addAttention ? " with attention" : "")" : "none")")
            print("attention    head dim \(c.attentionHeadDim.map(String.init) ?? "= channels"), norm groups \(c.normNumGroups), eps \(c.normEps)")
            print("time embed   \(c.timeEmbedDim) (flip_sin_to_cos \(c.flipSinToCos), freq_shift \(c.freqShift))")
            if let k = c.numClassEmbeds {
                print("classes      \(k) embeddings; null class \(folder.flow.nullClass.map(String.init) ?? "-")")
                for (i, n) in folder.flow.classNames.enumerated() { print("               \(i): \(n)") }
            }
            print("flow         prediction \(folder.flow.prediction), timestep scale \(folder.flow.timestepScale), norm scale \(String(format: "%.4f", folder.flow.normScale))")
            print("guidance     default \(folder.flow.defaultGuidance)\(folder.flow.distilledGuidance.map { " (straightened: distils guidance \($0))" } ?? "")")
            print("parameters   \(folder.model.parameterCount.formatted())")
            print(String(format: "FLOPs        %.3f GFLOP per forward pass at batch 1 (%d×%d)", Double(flops) / 1e9, c.sampleSize, c.sampleSize))
            print("machine      \(Runtime.describe())")
            if let hint = Runtime.blasCoreHint() { print("             \(hint)") }
        }
    }
}
