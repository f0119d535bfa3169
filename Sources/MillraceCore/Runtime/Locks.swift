import Foundation

/// A lock that is granted in the order it was asked for (a ticket lock). The model lock is
/// one: a generation that takes it for each step and a stream worker that takes it for each
/// frame then alternate, so a long generation cannot hold the model while streams wait.
public final class FairLock: @unchecked Sendable {
    private let condition = NSCondition()
    private var nextTicket = 0
    private var serving = 0

    public init() {}

    public func lock() {
        condition.lock()
        let ticket = nextTicket
        nextTicket += 1
        while serving != ticket { condition.wait() }
        condition.unlock()
    }

    public func unlock() {
        condition.lock()
        serving += 1
        condition.broadcast()
        condition.unlock()
    }

    /// Callers waiting for the lock, the holder included.
    public var queued: Int { condition.lock(); defer { condition.unlock() }; return nextTicket - serving }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// Hands values to worker threads that touch disjoint state (documented at each use).
public struct UncheckedSendable<T>: @unchecked Sendable {
    public let value: T
    public init(_ value: T) { self.value = value }
}
