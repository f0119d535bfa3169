import Foundation
import MillraceFormats
import MillraceTestSupport
import Testing

/// scripts/interpolate-weights.py, which made the stream model's weights: (1 − a)·A + a·B of
/// two safetensors files of the same tensors, read with the repo's own reader.
@Suite struct ScriptTests {
    static let script = Fixtures.repositoryRoot + "/scripts/interpolate-weights.py"

    @Test func interpolateWeightsMixesTwoFilesAndKeepsTheFirstOnesMetadata() throws {
        let dir = Fixtures.tempPath("interpolate")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let a = SafetensorsFile(tensors: ["w": SafetensorsTensor(shape: [2, 2], data: [1, 2, 3, 4]),
                                          "b": SafetensorsTensor(shape: [3], data: [0, -1, 8])],
                                metadata: ["format": "pt"])
        let b = SafetensorsFile(tensors: ["w": SafetensorsTensor(shape: [2, 2], data: [5, 6, 7, 8]),
                                          "b": SafetensorsTensor(shape: [3], data: [4, 3, 0])])
        try a.write(path: dir + "/a.safetensors")
        try b.write(path: dir + "/b.safetensors", dtype: .f16)   // F16 inputs are read too
        let (status, out, err) = try runProcess("/usr/bin/python3", [Self.script, dir + "/a.safetensors", dir + "/b.safetensors", "0.25", dir + "/mix.safetensors"])
        #expect(status == 0, "stderr: \(err)")
        #expect(out.contains("0.75·A + 0.25·B"), "\(out)")
        let mix = try SafetensorsFile.read(path: dir + "/mix.safetensors")
        #expect(mix.metadata["format"] == "pt")
        #expect(mix.tensors["w"]?.shape == [2, 2] && mix.tensors["b"]?.shape == [3])
        #expect(mix.tensors["w"]?.data == [2, 3, 4, 5])
        #expect(mix.tensors["b"]?.data == [1, 0, 6])
    }

    @Test func extrapolateGoesPastTheSecondFileOnlyWhenAsked() throws {
        let dir = Fixtures.tempPath("extrapolate")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try SafetensorsFile(tensors: ["w": SafetensorsTensor(shape: [3], data: [1, 2, -1])]).write(path: dir + "/a.safetensors")
        try SafetensorsFile(tensors: ["w": SafetensorsTensor(shape: [3], data: [2, 2, 0.5])]).write(path: dir + "/b.safetensors")
        let args = [dir + "/a.safetensors", dir + "/b.safetensors", "2", dir + "/past.safetensors"]
        // a = 2: as far beyond B as B is from A, 2·B − A.
        let (status, out, err) = try runProcess("/usr/bin/python3", [Self.script, "--extrapolate"] + args)
        #expect(status == 0, "stderr: \(err)")
        #expect(out.contains("-1·A + 2·B"), "\(out)")
        #expect(try SafetensorsFile.read(path: dir + "/past.safetensors").tensors["w"]?.data == [3, 2, 2])
        try FileManager.default.removeItem(atPath: dir + "/past.safetensors")
        // Without the flag, or with a share that is not finite or too far, nothing is written.
        for bad in [[Self.script] + args, [Self.script, "--extrapolate", args[0], args[1], "nan", args[3]],
                    [Self.script, "--extrapolate", args[0], args[1], "11", args[3]],
                    [Self.script, args[0], args[1], "half", args[3]]] {
            let (s, _, e) = try runProcess("/usr/bin/python3", bad)
            #expect(s != 0 && e.contains("share of B"), "stderr: \(e)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/past.safetensors"))
        }
    }

    @Test func interpolateWeightsRefusesFilesThatDoNotMatch() throws {
        let dir = Fixtures.tempPath("interpolate-bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try SafetensorsFile(tensors: ["w": SafetensorsTensor(shape: [4], data: [1, 2, 3, 4])]).write(path: dir + "/a.safetensors")
        try SafetensorsFile(tensors: ["w": SafetensorsTensor(shape: [2, 2], data: [1, 2, 3, 4])]).write(path: dir + "/b.safetensors")
        let (s1, _, e1) = try runProcess("/usr/bin/python3", [Self.script, dir + "/a.safetensors", dir + "/b.safetensors", "0.5", dir + "/mix.safetensors"])
        #expect(s1 != 0 && e1.contains("do not hold the same tensors"), "stderr: \(e1)")
        let (s2, _, e2) = try runProcess("/usr/bin/python3", [Self.script, dir + "/a.safetensors", dir + "/a.safetensors", "1.5", dir + "/mix.safetensors"])
        #expect(s2 != 0 && e2.contains("[0, 1]"), "stderr: \(e2)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/mix.safetensors"))
    }
}
