import Foundation
import Testing
@testable import MillraceFormats
@testable import MillraceCore
@testable import MillraceTraining
import MillraceTestSupport

/// The training loop around the trainer (what `gen train` runs), tested in-process: an
/// interrupted run checkpoints, a resumed one ends where an uninterrupted one does, and a run
/// never overwrites another's checkpoint.
@Suite(.serialized) struct TrainingRunTests {
    static func folder() -> String { Fixtures.tempPath("run-\(UUID().uuidString)") }

    @Test func interruptThenResumeEqualsOneRun() throws {
        try GlobalKernelSettings.exclusive {
            let data = TrainerTests.syntheticData(), config = Fixtures.tinyUNetConfig()
            let opts = TrainerTests.options(steps: 9)
            var straightSettings = TrainingRun.Settings(out: Self.folder(), steps: 9)
            straightSettings.checkpointEvery = 4
            let straight = try TrainingRun(trainer: try FlowTrainer(config: config, data: data, options: opts), settings: straightSettings)
            var events: [String] = []
            #expect(try straight.run(onEvent: { if case .checkpointed(let s) = $0 { events.append("c\(s)") } }) == 9)
            #expect(events == ["c4", "c8", "c9"])

            var settings = TrainingRun.Settings(out: Self.folder(), steps: 9)
            settings.checkpointEvery = 4
            let first = try TrainingRun(trainer: try FlowTrainer(config: config, data: data, options: opts), settings: settings)
            var steps = 0
            var interruptedAt: Int?
            let reached = try first.run(shouldStop: { steps >= 6 }, onEvent: { event in
                if case .stepped = event { steps += 1 }
                if case .interrupted(let s) = event { interruptedAt = s }
            })
            #expect(reached == 6 && interruptedAt == 6)
            #expect(FileManager.default.fileExists(atPath: first.checkpointPath))
            #expect(try SafetensorsFile.read(path: settings.out + "/model.safetensors").metadata["step"] == "6", "the model folder follows the checkpoint")

            // Without resume, the folder's checkpoint is not overwritten.
            let again = try TrainingRun(trainer: try FlowTrainer(config: config, data: data, options: opts), settings: settings)
            let before = try Data(contentsOf: URL(fileURLWithPath: first.checkpointPath))
            #expect(throws: TrainError.self) { try again.run() }
            #expect(try Data(contentsOf: URL(fileURLWithPath: first.checkpointPath)) == before)

            settings.resume = true
            let second = try TrainingRun(trainer: try FlowTrainer(config: config, data: data, options: opts), settings: settings)
            var resumedAt: Int?
            #expect(try second.run(onEvent: { if case .resumed(let s) = $0 { resumedAt = s } }) == 9)
            #expect(resumedAt == 6)
            for ((name, a), (_, b)) in zip(straight.trainer.model.namedParameters(), second.trainer.model.namedParameters()) {
                #expect(a.value.data == b.value.data, "weights of \(name) differ after an interrupted run resumed")
            }
            let log = try LossLog.read(path: second.lossPath)
            #expect(log.map(\.step) == Array(1...9), "the loss log has each step once")
        }
    }

    @Test func resumingWithoutACheckpointIsAnError() throws {
        var settings = TrainingRun.Settings(out: Self.folder(), steps: 3)
        settings.resume = true
        let run = try TrainingRun(trainer: try FlowTrainer(config: Fixtures.tinyUNetConfig(), data: TrainerTests.syntheticData(),
                                                           options: TrainerTests.options(steps: 3)), settings: settings)
        #expect(throws: TrainError.self) { try run.run() }
        #expect(throws: TrainError.self) {
            try TrainingRun(trainer: run.trainer, settings: TrainingRun.Settings(out: Self.folder(), steps: 0))
        }
    }
}
