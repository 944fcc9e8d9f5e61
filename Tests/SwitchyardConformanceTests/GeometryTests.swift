import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance
import Testing

/// The grouped matmul under every class of tile geometry the defaults or `switchyard tune` can
/// pick: the register kernel at the AVX-512, AVX2 and SSE/NEON widths (and tile steps), and the
/// work-group kernel (including a k step that does not divide K), so a geometry derived on
/// another machine is checked here too. Each on every device where a tuning could give it
/// (`runs(_:on:)`).
@Suite("Matmul geometries: every tile class on the devices that can be tuned to it")
struct GeometryTests {
    static let geometries: [(String, Tuning)] = [
        ("registers 6×64 float16", Tuning(rowGroup: 16, matmulRows: 6, matmulPanel: 64, matmulVectorWidth: 16)),
        ("registers 6×16 float8", Tuning(rowGroup: 16, matmulRows: 6, matmulPanel: 16, matmulVectorWidth: 8)),
        ("registers 4×8 float4 step 3", Tuning(rowGroup: 16, matmulRows: 4, matmulTileStep: 3, matmulPanel: 8,
                                              matmulVectorWidth: 4)),
        ("registers 8×2 float1", Tuning(rowGroup: 16, matmulRows: 8, matmulPanel: 2, matmulVectorWidth: 1)),
        ("work-group 32×64, 4 rows per item", Tuning(rowGroup: 16, matmulRows: 32, matmulKernel: .workGroup,
                                                      matmulPanel: 64, matmulVectorWidth: 1, matmulRowsPerItem: 4)),
        ("work-group 16×32, 2 rows per item, k step 5", Tuning(rowGroup: 16, matmulRows: 16, matmulKernel: .workGroup,
                                                               matmulPanel: 32, matmulVectorWidth: 1,
                                                               matmulRowsPerItem: 2, matmulTileK: 5)),
        ("work-group 32×64, no split-k", Tuning(rowGroup: 16, matmulRows: 32, matmulKernel: .workGroup,
                                               matmulPanel: 64, matmulVectorWidth: 1, matmulRowsPerItem: 4,
                                               matmulSplitRows: 0)),
    ]

    /// Device limits that are not powers of two (NVIDIA's 48 KiB of local memory; a maximum
    /// work-group size such as 192 or 768, which OpenCL allows) still give power-of-two defaults:
    /// on an H200 the defaults derived 3072 top-k keys from 48 KiB, which `validate` refused, so no
    /// backend could be made.
    @Test func derivedFieldsArePowersOfTwoForAnyDeviceLimits() {
        #expect(Tuning.topKLocalKeys(localMemoryBytes: 49152) == 2048)
        #expect(Tuning.topKLocalKeys(localMemoryBytes: 65536) == 4096)
        #expect(Tuning.topKLocalKeys(localMemoryBytes: 32768) == 2048)
        #expect(Tuning.topKLocalKeys(localMemoryBytes: 1 << 30) == 16384)
        #expect(Tuning.topKLocalKeys(localMemoryBytes: 0) == 2)
        for bytes in [0, 16, 100, 1000, 12288, 49152, 65535, 65536, 98304, 1 << 20] {
            let keys = Tuning.topKLocalKeys(localMemoryBytes: bytes)
            #expect(keys >= 2 && keys & (keys - 1) == 0 && (keys * 8 <= max(16, bytes)), "\(bytes) B: \(keys) keys")
        }
        for (n, floor) in [(0, 1), (1, 1), (2, 2), (3, 2), (192, 128), (256, 256), (768, 512), (1024, 1024)] {
            #expect(Tuning.floorPowerOfTwo(n) == floor, "floorPowerOfTwo(\(n))")
        }
    }

    /// The grouped matmul and layer cases each geometry runs: all of them but the elementwise
    /// epilogues (SiLU, GELU, sigmoid) in f16 and bf16 and in the plain kernel. Those apply the
    /// same per-element code to an output whatever the tile, and run in every dtype and both
    /// kernels under the default geometry (ConformanceTests); here every tile class gets each
    /// of them in f32, and none and SwiGLU (whose gate and up columns follow the panel) in every
    /// dtype and kernel. (Each dtype and epilogue is its own program: 20 fewer per geometry and
    /// device, the largest share of this suite's cold compile time.)
    ///
    /// The plain (unpacked) kernel takes only the tile's rows from a geometry, so its cases run
    /// under the geometries of `plainGeometries` (4, 8 and 32 rows a tile on CPU-class devices;
    /// lanes devices cap it at 4 rows whatever the geometry); the default geometry's run adds 6.
    static func geometryCases(_ index: Int) throws -> [ConformanceCase] {
        let elementwise = try Regex("T=67 .* ((bf16|f16) (geluErf|geluTanh|sigmoid|silu) (packed|plain)|f32 (geluErf|geluTanh|sigmoid|silu) plain)$")
        let plain = try Regex(" plain( |$)")
        return try Conformance.cases(matching: "^grouped_matmul|^moe_layer").filter {
            !$0.name.contains(elementwise) && (plainGeometries.contains(index) || !$0.name.contains(plain))
        }
    }

    static let plainGeometries: Set<Int> = [2, 3, 4]

    /// Whether a geometry runs on `device`: every one on a CPU-class device (PoCL), where the
    /// register kernel is the default and compiles in about a second; where work-items are SIMD
    /// lanes (rusticl over llvmpipe, GPUs) the work-group kernel, and a register tile only where
    /// its vector width is one `switchyard tune` tries there (llvmpipe, width 1: float4 and
    /// float1), so no geometry that no tuning can give the device is compiled for it (llvmpipe
    /// compiling the 16- and 8-wide register kernels as lanes took most of this suite's cold
    /// driver time: a cold run had built 109 programs in 12 minutes, stuck on them).
    static func runs(_ tuning: Tuning, on device: Device) -> Bool {
        !device.workItemsAreLanes || tuning.matmulKernel == .workGroup
            || Tuning.registerVectorWidths(for: device).contains(tuning.matmulVectorWidth)
    }

    /// (Not the last geometry, the work-group kernel without split-k: `geometriesAgreeBitwise`
    /// checks that it gives the bits of the one with it.)
    @Test(arguments: geometries.indices.dropLast())
    func matmulCasesPass(_ index: Int) throws {
        let (name, tuning) = Self.geometries[index]
        let cases = try Self.geometryCases(index)
        let all = try Conformance.cases(matching: "^grouped_matmul|^moe_layer")
        #expect(cases.count >= 40)
        #expect(cases.count < all.count)
        #expect(cases.contains { $0.name.hasSuffix(" plain") } == Self.plainGeometries.contains(index))
        for device in try Device.all() where Self.runs(tuning, on: device) {
            try tuning.validate(for: device)
            let runner = try ConformanceRunner(device: device, tuning: tuning)
            for c in cases {
                let result = runner.run(c)
                #expect(result.passed, "\(device.name), \(name): \(c.name): \(result.detail)")
            }
        }
    }

    /// Quantized weights under geometries the defaults do not pick here (AVX2's 16-column panel
    /// of float8, SSE/NEON's 8-column panel of float4, a 2-column panel of scalar loads — 4-bit
    /// rows of one byte —, and a 32-column work-group panel): every format with SwiGLU (bf16) and
    /// without an epilogue (f32), and at decode (T = 3: a work-item's panels run together in the
    /// register kernel's panel groups). On an x86 CPU with AVX2 the 8- and 16-lane register
    /// kernels decode MXFP4 by table lookup; the float4 geometry keeps the vector form of the
    /// integer decode (what other CPUs' register kernels run) tested there too.
    @Test(arguments: [1, 2, 3, 5])
    func quantizedCasesPass(_ index: Int) throws {
        let (name, tuning) = Self.geometries[index]
        let cases = try Conformance.cases(matching: "^quantized_matmul T=(37|3) .*(none|swiglu)$")
        #expect(cases.count >= 17)
        for device in try Device.all() where Self.runs(tuning, on: device) {
            let runner = try ConformanceRunner(device: device, tuning: tuning)
            for c in cases {
                let result = runner.run(c)
                #expect(result.passed, "\(device.name), \(name): \(c.name): \(result.detail)")
            }
        }
    }

    /// Every geometry sums each output in the same order (256-step f32 fma chains over k, added
    /// in order), so all of them give bitwise the same layer output: with float weights, and with
    /// 4-bit ones, whose chains sum each group before its scale (MXFP4) or dequantize each
    /// weight (int4 with zero points). deepseek-tiny at 61 tokens has about 8 rows an expert, so
    /// the work-group geometries run split-k for the routed experts (the last geometry, without
    /// split-k, the work-group kernel) and the work-group kernel for the shared expert. (K is 128
    /// and 64 here, one chain: `longKTokenAloneIsBitwiseInBatch` takes several.)
    @Test(arguments: [WeightQuantization.none, .mxfp4, .int4(group: 32, zeroPoint: true)])
    func geometriesAgreeBitwise(_ quantize: WeightQuantization) throws {
        for device in try Device.all() {
            var first: (name: String, y: [UInt8])?
            for (name, tuning) in Self.geometries where Self.runs(tuning, on: device) {
                let backend = try OpenCLBackend(device: device, tuning: tuning)
                let config = MoEConfig.deepSeekTiny
                let weights = try MoEWeights.random(config: config, backend: backend, dtype: .bf16, seed: 5)
                let layer = try MoELayer(backend: backend, config: config, weights: weights, quantize: quantize)
                var g = SeededGenerator(seed: 6)
                let x = try backend.tensor(g.normals(61 * config.hidden), shape: [61, config.hidden], dtype: .bf16)
                let y = try backend.bytes(layer.forward(x).y)
                if let first {
                    #expect(y == first.y, "\(device.name), \(quantize): \(name) differs from \(first.name)")
                } else {
                    first = (name, y)
                }
            }
        }
    }

    /// The layers of `longKTokenAloneIsBitwiseInBatch`: hidden 544 = 2 × 256 + 32 and ffn 320 =
    /// 256 + 64 (several chains of k, the last short), Mixtral-style in float and every
    /// quantization; a Qwen-style layer whose shared expert (a dense matmul of the token's row:
    /// split-k's dense mode) is gated, in int4 with zero points; gpt-oss's biases and clamped
    /// gated epilogue in MXFP4.
    static let longKLayers: [(String, MoEConfig, WeightQuantization)] = {
        let mixtral = MoEConfig(hidden: 544, ffn: 320, router: .mixtral(experts: 8, k: 2))
        let qwen = MoEConfig(
            hidden: 544, ffn: 320, router: .qwenMoE(experts: 8, k: 2, renormalize: false), sharedFFN: 320, sharedGate: true)
        return [
            ("mixtral", mixtral, .none), ("mixtral", mixtral, .mxfp4), ("mixtral", mixtral, .int8),
            ("mixtral", mixtral, .int4(group: 128, zeroPoint: false)),
            ("qwen, gated shared expert", qwen, .int4(group: 32, zeroPoint: true)),
            ("gpt-oss", MoEConfig.gptOss(hidden: 544, ffn: 320, experts: 8, k: 2), .mxfp4),
        ]
    }()

    /// Over several chains of k, a token's output is bitwise the same alone (decode: split-k
    /// where the work-group kernel runs) and in a batch of 40 (the work-group or register
    /// kernel), for float and quantized experts (int8's row scale multiplies the chains' total),
    /// on every device with its default geometry; on CPU-class devices the work-group geometry
    /// too, whose batch must also match the register kernel's bit for bit.
    @Test(arguments: longKLayers.indices)
    func longKTokenAloneIsBitwiseInBatch(_ index: Int) throws {
        let (layerName, config, quantize) = Self.longKLayers[index]
        for device in try Device.all() {
            var tunings: [(String, Tuning?)] = [("defaults", nil)]
            if !device.workItemsAreLanes { tunings.append((Self.geometries[4].0, Self.geometries[4].1)) }
            var first: (name: String, y: [UInt32])?
            for (name, tuning) in tunings {
                let backend = try OpenCLBackend(device: device, tuning: tuning)
                let weights = try MoEWeights.random(config: config, backend: backend, dtype: .bf16, seed: 8)
                let layer = try MoELayer(backend: backend, config: config, weights: weights, quantize: quantize)
                var g = SeededGenerator(seed: 9)
                let h = config.hidden
                let x = g.normals(40 * h)
                let all = try backend.floats(layer.forward(try backend.tensor(x, shape: [40, h], dtype: .bf16)).y)
                    .map(\.bitPattern)
                #expect(all.count == 40 * h)
                for token in [0, 23] {
                    let one = try backend.floats(
                        layer.forward(try backend.tensor(Array(x[(token * h)..<((token + 1) * h)]), shape: [1, h], dtype: .bf16)).y)
                    let differ = (0..<min(h, one.count)).filter { one[$0].bitPattern != all[token * h + $0] }.count
                    #expect(
                        one.count == h && differ == 0,
                        "\(device.name), \(name), \(layerName) \(quantize): token \(token) alone differs from the batch in \(differ) of \(h)")
                }
                if let first {
                    #expect(all == first.y, "\(device.name), \(layerName) \(quantize): \(name) differs from \(first.name)")
                } else {
                    first = (name, all)
                }
            }
        }
    }

    /// `make test` and CI enable rusticl: then its device must be there, so the suite really ran
    /// on two implementations.
    @Test func rusticlIsPresentWhenEnabled() throws {
        let env = ProcessInfo.processInfo.environment
        guard env["RUSTICL_ENABLE"] != nil,
            FileManager.default.fileExists(atPath: "/etc/OpenCL/vendors/rusticl.icd")
        else { return }
        let devices = try Device.all()
        let platforms = devices.map(\.platformName)
        #expect(platforms.contains("rusticl"), "RUSTICL_ENABLE is set and rusticl is installed, but devices are \(platforms)")
        #expect(platforms.contains("Portable Computing Language"), "PoCL is missing: \(platforms)")
        // With both, every geometry runs on one of them at least (`runs(_:on:)`: on PoCL all).
        for (name, tuning) in Self.geometries {
            #expect(devices.contains { Self.runs(tuning, on: $0) }, "geometry \(name) runs on no device")
        }
    }

    @Test func tuningEntriesAreValidated() throws {
        let device = try Device.select()
        var t = Tuning.defaults(for: device)
        try t.validate(for: device)
        for field in ["matmulRows", "matmulTileStep", "rowsPerGroup", "rowGroup", "matmulPanel"] {
            var bad = t
            switch field {
            case "matmulRows": bad.matmulRows = 0
            case "matmulTileStep": bad.matmulTileStep = 0
            case "rowsPerGroup": bad.rowsPerGroup = -1
            case "rowGroup": bad.rowGroup = 12
            default: bad.matmulPanel = 24
            }
            #expect(throws: SwitchyardError.self, "\(field)") { try bad.validate(for: device) }
            #expect(throws: SwitchyardError.self, "\(field)") { try OpenCLBackend(device: device, tuning: bad) }
            do {
                try bad.validate(for: device)
            } catch {
                #expect("\(error)".contains(field), "the error names \(field): \(error)")
            }
        }
        t.matmulKernel = .workGroup
        t.matmulRows = 32
        t.matmulRowsPerItem = 64
        #expect(throws: SwitchyardError.self) { try t.validate(for: device) }
    }

    /// `SWITCHYARD_VECTOR_WIDTH` (the AVX2-proxy override of the float vector width) takes 1, 2,
    /// 4, 8 or 16; anything else set is refused with an error naming the variable.
    @Test func vectorWidthOverrideIsValidated() throws {
        for width in [1, 2, 4, 8, 16] {
            #expect(Device.vectorWidth(overrideText: "\(width)") == width)
            try Tuning.checkVectorWidthOverride("\(width)")
        }
        try Tuning.checkVectorWidthOverride(nil)
        for bad in ["0", "3", "12", "32", "-8", " 8", "8.0", "eight", "avx2"] {
            #expect(Device.vectorWidth(overrideText: bad) == nil, "\(bad)")
            do {
                try Tuning.checkVectorWidthOverride(bad)
                Issue.record("SWITCHYARD_VECTOR_WIDTH='\(bad)' was accepted")
            } catch {
                #expect("\(error)".contains("SWITCHYARD_VECTOR_WIDTH") && "\(error)".contains(bad), "\(error)")
            }
        }
    }

    /// The defaults derive the register tile from the native vector width: it fits the register
    /// file (accumulators + one row of weights + a broadcast + a spare).
    @Test func registerTilesFitTheRegisterFile() {
        #expect(Tuning.registerTile(vectorWidth: 16, registers: 32) == (rows: 6, vectors: 4))
        #expect(Tuning.registerTile(vectorWidth: 8, registers: 16) == (rows: 6, vectors: 2))
        #expect(Tuning.registerTile(vectorWidth: 4, registers: 16) == (rows: 6, vectors: 2))
        for width in [1, 2, 4, 8, 16] {
            let registers = Tuning.cpuRegisters(vectorWidth: width)
            let tile = Tuning.registerTile(vectorWidth: width, registers: registers)
            #expect(tile.rows * tile.vectors + tile.vectors + 2 <= registers)
        }
    }
}
