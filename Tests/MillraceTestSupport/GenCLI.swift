import Foundation

/// The `gen` executable built with the tests, run as a user would.
public enum GenCLI {
    /// Path of the `gen` built with the tests.
    public static var binary: String { Fixtures.builtExecutable("gen") }

    /// The repository root (where assets/ is).
    public static var root: String { Fixtures.repositoryRoot }

    /// Runs gen with `args` in the repository root; returns (exit status, stdout, stderr).
    public static func run(_ args: [String]) throws -> (Int32, String, String) {
        var env = ProcessInfo.processInfo.environment
        env["MILLRACE_NO_REEXEC"] = "1"
        return try runProcess(binary, args, environment: env, directory: root)
    }
}

/// Runs `executable` with `arguments` and waits; returns (exit status, stdout, stderr). Both
/// pipes are drained at once (stderr on another thread), so a child that writes a lot to one
/// while the other is being read cannot block.
public func runProcess(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                       directory: String? = nil) throws -> (Int32, String, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    if let environment { p.environment = environment }
    if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    final class Box: @unchecked Sendable { var data = Data() }
    let errBox = Box()
    let done = DispatchSemaphore(value: 0)
    DispatchQueue.global().async {
        errBox.data = err.fileHandleForReading.readDataToEndOfFile()
        done.signal()
    }
    let o = out.fileHandleForReading.readDataToEndOfFile()
    done.wait()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: errBox.data, as: UTF8.self))
}
