import MillraceKernels

/// A dense float32 tensor: a shape and contiguous row-major storage.
///
/// `Tensor` is a value type (copy-on-write through its array). Feature maps are NCHW.
public struct Tensor: Sendable, Equatable {
    /// Extent of each dimension, outermost first.
    public var shape: [Int]
    /// The elements in row-major order; `data.count == shape.reduce(1, *)`.
    public var data: [Float]

    /// A tensor with the given shape and elements. The element count must match the shape.
    public init(shape: [Int], data: [Float]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        precondition(shape.reduce(1, *) == data.count,
                     "shape \(shape) needs \(shape.reduce(1, *)) elements, got \(data.count)")
        self.shape = shape
        self.data = data
    }

    /// A tensor of zeros.
    public init(zeros shape: [Int]) {
        self.init(shape: shape, data: [Float](repeating: 0, count: shape.reduce(1, *)))
    }

    /// A tensor filled with one value.
    public init(shape: [Int], repeating value: Float) {
        self.init(shape: shape, data: [Float](repeating: value, count: shape.reduce(1, *)))
    }

    /// Number of elements.
    @inlinable public var count: Int { data.count }

    /// Number of dimensions.
    @inlinable public var rank: Int { shape.count }

    /// The same elements under another shape with the same element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        Tensor(shape: newShape, data: data)
    }
}

extension Tensor {
    /// A tensor whose elements are not initialised: every element must be written before it is read.
    /// Used for kernel outputs, to skip a memset of buffers the kernel overwrites anyway.
    public init(uninitialized shape: [Int]) {
        let n = shape.reduce(1, *)
        self.init(shape: shape, data: [Float](unsafeUninitializedCapacity: n) { _, count in count = n })
    }

    /// Elementwise sum; shapes must match.
    public static func + (a: Tensor, b: Tensor) -> Tensor {
        precondition(a.shape == b.shape, "shape mismatch \(a.shape) vs \(b.shape)")
        var y = Tensor(uninitialized: a.shape)
        y.data.withUnsafeMutableBufferPointer { mr_add(a.count, a.data, b.data, $0.baseAddress) }
        return y
    }

    /// `self += alpha * x`.
    public mutating func addScaled(_ x: Tensor, _ alpha: Float) {
        precondition(shape == x.shape, "shape mismatch \(shape) vs \(x.shape)")
        data.withUnsafeMutableBufferPointer { mr_axpy(x.count, alpha, x.data, $0.baseAddress) }
    }

    /// Every element times `alpha`.
    public func scaled(_ alpha: Float) -> Tensor {
        var y = Tensor(uninitialized: shape)
        y.data.withUnsafeMutableBufferPointer { mr_scale(count, alpha, data, $0.baseAddress) }
        return y
    }

    /// Rows `range` of the outermost dimension.
    public func rows(_ range: Range<Int>) -> Tensor {
        let per = count / max(shape[0], 1)
        return Tensor(shape: [range.count] + shape.dropFirst(),
                      data: Array(data[(range.lowerBound * per)..<(range.upperBound * per)]))
    }

    /// Concatenates tensors along the outermost dimension; the other dimensions must agree.
    public static func stack(rows parts: [Tensor]) -> Tensor {
        precondition(!parts.isEmpty)
        let inner = Array(parts[0].shape.dropFirst())
        var data: [Float] = []
        data.reserveCapacity(parts.reduce(0) { $0 + $1.count })
        var n = 0
        for p in parts {
            precondition(Array(p.shape.dropFirst()) == inner, "cannot stack \(p.shape) with \(inner)")
            data += p.data
            n += p.shape[0]
        }
        return Tensor(shape: [n] + inner, data: data)
    }
}
