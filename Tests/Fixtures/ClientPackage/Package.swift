// swift-tools-version:6.0
// An engine that links Switchyard from outside its repository, using only its public API (the
// test `ClientPackageTests` copies this folder to a temporary directory and fills in the path).
import PackageDescription

let package = Package(
    name: "SwitchyardClient",
    dependencies: [.package(path: "@SWITCHYARD_PATH@")],
    targets: [
        // The engine's own binding of the OpenCL C API (not Switchyard's).
        .systemLibrary(name: "CClientOpenCL", pkgConfig: "OpenCL"),
        .executableTarget(
            name: "client",
            dependencies: ["CClientOpenCL", .product(name: "Switchyard", package: "@SWITCHYARD_IDENTITY@")]
        ),
        // The ```swift blocks of README.md and the DocC catalogs, each a function of the
        // generated main.swift (DocSampleTests writes it into the temporary copy), run in order.
        .executableTarget(
            name: "samples",
            dependencies: [
                "CClientOpenCL",
                .product(name: "Switchyard", package: "@SWITCHYARD_IDENTITY@"),
                .product(name: "OpenCLHost", package: "@SWITCHYARD_IDENTITY@"),
                .product(name: "SwitchyardConformance", package: "@SWITCHYARD_IDENTITY@"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
