import Foundation

/// A latest-frame-wins input slot: `put` replaces a frame that is still waiting (counted as
/// dropped), so a stream never falls behind its input; `take` waits for a frame.
public final class LatestSlot<Item>: @unchecked Sendable {
    private let condition = NSCondition()
    private var item: Item?
    private var closed = false
    /// Frames replaced before the worker took them.
    public private(set) var dropped = 0
    /// Frames put in all.
    public private(set) var received = 0

    public init() {}

    /// Stores `item`, replacing (and counting as dropped) one that was waiting.
    public func put(_ newItem: Item) {
        condition.lock()
        defer { condition.unlock() }
        if closed { return }
        if item != nil { dropped += 1 }
        item = newItem
        received += 1
        condition.signal()
    }

    /// Takes the waiting item without blocking (nil if none).
    public func poll() -> Item? {
        condition.lock()
        defer { condition.unlock() }
        let out = item
        item = nil
        return out
    }

    /// Waits up to `timeout` seconds for an item; nil on timeout or when closed.
    public func take(timeout: TimeInterval) -> Item? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while item == nil && !closed {
            if !condition.wait(until: deadline) { break }
        }
        let out = item
        item = nil
        return out
    }

    /// Whether an item is waiting.
    public var hasItem: Bool {
        condition.lock()
        defer { condition.unlock() }
        return item != nil
    }

    /// Wakes waiters; later puts are ignored.
    public func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }
}

/// One producer, any number of viewers: `publish` never blocks; a viewer asks for the newest
/// item after the sequence number it last saw, so a slow viewer skips frames instead of slowing
/// the producer.
public final class Broadcast<Item>: @unchecked Sendable {
    private let condition = NSCondition()
    private var latest: Item?
    private var sequence = 0
    private var closed = false

    public init() {}

    private var observers: [Int: (Item?) -> Void] = [:]
    private var nextObserver = 0

    /// Publishes a new item (sequence number + 1), wakes waiting viewers and hands it to observers.
    public func publish(_ item: Item) {
        condition.lock()
        latest = item
        sequence += 1
        condition.broadcast()
        let handlers = Array(observers.values)
        condition.unlock()
        for h in handlers { h(item) }
    }

    /// Calls `handler` with every item published from now on, on the publishing thread (keep it
    /// short), and with nil once when the broadcast ends. Returns a token for `stopObserving`.
    public func observe(_ handler: @escaping (Item?) -> Void) -> Int {
        condition.lock()
        if closed { condition.unlock(); handler(nil); return -1 }
        nextObserver += 1
        observers[nextObserver] = handler
        condition.unlock()
        return nextObserver
    }

    public func stopObserving(_ token: Int) {
        condition.lock()
        observers[token] = nil
        condition.unlock()
    }

    /// Observers registered now.
    public var observerCount: Int { condition.lock(); defer { condition.unlock() }; return observers.count }

    /// Sequence number of the newest item (0 before the first).
    public var currentSequence: Int {
        condition.lock()
        defer { condition.unlock() }
        return sequence
    }

    /// Waits up to `timeout` for an item newer than `seen`; returns it with its sequence number,
    /// or nil on timeout or when closed with nothing newer.
    public func next(after seen: Int, timeout: TimeInterval) -> (item: Item, sequence: Int)? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while sequence <= seen && !closed {
            if !condition.wait(until: deadline) { break }
        }
        guard sequence > seen, let item = latest else { return nil }
        return (item, sequence)
    }

    /// Ends the broadcast: viewers waiting get nil, observers are told (once) and dropped.
    public func close() {
        condition.lock()
        let handlers = closed ? [] : Array(observers.values)
        closed = true
        observers = [:]
        condition.broadcast()
        condition.unlock()
        for h in handlers { h(nil) }
    }

    public var isClosed: Bool {
        condition.lock()
        defer { condition.unlock() }
        return closed
    }
}
