import MillraceFormats

// Safetensors files (MillraceFormats) hold shapes and Float32 arrays; these bridge them to
// `Tensor`. The arrays are shared, not copied (both are copy-on-write).

extension Tensor {
    /// A tensor read from a safetensors file. The reader guarantees that the shape's product is
    /// the element count, so this never traps on a file's contents.
    public init(_ stored: SafetensorsTensor) {
        self.init(shape: stored.shape, data: stored.data)
    }
}

extension SafetensorsTensor {
    /// The shape and elements of `tensor`, to be written to a safetensors file.
    public init(_ tensor: Tensor) {
        self.init(shape: tensor.shape, data: tensor.data)
    }
}

extension SafetensorsFile {
    /// A file holding `tensors` and `metadata`, every tensor to be written as F32 unless
    /// `serialized(dtype:)` or `write(path:dtype:)` says otherwise.
    public init(tensors: [String: Tensor], metadata: [String: String] = [:]) {
        self.init(tensors: tensors.mapValues(SafetensorsTensor.init), metadata: metadata)
    }
}
