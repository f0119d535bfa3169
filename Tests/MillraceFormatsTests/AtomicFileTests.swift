import Foundation
import Testing
import MillraceFormats

/// `AtomicFile.write` replaces a file whole and leaves nothing else behind it.
@Suite struct AtomicFileTests {
    static func folder() throws -> String {
        let dir = NSTemporaryDirectory() + "millrace-atomic-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test func writesAndReplacesLeavingOnlyTheFile() throws {
        let dir = try Self.folder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/a.json"
        try AtomicFile.write(Data("first".utf8), to: path)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "first")
        try AtomicFile.write("second, longer than the first", to: path)
        try AtomicFile.write([UInt8](repeating: 7, count: 100_000), to: dir + "/b.bin")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "second, longer than the first")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/b.bin")) == Data(repeating: 7, count: 100_000))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["a.json", "b.bin"])
    }

    /// A write that cannot happen throws a clear error and changes nothing: the old file keeps
    /// its bytes and no temporary file is left.
    @Test func aFailedWriteChangesNothing() throws {
        let dir = try Self.folder()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/keep.txt"
        try AtomicFile.write("kept", to: path)
        // The target is a non-empty folder: the rename over it fails after the data is written.
        try FileManager.default.createDirectory(atPath: dir + "/sub/inner", withIntermediateDirectories: true)
        #expect(throws: AtomicFile.Failure.self) { try AtomicFile.write("x", to: dir + "/sub") }
        #expect(throws: AtomicFile.Failure.self) { try AtomicFile.write("x", to: dir + "/missing/file.txt") }
        #expect(throws: AtomicFile.Failure.self) { try AtomicFile.write("x", to: dir + "/") }
        do {
            try AtomicFile.write("x", to: dir + "/missing/file.txt")
        } catch let failure as AtomicFile.Failure {
            #expect(failure.description.contains("missing/.file.txt"), "\(failure)")
        }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "kept")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["keep.txt", "sub"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/sub") == ["inner"])
    }
}
