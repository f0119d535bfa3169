import Foundation
import MillraceCore
import MillraceImaging

/// In-context colorization (docs/METHODS.md §9.3): a flow model generates the chroma of a gray
/// image while it sees the image's lightness and what the retrieved references say about its
/// colours, so it can follow the references where they fit and fall back on what it learned
/// where they do not.
///
/// The model is a UNet2DModel with `conditionChannels + 2` input and 2 output channels, trained
/// by `gen train` on `gen dataset colorize` data (flow.json `"task": "colorize"`). Its sample is
/// the correction the retrieval colorization's chroma needs, x1 = s·((a, b) − (a, b)_retrieval)/100
/// (s: flow.json `norm_scale`), and each call sees, besides the state x_t, seven condition planes
/// at the working size (`condition(_:)`):
///
/// 1. L/50 − 1, the input's lightness;
/// 2–3. the retrieval colorization's a/50, b/50 (`Colorizer.evidence`);
/// 4. 2·m − 1, m the share of a pixel's retrieval chroma that came from matched patch pixels;
/// 5–6. the best retrieved patch of each query crop pasted over its crop, a/50 and b/50: the
///    references' own colours where they lie, not matched by luma;
/// 7. that canvas's L/50 − 1: where it equals plane 1 the patch fits pixel for pixel, and its
///    colours can be taken as they are. (Models made with planes 1–6 only still load.)
///
/// Sampling: x0 ~ N(0, I) drawn from `seed` (one draw per image size, so the frames of a
/// sequence share it), then `steps` Euler steps of v_θ([x_t; condition], t) from t = 0 to 1;
/// with `samples` > 1, as many draws (antithetic pairs ε, −ε) run as rows of the same calls and
/// are averaged.
/// The output is the input's own L at full resolution with the retrieval's a, b plus the
/// generated correction (upsampled from the working size), so L is kept exactly; out-of-gamut
/// colours lose chroma, not lightness.
public final class InContextColorizer {
    /// Condition planes the model takes after the 2 chroma channels (`gen dataset colorize` writes
    /// them all).
    public static let conditionChannels = 7
    /// Condition plane counts a model may take: the first models had no canvas L.
    public static let supportedConditionChannels = [6, 7]
    /// The flow.json task of colorization models.
    public static let task = "colorize"

    public let model: UNet2DModel
    public let flow: FlowConfig
    /// Condition planes this model takes (6 or 7).
    public let planes: Int
    /// Retrieval (always in retrieval mode) that makes the condition.
    public let colorizer: Colorizer
    /// Euler steps from noise to chroma.
    public var steps = 1
    /// Seed of the noise x0.
    public var seed: UInt64 = 0
    /// Noise draws per image, run as rows of the same model calls and averaged: with one step,
    /// each row is an estimate of E[x1 | condition] that still carries some of its draw, and the
    /// average carries less. Draws come in antithetic pairs (ε, −ε).
    public var samples = 2
    /// Taken around each model call when set (a service's model lock, so that calls of several
    /// requests take the cores in turn).
    public var callLock: FairLock?

    /// Whether a model folder holds an in-context colorization model.
    public static func isColorizationModel(config: UNetConfig, flow: FlowConfig) -> Bool {
        flow.task == task && config.outChannels == 2 && supportedConditionChannels.contains(config.inChannels - 2)
            && config.numClassEmbeds == nil
    }

    public init(model: UNet2DModel, flow: FlowConfig, pool: ReferencePool) throws {
        guard Self.isColorizationModel(config: model.config, flow: flow) else {
            throw ColorError.unsupportedModel("""
                not an in-context colorization model: it needs flow.json "task": "colorize", \(2 + Self.conditionChannels) \
                (or \(2 + Self.supportedConditionChannels[0])) input and 2 output channels and no classes; this one has task \(flow.task ?? "none"), \
                \(model.config.inChannels) → \(model.config.outChannels) channels
                """)
        }
        self.model = model
        self.flow = flow
        self.planes = model.config.inChannels - 2
        self.colorizer = Colorizer(pool: pool)
    }

    public convenience init(folder: ModelFolder, pool: ReferencePool) throws {
        try self.init(model: folder.model, flow: folder.flow, pool: pool)
    }

    /// The first `planes` condition planes of one image's evidence, planes×height×width.
    public static func condition(_ e: ChromaEvidence, planes: Int = conditionChannels) -> [Float] {
        let n = e.width * e.height
        var out = [Float](repeating: 0, count: planes * n)
        for p in 0..<n {
            out[p] = e.lightness[p] / 50 - 1
            out[n + p] = e.a[p] / 50
            out[2 * n + p] = e.b[p] / 50
            out[3 * n + p] = 2 * e.matched[p] - 1
            out[4 * n + p] = e.canvasA[p] / 50
            out[5 * n + p] = e.canvasB[p] / 50
            if planes > 6 { out[6 * n + p] = e.canvasL[p] / 50 - 1 }
        }
        return out
    }

    /// A colour image's chroma at the working size, s·(a, b)/100, 2×height×width (what
    /// `gen dataset colorize` stores; the model's sample is it less the retrieval's, `residual`).
    public static func target(_ colour: RGBImage, scale: Float) -> [Float] {
        let lab = colour.toLab(), n = colour.pixelCount
        return lab.planes[n...].map { $0 * scale / 100 }
    }

    /// Colorizes one gray image; `reusing` skips retrieval (frames of a sequence).
    public func colorize(gray: RGBImage, reusing: [RetrievedPatch]? = nil) throws -> (image: RGBImage, references: [RetrievedPatch]) {
        let e = try colorizer.evidence(gray: gray, reusing: reusing)
        return (try colorize(gray: [gray], evidence: [e])[0], e.references)
    }

    /// Colorizes gray images from their evidence (one model call per step for all images of one
    /// working size).
    public func colorize(gray: [RGBImage], evidence: [ChromaEvidence]) throws -> [RGBImage] {
        guard gray.count == evidence.count else { throw ColorError.invalidInput("\(gray.count) images but \(evidence.count) evidence maps") }
        let chroma = sample(evidence)
        return gray.indices.map { i in
            let e = evidence[i], n = e.width * e.height
            return Colorizer.compose(gray: Colorizer.grayscale(gray[i]), a: Array(chroma[i][0..<n]), b: Array(chroma[i][n...]),
                                     width: e.width, height: e.height)
        }
    }

    /// The sample of chroma planes (a, b)/100 [count, 2, S, S] given their condition planes
    /// [count, C, S, S] (C planes each): the correction to the retrieval's chroma (planes 2–3 of
    /// the condition are its a/50, b/50).
    public static func residual(chroma: [Float], condition: [Float], plane: Int) -> [Float] {
        let count = chroma.count / (2 * plane)
        let conditionChannels = condition.count / max(1, count * plane)
        precondition(conditionChannels >= 3 && condition.count == count * conditionChannels * plane, "one condition per sample")
        var out = chroma
        for i in 0..<count {
            for k in 0..<2 {
                for p in 0..<plane { out[(i * 2 + k) * plane + p] -= condition[(i * conditionChannels + 1 + k) * plane + p] / 2 }
            }
        }
        return out
    }

    /// The generated a, b (Lab units, 2×height×width) for each evidence map: the retrieval's plus
    /// the model's correction. Maps of the same size share model calls.
    public func sample(_ evidence: [ChromaEvidence]) -> [[Float]] {
        var out = [[Float]](repeating: [], count: evidence.count)
        var bySize: [[Int]: [Int]] = [:]
        for (i, e) in evidence.enumerated() { bySize[[e.width, e.height], default: []].append(i) }
        for (_, members) in bySize.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            let generated = sampleSameSize(members.map { evidence[$0] })
            for (k, i) in members.enumerated() { out[i] = generated[k] }
        }
        return out
    }

    /// The downsampling factor of the model: its input must be a multiple of it on each side.
    var multiple: Int { 1 << max(0, model.config.blockOutChannels.count - 1) }

    private func sampleSameSize(_ evidence: [ChromaEvidence]) -> [[Float]] {
        let w = evidence[0].width, h = evidence[0].height, count = evidence.count
        let m = multiple
        let W = (w + m - 1) / m * m, H = (h + m - 1) / m * m
        let c = planes, plane = W * H
        // Conditions padded to a multiple of the model's downsampling by repeating the edge.
        var cond = [Float](repeating: 0, count: count * c * plane)
        for (i, e) in evidence.enumerated() {
            let values = Self.condition(e, planes: c)
            for k in 0..<c {
                for y in 0..<H {
                    let sy = min(y, h - 1)
                    for x in 0..<W {
                        cond[(i * c + k) * plane + y * W + x] = values[k * w * h + sy * w + min(x, w - 1)]
                    }
                }
            }
        }
        // `samples` noise draws per image (the same draws for every image of this size and
        // seed), each a row of the same model calls; their results are averaged.
        // Antithetic: draw d and draw d + 1 are ±one Gaussian draw, so that whatever part of
        // the result is linear in the noise cancels in their mean.
        let r = max(1, samples), rows = count * r
        let noise = GaussianSource.draw(count: (r + 1) / 2, shape: [2, H, W], seed: seed).data
        var x = [Float](repeating: 0, count: rows * 2 * plane)
        for i in 0..<count {
            for d in 0..<r {
                let src = noise[((d / 2) * 2 * plane)..<((d / 2 + 1) * 2 * plane)]
                x.replaceSubrange(((i * r + d) * 2 * plane)..<((i * r + d + 1) * 2 * plane), with: d % 2 == 0 ? Array(src) : src.map { -$0 })
            }
        }
        let scale = Float(flow.timestepScale)
        for k in 0..<max(1, steps) {
            let t = Float(k) / Float(max(1, steps)), dt = 1 / Float(max(1, steps))
            var input = [Float](repeating: 0, count: rows * (2 + c) * plane)
            for row in 0..<rows {
                let i = row / r, base = row * (2 + c) * plane
                input.replaceSubrange(base..<(base + 2 * plane), with: x[(row * 2 * plane)..<((row + 1) * 2 * plane)])
                input.replaceSubrange((base + 2 * plane)..<(base + (2 + c) * plane), with: cond[(i * c * plane)..<((i + 1) * c * plane)])
            }
            let call = { self.model.forward(Tensor(shape: [rows, 2 + c, H, W], data: input), timesteps: [t * scale]) }
            let v = callLock?.withLock(call) ?? call()
            for j in 0..<x.count { x[j] += dt * v.data[j] }
        }
        if r > 1 {
            var mean = [Float](repeating: 0, count: count * 2 * plane)
            for row in 0..<rows {
                let i = row / r
                for j in 0..<(2 * plane) { mean[i * 2 * plane + j] += x[row * 2 * plane + j] / Float(r) }
            }
            x = mean
        }
        let s = 100 / Float(flow.normScale)
        return (0..<count).map { i in
            let e = evidence[i]
            var ab = [Float](repeating: 0, count: 2 * w * h)
            for k in 0..<2 { for y in 0..<h { for xx in 0..<w {
                let base = k == 0 ? e.a[y * w + xx] : e.b[y * w + xx]
                ab[k * w * h + y * w + xx] = base + s * x[(i * 2 + k) * plane + y * W + xx]
            } } }
            return ab
        }
    }
}
