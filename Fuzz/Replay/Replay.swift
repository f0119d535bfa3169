import Foundation

/// Runs `check` once on every file named on the command line (folders: every file inside, sorted):
/// what `swift build` makes of a fuzz target, to replay a corpus, its seeds or a crash. A failed
/// check traps (exit status non-zero); otherwise it prints how many inputs it ran. The same
/// `check` is the libFuzzer entry point when Fuzz/*/run.sh builds the target with libFuzzer.
public func replayInputs(_ arguments: [String], target: String, check: ([UInt8]) -> Void) -> Never {
    guard !arguments.isEmpty, !arguments.contains("--help") else {
        print("""
        usage: \(target) FILE_OR_FOLDER...
        Runs the \(target) check on each input once (a crash is a failed check). To fuzz, use
        Fuzz/*/run.sh, which builds this target with libFuzzer and AddressSanitizer.
        """)
        exit(arguments.isEmpty ? 2 : 0)
    }
    var files: [String] = []
    for path in arguments {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            FileHandle.standardError.write(Data("\(target): no such file or folder: \(path)\n".utf8))
            exit(2)
        }
        if isDir.boolValue {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            files += names.filter { !$0.hasPrefix(".") }.sorted().map { (path as NSString).appendingPathComponent($0) }
        } else {
            files.append(path)
        }
    }
    for file in files {
        guard let data = FileManager.default.contents(atPath: file) else {
            FileHandle.standardError.write(Data("\(target): cannot read \(file)\n".utf8))
            exit(2)
        }
        check([UInt8](data))
    }
    print("\(target): \(files.count) inputs replayed, every check held")
    exit(0)
}
