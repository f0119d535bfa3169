import ArgumentParser
import Foundation
import MillraceCore
import MillraceTraining

/// `gen`: Millrace's command line. `gen --steps N` generates with the shipped model.
struct Gen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gen",
        abstract: "Millrace: run, train and serve small flow-matching image models on the CPU.",
        discussion: """
        Examples:
          gen --steps 32 --class all --out grid.png    generate one emoji per group
          gen info assets/models/emoji32               config, parameters, FLOPs
          gen bench kernels --json                     kernel and model speed
          gen dataset emoji --out data/emoji32.mrds    build the training set
          gen train --data data/emoji32.mrds --out runs/emoji32
        """,
        subcommands: [Generate.self],
        groupedSubcommands: [
            CommandGroup(name: "Few-step sampling", subcommands: [ScheduleCommand.self, StraightenCommand.self, PruneAxes.self]),
            CommandGroup(name: "Streams, colour and serving", subcommands: [StreamCommand.self, ColorizeCommand.self, BSSCommand.self, Serve.self]),
            CommandGroup(name: "Data and training", subcommands: [DatasetCommand.self, Train.self, TrainClassifier.self, ClipsCommand.self, ReferencesCommand.self]),
            CommandGroup(name: "Measuring", subcommands: [Eval.self, Bench.self, Info.self]),
        ],
        defaultSubcommand: Generate.self)
}

/// Turns library errors into one clean line on stderr and exit code 1.
func runReportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let e as ExitCode { throw e } catch let e as CleanExit { throw e } catch let e as ValidationError {
        throw e
    } catch {
        let advice = commandAdvice(for: error).map { "\n       make it with: \($0)" } ?? ""
        FileHandle.standardError.write(Data("error: \(error)\(advice)\n".utf8))
        throw ExitCode.failure
    }
}

/// A command-line problem found while running (a missing input, an empty folder).
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The `gen` command that makes what an error says is missing (the library's errors name no
/// commands; this is where the CLI adds them).
func commandAdvice(for error: Error) -> String? {
    switch error {
    case ModelError.missingFile(let path, let kind, _):
        let folder = (path as NSString).deletingLastPathComponent
        let model = folder == ModelFolder.defaultPath() ? "" : " --model \(folder)"
        switch kind {
        case .pruningSet: return "gen prune-axes --data data/emoji32.mrds\(model)"
        case .bossSchedules: return "gen schedule boss --nfe STEPS\(model)"
        case .classifier: return "gen train-classifier --data data/emoji32.mrds --out \(path)"
        case .modelFolder: return "gen train --data data/emoji32.mrds --out \(path)"
        case .teacherCache, .costs: return nil
        }
    case DatasetError.notFound(let path):
        return "gen dataset emoji --out \(path)"
    default:
        return nil
    }
}

/// Options every compute-heavy command shares.
struct ThreadOptions: ParsableArguments {
    @Option(help: "Threads the kernels use (default: all cores).")
    var threads: Int?

    func apply() {
        Runtime.configureThreads(threads)
    }
}
