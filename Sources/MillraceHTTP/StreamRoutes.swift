import Foundation
import MillraceFormats
import MillraceCore
import MillraceImaging
import MillracePipelines

// /v1/streams: create, frames in, output (PNG or JPEG multipart), stats, settings.
extension MillraceService {
    // MARK: Streams

    func streamSettings(_ d: [String: Any], base: StreamSettings?, sampler: FlowSampler) throws -> StreamSettings {
        var s = base ?? StreamSettings.defaults(classIndex: 0, flow: sampler.flow)
        /// A finite JSON number (not a boolean) under `key`, nil when absent.
        func number(_ key: String) throws -> Float? {
            guard let v = d[key] else { return nil }
            guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite else { throw RequestError("'\(key)' must be a number") }
            return n.floatValue
        }
        /// One of an enumeration's names under `key`, nil when absent.
        func choice<E: RawRepresentable & CaseIterable>(_ key: String, _: E.Type) throws -> E? where E.RawValue == String {
            guard let v = d[key] else { return nil }
            guard let str = v as? String, let e = E(rawValue: str) else {
                throw RequestError("'\(key)' must be one of \(E.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return e
        }
        if let c = d["class"] {
            s.classIndex = try ClassSelection.parse("\(c)", flow: sampler.flow, config: sampler.model.config)[0]
        }
        if let mode = try choice("rcfg", StreamGuidance.self) { s.guidance = mode }
        if let g = try number("guidance") { s.scale = g }
        if let δ = try number("delta") { s.delta = δ }
        if let mode = try choice("stepping", StreamStepping.self) { s.stepping = mode }
        if let β = try number("blend") { s.blend = β }
        if let w = try number("structure") { s.structure = w }
        if let σ = try number("structure_sigma") { s.structureSigma = σ }
        if let ρ = try number("structure_floor") { s.structureFloor = ρ }
        if let target = try choice("structure_target", StructureTarget.self) { s.structureTarget = target }
        return s
    }

    func createStream(_ r: HTTPRequest) -> HTTPResponse {
        do {
            let d = try parseJSONObject(r.body)
            let known: Set = ["class", "rcfg", "guidance", "delta", "stepping", "blend", "structure", "structure_sigma", "structure_floor", "structure_target", "strength", "steps", "t_list", "similarity", "max_skip", "filter",
                              "size", "seed", "model"]
            if let unknown = d.keys.first(where: { !known.contains($0) }) { throw RequestError("unknown parameter '\(unknown)'") }
            guard scheduler.streams.count < options.maxStreams else { return .error(429, "too many streams (limit \(options.maxStreams))") }
            func num(_ key: String) throws -> Double? {
                guard let v = d[key] else { return nil }
                guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue.isFinite else { throw RequestError("'\(key)' must be a number") }
                return n.doubleValue
            }
            let times: [Float]
            let model = d["model"] == nil ? streamDefault : try model(named: d["model"])
            let defaults = StreamPipeline.Defaults(flow: model.sampler.flow)
            if let list = d["t_list"] {
                guard let arr = list as? [NSNumber], !arr.isEmpty, arr.count <= 8 else { throw RequestError("'t_list' must be a list of 1 to 8 numbers") }
                times = arr.map(\.floatValue)
            } else {
                let steps = try num("steps") ?? Double(defaults.steps)
                guard steps == steps.rounded(), steps >= 1, steps <= 8 else { throw RequestError("'steps' must be an integer in 1...8") }
                times = try StreamPipeline.times(strength: Float(try num("strength") ?? Double(defaults.strength)), steps: Int(steps))
            }
            if let problem = StreamPipeline.streamProblem(model.sampler) { throw RequestError("model '\(model.name)' cannot run a stream: \(problem)") }
            let settings = try streamSettings(d, base: nil, sampler: model.sampler)
            let seed = UInt64(max(0, min(try num("seed") ?? 0, Double(Int32.max))))
            let pipeline = try StreamPipeline(sampler: model.streamSampler, times: times, settings: settings, seed: seed)
            let f = try filterFields(d)
            let session = StreamSession(pipeline: pipeline, filter: f.on ?? true
                ? SimilarityFilter(threshold: f.similarity ?? 0.98, maxSkip: f.maxSkip ?? 10, side: SimilarityFilter.defaultSide, seed: seed)
                : nil)
            if let size = try num("size") {
                guard size >= 8 && size <= 1024 && size == size.rounded() else { throw RequestError("'size' must be an integer in 8...1024") }
                session.outputSize = (Int(size), Int(size))
            }
            let entry = scheduler.add(session, id: streamIDPrefix.map { "\($0)s\(nextStreamNumber())" })
            scheduler.start()
            return .json(["id": entry.id], status: 201)
        } catch {
            return .failure(error)
        }
    }

    func postFrame(_ r: HTTPRequest, id: String) -> HTTPResponse {
        guard scheduler.stream(id) != nil else { return .error(404, "no stream '\(id)'") }
        let type = (r.headers["content-type"] ?? "").lowercased()
        guard type.hasPrefix("image/png") || type.hasPrefix("image/jpeg") else {
            return .error(415, "frames must be image/png or image/jpeg")
        }
        stateLock.lock()
        let now = Date()
        var window = frameWindows[id] ?? (now, 0)
        if now.timeIntervalSince(window.start) >= 1 { window = (now, 0) }
        window.count += 1
        frameWindows[id] = window
        stateLock.unlock()
        if Double(window.count) > options.maxFramesPerSecond {
            return .error(429, "more than \(Int(options.maxFramesPerSecond)) frames per second")
        }
        do {
            // The decoded size is read from the header and reserved before decoding.
            let (_, w, h) = try RGBImage.probe(r.body)
            guard w * h <= options.maxImagePixels else {
                return .error(413, "the frame is \(w)x\(h), over the server's limit of \(options.maxImagePixels) pixels")
            }
            guard let reservation = budget.reserve(w * h * 16) else { return .busy("the server's memory budget is full; retry shortly") }
            defer { reservation.release() }
            let image = try RGBImage.decode(r.body, maxPixels: options.maxImagePixels)
            guard scheduler.submit(image, to: id) else { return .error(404, "no stream '\(id)'") }
            return .json(["accepted": true], status: 202)
        } catch {
            return .error(415, "\(error)")
        }
    }

    /// The output format a viewer asks for: PNG (lossless, the default) or JPEG with a quality,
    /// which standard clients of multipart/x-mixed-replace read (ffmpeg's mpjpeg demuxer,
    /// OpenCV, VLC, OBS; an `<img>` reads both).
    enum OutputFormat: Equatable { case png, jpeg(quality: Int) }

    static func outputFormat(_ query: [String: String]) throws -> OutputFormat {
        let known: Set = ["format", "quality"]
        if let unknown = query.keys.first(where: { !known.contains($0) }) { throw RequestError("unknown query argument '\(unknown.prefix(40))'") }
        switch query["format"]?.lowercased() ?? "png" {
        case "png":
            guard query["quality"] == nil else { throw RequestError("'quality' applies to format=jpeg only") }
            return .png
        case "jpeg", "jpg":
            let q = query["quality"].map { Int($0) } ?? 85
            guard let q, (1...100).contains(q) else { throw RequestError("'quality' must be an integer in 1...100") }
            return .jpeg(quality: q)
        default:
            throw RequestError("'format' must be png or jpeg")
        }
    }

    /// The newest frame of each stream encoded as JPEG, per quality: encoded once for all the
    /// viewers that ask for it (on the thread that publishes the frame).
    final class JPEGFrames: @unchecked Sendable {
        private let lock = NSLock()
        private var cache: [String: (index: Int, bytes: [UInt8])] = [:]

        func bytes(stream: String, frame: StreamFrame, quality: Int) -> [UInt8]? {
            let key = "\(stream)|\(quality)"
            lock.lock()
            defer { lock.unlock() }
            if let c = cache[key], c.index == frame.index { return c.bytes }
            guard let jpeg = try? frame.image.jpegData(quality: quality) else { return nil }
            cache[key] = (frame.index, jpeg)
            return jpeg
        }

        func forget(stream: String) {
            lock.lock()
            cache = cache.filter { !$0.key.hasPrefix(stream + "|") }
            lock.unlock()
        }
    }

    func streamOutput(id: String, query: [String: String] = [:]) -> HTTPResponse {
        guard let entry = scheduler.stream(id) else { return .error(404, "no stream '\(id)'") }
        let format: OutputFormat
        do { format = try Self.outputFormat(query) } catch { return .failure(error) }
        // Frames are pushed to the viewer as they are published (no thread waits for them); a
        // slow viewer skips to the newest frame.
        let body = HTTPStreamBody()
        let jpegs = jpegFrames
        let viewer = entry.output.observe { frame in
            guard let frame else { body.finish(Self.multipartEnd); jpegs.forget(stream: id); return }
            switch format {
            case .png:
                body.offer(Self.multipartPart(frame.png))
            case .jpeg(let quality):
                if let jpeg = jpegs.bytes(stream: id, frame: frame, quality: quality) {
                    body.offer(Self.multipartPart(jpeg, type: "image/jpeg"))
                }
            }
        }
        body.onCancel { entry.output.stopObserving(viewer) }
        return HTTPResponse(status: 200, headers: [("Content-Type", "multipart/x-mixed-replace; boundary=\(Self.boundary)"),
                                                   ("Cache-Control", "no-cache")], body: .stream(body))
    }

    func streamStats(id: String) -> HTTPResponse {
        guard let e = scheduler.stream(id) else { return .error(404, "no stream '\(id)'") }
        // Counters, errors and settings read under the stream's lock, so they agree with each other.
        let (processed, skipped, settings, times, outputs, errors, lastError, measures) = e.withSession {
            ($0.framesProcessed, $0.framesSkipped, $0.pipeline.settings, $0.pipeline.times, e.outputs, e.errors, e.lastError, $0.measures)
        }
        return .json(["id": id, "frames_in": e.input.received, "dropped": e.input.dropped, "processed": processed,
                      "skipped": skipped, "out": outputs, "errors": errors, "last_error": lastError as Any? ?? NSNull(),
                      "class": settings.classIndex, "rcfg": settings.guidance.rawValue, "guidance": settings.scale,
                      "stepping": settings.stepping.rawValue, "blend": settings.blend, "slots": times,
                      "structure": settings.structure, "structure_sigma": settings.structureSigma,
                      "structure_floor": settings.structureFloor, "structure_target": settings.structureTarget.rawValue,
                      "luma_correlation": measures.lumaCorrelation as Any? ?? NSNull(),
                      "flicker_static": measures.flickerStatic as Any? ?? NSNull()])
    }

    /// The similarity filter's fields of a stream request, each nil when absent: `filter`
    /// (true or false), `similarity` (0...1) and `max_skip` (an integer in 0...1000).
    func filterFields(_ d: [String: Any]) throws -> (on: Bool?, similarity: Float?, maxSkip: Int?) {
        var on: Bool?, similarity: Float?, maxSkip: Int?
        if let v = d["filter"] {
            guard let n = v as? NSNumber, isJSONBool(n) else { throw RequestError("'filter' must be true or false") }
            on = n.boolValue
        }
        if let v = d["similarity"] {
            guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue >= 0 && n.doubleValue <= 1 else {
                throw RequestError("'similarity' must be a number in 0...1")
            }
            similarity = n.floatValue
        }
        if let v = d["max_skip"] {
            guard let n = v as? NSNumber, !isJSONBool(n), n.doubleValue == n.doubleValue.rounded(),
                  n.doubleValue >= 0 && n.doubleValue <= 1000 else {
                throw RequestError("'max_skip' must be an integer in 0...1000")
            }
            maxSkip = n.intValue
        }
        return (on, similarity, maxSkip)
    }

    func patchStream(_ r: HTTPRequest, id: String) -> HTTPResponse {
        guard let entry = scheduler.stream(id) else { return .error(404, "no stream '\(id)'") }
        do {
            let d = try parseJSONObject(r.body)
            let known: Set = ["class", "rcfg", "guidance", "delta", "stepping", "blend", "structure", "structure_sigma", "structure_floor", "structure_target", "filter", "similarity", "max_skip"]
            if let unknown = d.keys.first(where: { !known.contains($0) }) { throw RequestError("unknown or fixed parameter '\(unknown)'") }
            // Every value is checked before anything changes: a bad PATCH leaves the stream as it was.
            let f = try filterFields(d)
            try entry.withSession { session in
                let s = try streamSettings(d, base: session.pipeline.settings, sampler: session.pipeline.sampler)
                try session.pipeline.update(s)
                if let on = f.on {
                    session.filter = on ? (session.filter ?? SimilarityFilter(seed: 0)) : nil
                }
                if let eta = f.similarity { session.filter?.threshold = eta }
                if let maxSkip = f.maxSkip { session.filter?.maxSkip = maxSkip }
            }
            return .json(["id": id, "updated": true])
        } catch {
            return .failure(error)
        }
    }
}
