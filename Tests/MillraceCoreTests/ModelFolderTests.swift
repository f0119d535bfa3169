import Foundation
import MillraceCore
import MillraceTestSupport
import Testing

/// Where `gen serve` finds a model's shipped students when no --model is given.
@Suite struct ModelFolderTests {
    @Test func studentsAreTheSiblingModelFoldersNamedAfterTheBase() throws {
        let root = Fixtures.tempPath("students-\(UUID().uuidString)")
        let fm = FileManager.default
        func folder(_ name: String, model: Bool = true) throws {
            try fm.createDirectory(atPath: root + "/" + name, withIntermediateDirectories: true)
            fm.createFile(atPath: root + "/\(name)/config.json", contents: Data("{}".utf8))
            if model { fm.createFile(atPath: root + "/\(name)/model.safetensors", contents: Data()) }
        }
        for name in ["emoji32", "emoji32-2step", "emoji32-1step", "emoji32-classifier-notes", "emoji64", "emoji32x"] {
            try folder(name, model: name != "emoji32-classifier-notes")
        }
        let students = ModelFolder.studentPaths(of: root + "/emoji32").map { URL(fileURLWithPath: $0).lastPathComponent }
        #expect(students == ["emoji32-1step", "emoji32-2step"])
        #expect(ModelFolder.studentPaths(of: root + "/nowhere/emoji32").isEmpty)
    }
}
