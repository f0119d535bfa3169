import Dispatch
import Foundation
import MillraceCore

/// One training run in an output folder: what `gen train` does around `FlowTrainer.trainStep`.
///
/// The folder holds checkpoint.safetensors (weights, optimizer, EMA and generator state: resume
/// is exact), the shipped model (config.json, model.safetensors with the EMA weights, flow.json),
/// loss.csv and loss.png. A checkpoint and the model are written every `checkpointEvery` steps,
/// at the last step, and when `shouldStop` says so (Ctrl-C); a run resumes only when asked to,
/// and never overwrites another run's checkpoint. Split over processes (MPI), rank 0 writes.
public struct TrainingRun {
    /// Where and how far to train.
    public struct Settings: Sendable {
        public var out: String
        /// The step to reach (with `resume`: the total, not the number of further steps).
        public var steps: Int
        public var checkpointEvery = 500
        /// Continue from `out`/checkpoint.safetensors (an error when there is none).
        public var resume = false
        /// Start from another model folder's weights (ignored with `resume`).
        public var initFrom: String?

        public init(out: String, steps: Int) {
            self.out = out
            self.steps = steps
        }
    }

    /// What the run reports as it goes.
    public enum Event {
        case resumed(step: Int)
        case initialised(from: String)
        /// After each step: the loss of the step, its smoothed value and images per second.
        case stepped(step: Int, loss: Double, smoothed: Double, imagesPerSecond: Double)
        case checkpointed(step: Int)
        /// `shouldStop` ended the run early; a checkpoint was written at `step`.
        case interrupted(step: Int)
    }

    public let trainer: FlowTrainer
    public let settings: Settings

    public var checkpointPath: String { (settings.out as NSString).appendingPathComponent("checkpoint.safetensors") }
    public var lossPath: String { (settings.out as NSString).appendingPathComponent("loss.csv") }
    public var plotPath: String { (settings.out as NSString).appendingPathComponent("loss.png") }

    public init(trainer: FlowTrainer, settings: Settings) throws {
        guard settings.steps >= 1 else { throw TrainError.invalidSetup("the number of steps must be at least 1, got \(settings.steps)") }
        guard settings.checkpointEvery >= 1 else { throw TrainError.invalidSetup("checkpoints must be at least 1 step apart, got \(settings.checkpointEvery)") }
        self.trainer = trainer
        self.settings = settings
    }

    /// Trains until `settings.steps` or until `shouldStop()` is true (checked between steps).
    /// Returns the step reached.
    ///
    /// With a trainer split over several processes (`FlowTrainer.collective`), every process calls
    /// this and steps; only rank 0 writes files (checkpoint, model folder, loss log and plot).
    /// With `resume` every process reads the checkpoint. The processes start together or all
    /// throw, and stop at the same step when any of them is asked to; at the start and at each
    /// checkpoint they check that they hold the same state. Every process reports events.
    @discardableResult
    public func run(shouldStop: () -> Bool = { false }, onEvent: (Event) -> Void = { _ in }) throws -> Int {
        let group = trainer.collective
        let writes = group.rank == 0
        var failure: Error?
        do { try start(writes: writes, onEvent: onEvent) } catch { failure = error }
        if group.any(failure != nil) {
            throw failure ?? TrainError.parallel("another process of the run could not start (its message says why)")
        }
        try trainer.checkProcessesAgree()
        var log: LossLog?
        if writes { log = try LossLog(path: lossPath, keepUpTo: trainer.step) }
        let startStep = trainer.step
        let batch = trainer.options.batchSize
        let t0 = Date()
        // Wall time of earlier runs of this training (from the log), so elapsed adds up across resumes.
        let wallBefore = writes ? (LossLog.lastElapsed(path: lossPath) ?? 0) : 0
        var stopped = false
        while trainer.step < settings.steps {
            if group.any(shouldStop()) { stopped = true; break }
            let loss = trainer.trainStep()
            let elapsed = Date().timeIntervalSince(t0)
            let ips = Double((trainer.step - startStep) * batch) / max(elapsed, 1e-9)
            try log?.append(step: trainer.step, loss: loss, smoothed: trainer.smoothedLoss,
                            lr: trainer.optimizer.currentLearningRate, imagesPerSecond: ips, elapsed: wallBefore + elapsed)
            onEvent(.stepped(step: trainer.step, loss: loss, smoothed: trainer.smoothedLoss, imagesPerSecond: ips))
            if trainer.step % settings.checkpointEvery == 0 || trainer.step == settings.steps {
                // The processes still hold the same weights (what rank 0 saves is everyone's).
                try trainer.checkProcessesAgree()
                try save()
                log?.flush()
                onEvent(.checkpointed(step: trainer.step))
            }
        }
        if stopped {
            try trainer.checkProcessesAgree()
            try save()
            onEvent(.interrupted(step: trainer.step))
        }
        if writes {
            try log?.close()
            try LossPlot.write(csv: lossPath, png: plotPath)
        }
        return trainer.step
    }

    /// Prepares the folder (rank 0) and the trainer's state: the checkpoint to resume (every
    /// process), or the weights to start from.
    private func start(writes: Bool, onEvent: (Event) -> Void) throws {
        if writes { try FileManager.default.createDirectory(atPath: settings.out, withIntermediateDirectories: true) }
        let exists = FileManager.default.fileExists(atPath: checkpointPath)
        if settings.resume {
            guard exists else { throw TrainError.runFolder("cannot resume: no checkpoint at \(checkpointPath)") }
            try trainer.loadCheckpoint(path: checkpointPath)
            onEvent(.resumed(step: trainer.step))
        } else if writes && exists {
            throw TrainError.runFolder("\(checkpointPath) exists: resume it, or train into another folder")
        } else if let from = settings.initFrom {
            try trainer.initialize(from: try ModelFolder.load(from))
            onEvent(.initialised(from: from))
        }
    }

    /// Writes the checkpoint, then the model folder with the EMA weights (on rank 0 only; other
    /// processes hold the same state).
    public func save() throws {
        guard trainer.collective.rank == 0 else { return }
        try trainer.saveCheckpoint(path: checkpointPath)
        try ModelFolder.write(model: trainer.emaModel(), flow: trainer.flow, to: settings.out,
                              metadata: ["step": String(trainer.step), "weights": "ema"])
        try? LossPlot.write(csv: lossPath, png: plotPath)
    }
}

/// Raised by SIGINT or SIGTERM, so that a long loop can checkpoint and stop cleanly. While one
/// exists, those signals no longer end the process.
public final class InterruptFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var raised = false
    private var sources: [DispatchSourceSignal] = []

    public init() {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { [weak self] in self?.raise() }
            src.resume()
            sources.append(src)
        }
    }

    public func raise() { lock.lock(); raised = true; lock.unlock() }
    public var isRaised: Bool { lock.lock(); defer { lock.unlock() }; return raised }
}
