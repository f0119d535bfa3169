import Foundation
import Testing
@testable import MillraceCore
import MillraceTestSupport

/// BOSS (docs/METHODS.md §3.1–3.3): the Bellman recursion against brute force, jump costs from
/// reference trajectories, schedules.json, and refusal of bad inputs.
@Suite struct BOSSTests {
    // MARK: Brute force

    /// Every strictly increasing path from `i` to `k` with exactly `n` jumps.
    static func paths(from i: Int, to k: Int, jumps n: Int) -> [[Int]] {
        if n == 1 { return [[i, k]] }
        guard k - i >= n else { return [] }
        var out: [[Int]] = []
        for j in (i + 1)..<k {
            for rest in paths(from: j, to: k, jumps: n - 1) { out.append([i] + rest) }
        }
        return out
    }

    /// A path's cost summed from the end, as the recursion nests it: c[a][b] + (c[b][c] + (…)).
    static func nestedCost(_ path: [Int], _ c: [[Double]]) -> Double {
        var total = c[path[path.count - 2]][path[path.count - 1]]
        var p = path.count - 3
        while p >= 0 {
            total = c[path[p]][path[p + 1]] + total
            p -= 1
        }
        return total
    }

    /// Least cost over every path from i (enumerated, no recursion over values).
    static func bruteMin(from i: Int, jumps n: Int, _ c: [[Double]]) -> Double {
        paths(from: i, to: c.count - 1, jumps: n).map { nestedCost($0, c) }.min() ?? .infinity
    }

    /// The stage-wise tie rule by brute force: from the current point, the smallest next index j
    /// whose jump plus the best remaining cost from j (over all enumerated paths) equals the best
    /// remaining cost from the current point.
    static func bruteForce(_ c: [[Double]], steps: Int) -> (indices: [Int], cost: Double) {
        let k = c.count - 1
        let cost = bruteMin(from: 0, jumps: steps, c)
        var indices = [0], i = 0, n = steps
        while n > 1 {
            let target = bruteMin(from: i, jumps: n, c)
            let j = ((i + 1)..<k).first { j in
                k - j >= n - 1 && c[i][j] + bruteMin(from: j, jumps: n - 1, c) == target
            }!
            indices.append(j)
            i = j
            n -= 1
        }
        return (indices + [k], cost)
    }

    /// A random (K+1)×(K+1) matrix: upper triangle from `entry`, zero first off-diagonal when
    /// asked, junk (negative) below the diagonal, which must be ignored.
    static func randomMatrix(k: Int, rng: inout SplitMix64, zeroOffDiagonal: Bool,
                             entry: (inout SplitMix64) -> Double) -> [[Double]] {
        var c = [[Double]](repeating: [Double](repeating: 0, count: k + 1), count: k + 1)
        for i in 0...k {
            for j in 0...k {
                if j > i {
                    c[i][j] = zeroOffDiagonal && j == i + 1 ? 0 : entry(&rng)
                } else if j < i {
                    c[i][j] = -Double(rng.next() % 100)
                }
            }
        }
        return c
    }

    @Test func recursionMatchesBruteForceOnRandomMatrices() throws {
        var rng = SplitMix64(seed: 7)
        var cases = 0
        for trial in 0..<120 {
            let k = 1 + Int(rng.next() % 8)
            let m = Self.randomMatrix(k: k, rng: &rng, zeroOffDiagonal: trial % 2 == 0) { r in
                r.nextUnitDouble() * 10
            }
            for n in 1...k {
                let got = try BOSS.solve(costs: m, steps: n)
                let want = Self.bruteForce(m, steps: n)
                #expect(got.indices == want.indices, "K=\(k) N=\(n)")
                #expect(got.cost == want.cost, "K=\(k) N=\(n)")
                // The cost is the path's own summed cost.
                #expect(abs(zip(got.indices, got.indices.dropFirst()).reduce(0) { $0 + m[$1.0][$1.1] } - got.cost) <= 1e-9 * (1 + got.cost))
                cases += 1
            }
        }
        #expect(cases > 300)
    }

    @Test func tiesPickTheSmallestNextIndex() throws {
        var rng = SplitMix64(seed: 11)
        var tiedCases = 0
        for trial in 0..<200 {
            let k = 2 + Int(rng.next() % 7)
            let m = Self.randomMatrix(k: k, rng: &rng, zeroOffDiagonal: trial % 3 == 0) { r in
                Double(r.next() % 3)
            }
            for n in 1...k {
                let got = try BOSS.solve(costs: m, steps: n)
                let want = Self.bruteForce(m, steps: n)
                #expect(got.indices == want.indices, "K=\(k) N=\(n) matrix \(m)")
                #expect(got.cost == want.cost)
                // Integer costs add exactly, so the stage-wise rule is also the lexicographically
                // smallest optimal path (paths are enumerated in lexicographic order).
                let all = Self.paths(from: 0, to: k, jumps: n)
                let costs = all.map { Self.nestedCost($0, m) }
                let best = costs.min()!
                let optimal = all.indices.filter { costs[$0] == best }
                #expect(got.indices == all[optimal[0]])
                if optimal.count > 1 { tiedCases += 1 }
            }
        }
        #expect(tiedCases > 100, "ties should be frequent with entries in 0…2, got \(tiedCases)")
    }

    @Test func knownSmallCases() throws {
        // K = 3: a cheap route through 2 only.
        let c: [[Double]] = [[0, 5, 1, 9],
                             [0, 0, 5, 5],
                             [0, 0, 0, 1],
                             [0, 0, 0, 0]]
        #expect(try BOSS.solve(costs: c, steps: 1) == ([0, 3], 9))
        #expect(try BOSS.solve(costs: c, steps: 2) == ([0, 2, 3], 2))
        #expect(try BOSS.solve(costs: c, steps: 3) == ([0, 1, 2, 3], 11))
        // All zero: every schedule ties; the smallest indices win.
        let zero = [[Double]](repeating: [Double](repeating: 0, count: 6), count: 6)
        #expect(try BOSS.solve(costs: zero, steps: 3).indices == [0, 1, 2, 5])
        #expect(try BOSS.solve(costs: zero, steps: 5).indices == [0, 1, 2, 3, 4, 5])
    }

    // MARK: Trajectories and costs


    static func tinySampler() -> FlowSampler {
        var flow = FlowConfig()
        flow.classNames = ["a", "b"]
        flow.nullClass = 2
        return FlowSampler(model: UNet2DModel(config: Fixtures.tinyUNetConfig(), seed: 5), flow: flow)
    }

    @Test func jumpCostsFromTrajectories() throws {
        let sampler = Self.tinySampler()
        let k = 10, m = 3
        let traj = try BOSS.referenceTrajectories(sampler: sampler, samples: m, grid: k, classes: [0, 1],
                                                  guidance: 2, seed: 3)
        #expect(traj.states.count == m * (k + 1) * 192 && traj.velocities.count == m * k * 192)
        // x_0 are the Gaussian source samples; the final states match the sampler's own Euler run.
        let x0 = GaussianSource.draw(count: m, shape: [3, 8, 8], seed: 3)
        #expect((0..<m).allSatisfy { Array(traj.state(sample: $0, step: 0)) == Array(x0.rows($0..<($0 + 1)).data) })
        let x1 = sampler.integrate(x0, schedule: Schedule.uniform(steps: k), labels: [0, 1, 0], guidance: 2)
        let last = (0..<m).flatMap { Array(traj.state(sample: $0, step: k)) }
        #expect(relativeError(last, x1.data) < 1e-4)

        let c = BOSS.costs(of: traj)
        #expect(c.count == k + 1 && c.allSatisfy { $0.count == k + 1 })
        for i in 0..<k {
            #expect(c[i][i + 1] == 0, "c[\(i)][\(i + 1)] = \(c[i][i + 1])")
            for j in (i + 1)...k {
                #expect(c[i][j].isFinite && c[i][j] >= 0)
                if j > i + 1 { #expect(c[i][j] > 0, "c[\(i)][\(j)]") }
            }
        }
        try BOSS.validate(costs: c)

        // Batched estimation gives the same matrix (up to batch-size rounding in the network).
        let est = try BOSS.estimateCosts(sampler: sampler, samples: m, grid: k, classes: [0, 1],
                                         guidance: 2, seed: 3, batchSize: 2)
        for i in 0..<k {
            #expect(est[i][i + 1] == 0)
            for j in (i + 1)...k { #expect(abs(est[i][j] - c[i][j]) <= 1e-3 * (1 + c[i][j])) }
        }

        for n in 1...k {
            let (indices, cost) = try BOSS.solve(costs: c, steps: n)
            #expect(indices.count == n + 1 && indices.first == 0 && indices.last == k)
            #expect(zip(indices, indices.dropFirst()).allSatisfy { $0 < $1 })
            #expect(cost >= 0)
            try Schedule.validate(indices.map { Float($0) / Float(k) })
        }
        #expect(try BOSS.solve(costs: c, steps: k) == (Array(0...k), 0))
        #expect(try BOSS.solve(costs: c, steps: 1) == ([0, k], c[0][k]))
    }

    @Test func trajectoryArgumentsAreChecked() {
        let sampler = Self.tinySampler()
        #expect(throws: ModelError.self) {
            try BOSS.referenceTrajectories(sampler: sampler, samples: 0, grid: 4, classes: [0], guidance: 1, seed: 0)
        }
        #expect(throws: ModelError.self) {
            try BOSS.referenceTrajectories(sampler: sampler, samples: 1, grid: 0, classes: [0], guidance: 1, seed: 0)
        }
        #expect(throws: ModelError.self) {
            try BOSS.referenceTrajectories(sampler: sampler, samples: 1, grid: 4, classes: nil, guidance: 1, seed: 0)
        }
        #expect(throws: ModelError.self) {
            try BOSS.referenceTrajectories(sampler: sampler, samples: 1, grid: 4, classes: [7], guidance: 1, seed: 0)
        }
    }

    // MARK: schedules.json

    static func tempDir() -> String {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("millrace-boss-tests-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.path
    }

    @Test func schedulesFileRoundTrip() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var file = BOSS.Schedules(grid: 10, samples: 3, guidance: 1.5, seed: 4)
        try file.set(indices: [0, 10], cost: 7.25)
        try file.set(indices: [0, 3, 7, 10], cost: 0.125)
        try file.set(indices: Array(0...10), cost: 0)
        let path = BOSS.Schedules.path(inModelFolder: dir)
        #expect(path.hasSuffix("/schedules.json"))
        try file.write(path: path)
        let back = try BOSS.Schedules.read(path: path)
        #expect(back == file)
        #expect(back.stepCounts == [1, 3, 10])
        #expect(back.schedules["3"]?.times == [0, 0.3, 0.7, 1])
        #expect(back.times(steps: 3) == [0, Float(3) / 10, Float(7) / 10, 1])
        #expect(back.times(steps: 10) == Schedule.uniform(steps: 10))
        #expect(try BOSS.Schedules.times(steps: 3, modelFolder: dir) == [0, Float(3) / 10, Float(7) / 10, 1])
        // The written JSON has the documented keys.
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any]
        #expect(Set(object?.keys.map { $0 } ?? []) == ["grid", "samples", "guidance", "seed", "schedules"])
        // No temporary files are left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["schedules.json"])

        // Missing step count, missing file: a missing-file error naming the file and the steps
        // (gen adds the command that makes it).
        do {
            _ = try BOSS.Schedules.times(steps: 4, modelFolder: dir)
            Issue.record("expected an error")
        } catch let e as ModelError {
            #expect(e == .missingFile(path: path, kind: .bossSchedules, detail: "no schedule for 4 steps"))
            #expect(e.message.contains(path) && e.message.contains("4 steps"))
        }
        let empty = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: empty) }
        #expect(throws: ModelError.self) { try BOSS.Schedules.times(steps: 3, modelFolder: empty) }

        // Invalid entries are refused on read and on set.
        try Data(#"{"grid": 10, "samples": 3, "guidance": 1, "schedules": {"2": {"indices": [0, 7, 5], "times": [0, 0.7, 0.5], "cost": 1}}}"#.utf8)
            .write(to: URL(fileURLWithPath: path))
        #expect(throws: ModelError.self) { try BOSS.Schedules.read(path: path) }
        try Data(#"{"grid": 10, "samples": 3, "guidance": 1, "schedules": {"2": {"indices": [0, 5, 10], "times": [0, 0.4, 1], "cost": 1}}}"#.utf8)
            .write(to: URL(fileURLWithPath: path))
        #expect(throws: ModelError.self) { try BOSS.Schedules.read(path: path) }
        try Data("not json".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: ModelError.self) { try BOSS.Schedules.read(path: path) }
        #expect(throws: ModelError.self) { try file.set(indices: [0, 4, 9], cost: 1) }
        #expect(throws: ModelError.self) { try file.set(indices: [1, 10], cost: 1) }
    }

    // MARK: Bad inputs

    static func message(_ body: () throws -> Void) -> String? {
        do { try body() } catch let e as ModelError { return e.message } catch { return "\(error)" }
        return nil
    }

    @Test func badMatricesAndStepCountsAreRefused() throws {
        let k = 10
        let good = [[Double]](repeating: [Double](repeating: 1, count: k + 1), count: k + 1)
        _ = try BOSS.solve(costs: good, steps: 4)

        var ragged = good
        ragged[3] = [1, 1, 1, 1, 1]
        #expect(Self.message { _ = try BOSS.solve(costs: ragged, steps: 2) }
                == "cost matrix is not square: row 3 has 5 entries, expected 11")
        #expect(Self.message { _ = try BOSS.solve(costs: Array(good.prefix(9)), steps: 2) }?.contains("not square") == true)

        var negative = good
        negative[2][5] = -0.5
        #expect(Self.message { _ = try BOSS.solve(costs: negative, steps: 2) }?.contains("[2][5] is negative") == true)
        var nan = good
        nan[0][4] = .nan
        #expect(Self.message { _ = try BOSS.solve(costs: nan, steps: 2) }?.contains("[0][4] is not finite") == true)
        var inf = good
        inf[1][9] = .infinity
        #expect(throws: ModelError.self) { try BOSS.solve(costs: inf, steps: 2) }
        // Below the diagonal anything goes (unused).
        var lower = good
        lower[5][2] = -3
        _ = try BOSS.solve(costs: lower, steps: 2)

        #expect(Self.message { _ = try BOSS.solve(costs: good, steps: 0) }?.contains("at least 1") == true)
        #expect(Self.message { _ = try BOSS.solve(costs: good, steps: 11) }?.contains("at most 10") == true)
        #expect(throws: ModelError.self) { try BOSS.solve(costs: [], steps: 1) }
        #expect(throws: ModelError.self) { try BOSS.solve(costs: [[0]], steps: 1) }
        #expect(throws: ModelError.self) { try BOSS.solve(costs: [[0, 1], [0, 0]], steps: 2) }
        #expect(try BOSS.solve(costs: [[0, 1], [0, 0]], steps: 1) == ([0, 1], 1))
    }

    @Test func costsFilesAreReadAndChecked() throws {
        let dir = Self.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = (dir as NSString).appendingPathComponent("costs.json")
        let c: [[Double]] = [[0, 0, 2.5, 9], [0, 0, 0, 1e-3], [0, 0, 0, 0], [0, 0, 0, 0]]
        try BOSS.writeCosts(c, path: path)
        #expect(try BOSS.readCosts(path: path) == c)

        func write(_ text: String) throws { try Data(text.utf8).write(to: URL(fileURLWithPath: path)) }
        try write("[[0, 1, 2], [0, 0, 1]]")
        #expect(Self.message { _ = try BOSS.readCosts(path: path) }?.contains("not square") == true)
        try write("[[0, -1], [0, 0]]")
        #expect(Self.message { _ = try BOSS.readCosts(path: path) }?.contains("negative") == true)
        try write("[[0, 1], [0, 0]")
        #expect(Self.message { _ = try BOSS.readCosts(path: path) }?.contains("not valid JSON") == true)
        try write("[[0, \"a\"], [0, 0]]")
        #expect(Self.message { _ = try BOSS.readCosts(path: path) }?.contains("row 0 entry 1") == true)
        try write("{\"a\": 1}")
        #expect(throws: ModelError.self) { try BOSS.readCosts(path: path) }
        #expect(throws: ModelError.self) { try BOSS.readCosts(path: path + ".missing") }
    }
}
