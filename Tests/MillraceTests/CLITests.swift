import Foundation
@testable import Millrace
import Testing

/// The `gen` command line as a user runs it: `swift test` builds it next to the test bundle.
enum GenCLI {
    /// Path of the `gen` built with the tests.
    static var binary: String {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        // The test bundle may sit inside a .xctest directory.
        for _ in 0..<3 {
            let candidate = dir.appendingPathComponent("gen").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return exe.deletingLastPathComponent().appendingPathComponent("gen").path
    }

    /// The repository root (where assets/ is), from this source file's location.
    static var root: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    /// Runs gen with `args` in the repository root; returns (exit status, stdout, stderr).
    static func run(_ args: [String]) throws -> (Int32, String, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: root)
        var env = ProcessInfo.processInfo.environment
        env["MILLRACE_NO_REEXEC"] = "1"
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }
}

@Suite(.serialized) struct CLITests {
    @Test func genIsBuiltWithTheTests() {
        #expect(FileManager.default.isExecutableFile(atPath: GenCLI.binary), "no gen at \(GenCLI.binary)")
    }

    @Test func latentsRunsReproduceBitForBit() throws {
        let dir = TrainerTests.tempPath("cli-latents")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // Two source samples for class 0 and --count 2.
        let latents = GaussianSource.draw(count: 2, shape: [3, 32, 32], seed: 77)
        try SafetensorsFile(tensors: ["latents": latents]).write(path: dir + "/in.safetensors")
        var outputs: [Data] = [], saved: [Data] = []
        for k in 0..<2 {
            let (status, _, err) = try GenCLI.run(["--steps", "2", "--class", "0", "--count", "2", "--threads", "1",
                                                    "--latents", dir + "/in.safetensors", "--out", dir + "/out\(k).png",
                                                    "--save-latents", dir + "/final\(k).safetensors"])
            #expect(status == 0, "gen failed: \(err)")
            outputs.append(try Data(contentsOf: URL(fileURLWithPath: dir + "/out\(k).png")))
            saved.append(try Data(contentsOf: URL(fileURLWithPath: dir + "/final\(k).safetensors")))
        }
        #expect(outputs[0] == outputs[1])
        #expect(saved[0] == saved[1])
        let final = try #require(try SafetensorsFile.read(path: dir + "/final0.safetensors").tensors["latents"])
        #expect(final.shape == [2, 3, 32, 32])
        // A latents file of the wrong shape is refused with a message naming the expected shape.
        try SafetensorsFile(tensors: ["latents": GaussianSource.draw(count: 1, shape: [3, 8, 8], seed: 1)]).write(path: dir + "/bad.safetensors")
        let (status, _, err) = try GenCLI.run(["--steps", "2", "--class", "0", "--count", "2", "--latents", dir + "/bad.safetensors",
                                               "--out", dir + "/never.png"])
        #expect(status != 0)
        #expect(err.contains("expected"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/never.png"))
    }

    @Test(arguments: [
        (["--steps", "0", "--out", "/tmp/millrace-never.png"], "steps"),
        (["--steps", "2", "--class", "Dinosaurs", "--out", "/tmp/millrace-never.png"], "Dinosaurs"),
        (["--steps", "2", "--class", "42", "--out", "/tmp/millrace-never.png"], "42"),
        (["schedule", "boss", "--nfe", "0"], "nfe"),
        (["straighten", "--nfe", "0", "--out", "/tmp/millrace-never"], "nfe"),
        (["eval", "table", "--nfe", "2,x"], "nfe"),
        (["train", "--data", "x.mrds", "--out", "/tmp/millrace-never", "--min-lr", "1e-5"], "--decay cosine"),
        (["train", "--data", "x.mrds", "--out", "/tmp/millrace-never", "--decay", "linear"], "decay"),
    ])
    func badFlagValuesGetClearErrors(args: [String], mention: String) throws {
        let (status, _, err) = try GenCLI.run(args)
        #expect(status != 0)
        #expect(err.lowercased().contains(mention.lowercased()), "stderr: \(err)")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/millrace-never.png"))
    }

    @Test func costsFilesThatAreNotSquareOrNegativeAreRefused() throws {
        let dir = TrainerTests.tempPath("cli-costs")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let cases = [
            ("notsquare", "[[0, 1, 2], [0, 0, 1]]"),
            ("negative", "[[0, 0, -1], [0, 0, 0], [0, 0, 0]]"),
            ("notjson", "[[0, 1"),
        ]
        for (name, text) in cases {
            try Data(text.utf8).write(to: URL(fileURLWithPath: "\(dir)/\(name).json"))
            let (status, out, err) = try GenCLI.run(["schedule", "boss", "--costs", "\(dir)/\(name).json", "--nfe", "1", "--json"])
            #expect(status != 0, "\(name): \(out)")
            #expect(err.contains("\(name).json"), "\(name): \(err)")
        }
        try Data("[[0, 0, 5], [0, 0, 0], [0, 0, 0]]".utf8).write(to: URL(fileURLWithPath: "\(dir)/ok.json"))
        let (status, out, _) = try GenCLI.run(["schedule", "boss", "--costs", "\(dir)/ok.json", "--nfe", "2", "--json"])
        #expect(status == 0)
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        #expect(obj["indices"] as? [Int] == [0, 1, 2])
        #expect(obj["cost"] as? Double == 0)
    }
}
