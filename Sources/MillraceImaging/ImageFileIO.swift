#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The text of the current `errno`.
private func errnoText() -> String {
    String(cString: strerror(errno))
}

/// Whole-file reads and atomic writes for image files (POSIX calls, errors as `ImageError.io`).
enum ImageFileIO {
    /// Reads a whole file. Errors are `ImageError.io` naming the path and the OS error.
    static func readAll(path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw ImageError.io("cannot open \(path): \(errnoText())") }
        defer { close(fd) }
        var info = stat()
        if fstat(fd, &info) != 0 { throw ImageError.io("cannot stat \(path): \(errnoText())") }
        if (info.st_mode & S_IFMT) == S_IFDIR { throw ImageError.io("\(path) is a directory") }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(info.st_size))
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ImageError.io("cannot read \(path): \(errnoText())")
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }

    /// Writes `bytes` to `path` atomically: into a new temporary file in the same folder
    /// (`.<name>.<pid>.<random>.tmp`), flushed to disk, then renamed over `path`. Readers see
    /// either the old file or the complete new one; on failure the temporary file is removed and
    /// any existing file is untouched.
    static func writeAtomically(_ bytes: [UInt8], path: String) throws {
        let slash = path.lastIndex(of: "/")
        let folder = slash.map { String(path[..<$0]) } ?? "."
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        guard !name.isEmpty else { throw ImageError.io("cannot write \(path): no file name") }
        let temp = (folder.isEmpty ? "" : folder + "/")
            + ".\(name).\(getpid()).\(String(UInt64.random(in: 0...UInt64.max), radix: 36)).tmp"

        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
        if fd < 0 { throw ImageError.io("cannot create \(temp): \(errnoText())") }
        var done = false
        defer {
            if !done { unlink(temp) }
        }
        var failure: String? = nil
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = "cannot write \(temp): \(errnoText())"
                    return
                }
                offset += n
            }
        }
        if failure == nil && fsync(fd) != 0 { failure = "cannot flush \(temp): \(errnoText())" }
        if close(fd) != 0 && failure == nil { failure = "cannot close \(temp): \(errnoText())" }
        if let failure { throw ImageError.io(failure) }
        if rename(temp, path) != 0 {
            throw ImageError.io("cannot rename \(temp) to \(path): \(errnoText())")
        }
        done = true
    }
}
