#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Reader and writer for the safetensors format (https://github.com/huggingface/safetensors):
//
//     [8 bytes: N, little-endian u64] [N bytes: UTF-8 JSON header] [data section]
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}, offsets
// relative to the start of the data section, plus an optional "__metadata__" string→string map.
//
// Everything in a file is treated as untrusted: sizes come from the file's real length, never
// from the header; every header value is checked before it is used; arithmetic on header
// numbers reports overflow instead of trapping. No input makes the reader crash.

/// Element types of safetensors tensors that Millrace reads.
public enum SafetensorsDType: String, Sendable, CaseIterable {
    /// IEEE 754 binary32.
    case f32 = "F32"
    /// IEEE 754 binary16 (half precision).
    case f16 = "F16"
    /// bfloat16: the upper 16 bits of a binary32.
    case bf16 = "BF16"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        }
    }
}

/// An error reading or writing a safetensors file: the case says what kind, the message which
/// tensor or field is wrong and what to do about it.
public enum SafetensorsError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The file could not be opened, read, written or moved into place.
    case io(String)
    /// The bytes are not a valid safetensors file (truncated, a bad header, bad offsets).
    case malformed(String)
    /// A tensor given to the writer cannot be stored (a reserved name, a shape that does not
    /// match its values).
    case invalidTensor(String)

    /// What went wrong, in words.
    public var message: String {
        switch self { case .io(let m), .malformed(let m), .invalidTensor(let m): return m }
    }
    public var description: String { message }

    /// The same error with `prefix: ` before its message.
    func prefixed(_ prefix: String) -> SafetensorsError {
        switch self {
        case .io(let m): return .io("\(prefix): \(m)")
        case .malformed(let m): return .malformed("\(prefix): \(m)")
        case .invalidTensor(let m): return .invalidTensor("\(prefix): \(m)")
        }
    }
}

/// One tensor of a safetensors file, widened to Float32: a shape and its elements in row-major
/// order (`data.count` is the product of `shape`). MillraceCore turns it into a `Tensor`.
public struct SafetensorsTensor: Sendable, Equatable {
    public var shape: [Int]
    public var data: [Float]

    public init(shape: [Int], data: [Float]) {
        self.shape = shape
        self.data = data
    }
}

/// The contents of a safetensors file: named Float32 tensors plus string metadata.
public struct SafetensorsFile: Sendable {
    /// Tensors by name, converted to Float32 (F32 copied, F16 and BF16 widened).
    public var tensors: [String: SafetensorsTensor]
    /// The header's `__metadata__` map (empty when the file has none).
    public var metadata: [String: String]
    /// dtype each tensor had in the file.
    public var dtypes: [String: SafetensorsDType]

    /// Largest header accepted: 100 MB. Real headers are kilobytes to a few megabytes.
    public static let maximumHeaderSize = 100_000_000

    /// A file holding `tensors` and `metadata`. `dtypes` starts as `.f32` for every tensor.
    public init(tensors: [String: SafetensorsTensor], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
        self.dtypes = tensors.mapValues { _ in .f32 }
    }

    // MARK: Reading

    /// Reads and parses the safetensors file at `path`.
    ///
    /// The file's real length bounds everything: the header is read only after its declared
    /// length is checked against the file, and each tensor's bytes are read straight into its
    /// Float32 storage (widened in chunks for F16/BF16) only after its offsets are validated,
    /// so a hostile header cannot cause a large allocation or a read outside the file.
    /// Errors are prefixed with the path.
    public static func read(path: String) throws -> SafetensorsFile {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw SafetensorsError.io("cannot open '\(path)': \(errnoDescription()); check the path")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw SafetensorsError.io("cannot stat '\(path)': \(errnoDescription())")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw SafetensorsError.io("'\(path)' is not a regular file; give the path of a .safetensors file")
        }
        guard info.st_size >= 0, let size = Int(exactly: info.st_size) else {
            throw SafetensorsError.io("'\(path)' has an unusable size \(info.st_size)")
        }
        do {
            return try decode(FileSource(fd: fd, count: size))
        } catch let error as SafetensorsError {
            throw error.prefixed(path)
        }
    }

    /// Parses a safetensors file held in memory.
    public static func parse(_ bytes: [UInt8]) throws -> SafetensorsFile {
        try bytes.withUnsafeBytes { raw in
            try decode(MemorySource(buffer: raw))
        }
    }

    // MARK: Writing

    /// Serialises with tensors in sorted name order, every tensor stored as `dtype`.
    ///
    /// `.f32` is exact. `.f16` rounds to nearest-even (values beyond ±65504 become ±infinity);
    /// `.bf16` rounds to nearest-even too. The `dtypes` property is not consulted. The header lists `__metadata__` first (when there is
    /// any) and is padded with spaces so the data section starts on an 8-byte boundary.
    /// Throws if a tensor's element count disagrees with its shape or a tensor is named
    /// `__metadata__`.
    public func serialized(dtype: SafetensorsDType = .f32) throws -> [UInt8] {
        var out: [UInt8] = []
        let layout = try planLayout(dtype: dtype)
        out.reserveCapacity(layout.header.count + layout.dataSize)
        out.append(contentsOf: layout.header)
        for name in layout.names {
            // planLayout checked that every name is present.
            guard let tensor = tensors[name] else { continue }
            Self.encode(tensor.data, as: dtype) { chunk in out.append(contentsOf: chunk) }
        }
        return out
    }

    /// Atomic write: temporary file in the same folder, then rename, so an existing file is never half-written.
    ///
    /// The temporary file is flushed to disk before the rename and removed if anything fails.
    /// See `serialized(dtype:)` for the layout.
    public func write(path: String, dtype: SafetensorsDType = .f32) throws {
        let layout = try planLayout(dtype: dtype)
        let (directory, base) = Self.splitPath(path)
        var tempPath = ""
        var fd: Int32 = -1
        for attempt in 0..<100 {
            let tag = String(UInt64.random(in: 0...UInt64.max), radix: 36)
            tempPath = (directory.isEmpty ? "" : directory + "/") + ".\(base).\(getpid())-\(tag).tmp"
            fd = open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            if fd >= 0 { break }
            if errno != EEXIST || attempt == 99 {
                throw SafetensorsError.io("cannot create a temporary file next to '\(path)': "
                                       + "\(errnoDescription()); check the folder exists and is writable")
            }
        }
        var finished = false
        defer {
            if fd >= 0 { close(fd) }
            if !finished { unlink(tempPath) }
        }
        var writeError: SafetensorsError?
        func put(_ chunk: UnsafeRawBufferPointer) {
            guard writeError == nil else { return }
            var offset = 0
            while offset < chunk.count {
                let n = posixWrite(fd, chunk.baseAddress! + offset, chunk.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    writeError = SafetensorsError.io("cannot write '\(path)': \(errnoDescription()); "
                                                  + "check free disk space; the original file is untouched")
                    return
                }
                offset += n
            }
        }
        layout.header.withUnsafeBytes { put($0) }
        for name in layout.names {
            guard let tensor = tensors[name] else { continue }
            Self.encode(tensor.data, as: dtype) { chunk in chunk.withUnsafeBytes { put($0) } }
            if writeError != nil { break }
        }
        if let writeError { throw writeError }
        guard fsync(fd) == 0 else {
            throw SafetensorsError.io("cannot flush '\(path)' to disk: \(errnoDescription()); "
                                   + "the original file is untouched")
        }
        let closed = close(fd)
        fd = -1
        guard closed == 0 else {
            throw SafetensorsError.io("cannot write '\(path)': \(errnoDescription()); the original file is untouched")
        }
        guard rename(tempPath, path) == 0 else {
            throw SafetensorsError.io("cannot move the finished file into place at '\(path)': "
                                   + "\(errnoDescription()); the original file is untouched")
        }
        finished = true
        // Make the rename durable; failure here does not undo a completed write.
        let dirFD = open(directory.isEmpty ? "." : directory, O_RDONLY | O_CLOEXEC)
        if dirFD >= 0 {
            _ = fsync(dirFD)
            close(dirFD)
        }
    }
}

// MARK: - Internals

/// Where tensor bytes come from: memory or an open file.
private protocol ByteSource {
    /// Total length in bytes (the real length, never from the header).
    var count: Int { get }
    /// Copies `length` bytes at `offset` to `destination`. The range is already checked
    /// against `count`; throws if the bytes cannot be had (e.g. the file shrank).
    func copy(offset: Int, length: Int, to destination: UnsafeMutableRawPointer) throws
}

private struct MemorySource: ByteSource {
    let buffer: UnsafeRawBufferPointer
    var count: Int { buffer.count }
    func copy(offset: Int, length: Int, to destination: UnsafeMutableRawPointer) throws {
        guard length > 0 else { return }
        guard offset >= 0, length <= buffer.count, offset <= buffer.count - length,
              let base = buffer.baseAddress else {
            throw SafetensorsError.malformed("internal error: read of \(length) bytes at \(offset) outside \(buffer.count)")
        }
        destination.copyMemory(from: base + offset, byteCount: length)
    }
}

private struct FileSource: ByteSource {
    let fd: Int32
    let count: Int
    func copy(offset: Int, length: Int, to destination: UnsafeMutableRawPointer) throws {
        var done = 0
        while done < length {
            let n = pread(fd, destination + done, length - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw SafetensorsError.io("read failed at byte \(offset + done): \(errnoDescription())")
            }
            if n == 0 {
                throw SafetensorsError.malformed("file ended at byte \(offset + done) while reading; "
                                       + "was it truncated or replaced while being read?")
            }
            done += n
        }
    }
}

/// One validated header entry.
private struct TensorEntry {
    var name: String
    var dtype: SafetensorsDType
    var shape: [Int]
    var elementCount: Int
    var begin: Int
    var end: Int
}

private func errnoDescription() -> String {
    String(cString: strerror(errno))
}

@inline(__always)
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, buffer, count)
    #elseif canImport(Musl)
    return Musl.write(fd, buffer, count)
    #else
    return Darwin.write(fd, buffer, count)
    #endif
}

private let supportedList = "Millrace reads F32, F16 and BF16"

extension SafetensorsFile {
    /// Elements converted per chunk when widening F16/BF16.
    fileprivate static let chunkElements = 1 << 14

    fileprivate static func decode<Source: ByteSource>(_ source: Source) throws -> SafetensorsFile {
        let total = source.count
        guard total >= 8 else {
            throw SafetensorsError.malformed("file is \(total) bytes, too short for a safetensors file "
                                   + "(needs at least the 8-byte header length); it is truncated or not safetensors")
        }
        var lengthBytes: UInt64 = 0
        try withUnsafeMutableBytes(of: &lengthBytes) { try source.copy(offset: 0, length: 8, to: $0.baseAddress!) }
        let declared = UInt64(littleEndian: lengthBytes)
        guard declared <= UInt64(maximumHeaderSize) else {
            throw SafetensorsError.malformed("header length field says \(declared) bytes, over the \(maximumHeaderSize)-byte "
                                   + "limit; the file is corrupt or not safetensors")
        }
        let headerSize = Int(declared)
        guard headerSize <= total - 8 else {
            throw SafetensorsError.malformed("header length field says \(headerSize) bytes but only \(total - 8) bytes "
                                   + "follow it; the file is truncated or not safetensors")
        }
        guard headerSize > 0 else {
            throw SafetensorsError.malformed("header is empty (length 0); the file is corrupt or not safetensors")
        }
        let header = try [UInt8](unsafeUninitializedCapacity: headerSize) { buffer, initialized in
            try source.copy(offset: 8, length: headerSize, to: UnsafeMutableRawPointer(buffer.baseAddress!))
            initialized = headerSize
        }
        let dataStart = 8 + headerSize
        let dataSize = total - dataStart
        let (entries, metadata) = try parseHeader(header, dataSize: dataSize)

        var file = SafetensorsFile(tensors: [String: SafetensorsTensor](), metadata: metadata)
        file.tensors.reserveCapacity(entries.count)
        file.dtypes.reserveCapacity(entries.count)
        for entry in entries {
            let data = try readElements(entry, from: source, dataStart: dataStart)
            file.tensors[entry.name] = SafetensorsTensor(shape: entry.shape, data: data)
            file.dtypes[entry.name] = entry.dtype
        }
        return file
    }

    /// Validates the JSON header completely (against the real data-section size) before any
    /// tensor data is touched.
    fileprivate static func parseHeader(_ header: [UInt8], dataSize: Int) throws
        -> (entries: [TensorEntry], metadata: [String: String])
    {
        let json: StrictJSON
        do {
            json = try StrictJSON.parse(header)
        } catch {
            throw SafetensorsError.malformed("header is not valid JSON: \(error); the file is corrupt or not safetensors")
        }
        guard case .object(let members) = json else {
            throw SafetensorsError.malformed("header must be a JSON object mapping tensor names to entries, but it is "
                                   + "\(json.kindName); the file is corrupt or not safetensors")
        }
        var entries: [TensorEntry] = []
        entries.reserveCapacity(members.count)
        var metadata: [String: String] = [:]
        for (name, value) in members {
            if name == "__metadata__" {
                metadata = try parseMetadata(value)
            } else {
                entries.append(try parseEntry(name: name, value, dataSize: dataSize))
            }
        }
        return (entries, metadata)
    }

    fileprivate static func parseMetadata(_ value: StrictJSON) throws -> [String: String] {
        guard case .object(let members) = value else {
            throw SafetensorsError.malformed("'__metadata__' must be an object of strings, but it is \(value.kindName); "
                                   + "fix or remove it in the file's header")
        }
        var metadata: [String: String] = [:]
        for (key, item) in members {
            guard case .string(let text) = item else {
                throw SafetensorsError.malformed("'__metadata__' value for '\(key)' must be a string, but it is "
                                       + "\(item.kindName); fix or remove it in the file's header")
            }
            metadata[key] = text
        }
        return metadata
    }

    fileprivate static func parseEntry(name: String, _ value: StrictJSON, dataSize: Int) throws -> TensorEntry {
        let fix = "the file is malformed; re-export it"
        guard case .object(let fields) = value else {
            throw SafetensorsError.malformed("tensor '\(name)': entry must be an object with dtype, shape and data_offsets, "
                                   + "but it is \(value.kindName); \(fix)")
        }
        func field(_ key: String) throws -> StrictJSON {
            guard let found = fields.first(where: { $0.key == key }) else {
                throw SafetensorsError.malformed("tensor '\(name)' has no '\(key)'; \(fix)")
            }
            return found.value
        }

        // dtype
        let dtypeValue = try field("dtype")
        guard case .string(let dtypeName) = dtypeValue else {
            throw SafetensorsError.malformed("tensor '\(name)': 'dtype' must be a string such as \"F32\", "
                                   + "but it is \(dtypeValue.kindName); \(fix)")
        }
        guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
            throw SafetensorsError.malformed("tensor '\(name)' has dtype \(dtypeName); \(supportedList). "
                                   + "Convert the checkpoint to float32 or float16 first")
        }

        // shape
        let shapeValue = try field("shape")
        guard case .array(let dims) = shapeValue else {
            throw SafetensorsError.malformed("tensor '\(name)': 'shape' must be an array of non-negative integers, "
                                   + "but it is \(shapeValue.kindName); \(fix)")
        }
        var shape: [Int] = []
        shape.reserveCapacity(dims.count)
        var elementCount = 1
        for (axis, dim) in dims.enumerated() {
            guard case .number(.integer(let extent)) = dim, extent >= 0 else {
                throw SafetensorsError.malformed("tensor '\(name)': shape dimension \(axis) must be a non-negative "
                                       + "integer, but it is \(dim.kindName); \(fix)")
            }
            // Multiply in the same order as MillraceCore's Tensor does, so an accepted shape never traps there.
            let (product, overflow) = elementCount.multipliedReportingOverflow(by: extent)
            guard !overflow else {
                throw SafetensorsError.malformed("tensor '\(name)': shape \(describeShape(dims)) has too many elements "
                                       + "(the product overflows); \(fix)")
            }
            elementCount = product
            shape.append(extent)
        }

        // data_offsets
        let offsetsValue = try field("data_offsets")
        guard case .array(let offsets) = offsetsValue, offsets.count == 2 else {
            throw SafetensorsError.malformed("tensor '\(name)': 'data_offsets' must be an array [begin, end] of two "
                                   + "integers, but it is \(describeOffsetsValue(offsetsValue)); \(fix)")
        }
        guard case .number(.integer(let begin)) = offsets[0], begin >= 0,
              case .number(.integer(let end)) = offsets[1], end >= 0 else {
            throw SafetensorsError.malformed("tensor '\(name)': 'data_offsets' must be two non-negative integers, but it "
                                   + "holds \(offsets[0].kindName) and \(offsets[1].kindName); \(fix)")
        }
        guard begin <= end else {
            throw SafetensorsError.malformed("tensor '\(name)': data_offsets [\(begin), \(end)] end before they begin; \(fix)")
        }
        guard end <= dataSize else {
            throw SafetensorsError.malformed("tensor '\(name)': data_offsets [\(begin), \(end)] run past the end of the "
                                   + "data section (\(dataSize) bytes); the file is truncated or malformed")
        }
        let (needed, overflow) = elementCount.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow, needed == end - begin else {
            throw SafetensorsError.malformed("tensor '\(name)': data_offsets [\(begin), \(end)] hold \(end - begin) bytes "
                                   + "but shape \(shape) of \(dtype.rawValue) needs "
                                   + (overflow ? "more than Int.max" : "\(needed)") + " bytes; \(fix)")
        }
        return TensorEntry(name: name, dtype: dtype, shape: shape, elementCount: elementCount,
                           begin: begin, end: end)
    }

    private static func describeShape(_ dims: [StrictJSON]) -> String {
        let parts = dims.map { dim -> String in
            if case .number(.integer(let v)) = dim { return String(v) }
            return "?"
        }
        return "[" + parts.joined(separator: ", ") + "]"
    }

    private static func describeOffsetsValue(_ value: StrictJSON) -> String {
        if case .array(let items) = value { return "an array of \(items.count) element(s)" }
        return value.kindName
    }

    /// Reads one tensor's elements as Float32. `entry` has been validated against the source.
    fileprivate static func readElements<Source: ByteSource>(_ entry: TensorEntry, from source: Source,
                                                             dataStart: Int) throws -> [Float] {
        let count = entry.elementCount
        let start = dataStart + entry.begin
        switch entry.dtype {
        case .f32:
            return try [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
                if count > 0, let base = buffer.baseAddress {
                    try source.copy(offset: start, length: count * 4, to: UnsafeMutableRawPointer(base))
                    #if _endian(big)
                    for i in 0..<count {
                        buffer[i] = Float(bitPattern: UInt32(littleEndian: buffer[i].bitPattern))
                    }
                    #endif
                }
                initialized = count
            }
        case .f16, .bf16:
            let isF16 = entry.dtype == .f16
            var scratch = [UInt16](repeating: 0, count: min(count, chunkElements))
            return try [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
                var done = 0
                try scratch.withUnsafeMutableBufferPointer { halves in
                    while done < count {
                        let n = min(chunkElements, count - done)
                        try source.copy(offset: start + done * 2, length: n * 2,
                                        to: UnsafeMutableRawPointer(halves.baseAddress!))
                        if isF16 {
                            for i in 0..<n { buffer[done + i] = halfToFloat(UInt16(littleEndian: halves[i])) }
                        } else {
                            for i in 0..<n {
                                buffer[done + i] = Float(bitPattern: UInt32(UInt16(littleEndian: halves[i])) << 16)
                            }
                        }
                        done += n
                    }
                }
                initialized = count
            }
        }
    }

    // MARK: Writing internals

    fileprivate struct Layout {
        var header: [UInt8]
        var names: [String]
        var dataSize: Int
    }

    /// Builds the padded header and the tensor order, checking every tensor first.
    fileprivate func planLayout(dtype: SafetensorsDType) throws -> Layout {
        let names = tensors.keys.sorted()
        var json: [UInt8] = [UInt8(ascii: "{")]
        var first = true
        func comma() {
            if !first { json.append(UInt8(ascii: ",")) }
            first = false
        }
        if !metadata.isEmpty {
            comma()
            StrictJSON.appendQuoted("__metadata__", to: &json)
            json.append(contentsOf: Array(":{".utf8))
            var firstItem = true
            for key in metadata.keys.sorted() {
                if !firstItem { json.append(UInt8(ascii: ",")) }
                firstItem = false
                StrictJSON.appendQuoted(key, to: &json)
                json.append(UInt8(ascii: ":"))
                StrictJSON.appendQuoted(metadata[key] ?? "", to: &json)
            }
            json.append(UInt8(ascii: "}"))
        }
        var offset = 0
        for name in names {
            guard let tensor = tensors[name] else { continue }
            if name == "__metadata__" {
                throw SafetensorsError.invalidTensor("a tensor is named '__metadata__', which safetensors reserves; rename it")
            }
            var elements = 1
            for extent in tensor.shape {
                let (p, o) = elements.multipliedReportingOverflow(by: extent)
                guard extent >= 0, !o else {
                    throw SafetensorsError.invalidTensor("tensor '\(name)' has an invalid shape \(tensor.shape); fix the tensor")
                }
                elements = p
            }
            guard elements == tensor.data.count else {
                throw SafetensorsError.invalidTensor("tensor '\(name)' has shape \(tensor.shape) (\(elements) elements) but "
                                       + "\(tensor.data.count) values; fix the tensor before saving")
            }
            let bytes = elements * dtype.byteSize
            comma()
            StrictJSON.appendQuoted(name, to: &json)
            json.append(contentsOf: Array(":{\"dtype\":\"\(dtype.rawValue)\",\"shape\":[".utf8))
            json.append(contentsOf: Array(tensor.shape.map(String.init).joined(separator: ",").utf8))
            json.append(contentsOf: Array("],\"data_offsets\":[\(offset),\(offset + bytes)]}".utf8))
            offset += bytes
        }
        json.append(UInt8(ascii: "}"))
        while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }
        var header: [UInt8] = []
        header.reserveCapacity(8 + json.count)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { header.append(contentsOf: $0) }
        header.append(contentsOf: json)
        return Layout(header: header, names: names, dataSize: offset)
    }

    /// Encodes `values` little-endian as `dtype`, handing out chunks of bytes.
    fileprivate static func encode(_ values: [Float], as dtype: SafetensorsDType,
                                   _ emit: ([UInt8]) -> Void) {
        let chunk = chunkElements
        var start = 0
        var bytes = [UInt8]()
        bytes.reserveCapacity(min(values.count, chunk) * dtype.byteSize)
        while start < values.count {
            let n = min(chunk, values.count - start)
            bytes.removeAll(keepingCapacity: true)
            switch dtype {
            case .f32:
                values.withUnsafeBufferPointer { buffer in
                    #if _endian(little)
                    bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing:
                        UnsafeRawBufferPointer(buffer)[(start * 4)..<((start + n) * 4)]))
                    #else
                    for i in start..<(start + n) {
                        withUnsafeBytes(of: buffer[i].bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
                    }
                    #endif
                }
            case .f16, .bf16:
                for i in start..<(start + n) {
                    let bits = dtype == .f16 ? floatToHalf(values[i]) : floatToBFloat(values[i])
                    bytes.append(UInt8(truncatingIfNeeded: bits))
                    bytes.append(UInt8(truncatingIfNeeded: bits >> 8))
                }
            }
            emit(bytes)
            start += n
        }
    }

    /// Splits a path into (folder, last component); folder is "" for a bare name.
    fileprivate static func splitPath(_ path: String) -> (String, String) {
        guard let slash = path.lastIndex(of: "/") else { return ("", path) }
        let directory = String(path[..<slash])
        let base = String(path[path.index(after: slash)...])
        return (directory.isEmpty ? "/" : directory, base)
    }
}

// MARK: - Half-precision conversion

/// Widens IEEE binary16 bits to Float32 exactly (zeros, subnormals, infinities, NaN payloads).
@inline(__always)
fileprivate func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = UInt32(h >> 10) & 0x1F
    let mantissa = UInt32(h & 0x3FF)
    if exponent == 0x1F {
        return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    }
    if exponent == 0 {
        // Zero or subnormal: mantissa × 2^-24, exact in Float32.
        let magnitude = Float(mantissa) * 0x1p-24
        return sign != 0 ? -magnitude : magnitude
    }
    return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
}

/// Narrows Float32 to IEEE binary16 bits, rounding to nearest, ties to even. Overflow gives
/// infinity; NaN stays NaN (quiet) with the top payload bits kept.
@inline(__always)
fileprivate func floatToHalf(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    let sign = UInt16(truncatingIfNeeded: (bits >> 16) & 0x8000)
    let exponent = Int((bits >> 23) & 0xFF)
    let mantissa = bits & 0x7F_FFFF
    if exponent == 0xFF {
        if mantissa == 0 { return sign | 0x7C00 }
        return sign | 0x7E00 | UInt16(truncatingIfNeeded: mantissa >> 13)
    }
    let e = exponent - 127 + 15
    if e >= 0x1F { return sign | 0x7C00 }
    if e <= 0 {
        // Result is subnormal or zero. Below half the smallest subnormal it rounds to zero.
        if e < -10 { return sign }
        let m = mantissa | 0x80_0000
        let shift = UInt32(14 - e)  // 14...24
        let half = UInt32(1) << (shift - 1)
        let remainder = m & ((UInt32(1) << shift) - 1)
        var result = m >> shift
        if remainder > half || (remainder == half && (result & 1) == 1) { result += 1 }
        return sign | UInt16(truncatingIfNeeded: result)
    }
    var result = UInt32(e) << 10 | (mantissa >> 13)
    let remainder = mantissa & 0x1FFF
    if remainder > 0x1000 || (remainder == 0x1000 && (result & 1) == 1) { result += 1 }
    return sign | UInt16(truncatingIfNeeded: result)
}

/// Narrows Float32 to bfloat16 bits, rounding to nearest, ties to even; NaN stays NaN.
@inline(__always)
fileprivate func floatToBFloat(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    if value.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
    let rounding = UInt32(0x7FFF) + ((bits >> 16) & 1)
    let (rounded, _) = bits.addingReportingOverflow(rounding)
    return UInt16(truncatingIfNeeded: rounded >> 16)
}
