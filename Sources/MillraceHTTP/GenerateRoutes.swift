import Foundation
import MillraceFormats
import MillraceCore
import MillraceImaging

// POST /v1/generate: parameters, cost limits, the sampling loop on the shared model, and the
// progressive (multipart) variant.
extension MillraceService {
    // MARK: Generation parameters

    struct GenerateParams {
        var classes: [Int]
        var steps = 16
        var seed: UInt64 = 0
        var guidance: Float = 1
        var count = 1
        var upscale = 4
        var model: ServedModel
        /// nil: uniform; otherwise the BOSS grid for `steps`.
        var grid: [Float]?
        var source = SourceDistribution.gaussian
        var solver = Solver.euler
        /// Model evaluations per step.
        var evaluationsPerStep: Int { solver == .heun ? 2 : 1 }
    }

    /// The served model named `name` (nil: the default); 400 naming the models otherwise.
    func model(named name: Any?) throws -> ServedModel {
        guard let name else { return models[0] }
        guard let s = name as? String, let m = models.first(where: { $0.name == s }) else {
            throw RequestError("'model' must be one of \(models.map(\.name)) (GET /v1/models)")
        }
        return m
    }

    /// Largest JSON parameter body: the parameters of any route fit in a few hundred bytes, so a
    /// bigger one is refused before it is parsed (parsing costs far more memory than the bytes).
    static let maxJSONBodyBytes = 64 << 10

    func parseJSONObject(_ body: [UInt8]) throws -> [String: Any] {
        if body.isEmpty { return [:] }
        guard body.count <= Self.maxJSONBodyBytes else {
            throw RequestError("a JSON body of \(body.count) bytes is over the \(Self.maxJSONBodyBytes)-byte limit of parameters", status: 413)
        }
        do { return try StrictJSON.parseObject(body) } catch {
            throw RequestError("body is not a JSON object: \(error)")
        }
    }

    func generateParams(_ d: [String: Any]) throws -> GenerateParams {
        func int(_ key: String, _ range: ClosedRange<Int>) throws -> Int? {
            guard let v = d[key] else { return nil }
            guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue == n.doubleValue.rounded(),
                  range.contains(Int(exactly: n.doubleValue.rounded()) ?? Int.min) else {
                throw RequestError("'\(key)' must be an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            return n.intValue
        }
        let known: Set = ["class", "steps", "seed", "guidance", "schedule", "source", "solver", "count", "upscale", "model"]
        if let unknown = d.keys.first(where: { !known.contains($0) }) { throw RequestError("unknown parameter '\(unknown)'") }
        let model = try model(named: d["model"])
        if let problem = model.sampler.imageProblem { throw RequestError("model '\(model.name)' cannot generate: \(problem)") }
        let folder = model.folder
        let cls = d["class"].map { "\($0)" } ?? "0"
        var p = GenerateParams(classes: try ClassSelection.parse(cls, flow: folder.flow, config: folder.config), model: model)
        p.steps = try int("steps", 1...200) ?? p.steps
        p.seed = UInt64(try int("seed", 0...Int(Int32.max)) ?? 0)
        p.count = try int("count", 1...16) ?? p.count
        p.upscale = try int("upscale", 1...16) ?? p.upscale
        if let g = d["guidance"] {
            guard let n = g as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite, n.doubleValue >= 0, n.doubleValue <= 20 else {
                throw RequestError("'guidance' must be a number in 0...20")
            }
            p.guidance = n.floatValue
        } else {
            p.guidance = Float(folder.flow.defaultGuidance)
        }
        // The same choices as the CLI's --schedule, --source and --solver, checked against what
        // the model's folder holds (GET /v1/models says it).
        switch d["schedule"].map({ "\($0)" }) ?? "uniform" {
        case "uniform": p.grid = nil
        case "boss":
            guard model.bossSteps.contains(p.steps) else {
                throw RequestError(model.bossSteps.isEmpty
                    ? "model '\(model.name)' has no BOSS schedules"
                    : "model '\(model.name)' has BOSS schedules for steps \(model.bossSteps), not \(p.steps)")
            }
            let grid = try BOSS.Schedules.times(steps: p.steps, modelFolder: folder.path)
            try Schedule.validate(grid)
            p.grid = grid
        default: throw RequestError("'schedule' must be uniform or boss")
        }
        guard let source = SourceDistribution(rawValue: d["source"].map { "\($0)" } ?? "gaussian") else {
            throw RequestError("'source' must be gaussian or pruned")
        }
        if source == .pruned && !model.hasPruningSet {
            throw RequestError("model '\(model.name)' has no pruning set for source 'pruned'")
        }
        p.source = source
        guard let solver = Solver(rawValue: d["solver"].map { "\($0)" } ?? "euler") else { throw RequestError("'solver' must be euler or heun") }
        p.solver = solver
        return p
    }

    // MARK: Generation

    /// Model rows one step of this request costs.
    func generationRows(_ p: GenerateParams) -> Int {
        p.classes.count * p.count * p.model.sampler.rowsPerSample(guidance: p.guidance)
    }

    /// Width and height of the picture a request makes (one image, or a grid of `count` columns).
    func pictureSize(_ p: GenerateParams) -> (width: Int, height: Int) {
        let side = p.model.folder.config.sampleSize * p.upscale
        let n = p.classes.count * p.count
        if n == 1 { return (side, side) }
        let cols = min(p.count, n), rows = (n + cols - 1) / cols
        return (cols * side + (cols - 1) * 2, rows * side + (rows - 1) * 2)
    }

    /// Bytes a generation holds: the samples and their velocities, one model call's
    /// activations (calls are at most `maxRowsPerCall` rows) and the picture.
    func generationBytes(_ p: GenerateParams) -> Int {
        let c = p.model.folder.config
        let sampleFloats = c.inChannels * c.sampleSize * c.sampleSize
        let n = p.classes.count * p.count
        let rowsPerCall = min(generationRows(p), max(1, options.maxRowsPerCall))
        let (w, h) = pictureSize(p)
        return n * sampleFloats * 4 * 6 + rowsPerCall * p.model.folder.model.activationBytesPerRow + w * h * 16
    }

    /// Refuses (413) a request whose rows × steps or picture is over the limits, before any work.
    func checkGenerationCost(_ p: GenerateParams) throws {
        let rows = generationRows(p) * p.evaluationsPerStep
        guard rows * p.steps <= options.maxGenerateWork else {
            throw JobRefusal(status: 413, message: "this request costs \(rows) model rows × \(p.steps) steps = \(rows * p.steps), over the "
                             + "server's limit of \(options.maxGenerateWork) (gen serve --max-generate-work): ask for fewer classes, images or steps")
        }
        let (w, h) = pictureSize(p)
        guard w * h <= options.maxOutputPixels else {
            throw JobRefusal(status: 413, message: "the picture would be \(w)x\(h), over the server's limit of \(options.maxOutputPixels) "
                             + "pixels (gen serve --max-output-pixels): lower 'upscale' or 'count'")
        }
    }

    /// Runs a generation in calls of at most `maxRowsPerCall` rows, taking the model lock for
    /// each call (so streams keep their pace), and checking `job` before every step: it throws
    /// `JobStopped` within one step of a disconnect, the deadline or a shutdown.
    /// `onStep` gets every step's data estimate except the last.
    func runGeneration(_ p: GenerateParams, job: Job, onStep: ((Int, Int, Tensor) -> Void)? = nil) throws -> RGBImage {
        let c = p.model.folder.config
        let batcher = p.model.batcher
        // With batching, the batcher takes the model lock for each shared call; without, each
        // of this generation's calls takes it here.
        // A generation does not make calls wait for it (it has work of its own between steps):
        // its steps join whatever call is next, and the rows that queued meanwhile share it.
        let sampler = p.model.generationSampler
        var labels: [Int] = []
        for cls in p.classes { labels += [Int](repeating: cls, count: p.count) }
        try job.check()
        let x0 = try p.model.draw(p.source, count: labels.count, shape: [c.inChannels, c.sampleSize, c.sampleSize], seed: p.seed)
        var stopped: JobStopped?
        let lock = modelLock
        let x1 = sampler.integrate(x0, schedule: p.grid ?? Schedule.uniform(steps: p.steps), labels: c.numClassEmbeds == nil ? nil : labels,
                                   guidance: p.guidance, solver: p.solver,
                                   progress: { step, steps, estimate in
                                       if step == steps { return true }
                                       onStep?(step, steps, estimate)
                                       do { try job.check() } catch { stopped = error as? JobStopped; return step == steps }
                                       return true
                                   },
                                   samplesPerCall: max(1, options.maxRowsPerCall / sampler.rowsPerSample(guidance: p.guidance)),
                                   around: { call in batcher == nil ? lock.withLock(call) : call() })
        stateLock.lock(); generateCalls += p.steps; stateLock.unlock()
        if let stopped { throw stopped }
        return try picture(x1, p)
    }

    func picture(_ x: Tensor, _ p: GenerateParams) throws -> RGBImage {
        let images = try RGBImage.batch(from: x, scale: Float(p.model.sampler.flow.normScale)).map {
            p.upscale > 1 ? $0.resizedNearest(width: $0.width * p.upscale, height: $0.height * p.upscale) : $0
        }
        return images.count == 1 ? images[0] : RGBImage.grid(images, columns: p.count, padding: 2)
    }

    func generate(_ r: HTTPRequest) -> HTTPResponse {
        do {
            let p = try generateParams(try parseJSONObject(r.body))
            try checkGenerationCost(p)
            let job = try admitJob(bytes: generationBytes(p), clientGone: r.isClientGone)
            let png = try runGeneration(p, job: job).pngData()
            return HTTPResponse(status: 200, headers: [("Content-Type", "image/png")], body: .bytes(png))
        } catch let e as JobRefusal {
            return e.response
        } catch let e as JobStopped {
            return .busy("generation stopped: \(e.reason)")
        } catch {
            return .failure(error)
        }
    }

    static let boundary = "millraceframe"

    static func multipartPart(_ image: [UInt8], type: String = "image/png") -> [UInt8] {
        Array("--\(boundary)\r\nContent-Type: \(type)\r\nContent-Length: \(image.count)\r\n\r\n".utf8) + image + Array("\r\n".utf8)
    }

    static let multipartEnd = Array("--\(boundary)--\r\n".utf8)

    /// The data estimate after every step, then the final image, as multipart PNG parts. The
    /// generation runs on its own thread and stops within one step when the client leaves.
    func generateStream(_ r: HTTPRequest) -> HTTPResponse {
        var d: [String: Any] = [:]
        for (k, v) in r.query { d[k] = k == "class" || k == "schedule" || k == "source" ? v : (Double(v).map { NSNumber(value: $0) } ?? v) }
        let p: GenerateParams
        let job: Job
        let body = HTTPStreamBody()
        do {
            p = try generateParams(d)
            try checkGenerationCost(p)
            let gone = r.isClientGone
            job = try admitJob(bytes: generationBytes(p), clientGone: { body.isCancelled || gone() })
        } catch let e as JobRefusal {
            return e.response
        } catch {
            return .failure(error)
        }
        let work = UncheckedSendable((self, p, job, body))
        Thread.detachNewThread {
            let (service, params, job, body) = work.value
            do {
                let final = try service.runGeneration(params, job: job) { _, _, estimate in
                    // A slow reader gets the newest estimate; the encoding is skipped once it has gone.
                    if !body.isCancelled, let png = try? service.picture(estimate, params).pngData(fast: true) {
                        body.offer(Self.multipartPart(png))
                    }
                }
                body.finish(Self.multipartPart(try final.pngData()) + Self.multipartEnd)
            } catch {
                body.finish(Self.multipartEnd)
            }
        }
        return HTTPResponse(status: 200, headers: [("Content-Type", "multipart/x-mixed-replace; boundary=\(Self.boundary)"),
                                                   ("Cache-Control", "no-cache")], body: .stream(body))
    }
}
