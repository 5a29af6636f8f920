// swift-tools-version:5.9
// adaptkit for iOS: the uniffi-generated Swift (AdaptkitFFI, committed and checked fresh in CI),
// an async/await layer (Adaptkit), and the native library as an XCFramework built by
// ios/build-xcframework.sh (on a Mac with Xcode) before the package is used.
import PackageDescription

let package = Package(
    name: "Adaptkit",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [.library(name: "Adaptkit", targets: ["Adaptkit"])],
    targets: [
        .binaryTarget(name: "adaptkit_ffiFFI", path: "AdaptkitFFI.xcframework"),
        .target(name: "AdaptkitFFI", dependencies: ["adaptkit_ffiFFI"], path: "Sources/AdaptkitFFI"),
        .target(name: "Adaptkit", dependencies: ["AdaptkitFFI"], path: "Sources/Adaptkit"),
    ]
)
