import Foundation
import MillraceKernels

/// diffusers' `ResnetBlock2D` with the default time-embedding shift:
/// `h = conv1(silu(norm1(x))) + proj(silu(temb)); h = conv2(silu(norm2(h))); y = (shortcut(x) + h) / scale`.
public final class ResnetBlock: ParameterContainer {
    let norm1: GroupNorm, conv1: Conv2d, timeProj: Linear, norm2: GroupNorm, conv2: Conv2d
    let shortcut: Conv2d?
    let outputScale: Float
    let inChannels, outChannels: Int

    public init(in inChannels: Int, out outChannels: Int, tembChannels: Int, groups: Int, eps: Float,
         outputScale: Float, initializer: inout Initializer) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        norm1 = GroupNorm(groups: groups, channels: inChannels, eps: eps, fusedSiLU: true)
        conv1 = Conv2d(inChannels, outChannels, kernel: 3, padding: 1, initializer: &initializer)
        timeProj = Linear(tembChannels, outChannels, initializer: &initializer)
        norm2 = GroupNorm(groups: groups, channels: outChannels, eps: eps, fusedSiLU: true)
        conv2 = Conv2d(outChannels, outChannels, kernel: 3, padding: 1, initializer: &initializer)
        shortcut = inChannels != outChannels
            ? Conv2d(inChannels, outChannels, kernel: 1, padding: 0, initializer: &initializer) : nil
        self.outputScale = outputScale
    }

    public func namedParameters() -> [(String, Parameter)] {
        var p = prefixed("norm1", norm1) + prefixed("conv1", conv1) + prefixed("time_emb_proj", timeProj)
            + prefixed("norm2", norm2) + prefixed("conv2", conv2)
        if let shortcut { p += prefixed("conv_shortcut", shortcut) }
        return p
    }

    /// `tembAct` is silu(temb) [B, tembChannels], shared by all blocks of one forward pass.
    func forward(_ x: Tensor, tembAct: Tensor, training: Bool) -> Tensor {
        var h = conv1.forward(norm1.forward(x, training: training), training: training)
        let t = timeProj.forward(tembAct, training: training)
        let (b, hw) = (h.shape[0], h.shape[2] * h.shape[3])
        h.data.withUnsafeMutableBufferPointer {
            mr_add_channel_bias(Int32(b), Int32(outChannels), Int32(hw), $0.baseAddress, t.data, $0.baseAddress)
        }
        h = conv2.forward(norm2.forward(h, training: training), training: training)
        let skip = shortcut?.forward(x, training: training) ?? x
        var y = skip + h
        if outputScale != 1 { y = y.scaled(1 / outputScale) }
        return y
    }

    /// Returns dx; adds the gradient of silu(temb) into `dTembAct`.
    func backward(_ dy: Tensor, dTembAct: inout Tensor) -> Tensor {
        let g = outputScale != 1 ? dy.scaled(1 / outputScale) : dy
        var dh = norm2.backward(conv2.backward(g))
        let (b, hw) = (dh.shape[0], dh.shape[2] * dh.shape[3])
        var dt = Tensor(zeros: [b, outChannels])
        dt.data.withUnsafeMutableBufferPointer {
            mr_channel_bias_backward(Int32(b), Int32(outChannels), Int32(hw), dh.data, $0.baseAddress)
        }
        dTembAct.addScaled(timeProj.backward(dt), 1)
        dh = norm1.backward(conv1.backward(dh))
        let dskip = shortcut?.backward(g) ?? g
        return dh + dskip
    }
}

/// diffusers' `Attention` as used by UNet2DModel's attention blocks: GroupNorm, multi-head
/// self-attention over the pixels, output projection, residual connection, rescale.
public final class AttentionBlock: ParameterContainer {
    let norm: GroupNorm, toQ: Linear, toK: Linear, toV: Linear, toOut: Linear
    let channels, heads, headDim: Int
    let rescale: Float
    var cachedShape: [Int] = []
    var cachedQ: Tensor?, cachedK: Tensor?, cachedV: Tensor?, cachedProbs: [Float] = []

    public init(channels: Int, headDim: Int, groups: Int, eps: Float, rescale: Float,
         initializer: inout Initializer) {
        self.channels = channels
        self.headDim = headDim
        self.heads = channels / headDim
        self.rescale = rescale
        norm = GroupNorm(groups: groups, channels: channels, eps: eps, fusedSiLU: false)
        toQ = Linear(channels, channels, initializer: &initializer)
        toK = Linear(channels, channels, initializer: &initializer)
        toV = Linear(channels, channels, initializer: &initializer)
        toOut = Linear(channels, channels, initializer: &initializer)
    }

    public func namedParameters() -> [(String, Parameter)] {
        prefixed("group_norm", norm) + prefixed("to_q", toQ) + prefixed("to_k", toK)
            + prefixed("to_v", toV) + prefixed("to_out.0", toOut)
    }

    func forward(_ x: Tensor, training: Bool) -> Tensor {
        if !training { return inferenceForward(x) }
        let (b, c, hh, ww) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let L = hh * ww
        let n = norm.forward(x, training: training)
        var tokens = Tensor(uninitialized: [b, L, c])
        tokens.data.withUnsafeMutableBufferPointer { mr_transpose(Int32(b), Int32(c), Int32(L), n.data, $0.baseAddress) }
        let q = toQ.forward(tokens, training: training)
        let k = toK.forward(tokens, training: training)
        let v = toV.forward(tokens, training: training)
        var o = Tensor(uninitialized: [b, L, c])
        let scale = 1 / Float(headDim).squareRoot()
        if training {
            cachedProbs = [Float](repeating: 0, count: b * heads * L * L)
            o.data.withUnsafeMutableBufferPointer { op in
                cachedProbs.withUnsafeMutableBufferPointer { pp in
                    mr_attention_forward(Int32(b), Int32(heads), Int32(L), Int32(headDim), scale, q.data,
                                         k.data, v.data, op.baseAddress, pp.baseAddress)
                }
            }
            cachedQ = q; cachedK = k; cachedV = v; cachedShape = x.shape
        } else {
            o.data.withUnsafeMutableBufferPointer { op in
                mr_attention_forward(Int32(b), Int32(heads), Int32(L), Int32(headDim), scale, q.data,
                                     k.data, v.data, op.baseAddress, nil)
            }
        }
        let proj = toOut.forward(o, training: training)
        var y = Tensor(uninitialized: x.shape)
        y.data.withUnsafeMutableBufferPointer { mr_transpose(Int32(b), Int32(L), Int32(c), proj.data, $0.baseAddress) }
        y = y + x
        return rescale != 1 ? y.scaled(1 / rescale) : y
    }

    /// Inference on the activations' own layout [B, C, pixels]: the projections are the linear
    /// layers applied along channels (1×1 convolutions, one sgemm without transposes) and the
    /// attention runs on that layout (mr_attention_forward_cf), so nothing is transposed. Keeps
    /// no state. Agrees with the training path to rounding
    /// (LayerGradientTests.attentionBlockInferenceMatchesTrainingForward).
    func inferenceForward(_ x: Tensor) -> Tensor {
        let (b, c, L) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
        let n = norm.forward(x, training: false)
        func alongChannels(_ layer: Linear, _ input: Tensor) -> Tensor {
            var s = mr_conv2d_shape(batch: Int32(b), in_c: Int32(c), in_h: 1, in_w: Int32(L), out_c: Int32(c),
                                    k_h: 1, k_w: 1, stride: 1, pad_top: 0, pad_left: 0, pad_bottom: 0, pad_right: 0)
            var y = Tensor(uninitialized: x.shape)
            y.data.withUnsafeMutableBufferPointer {
                mr_conv2d_forward(&s, input.data, layer.weight.value.data, layer.bias.value.data, $0.baseAddress)
            }
            return y
        }
        let q = alongChannels(toQ, n), k = alongChannels(toK, n), v = alongChannels(toV, n)
        var o = Tensor(uninitialized: x.shape)
        o.data.withUnsafeMutableBufferPointer {
            mr_attention_forward_cf(Int32(b), Int32(heads), Int32(L), Int32(headDim), 1 / Float(headDim).squareRoot(),
                                    q.data, k.data, v.data, $0.baseAddress)
        }
        var y = alongChannels(toOut, o)
        y.data.withUnsafeMutableBufferPointer { mr_add($0.count, $0.baseAddress, x.data, $0.baseAddress) }
        return rescale != 1 ? y.scaled(1 / rescale) : y
    }

    func backward(_ dy: Tensor) -> Tensor {
        guard let q = cachedQ, let k = cachedK, let v = cachedV else {
            preconditionFailure("AttentionBlock.backward without a training forward")
        }
        let (b, c, L) = (cachedShape[0], cachedShape[1], cachedShape[2] * cachedShape[3])
        let g = rescale != 1 ? dy.scaled(1 / rescale) : dy
        var dproj = Tensor(uninitialized: [b, L, c])
        dproj.data.withUnsafeMutableBufferPointer { mr_transpose(Int32(b), Int32(c), Int32(L), g.data, $0.baseAddress) }
        let dO = toOut.backward(dproj)
        var dq = Tensor(uninitialized: q.shape), dk = Tensor(uninitialized: k.shape), dv = Tensor(uninitialized: v.shape)
        let scale = 1 / Float(headDim).squareRoot()
        dq.data.withUnsafeMutableBufferPointer { dqp in
            dk.data.withUnsafeMutableBufferPointer { dkp in
                dv.data.withUnsafeMutableBufferPointer { dvp in
                    mr_attention_backward(Int32(b), Int32(heads), Int32(L), Int32(headDim), scale, q.data,
                                          k.data, v.data, cachedProbs, dO.data, dqp.baseAddress,
                                          dkp.baseAddress, dvp.baseAddress)
                }
            }
        }
        var dTokens = toQ.backward(dq)
        dTokens.addScaled(toK.backward(dk), 1)
        dTokens.addScaled(toV.backward(dv), 1)
        var dn = Tensor(uninitialized: cachedShape)
        dn.data.withUnsafeMutableBufferPointer { mr_transpose(Int32(b), Int32(L), Int32(c), dTokens.data, $0.baseAddress) }
        cachedQ = nil; cachedK = nil; cachedV = nil; cachedProbs = []
        return norm.backward(dn) + g
    }
}

/// diffusers' `Downsample2D` with a convolution: 3x3, stride 2. With `padding` 0 diffusers pads
/// only the bottom and right edges by one pixel first; that is folded into the convolution.
final class Downsample: ParameterContainer {
    let conv: Conv2d
    public init(channels: Int, padding: Int, initializer: inout Initializer) {
        let pad = padding == 0 ? (0, 0, 1, 1) : (padding, padding, padding, padding)
        conv = Conv2d(channels, channels, kernel: 3, stride: 2, padding: pad, initializer: &initializer)
    }
    func namedParameters() -> [(String, Parameter)] { prefixed("conv", conv) }
    func forward(_ x: Tensor, training: Bool) -> Tensor { conv.forward(x, training: training) }
    func backward(_ dy: Tensor) -> Tensor { conv.backward(dy) }
}

/// diffusers' `Upsample2D` with a convolution: nearest 2x, then 3x3 conv.
final class Upsample: ParameterContainer {
    let conv: Conv2d
    public init(channels: Int, initializer: inout Initializer) {
        conv = Conv2d(channels, channels, kernel: 3, padding: 1, initializer: &initializer)
    }
    func namedParameters() -> [(String, Parameter)] { prefixed("conv", conv) }
    func forward(_ x: Tensor, training: Bool) -> Tensor {
        conv.forward(NearestUpsample2x.forward(x), training: training)
    }
    func backward(_ dy: Tensor) -> Tensor { NearestUpsample2x.backward(conv.backward(dy)) }
}

/// Concatenation along channels and its inverse.
enum ChannelConcat {
    static func forward(_ a: Tensor, _ b: Tensor) -> Tensor {
        precondition(a.shape[0] == b.shape[0] && a.shape[2...] == b.shape[2...],
                     "cannot concatenate \(a.shape) and \(b.shape)")
        let (n, c1, c2, hw) = (a.shape[0], a.shape[1], b.shape[1], a.shape[2] * a.shape[3])
        var y = Tensor(uninitialized: [n, c1 + c2, a.shape[2], a.shape[3]])
        y.data.withUnsafeMutableBufferPointer {
            mr_concat_channels(Int32(n), Int32(c1), Int32(c2), Int32(hw), a.data, b.data, $0.baseAddress)
        }
        return y
    }

    static func backward(_ dy: Tensor, firstChannels c1: Int) -> (Tensor, Tensor) {
        let (n, c, h, w) = (dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3])
        var da = Tensor(uninitialized: [n, c1, h, w]), db = Tensor(uninitialized: [n, c - c1, h, w])
        da.data.withUnsafeMutableBufferPointer { ap in
            db.data.withUnsafeMutableBufferPointer { bp in
                mr_split_channels(Int32(n), Int32(c1), Int32(c - c1), Int32(h * w), dy.data,
                                  ap.baseAddress, bp.baseAddress)
            }
        }
        return (da, db)
    }
}
