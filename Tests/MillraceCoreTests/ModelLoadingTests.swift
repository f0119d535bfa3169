import Foundation
import Testing
@testable import MillraceCore
import MillraceTestSupport

/// Model folders: what Millrace cannot run is refused at load with an error naming it.
@Suite struct ModelLoadingTests {
    static func fixtureConfig() throws -> [String: Any] {
        let path = Fixtures.path("unet-tiny-a") + "/config.json"
        return try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }

    func refusal(_ edit: (inout [String: Any]) -> Void) throws -> String {
        var d = try Self.fixtureConfig()
        edit(&d)
        do {
            _ = try UNetConfig(json: JSONSerialization.data(withJSONObject: d))
            return "accepted"
        } catch let e as ModelError {
            return e.message
        }
    }

    @Test func unsupportedValuesAreRefusedByName() throws {
        #expect(try refusal { $0["act_fn"] = "gelu" }.contains("'act_fn'"))
        #expect(try refusal { $0["time_embedding_type"] = "fourier" }.contains("'time_embedding_type'"))
        #expect(try refusal { $0["resnet_time_scale_shift"] = "scale_shift" }.contains("'resnet_time_scale_shift'"))
        #expect(try refusal { $0["class_embed_type"] = "timestep" }.contains("'class_embed_type'"))
        #expect(try refusal { $0["down_block_types"] = ["DownBlock2D", "CrossAttnDownBlock2D"] }.contains("CrossAttnDownBlock2D"))
        #expect(try refusal { $0["upsample_type"] = "resnet" }.contains("'upsample_type'"))
        #expect(try refusal { $0["some_new_key"] = 1 }.contains("'some_new_key'"))
        #expect(try refusal { $0["layers_per_block"] = "two" }.contains("'layers_per_block'"))
        #expect(try refusal { $0["layers_per_block"] = true }.contains("'layers_per_block'"))
        #expect(try refusal { $0["norm_num_groups"] = 3 }.contains("norm_num_groups"))
        #expect(try refusal { $0["block_out_channels"] = [8] }.contains("'down_block_types'"))
        #expect(try refusal { _ in } == "accepted")
    }

    @Test func weightsThatDoNotMatchTheConfigAreRefusedByName() throws {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        let good = folder.model.stateDict()
        let model = UNet2DModel(config: folder.config)

        var missing = good
        missing["conv_out.bias"] = nil
        #expect { try model.load(missing) } throws: { ($0 as? ModelError)?.message.contains("'conv_out.bias'") == true }

        var extra = good
        extra["conv_out.extra"] = Tensor(zeros: [1])
        #expect { try model.load(extra) } throws: { ($0 as? ModelError)?.message.contains("'conv_out.extra'") == true }

        var wrong = good
        wrong["conv_in.weight"] = Tensor(zeros: [8, 3, 1, 1])
        #expect { try model.load(wrong) } throws: { ($0 as? ModelError)?.message.contains("'conv_in.weight'") == true }

        try model.load(good)
        #expect(model.stateDict() == good)
    }

    @Test func brokenFoldersGetClearErrors() throws {
        let fm = FileManager.default
        let dir = fm.temporaryDirectory.appendingPathComponent("millrace-folder-\(getpid())").path
        try? fm.removeItem(atPath: dir)
        #expect(throws: ModelError.self) { _ = try ModelFolder.load(dir) }
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(throws: ModelError.self) { _ = try ModelFolder.load(dir) }  // no config.json
        let src = Fixtures.path("unet-tiny-a")
        try fm.copyItem(atPath: src + "/config.json", toPath: dir + "/config.json")
        #expect(throws: ModelError.self) { _ = try ModelFolder.load(dir) }  // no weights
        let weights = try Data(contentsOf: URL(fileURLWithPath: src + "/diffusion_pytorch_model.safetensors"))
        try weights.prefix(weights.count - 100).write(to: URL(fileURLWithPath: dir + "/model.safetensors"))
        #expect(throws: ModelError.self) { _ = try ModelFolder.load(dir) }  // truncated weights
        try Data("{not json".utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect(throws: ModelError.self) { _ = try ModelFolder.load(dir) }
        try? fm.removeItem(atPath: dir)
    }

    @Test func writtenFoldersLoadBack() throws {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("millrace-write-\(getpid())").path
        var flow = FlowConfig()
        flow.classNames = ["a", "b"]
        flow.nullClass = 2
        flow.normScale = 1.25
        try ModelFolder.write(model: folder.model, flow: flow, to: dir)
        let back = try ModelFolder.load(dir)
        #expect(back.config == folder.config)
        #expect(back.flow == flow)
        #expect(back.model.stateDict() == folder.model.stateDict())
        try? FileManager.default.removeItem(atPath: dir)
    }
}
