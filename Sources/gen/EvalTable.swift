import ArgumentParser
import Foundation
import MillraceFormats
import MillraceCore
import MillraceImaging
import MillraceTraining

/// `gen eval table`: the few-step results table (NFE × schedule × source × model) and its plot.
struct EvalTable: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "table",
        abstract: "Evaluate every NFE × {uniform, BOSS, BOSS + straightened} × source × model; write a Markdown table, JSON and a Fréchet-vs-NFE plot.",
        discussion: """
        For each model (NAME=DIR) and source, draws --samples source samples spread over the \
        classes (seed --seed), integrates them once with --reference-steps uniform Euler (the \
        discrepancy reference), then for each NFE generates with the uniform schedule, the \
        model's BOSS schedule (schedules.json) and, when --straightened gives a folder for that \
        model and NFE, the straightened model (at its own guidance, 1, with the same BOSS \
        schedule; its discrepancy is measured against the teacher's reference). Missing BOSS \
        schedules or straightened folders leave the cell empty. `--source pruned` needs \
        prune-axes.safetensors in the model folder (`gen prune-axes --model DIR`).

        scripts/few-step-results.sh makes every input (norm-aligned model, schedules, \
        straightened models, pruning sets) and runs this command.

        Example:
          gen eval table --model plain=assets/models/emoji32 --model aligned=runs/emoji32-na \\
              --straightened 'plain=runs/straight/plain-{n}' --markdown out/few-step.md --plot out/fd-vs-nfe.png
        """)

    @Option(name: .customLong("model"), help: "NAME=DIR of a model to evaluate (repeatable).")
    var models: [String] = ["plain=assets/models/emoji32"]
    @Option(help: "NAME=PATTERN: the straightened folders of model NAME, '{n}' standing for the NFE (repeatable).")
    var straightened: [String] = []
    @Option(help: "Step counts, comma-separated.")
    var nfe: String = "1,2,4,6,8,10"
    @Option(help: "Sources, comma-separated (gaussian, pruned).")
    var sources: String = "gaussian,pruned"
    @Option(help: "Samples per cell (spread over the classes).")
    var samples: Int = 135
    @Option(help: "Seed of the source samples.")
    var seed: UInt64 = 1000
    @Option(help: "Steps of the uniform Euler reference.")
    var referenceSteps: Int = 100
    @Option(help: "Guidance of the uniform and BOSS rows (default: each model's).")
    var guidance: Float?
    @Option(help: "Evaluation classifier folder.")
    var classifier: String = "assets/models/emoji-classifier"
    @Option(help: "Dataset file (its held-out split is the Fréchet reference).")
    var data: String = "data/emoji32.mrds"
    @Option(help: "Samples per batch.")
    var batch: Int = 16
    @Option(help: "Write the Markdown tables here.")
    var markdown: String?
    @Option(help: "Write every cell as JSON here.")
    var json: String?
    @Option(help: "Write the Fréchet-distance-vs-NFE plot (PNG) here.")
    var plot: String?
    @OptionGroup var threads: ThreadOptions

    static func pairs(_ items: [String], flag: String) throws -> [(String, String)] {
        try items.map { item in
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw ValidationError("\(flag) takes NAME=VALUE, got '\(item)'")
            }
            return (parts[0], parts[1])
        }
    }

    var steps: [Int] { nfe.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }
    var sourceList: [String] { sources.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }

    func validate() throws {
        guard !steps.isEmpty, steps.count == nfe.split(separator: ",").count, steps.allSatisfy({ $0 >= 1 && $0 <= 1000 }) else {
            throw ValidationError("--nfe must be step counts ≥ 1, comma-separated, like 1,2,4")
        }
        guard sourceList.allSatisfy({ SourceDistribution(rawValue: $0) != nil }) else {
            throw ValidationError("--sources must be gaussian and/or pruned")
        }
        guard samples >= 2, referenceSteps >= 1, batch >= 1 else {
            throw ValidationError("--samples must be ≥ 2, --reference-steps and --batch ≥ 1")
        }
        let names = try Self.pairs(models, flag: "--model").map(\.0)
        guard Set(names).count == names.count else { throw ValidationError("--model names must differ") }
        for (name, pattern) in try Self.pairs(straightened, flag: "--straightened") {
            guard names.contains(name) else { throw ValidationError("--straightened names model '\(name)', which no --model gives") }
            guard pattern.contains("{n}") else { throw ValidationError("--straightened pattern must contain {n}") }
        }
    }

    struct Cell: Codable {
        var model: String
        var source: String
        var schedule: String
        var nfe: Int
        var guidance: Double
        var discrepancy: Double?
        var frechet: Double
        var accuracy: Double
        var acceptanceRate: Double?
        enum CodingKeys: String, CodingKey {
            case model, source, schedule, nfe, guidance, discrepancy, frechet, accuracy
            case acceptanceRate = "acceptance_rate"
        }
    }

    static let scheduleNames = ["uniform", "boss", "boss+straightened"]

    func run() throws {
        threads.apply()
        try runReportingErrors {
            let evaluator = GenerationEvaluator(classifier: try EmojiClassifier.load(path: classifier),
                                                heldOut: try ImageDataset.read(path: data))
            let modelPairs = try Self.pairs(models, flag: "--model")
            let patterns = Dictionary(uniqueKeysWithValues: try Self.pairs(straightened, flag: "--straightened"))
            let folders = try modelPairs.map { try ModelFolder.load($0.1) }
            // Work, in samples × steps, for the progress bar.
            let perSource = referenceSteps + steps.reduce(0, +) * (2 + 1)
            let bar = ProgressBar("table", total: modelPairs.count * sourceList.count * perSource * samples, unit: "sample-steps")
            var done = 0
            var cells: [Cell] = []
            for ((name, dir), folder) in zip(modelPairs, folders) {
                let sampler = FlowSampler(model: folder.model, flow: folder.flow)
                let g = guidance ?? Float(folder.flow.defaultGuidance)
                let c = folder.config
                let classes = try ClassSelection.parse("all", flow: folder.flow, config: c)
                let labels = (0..<samples).map { classes[$0 % classes.count] }
                let schedules = try? BOSS.Schedules.read(path: BOSS.Schedules.path(inModelFolder: dir))
                for source in sourceList {
                    let (x0, acceptance) = try SourceDistribution(rawValue: source)!.draw(
                        count: samples, shape: [c.inChannels, c.sampleSize, c.sampleSize], seed: seed, modelFolder: dir)
                    func gen(_ s: FlowSampler, _ grid: [Float], _ guidance: Float) -> Tensor {
                        let base = done
                        let out = GenerationEvaluator.generate(s, x0: x0, labels: labels, schedule: grid, guidance: guidance, batch: batch) {
                            bar.update(base + $0 * (grid.count - 1))
                        }
                        done = base + samples * (grid.count - 1)
                        return out
                    }
                    let reference = gen(sampler, Schedule.uniform(steps: referenceSteps), g)
                    for n in steps {
                        var runs: [(String, FlowSampler, [Float], Float)] = [("uniform", sampler, Schedule.uniform(steps: n), g)]
                        if let times = schedules?.times(steps: n) { runs.append(("boss", sampler, times, g)) }
                        if let pattern = patterns[name] {
                            let sdir = pattern.replacingOccurrences(of: "{n}", with: String(n))
                            if FileManager.default.fileExists(atPath: sdir) {
                                let sf = try ModelFolder.load(sdir)
                                guard sf.config == folder.config else {
                                    throw ModelError.invalidModel("\(sdir) has another architecture than \(dir)")
                                }
                                let st = try BOSS.Schedules.times(steps: n, modelFolder: sdir)
                                runs.append(("boss+straightened", FlowSampler(model: sf.model, flow: sf.flow), st, Float(sf.flow.defaultGuidance)))
                            }
                        }
                        for (schedule, s, grid, gg) in runs {
                            let images = gen(s, grid, gg)
                            let m = try evaluator.metrics(images: images, labels: labels, classes: classes, reference: reference)
                            cells.append(Cell(model: name, source: source, schedule: schedule, nfe: n, guidance: Double(gg),
                                              discrepancy: m.discrepancy, frechet: m.frechet, accuracy: m.accuracy,
                                              acceptanceRate: acceptance))
                        }
                    }
                }
            }
            bar.finish()
            let md = markdownReport(cells, models: modelPairs.map(\.0))
            if let markdown { try AtomicFile.write(Data(md.utf8), to: markdown) } else { print(md) }
            if let json {
                let enc = JSONEncoder()
                enc.outputFormatting = [.prettyPrinted, .sortedKeys]
                try AtomicFile.write(enc.encode(cells), to: json)
            }
            if let plot { try chart(cells, models: modelPairs.map(\.0)).render().writePNG(path: plot) }
        }
    }

    func cell(_ cells: [Cell], _ model: String, _ source: String, _ schedule: String, _ n: Int) -> Cell? {
        cells.first { $0.model == model && $0.source == source && $0.schedule == schedule && $0.nfe == n }
    }

    func markdownReport(_ cells: [Cell], models: [String]) -> String {
        var out = "Samples per cell: \(samples) (spread over the classes), source seed \(seed); discrepancy against \(referenceSteps)-step uniform Euler of the teacher from the same source samples.\n"
        let metrics: [(String, (Cell) -> Double?, String)] = [
            ("Fréchet distance (lower is better)", { $0.frechet }, "%.2f"),
            ("Discrepancy to \(referenceSteps)-step Euler (mean squared error per pixel, lower is better)", { $0.discrepancy }, "%.4f"),
            ("Class accuracy (higher is better)", { $0.accuracy }, "%.2f"),
        ]
        for (title, value, format) in metrics {
            out += "\n**\(title)**\n\n| model | source | schedule | " + steps.map { "NFE \($0)" }.joined(separator: " | ") + " |\n"
            out += "|---|---|---|" + steps.map { _ in "---:" }.joined(separator: "|") + "|\n"
            for m in models {
                for s in sourceList {
                    for sch in Self.scheduleNames {
                        let row = steps.map { n in cell(cells, m, s, sch, n).flatMap(value).map { String(format: format, $0) } ?? "—" }
                        guard row.contains(where: { $0 != "—" }) else { continue }
                        out += "| \(m) | \(s) | \(sch) | " + row.joined(separator: " | ") + " |\n"
                    }
                }
            }
        }
        out += "\n**Targets**\n\n"
        for m in models {
            for s in sourceList {
                if let u4 = cell(cells, m, s, "uniform", 4), let b4 = cell(cells, m, s, "boss", 4),
                   let du = u4.discrepancy, let db = b4.discrepancy {
                    let ratio = db / max(du, 1e-12)
                    out += String(format: "- %@, %@: BOSS at 4 NFE has %.0f%% of uniform's discrepancy (target ≤ 60%%: %@) and Fréchet %.2f against %.2f (target lower: %@).\n",
                                  m, s, 100 * ratio, ratio <= 0.6 ? "met" : "missed", b4.frechet, u4.frechet, b4.frechet < u4.frechet ? "met" : "missed")
                }
                if let st = cell(cells, m, s, "boss+straightened", 4), let u8 = cell(cells, m, s, "uniform", 8) {
                    out += String(format: "- %@, %@: straightened BOSS at 4 NFE has Fréchet %.2f against uniform at 8 NFE %.2f (target ≤: %@).\n",
                                  m, s, st.frechet, u8.frechet, st.frechet <= u8.frechet ? "met" : "missed")
                }
            }
            if sourceList.contains("gaussian") && sourceList.contains("pruned") {
                var worse: [String] = []
                var total = 0
                for sch in Self.scheduleNames {
                    for n in steps where n <= 10 {
                        guard let gc = cell(cells, m, "gaussian", sch, n), let pc = cell(cells, m, "pruned", sch, n) else { continue }
                        total += 1
                        if pc.frechet > gc.frechet { worse.append(String(format: "%@ %d (%.2f vs %.2f)", sch, n, pc.frechet, gc.frechet)) }
                    }
                }
                out += "- \(m): pruned is no worse than gaussian on Fréchet distance in \(total - worse.count) of \(total) cells"
                out += worse.isEmpty ? " (target met).\n" : "; worse in: " + worse.joined(separator: ", ") + ".\n"
            }
        }
        return out
    }

    func chart(_ cells: [Cell], models: [String]) -> LineChart {
        var series: [LineChart.Series] = []
        var k = 0
        for m in models {
            for sch in Self.scheduleNames {
                for s in sourceList {
                    let pts = steps.map { n in (Double(n), cell(cells, m, s, sch, n)?.frechet) }
                    guard pts.contains(where: { $0.1 != nil }) else { continue }
                    series.append(.init(name: "\(m) \(sch) \(s)", color: LineChart.palette[k % LineChart.palette.count],
                                        dashed: s == "pruned", points: pts))
                }
                k += 1
            }
        }
        return LineChart(title: "Fréchet distance to held-out emoji vs NFE (\(samples) samples per point; dashed: pruned source)",
                         xLabel: "NFE (steps)", yLabel: "Fréchet distance", xTicks: steps.map(Double.init), series: series)
    }
}
