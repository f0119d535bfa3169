import Dispatch
import Foundation
import MillraceCore
import MillraceTestSupport
import Testing

/// An inference forward keeps no state in the model (activations live in the call, not in the
/// layers), so two threads can run one model at once. Checked on the diffusers fixture with
/// attention and class labels: every concurrent output equals the sequential one bit for bit.
@Suite struct ConcurrentForwardTests {
    @Test func twoThreadsShareOneModel() throws {
        // Other suites change the kernels' thread count, which changes rounding: hold it still.
        try GlobalKernelSettings.exclusive { try Self.compareConcurrentWithSequential() }
    }

    static func compareConcurrentWithSequential() throws {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        let model = folder.model
        let c = model.config
        var rng = TestRNG(seed: 9)
        let inputs = (0..<8).map { k in
            Tensor(shape: [1 + k % 3, c.inChannels, c.sampleSize, c.sampleSize],
                   data: rng.array((1 + k % 3) * c.inChannels * c.sampleSize * c.sampleSize))
        }
        let classes = c.numClassEmbeds ?? 0
        let sequential = inputs.indices.map { run(model, inputs, $0, classes: classes) }
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var outputs: [[Float]]
            init(_ n: Int) { outputs = Array(repeating: [], count: n) }
        }
        let shared = UncheckedSendable((model, inputs))
        for _ in 0..<4 {
            let results = Results(inputs.count)
            DispatchQueue.concurrentPerform(iterations: inputs.count) { k in
                let (model, inputs) = shared.value
                let y = Self.run(model, inputs, k, classes: classes)
                results.lock.lock()
                results.outputs[k] = y.data
                results.lock.unlock()
            }
            for k in inputs.indices {
                #expect(results.outputs[k].map(\.bitPattern) == sequential[k].data.map(\.bitPattern), "call \(k) differs when run concurrently")
            }
        }
    }

    static func run(_ model: UNet2DModel, _ inputs: [Tensor], _ k: Int, classes: Int) -> Tensor {
        let x = inputs[k]
        let labels = classes > 0 ? (0..<x.shape[0]).map { ($0 + k) % classes } : nil
        return model.forward(x, timesteps: [Float](repeating: Float(100 * k + 10), count: x.shape[0]), classLabels: labels)
    }
}
