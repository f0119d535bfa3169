import MillraceFormats
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

    /// Writes `bytes` to `path` atomically (`AtomicFile.write`): readers see either the old
    /// file or the complete new one; on failure any existing file is untouched.
    static func writeAtomically(_ bytes: [UInt8], path: String) throws {
        do { try AtomicFile.write(bytes, to: path) } catch let failure as AtomicFile.Failure { throw ImageError.io(failure.description) }
    }
}
