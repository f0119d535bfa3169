// swift-tools-version:6.0
import PackageDescription

// The C targets are built with -O3 and no -march: wider vector code is chosen at run time
// (see Sources/MillraceKernels/cpu.c), so a build made here runs on any x86-64 machine.
let cOptimise: [CSetting] = [.unsafeFlags(["-O3", "-ffp-contract=fast", "-fno-math-errno"])]

let package = Package(
    name: "Millrace",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "Millrace", targets: ["Millrace"]),
        .executable(name: "gen", targets: ["gen"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CJPEG", pkgConfig: "libjpeg", providers: [.apt(["libjpeg-dev"])]),
        .systemLibrary(name: "CMicroHTTPD", pkgConfig: "libmicrohttpd",
                       providers: [.apt(["libmicrohttpd-dev"])]),
        .systemLibrary(name: "CFreeType", pkgConfig: "freetype2",
                       providers: [.apt(["libfreetype-dev"])]),
        .systemLibrary(name: "CHarfBuzz", pkgConfig: "harfbuzz",
                       providers: [.apt(["libharfbuzz-dev"])]),
        .target(name: "MillraceKernels", dependencies: ["CBLAS"], cSettings: cOptimise),
        .target(name: "MillraceCodecs", dependencies: ["CPNG", "CJPEG"], cSettings: cOptimise),
        .systemLibrary(name: "CKissFFT", pkgConfig: "kissfft-float",
                       providers: [.apt(["libkissfft-dev"])]),
        .target(name: "CMillraceHTTP", dependencies: ["CMicroHTTPD"]),
        .target(name: "Millrace",
                dependencies: ["MillraceKernels", "MillraceCodecs", "CMicroHTTPD", "CMillraceHTTP",
                               "CFreeType", "CHarfBuzz", "CKissFFT"]),
        .executableTarget(name: "gen", dependencies: [
            "Millrace", "MillraceKernels",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "MillraceTests", dependencies: ["Millrace", "MillraceKernels"],
                    resources: [.copy("Fixtures")]),
    ]
)
