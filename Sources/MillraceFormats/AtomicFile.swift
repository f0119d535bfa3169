import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Replacing a file whole, so that a reader (or a crash) sees the old file or the complete new
/// one, never a torn one. Every small file Millrace writes goes through here: on Linux,
/// Foundation's `Data.write(to:options: .atomic)` and `String.write(toFile:atomically: true)`
/// leave an empty /tmp/TemporaryDirectory.XXXXXX folder behind on every call, one per training
/// checkpoint's loss log or retrieval cache update. (safetensors files are streamed to their own
/// temporary file by `SafetensorsFile.write`.)
public enum AtomicFile {
    /// Why a write failed, naming the path and the system's reason.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Writes `bytes` to a temporary file beside `path` (`.<name>.<pid>.<random>.tmp`, created
    /// exclusively), flushes it to disk, then renames it over `path`. On any failure the
    /// temporary file is removed and an existing file at `path` is left as it was.
    public static func write<Bytes: ContiguousBytes>(_ bytes: Bytes, to path: String) throws {
        let slash = path.lastIndex(of: "/")
        let folder = slash.map { String(path[..<$0]) } ?? "."
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        guard !name.isEmpty else { throw Failure(description: "cannot write \(path): no file name") }
        let temp = (folder.isEmpty ? "" : folder + "/")
            + ".\(name).\(getpid()).\(String(UInt64.random(in: 0...UInt64.max), radix: 36)).tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
        if fd < 0 { throw Failure(description: "cannot create \(temp): \(reason())") }
        var done = false
        defer { if !done { unlink(temp) } }
        var failure: String?
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = systemWrite(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = "cannot write \(temp): \(reason())"
                    return
                }
                offset += n
            }
        }
        if failure == nil && fsync(fd) != 0 { failure = "cannot flush \(temp): \(reason())" }
        if close(fd) != 0 && failure == nil { failure = "cannot close \(temp): \(reason())" }
        if let failure { throw Failure(description: failure) }
        if rename(temp, path) != 0 { throw Failure(description: "cannot rename \(temp) to \(path): \(reason())") }
        done = true
    }

    /// `text` as UTF-8, the same way.
    public static func write(_ text: String, to path: String) throws {
        try write(Array(text.utf8), to: path)
    }

    private static func reason() -> String { String(cString: strerror(errno)) }
}

/// write(2), out of reach of `AtomicFile.write`'s own name.
private func systemWrite(_ fd: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int { write(fd, bytes, count) }
