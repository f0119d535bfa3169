import Foundation
import Testing
@testable import MillraceFormats
@testable import MillraceCore
import MillraceTestSupport

/// Folders written by diffusers' `UNet2DModel.save_pretrained` (tools/make_diffusers_fixtures.py)
/// load and run; forward and backward match PyTorch's results stored beside them.
@Suite struct DiffusersParityTests {

    @Test(arguments: ["unet-tiny-a", "unet-tiny-b"])
    func forwardAndBackwardMatchDiffusers(name: String) throws {
        let folder = try ModelFolder.load(Fixtures.path(name))
        let io = try SafetensorsFile.read(path: Fixtures.path(name) + "/io.safetensors").tensors.mapValues(Tensor.init)
        let x = io["input"]!, expected = io["output"]!
        let labels = io["labels"].map { $0.data.map { Int($0) } }
        let model = folder.model

        let inference = model.forward(x, timesteps: io["timesteps"]!.data, classLabels: labels)
        #expect(inference.shape == expected.shape)
        #expect(relativeError(inference.data, expected.data) < 1e-4, "forward differs from diffusers")

        let training = model.forward(x, timesteps: io["timesteps"]!.data, classLabels: labels, training: true)
        #expect(relativeError(training.data, expected.data) < 1e-4, "training forward differs")
        for (_, p) in model.namedParameters() { p.zeroGrad() }
        let dx = model.backward(io["probe"]!)
        #expect(relativeError(dx.data, io["grad.input"]!.data) < 1e-3, "input gradient")
        var checked = 0
        for (pname, p) in model.namedParameters() {
            guard let g = io["grad." + pname] else { Issue.record("no reference gradient for \(pname)"); continue }
            #expect(relativeError(p.grad, g.data) < 1e-3, "gradient of \(pname)")
            checked += 1
        }
        #expect(checked == model.namedParameters().count)
    }

    @Test func parameterCountAndNamesMatchTheFolder() throws {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        #expect(folder.model.parameterCount == 45355)
        #expect(folder.flow.nullClass == 2)
    }
}
