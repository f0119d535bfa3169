import Foundation
import Testing
@testable import MillraceCore
@testable import MillraceHTTP
import MillracePipelines
import MillraceTestSupport

/// Several models behind one service, and the CLI's schedule, source and solver choices
/// through `POST /v1/generate` (docs/API.md).
@Suite struct ServeModelsTests {
    /// A copy of the tiny fixture under `name`, with a BOSS schedule for 3 steps when asked.
    static func modelWithSchedules(_ name: String, boss: Bool = true) throws -> String {
        let dir = Fixtures.tempPath("models-\(UUID().uuidString)") + "/" + name
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let fixture = Fixtures.path("unet-tiny-a")
        for file in try FileManager.default.contentsOfDirectory(atPath: fixture) {
            try FileManager.default.copyItem(atPath: fixture + "/" + file, toPath: dir + "/" + file)
        }
        guard boss else { return dir }
        var schedules = BOSS.Schedules(grid: 10, samples: 4, guidance: 1)
        try schedules.set(indices: [0, 2, 6, 10], cost: 0.5)
        try schedules.write(path: BOSS.Schedules.path(inModelFolder: dir))
        return dir
    }

    static func service() throws -> MillraceService {
        let boss = try ModelFolder.load(try modelWithSchedules("tiny-boss"))
        let plain = try ModelFolder.load(try modelWithSchedules("tiny-plain", boss: false))
        return MillraceService(folders: [boss, plain], options: MillraceService.Options())
    }

    @Test func modelsAreListedWithWhatTheyOffer() throws {
        let s = try Self.service()
        defer { s.beginShutdown() }
        let r = s.handle(HardeningTests.request("GET", "/v1/models"))
        #expect(r.status == 200)
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(HardeningTests.text(r).utf8)) as? [String: Any])
        #expect(obj["default"] as? String == "tiny-boss")
        let list = try #require(obj["models"] as? [[String: Any]])
        #expect(list.map { $0["name"] as? String } == ["tiny-boss", "tiny-plain"])
        #expect(list[0]["schedules"] as? [String] == ["uniform", "boss"] && list[0]["boss_steps"] as? [Int] == [3])
        #expect(list[1]["schedules"] as? [String] == ["uniform"])
        #expect(list.allSatisfy { $0["sources"] as? [String] == ["gaussian"] && $0["solvers"] as? [String] == ["euler", "heun"] })
    }

    /// A stream that names no model runs on the stream model (Options.streamModel, else the one
    /// named like the shipped stream student, else the default model).
    @Test func streamsRunOnTheStreamModelUnlessTheyNameOne() throws {
        let boss = try ModelFolder.load(try Self.modelWithSchedules("tiny-boss"))
        let plain = try ModelFolder.load(try Self.modelWithSchedules("tiny-plain", boss: false))
        var o = MillraceService.Options()
        o.streamModel = "tiny-plain"
        let s = MillraceService(folders: [boss, plain], options: o)
        defer { s.beginShutdown() }
        let listed = try #require(try JSONSerialization.jsonObject(with: Data(HardeningTests.text(s.handle(HardeningTests.request("GET", "/v1/models"))).utf8)) as? [String: Any])
        #expect(listed["default"] as? String == "tiny-boss" && listed["stream_default"] as? String == "tiny-plain")
        func streamModel(_ json: String) throws -> UNet2DModel? {
            let r = s.handle(HardeningTests.request("POST", "/v1/streams", body: json))
            #expect(r.status == 201, "\(HardeningTests.text(r))")
            let id = try #require(try JSONSerialization.jsonObject(with: Data(HardeningTests.text(r).utf8)) as? [String: Any])["id"] as? String
            return s.scheduler.stream(id ?? "")?.withSession { $0.pipeline.sampler.model }
        }
        #expect(try streamModel("{}") === plain.model)
        #expect(try streamModel(#"{"model": "tiny-boss"}"#) === boss.model)
        let plainService = try Self.service()
        defer { plainService.beginShutdown() }
        #expect(plainService.streamDefault.name == "tiny-boss", "no stream model served: the default model")
    }

    /// A restyle model is served for streams: listed with its task and stream defaults, a stream
    /// on it starts from those (two Euler slots from noise) and feeds it the frames, and
    /// generation with it is refused with the reason.
    @Test func aRestyleModelServesStreamsAndNotGeneration() throws {
        let restyle = Fixtures.tinyRestyleSampler()
        let dir = Fixtures.tempPath("models-\(UUID().uuidString)") + "/tiny-restyle"
        try ModelFolder.write(model: restyle.model, flow: restyle.flow, to: dir)
        let plain = try ModelFolder.load(try Self.modelWithSchedules("tiny-plain", boss: false))
        let s = MillraceService(folders: [plain, try ModelFolder.load(dir)], options: MillraceService.Options())
        defer { s.beginShutdown() }
        let listed = try #require(try JSONSerialization.jsonObject(with: Data(HardeningTests.text(s.handle(HardeningTests.request("GET", "/v1/models"))).utf8)) as? [String: Any])
        let models = try #require(listed["models"] as? [[String: Any]])
        #expect(models.map { $0["task"] as? String } == ["generate", "restyle"])
        let defaults = try #require(models[1]["stream_defaults"] as? [String: Any])
        #expect(defaults["strength"] as? Double == 1 && defaults["steps"] as? Int == StreamPipeline.restyleSteps)
        #expect(defaults["stepping"] as? String == "euler" && defaults["rcfg"] as? String == "full")
        let plainDefaults = try #require(models[0]["stream_defaults"] as? [String: Any])
        #expect(plainDefaults["steps"] as? Int == StreamPipeline.defaultSteps && plainDefaults["stepping"] as? String == "renoise")
        #expect(plainDefaults["structure"] as? Double == Double(StreamPipeline.defaultStructure))
        #expect(plainDefaults["structure_floor"] as? Double == 0 && defaults["structure_floor"] as? Double == 0)
        #expect(plainDefaults["structure_target"] as? String == "frame" && defaults["structure_target"] as? String == "frame")
        #expect(abs((defaults["structure"] as? Double ?? 0) - Double(StreamPipeline.restyleStructure)) < 1e-6 && StreamPipeline.restyleStructure > 0)
        let r = s.handle(HardeningTests.request("POST", "/v1/streams", body: #"{"model": "tiny-restyle", "class": 1}"#))
        #expect(r.status == 201, "\(HardeningTests.text(r))")
        let id = try #require(try JSONSerialization.jsonObject(with: Data(HardeningTests.text(r).utf8)) as? [String: Any])["id"] as? String
        let pipeline = try #require(s.scheduler.stream(id ?? "")?.withSession { $0.pipeline })
        let times = try StreamPipeline.times(strength: 1, steps: StreamPipeline.restyleSteps)
        #expect(pipeline.conditional && pipeline.times == times && pipeline.settings.stepping == .euler)
        #expect(pipeline.settings.structure == StreamPipeline.restyleStructure)
        let g = s.handle(HardeningTests.request("POST", "/v1/generate", body: #"{"model": "tiny-restyle", "steps": 2, "upscale": 1}"#))
        #expect(g.status == 400 && HardeningTests.text(g).contains("restyle"), "\(HardeningTests.text(g))")
    }

    @Test func generateTakesModelScheduleSourceAndSolver() throws {
        let s = try Self.service()
        defer { s.beginShutdown() }
        func generate(_ json: String) -> HTTPResponse { s.handle(HardeningTests.request("POST", "/v1/generate", body: json)) }
        let boss = generate(#"{"steps": 3, "schedule": "boss", "upscale": 1}"#)
        #expect(boss.status == 200, "\(HardeningTests.text(boss))")
        let uniform = generate(#"{"steps": 3, "upscale": 1}"#)
        #expect(uniform.status == 200)
        #expect(HardeningTests.text(boss) != HardeningTests.text(uniform), "another grid, another image")
        // The BOSS image is the sampler's on the file's grid.
        let p = try s.generateParams(["steps": 3, "schedule": "boss"])
        #expect(p.grid == [0, 0.2, 0.6, 1])
        #expect(generate(#"{"steps": 3, "solver": "heun", "upscale": 1}"#).status == 200)
        let other = generate(#"{"steps": 2, "model": "tiny-plain", "upscale": 1}"#)
        #expect(other.status == 200)
        for (bad, mention) in [(#"{"steps": 4, "schedule": "boss"}"#, "[3]"), (#"{"schedule": "boss", "model": "tiny-plain"}"#, "no BOSS"),
                               (#"{"source": "pruned"}"#, "pruning set"), (#"{"solver": "rk4"}"#, "solver"),
                               (#"{"model": "nope"}"#, "tiny-boss"), (#"{"schedule": "cosine"}"#, "schedule")] {
            let r = generate(bad)
            #expect(r.status == 400, "\(bad)")
            #expect(HardeningTests.text(r).contains(mention), "\(bad): \(HardeningTests.text(r))")
        }
    }

    /// What a fresh clone serves (`gen serve` with no --model): the shipped model with its BOSS
    /// schedules and its pruning set, and its shipped one-step student, so `"schedule": "boss"`,
    /// `"source": "pruned"` and a second model work with nothing built first.
    @Test func theShippedModelsServeBossPrunedAndTheStudent() throws {
        let shipped = Fixtures.repositoryRoot + "/assets/models/emoji32"
        let paths = [shipped] + ModelFolder.studentPaths(of: shipped)
        let s = MillraceService(folders: try paths.map { try ModelFolder.load($0) }, options: MillraceService.Options())
        defer { s.beginShutdown() }
        let list = s.handle(HardeningTests.request("GET", "/v1/models"))
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(HardeningTests.text(list).utf8)) as? [String: Any])
        let models = try #require(obj["models"] as? [[String: Any]])
        #expect(models.map { $0["name"] as? String } == ["emoji32", "emoji32-1step"])
        #expect(models[0]["sources"] as? [String] == ["gaussian", "pruned"])
        #expect((models[0]["schedules"] as? [String])?.contains("boss") == true)
        func generate(_ json: String) -> HTTPResponse { s.handle(HardeningTests.request("POST", "/v1/generate", body: json)) }
        for body in [#"{"steps": 2, "schedule": "boss", "source": "pruned", "class": 2, "seed": 5}"#,
                     #"{"steps": 1, "model": "emoji32-1step", "class": 2, "seed": 5}"#] {
            let r = generate(body)
            #expect(r.status == 200, "\(body): \(HardeningTests.text(r))")
            #expect(r.headers.contains { $0.0.lowercased() == "content-type" && $0.1.hasPrefix("image/png") })
        }
    }

    /// What `gen serve` serves without --model: emoji32 and its student, then the composition
    /// model, its image-to-image student and its 64×64 restyle model, then the stream model (a
    /// 128×128 restyle model), which a stream that names no model runs on (one slot from noise,
    /// structure guidance on); a frame of the scene clip goes through it and the stream reports
    /// its measures.
    @Test func theShippedSetServesTheCompositionModelAndStreamsOnTheRestyleModel() throws {
        let paths = ModelFolder.defaultServedPaths()
        let s = MillraceService(folders: try paths.map { try ModelFolder.load($0) }, options: MillraceService.Options())
        defer { s.beginShutdown() }
        #expect(s.models.map(\.name) == ["emoji32", "emoji32-1step", "scenes64", "scenes64-i2i", "scenes64-restyle", "scenes128-restyle"])
        #expect(s.streamDefault.name == "scenes128-restyle" && s.streamDefault.folder.config.sampleSize == 128)
        #expect(s.streamDefault.folder.flow.task == StreamPipeline.restyleTask)
        let created = s.handle(HardeningTests.request("POST", "/v1/streams", body: #"{"class": "Animals & Nature", "filter": false}"#))
        #expect(created.status == 201, "\(HardeningTests.text(created))")
        let id = try #require(try JSONSerialization.jsonObject(with: Data(HardeningTests.text(created).utf8)) as? [String: Any])["id"] as? String
        let pipeline = try #require(s.scheduler.stream(id ?? "")?.withSession { $0.pipeline })
        #expect(pipeline.conditional && pipeline.times == [0] && pipeline.settings.guidance == .none)
        #expect(pipeline.settings.structure == StreamPipeline.restyleStudentStructure)
        #expect(pipeline.settings.structureFloor == StreamPipeline.restyleStructureFloor && StreamPipeline.restyleStructureFloor > 0)
        #expect(pipeline.settings.structureTarget == .matched)
        let frame = try Data(contentsOf: URL(fileURLWithPath: Fixtures.repositoryRoot + "/assets/clips/scene/frame-000.png"))
        var stats: [String: Any] = [:]
        for _ in 0..<3 {
            let posted = s.handle(HTTPRequest(method: "POST", path: "/v1/streams/\(id ?? "")/frames", query: [:],
                                              headers: ["host": "127.0.0.1:8080", "content-type": "image/png"], body: [UInt8](frame), bodyTooLarge: false))
            #expect(posted.status == 202)
            let deadline = Date().addingTimeInterval(60)
            repeat {
                Thread.sleep(forTimeInterval: 0.05)
                stats = (try? JSONSerialization.jsonObject(with: Data(HardeningTests.text(s.handle(HardeningTests.request("GET", "/v1/streams/\(id ?? "")"))).utf8)) as? [String: Any]) ?? [:]
            } while (stats["frames_in"] as? Int ?? 0) > (stats["processed"] as? Int ?? 0) + (stats["errors"] as? Int ?? 0) && Date() < deadline
        }
        #expect(stats["processed"] as? Int ?? 0 >= 2, "\(stats)")
        // The same frame in and out: the output follows its layout.
        #expect((stats["luma_correlation"] as? Double ?? 0) > 0.5, "\(stats)")
        #expect(stats["flicker_static"] is Double, "\(stats)")
    }

    /// A model that cannot make RGB images (unet-tiny-b: 2 channels in, 1 out; a latent-space
    /// model alike) gets a clear 400, never a trap, and `gen serve` refuses to start with it.
    @Test func aModelThatCannotMakeImagesIsRefused() throws {
        let odd = try ModelFolder.load(Fixtures.path("unet-tiny-b"))
        let s = MillraceService(folders: [try ModelFolder.load(Fixtures.path("unet-tiny-a")), odd], options: MillraceService.Options())
        defer { s.beginShutdown() }
        let name = s.models[1].name
        let gen = s.handle(HardeningTests.request("POST", "/v1/generate", body: #"{"steps": 2, "model": "\#(name)"}"#))
        #expect(gen.status == 400)
        #expect(HardeningTests.text(gen).contains("out_channels 1"))
        #expect(s.handle(HardeningTests.request("POST", "/v1/streams", body: #"{"model": "\#(name)"}"#)).status == 400)
        #expect(throws: ModelError.self) { try FlowSampler(model: odd.model, flow: odd.flow).requireImageModel() }
        let (status, _, err) = try GenCLI.run(["serve", "--port", "0", "--model", Fixtures.path("unet-tiny-b")])
        #expect(status != 0)
        #expect(err.contains("out_channels"), "\(err)")
        let (genStatus, _, genErr) = try GenCLI.run(["--steps", "1", "--model", Fixtures.path("unet-tiny-b"),
                                                     "--out", Fixtures.tempPath("never-\(UUID().uuidString).png")])
        #expect(genStatus != 0 && genErr.contains("out_channels"), "\(genErr)")
    }

    @Test func heunCountsTwiceInTheCostLimit() throws {
        let folder = try ModelFolder.load(Fixtures.path("unet-tiny-a"))
        var o = MillraceService.Options()
        o.maxGenerateWork = 10
        let s = MillraceService(folder: folder, options: o)
        defer { s.beginShutdown() }
        // unet-tiny-a: guidance 1 by default here, so 1 row per image.
        let rows = s.generationRows(try s.generateParams(["steps": 6, "guidance": 1]))
        #expect(rows == 1)
        #expect(s.handle(HardeningTests.request("POST", "/v1/generate", body: #"{"steps": 6, "guidance": 1}"#)).status == 200)
        #expect(s.handle(HardeningTests.request("POST", "/v1/generate", body: #"{"steps": 6, "guidance": 1, "solver": "heun"}"#)).status == 413)
    }

    @Test func streamsRunOnTheChosenModel() throws {
        let s = try Self.service()
        defer { s.beginShutdown() }
        let created = s.handle(HardeningTests.request("POST", "/v1/streams", body: #"{"model": "tiny-plain", "filter": false}"#))
        #expect(created.status == 201)
        let entry = try #require(s.scheduler.streams.first)
        #expect(entry.session.pipeline.sampler.model === s.models[1].folder.model)
        #expect(s.handle(HardeningTests.request("POST", "/v1/streams", body: #"{"model": "nope"}"#)).status == 400)
    }

    /// A named replica's stream ids start with its name and a per-start tag, so a proxy can
    /// route by the name and an id from an earlier run of the replica is unknown to this one.
    @Test func aNamedReplicaPrefixesItsStreamIDs() throws {
        let fixture = try ModelFolder.load(try Self.modelWithSchedules("tiny", boss: false))
        func ids(_ instance: String?) throws -> [String] {
            var o = MillraceService.Options()
            o.instance = instance
            let s = MillraceService(folders: [fixture], options: o)
            defer { s.beginShutdown() }
            return try (0..<2).map { _ in
                let r = s.handle(HardeningTests.request("POST", "/v1/streams", body: #"{"filter": false}"#))
                let obj = try JSONSerialization.jsonObject(with: Data(HardeningTests.text(r).utf8)) as? [String: Any]
                return try #require(obj?["id"] as? String)
            }
        }
        #expect(try ids(nil) == ["s1", "s2"])
        let a = try ids("r2"), b = try ids("r2")
        #expect(a.allSatisfy { $0.hasPrefix("r2-") && $0.split(separator: "-").count == 3 })
        #expect(a.map { $0.split(separator: "-")[2] } == ["s1", "s2"])
        #expect(a[0].split(separator: "-")[1] == a[1].split(separator: "-")[1])
        #expect(a[0] != b[0], "a restarted replica must not hand out the ids of the one before")
    }
}
