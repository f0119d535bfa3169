import Foundation
import Testing
@testable import MillraceFormats
@testable import MillraceCore
@testable import MillraceTraining
import MillraceTestSupport

/// Straightening (§3.4): teacher states, chords, the chord trainer, the teacher cache.
@Suite(.serialized) struct StraightenTests {
    /// A tiny trained-from-scratch model folder (8×8, 2 classes + null), written to a temp dir.
    static func tinyFolder() throws -> ModelFolder {
        let model = UNet2DModel(config: Fixtures.tinyUNetConfig(), seed: 3)
        var flow = FlowConfig()
        flow.classNames = ["square", "disc"]
        flow.nullClass = 2
        flow.defaultGuidance = 2
        let path = Fixtures.tempPath("straighten-teacher")
        try ModelFolder.write(model: model, flow: flow, to: path)
        return try ModelFolder.load(path)
    }

    /// Image-to-image chords start at t0·f + (1 − t0)·N with t0 in the range, and one jump along
    /// the chord lands where the teacher's Euler steps from t0 to 1 do: with one step and no
    /// guidance the chord is the teacher's velocity itself; batching does not change the chords.
    @Test func imageToImageChordsJumpWhereTheTeacherLands() throws {
        try GlobalKernelSettings.exclusive {
            let folder = try Self.tinyFolder()
            let sampler = FlowSampler(model: folder.model, flow: folder.flow)
            var rng = TestRNG(seed: 5)
            let images = (0..<5).map { _ in rng.floats(3 * 8 * 8) }
            let labels = [0, 1, 2, 1, 0]
            let one = try Straightening.imageToImageChords(sampler: sampler, images: images, labels: labels, times: 0.2...0.6,
                                                           steps: 1, guidance: 1, seed: 3, batch: 2)
            #expect(one.count == 5 && one.labels == labels && one.times.allSatisfy { $0 >= 0.2 && $0 <= 0.6 })
            let x = Tensor(shape: [5, 3, 8, 8], data: one.states)
            let v = sampler.velocity(x, t: one.times, labels: labels, guidance: 1)
            #expect(relativeError(one.targets, v.data) < 1e-4)
            // The start is the noised image: (x − t0·f)/(1 − t0) is the same noise for every t0 draw.
            let guided = try Straightening.imageToImageChords(sampler: sampler, images: images, labels: labels, times: 0.2...0.6,
                                                              steps: 3, guidance: 2, seed: 3, batch: 5)
            #expect(guided.states == one.states && guided.times == one.times)
            // Three guided Euler steps from t0, done by hand for row 0.
            var x0 = x.rows(0..<1)
            let t0 = one.times[0], dt = (1 - t0) / 3
            for k in 0..<3 { x0.addScaled(sampler.velocity(x0, t: [t0 + Float(k) * dt], labels: [0], guidance: 2), dt) }
            let jump = zip(one.states[0..<192], guided.targets[0..<192]).map { $0 + (1 - t0) * $1 }
            #expect(relativeError(jump, x0.data) < 1e-4)
            #expect(throws: ModelError.self) {
                _ = try Straightening.imageToImageChords(sampler: sampler, images: images, labels: labels, times: 0.2...1, steps: 1, guidance: 1, seed: 3)
            }
        }
    }

    /// Consistency-style chords: the jump from t lands where the student's jump from one guided
    /// teacher step later lands (done by hand for a row); with a step that reaches t = 1 the chord
    /// is the teacher's guided velocity itself. A trainer takes new chords of the same shape.
    @Test func consistencyChordsLandWhereTheStudentLandsFromOneTeacherStepOn() throws {
        try GlobalKernelSettings.exclusive {
            let folder = try Self.tinyFolder()
            let teacher = FlowSampler(model: folder.model, flow: folder.flow)
            let student = FlowSampler(model: UNet2DModel(config: folder.config, seed: 11), flow: folder.flow)
            var rng = TestRNG(seed: 6)
            let images = (0..<4).map { _ in rng.floats(3 * 8 * 8) }
            let labels = [0, 1, 2, 1]
            let c = try Straightening.consistencyChords(teacher: teacher, student: student, images: images, labels: labels,
                                                        times: 0.2...0.7, delta: 0.125, guidance: 2, seed: 4, batch: 3)
            #expect(c.count == 4 && c.labels == labels && c.times.allSatisfy { $0 >= 0.2 && $0 < 1 })
            let x = Tensor(shape: [4, 3, 8, 8], data: c.states)
            // Row 1 by hand.
            let t = c.times[1], tn = min(1, t + 0.125)
            var xn = x.rows(1..<2)
            xn.addScaled(teacher.velocity(xn, t: [t], labels: [1], guidance: 2), tn - t)
            var landing = xn
            landing.addScaled(student.velocity(xn, t: [tn], labels: [1], guidance: 1), 1 - tn)
            let jump = zip(c.states[192..<384], c.targets[192..<384]).map { $0 + (1 - t) * $1 }
            #expect(relativeError(jump, landing.data) < 1e-4)
            // A step to t = 1: the chord is the teacher's guided velocity.
            let whole = try Straightening.consistencyChords(teacher: teacher, student: student, images: images, labels: labels,
                                                            times: 0.2...0.7, delta: 1, guidance: 2, seed: 4)
            let v = teacher.velocity(Tensor(shape: [4, 3, 8, 8], data: whole.states), t: whole.times, labels: labels, guidance: 2)
            #expect(relativeError(whole.targets, v.data) < 1e-4)
            #expect(throws: ModelError.self) {
                _ = try Straightening.consistencyChords(teacher: teacher, student: student, images: images, labels: labels,
                                                        times: 0.2...0.7, delta: 0, guidance: 2, seed: 4)
            }
            var o = TrainOptions()
            o.steps = 2
            o.batchSize = 2
            let trainer = try FlowTrainer(folder: folder, chords: c, options: o)
            try trainer.replaceChords(whole)
            #expect(trainer.chords?.targets == whole.targets)
            trainer.trainStep()
        }
    }

    @Test func teacherStatesFollowTheSampler() throws {
        try GlobalKernelSettings.exclusive {
            let folder = try Self.tinyFolder()
            let sampler = FlowSampler(model: folder.model, flow: folder.flow)
            let labels = Straightening.teacherLabels(samples: 5, classes: [0, 1], null: 2, nullEvery: 3)
            #expect(labels == [0, 1, 2, 0, 1])
            // Batches of 2 give the same states as one batch, and the kept end state is what the
            // sampler's own 10-step uniform Euler integration returns.
            let a = try Straightening.teacherStates(sampler: sampler, samples: 5, grid: 10, keep: [0, 3, 10],
                                                    labels: labels, guidance: 2, seed: 9, batch: 2)
            let b = try Straightening.teacherStates(sampler: sampler, samples: 5, grid: 10, keep: [0, 3, 10],
                                                    labels: labels, guidance: 2, seed: 9, batch: 5)
            #expect(a.indices == [0, 3, 10])
            #expect(relativeError(a.states[3]!, b.states[3]!) < 1e-5)
            let x0 = GaussianSource.draw(count: 5, shape: [3, 8, 8], seed: 9)
            #expect(a.states[0]! == x0.data)
            let x1 = sampler.integrate(x0, schedule: Schedule.uniform(steps: 10), labels: labels, guidance: 2)
            #expect(relativeError(a.states[10]!, x1.data) < 1e-5)
            #expect(throws: ModelError.self) {
                _ = try Straightening.teacherStates(sampler: sampler, samples: 2, grid: 10, keep: [11],
                                                    labels: [0, 1], guidance: 2, seed: 9)
            }
        }
    }

    @Test func chordsAreTheTeacherSecants() throws {
        let d = 4
        var states: [Int: [Float]] = [:]
        for i in [0, 2, 5, 10] { states[i] = (0..<(2 * d)).map { Float($0 * i) * 0.1 + Float(i * i) } }
        let teacher = Straightening.TeacherStates(grid: 10, samples: 2, dimension: d, labels: [1, 2], guidance: 3, states: states)
        let chords = try Straightening.chords(teacher, indices: [0, 2, 10])
        #expect(chords.count == 4)   // 2 intervals × 2 samples
        #expect(chords.times == [0, 0, 0.2, 0.2])
        #expect(chords.labels == [1, 2, 1, 2])
        // second interval, second sample: (x_10 − x_2) / 0.8
        for j in 0..<d {
            let expected = (states[10]![d + j] - states[2]![d + j]) / 0.8
            #expect(abs(chords.targets[3 * d + j] - expected) <= 1e-4 * max(1, abs(expected)))
            #expect(chords.states[3 * d + j] == states[2]![d + j])
        }
        #expect(throws: ModelError.self) { _ = try Straightening.chords(teacher, indices: [0, 5, 2, 10]) }
        #expect(throws: ModelError.self) { _ = try Straightening.chords(teacher, indices: [0, 3, 10]) }   // 3 not kept
        #expect(throws: ModelError.self) { _ = try Straightening.chords(teacher, indices: [0, 5]) }      // does not end at K
    }

    @Test func fineTuningOnChordsLowersTheChordLoss() throws {
        try GlobalKernelSettings.exclusive {
            let folder = try Self.tinyFolder()
            let sampler = FlowSampler(model: folder.model, flow: folder.flow)
            let labels = Straightening.teacherLabels(samples: 8, classes: [0, 1], null: 2, nullEvery: 4)
            let teacher = try Straightening.teacherStates(sampler: sampler, samples: 8, grid: 8, keep: [0, 3, 8],
                                                          labels: labels, guidance: 2, seed: 4)
            let chords = try Straightening.chords(teacher, indices: [0, 3, 8])
            var opts = TrainerTests.options(steps: 30)
            opts.optimizer.learningRate = 2e-3
            let trainer = try FlowTrainer(folder: folder, chords: chords, options: opts)
            #expect(trainer.options.labelDropout == 0 && !trainer.options.horizontalFlips)
            // The trainer starts from the teacher's weights.
            let w0 = trainer.model.stateDict()
            for (name, t) in folder.model.stateDict() { #expect(w0[name]!.data == t.data) }
            let (first, last) = Self.lossAtEnds(trainer)
            #expect(last < 0.8 * first)
            // A chord label outside the model's classes is refused.
            var bad = chords
            bad.labels[0] = 7
            #expect(throws: TrainError.self) { _ = try FlowTrainer(folder: folder, chords: bad, options: opts) }
        }
    }

    /// Sums of the chord loss over the first and the last 5 of 30 training steps.
    static func lossAtEnds(_ trainer: FlowTrainer) -> (first: Double, last: Double) {
        var first = 0.0, last = 0.0
        for k in 0..<30 {
            let l = trainer.trainStep()
            if k < 5 { first += l }
            if k >= 25 { last += l }
        }
        return (first, last)
    }

    /// Restyle chords start from noise at t = 0 with the picture as condition and land where the
    /// teacher's guided Euler steps on [x; picture] do (one unguided step: the chord is the
    /// teacher's velocity); a student fine-tuned on them sees [state; condition] rows and lowers
    /// its chord loss; chords without the model's condition planes are refused.
    @Test func restyleChordsTrainAOneStepStudent() throws {
        try GlobalKernelSettings.exclusive {
            let s = Fixtures.tinyRestyleSampler()
            let path = Fixtures.tempPath("straighten-restyle")
            try ModelFolder.write(model: s.model, flow: s.flow, to: path)
            let folder = try ModelFolder.load(path)
            var rng = TestRNG(seed: 8)
            let pictures = (0..<6).map { _ in rng.floats(3 * 8 * 8) }
            let labels = [0, 1, 2, 1, 0, 1]
            let one = try Straightening.restyleChords(sampler: s, conditions: pictures, labels: labels, steps: 1, guidance: 1, seed: 2, batch: 4)
            #expect(one.count == 6 && one.times.allSatisfy { $0 == 0 } && one.conditionDimension == 192 && one.conditions == pictures.flatMap { $0 })
            var rowData: [Float] = []
            for r in 0..<6 {
                rowData += Array(one.states[(r * 192)..<((r + 1) * 192)])
                rowData += pictures[r]
            }
            let rows = Tensor(shape: [6, 6, 8, 8], data: rowData)
            #expect(relativeError(one.targets, s.velocity(rows, t: [Float](repeating: 0, count: 6), labels: labels, guidance: 1).data) < 1e-4)
            // Two guided steps by hand for row 1.
            let guided = try Straightening.restyleChords(sampler: s, conditions: pictures, labels: labels, steps: 2, guidance: 2, seed: 2)
            #expect(guided.states == one.states)
            var x = Tensor(shape: [1, 3, 8, 8], data: Array(one.states[192..<384]))
            for k in 0..<2 {
                let input = Tensor(shape: [1, 6, 8, 8], data: x.data + pictures[1])
                x.addScaled(s.velocity(input, t: [Float(k) / 2], labels: [1], guidance: 2), 0.5)
            }
            let landing: [Float] = zip(one.states[192..<384], guided.targets[192..<384]).map { $0 + $1 }
            #expect(relativeError(landing, x.data) < 1e-4)
            var opts = TrainerTests.options(steps: 30)
            opts.optimizer.learningRate = 2e-3
            let trainer = try FlowTrainer(folder: folder, chords: guided, options: opts)
            let (first, last) = Self.lossAtEnds(trainer)
            #expect(last < 0.8 * first)
            var bare = guided
            bare.conditions = []
            bare.conditionDimension = 0
            #expect(throws: TrainError.self) { _ = try FlowTrainer(folder: folder, chords: bare, options: opts) }
        }
    }

    /// With a weight plane per row, a restyle chord lands at the teacher's end scaled pixel by
    /// pixel (all three channels), so that the student's jump keeps the picture where the
    /// weight is 0; a plane of the wrong size is refused.
    @Test func restyleChordsKeepTheTeachersChangeOnlyInside() throws {
        try GlobalKernelSettings.exclusive {
            let s = Fixtures.tinyRestyleSampler()
            var rng = TestRNG(seed: 9)
            let pictures = (0..<3).map { _ in rng.floats(3 * 8 * 8) }
            let labels = [0, 1, 2]
            let inside: [[Float]] = (0..<3).map { r in (0..<64).map { p in r == 0 ? 1 : r == 1 ? 0 : Float(p % 8) / 7 } }
            let all = try Straightening.restyleChords(sampler: s, conditions: pictures, labels: labels, steps: 2, guidance: 2, seed: 4)
            let kept = try Straightening.restyleChords(sampler: s, conditions: pictures, labels: labels, steps: 2, guidance: 2, seed: 4, inside: inside)
            #expect(kept.states == all.states)
            for r in 0..<3 {
                for j in 0..<192 {
                    let i = r * 192 + j
                    let end = (all.states[i] + all.targets[i]) * inside[r][j % 64]
                    #expect(abs(kept.states[i] + kept.targets[i] - end) < 1e-5, "row \(r) value \(j)")
                }
            }
            // Row 1 keeps nothing: its jump lands on no change at all.
            #expect(kept.targets[192..<384].elementsEqual(kept.states[192..<384].map { -$0 }))
            #expect(throws: ModelError.self) {
                _ = try Straightening.restyleChords(sampler: s, conditions: pictures, labels: labels, steps: 1, guidance: 1, seed: 4,
                                                    inside: [[Float]](repeating: [1], count: 3))
            }
        }
    }

    @Test func teacherCacheRoundTripAndKey() throws {
        let d = 3
        let teacher = Straightening.TeacherStates(grid: 4, samples: 2, dimension: d, labels: [0, 2], guidance: 1.5,
                                                  states: [0: [1, 2, 3, 4, 5, 6], 4: [6, 5, 4, 3, 2, 1]])
        let path = Fixtures.tempPath("teacher-cache.safetensors")
        try Straightening.writeCache(teacher, path: path, key: "k1")
        let back = try #require(try Straightening.readCache(path: path, key: "k1"))
        #expect(back.grid == 4 && back.samples == 2 && back.dimension == d && back.labels == [0, 2] && back.guidance == 1.5)
        #expect(back.states == teacher.states)
        #expect(try Straightening.readCache(path: path, key: "other") == nil)
        // A safetensors file that is not a teacher cache is refused with a clear error.
        let other = Fixtures.tempPath("not-teacher.safetensors")
        try SafetensorsFile(tensors: ["x": Tensor(shape: [1], data: [0])]).write(path: other)
        #expect(throws: ModelError.self) { _ = try Straightening.readCache(path: other, key: "k1") }
    }
}
