// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Switchyard",
    products: [
        .library(name: "Switchyard", targets: ["Switchyard"]),
        .library(name: "SwitchyardConformance", targets: ["SwitchyardConformance"]),
        .library(name: "OpenCLHost", targets: ["OpenCLHost"]),
        // Expert parallelism over MPI, apart so that engines linking Switchyard need no MPI.
        .library(name: "SwitchyardMPI", targets: ["SwitchyardMPI"]),
        .executable(name: "switchyard", targets: ["switchyard"]),
        .executable(name: "switchyard-bench", targets: ["switchyard-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // `swift package generate-documentation` (make docs); a command plugin, so it takes no part
        // in `swift build` or `swift test`.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // The OpenCL C API as a system library; the shim fixes CL_TARGET_OPENCL_VERSION.
        .systemLibrary(
            name: "COpenCL",
            pkgConfig: "OpenCL",
            providers: [.apt(["ocl-icd-opencl-dev", "opencl-headers"])]
        ),
        // Safe Swift over the OpenCL C API: platforms, devices, contexts, queues, buffers,
        // programs (with build logs and a cache), kernels, events, CLError.
        .target(name: "OpenCLHost", dependencies: ["COpenCL"]),
        // The CPU reference: the definition of every op. Plain loops, Double accumulation.
        .target(name: "SwitchyardReference"),
        // Build-time tool that turns Kernels/*.cl into a Swift source file.
        .executableTarget(name: "KernelEmbedder"),
        .plugin(
            name: "EmbedKernels",
            capability: .buildTool(),
            dependencies: ["KernelEmbedder"]
        ),
        // The public API: tensors, backends, ops.
        .target(
            name: "Switchyard",
            dependencies: ["OpenCLHost", "SwitchyardReference"],
            plugins: ["EmbedKernels"]
        ),
        // Open MPI's C API as a system library (pkg-config ompi-c); used by SwitchyardMPI only.
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]
        ),
        // Expert parallelism: a safe layer over the MPI calls used (Communicator) and
        // ExpertParallelMoELayer, experts sharded over ranks, bitwise equal to MoELayer.
        .target(name: "SwitchyardMPI", dependencies: ["Switchyard", "CMPI"]),
        // Op cases shared by the tests, the conformance command and the benchmarks.
        .target(name: "SwitchyardConformance", dependencies: ["Switchyard", "SwitchyardReference"]),
        // Runnable examples of conditional computation (mixture-of-depths, Soft MoE stacks), dense
        // against dynamic, behind `switchyard run --config mod-tiny|soft-moe-tiny` and the tests.
        .target(
            name: "SwitchyardExamples", dependencies: ["Switchyard", "SwitchyardConformance", "SwitchyardReference"]),
        .executableTarget(
            name: "switchyard",
            dependencies: [
                "Switchyard", "SwitchyardConformance", "SwitchyardReference", "OpenCLHost", "SwitchyardMPI",
                "SwitchyardExamples", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The benchmarks: device ceilings, then every conformance case timed on the device with
        // its peers beside it (Benchmarks/switchyard-bench).
        // OpenBLAS (CBLAS) as a system library: the dense-SGEMM peer of the benchmarks only.
        .systemLibrary(
            name: "COpenBLAS",
            path: "Benchmarks/COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // CLBlast's C API as a system library: the OpenCL SGEMM peer of the grouped expert matmul,
        // in the benchmarks only.
        .systemLibrary(
            name: "CCLBlast",
            path: "Benchmarks/CCLBlast",
            pkgConfig: "clblast",
            providers: [.apt(["libclblast-dev"])]
        ),
        .executableTarget(
            name: "switchyard-bench",
            dependencies: [
                "Switchyard", "SwitchyardConformance", "SwitchyardReference", "OpenCLHost", "COpenBLAS", "CCLBlast",
                "SwitchyardMPI", "SwitchyardExamples",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/switchyard-bench",
            // The ceiling kernels, compiled into the binary (PackageResources.ceilings_cl).
            resources: [.embedInCode("ceilings.cl")]
        ),
        .testTarget(name: "OpenCLHostTests", dependencies: ["OpenCLHost", "Switchyard"]),
        .testTarget(name: "SwitchyardReferenceTests", dependencies: ["SwitchyardReference"]),
        // Starts `mpirun -np 2/4` on the switchyard command and checks expert parallelism
        // against the single-process layer bitwise.
        .testTarget(name: "SwitchyardMPITests", dependencies: ["SwitchyardMPI", "Switchyard", "OpenCLHost"]),
        .testTarget(
            name: "SwitchyardConformanceTests",
            dependencies: ["Switchyard", "SwitchyardConformance", "SwitchyardReference", "OpenCLHost", "SwitchyardExamples"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
