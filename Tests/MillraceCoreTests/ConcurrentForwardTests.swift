import Dispatch
import Foundation
import MillraceKernels
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

/// Inference shares a batch out by whole rows (each core one complete forward of its rows, its
/// kernels unsplit), the rows left over running with every kernel split across the cores.
@Suite(.serialized) struct RowsPerCoreTests {
    @Test func rowsPerCoreIsSerialForwardsOfEachShare() throws {
        try GlobalKernelSettings.exclusive {
            let model = try ModelFolder.load(Fixtures.path("unet-tiny-a")).model
            let c = model.config
            let before = mr_get_threads()
            defer { mr_set_threads(before); UNet2DModel.splitInferenceOverCores = true }
            for (parts, batch) in [(2, 4), (2, 5), (3, 3), (2, 1)] {
                mr_set_threads(Int32(parts))
                var rng = TestRNG(seed: UInt64(10 * parts + batch))
                let x = Tensor(shape: [batch, c.inChannels, c.sampleSize, c.sampleSize],
                               data: rng.array(batch * c.inChannels * c.sampleSize * c.sampleSize))
                let ts = (0..<batch).map { Float(37 * $0 + 5) }
                let labels = c.numClassEmbeds.map { n in (0..<batch).map { $0 % n } }
                func forward(_ rows: Range<Int>) -> Tensor {
                    model.forward(x.rows(rows), timesteps: Array(ts[rows]), classLabels: labels.map { Array($0[rows]) })
                }
                UNet2DModel.splitInferenceOverCores = true
                let split = model.forward(x, timesteps: ts, classLabels: labels)
                UNet2DModel.splitInferenceOverCores = false
                let kernels = model.forward(x, timesteps: ts, classLabels: labels)
                #expect(relativeError(split.data, kernels.data) < 1e-5, "\(batch) rows on \(parts) cores")

                // the definition: each core's share as a serial forward, then the rest as usual
                let per = batch / parts
                var pieces: [Tensor] = []
                if per > 0 {
                    mr_set_thread_serial(1)
                    pieces = (0..<parts).map { forward(($0 * per)..<(($0 + 1) * per)) }
                    mr_set_thread_serial(0)
                }
                if per * parts < batch { pieces.append(forward((per * parts)..<batch)) }
                let expected = Tensor.stack(rows: pieces)
                #expect(split.data.map(\.bitPattern) == expected.data.map(\.bitPattern), "\(batch) rows on \(parts) cores, bit for bit")
            }
        }
    }
}
