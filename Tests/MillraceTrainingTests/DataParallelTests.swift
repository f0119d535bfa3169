import Foundation
import Testing
import MillraceKernels
@testable import MillraceCore
@testable import MillraceTraining
import MillraceTestSupport

/// Processes of a data-parallel run, played by threads of this test: a collective whose sums add
/// the ranks' values in rank order, as MPI's would for two processes. What crosses between
/// processes is only what `Collective` carries, so the trainer's split, sums and checks are tested
/// here without MPI (MPITrainingTests runs the real thing under mpirun).
final class ThreadGroup: @unchecked Sendable {
    let size: Int
    private let condition = NSCondition()
    private var deposits: [Any?]
    private var arrived = 0
    private var round = 0
    private var result: Any?

    init(size: Int) {
        self.size = size
        deposits = Array(repeating: nil, count: size)
    }

    /// Every rank deposits `values`; the last to arrive combines them; all get the combination.
    func exchange<T>(rank: Int, _ values: [T], combine: ([[T]]) -> [T]) -> [T] {
        condition.lock()
        defer { condition.unlock() }
        deposits[rank] = values
        arrived += 1
        let myRound = round
        if arrived == size {
            result = combine(deposits.map { $0 as! [T] })
            arrived = 0
            round += 1
            condition.broadcast()
        } else {
            while round == myRound { condition.wait() }
        }
        return result as! [T]
    }

    final class Member: Collective {
        let group: ThreadGroup
        let rank: Int
        var size: Int { group.size }
        init(_ group: ThreadGroup, rank: Int) { self.group = group; self.rank = rank }

        func sum(_ values: UnsafeMutableBufferPointer<Float>) { sumInRankOrder(values) }
        func sum(_ values: UnsafeMutableBufferPointer<Double>) { sumInRankOrder(values) }
        func broadcast(_ values: UnsafeMutableBufferPointer<Double>, from root: Int) {
            let out = group.exchange(rank: rank, Array(values)) { $0[root] }
            _ = values.initialize(from: out)
        }
        private func sumInRankOrder<T: FloatingPoint>(_ values: UnsafeMutableBufferPointer<T>) {
            let out = group.exchange(rank: rank, Array(values)) { all in
                var total = all[0]
                for other in all.dropFirst() { for i in total.indices { total[i] += other[i] } }
                return total
            }
            _ = values.initialize(from: out)
        }
    }
}

@Suite(.serialized) struct DataParallelTests {
    /// Runs `body(rank)` on one thread per rank, each marked serial (one core per process), and
    /// returns the results by rank.
    static func onThreads<T>(_ count: Int, _ body: @escaping @Sendable (Int) throws -> T) -> [Result<T, Error>] {
        let slots = UncheckedSendable(Slots<Result<T, Error>>(count: count))
        DispatchQueue.concurrentPerform(iterations: count) { r in
            mr_set_thread_serial(1)
            defer { mr_set_thread_serial(0) }
            let value = Result { try body(r) }
            slots.value.set(r, value)
        }
        return slots.value.values.map { $0! }
    }

    final class Slots<T>: @unchecked Sendable {
        private let lock = NSLock()
        private(set) var values: [T?]
        init(count: Int) { values = Array(repeating: nil, count: count) }
        func set(_ i: Int, _ v: T) { lock.lock(); values[i] = v; lock.unlock() }
    }

    @Test func rowsOfABatchSplitByRank() {
        let group = ThreadGroup(size: 3)
        let rows = (0..<3).map { ThreadGroup.Member(group, rank: $0).rows(of: 8) }
        #expect(rows == [0..<2, 2..<5, 5..<8])
        #expect(SingleProcess().rows(of: 8) == 0..<8)
        #expect(SingleProcess().any(true) && !SingleProcess().any(false))
    }

    @Test func twoProcessesOfOneWorkerEqualOneProcessOfTwoWorkers() throws {
        try GlobalKernelSettings.exclusive {
            var two = TrainerTests.options(steps: 3)
            two.workers = 2
            let single = try FlowTrainer(config: Fixtures.tinyUNetConfig(), data: TrainerTests.syntheticData(), options: two)
            let singleBox = UncheckedSendable(single)
            let singleLosses = try Self.onThreads(1) { _ in (0..<3).map { _ in singleBox.value.trainStep() } }[0].get()

            let group = ThreadGroup(size: 2)
            let ranks = try (0..<2).map { r in
                try FlowTrainer(config: Fixtures.tinyUNetConfig(), data: TrainerTests.syntheticData(),
                                options: TrainerTests.options(steps: 3), collective: ThreadGroup.Member(group, rank: r))
            }
            let box = UncheckedSendable(ranks)
            let losses = Self.onThreads(2) { r in
                try box.value[r].checkProcessesAgree()
                return (0..<3).map { _ in box.value[r].trainStep() }
            }
            for r in 0..<2 {
                // The sum of two float values does not depend on their order, and each process
                // computes the rows one of the single process's workers does: the same bits.
                #expect(try losses[r].get() == singleLosses)
                #expect(ranks[r].rng.state == single.rng.state)
                for ((name, p), (_, q)) in zip(ranks[r].model.namedParameters(), single.model.namedParameters()) {
                    #expect(p.value.data == q.value.data, "rank \(r): \(name)")
                }
                #expect(ranks[r].optimizer.ema == single.optimizer.ema)
                #expect(ranks[r].optimizer.v == single.optimizer.v)
            }
        }
    }

    @Test func processesThatStartFromOtherDataAllRefuse() throws {
        let group = ThreadGroup(size: 2)
        let ranks = try (0..<2).map { r in
            try FlowTrainer(config: Fixtures.tinyUNetConfig(), data: TrainerTests.syntheticData(count: r == 0 ? 24 : 20),
                            options: TrainerTests.options(steps: 1), collective: ThreadGroup.Member(group, rank: r))
        }
        let box = UncheckedSendable(ranks)
        let outcomes = Self.onThreads(2) { r in try box.value[r].checkProcessesAgree() }
        for (r, outcome) in outcomes.enumerated() {
            #expect(throws: TrainError.self, "rank \(r) goes on") { try outcome.get() }
        }
        if case .failure(let e) = outcomes[1] { #expect("\(e)".contains("training images")) }
    }

    @Test func aBatchTooSmallForTheProcessesIsRefused() {
        let group = ThreadGroup(size: 2)
        var opts = TrainerTests.options(steps: 1)
        opts.batchSize = 3
        opts.workers = 2
        #expect(throws: TrainError.self) {
            try FlowTrainer(config: Fixtures.tinyUNetConfig(), data: TrainerTests.syntheticData(), options: opts,
                            collective: ThreadGroup.Member(group, rank: 0))
        }
    }

    @Test func mpiIsUsedOnlyWhenMpirunStartedTheProcess() throws {
        #expect(!DataParallel.launchedByMPI(environment: ["PATH": "/usr/bin"]))
        #expect(DataParallel.launchedByMPI(environment: ["OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"]))
        #expect(DataParallel.launchedByMPI(environment: ["PMIX_RANK": "0"]))
        #expect(DataParallel.processesOnThisMachine(environment: [:]) == 1)
        #expect(DataParallel.processesOnThisMachine(environment: ["OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"]) == 2)
        // Without mpirun's variables no library is opened: a single process.
        let group = try DataParallel.join(environment: [:])
        #expect(group is SingleProcess && group.rank == 0 && group.size == 1)
    }

    @Test func aMissingMPILibraryNamesThePackages() {
        do {
            _ = try OpenMPI.initialise(libraryNames: ["/nonexistent/libmpi.so.40"])
            Issue.record("a missing library was loaded")
        } catch {
            let text = "\(error)"
            #expect(text.contains("openmpi-bin") && text.contains("libopenmpi-dev") && text.contains("/nonexistent/libmpi.so.40"), "\(text)")
        }
    }
}
