import Foundation

// The page (web-static/) and the sample clips, served read-only from their folders.
extension MillraceService {
    // MARK: Static files

    static let contentTypes = ["html": "text/html; charset=utf-8", "css": "text/css; charset=utf-8",
                               "js": "text/javascript; charset=utf-8", "png": "image/png", "jpg": "image/jpeg",
                               "json": "application/json", "svg": "image/svg+xml", "ico": "image/x-icon", "txt": "text/plain; charset=utf-8"]

    /// A file under `root`; no path escapes it (no "..", no hidden names, no symlinks out).
    func staticFile(_ parts: [String], root rootPath: String) -> HTTPResponse {
        let rel = parts.isEmpty ? ["index.html"] : parts
        // No component may climb out of the folder or be hidden.
        guard rel.allSatisfy({ !$0.isEmpty && $0 != ".." && $0 != "." && !$0.hasPrefix(".") && !$0.contains("\\") && !$0.contains("\0") }) else {
            return .error(404, "not found")
        }
        let root = URL(fileURLWithPath: rootPath).standardizedFileURL.resolvingSymlinksInPath()
        let file = rel.reduce(root) { $0.appendingPathComponent($1) }.standardizedFileURL.resolvingSymlinksInPath()
        guard file.path.hasPrefix(root.path + "/") else { return .error(404, "not found") }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: file.path, isDirectory: &isDir), !isDir.boolValue,
              let data = FileManager.default.contents(atPath: file.path) else {
            return .error(404, "not found")
        }
        let type = Self.contentTypes[file.pathExtension.lowercased()] ?? "application/octet-stream"
        return HTTPResponse(status: 200, headers: [("Content-Type", type), ("Cache-Control", "no-cache")], body: .bytes([UInt8](data)))
    }
}
