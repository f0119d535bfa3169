import Foundation
import Testing
import MillraceTestSupport

/// Replays the Swift fuzz targets' seeds and regressions (Fuzz/Safetensors, Fuzz/Multipart)
/// through the fuzz targets themselves: `swift build` makes each a replay tool that runs its
/// check (the same code libFuzzer calls) once per input and exits non-zero when a check fails.
/// A new crash found by a fuzzer goes into its folder and is then checked here.
@Suite struct FuzzReplayTests {
    /// Runs the built `tool` on `folders` of Fuzz/`target`; returns its exit status and output.
    static func replay(_ tool: String, target: String) throws -> (Int32, String) {
        let root = Fixtures.repositoryRoot + "/Fuzz/" + target
        let folders = ["seeds", "regressions"].map { root + "/" + $0 }.filter { FileManager.default.fileExists(atPath: $0) }
        let (status, out, err) = try runProcess(Fixtures.builtExecutable(tool), folders)
        return (status, out + err)
    }

    @Test(arguments: [("fuzz-safetensors", "Safetensors"), ("fuzz-multipart", "Multipart")])
    func seedsAndRegressionsPassTheFuzzChecks(tool: String, target: String) throws {
        let seeds = try FileManager.default.contentsOfDirectory(atPath: Fixtures.repositoryRoot + "/Fuzz/\(target)/seeds")
        let (status, output) = try Self.replay(tool, target: target)
        #expect(status == 0, "\(output)")
        #expect(output.contains("\(tool): ") && output.contains("inputs replayed, every check held"), "\(output)")
        let count = output.split(separator: ":").dropFirst().first.flatMap { Int($0.split(separator: " ").first ?? "") }
        #expect((count ?? 0) >= seeds.count, "every seed was replayed: \(output)")
    }

    /// The replay tool fails loudly on a missing input rather than passing nothing.
    @Test func aMissingInputIsAnError() throws {
        let (status, _, err) = try runProcess(Fixtures.builtExecutable("fuzz-safetensors"), ["/nonexistent/millrace-fuzz-input"])
        #expect(status != 0 && err.contains("no such file"), "\(err)")
    }
}
