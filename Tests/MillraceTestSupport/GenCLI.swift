import Foundation

/// The `gen` executable built with the tests, run as a user would.
public enum GenCLI {
    /// Path of the `gen` built with the tests.
    public static var binary: String { Fixtures.builtExecutable("gen") }

    /// The repository root (where assets/ is).
    public static var root: String { Fixtures.repositoryRoot }

    /// Runs gen with `args` in the repository root; returns (exit status, stdout, stderr).
    public static func run(_ args: [String]) throws -> (Int32, String, String) {
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
