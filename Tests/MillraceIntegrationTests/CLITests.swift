import Foundation
import Testing
@testable import MillraceFormats
@testable import MillraceCore
import MillraceTraining
import MillraceImaging
import MillracePipelines
import MillraceTestSupport

/// The `gen` command line as a user runs it: `swift test` builds it next to the test bundle.
@Suite(.serialized) struct CLITests {
    /// A latent-space model (4 channels in and out) gets a clear error, not a trap, and with
    /// --save-latents it runs and writes its latents (there is no decoder to make a picture).
    @Test func aLatentModelWritesLatentsOrGetsAClearError() throws {
        var config = Fixtures.tinyUNetConfig()
        config.inChannels = 4
        config.outChannels = 4
        var flow = FlowConfig()
        flow.classNames = ["a", "b"]
        flow.nullClass = 2
        let dir = Fixtures.tempPath("latent-model-\(UUID().uuidString)")
        try ModelFolder.write(model: UNet2DModel(config: config, seed: 1), flow: flow, to: dir)
        let png = Fixtures.tempPath("latent-\(UUID().uuidString).png"), latents = png + ".safetensors"

        let (status, _, err) = try GenCLI.run(["--steps", "2", "--model", dir, "--out", png])
        #expect(status == 1 && err.contains("4 channels") && err.contains("--save-latents"), "\(err)")
        #expect(!err.contains("Fatal error") && !FileManager.default.fileExists(atPath: png))

        let (ok, out, err2) = try GenCLI.run(["--steps", "2", "--model", dir, "--class", "a", "--count", "3", "--out", png, "--save-latents", latents])
        #expect(ok == 0, "\(err2)")
        #expect(out.contains("no picture"), "\(out)")
        #expect(try SafetensorsFile.read(path: latents).tensors["latents"]?.shape == [3, 4, 8, 8])
        #expect(!FileManager.default.fileExists(atPath: png))
    }

    @Test func genIsBuiltWithTheTests() {
        #expect(FileManager.default.isExecutableFile(atPath: GenCLI.binary), "no gen at \(GenCLI.binary)")
    }

    @Test func latentsRunsReproduceBitForBit() throws {
        let dir = Fixtures.tempPath("cli-latents")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // Two source samples for class 0 and --count 2.
        let latents = GaussianSource.draw(count: 2, shape: [3, 32, 32], seed: 77)
        try SafetensorsFile(tensors: ["latents": latents]).write(path: dir + "/in.safetensors")
        var outputs: [Data] = [], saved: [Data] = []
        for k in 0..<2 {
            let (status, _, err) = try GenCLI.run(["--steps", "2", "--class", "0", "--count", "2", "--threads", "1",
                                                    "--latents", dir + "/in.safetensors", "--out", dir + "/out\(k).png",
                                                    "--save-latents", dir + "/final\(k).safetensors"])
            #expect(status == 0, "gen failed: \(err)")
            outputs.append(try Data(contentsOf: URL(fileURLWithPath: dir + "/out\(k).png")))
            saved.append(try Data(contentsOf: URL(fileURLWithPath: dir + "/final\(k).safetensors")))
        }
        #expect(outputs[0] == outputs[1])
        #expect(saved[0] == saved[1])
        let final = try #require(try SafetensorsFile.read(path: dir + "/final0.safetensors").tensors["latents"])
        #expect(final.shape == [2, 3, 32, 32])
        // A latents file of the wrong shape is refused with a message naming the expected shape.
        try SafetensorsFile(tensors: ["latents": GaussianSource.draw(count: 1, shape: [3, 8, 8], seed: 1)]).write(path: dir + "/bad.safetensors")
        let (status, _, err) = try GenCLI.run(["--steps", "2", "--class", "0", "--count", "2", "--latents", dir + "/bad.safetensors",
                                               "--out", dir + "/never.png"])
        #expect(status != 0)
        #expect(err.contains("expected"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/never.png"))
    }

    /// The shipped model carries its pruning set, so `--source pruned` works on a fresh clone,
    /// reproducibly, and gives other images than the Gaussian source from the same seed.
    @Test func prunedSourceWorksWithTheShippedModel() throws {
        let dir = Fixtures.tempPath("cli-pruned")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var images: [Data] = []
        for (k, source) in ["pruned", "pruned", "gaussian"].enumerated() {
            let (status, _, err) = try GenCLI.run(["--steps", "2", "--schedule", "boss", "--source", source, "--class", "2",
                                                    "--count", "2", "--seed", "9", "--out", dir + "/\(k).png"])
            #expect(status == 0, "gen --source \(source) failed: \(err)")
            images.append(try Data(contentsOf: URL(fileURLWithPath: dir + "/\(k).png")))
        }
        #expect(images[0] == images[1], "the same seed gives the same pruned samples")
        #expect(images[0] != images[2], "pruned and Gaussian sources differ")
    }

    /// `OUT` in the arguments stands for a fresh path in the test's own temporary folder, `MODEL`
    /// for a small model folder (without a pruning set).
    @Test(arguments: [
        (["--steps", "0", "--out", "OUT.png"], "steps"),
        (["--steps", "2", "--class", "Dinosaurs", "--out", "OUT.png"], "Dinosaurs"),
        (["--steps", "2", "--class", "42", "--out", "OUT.png"], "42"),
        (["schedule", "boss", "--nfe", "0"], "nfe"),
        (["straighten", "--nfe", "0", "--out", "OUT"], "nfe"),
        (["straighten", "--out", "OUT"], "--from-data"),
        (["straighten", "--nfe", "2", "--from-data", "x.mrds", "--out", "OUT"], "exclude"),
        (["straighten", "--from-data", "x.mrds", "--start-times", "0.5,1", "--out", "OUT"], "start-times"),
        (["dataset", "scenes", "--out", "OUT", "--count", "10", "--held-out", "11"], "held-out"),
        (["dataset", "restyle", "--out", "OUT", "--count", "200000", "--size", "256"], "memory"),
        (["dataset", "restyle", "--out", "OUT", "--palette-classifier", "assets/models/scene-classifier"], "--palette K"),
        (["dataset", "restyle", "--out", "OUT", "--fit-inside", "1.5"], "--fit-inside"),
        (["dataset", "restyle", "--out", "OUT", "--palette", "3", "--palette-pool", "5"], "--palette-classifier"),
        (["dataset", "restyle", "--out", "OUT", "--palette", "3", "--palette-pool", "2", "--palette-classifier", "x"], "at least"),
        (["dataset", "restyle", "--out", "OUT", "--palette", "3", "--palette-blur", "1.5"], "--palette-blur needs --palette-classifier"),
        (["dataset", "restyle", "--out", "OUT", "--palette", "3", "--palette-classifier", "x", "--palette-blur", "0.1"], "[0.5, 8]"),
        (["dataset", "restyle", "--out", "OUT", "--palette", "3", "--palette-classifier", "x", "--palette-blur-groups", "Flags"], "needs --palette-blur"),
        (["dataset", "restyle", "--out", "OUT", "--palette-one", "Flags"], "--palette-one needs --palette K"),
        (["clips", "--scene", "fox", "--out", "OUT", "--scene-frames", "100000"], "between 1 and 2000"),
        (["clips", "--data", "x.mrds", "--frames", "0"], "--frames"),
        (["clips", "--scene", "fox", "--out", "OUT", "--scene-frames", "2000", "--scene-size", "512"], "memory"),
        (["straighten", "--from-data", "x.mrds", "--out", "OUT", "--objective", "paint"], "'chords'"),
        (["straighten", "--from-data", "x.mrds", "--out", "OUT", "--objective", "consistency", "--rounds", "0"], "rounds"),
        (["train", "--data", "x.safetensors", "--out", "OUT", "--hue-rotation", "2"], "hue-rotation"),
        (["stream", "--input", "OUT", "--out", "OUT", "--stepping", "rk4"], "'euler'"),
        (["stream", "--input", "OUT", "--out", "OUT", "--blend", "1"], "blend"),
        (["stream", "--input", "OUT", "--out", "OUT", "--structure", "2"], "structure"),
        (["stream", "--input", "OUT", "--out", "OUT", "--structure-sigma", "0"], "structure σ"),
        (["stream", "--input", "OUT", "--out", "OUT", "--structure-floor", "1"], "structure floor"),
        (["eval", "table", "--nfe", "2,x"], "nfe"),
        (["train", "--data", "x.mrds", "--out", "OUT", "--min-lr", "1e-5"], "--decay cosine"),
        (["train", "--data", "x.mrds", "--out", "OUT", "--decay", "linear"], "decay"),
        (["colorize", "x.png", "--out", "OUT.png", "--no-retrieval", "--method", "retrieval"], "--no-retrieval"),
        (["colorize", "x.png", "--out", "OUT.png", "--method", "paint"], "'in-context'"),
        (["colorize", "x.png", "--out", "OUT.png", "--color-steps", "0"], "color-steps"),
        (["colorize", "x.png", "--out", "OUT.png", "--method", "in-context", "--color-model", "MODEL"], "not an in-context colorization model"),
        (["dataset", "colorize", "--emoji", "x.mrds", "--out", "OUT", "--scenes", "-1"], "scenes"),
        // Typed options list their values; missing files come with the command that makes them.
        (["--steps", "2", "--solver", "rk4", "--out", "OUT.png"], "'euler'"),
        (["stream", "--input", "OUT", "--out", "OUT", "--rcfg", "x"], "'onetime'"),
        (["train", "--data", "OUT.mrds", "--out", "OUT"], "make it with: gen dataset emoji --out"),
        (["--steps", "2", "--source", "pruned", "--model", "MODEL", "--out", "OUT.png"], "make it with: gen prune-axes --data data/emoji32.mrds --model"),
    ])
    func badFlagValuesGetClearErrors(args: [String], mention: String) throws {
        let out = Fixtures.tempPath("cli-never")
        let (status, _, err) = try GenCLI.run(args.map {
            $0.replacingOccurrences(of: "OUT", with: out).replacingOccurrences(of: "MODEL", with: Fixtures.path("unet-tiny-a"))
        })
        #expect(status != 0)
        #expect(err.lowercased().contains(mention.lowercased()), "stderr: \(err)")
        #expect(!FileManager.default.fileExists(atPath: out + ".png") && !FileManager.default.fileExists(atPath: out))
    }

    /// The in-context colorization model as a user makes and uses it: `gen dataset colorize` on an
    /// emoji dataset (a small one made here), `gen train` on the file, `gen colorize` with the
    /// model; and the model is refused as an image generator.
    @Test func colorizationDataTrainsAModelThatColorizes() throws {
        let dir = Fixtures.tempPath("cli-colorize")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let pictures = (0..<6).map { k in
            Fixtures.picture(16, 16, kind: k % 3, ink: k % 2 == 0 ? (0.9, 0.2, 0.1) : (0.1, 0.3, 0.9))
        }
        let pixels = pictures.flatMap { $0.planes.map { UInt8(max(0, min(255, ($0 * 255).rounded()))) } }
        let ds = ImageDataset(size: 16, classNames: ["a"], labels: [UInt8](repeating: 0, count: 6), split: [0, 0, 0, 0, 0, 1],
                              pixels: pixels, items: (0..<6).map { DatasetItem(codepoints: "1F600", name: "p\($0)", subgroup: "s") })
        try ds.write(path: dir + "/tiny.mrds")
        let pool = try Fixtures.referencePool()
        defer { try? FileManager.default.removeItem(atPath: pool) }
        let (s1, out1, err1) = try GenCLI.run(["dataset", "colorize", "--emoji", dir + "/tiny.mrds", "--scenes", "0", "--cartoons", "3", "--refs", pool,
                                               "--out", dir + "/color.safetensors"])
        #expect(s1 == 0, "stderr: \(err1)")
        #expect(out1.contains("8 examples of 16×16 (5 train emoji") && out1.contains("3 cartoon drawings"), "\(out1)")
        let (s2, _, err2) = try GenCLI.run(["train", "--data", dir + "/color.safetensors", "--out", dir + "/model", "--steps", "2",
                                            "--batch", "2", "--channels", "8,16", "--groups", "4", "--head-dim", "8", "--threads", "1",
                                            "--emoji-share", "0.5", "--t-zero-share", "0.5"])
        #expect(s2 == 0, "stderr: \(err2)")
        let folder = try ModelFolder.load(dir + "/model")
        // The chroma state and seven condition planes.
        #expect(folder.flow.task == "colorize" && folder.config.inChannels == 9 && folder.config.outChannels == 2 && folder.flow.normScale == 2)
        // --emoji-share is for colorization sets, and in (0, 1).
        for bad in [["--data", dir + "/tiny.mrds", "--emoji-share", "0.5"], ["--data", dir + "/color.safetensors", "--emoji-share", "1"]] {
            let (s, _, err) = try GenCLI.run(["train"] + bad + ["--out", dir + "/bad", "--steps", "1"])
            #expect(s != 0 && err.contains("--emoji-share"), "stderr: \(err)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/bad"))
        }
        try writeGrayPNG(pictures[5], path: dir + "/gray.png")
        let (s3, _, err3) = try GenCLI.run(["colorize", dir + "/gray.png", "--out", dir + "/out.png", "--refs", pool,
                                            "--color-model", dir + "/model", "--color-steps", "2"])
        #expect(s3 == 0 && err3.contains("method: in-context"), "stderr: \(err3)")
        #expect(FileManager.default.fileExists(atPath: dir + "/out.png"))
        let (s4, _, err4) = try GenCLI.run(["--steps", "2", "--model", dir + "/model", "--out", dir + "/gen.png"])
        #expect(s4 != 0 && err4.contains("colorize"), "stderr: \(err4)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/gen.png"))
    }

    /// The restyle model as a user makes and uses it: `gen dataset restyle` (pairs of scenes),
    /// `gen train` on the file (widening a plain model's conv_in with --init-from), `gen stream`
    /// with the model, whose defaults are two Euler slots from noise with full guidance and
    /// structure guidance; and the model is refused as an image generator.
    @Test func restylePairsTrainAModelThatStreams() throws {
        let dir = Fixtures.tempPath("cli-restyle")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/frames", withIntermediateDirectories: true)
        let (s1, out1, err1) = try GenCLI.run(["dataset", "restyle", "--out", dir + "/pairs.safetensors", "--count", "12", "--size", "16"])
        #expect(s1 == 0, "stderr: \(err1)")
        #expect(out1.contains("12 pairs of 16×16"), "\(out1)")
        // A palette of the shipped scene classifier's two most typical emoji per group.
        let (s0, out0, err0) = try GenCLI.run(["dataset", "restyle", "--out", dir + "/typical.safetensors", "--count", "4", "--size", "16",
                                               "--palette", "2", "--palette-classifier", Fixtures.repositoryRoot + "/assets/models/scene-classifier",
                                               "--palette-blur", "1.5", "--palette-blur-groups", "flags, Objects",
                                               "--palette-one", "Flags, Symbols=keycap: 7"])
        #expect(s0 == 0 && out0.components(separatedBy: "palette: ").count == 10, "stdout: \(out0), stderr: \(err0)")
        #expect(out0.components(separatedBy: "classifier agreement on the outputs").count == 10, "\(out0)")
        let typical = try SafetensorsFile.read(path: dir + "/typical.safetensors").metadata
        #expect(typical["palette"] == "2" && typical["palette_classifier"] != nil && typical["palette_blur"] == "1.5")
        #expect(typical["palette_blur_groups"] == "flags, Objects")
        // One emoji for Flags (its most typical) and the one named for Symbols; the others keep 2.
        let drawn = out0.split(separator: "\n").filter { $0.contains("palette: ") }
        #expect(drawn.first { $0.contains("Symbols") }?.hasSuffix("palette: keycap: 7") == true, "\(out0)")
        #expect(drawn.first { $0.contains("Flags") }.map { !$0.contains(", ") } == true, "\(out0)")
        #expect(drawn.first { $0.contains("Food & Drink") }.map { $0.contains(", ") } == true, "\(out0)")
        #expect(typical["palette_one"] == "Flags, Symbols=keycap: 7")
        // An emoji of another group is refused by name, and nothing is written.
        let (sOne, _, errOne) = try GenCLI.run(["dataset", "restyle", "--out", dir + "/bad.safetensors", "--count", "4", "--size", "16",
                                                "--palette", "2", "--palette-one", "Symbols=🐼"])
        #expect(sOne != 0 && errOne.contains("panda is in Animals & Nature, not Symbols"), "stderr: \(errOne)")
        // A held-out emoji (the panda) stays out of training.
        let (sHeld, _, errHeld) = try GenCLI.run(["dataset", "restyle", "--out", dir + "/bad.safetensors", "--count", "4", "--size", "16",
                                                  "--palette", "2", "--palette-one", "Animals & Nature=panda"])
        #expect(sHeld != 0 && errHeld.contains("panda is a held-out emoji"), "stderr: \(errHeld)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/bad.safetensors"))
        // An unknown group is named, and nothing is written.
        let (s9, _, err9) = try GenCLI.run(["dataset", "restyle", "--out", dir + "/bad.safetensors", "--count", "4", "--size", "16",
                                            "--palette", "2", "--palette-classifier", Fixtures.repositoryRoot + "/assets/models/scene-classifier",
                                            "--palette-blur", "1.5", "--palette-blur-groups", "Flags,Vehicles"])
        #expect(s9 != 0 && err9.contains("no group named 'Vehicles'"), "stderr: \(err9)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/bad.safetensors"))
        let shape = ["--batch", "2", "--channels", "8,16", "--groups", "4", "--head-dim", "8", "--threads", "1"]
        // A plain 9-class model of the same shape, as the composition model is for the real one.
        let ds = ImageDataset(size: 16, classNames: (0..<9).map { "g\($0)" }, labels: (0..<9).map(UInt8.init), split: [UInt8](repeating: 0, count: 9),
                              pixels: [UInt8](repeating: 200, count: 9 * 3 * 256), items: (0..<9).map { DatasetItem(codepoints: "1F600", name: "p\($0)", subgroup: "s") })
        try ds.write(path: dir + "/plain.mrds")
        let (s2, _, err2) = try GenCLI.run(["train", "--data", dir + "/plain.mrds", "--out", dir + "/plain", "--steps", "1"] + shape)
        #expect(s2 == 0, "stderr: \(err2)")
        let (s3, _, err3) = try GenCLI.run(["train", "--data", dir + "/pairs.safetensors", "--out", dir + "/model", "--steps", "2",
                                            "--init-from", dir + "/plain"] + shape)
        #expect(s3 == 0 && err3.contains("initialised from"), "stderr: \(err3)")
        let folder = try ModelFolder.load(dir + "/model")
        #expect(folder.flow.task == "restyle" && folder.config.inChannels == 6 && folder.config.outChannels == 3)
        #expect(folder.flow.classNames.count == 9 && folder.flow.nullClass == 9)
        for k in 0..<4 {
            try Fixtures.picture(24, 24, kind: k % 3, ink: (0.9, 0.5, 0.1), fill: (0.8, 0.9, 1)).writePNG(path: dir + "/frames/f\(k).png")
        }
        let (s4, out4, err4) = try GenCLI.run(["stream", "--input", dir + "/frames", "--out", dir + "/out", "--model", dir + "/model",
                                               "--class", "2", "--no-filter", "--classifier", "none"])
        #expect(s4 == 0, "stderr: \(err4)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(out4.utf8)) as? [String: Any])
        let slots = try #require(summary["slots"] as? [Double])
        #expect(summary["processed"] as? Int == 4 && slots.count == StreamPipeline.restyleSteps && slots[0] == 0)
        #expect(summary["stepping"] as? String == "euler" && summary["guidance"] as? String == "full")
        #expect(abs((summary["structure"] as? Double ?? 0) - Double(StreamPipeline.restyleStructure)) < 1e-6)
        #expect(summary["luma_correlation"] is Double && FileManager.default.fileExists(atPath: dir + "/out/f3.png"))
        let (s5, _, err5) = try GenCLI.run(["--steps", "2", "--model", dir + "/model", "--out", dir + "/gen.png"])
        #expect(s5 != 0 && err5.contains("restyle"), "stderr: \(err5)")
        // Its one-step student: the teacher's guided run from noise in one jump; streams on it
        // take one slot.
        let (s6, _, err6) = try GenCLI.run(["straighten", "--model", dir + "/model", "--from-data", dir + "/pairs.safetensors",
                                            "--out", dir + "/student", "--samples", "4", "--teacher-steps", "2", "--guidance", "2",
                                            "--steps", "2", "--batch", "2", "--threads", "1"])
        #expect(s6 == 0, "stderr: \(err6)")
        let student = try ModelFolder.load(dir + "/student")
        #expect(student.flow.task == "restyle" && student.flow.distilledGuidance == 2 && student.flow.defaultGuidance == 1)
        // The set has its emoji's coverage, which --keep-background takes; a set without it, or
        // an image dataset, is refused with the reason and nothing is written.
        let pairsFile = try SafetensorsFile.read(path: dir + "/pairs.safetensors")
        let coverage = try #require(pairsFile.tensors["coverage"])
        #expect(coverage.shape == [pairsFile.tensors["labels"]!.shape[0], 1, 16, 16] && coverage.data.allSatisfy { $0 >= 0 && $0 <= 1 })
        #expect(coverage.data.contains { $0 > 0.5 } && coverage.data.contains { $0 == 0 })
        let keep = ["--samples", "4", "--teacher-steps", "2", "--guidance", "2", "--steps", "2", "--batch", "2", "--threads", "1", "--keep-background"]
        let (sKeep, _, errKeep) = try GenCLI.run(["straighten", "--model", dir + "/model", "--from-data", dir + "/pairs.safetensors",
                                                  "--out", dir + "/student-kb"] + keep)
        #expect(sKeep == 0, "stderr: \(errKeep)")
        #expect(try SafetensorsFile.read(path: dir + "/student-kb/model.safetensors").metadata["restyle"]?.contains("inside the emoji") == true)
        var bare = pairsFile
        bare.tensors["coverage"] = nil
        try bare.write(path: dir + "/bare.safetensors", dtype: .f16)
        let (sBare, _, errBare) = try GenCLI.run(["straighten", "--model", dir + "/model", "--from-data", dir + "/bare.safetensors",
                                                  "--out", dir + "/never"] + keep)
        #expect(sBare != 0 && errBare.contains("no coverage"), "stderr: \(errBare)")
        let (sImages, _, errImages) = try GenCLI.run(["straighten", "--model", dir + "/plain", "--from-data", dir + "/plain.mrds",
                                                      "--out", dir + "/never"] + keep)
        #expect(sImages != 0 && errImages.contains("needs a restyle set"), "stderr: \(errImages)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/never"))
        let (s7, out7, err7) = try GenCLI.run(["stream", "--input", dir + "/frames", "--out", dir + "/out1", "--model", dir + "/student",
                                               "--class", "2", "--no-filter", "--classifier", Fixtures.repositoryRoot + "/assets/models/scene-classifier"])
        #expect(s7 == 0, "stderr: \(err7)")
        let summary1 = try #require(try JSONSerialization.jsonObject(with: Data(out7.utf8)) as? [String: Any])
        #expect((summary1["slots"] as? [Double]) == [0] && summary1["processed"] as? Int == 4)
        #expect(summary1["guidance"] as? String == "none")
        // The classifier's reading of every processed output, by group: its share of --class is
        // the agreement.
        let votes = try #require(summary1["classifier_votes"] as? [String: Int], "\(summary1)")
        #expect(votes.values.reduce(0, +) == 4 && votes.keys.allSatisfy(student.flow.classNames.contains), "\(votes)")
        let agreement = try #require(summary1["classifier_agreement"] as? Double)
        #expect(abs(agreement - Double(votes[student.flow.classNames[2]] ?? 0) / 4) < 1e-9, "\(summary1)")
        #expect(abs((summary1["structure"] as? Double ?? 0) - Double(StreamPipeline.restyleStudentStructure)) < 1e-6)
        #expect(abs((summary1["structure_floor"] as? Double ?? 0) - Double(StreamPipeline.restyleStructureFloor)) < 1e-6)
        #expect(summary1["structure_target"] as? String == StreamPipeline.restyleStudentStructureTarget.rawValue, "\(summary1)")
        // A set whose labels are not classes (NaN, out of range) is refused with the reason.
        var broken = try SafetensorsFile.read(path: dir + "/pairs.safetensors")
        for bad: Float in [.nan, 9, -1, 1.5] {
            broken.tensors["labels"]!.data[0] = bad
            try broken.write(path: dir + "/broken.safetensors", dtype: .f32)
            let (s, _, err) = try GenCLI.run(["train", "--data", dir + "/broken.safetensors", "--out", dir + "/never", "--steps", "1"] + shape)
            #expect(s != 0 && err.contains("label"), "label \(bad): \(err)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/never"))
        }
        // A plain image model cannot learn from a restyle set.
        let (s8, _, err8) = try GenCLI.run(["straighten", "--model", dir + "/plain", "--from-data", dir + "/pairs.safetensors",
                                            "--out", dir + "/never", "--samples", "2", "--steps", "1"])
        #expect(s8 != 0 && err8.contains("not a restyle model"), "stderr: \(err8)")
    }

    /// `gen eval colorize` on a folder of colour images: every method's metrics in the JSON, and
    /// with --per-image one CSV row per image and method whose means are the JSON's.
    @Test func evalColorizeReportsEachImageAndTheirMeans() throws {
        let dir = Fixtures.tempPath("cli-eval-colorize")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/held", withIntermediateDirectories: true)
        for k in 0..<3 {
            try Fixtures.picture(16, 16, kind: k, ink: k == 1 ? (0.1, 0.3, 0.9) : (0.9, 0.2, 0.1)).writePNG(path: dir + "/held/\(k).png")
        }
        let pool = try Fixtures.referencePool()
        defer { try? FileManager.default.removeItem(atPath: pool) }
        let model = try Fixtures.tinyColorizationModel()
        defer { try? FileManager.default.removeItem(atPath: model) }
        let (status, out, err) = try GenCLI.run(["eval", "colorize", "--data", dir + "/held", "--refs", pool, "--color-model", model,
                                                 "--limit", "0", "--json", "--per-image", dir + "/each.csv"])
        #expect(status == 0, "stderr: \(err)")
        let report = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: [String: Double]] ?? [:]
        let methods = ["in_context", "retrieval", "no_retrieval", "reinhard", "gray"]
        #expect(Set(report.keys) == Set(methods), "\(report.keys)")
        let lines = try String(contentsOfFile: dir + "/each.csv", encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(lines.first == "set,index,method,psnr_rgb,psnr_ab,delta_e" && lines.count == 1 + 3 * methods.count)
        for m in methods {
            let rows = lines.dropFirst().map { $0.split(separator: ",").map(String.init) }.filter { $0[2] == m }
            #expect(rows.count == 3 && rows.allSatisfy { $0[0] == "images" })
            let meanAB = rows.compactMap { Double($0[4]) }.reduce(0, +) / 3
            #expect(abs(meanAB - (report[m]?["psnr_ab"] ?? -1)) < 1e-3, "\(m): \(meanAB) against \(report[m]?["psnr_ab"] ?? -1)")
        }
    }

    /// Writes the gray (luma) version of `image` as a PNG.
    func writeGrayPNG(_ image: RGBImage, path: String) throws {
        let y = image.luma()
        try RGBImage(width: image.width, height: image.height, planes: y + y + y).writePNG(path: path)
    }

    /// `gen dataset scenes` writes a dataset of scenes that `gen train` can read: the classes of
    /// the emoji dataset, the held-out scenes last.
    @Test func datasetScenesWritesAReadableDataset() throws {
        let out = Fixtures.tempPath("cli-scenes") + ".mrds"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let (status, stdout, err) = try GenCLI.run(["dataset", "scenes", "--out", out, "--count", "20", "--held-out", "2", "--size", "16"])
        #expect(status == 0, "stderr: \(err)")
        #expect(stdout.contains("20 scenes of 16×16, 18 train / 2 held out"))
        let ds = try ImageDataset.read(path: out)
        #expect(ds.count == 20 && ds.size == 16 && ds.classNames.count == 9 && ds.indices(split: 1) == [18, 19])
        // --one-group keeps each scene's class (drawn first) and changes the emoji drawn with it.
        let one = Fixtures.tempPath("cli-scenes-one") + ".mrds"
        defer { try? FileManager.default.removeItem(atPath: one) }
        let (s2, _, e2) = try GenCLI.run(["dataset", "scenes", "--out", one, "--count", "20", "--held-out", "2", "--size", "16", "--one-group"])
        #expect(s2 == 0, "stderr: \(e2)")
        let oneGroup = try ImageDataset.read(path: one)
        #expect(oneGroup.labels == ds.labels && oneGroup.pixels != ds.pixels)
    }

    /// `gen clips --scene` makes a clip of the emoji asked for: the frames asked for, at the
    /// side asked for, the same bytes for the same seed, moving; an unknown emoji is named in
    /// the error and nothing is written.
    @Test func clipsSceneMakesADeterministicMovingClip() throws {
        let dir = Fixtures.tempPath("cli-clips-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var runs: [[Data]] = []
        for k in 0..<2 {
            let (status, out, err) = try GenCLI.run(["clips", "--scene", "🐼 🚗 🍌", "--out", dir + "/\(k)", "--seed", "3",
                                                      "--scene-size", "64", "--scene-frames", "4"])
            #expect(status == 0, "stderr: \(err)")
            #expect(out.contains("wrote 4 frames to \(dir)/\(k)"), "\(out)")
            let names = try FileManager.default.contentsOfDirectory(atPath: dir + "/\(k)").sorted()
            #expect(names == (0..<4).map { String(format: "frame-%03d.png", $0) })
            runs.append(try names.map { try Data(contentsOf: URL(fileURLWithPath: dir + "/\(k)/" + $0)) })
        }
        #expect(runs[0] == runs[1], "the same seed gives the same frames")
        let first = try RGBImage.decode([UInt8](runs[0][0])), last = try RGBImage.decode([UInt8](runs[0][3]))
        #expect(first.width == 64 && first.height == 64)
        #expect(first.planes != last.planes, "the emoji move")

        let (status, _, err) = try GenCLI.run(["clips", "--scene", "fox, no such emoji", "--out", dir + "/bad",
                                               "--scene-size", "64", "--scene-frames", "2"])
        #expect(status != 0)
        #expect(err.contains("'no such emoji'"), "\(err)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/bad"))
    }

    @Test func costsFilesThatAreNotSquareOrNegativeAreRefused() throws {
        let dir = Fixtures.tempPath("cli-costs")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let cases = [
            ("notsquare", "[[0, 1, 2], [0, 0, 1]]"),
            ("negative", "[[0, 0, -1], [0, 0, 0], [0, 0, 0]]"),
            ("notjson", "[[0, 1"),
        ]
        for (name, text) in cases {
            try Data(text.utf8).write(to: URL(fileURLWithPath: "\(dir)/\(name).json"))
            let (status, out, err) = try GenCLI.run(["schedule", "boss", "--costs", "\(dir)/\(name).json", "--nfe", "1", "--json"])
            #expect(status != 0, "\(name): \(out)")
            #expect(err.contains("\(name).json"), "\(name): \(err)")
        }
        try Data("[[0, 0, 5], [0, 0, 0], [0, 0, 0]]".utf8).write(to: URL(fileURLWithPath: "\(dir)/ok.json"))
        let (status, out, _) = try GenCLI.run(["schedule", "boss", "--costs", "\(dir)/ok.json", "--nfe", "2", "--json"])
        #expect(status == 0)
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        #expect(obj["indices"] as? [Int] == [0, 1, 2])
        #expect(obj["cost"] as? Double == 0)
    }

    /// `gen serve` as a user starts it: the token from a file, and SIGTERM with a generation in
    /// flight: the generation is stopped (503 to its client) and the process exits 0 in time.
    @Test func serveTakesItsTokenFromAFileAndStopsCleanlyOnSIGTERM() throws {
        let dir = Fixtures.tempPath("cli-serve")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data("s3cret-token\n".utf8).write(to: URL(fileURLWithPath: dir + "/token"))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: GenCLI.binary)
        p.arguments = ["serve", "--port", "0", "--token-file", dir + "/token", "--threads", "1"]
        p.currentDirectoryURL = URL(fileURLWithPath: Fixtures.repositoryRoot)
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { p.interrupt(); p.waitUntilExit() } }
        // The first line names the port.
        var text = ""
        while !text.contains("\n") {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        let port = try #require(text.split(separator: ":").last.flatMap { UInt16($0.trimmingCharacters(in: .whitespacesAndNewlines)) }, "\(text)")
        let info = "GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        #expect(loopbackExchange(port: port, info + "\r\n").hasPrefix("HTTP/1.1 401"))
        #expect(loopbackExchange(port: port, info + "Authorization: Bearer s3cret-token\r\n\r\n").hasPrefix("HTTP/1.1 200"))
        // A long generation (16 images × 200 steps), then SIGTERM while it runs.
        let body = #"{"steps": 200, "count": 16}"#
        let fd = loopbackSocket(port: port, timeout: 20)
        defer { close(fd) }
        let request = "POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret-token\r\n"
            + "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        _ = request.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        let running = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        let end = Date().addingTimeInterval(30)
        while Date() < end && !loopbackExchange(port: port, running).contains("millrace_jobs_running 1") { usleep(20_000) }
        let signalled = Date()
        kill(p.processIdentifier, SIGTERM)
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buf, buf.count, 0)
        let reply = String(decoding: buf[0..<max(0, n)], as: UTF8.self)
        #expect(reply.hasPrefix("HTTP/1.1 503"), "\(reply.prefix(200))")
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(Date().timeIntervalSince(signalled) < 5, "exit within 5 s of SIGTERM")
    }
}

