import Foundation

/// A server-wide memory budget: a request reserves the bytes it will hold (its body while it
/// is buffered; the working memory of its job, estimated from sizes it declares) before the
/// memory is allocated, and is refused (503 with `Retry-After`) when the budget is full, so a
/// flood of requests slows the server down instead of getting it killed for lack of memory.
public final class MemoryBudget: @unchecked Sendable {
    /// Bytes that may be reserved at once.
    public let capacity: Int
    private let lock = NSLock()
    private var used = 0

    public init(capacity: Int) { self.capacity = max(0, capacity) }

    /// Bytes reserved now.
    public var reserved: Int { lock.lock(); defer { lock.unlock() }; return used }

    /// Reserves `bytes`; nil when that would go over the capacity. The reservation is given
    /// back when it is released or freed.
    public func reserve(_ bytes: Int) -> Reservation? {
        let n = max(0, bytes)
        lock.lock()
        defer { lock.unlock() }
        guard n <= capacity - used else { return nil }
        used += n
        return Reservation(budget: self, bytes: n)
    }

    fileprivate func giveBack(_ bytes: Int) {
        lock.lock()
        used -= bytes
        lock.unlock()
    }

    /// Bytes held from a budget until released (or freed).
    public final class Reservation: @unchecked Sendable {
        private weak var budget: MemoryBudget?
        private let lock = NSLock()
        private var bytes: Int
        fileprivate init(budget: MemoryBudget, bytes: Int) {
            self.budget = budget
            self.bytes = bytes
        }
        public var size: Int { lock.lock(); defer { lock.unlock() }; return bytes }

        /// Gives the bytes back (once).
        public func release() {
            lock.lock()
            let n = bytes
            bytes = 0
            lock.unlock()
            if n > 0 { budget?.giveBack(n) }
        }

        /// One reservation holding both (the other is emptied).
        func merged(with other: Reservation) -> Reservation {
            lock.lock()
            other.lock.lock()
            bytes += other.bytes
            other.bytes = 0
            other.lock.unlock()
            lock.unlock()
            return self
        }

        deinit { release() }
    }
}

/// A fixed pool of threads that runs submitted jobs in order of submission.
final class WorkerPool: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []
    private var head = 0
    private var running = 0
    private var started = 0
    private var closing = false
    private let threads: Int
    private let name: String

    init(threads: Int, name: String) {
        self.threads = threads
        self.name = name
    }

    func submit(_ job: @escaping () -> Void) {
        condition.lock()
        jobs.append(job)
        // Threads are started as the load needs them, up to the pool's size.
        if started < threads && started - running < jobs.count - head {
            started += 1
            let t = Thread { self.work() }
            t.name = "\(name)-\(started)"
            t.stackSize = 1 << 20
            t.start()
        }
        condition.signal()
        condition.unlock()
    }

    private func work() {
        while true {
            condition.lock()
            while head >= jobs.count && !closing { condition.wait() }
            if head >= jobs.count {
                // Closing and nothing left to run: the thread ends (and lets the pool go).
                started -= 1
                condition.unlock()
                return
            }
            let job = jobs[head]
            head += 1
            if head > 256 && head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            running += 1
            condition.unlock()
            job()
            condition.lock()
            running -= 1
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Lets the threads end once the queue is empty.
    func close() {
        condition.lock()
        closing = true
        condition.broadcast()
        condition.unlock()
    }

    /// Waits until no job is queued or running; false at the timeout.
    func waitIdle(timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        while running > 0 || head < jobs.count {
            if !condition.wait(until: deadline) { return running == 0 && head >= jobs.count }
        }
        return true
    }
}
