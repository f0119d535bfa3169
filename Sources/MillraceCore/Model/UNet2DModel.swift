import Foundation
import MillraceKernels

/// One down block: ResNet layers (each optionally followed by attention), then a downsampler
/// except in the last block. Every layer's output and the downsampler's output are skips.
final class DownBlockLayer: ParameterContainer {
    let resnets: [ResnetBlock]
    let attentions: [AttentionBlock]
    let downsampler: Downsample?

    init(resnets: [ResnetBlock], attentions: [AttentionBlock], downsampler: Downsample?) {
        self.resnets = resnets
        self.attentions = attentions
        self.downsampler = downsampler
    }

    func namedParameters() -> [(String, Parameter)] {
        var p: [(String, Parameter)] = []
        for (i, r) in resnets.enumerated() { p += prefixed("resnets.\(i)", r) }
        for (i, a) in attentions.enumerated() { p += prefixed("attentions.\(i)", a) }
        if let downsampler { p += prefixed("downsamplers.0", downsampler) }
        return p
    }
}

/// One up block: (layers_per_block + 1) ResNet layers on [h, skip] concatenations (each
/// optionally followed by attention), then an upsampler except in the last block.
final class UpBlockLayer: ParameterContainer {
    let resnets: [ResnetBlock]
    let attentions: [AttentionBlock]
    let upsampler: Upsample?
    var concatChannels: [Int] = []  // channels of h before each concatenation (for backward)

    init(resnets: [ResnetBlock], attentions: [AttentionBlock], upsampler: Upsample?) {
        self.resnets = resnets
        self.attentions = attentions
        self.upsampler = upsampler
    }

    func namedParameters() -> [(String, Parameter)] {
        var p: [(String, Parameter)] = []
        for (i, r) in resnets.enumerated() { p += prefixed("resnets.\(i)", r) }
        for (i, a) in attentions.enumerated() { p += prefixed("attentions.\(i)", a) }
        if let upsampler { p += prefixed("upsamplers.0", upsampler) }
        return p
    }
}

/// diffusers' `UNet2DModel`: same config, same parameter names, same arithmetic, on the C kernels.
///
/// `forward` predicts from a batch of samples, timesteps and class labels. With `training: true`
/// every layer keeps what its backward needs, and `backward` accumulates parameter gradients.
public final class UNet2DModel: ParameterContainer {
    public let config: UNetConfig
    let convIn: Conv2d
    let timeLinear1: Linear, timeLinear2: Linear, timeAct = SiLU(), tembAct = SiLU()
    let classEmbedding: Embedding?
    let downBlocks: [DownBlockLayer]
    let midAttention: AttentionBlock?
    let upBlocks: [UpBlockLayer]
    let normOut: GroupNorm
    let convOut: Conv2d

    /// Builds the network with deterministic random weights (PyTorch's default init ranges).
    public init(config: UNetConfig, seed: UInt64 = 0) {
        self.config = config
        var ini = Initializer(rng: SplitMix64(seed: seed))
        let ch = config.blockOutChannels
        let temb = config.timeEmbedDim
        let groups = config.normNumGroups
        let eps = Float(config.normEps)
        func headDim(_ c: Int) -> Int { config.attentionHeadDim ?? c }

        convIn = Conv2d(config.inChannels, ch[0], kernel: 3, padding: 1, initializer: &ini)
        timeLinear1 = Linear(ch[0], temb, initializer: &ini)
        timeLinear2 = Linear(temb, temb, initializer: &ini)
        classEmbedding = config.numClassEmbeds.map { Embedding(count: $0, dim: temb, initializer: &ini) }

        var downs: [DownBlockLayer] = []
        var out = ch[0]
        for (i, type) in config.downBlockTypes.enumerated() {
            let inC = out
            out = ch[i]
            let last = i == ch.count - 1
            var resnets: [ResnetBlock] = [], attns: [AttentionBlock] = []
            for j in 0..<config.layersPerBlock {
                resnets.append(ResnetBlock(in: j == 0 ? inC : out, out: out, tembChannels: temb,
                                           groups: groups, eps: eps, outputScale: 1, initializer: &ini))
                if type == .attnDown {
                    attns.append(AttentionBlock(channels: out, headDim: headDim(out), groups: groups,
                                                eps: eps, rescale: 1, initializer: &ini))
                }
            }
            let down = last ? nil : Downsample(channels: out, padding: config.downsamplePadding, initializer: &ini)
            downs.append(DownBlockLayer(resnets: resnets, attentions: attns, downsampler: down))
        }
        downBlocks = downs

        let midC = ch.last!
        let midScale = Float(config.midBlockScaleFactor)
        if config.hasMidBlock {
            // diffusers builds resnets[0], the attention, then resnets[1]; the same order here.
            let first = ResnetBlock(in: midC, out: midC, tembChannels: temb, groups: groups, eps: eps,
                                    outputScale: midScale, initializer: &ini)
            midAttention = config.addAttention
                ? AttentionBlock(channels: midC, headDim: headDim(midC),
                                 groups: config.attnNormNumGroups ?? groups, eps: eps,
                                 rescale: midScale, initializer: &ini) : nil
            let second = ResnetBlock(in: midC, out: midC, tembChannels: temb, groups: groups, eps: eps,
                                     outputScale: midScale, initializer: &ini)
            midAll = [first, second]
        } else {
            midAll = []
            midAttention = nil
        }

        var ups: [UpBlockLayer] = []
        let rev = Array(ch.reversed())
        out = rev[0]
        for (i, type) in config.upBlockTypes.enumerated() {
            let prevOut = out
            out = rev[i]
            let inC = rev[min(i + 1, ch.count - 1)]
            let last = i == ch.count - 1
            var resnets: [ResnetBlock] = [], attns: [AttentionBlock] = []
            let layers = config.layersPerBlock + 1
            for j in 0..<layers {
                let skipC = j == layers - 1 ? inC : out
                let resIn = j == 0 ? prevOut : out
                resnets.append(ResnetBlock(in: resIn + skipC, out: out, tembChannels: temb, groups: groups,
                                           eps: eps, outputScale: 1, initializer: &ini))
                if type == .attnUp {
                    attns.append(AttentionBlock(channels: out, headDim: headDim(out), groups: groups,
                                                eps: eps, rescale: 1, initializer: &ini))
                }
            }
            let up = last ? nil : Upsample(channels: out, initializer: &ini)
            ups.append(UpBlockLayer(resnets: resnets, attentions: attns, upsampler: up))
        }
        upBlocks = ups
        normOut = GroupNorm(groups: groups, channels: ch[0], eps: eps, fusedSiLU: true)
        convOut = Conv2d(ch[0], config.outChannels, kernel: 3, padding: 1, initializer: &ini)
    }

    /// The mid block's ResNet layers: [before attention, after attention] (empty without a mid block).
    let midAll: [ResnetBlock]

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("conv_in", convIn) + prefixed("time_embedding.linear_1", timeLinear1)
            + prefixed("time_embedding.linear_2", timeLinear2)
        if let classEmbedding { p += prefixed("class_embedding", classEmbedding) }
        for (i, d) in downBlocks.enumerated() { p += prefixed("down_blocks.\(i)", d) }
        for (i, r) in midAll.enumerated() { p += prefixed("mid_block.resnets.\(i)", r) }
        if let midAttention { p += prefixed("mid_block.attentions.0", midAttention) }
        for (i, u) in upBlocks.enumerated() { p += prefixed("up_blocks.\(i)", u) }
        p += prefixed("conv_norm_out", normOut) + prefixed("conv_out", convOut)
        return p
    }

    /// Number of learnable values.
    public var parameterCount: Int { namedParameters().reduce(0) { $0 + $1.1.value.count } }

    // MARK: Time embedding

    /// diffusers' `get_timestep_embedding`: sinusoids of `timesteps` with `dim` channels.
    static func timestepEmbedding(_ timesteps: [Float], dim: Int, flipSinToCos: Bool,
                                  freqShift: Double) -> Tensor {
        let half = dim / 2
        var out = Tensor(zeros: [timesteps.count, dim])
        for (r, t) in timesteps.enumerated() {
            for i in 0..<half {
                // float32 arithmetic in the same order as torch, so results match to rounding
                let exponent = Float(-Foundation.log(10000.0)) * Float(i) / (Float(half) - Float(freqShift))
                let arg = t * Float(Foundation.exp(Double(exponent)))
                let (s, c) = (Float(Foundation.sin(Double(arg))), Float(Foundation.cos(Double(arg))))
                out.data[r * dim + i] = flipSinToCos ? c : s
                out.data[r * dim + half + i] = flipSinToCos ? s : c
            }
        }
        return out
    }

    // MARK: Forward

    /// Cached between a training forward and its backward.

    /// Predicts for `sample` [B, in_channels, H, W] at `timesteps` (B values, or one for all) with
    /// `classLabels` (B ids; required when the model has a class embedding).
    public func forward(_ sample: Tensor, timesteps: [Float], classLabels: [Int]? = nil,
                        training: Bool = false) -> Tensor {
        precondition(sample.rank == 4 && sample.shape[1] == config.inChannels,
                     "sample must be [B, \(config.inChannels), H, W], got \(sample.shape)")
        let b = sample.shape[0]
        let ts = timesteps.count == 1 ? [Float](repeating: timesteps[0], count: b) : timesteps
        precondition(ts.count == b, "need 1 or \(b) timesteps, got \(timesteps.count)")
        if let labels = classLabels, classEmbedding != nil {
            precondition(labels.count == b, "this model is class-conditional: pass \(b) class labels")
        }
        let parts = Int(mr_parallel_parts())
        if !training && Self.splitInferenceOverCores && parts > 1 && b >= parts {
            return forwardSplitOverCores(sample, timesteps: ts, classLabels: classLabels, parts: parts)
        }
        return forwardRows(sample, timesteps: ts, classLabels: classLabels, training: training)
    }

    /// Whether an inference forward of at least as many rows as cores runs whole rows on each core
    /// (each core a complete forward of its share, kernels unsplit) rather than splitting every
    /// kernel across the cores. On by default; benchmarks compare the two.
    nonisolated(unsafe) public static var splitInferenceOverCores = true

    /// Inference with the batch shared out by rows: parts * (b / parts) rows as `parts` complete
    /// forward passes run at once on the kernel pool (no synchronisation between layers, every
    /// op on both cores, each core's activations in its own cache), then the b % parts rows left
    /// over as one forward whose kernels split across the cores. Inference keeps no state in the
    /// layers, so the passes share the model safely.
    private func forwardSplitOverCores(_ sample: Tensor, timesteps ts: [Float], classLabels: [Int]?,
                                       parts: Int) -> Tensor {
        let b = sample.shape[0], per = b / parts, whole = per * parts
        final class Job: @unchecked Sendable {  // each part writes only its own slot
            let run: (Int) -> Tensor
            let outputs: UnsafeMutableBufferPointer<Tensor?>
            init(parts: Int, run: @escaping (Int) -> Tensor) {
                self.run = run
                outputs = .allocate(capacity: parts)
                outputs.initialize(repeating: nil)
            }
            deinit { outputs.deinitialize(); outputs.deallocate() }
        }
        let job = Job(parts: parts) { part in
            let range = (part * per)..<((part + 1) * per)
            return self.forwardRows(sample.rows(range), timesteps: Array(ts[range]),
                                    classLabels: classLabels.map { Array($0[range]) }, training: false)
        }
        let body: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void = { ctx, part in
            let job = Unmanaged<Job>.fromOpaque(ctx!).takeUnretainedValue()
            job.outputs[Int(part)] = job.run(Int(part))
        }
        withExtendedLifetime(job) {
            mr_run_parts(Int32(parts), body, Unmanaged.passUnretained(job).toOpaque())
        }
        var pieces = job.outputs.map { $0! }
        if whole < b {
            let range = whole..<b
            pieces.append(forwardRows(sample.rows(range), timesteps: Array(ts[range]),
                                      classLabels: classLabels.map { Array($0[range]) }, training: false))
        }
        return Tensor.stack(rows: pieces)
    }

    /// The forward pass itself over all of `sample`'s rows (`ts` has one timestep per row).
    private func forwardRows(_ sample: Tensor, timesteps ts: [Float], classLabels: [Int]?,
                             training: Bool) -> Tensor {
        let b = sample.shape[0]

        let tEmb = Self.timestepEmbedding(ts, dim: config.blockOutChannels[0],
                                          flipSinToCos: config.flipSinToCos, freqShift: config.freqShift)
        var emb = timeLinear2.forward(timeAct.forward(timeLinear1.forward(tEmb, training: training),
                                                      training: training), training: training)
        if let classEmbedding {
            guard let labels = classLabels, labels.count == b else {
                preconditionFailure("this model is class-conditional: pass \(b) class labels")
            }
            emb = emb + classEmbedding.forward(labels, training: training)
        }
        let t = tembAct.forward(emb, training: training)

        var x = sample
        if config.centerInputSample { x = x.scaled(2); x.data = x.data.map { $0 - 1 } }
        var h = convIn.forward(x, training: training)
        var skips = [h]
        for block in downBlocks {
            for j in block.resnets.indices {
                h = block.resnets[j].forward(h, tembAct: t, training: training)
                if !block.attentions.isEmpty { h = block.attentions[j].forward(h, training: training) }
                skips.append(h)
            }
            if let d = block.downsampler {
                h = d.forward(h, training: training)
                skips.append(h)
            }
        }
        if !midAll.isEmpty {
            h = midAll[0].forward(h, tembAct: t, training: training)
            if let midAttention { h = midAttention.forward(h, training: training) }
            h = midAll[1].forward(h, tembAct: t, training: training)
        }
        for block in upBlocks {
            // Only a training forward writes to the model (what its backward needs): inference
            // keeps no state, so two inference calls can share one model from two threads.
            if training { block.concatChannels = [] }
            for j in block.resnets.indices {
                let skip = skips.removeLast()
                if training { block.concatChannels.append(h.shape[1]) }
                h = block.resnets[j].forward(ChannelConcat.forward(h, skip), tembAct: t, training: training)
                if !block.attentions.isEmpty { h = block.attentions[j].forward(h, training: training) }
            }
            if let u = block.upsampler { h = u.forward(h, training: training) }
        }
        return convOut.forward(normOut.forward(h, training: training), training: training)
    }

    // MARK: Backward

    /// Back-propagates `dOutput` (same shape as the forward output) through the last training
    /// forward pass, accumulating every parameter's gradient. Returns the gradient of the sample.
    @discardableResult
    public func backward(_ dOutput: Tensor) -> Tensor {
        var dh = normOut.backward(convOut.backward(dOutput))
        let b = dOutput.shape[0]
        var dT = Tensor(zeros: [b, config.timeEmbedDim])
        // Gradients flowing into the skips, consumed in reverse order of the up path.
        var dSkips: [Tensor] = []
        for block in upBlocks.reversed() {
            if let u = block.upsampler { dh = u.backward(dh) }
            for j in block.resnets.indices.reversed() {
                if !block.attentions.isEmpty { dh = block.attentions[j].backward(dh) }
                let dcat = block.resnets[j].backward(dh, dTembAct: &dT)
                let (dPrev, dSkip) = ChannelConcat.backward(dcat, firstChannels: block.concatChannels[j])
                dh = dPrev
                dSkips.append(dSkip)
            }
        }
        // dSkips now runs from the first skip pushed (conv_in output) to the last.
        if !midAll.isEmpty {
            dh = midAll[1].backward(dh, dTembAct: &dT)
            if let midAttention { dh = midAttention.backward(dh) }
            dh = midAll[0].backward(dh, dTembAct: &dT)
        }
        var k = dSkips.count - 1
        for block in downBlocks.reversed() {
            if let d = block.downsampler {
                dh.addScaled(dSkips[k], 1); k -= 1
                dh = d.backward(dh)
            }
            for j in block.resnets.indices.reversed() {
                dh.addScaled(dSkips[k], 1); k -= 1
                if !block.attentions.isEmpty { dh = block.attentions[j].backward(dh) }
                dh = block.resnets[j].backward(dh, dTembAct: &dT)
            }
        }
        dh.addScaled(dSkips[k], 1)
        precondition(k == 0, "skip bookkeeping out of step")
        let dx = convIn.backward(dh)

        let dEmb = tembAct.backward(dT)
        classEmbedding?.backward(dEmb)
        _ = timeLinear1.backward(timeAct.backward(timeLinear2.backward(dEmb)))
        return config.centerInputSample ? dx.scaled(2) : dx
    }

    // MARK: Cost

    /// An upper estimate of the bytes one batch row of a forward pass holds at its peak (the
    /// activations the layers keep, im2col buffers, attention scores), from the channel widths
    /// and sizes of each level; a server reserves it per row before a model call. The factor
    /// was measured (docs/SECURITY.md): peak RSS growth of a batch-32 forward on emoji32.
    public var activationBytesPerRow: Int {
        var floats = 0
        for (level, channels) in config.blockOutChannels.enumerated() {
            let side = max(1, config.sampleSize >> level)
            floats += channels * side * side * (config.layersPerBlock + 1)
        }
        return floats * 4 * 24
    }

    /// Floating-point operations (2 per multiply-add) of one forward pass on one
    /// `height`×`width` sample: convolutions, linear layers and attention products.
    public func forwardFLOPs(height: Int, width: Int) -> Int {
        var total = 0
        var (h, w) = (height, width)
        func conv(_ c: Conv2d) { let f = c.flops(h: h, w: w); total += f.flops; h = f.outH; w = f.outW }
        func resnet(_ r: ResnetBlock) {
            let (h0, w0) = (h, w)
            conv(r.conv1); conv(r.conv2)
            if let s = r.shortcut { (h, w) = (h0, w0); conv(s) }
            total += 2 * r.timeProj.inFeatures * r.timeProj.outFeatures
        }
        func attention(_ a: AttentionBlock) {
            let L = h * w
            total += 4 * 2 * L * a.channels * a.channels  // q, k, v, out projections
            total += 2 * 2 * L * L * a.channels           // QKᵀ and PV over all heads
        }
        let temb = config.timeEmbedDim
        total += 2 * (config.blockOutChannels[0] * temb + temb * temb)
        conv(convIn)
        var sizes: [(Int, Int)] = [(h, w)]
        for block in downBlocks {
            for j in block.resnets.indices {
                resnet(block.resnets[j])
                if !block.attentions.isEmpty { attention(block.attentions[j]) }
                sizes.append((h, w))
            }
            if let d = block.downsampler { conv(d.conv); sizes.append((h, w)) }
        }
        if !midAll.isEmpty {
            resnet(midAll[0])
            if let midAttention { attention(midAttention) }
            resnet(midAll[1])
        }
        for block in upBlocks {
            for j in block.resnets.indices {
                _ = sizes.removeLast()
                resnet(block.resnets[j])
                if !block.attentions.isEmpty { attention(block.attentions[j]) }
            }
            if let u = block.upsampler { (h, w) = (2 * h, 2 * w); conv(u.conv) }
        }
        conv(convOut)
        return total
    }
}
