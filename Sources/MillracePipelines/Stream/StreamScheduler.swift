import Foundation
import MillraceCore
import MillraceImaging

/// A processed stream frame as viewers receive it.
public struct StreamFrame: Sendable {
    /// Output number (1, 2, …).
    public let index: Int
    public let image: RGBImage
    /// The frame encoded once (fast PNG), shared by every viewer.
    public let png: [UInt8]
    /// Whether the input was skipped by the similarity filter (the previous output repeated).
    public let skipped: Bool
    /// Seconds from the input's arrival to this output.
    public let latency: Double
}

/// Serves many streams on one worker thread, round-robin, one frame per stream per turn.
///
/// Model calls of different streams are serialised: each call already uses both cores (the
/// convolutions split a stream's rows over them, OpenBLAS splits single rows), and one call at a
/// time keeps latency per frame low and the cores free of contention. Each stream has a
/// latest-frame-wins input slot and a broadcast output, so a slow producer or viewer never
/// blocks the worker, and a busy stream cannot starve the others.
public final class StreamScheduler: @unchecked Sendable {
    public final class Entry: @unchecked Sendable {
        public let id: String
        public let session: StreamSession
        public let input = LatestSlot<(RGBImage, Date)>()
        public let output = Broadcast<StreamFrame>()
        let lock = NSLock()
        public private(set) var outputs = 0, errors = 0
        public private(set) var lastError: String?
        /// Its own lock: a frame posted while the stream's previous frame is in the model (the
        /// session lock held) must not wait for it.
        private let activityLock = NSLock()
        private var _lastActivity = Date()
        public var lastActivity: Date { activityLock.lock(); defer { activityLock.unlock() }; return _lastActivity }
        /// Set when the stream is removed: its counters are final and frames still in flight are dropped.
        private var retired = false

        init(id: String, session: StreamSession) {
            self.id = id
            self.session = session
        }

        /// Runs `body` with the session locked (settings changes between frames).
        public func withSession<T>(_ body: (StreamSession) throws -> T) rethrows -> T {
            lock.lock()
            defer { lock.unlock() }
            return try body(session)
        }

        func touch() { activityLock.lock(); _lastActivity = Date(); activityLock.unlock() }

        func process(_ frame: RGBImage, arrived: Date) {
            lock.lock()
            defer { lock.unlock() }
            if retired { return }
            touch()
            do {
                let result = try session.process(frame)
                outputs += 1
                let png = try result.image.pngData(fast: true)
                output.publish(StreamFrame(index: outputs, image: result.image, png: png, skipped: result.skipped,
                                           latency: Date().timeIntervalSince(arrived)))
            } catch {
                errors += 1
                lastError = "\(error)"
            }
        }

        /// This stream's counters (with the session locked, so they are consistent).
        public func counters() -> Totals {
            lock.lock()
            defer { lock.unlock() }
            return Totals(framesIn: input.received, processed: session.framesProcessed, skipped: session.framesSkipped,
                          dropped: input.dropped, out: outputs, modelCalls: session.pipeline.modelCalls)
        }

        /// Freezes the counters (after the input is closed): later frames are not processed.
        func retire() -> Totals {
            lock.lock()
            retired = true
            lock.unlock()
            return counters()
        }
    }

    /// Stream counters over the scheduler's life: live streams plus every stream removed.
    public struct Totals: Sendable, Equatable {
        public var framesIn = 0, processed = 0, skipped = 0, dropped = 0, out = 0, modelCalls = 0
        public init(framesIn: Int = 0, processed: Int = 0, skipped: Int = 0, dropped: Int = 0, out: Int = 0, modelCalls: Int = 0) {
            self.framesIn = framesIn; self.processed = processed; self.skipped = skipped
            self.dropped = dropped; self.out = out; self.modelCalls = modelCalls
        }
        static func + (a: Totals, b: Totals) -> Totals {
            Totals(framesIn: a.framesIn + b.framesIn, processed: a.processed + b.processed, skipped: a.skipped + b.skipped,
                   dropped: a.dropped + b.dropped, out: a.out + b.out, modelCalls: a.modelCalls + b.modelCalls)
        }
    }

    /// Held around every model call the worker makes; other model users (HTTP generation) take
    /// it too, because layers keep per-call state and one call at a time owns the cores. It is
    /// granted in turn, so a generation taking it per step and this worker per frame alternate.
    public let modelLock = FairLock()
    /// When set, it names the batcher a stream's model calls go through (its pipeline's sampler
    /// calls it), and each turn runs every stream with a frame waiting at once, so that their
    /// rows share calls; nil: one stream at a time under `modelLock`.
    public var batcherFor: ((Entry) -> ModelBatcher?)?
    private let lock = NSCondition()
    private var entries: [String: Entry] = [:]
    private var order: [String] = []
    private var cursor = 0
    private var thread: Thread?
    private var running = false
    /// Whether the worker thread is inside its loop.
    private var workerActive = false
    private var nextID = 1
    /// Counters of the streams removed so far.
    private var retiredTotals = Totals()

    public init() {}

    /// All streams, in service order.
    public var streams: [Entry] {
        lock.lock()
        defer { lock.unlock() }
        return order.compactMap { entries[$0] }
    }

    public func stream(_ id: String) -> Entry? {
        lock.lock()
        defer { lock.unlock() }
        return entries[id]
    }

    /// Adds a stream; returns its id.
    @discardableResult
    public func add(_ session: StreamSession, id: String? = nil) -> Entry {
        lock.lock()
        defer { lock.unlock() }
        let name = id ?? "s\(nextID)"
        nextID += 1
        let e = Entry(id: name, session: session)
        entries[name] = e
        order.append(name)
        return e
    }

    /// Removes a stream and ends its output; its counters stay in `totals()`.
    public func remove(_ id: String) {
        lock.lock()
        defer { lock.unlock() }
        guard let e = entries.removeValue(forKey: id) else { return }
        order.removeAll { $0 == id }
        // Under the scheduler lock, so `totals()` never sees the stream twice or not at all. The
        // entry lock taken inside is never held while taking the scheduler lock, so no deadlock.
        e.input.close()
        retiredTotals = retiredTotals + e.retire()
        e.output.close()
    }

    /// Frames in, processed, skipped, dropped, out and model calls of every stream this scheduler
    /// has served, live or removed: counters that only grow.
    public func totals() -> Totals {
        lock.lock()
        defer { lock.unlock() }
        return order.compactMap { entries[$0] }.reduce(retiredTotals) { $0 + $1.counters() }
    }

    /// Queues a frame for a stream (replacing one still waiting) and wakes the worker.
    public func submit(_ frame: RGBImage, to id: String) -> Bool {
        guard let e = stream(id) else { return false }
        e.input.put((frame, Date()))
        e.touch()
        lock.lock()
        lock.signal()
        lock.unlock()
        return true
    }

    /// Serves the next stream (after the last one served) that has a frame waiting; returns its
    /// id, or nil when no stream has one.
    @discardableResult
    public func runOnce() -> String? {
        lock.lock()
        let n = order.count
        var chosen: (Entry, (RGBImage, Date))?
        for k in 0..<n {
            let idx = (cursor + k) % n
            if let e = entries[order[idx]], let item = e.input.poll() {
                chosen = (e, item)
                cursor = (idx + 1) % n
                break
            }
        }
        lock.unlock()
        guard let (entry, (frame, arrived)) = chosen else { return nil }
        modelLock.lock()
        entry.process(frame, arrived: arrived)
        modelLock.unlock()
        return entry.id
    }

    /// Runs every stream that has a frame waiting, at the same time, their model calls shared
    /// by the batcher; returns the ids served (empty when no stream had a frame).
    @discardableResult
    public func runTurn() -> [String] {
        guard let batcherFor else { return runOnce().map { [$0] } ?? [] }
        lock.lock()
        let n = order.count
        var chosen: [(Entry, (RGBImage, Date))] = []
        for k in 0..<n {
            let idx = (cursor + k) % n
            if let e = entries[order[idx]], let item = e.input.poll() { chosen.append((e, item)) }
        }
        if n > 0 { cursor = (cursor + 1) % n }
        lock.unlock()
        if chosen.isEmpty { return [] }
        // Every stream of this turn is a caller its batcher waits for before it runs a call.
        let batchers = chosen.map { batcherFor($0.0) }
        for b in batchers { b?.join() }
        // One thread per stream (not a width-limited concurrentPerform): every stream of the
        // turn must be able to wait in the batcher at the same time for their rows to meet.
        let work = UncheckedSendable((chosen, batchers, modelLock))
        let group = DispatchGroup()
        @Sendable func serve(_ k: Int) {
            let ((entry, (frame, arrived)), batcher) = (work.value.0[k], work.value.1[k])
            if let batcher {
                entry.process(frame, arrived: arrived)
                batcher.leave()
            } else {
                work.value.2.withLock { entry.process(frame, arrived: arrived) }
            }
        }
        for k in 1..<chosen.count {
            group.enter()
            let t = Thread { serve(k); group.leave() }
            t.stackSize = 1 << 20
            t.start()
        }
        serve(0)
        group.wait()
        return chosen.map(\.0.id)
    }

    /// Starts the worker thread.
    public func start() {
        lock.lock()
        defer { lock.unlock() }
        guard !running else { return }
        running = true
        let t = Thread { [weak self] in self?.loop() }
        t.name = "millrace-streams"
        thread = t
        t.start()
    }

    private func loop() {
        lock.lock()
        workerActive = true
        lock.unlock()
        defer {
            lock.lock()
            workerActive = false
            lock.broadcast()
            lock.unlock()
        }
        while true {
            lock.lock()
            let keepGoing = running
            lock.unlock()
            if !keepGoing { return }
            if runTurn().isEmpty {
                lock.lock()
                if running { _ = lock.wait(until: Date().addingTimeInterval(0.05)) }
                lock.unlock()
            }
        }
    }

    /// Stops the worker after the frame in progress and ends every stream's output.
    public func stop() {
        lock.lock()
        running = false
        lock.broadcast()
        lock.unlock()
        for e in streams { e.output.close(); e.input.close() }
    }

    /// Waits up to `timeout` seconds for the worker to finish its frame in progress and end
    /// (after `stop`); false at the timeout.
    @discardableResult
    public func waitStopped(timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        while workerActive {
            if !lock.wait(until: deadline) { return !workerActive }
        }
        return true
    }

    /// Removes streams with no activity for `idle` seconds; returns their ids.
    @discardableResult
    public func expire(idle: TimeInterval) -> [String] {
        let now = Date()
        let stale = streams.filter { now.timeIntervalSince($0.lastActivity) > idle }.map(\.id)
        for id in stale { remove(id) }
        return stale
    }
}
