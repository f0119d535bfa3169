// Stand-in for Sources/Millrace/Tensor/Tensor.swift in the fuzz build, which compiles the
// safetensors reader alone with swiftc (the real Tensor.swift imports the C kernels).
// The reader uses only `init(shape:data:)`, `shape` and `data`; the preconditions below are
// the real initialiser's, so a header the reader accepts but Tensor would reject still traps here.

public struct Tensor: Sendable, Equatable {
    public var shape: [Int]
    public var data: [Float]

    public init(shape: [Int], data: [Float]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        precondition(shape.reduce(1, *) == data.count,
                     "shape \(shape) needs \(shape.reduce(1, *)) elements, got \(data.count)")
        self.shape = shape
        self.data = data
    }
}
