import Testing
@testable import MillraceCore
import MillraceTestSupport

/// Every layer's backward against central finite differences of its own forward pass, for the
/// input and every parameter (sampled entries), with loss = Σ forward(x) · probe.
@Suite struct LayerGradientTests {
    /// Checks `backward` of a layer given closures for its forward (training) and backward.
    func check(input: Tensor, params: [(String, Parameter)],
               forward: (Tensor, Bool) -> Tensor, backward: (Tensor) -> Tensor,
               probeSeed: UInt64 = 99, tolerance: Double = 2e-2, sourceLocation: SourceLocation = #_sourceLocation) {
        var rng = TestRNG(seed: probeSeed)
        let out = forward(input, false)
        let probe = Tensor(shape: out.shape, data: rng.floats(out.count))
        for (_, p) in params { p.zeroGrad() }
        _ = forward(input, true)
        let dx = backward(probe)

        func loss(_ x: Tensor) -> Double {
            let y = forward(x, false)
            return zip(y.data, probe.data).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        }
        let h: Float = 1e-2
        func compare(_ analytic: Float, _ numeric: Double, _ what: String) {
            let scale = max(abs(numeric), abs(Double(analytic)), 0.05)
            #expect(abs(Double(analytic) - numeric) / scale < tolerance,
                    "\(what): analytic \(analytic) vs numeric \(numeric)", sourceLocation: sourceLocation)
        }
        var x = input
        for i in Swift.stride(from: 0, to: x.count, by: max(1, x.count / 12)) {
            let old = x.data[i]
            x.data[i] = old + h; let up = loss(x)
            x.data[i] = old - h; let down = loss(x)
            x.data[i] = old
            compare(dx.data[i], (up - down) / Double(2 * h), "dx[\(i)]")
        }
        for (name, p) in params {
            for i in Swift.stride(from: 0, to: p.value.count, by: max(1, p.value.count / 6)) {
                let old = p.value.data[i]
                p.value.data[i] = old + h; let up = loss(input)
                p.value.data[i] = old - h; let down = loss(input)
                p.value.data[i] = old
                compare(p.grad[i], (up - down) / Double(2 * h), "d\(name)[\(i)]")
            }
        }
    }

    func randomInput(_ shape: [Int], seed: UInt64) -> Tensor {
        var rng = TestRNG(seed: seed)
        return Tensor(shape: shape, data: rng.floats(shape.reduce(1, *)))
    }

    /// Gives norms non-trivial affine parameters so their gradients are exercised.
    func perturb(_ params: [(String, Parameter)], seed: UInt64) {
        var rng = TestRNG(seed: seed)
        for (_, p) in params { for i in 0..<p.value.count { p.value.data[i] += 0.2 * Float.random(in: -1...1, using: &rng) } }
    }

    @Test func conv2d() {
        var ini = Initializer(rng: SplitMix64(seed: 1))
        let conv = Conv2d(3, 4, kernel: 3, stride: 2, padding: (0, 0, 1, 1), initializer: &ini)
        check(input: randomInput([2, 3, 7, 6], seed: 2), params: conv.namedParameters(),
              forward: { conv.forward($0, training: $1) }, backward: { conv.backward($0) })
    }

    @Test func linear() {
        var ini = Initializer(rng: SplitMix64(seed: 1))
        let layer = Linear(5, 3, initializer: &ini)
        check(input: randomInput([2, 4, 5], seed: 3), params: layer.namedParameters(),
              forward: { layer.forward($0, training: $1) }, backward: { layer.backward($0) })
    }

    @Test(arguments: [false, true]) func groupNorm(fused: Bool) {
        let gn = GroupNorm(groups: 2, channels: 6, eps: 1e-5, fusedSiLU: fused)
        perturb(gn.namedParameters(), seed: 4)
        check(input: randomInput([2, 6, 3, 3], seed: 5), params: gn.namedParameters(),
              forward: { gn.forward($0, training: $1) }, backward: { gn.backward($0) })
    }

    @Test func silu() {
        let layer = SiLU()
        check(input: randomInput([3, 7], seed: 6).scaled(3), params: [],
              forward: { layer.forward($0, training: $1) }, backward: { layer.backward($0) })
    }

    @Test func upsample() {
        check(input: randomInput([2, 3, 3, 2], seed: 7), params: [],
              forward: { x, _ in NearestUpsample2x.forward(x) }, backward: { NearestUpsample2x.backward($0) })
    }

    @Test func concat() {
        let other = randomInput([2, 2, 3, 3], seed: 8)
        check(input: randomInput([2, 3, 3, 3], seed: 9), params: [],
              forward: { x, _ in ChannelConcat.forward(x, other) },
              backward: { ChannelConcat.backward($0, firstChannels: 3).0 })
    }

    @Test func attentionBlock() {
        var ini = Initializer(rng: SplitMix64(seed: 10))
        let attn = AttentionBlock(channels: 8, headDim: 4, groups: 2, eps: 1e-5, rescale: 1.5, initializer: &ini)
        perturb(attn.namedParameters(), seed: 11)
        check(input: randomInput([2, 8, 3, 3], seed: 12), params: attn.namedParameters(),
              forward: { attn.forward($0, training: $1) }, backward: { attn.backward($0) })
    }

    /// Inference runs on the channels-first layout without transposes; training on tokens. Both
    /// give the same output to rounding (one head and several, odd sizes, rescale).
    @Test func attentionBlockInferenceMatchesTrainingForward() {
        for (channels, headDim, shape) in [(8, 4, [2, 8, 3, 3]), (16, 16, [1, 16, 5, 7]), (12, 4, [3, 12, 8, 8])] {
            var ini = Initializer(rng: SplitMix64(seed: 20))
            let attn = AttentionBlock(channels: channels, headDim: headDim, groups: 2, eps: 1e-5, rescale: 1.5, initializer: &ini)
            perturb(attn.namedParameters(), seed: 21)
            let x = randomInput(shape, seed: 22)
            let inference = attn.forward(x, training: false), trained = attn.forward(x, training: true)
            let scale = trained.data.map(abs).max()!
            let worst = zip(inference.data, trained.data).map { abs($0 - $1) }.max()!
            #expect(inference.shape == trained.shape && worst <= 1e-5 * scale, "\(shape): \(worst) of \(scale)")
        }
    }

    @Test func resnetBlock() {
        var ini = Initializer(rng: SplitMix64(seed: 13))
        let block = ResnetBlock(in: 4, out: 6, tembChannels: 5, groups: 2, eps: 1e-5, outputScale: 1.2, initializer: &ini)
        perturb(block.namedParameters(), seed: 14)
        let temb = randomInput([2, 5], seed: 15)
        var dTemb = Tensor(zeros: [2, 5])
        check(input: randomInput([2, 4, 4, 4], seed: 16), params: block.namedParameters(),
              forward: { block.forward($0, tembAct: temb, training: $1) },
              backward: { block.backward($0, dTembAct: &dTemb) })
    }

    @Test func embedding() {
        var ini = Initializer(rng: SplitMix64(seed: 17))
        let emb = Embedding(count: 4, dim: 3, initializer: &ini)
        var rng = TestRNG(seed: 18)
        emb.weight.zeroGrad()
        _ = emb.forward([1, 3, 1], training: true)
        let dy = Tensor(shape: [3, 3], data: rng.floats(9))
        emb.backward(dy)
        // Row 1 was used twice: its gradient is the sum of both rows of dy.
        for j in 0..<3 {
            #expect(abs(emb.weight.grad[3 + j] - (dy.data[j] + dy.data[6 + j])) < 1e-6)
            #expect(emb.weight.grad[j] == 0)
        }
    }

    /// A small UNet end to end: input gradient and sampled parameter gradients.
    @Test func smallUNetEndToEnd() {
        var c = UNetConfig()
        c.sampleSize = 4
        c.blockOutChannels = [4, 8]
        c.layersPerBlock = 1
        c.downBlockTypes = [.down, .attnDown]
        c.upBlockTypes = [.attnUp, .up]
        c.normNumGroups = 2
        c.attentionHeadDim = 4
        c.numClassEmbeds = 3
        let model = UNet2DModel(config: c, seed: 5)
        perturb(model.namedParameters(), seed: 6)
        let params = model.namedParameters().filter { ["conv_in.weight", "class_embedding.weight", "mid_block.attentions.0.to_q.weight", "up_blocks.1.resnets.1.norm1.weight", "conv_out.bias"].contains($0.0) }
        #expect(params.count == 5)
        check(input: randomInput([2, 3, 4, 4], seed: 7), params: params,
              forward: { model.forward($0, timesteps: [10, 700], classLabels: [0, 2], training: $1) },
              backward: { model.backward($0) })
    }
}
