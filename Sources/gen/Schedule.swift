import ArgumentParser
import Foundation
import MillraceCore

/// `gen schedule`: step schedules for sampling.
struct ScheduleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedule",
        abstract: "Make step schedules for sampling (BOSS: Bellman optimal step sizes).",
        subcommands: [ScheduleBOSSCommand.self])
}

/// `gen schedule boss`: estimate a model's jump costs and solve for the best N-step schedules.
struct ScheduleBOSSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boss",
        abstract: "Bellman optimal step sizes: the N-step schedules of least summed jump cost.",
        discussion: """
        Integrates M reference trajectories with K-step uniform Euler (M·K network evaluations), \
        estimates the cost c[i][j] of one Euler jump between grid points i < j, and chooses for \
        each N the N + 1 grid points from 0 to K of least summed cost (docs/METHODS.md §3). The \
        schedules go into the model folder's schedules.json; sample with them using \
        `gen --schedule boss --steps N`.

        --nfe takes one count (4), a range (1...10) or a list (1,2,4,8).

        --costs solves for a given matrix instead (a JSON array of K + 1 rows of K + 1 numbers, \
        as written by --save-costs) and writes nothing.

        Examples:
          gen schedule boss --nfe 1...10     estimate the costs, write schedules.json
          gen schedule boss --nfe 4 --samples 20 --grid 50
          gen schedule boss --costs costs.json --nfe 4 --json
        """)

    @Option(help: "Number(s) of steps N: '4', '1...10' or '1,2,4,8'.")
    var nfe: String
    @Option(help: "Reference trajectories M (default 100).")
    var samples: Int?
    @Option(help: "Reference grid intervals K (default 100).")
    var grid: Int?
    @Option(help: "Model folder (default: the shipped emoji model, assets/models/emoji32).")
    var model: String?
    @Option(help: "Random seed of the reference source samples (default 0).")
    var seed: UInt64?
    @Option(help: "Classifier-free guidance of the trajectories (default: the model's default guidance).")
    var guidance: Float?
    @Option(help: "Trajectories integrated at once (memory: batch·(2K+1)·C·H·W floats).")
    var batchSize: Int = 10
    @Option(help: "Also write the estimated cost matrix to this JSON file (usable with --costs).")
    var saveCosts: String?
    @Option(help: "Solve for this cost matrix (JSON array of K + 1 rows) instead of estimating one; writes nothing.")
    var costs: String?
    @Flag(help: "Print the schedule as {\"indices\": [...], \"cost\": x} (needs a single --nfe value).")
    var json = false
    @OptionGroup var threads: ThreadOptions

    /// Parses "4", "1...10" or "1,2,4,8" into distinct step counts, ascending.
    static func parseSteps(_ text: String) throws -> [Int] {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let bad = ValidationError("--nfe must be a step count (4), a range (1...10) or a list (1,2,4,8), got '\(text)'")
        var values: [Int] = []
        if let r = trimmed.range(of: "...") {
            guard let lo = Int(trimmed[..<r.lowerBound].trimmingCharacters(in: .whitespaces)),
                  let hi = Int(trimmed[r.upperBound...].trimmingCharacters(in: .whitespaces)) else { throw bad }
            guard lo <= hi else { throw ValidationError("--nfe range \(lo)...\(hi) is empty") }
            guard hi - lo <= 100_000 else { throw ValidationError("--nfe range \(lo)...\(hi) is too long") }
            values = Array(lo...hi)
        } else {
            for part in trimmed.split(separator: ",", omittingEmptySubsequences: false) {
                guard let v = Int(part.trimmingCharacters(in: .whitespaces)) else { throw bad }
                values.append(v)
            }
        }
        if let v = values.first(where: { $0 < 1 }) {
            throw ValidationError("--nfe must be at least 1 step, got \(v)")
        }
        return Array(Set(values)).sorted()
    }

    static func checkFits(_ steps: [Int], grid k: Int, what: String) throws {
        if let n = steps.last, n > k {
            throw ValidationError("--nfe \(n) is more than \(what) K = \(k): an N-step schedule takes N + 1 of the K + 1 grid points")
        }
    }

    func validate() throws {
        let steps = try Self.parseSteps(nfe)
        if json && steps.count != 1 { throw ValidationError("--json needs a single --nfe value, got '\(nfe)'") }
        if costs != nil {
            let extra = [("--samples", samples != nil), ("--grid", grid != nil), ("--model", model != nil),
                         ("--seed", seed != nil), ("--guidance", guidance != nil), ("--save-costs", saveCosts != nil)]
                .filter(\.1).map(\.0)
            if !extra.isEmpty {
                throw ValidationError("--costs solves a given matrix; \(extra.joined(separator: ", ")) do\(extra.count == 1 ? "es" : "") not apply")
            }
            return
        }
        if let s = samples, !(1...100_000).contains(s) { throw ValidationError("--samples must be between 1 and 100000, got \(s)") }
        if let k = grid, !(1...10_000).contains(k) { throw ValidationError("--grid must be between 1 and 10000, got \(k)") }
        try Self.checkFits(steps, grid: grid ?? 100, what: "the grid's")
        guard (1...1024).contains(batchSize) else { throw ValidationError("--batch-size must be between 1 and 1024") }
        if let g = guidance, !(g.isFinite && g >= 0 && g <= 50) { throw ValidationError("--guidance must be between 0 and 50") }
    }

    static func line(steps n: Int, indices: [Int], cost: Double, grid k: Int) -> String {
        let times = indices.map { String(format: "%.4g", Double($0) / Double(k)) }
        return "N=\(n)  cost \(String(format: "%.6g", cost))  indices \(indices.map(String.init).joined(separator: " "))  times \(times.joined(separator: " "))"
    }

    static func jsonLine(indices: [Int], cost: Double) -> String {
        "{\"indices\": [\(indices.map(String.init).joined(separator: ", "))], \"cost\": \(BOSS.jsonNumber(cost))}"
    }

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let steps = try Self.parseSteps(nfe)
            if let costs {
                let matrix = try BOSS.readCosts(path: costs)
                let k = matrix.count - 1
                do { try Self.checkFits(steps, grid: k, what: "the cost matrix's") } catch let e as ValidationError {
                    throw ModelError.invalidFile("\(costs): \(e.message)")
                }
                for n in steps {
                    let (indices, cost) = try BOSS.solve(costs: matrix, steps: n)
                    print(json ? Self.jsonLine(indices: indices, cost: cost) : Self.line(steps: n, indices: indices, cost: cost, grid: k))
                }
                return
            }

            let path = model ?? ModelFolder.defaultPath()
            let folder = try ModelFolder.load(path)
            let sampler = FlowSampler(model: folder.model, flow: folder.flow)
            try sampler.requireImageModel()
            let m = samples ?? 100, k = grid ?? 100, s = seed ?? 0
            let g = guidance ?? Float(folder.flow.defaultGuidance)
            let classes = folder.config.numClassEmbeds == nil
                ? nil : try ClassSelection.parse("all", flow: folder.flow, config: folder.config)
            let evals = m * k * sampler.rowsPerSample(guidance: g)
            FileHandle.standardError.write(Data("BOSS: \(m) reference trajectories × \(k) Euler steps (\(evals) network rows), guidance \(g)\(classes.map { ", over \($0.count) classes" } ?? "")\n".utf8))
            let bar = ProgressBar("trajectories", total: m * k, unit: "steps")
            let matrix = try BOSS.estimateCosts(sampler: sampler, samples: m, grid: k, classes: classes,
                                                guidance: g, seed: s, batchSize: batchSize) { done, _ in
                bar.update(done)
            }
            bar.finish()
            if let saveCosts {
                try BOSS.writeCosts(matrix, path: saveCosts)
                FileHandle.standardError.write(Data("wrote the cost matrix to \(saveCosts)\n".utf8))
            }

            // Keep earlier schedules made with the same settings; otherwise start afresh.
            let file = BOSS.Schedules.path(inModelFolder: path)
            var schedules = BOSS.Schedules(grid: k, samples: m, guidance: Double(g), seed: s)
            if FileManager.default.fileExists(atPath: file) {
                if let old = try? BOSS.Schedules.read(path: file), old.grid == k, old.samples == m,
                   old.guidance == Double(g), old.seed == s {
                    schedules.schedules = old.schedules
                } else {
                    FileHandle.standardError.write(Data("replacing \(file): it holds schedules made with other settings\n".utf8))
                }
            }
            for n in steps {
                let (indices, cost) = try BOSS.solve(costs: matrix, steps: n)
                try schedules.set(indices: indices, cost: cost)
                print(json ? Self.jsonLine(indices: indices, cost: cost) : Self.line(steps: n, indices: indices, cost: cost, grid: k))
            }
            try schedules.write(path: file)
            let note = "wrote \(file): schedules for N = \(schedules.stepCounts.map(String.init).joined(separator: ", "))"
            if json { FileHandle.standardError.write(Data((note + "\n").utf8)) } else { print(note) }
        }
    }
}
