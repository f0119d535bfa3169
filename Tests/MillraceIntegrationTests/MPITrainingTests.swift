import Foundation
import Testing
import MillraceFormats
import MillraceTraining
import MillraceTestSupport

/// `mpirun -np 2 gen train` (docs/TRAINING.md, "Several processes (MPI)") with the `gen` built
/// with the tests: two processes of one worker each train as one process of two workers does
/// (each process computes the rows one of those workers does, and a sum of two floats does not
/// depend on their order), resume alike, and only rank 0 writes.
@Suite(.serialized) struct MPITrainingTests {
    static let mpirun: String? = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        .split(separator: ":").map { $0 + "/mpirun" }.first { FileManager.default.isExecutableFile(atPath: $0) }

    /// A small dataset: 8×8 discs, bars and stripes in two classes, two images held out.
    static func dataset(at path: String) throws {
        let size = 8, count = 16
        var pixels: [UInt8] = []
        for n in 0..<count {
            let img = Fixtures.picture(size, size, kind: n % 3, ink: (Float(n % 4) / 4, 0.2, n % 2 == 0 ? 0.9 : 0.1))
            pixels += img.planes.map { UInt8(($0 * 255).rounded()) }
        }
        let items = (0..<count).map { DatasetItem(codepoints: String(format: "%04X", 0x41 + $0), name: "picture \($0)", subgroup: "test") }
        try ImageDataset(size: size, classNames: ["odd", "even"], labels: (0..<count).map { UInt8(1 - $0 % 2) },
                         split: (0..<count).map { $0 >= 14 ? 1 : 0 }, pixels: pixels, items: items).write(path: path)
    }

    /// Runs `gen train` on `data` into the folder `run` of `dir`. With `processes`, under mpirun,
    /// each process started in its own folder `dir`/rank<r> (as on machines that share no disk),
    /// so that what each rank writes can be seen.
    static func train(dir: String, data: String, steps: Int, workers: Int, processes: Int? = nil,
                      resume: Bool = false) throws -> (status: Int32, out: String, err: String) {
        var args = ["train", "--data", data, "--out", "run", "--steps", String(steps), "--workers", String(workers),
                    "--channels", "8,16", "--groups", "4", "--head-dim", "8", "--batch", "8", "--checkpoint-every", "2",
                    "--lr", "3e-3", "--warmup", "2", "--seed", "3", "--threads", "1"]
        if resume { args.append("--resume") }
        var env = ProcessInfo.processInfo.environment
        env["MILLRACE_NO_REEXEC"] = "1"
        if let processes, let mpirun {
            // --oversubscribe: more processes than cores is allowed (a one-core machine);
            // --bind-to none: no pinning (containers may restrict the cpuset). One app context
            // per rank, each with its own working directory.
            var command = ["--oversubscribe", "--bind-to", "none"]
            for r in 0..<processes {
                let wdir = dir + "/rank\(r)"
                try FileManager.default.createDirectory(atPath: wdir, withIntermediateDirectories: true)
                command += (r > 0 ? [":"] : []) + ["-np", "1", "--wdir", wdir, GenCLI.binary] + args
            }
            // Root may run mpirun only when told so; containers often forbid the cross-memory
            // attach that shared-memory transfers use by default.
            env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
            env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
            env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
            return try runProcess(mpirun, command, environment: env)
        }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return try runProcess(GenCLI.binary, args, environment: env, directory: dir)
    }

    /// The largest difference over tensors, each relative to the largest magnitude of that tensor.
    static func maxRelativeDifference(_ a: String, _ b: String) throws -> Float {
        let x = try SafetensorsFile.read(path: a), y = try SafetensorsFile.read(path: b)
        #expect(Set(x.tensors.keys) == Set(y.tensors.keys))
        var worst: Float = 0
        for (name, t) in x.tensors {
            guard let u = y.tensors[name], u.shape == t.shape else { Issue.record("\(name) differs in shape"); continue }
            var diff: Float = 0, scale: Float = 0
            for (p, q) in zip(t.data, u.data) { diff = max(diff, abs(p - q)); scale = max(scale, abs(q)) }
            worst = max(worst, scale > 0 ? diff / scale : diff)
        }
        return worst
    }

    static func steps(inLog path: String) throws -> [Int] {
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(lines.first == Substring(LossLog.header) && lines.dropFirst().allSatisfy { !$0.hasPrefix("step") })
        return lines.dropFirst().map { Int($0.split(separator: ",")[0]) ?? -1 }
    }

    @Test(.enabled(if: MPITrainingTests.mpirun != nil, "mpirun is missing: run scripts/install-deps.sh (openmpi-bin, libopenmpi-dev)"))
    func twoProcessesTrainAsOneProcessOfTwoWorkersAndOnlyRankZeroWrites() throws {
        let dir = Fixtures.tempPath("mpi-\(UUID().uuidString)")
        let data = dir + "/tiny.mrds", mpiDir = dir + "/mpi", oneDir = dir + "/one"
        let mpi = mpiDir + "/rank0/run", rank1 = mpiDir + "/rank1", one = oneDir + "/run"
        try Self.dataset(at: data)
        func contents(_ path: String) -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() }

        let a = try Self.train(dir: mpiDir, data: data, steps: 4, workers: 1, processes: 2)
        try #require(a.status == 0, "mpirun: \(a.out)\n\(a.err.suffix(3000))")
        let b = try Self.train(dir: oneDir, data: data, steps: 4, workers: 2)
        try #require(b.status == 0, "\(b.err.suffix(2000))")
        // Rank 0 alone writes and speaks.
        #expect(contents(mpi) == ["checkpoint.safetensors", "config.json", "flow.json", "loss.csv", "loss.png", "model.safetensors"])
        #expect(contents(rank1).isEmpty, "rank 1 wrote \(contents(rank1))")
        #expect(a.out.components(separatedBy: "wrote run").count == 2, "\(a.out)")
        #expect(a.err.components(separatedBy: "parameters on 14 images").count == 2, "\(a.err.suffix(2000))")
        #expect(a.err.contains("2 processes × 1 worker(s)"))

        func compare(step: Int) throws {
            let model = try Self.maxRelativeDifference(mpi + "/model.safetensors", one + "/model.safetensors")
            let checkpoint = try Self.maxRelativeDifference(mpi + "/checkpoint.safetensors", one + "/checkpoint.safetensors")
            #expect(model <= 1e-5 && checkpoint <= 1e-5, "at step \(step): EMA weights differ by \(model), checkpoint by \(checkpoint)")
            let ma = try SafetensorsFile.read(path: mpi + "/checkpoint.safetensors").metadata
            let mb = try SafetensorsFile.read(path: one + "/checkpoint.safetensors").metadata
            #expect(ma["step"] == String(step) && mb["step"] == String(step))
            #expect(ma["rng"] == mb["rng"], "the generators went alike")
            // The log has each step once, with the loss of the whole batch.
            #expect(try Self.steps(inLog: mpi + "/loss.csv") == Array(1...step))
            let lossA = try LossLog.read(path: mpi + "/loss.csv").map(\.loss), lossB = try LossLog.read(path: one + "/loss.csv").map(\.loss)
            #expect(lossA == lossB)
        }
        try compare(step: 4)

        // Without --resume the run refuses the folder and writes nothing.
        let before = try Data(contentsOf: URL(fileURLWithPath: mpi + "/checkpoint.safetensors"))
        let refused = try Self.train(dir: mpiDir, data: data, steps: 6, workers: 1, processes: 2)
        #expect(refused.status != 0)
        #expect(refused.err.contains("exists: resume it"), "\(refused.err.suffix(2000))")
        #expect(try Data(contentsOf: URL(fileURLWithPath: mpi + "/checkpoint.safetensors")) == before)
        #expect(contents(rank1).isEmpty)

        // Every rank resumes from the checkpoint, so each needs a copy of it; rank 1 only reads it.
        try FileManager.default.createDirectory(atPath: rank1 + "/run", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: mpi + "/checkpoint.safetensors", toPath: rank1 + "/run/checkpoint.safetensors")
        let c = try Self.train(dir: mpiDir, data: data, steps: 6, workers: 1, processes: 2, resume: true)
        try #require(c.status == 0, "mpirun --resume: \(c.err.suffix(3000))")
        #expect(c.err.components(separatedBy: "resumed at step 4").count == 2, "\(c.err.suffix(2000))")
        #expect(contents(rank1 + "/run") == ["checkpoint.safetensors"])
        #expect(try Data(contentsOf: URL(fileURLWithPath: rank1 + "/run/checkpoint.safetensors")) == before)
        let d = try Self.train(dir: oneDir, data: data, steps: 6, workers: 2, resume: true)
        try #require(d.status == 0, "\(d.err.suffix(2000))")
        try compare(step: 6)
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// gen links no MPI library: it starts where Open MPI is not installed, and opens it only
    /// under mpirun.
    @Test func genDoesNotLinkMPI() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/ldd")
        p.arguments = [GenCLI.binary]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(text.contains("libc.so") && !text.contains("libmpi"), "\(text)")
    }
}
