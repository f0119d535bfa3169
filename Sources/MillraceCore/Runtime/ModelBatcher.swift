import Foundation

/// One thread that owns a model's forward passes and packs the rows of every caller waiting at
/// that moment into one call (continuous batching, docs/STREAMS.md): stream frames first, then
/// the steps of running generations, up to `maxRows` rows per call. The per-row cost of the
/// model falls with the batch, so callers that would each have run alone share the cores.
///
/// A caller's rows are computed with the same math whatever shares the call; only the way the
/// convolutions split a batch over the cores can change the float rounding (docs: the
/// kernel header, `mr_conv2d_forward`), so a row may differ from a lone call in its last bits.
public final class ModelBatcher: @unchecked Sendable {
    public enum Priority: Sendable { case stream, generation }

    final class Request {
        let x: Tensor
        let timesteps: [Float]
        let labels: [Int]?
        let priority: Priority
        let enqueued = Date()
        var result: Tensor?
        let done = DispatchSemaphore(value: 0)
        init(x: Tensor, timesteps: [Float], labels: [Int]?, priority: Priority) {
            self.x = x; self.timesteps = timesteps; self.labels = labels; self.priority = priority
        }
    }

    public let model: UNet2DModel
    /// Most rows per call (a single request with more rows runs alone).
    public let maxRows: Int
    /// Seconds the thread waits, once a request is pending, for others to join its call.
    public let window: Double
    private let modelLock: FairLock
    private let condition = NSCondition()
    private var pending: [Request] = []
    /// Callers taking part now (`join`/`leave`): a call waits for each of them to submit, or
    /// for the window to pass, so a lone caller never waits.
    private var active = 0
    private var running = true
    private var thread: Thread?

    /// Rows per call and milliseconds of queue wait, for /metrics.
    public let batchRows = Histogram(bounds: [1, 2, 4, 8, 16, 32, 64])
    /// Called on the batcher's thread before each model call with the priorities of the callers
    /// it serves, in row order (for tracing; set it before the first `forward`).
    public var onCall: (@Sendable ([Priority]) -> Void)?
    public let queueWaitMs = Histogram(bounds: [1, 2, 5, 10, 25, 50, 100, 250, 1000])

    public init(model: UNet2DModel, modelLock: FairLock, maxRows: Int, window: Double = 0.005) {
        self.model = model
        self.modelLock = modelLock
        self.maxRows = max(1, maxRows)
        self.window = window
        let t = Thread { [weak self] in self?.loop() }
        t.name = "millrace-batcher"
        thread = t
        t.start()
    }

    /// The velocity rows of `x` (model.forward's result), computed in a shared call.
    public func forward(_ x: Tensor, timesteps: [Float], classLabels: [Int]?, priority: Priority) -> Tensor {
        let r = Request(x: x, timesteps: timesteps, labels: classLabels, priority: priority)
        condition.lock()
        if !running {
            // Stopped: the caller runs its own call.
            condition.unlock()
            return modelLock.withLock { model.forward(x, timesteps: timesteps, classLabels: classLabels) }
        }
        pending.append(r)
        condition.broadcast()
        condition.unlock()
        r.done.wait()
        return r.result!
    }

    /// Requests waiting for a call.
    public var pendingCount: Int { condition.lock(); defer { condition.unlock() }; return pending.count }

    /// A caller that is about to submit (a stream's frame, a running generation) says so, so
    /// that calls wait for it; `leave` when it is done.
    public func join() { condition.lock(); active += 1; condition.broadcast(); condition.unlock() }
    public func leave() { condition.lock(); active -= 1; condition.broadcast(); condition.unlock() }

    /// Ends the thread after the call in progress (pending callers are still served first).
    public func stop() {
        condition.lock()
        running = false
        condition.broadcast()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while pending.isEmpty && running { condition.wait() }
            if pending.isEmpty { condition.unlock(); return }
            // Wait for every active caller to submit (or the window to pass, or the call to fill).
            let deadline = pending[0].enqueued.addingTimeInterval(window)
            while pending.count < active && pending.reduce(0, { $0 + $1.x.shape[0] }) < maxRows && Date() < deadline && running {
                _ = condition.wait(until: deadline)
            }
            // Streams first, then generations, each in arrival order, up to maxRows rows.
            let ordered = pending.filter { $0.priority == .stream } + pending.filter { $0.priority == .generation }
            var batch: [Request] = [], rows = 0
            for r in ordered where batch.isEmpty || rows + r.x.shape[0] <= maxRows {
                batch.append(r)
                rows += r.x.shape[0]
            }
            pending.removeAll { r in batch.contains { $0 === r } }
            condition.unlock()
            run(batch, rows: rows)
        }
    }

    private func run(_ batch: [Request], rows: Int) {
        let now = Date()
        for r in batch { queueWaitMs.record(now.timeIntervalSince(r.enqueued) * 1000) }
        batchRows.record(Double(rows))
        onCall?(batch.map(\.priority))
        let labels: [Int]? = batch.allSatisfy({ $0.labels != nil }) ? batch.flatMap { $0.labels! } : nil
        let out = modelLock.withLock {
            batch.count == 1 ? model.forward(batch[0].x, timesteps: batch[0].timesteps, classLabels: batch[0].labels)
                : model.forward(Tensor.stack(rows: batch.map(\.x)), timesteps: batch.flatMap(\.timesteps), classLabels: labels)
        }
        var start = 0
        for r in batch {
            let n = r.x.shape[0]
            r.result = batch.count == 1 ? out : out.rows(start..<(start + n))
            start += n
            r.done.signal()
        }
    }
}
