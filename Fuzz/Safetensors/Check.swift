// The check of the safetensors fuzz target. `swift build` makes it a replay tool (main.swift);
// ./run.sh builds this file alone with libFuzzer, which calls LLVMFuzzerTestOneInput.
//
// Any input must either throw SafetensorsError or parse. When it parses, the result is written
// back out and re-read, and must come back identical (bit for bit, NaN payloads aside): a
// check on the writer and on the reader's agreement with it.

import MillraceFormats

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    checkSafetensors(size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : [])
    return 0
}

/// Parses `bytes`; a parsed file must survive a write and re-read in each dtype it can hold.
func checkSafetensors(_ bytes: [UInt8]) {
    let file: SafetensorsFile
    do {
        file = try SafetensorsFile.parse(bytes)
    } catch is SafetensorsError {
        return
    } catch {
        fatalError("parse threw a non-SafetensorsError: \(error)")
    }
    check(file, roundTripping: .f32)
    if file.dtypes.values.allSatisfy({ $0 == .f16 }) {
        check(file, roundTripping: .f16)
    }
    if file.dtypes.values.allSatisfy({ $0 == .bf16 }) {
        check(file, roundTripping: .bf16)
    }
}

private func same(_ a: Float, _ b: Float) -> Bool {
    (a.isNaN && b.isNaN) || a.bitPattern == b.bitPattern
}

private func check(_ file: SafetensorsFile, roundTripping dtype: SafetensorsDType) {
    let again: SafetensorsFile
    do {
        again = try SafetensorsFile.parse(try file.serialized(dtype: dtype))
    } catch {
        fatalError("re-reading a parsed file written as \(dtype.rawValue) failed: \(error)")
    }
    precondition(again.metadata == file.metadata, "metadata changed in a \(dtype.rawValue) round trip")
    precondition(Set(again.tensors.keys) == Set(file.tensors.keys), "tensor names changed")
    for (name, tensor) in file.tensors {
        guard let other = again.tensors[name] else { fatalError("tensor '\(name)' lost") }
        precondition(other.shape == tensor.shape, "shape of '\(name)' changed")
        precondition(again.dtypes[name] == dtype, "dtype of '\(name)' not \(dtype.rawValue)")
        for (x, y) in zip(tensor.data, other.data) where !same(x, y) {
            fatalError("'\(name)': \(x) came back as \(y) in a \(dtype.rawValue) round trip")
        }
    }
}
