import Foundation
import MillraceCore
import MillraceImaging

/// The tests' seeded generator is Millrace's own (one random generator in the project).
public typealias TestRNG = SplitMix64

extension SplitMix64 {
    /// `n` uniform floats in [−scale, scale].
    public mutating func floats(_ n: Int, scale: Float = 1) -> [Float] {
        (0..<n).map { _ in Float.random(in: -scale...scale, using: &self) }
    }

    /// Uniform in [−1, 1) from 24 random bits.
    public mutating func symmetric() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }

    /// `n` values `offset + scale·u`, u uniform in [−1, 1).
    public mutating func array(_ n: Int, scale: Float = 1, offset: Float = 0) -> [Float] {
        (0..<n).map { _ in offset + scale * symmetric() }
    }
}

/// Largest absolute difference, relative to the reference's magnitude: |a - b| / (1 + max|b|).
public func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    var worst: Float = 0, scale: Float = 0
    for i in 0..<a.count {
        worst = max(worst, abs(a[i] - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return worst / (1 + scale)
}

/// Process-wide kernel settings (the OpenBLAS thread count, the convolution tile budget) decide
/// how work is split, and so the rounding of sums. Tests that change them, and tests that need
/// bit-identical results across two runs, hold this lock, so suites running in parallel cannot
/// change the settings under them.
public enum GlobalKernelSettings {
    static let lock = NSLock()
    public static func exclusive<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }
}

/// Fixtures and scratch space shared by the test targets.
public enum Fixtures {
    /// A folder of Tests/MillraceTestSupport/Fixtures: folders written by diffusers'
    /// `UNet2DModel.save_pretrained` (tools/make_diffusers_fixtures.py).
    public static func path(_ name: String) -> String {
        Bundle.module.path(forResource: name, ofType: nil, inDirectory: "Fixtures")!
    }

    /// The repository root (where assets/ is), from this source file's location.
    public static var repositoryRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    /// An executable product built with the tests (`gen`, `fuzz-safetensors`, ...): found beside
    /// the test bundle in the build folder.
    public static func builtExecutable(_ name: String) -> String {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        for _ in 0..<3 {  // the test bundle may sit inside a .xctest directory
            let candidate = dir.appendingPathComponent(name).path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return exe.deletingLastPathComponent().appendingPathComponent(name).path
    }

    /// A path under this process's scratch folder in the system's temporary directory.
    public static func tempPath(_ name: String) -> String {
        (scratch as NSString).appendingPathComponent(name)
    }

    /// This process's scratch folder, made empty on first use (a folder of an earlier process
    /// with the same pid may be there) and removed when the process exits.
    public static let scratch: String = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("millrace-tests-\(getpid())").path
        try? FileManager.default.removeItem(atPath: dir)
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: Fixtures.scratch) }
        return dir
    }()

    /// A tiny class-conditional UNet (8×8, 3 classes, attention at the 4×4 level).
    public static func tinyUNetConfig() -> UNetConfig {
        var c = UNetConfig()
        c.sampleSize = 8
        c.blockOutChannels = [8, 16]
        c.layersPerBlock = 1
        c.downBlockTypes = [.down, .attnDown]
        c.upBlockTypes = [.attnUp, .up]
        c.normNumGroups = 4
        c.attentionHeadDim = 8
        c.numClassEmbeds = 3
        return c
    }

    /// A sampler on a random tiny UNet with classes "a" and "b" and null class 2.
    public static func tinySampler(seed: UInt64 = 3) -> FlowSampler {
        let model = UNet2DModel(config: tinyUNetConfig(), seed: seed)
        var flow = FlowConfig()
        flow.classNames = ["a", "b"]
        flow.nullClass = 2
        return FlowSampler(model: model, flow: flow)
    }

    /// A sampler on a random tiny restyle model (flow.json task "restyle": 6 input channels, the
    /// state and the frame; 3 output channels) with classes "a" and "b" and null class 2.
    public static func tinyRestyleSampler(seed: UInt64 = 4) -> FlowSampler {
        var c = tinyUNetConfig()
        c.inChannels = 6
        var flow = FlowConfig()
        flow.classNames = ["a", "b"]
        flow.nullClass = 2
        flow.task = "restyle"
        return FlowSampler(model: UNet2DModel(config: c, seed: seed), flow: flow)
    }

    /// A random tiny in-context colorization model folder (8 input channels: the chroma state and
    /// six condition planes; 2 output channels; flow.json task "colorize", norm scale 2) in a
    /// temporary folder; returns its path.
    /// `planes`: condition planes (7; 6 for a model made before the canvas's L was one).
    public static func tinyColorizationModel(seed: UInt64 = 5, planes: Int = 7) throws -> String {
        var c = tinyUNetConfig()
        c.numClassEmbeds = nil
        c.inChannels = 2 + planes
        c.outChannels = 2
        var flow = FlowConfig()
        flow.task = "colorize"
        flow.normScale = 2
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("millrace-color-\(UUID().uuidString)").path
        try ModelFolder.write(model: UNet2DModel(config: c, seed: seed), flow: flow, to: dir)
        return dir
    }

    /// A W×H image: `fill` background with a disc, a bar or stripes of `ink` (kind 0, 1, 2).
    public static func picture(_ w: Int, _ h: Int, kind: Int, ink: (Float, Float, Float), fill: (Float, Float, Float) = (1, 1, 1)) -> RGBImage {
        var img = RGBImage(width: w, height: h, fill: fill)
        let n = w * h
        for y in 0..<h {
            for x in 0..<w {
                let fx = Float(x) / Float(w), fy = Float(y) / Float(h)
                let on: Bool
                switch kind {
                case 0: on = (fx - 0.5) * (fx - 0.5) + (fy - 0.5) * (fy - 0.5) < 0.09
                case 1: on = fx > 0.15 && fx < 0.4
                default: on = (y / max(1, h / 6)) % 2 == 0
                }
                if on {
                    img.planes[y * w + x] = ink.0; img.planes[n + y * w + x] = ink.1; img.planes[2 * n + y * w + x] = ink.2
                }
            }
        }
        return img
    }

    /// A temporary reference pool of three colour images (red disc, blue bar, green stripes);
    /// `empty`: the folder without files.
    public static func referencePool(empty: Bool = false) throws -> String {
        let dir = tempPath("pool-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if !empty {
            try picture(48, 48, kind: 0, ink: (0.9, 0.1, 0.1)).writePNG(path: dir + "/red-disc.png")
            try picture(48, 48, kind: 1, ink: (0.1, 0.2, 0.9)).writePNG(path: dir + "/blue-bar.png")
            try picture(48, 48, kind: 2, ink: (0.1, 0.7, 0.2)).writePNG(path: dir + "/green-stripes.png")
        }
        return dir
    }
}

/// A test's own failure, thrown where a helper cannot go on.
public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
