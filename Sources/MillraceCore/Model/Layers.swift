import Foundation
import MillraceKernels

/// A learnable tensor and its gradient. Reference semantics: layers and the optimizer share it.
public final class Parameter: @unchecked Sendable {
    /// The current value.
    public var value: Tensor { didSet { version &+= 1 } }
    /// Changes each time `value` is set or mutated, so that derived forms of it (a convolution's
    /// Winograd-transformed weights) know when to be made again.
    public private(set) var version = 0
    /// Gradient accumulated by backward passes (same shape as `value`); zero it between steps.
    public var grad: [Float]

    /// A parameter with the given initial value and a zero gradient.
    public init(_ value: Tensor) {
        self.value = value
        self.grad = [Float](repeating: 0, count: value.count)
    }

    /// Sets the gradient to zero.
    public func zeroGrad() {
        grad.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
    }
}

/// Something with named parameters, in diffusers' naming (`conv1.weight`, ...).
public protocol ParameterContainer: AnyObject {
    /// Parameters under their names relative to this container, in a stable order.
    func namedParameters() -> [(String, Parameter)]
}

extension ParameterContainer {
    /// `namedParameters()` of a child, each name prefixed with `prefix.`.
    public func prefixed(_ prefix: String, _ child: ParameterContainer) -> [(String, Parameter)] {
        child.namedParameters().map { ("\(prefix).\($0.0)", $0.1) }
    }
}

/// Deterministic initialisation (PyTorch's default: uniform in ±1/√fan_in).
public struct Initializer {
    public var rng: SplitMix64

    public init(rng: SplitMix64) { self.rng = rng }

    public mutating func uniform(_ shape: [Int], bound: Float) -> Tensor {
        let n = shape.reduce(1, *)
        var data = [Float](repeating: 0, count: n)
        for i in 0..<n { data[i] = (rng.nextUnitFloat() * 2 - 1) * bound }
        return Tensor(shape: shape, data: data)
    }
}

// MARK: - Conv2d

/// 2-D convolution (NCHW, groups 1): `y = conv(x, weight) + bias`.
/// Caches its input while training for the weight gradient.
public final class Conv2d: ParameterContainer {
    public let weight: Parameter  // [out, in, k, k]
    public let bias: Parameter    // [out]
    public let inChannels, outChannels, kernel, stride: Int
    /// Zero padding (top, left, bottom, right).
    public let padding: (top: Int, left: Int, bottom: Int, right: Int)
    var cachedInput: Tensor?
    /// The weights in Winograd form (mr_conv2d_winograd_weights) and the weight version they were
    /// made from: made once for fixed weights, again after each change. Shared by concurrent
    /// forwards (the lock guards making it; the array itself is only read).
    private var winograd: (version: Int, u: [Float])?
    private let winogradLock = NSLock()

    public init(_ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int = 1,
         padding: (top: Int, left: Int, bottom: Int, right: Int), initializer: inout Initializer) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        let bound = 1 / Float(inChannels * kernel * kernel).squareRoot()
        weight = Parameter(initializer.uniform([outChannels, inChannels, kernel, kernel], bound: bound))
        bias = Parameter(initializer.uniform([outChannels], bound: bound))
    }

    public convenience init(_ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int = 1,
                     padding: Int, initializer: inout Initializer) {
        self.init(inChannels, outChannels, kernel: kernel, stride: stride,
                  padding: (padding, padding, padding, padding), initializer: &initializer)
    }

    public func namedParameters() -> [(String, Parameter)] { [("weight", weight), ("bias", bias)] }

    func shape(for x: Tensor) -> mr_conv2d_shape {
        precondition(x.rank == 4 && x.shape[1] == inChannels,
                     "conv expects [B, \(inChannels), H, W], got \(x.shape)")
        return mr_conv2d_shape(
            batch: Int32(x.shape[0]), in_c: Int32(inChannels), in_h: Int32(x.shape[2]),
            in_w: Int32(x.shape[3]), out_c: Int32(outChannels), k_h: Int32(kernel),
            k_w: Int32(kernel), stride: Int32(stride), pad_top: Int32(padding.top),
            pad_left: Int32(padding.left), pad_bottom: Int32(padding.bottom),
            pad_right: Int32(padding.right))
    }

    /// Multiply-adds ×2 of one forward pass on an input of `h`×`w` pixels (one image).
    func flops(h: Int, w: Int) -> (flops: Int, outH: Int, outW: Int) {
        let oh = (h + padding.top + padding.bottom - kernel) / stride + 1
        let ow = (w + padding.left + padding.right - kernel) / stride + 1
        return (2 * outChannels * inChannels * kernel * kernel * oh * ow, oh, ow)
    }

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        var s = shape(for: x)
        let oh = Int(mr_conv2d_out_h(&s)), ow = Int(mr_conv2d_out_w(&s))
        var y = Tensor(uninitialized: [x.shape[0], outChannels, oh, ow])
        let u = winogradWeights(&s)
        y.data.withUnsafeMutableBufferPointer { yp in
            if let u {
                u.withUnsafeBufferPointer {
                    mr_conv2d_forward_prepared(&s, x.data, weight.value.data, $0.baseAddress, bias.value.data, yp.baseAddress)
                }
            } else {
                mr_conv2d_forward(&s, x.data, weight.value.data, bias.value.data, yp.baseAddress)
            }
        }
        if training { cachedInput = x }
        return y
    }

    /// The Winograd form of the weights when this shape takes Winograd (else nil), made when the
    /// weights changed since it was last made.
    private func winogradWeights(_ s: inout mr_conv2d_shape) -> [Float]? {
        guard mr_conv2d_winograd_applies(&s) != 0 else { return nil }
        winogradLock.lock()
        defer { winogradLock.unlock() }
        if let made = winograd, made.version == weight.version { return made.u }
        var u = [Float](repeating: 0, count: Int(mr_conv2d_winograd_weights_count(&s)))
        weight.value.data.withUnsafeBufferPointer { mr_conv2d_winograd_weights(&s, $0.baseAddress, &u) }
        winograd = (weight.version, u)
        return u
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = cachedInput else { preconditionFailure("Conv2d.backward without a training forward") }
        var s = shape(for: x)
        var dx = Tensor(uninitialized: x.shape)
        dx.data.withUnsafeMutableBufferPointer { dxp in
            weight.grad.withUnsafeMutableBufferPointer { dw in
                bias.grad.withUnsafeMutableBufferPointer { db in
                    mr_conv2d_backward(&s, x.data, weight.value.data, dy.data, dxp.baseAddress,
                                       dw.baseAddress, db.baseAddress)
                }
            }
        }
        cachedInput = nil
        return dx
    }
}

// MARK: - Linear

/// `y = x · Wᵀ + b` over the last dimension: x [..., in] → y [..., out].
public final class Linear: ParameterContainer {
    public let weight: Parameter  // [out, in]
    public let bias: Parameter    // [out]
    public let inFeatures, outFeatures: Int
    var cachedInput: Tensor?

    public init(_ inFeatures: Int, _ outFeatures: Int, initializer: inout Initializer) {
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        let bound = 1 / Float(inFeatures).squareRoot()
        weight = Parameter(initializer.uniform([outFeatures, inFeatures], bound: bound))
        bias = Parameter(initializer.uniform([outFeatures], bound: bound))
    }

    public func namedParameters() -> [(String, Parameter)] { [("weight", weight), ("bias", bias)] }

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        precondition(x.shape.last == inFeatures, "linear expects [..., \(inFeatures)], got \(x.shape)")
        let rows = x.count / inFeatures
        var y = Tensor(uninitialized: Array(x.shape.dropLast()) + [outFeatures])
        y.data.withUnsafeMutableBufferPointer { yp in
            mr_linear_forward(Int32(rows), Int32(inFeatures), Int32(outFeatures), x.data,
                              weight.value.data, bias.value.data, yp.baseAddress)
        }
        if training { cachedInput = x }
        return y
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = cachedInput else { preconditionFailure("Linear.backward without a training forward") }
        let rows = x.count / inFeatures
        var dx = Tensor(uninitialized: x.shape)
        dx.data.withUnsafeMutableBufferPointer { dxp in
            weight.grad.withUnsafeMutableBufferPointer { dw in
                bias.grad.withUnsafeMutableBufferPointer { db in
                    mr_linear_backward(Int32(rows), Int32(inFeatures), Int32(outFeatures), x.data,
                                       weight.value.data, dy.data, dxp.baseAddress,
                                       dw.baseAddress, db.baseAddress)
                }
            }
        }
        cachedInput = nil
        return dx
    }
}

// MARK: - GroupNorm (+ SiLU)

/// GroupNorm over [B, C, ...] with affine weight and bias; optionally followed by SiLU
/// (`fusedSiLU`), the pair every ResNet block and the output head use.
public final class GroupNorm: ParameterContainer {
    public let weight: Parameter  // gamma [C]
    public let bias: Parameter    // beta [C]
    public let groups, channels: Int
    public let eps: Float
    public let fusedSiLU: Bool
    var cachedInput: Tensor?
    var cachedNormed: Tensor?    // GroupNorm output before SiLU (only with fusedSiLU)
    var mean: [Float] = [], rstd: [Float] = []

    public init(groups: Int, channels: Int, eps: Float, fusedSiLU: Bool) {
        self.groups = groups
        self.channels = channels
        self.eps = eps
        self.fusedSiLU = fusedSiLU
        weight = Parameter(Tensor(shape: [channels], repeating: 1))
        bias = Parameter(Tensor(zeros: [channels]))
    }

    public func namedParameters() -> [(String, Parameter)] { [("weight", weight), ("bias", bias)] }

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        precondition(x.rank >= 2 && x.shape[1] == channels, "group norm expects [B, \(channels), ...], got \(x.shape)")
        let b = x.shape[0], hw = x.count / (b * channels)
        var y = Tensor(uninitialized: x.shape)
        var m = [Float](repeating: 0, count: b * groups), r = m
        // While training keep the un-activated output for the SiLU backward.
        let fuse = fusedSiLU && !training
        y.data.withUnsafeMutableBufferPointer { yp in
            mr_group_norm_forward(Int32(b), Int32(channels), Int32(hw), Int32(groups), eps, x.data,
                                  weight.value.data, bias.value.data, yp.baseAddress, &m, &r,
                                  fuse ? 1 : 0)
        }
        if training {
            cachedInput = x
            mean = m
            rstd = r
            if fusedSiLU {
                // Out of place: y is kept, so SiLU in place would copy it first.
                var z = Tensor(uninitialized: x.shape)
                z.data.withUnsafeMutableBufferPointer { mr_silu_forward($0.count, y.data, $0.baseAddress) }
                cachedNormed = y
                return z
            }
        } else {
            cachedInput = nil
            cachedNormed = nil
        }
        return y
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = cachedInput else { preconditionFailure("GroupNorm.backward without a training forward") }
        let b = x.shape[0], hw = x.count / (b * channels)
        var dx = Tensor(uninitialized: x.shape)
        dx.data.withUnsafeMutableBufferPointer { dxp in dy.data.withUnsafeBufferPointer { dyp in
            // With SiLU its gradient goes into dx first, and the norm's backward runs in place
            // there (mr_group_norm_backward allows dy == dx): no copy of dy.
            var g = dyp.baseAddress
            if fusedSiLU, let n = cachedNormed {
                mr_silu_backward(dxp.count, n.data, dyp.baseAddress, dxp.baseAddress)
                g = UnsafePointer(dxp.baseAddress)
            }
            weight.grad.withUnsafeMutableBufferPointer { dg in
                bias.grad.withUnsafeMutableBufferPointer { dbeta in
                    mr_group_norm_backward(Int32(b), Int32(channels), Int32(hw), Int32(groups), x.data,
                                           weight.value.data, mean, rstd, g, dxp.baseAddress,
                                           dg.baseAddress, dbeta.baseAddress)
                }
            }
        } }
        cachedInput = nil
        cachedNormed = nil
        return dx
    }
}

// MARK: - SiLU

/// `y = x · sigmoid(x)`, elementwise.
public final class SiLU {
    var cachedInput: Tensor?
    public init() {}

    public func forward(_ x: Tensor, training: Bool) -> Tensor {
        var y = Tensor(uninitialized: x.shape)
        y.data.withUnsafeMutableBufferPointer { mr_silu_forward(x.count, x.data, $0.baseAddress) }
        if training { cachedInput = x }
        return y
    }

    public func backward(_ dy: Tensor) -> Tensor {
        guard let x = cachedInput else { preconditionFailure("SiLU.backward without a training forward") }
        var dx = Tensor(uninitialized: x.shape)
        dx.data.withUnsafeMutableBufferPointer { mr_silu_backward(x.count, x.data, dy.data, $0.baseAddress) }
        cachedInput = nil
        return dx
    }
}

// MARK: - Upsample

/// Nearest-neighbour 2× upsampling of [B, C, H, W] (no parameters, nothing cached).
enum NearestUpsample2x {
    static func forward(_ x: Tensor) -> Tensor {
        let (b, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        var y = Tensor(uninitialized: [b, c, 2 * h, 2 * w])
        y.data.withUnsafeMutableBufferPointer {
            mr_upsample_nearest2x_forward(Int32(b * c), Int32(h), Int32(w), x.data, $0.baseAddress)
        }
        return y
    }

    static func backward(_ dy: Tensor) -> Tensor {
        let (b, c, h, w) = (dy.shape[0], dy.shape[1], dy.shape[2] / 2, dy.shape[3] / 2)
        var dx = Tensor(uninitialized: [b, c, h, w])
        dx.data.withUnsafeMutableBufferPointer {
            mr_upsample_nearest2x_backward(Int32(b * c), Int32(h), Int32(w), dy.data, $0.baseAddress)
        }
        return dx
    }
}

// MARK: - Embedding

/// A lookup table [count, dim]; rows are selected by integer ids.
public final class Embedding: ParameterContainer {
    public let weight: Parameter
    public let count, dim: Int
    var cachedIds: [Int] = []

    public init(count: Int, dim: Int, initializer: inout Initializer) {
        self.count = count
        self.dim = dim
        // PyTorch initialises nn.Embedding from N(0, 1); a uniform with the same variance will do.
        weight = Parameter(initializer.uniform([count, dim], bound: Float(3).squareRoot()))
    }

    public func namedParameters() -> [(String, Parameter)] { [("weight", weight)] }

    public func forward(_ ids: [Int], training: Bool) -> Tensor {
        var y = Tensor(uninitialized: [ids.count, dim])
        for (r, id) in ids.enumerated() {
            precondition(id >= 0 && id < count, "class id \(id) outside 0..<\(count)")
            for j in 0..<dim { y.data[r * dim + j] = weight.value.data[id * dim + j] }
        }
        if training { cachedIds = ids }
        return y
    }

    public func backward(_ dy: Tensor) {
        for (r, id) in cachedIds.enumerated() {
            for j in 0..<dim { weight.grad[id * dim + j] += dy.data[r * dim + j] }
        }
        cachedIds = []
    }
}
