// swift-tools-version:6.0
import PackageDescription

// The C targets are built with -O3 and no -march: wider vector code is chosen at run time
// (see Sources/MillraceKernels/cpu.c), so a build made here runs on any x86-64 machine.
let cOptimise: [CSetting] = [.unsafeFlags(["-O3", "-ffp-contract=fast", "-fno-math-errno"])]

// The layers, lowest first (docs/ARCHITECTURE.md). A target depends only on targets above it in
// this list; the build refuses an import of a higher one.
//
//   MillraceFormats    safetensors, strict JSON, multipart/form-data: bytes in, values out (Foundation only)
//   MillraceCore       tensors, layers, UNet2DModel, model folders, sampling (schedules, sources,
//                      solvers), the model-call batcher (C kernels, OpenBLAS, LAPACK)
//   MillraceImaging    images: codecs, resize, Lab, text, charts, image <-> tensor (libpng, libjpeg,
//                      FreeType)
//   MillraceTraining   datasets (emoji drawn with FreeType and HarfBuzz), trainers, the classifier,
//                      evaluation, pruning-set building; data parallelism over MPI (Open MPI
//                      loaded at run time, only under mpirun)
//   MillracePipelines  streams (StreamDiffusion-style) and colour (retrieval colorization, BSS on KissFFT)
//   MillraceHTTP       the HTTP server (libmicrohttpd) and the service's routes
//   gen                the command-line tool
let package = Package(
    name: "Millrace",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "MillraceFormats", targets: ["MillraceFormats"]),
        .library(name: "MillraceCore", targets: ["MillraceCore"]),
        .library(name: "MillraceImaging", targets: ["MillraceImaging"]),
        .library(name: "MillraceTraining", targets: ["MillraceTraining"]),
        .library(name: "MillracePipelines", targets: ["MillracePipelines"]),
        .library(name: "MillraceHTTP", targets: ["MillraceHTTP"]),
        .executable(name: "gen", targets: ["gen"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // System libraries (Debian packages).
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CLAPACK", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CJPEG", pkgConfig: "libjpeg", providers: [.apt(["libjpeg-dev"])]),
        .systemLibrary(name: "CMicroHTTPD", pkgConfig: "libmicrohttpd", providers: [.apt(["libmicrohttpd-dev"])]),
        .systemLibrary(name: "CFreeType", pkgConfig: "freetype2", providers: [.apt(["libfreetype-dev"])]),
        .systemLibrary(name: "CHarfBuzz", pkgConfig: "harfbuzz", providers: [.apt(["libharfbuzz-dev"])]),
        .systemLibrary(name: "CKissFFT", pkgConfig: "kissfft-float", providers: [.apt(["libkissfft-dev"])]),
        // Open MPI for data-parallel training: declarations only, no `link` line. The library is
        // opened with dlopen when mpirun started the process, so gen runs where it is not installed.
        .systemLibrary(name: "CMPI", providers: [.apt(["openmpi-bin", "libopenmpi-dev"])]),

        // C.
        .target(name: "MillraceKernels", dependencies: ["CBLAS"], cSettings: cOptimise),
        .target(name: "MillraceCodecs", dependencies: ["CPNG", "CJPEG"], cSettings: cOptimise),
        .target(name: "CMillraceHTTP", dependencies: ["CMicroHTTPD"]),

        // Swift, lowest layer first.
        .target(name: "MillraceFormats"),
        .target(name: "MillraceCore", dependencies: ["MillraceFormats", "MillraceKernels", "CLAPACK"]),
        .target(name: "MillraceImaging", dependencies: ["MillraceFormats", "MillraceCore", "MillraceCodecs", "CFreeType"]),
        .target(name: "MillraceTraining", dependencies: ["MillraceFormats", "MillraceCore", "MillraceImaging", "CFreeType", "CHarfBuzz", "CMPI"]),
        .target(name: "MillracePipelines", dependencies: ["MillraceFormats", "MillraceCore", "MillraceImaging", "CKissFFT"]),
        .target(name: "MillraceHTTP", dependencies: ["MillracePipelines", "MillraceFormats", "CMillraceHTTP", "CMicroHTTPD"]),
        .executableTarget(name: "gen", dependencies: [
            "MillraceHTTP", "MillracePipelines", "MillraceTraining", "MillraceImaging", "MillraceCore",
            "MillraceFormats", "MillraceKernels",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        // Fuzz targets: with `swift build` they are replay tools (run a corpus once); Fuzz/*/run.sh
        // builds them with libFuzzer and AddressSanitizer.
        .target(name: "FuzzReplay", path: "Fuzz/Replay"),
        .executableTarget(name: "fuzz-safetensors", dependencies: ["MillraceFormats", "FuzzReplay"], path: "Fuzz/Safetensors",
                          exclude: ["README.md", "run.sh", "safetensors.dict", "seeds"]),
        .executableTarget(name: "fuzz-multipart", dependencies: ["MillraceFormats", "FuzzReplay"], path: "Fuzz/Multipart",
                          exclude: ["README.md", "run.sh", "multipart.dict", "seeds"]),

        // Tests mirror the layers; MillraceTestSupport holds the fixtures and helpers they share.
        .target(name: "MillraceTestSupport", dependencies: ["MillraceCore", "MillraceImaging"], path: "Tests/MillraceTestSupport",
                resources: [.copy("Fixtures")]),
        .testTarget(name: "MillraceFormatsTests", dependencies: ["MillraceFormats", "MillraceTestSupport"]),
        .testTarget(name: "MillraceCoreTests", dependencies: ["MillraceCore", "MillraceKernels", "MillraceTestSupport"]),
        .testTarget(name: "MillraceImagingTests", dependencies: ["MillraceImaging", "MillraceTestSupport"]),
        .testTarget(name: "MillraceTrainingTests", dependencies: ["MillraceTraining", "MillraceKernels", "MillraceTestSupport"]),
        .testTarget(name: "MillracePipelinesTests", dependencies: ["MillracePipelines", "MillraceTestSupport"]),
        .testTarget(name: "MillraceHTTPTests", dependencies: ["MillraceHTTP", "MillraceTestSupport"]),
        .testTarget(name: "MillraceIntegrationTests", dependencies: ["MillraceHTTP", "MillraceTraining", "MillraceTestSupport"]),
    ]
)
