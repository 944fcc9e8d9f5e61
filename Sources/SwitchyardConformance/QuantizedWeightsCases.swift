import Switchyard
import SwitchyardReference

/// Cases of quantized expert weights: the device's int8/int4 quantization against
/// `Quantization`'s definition (codes, scales and zeros bit for bit), and the grouped matmul on
/// int8, int4, MXFP4 and FP8 weights against the reference matmul of the dequantized weights
/// (exact f32 values, so the float matmul's NMSE applies).
enum QuantizedWeightsCases {
    /// The factor of the "special" weights' huge row for a quantization: int8's f32 scale holds
    /// 1e7; int4's f16 scale holds groups up to about 7 × 65520, so 1e5 (scales near 10^4);
    /// groups past that are refused (the "refused" cases).
    static func huge(for q: WeightQuantization?) -> Float { q == .int8 ? 1e7 : 1e5 }

    /// Float weights `[E, rows, K]` of a kind: "normal", "special" (an all-zero row/group, a
    /// tiny one, a huge one (× `huge`), one holding NaN), "grid" (quarters up to ±`range`, so
    /// quotients hit ties).
    static func floatWeights(
        _ count: Int, k: Int, kind: String, seed: UInt64, range: Float = 63.5, huge: Float = 1e7
    ) -> [Float] {
        var g = SeededGenerator(seed: seed)
        var w = g.normals(count, scale: 0.2)
        let rows = count / max(1, k)
        switch kind {
        case "special":
            for r in 0..<rows {
                let row = (r * k)..<((r + 1) * k)
                switch r % 6 {
                case 1: for i in row { w[i] = 0 }
                case 2: for i in row { w[i] *= 1e-9 }  // f16 scales subnormal or zero
                case 3: for i in row { w[i] *= huge }
                case 4: w[row.lowerBound + Int(g.next() % UInt64(k))] = .nan
                case 5: for i in row.prefix(33) { w[i] = 0 }  // an all-zero first group
                default: break
                }
            }
        case "grid":
            // Quarters up to `range`, whose scale comes out a power of two (int8: 63.5 · (1/127)
            // rounds to 0.5; int4: f16(3.5 · (1/7)) = f16(7.5 · (1/15)) = 0.5), so odd quarters
            // are exact ties (w / s = n + 1/2) that must go to the even code, and so is the zero
            // point of a (−3.75, 3.75) group.
            let steps = Int(range * 4)
            for r in 0..<rows {
                for i in (r * k)..<((r + 1) * k) { w[i] = Float(Int(g.next() % UInt64(2 * steps + 1)) - steps) / 4 }
                w[r * k] = range
                if k > 1 { w[r * k + 1] = -range }
            }
        default: break
        }
        return w
    }

    struct QSpec {
        var experts: Int
        var rows: Int
        var k: Int
        var dtype: DType
        var q: WeightQuantization
        var kind = "normal"
    }

    static var quantize: [ConformanceCase] {
        var specs: [QSpec] = []
        let formats: [WeightQuantization] = [
            .int8, .int4(group: 32, zeroPoint: false), .int4(group: 32, zeroPoint: true),
            .int4(group: 128, zeroPoint: false), .int4(group: 128, zeroPoint: true),
        ]
        for q in formats {
            specs += [
                QSpec(experts: 3, rows: 37, k: 70, dtype: .f32, q: q),
                QSpec(experts: 2, rows: 12, k: 300, dtype: .bf16, q: q),
                QSpec(experts: 1, rows: 5, k: 1, dtype: .f16, q: q),
                QSpec(experts: 2, rows: 24, k: 160, dtype: .f32, q: q, kind: "special"),
                QSpec(experts: 1, rows: 16, k: 96, dtype: .f32, q: q, kind: "grid"),
            ]
        }
        // More rows than the kernels' grids hold (quantize_codes 49,152 in its second dimension,
        // quantize_scales 16 × 49,152): the rows strided over the grid.
        specs += [
            QSpec(experts: 2, rows: 400_000, k: 1, dtype: .f32, q: .int4(group: 32, zeroPoint: true)),
            QSpec(experts: 1, rows: 800_001, k: 2, dtype: .bf16, q: .int8),
        ]
        var cases = specs.map { s in
            let shape = "E=\(s.experts) rows=\(s.rows) K=\(s.k)"
            let options = [s.q.description, s.kind == "normal" ? "" : s.kind].filter { !$0.isEmpty }.joined(separator: " ")
            let seed = Conformance.seed("quantize_weights \(shape) \(s.dtype) \(options)")
            let op = QuantizeWeights(experts: s.experts, weightRows: s.rows, inFeatures: s.k, dtype: s.dtype, quantization: s.q)
            return ConformanceCase(
                op: "quantize_weights", shape: shape, dtype: s.dtype, options: options, seed: seed, flops: op.flops,
                bytes: op.bytes
            ) { backend in
                let range: Float = switch s.q {
                case .int4(_, false): 3.5
                case .int4(_, true): 3.75
                default: 63.5
                }
                let w = try backend.tensor(
                    floatWeights(s.experts * s.rows * s.k, k: s.k, kind: s.kind, seed: seed, range: range, huge: huge(for: s.q)),
                    shape: [s.experts, s.rows, s.k], dtype: s.dtype)
                return {
                    let c = try backend.quantizeWeights(w, s.q)
                    return [CaseOutput("codes", c.codes, .exact), CaseOutput("scales", c.scales, .exact)]
                        + (c.zeros.map { [CaseOutput("zeros", $0, .exact)] } ?? [])
                }
            }
        }
        // Refused: no quantization, bad groups, a long int8 row, integer weights, and u8 tensors
        // given to ops that take floats.
        func refused(
            _ shape: String, _ what: String, naming words: String? = nil,
            _ body: @escaping @Sendable (any ComputeBackend) throws -> Void
        ) -> ConformanceCase {
            ConformanceCase(
                op: "quantize_weights", shape: shape, dtype: .f32, options: "refused \(what)",
                seed: Conformance.seed("quantize_weights refused \(what)"), flops: 0, bytes: 0, expectsError: true,
                errorMatch: words
            ) { backend in
                { try body(backend); return [] }
            }
        }
        cases += [
            refused("E=1 rows=2 K=8", "none") { b in
                _ = try b.quantizeWeights(try b.tensor([Float](repeating: 1, count: 16), shape: [1, 2, 8], dtype: .f32), .none)
            },
            refused("E=1 rows=2 K=8", "group=0") { b in
                _ = try b.quantizeWeights(
                    try b.tensor([Float](repeating: 1, count: 16), shape: [1, 2, 8], dtype: .f32),
                    .int4(group: 0, zeroPoint: false))
            },
            // A group of finite weights whose int4 scale rounds past f16's range: refused (it
            // would be an infinite scale, and every output reading the group NaN).
            refused("E=2 rows=3 K=64", "int4 scale past f16", naming: "expert 1 row 2") { b in
                var w = [Float](repeating: 0.5, count: 2 * 3 * 64)
                w[(1 * 3 + 2) * 64 + 40] = 5e5  // expert 1, row 2, group 1 of 32: 5e5 / 7 rounds to f16's infinity
                _ = try b.quantizeWeights(try b.tensor(w, shape: [2, 3, 64], dtype: .f32), .int4(group: 32, zeroPoint: false))
            },
            refused("E=1 rows=2 K=64", "int4-zp range past f16", naming: "expert 0 row 1") { b in
                var w = [Float](repeating: 0.5, count: 2 * 64)
                w[64 + 3] = 6e5
                w[64 + 4] = -6e5  // a range of 1.2e6: (1.2e6) / 15 = 8e4, past f16's largest finite
                _ = try b.prepareWeights(
                    try b.tensor(w, shape: [1, 2, 64], dtype: .f32), swiglu: false, pack: true,
                    quantize: .int4(group: 128, zeroPoint: true))
            },
            refused("E=1 rows=1 K=40000", "int8 row past 32768") { b in
                _ = try b.quantizeWeights(
                    try b.tensor([Float](repeating: 1, count: 40000), shape: [1, 1, 40000], dtype: .f32), .int8)
            },
            refused("E=1 rows=2 K=8", "u8 weights") { b in
                _ = try b.prepareWeights(
                    try b.tensor(codes: [UInt8](repeating: 1, count: 16), shape: [1, 2, 8]), swiglu: false, pack: true,
                    quantize: .int8)
            },
            refused("E=1 rows=2 K=8", "u8 float tensor") { b in
                _ = try b.tensor([Float](repeating: 1, count: 16), shape: [1, 2, 8], dtype: .u8)
            },
            refused("rows=2 cols=8", "u8 softmax") { b in
                _ = try b.softmax(try b.tensor(codes: [UInt8](repeating: 1, count: 16), shape: [2, 8]))
            },
            refused("rows=2 cols=8", "u8 topk") { b in
                _ = try b.topK(try b.tensor(codes: [UInt8](repeating: 1, count: 16), shape: [2, 8]), k: 2)
            },
            refused("rows=2 cols=8", "u8 floats read") { b in
                _ = try b.floats(try b.tensor(codes: [UInt8](repeating: 1, count: 16), shape: [2, 8]))
            },
            refused("rows=2 cols=8", "f32 codes read") { b in
                _ = try b.codes(try b.tensor([Float](repeating: 1, count: 16), shape: [2, 8], dtype: .f32))
            },
        ]
        return cases
    }

    // MARK: the matmul on quantized weights

    enum Format: String, CaseIterable {
        case int8, int4g32 = "int4-g32", int4g128zp = "int4-g128-zp", int4g32zp = "int4-g32-zp", mxfp4, fp8

        var quantization: WeightQuantization? {
            switch self {
            case .int8: .int8
            case .int4g32: .int4(group: 32, zeroPoint: false)
            case .int4g128zp: .int4(group: 128, zeroPoint: true)
            case .int4g32zp: .int4(group: 32, zeroPoint: true)
            case .mxfp4, .fp8: nil
            }
        }

        var weightFormat: WeightFormat {
            switch self {
            case .mxfp4: .mxfp4
            case .fp8: .fp8
            default: quantization!.format(for: .f32)
            }
        }
    }

    struct MSpec {
        var format: Format
        var tokens: Int
        var k: Int
        var experts: Int
        var inFeatures: Int
        var outFeatures: Int
        var block: Int
        var epilogue: Epilogue
        var dtype: DType
        var fused = false
        var kind = "skewed"  // routing kind
        var scale = ""  // "", "routing", "row"
        var dense = false
        var values = "normal"  // weights: "normal", "extreme" (tiny, huge and NaN encodings)
        var interleaved = false  // MXFP4 gate|up alternating (gpt-oss)
    }

    static var matmulSpecs: [MSpec] {
        var out: [MSpec] = []
        for f in Format.allCases {
            // K off every group (MXFP4: a multiple of 32 by its layout), out off every panel.
            let kIn = f == .mxfp4 ? 96 : f == .fp8 ? 200 : 70
            // Every epilogue for one format (the epilogue code is the float kernels'); none (f32)
            // and SwiGLU (bf16) for all. (Cases share their -D sets where they can: each new one
            // is a program build, ~1 s cold on rusticl.)
            let sweep: [(Epilogue, DType)] = f == .int4g32
                ? Epilogue.allCases.map { ($0, $0 == .swiglu ? .bf16 : $0 == .none ? .f32 : $0 == .silu ? .f16 : .f32) }
                : [(.none, .f32), (.swiglu, .bf16)]
            for (epilogue, dtype) in sweep {
                out.append(MSpec(
                    format: f, tokens: 37, k: 2, experts: 4, inFeatures: kIn, outFeatures: 45, block: 4,
                    epilogue: epilogue, dtype: dtype))
            }
            out += [
                MSpec(format: f, tokens: 50, k: 2, experts: 8, inFeatures: f == .fp8 ? 256 : 128, outFeatures: 128,
                      block: 4, epilogue: .swiglu, dtype: .bf16, fused: true, scale: "routing",
                      interleaved: f == .mxfp4),
                MSpec(format: f, tokens: 40, k: 2, experts: 8, inFeatures: 64, outFeatures: 72, block: 16,
                      epilogue: f == .int4g32 ? .silu : .none, dtype: f == .int4g32 ? .f16 : .f32, scale: "row"),
                MSpec(format: f, tokens: 60, k: 1, experts: 8, inFeatures: 64, outFeatures: 64, block: 4,
                      epilogue: .swiglu, dtype: .bf16, kind: "hot"),
                MSpec(format: f, tokens: 1, k: 2, experts: 16, inFeatures: 256, outFeatures: 128, block: 4,
                      epilogue: .swiglu, dtype: .bf16, fused: true),
                // decode: 1-3 rows a tile, panels in groups (the last one short on every width)
                MSpec(format: f, tokens: 3, k: 2, experts: 4, inFeatures: kIn, outFeatures: 150, block: 4,
                      epilogue: .swiglu, dtype: .bf16),
                MSpec(format: f, tokens: 0, k: 2, experts: 4, inFeatures: 64, outFeatures: 32, block: 4,
                      epilogue: .none, dtype: .f32),
                MSpec(format: f, tokens: 33, k: 1, experts: 1, inFeatures: f == .fp8 ? 256 : 96, outFeatures: 8, block: 4,
                      epilogue: .none, dtype: .f32, dense: true),
                MSpec(format: f, tokens: 20, k: 2, experts: 4, inFeatures: f == .fp8 ? 256 : 96, outFeatures: 200,
                      block: 4, epilogue: .none, dtype: .f32, values: "extreme"),
                // a long k, off the group where the format allows: several k slices on a device
                // with a loop limit, a slice boundary inside no group
                MSpec(format: f, tokens: 6, k: 2, experts: 4, inFeatures: f == .mxfp4 || f == .int4g32 ? 4160 : 4100,
                      outFeatures: 24, block: 4, epilogue: .swiglu, dtype: .bf16),
            ]
        }
        return out
    }

    /// The expert weights of a case on `backend`: float weights quantized there (int8, int4), or
    /// seeded MXFP4/FP8 checkpoint tensors repacked there.
    static func weights(_ s: MSpec, _ backend: any ComputeBackend, _ g: inout SeededGenerator) throws -> ExpertWeights {
        let wrows = s.epilogue == .swiglu ? 2 * s.outFeatures : s.outFeatures
        let swiglu = s.epilogue == .swiglu
        let extreme = s.values == "extreme"
        switch s.format {
        case .mxfp4:
            let groups = s.inFeatures / 32
            let blocks = (0..<(s.experts * wrows * groups * 16)).map { _ in UInt8(truncatingIfNeeded: g.next()) }
            var scales = (0..<(s.experts * wrows * groups)).map { _ in UInt8(124 + g.next() % 6) }
            if extreme {
                // a quarter of the groups: 0 (2^-127: subnormal weights), 1, 200 or 240 (2^113,
                // large but finite sums), and 0xFF (NaN) in one group per expert
                let special: [UInt8] = [0, 1, 200, 240]
                for i in scales.indices where g.next() % 4 == 0 { scales[i] = special[Int(g.next() % 4)] }
                for e in 0..<s.experts { scales[(e * wrows + Int(g.next() % UInt64(wrows))) * groups] = 0xFF }
            }
            return try backend.prepareMXFP4(
                blocks: try backend.tensor(codes: blocks, shape: [s.experts, wrows, groups, 16]),
                scales: try backend.tensor(codes: scales, shape: [s.experts, wrows, groups]), swiglu: swiglu,
                interleavedGateUp: s.interleaved)
        case .fp8:
            // Codes without the NaN encodings (every e4m3 value, subnormals included), except in
            // the extreme case: one NaN code (0x7F or 0xFF) per expert.
            var codes = (0..<(s.experts * wrows * s.inFeatures)).map { _ -> UInt8 in
                let c = UInt8(truncatingIfNeeded: g.next())
                return c & 0x7F == 0x7F ? c & 0xFE : c
            }
            let bn = swiglu ? 2 * ((s.outFeatures + 127) / 128) : (wrows + 127) / 128
            let bk = (s.inFeatures + 127) / 128
            var scales = (0..<(s.experts * bn * bk)).map { _ in Float(1e-3 + g.unit() * 1e-2) }
            if extreme {
                let special: [Float] = [1e-30, Float(bitPattern: 0x0020_0000), 1e25, 0]  // tiny, subnormal, huge, zero
                for i in scales.indices where i % 2 == 1 { scales[i] = special[(i / 2) % 4] }
                for e in 0..<s.experts {
                    codes[e * wrows * s.inFeatures + Int(g.next() % UInt64(wrows * s.inFeatures))] = g.next() % 2 == 0 ? 0x7F : 0xFF
                }
            }
            return try backend.prepareFP8(
                codes: try backend.tensor(codes: codes, shape: [s.experts, wrows, s.inFeatures]),
                scaleInv: try backend.tensor(scales, shape: [s.experts, bn, bk], dtype: .f32), swiglu: swiglu)
        default:
            var w = g.normals(s.experts * wrows * s.inFeatures, scale: 0.2)
            if extreme {
                w = floatWeights(w.count, k: s.inFeatures, kind: "special", seed: g.next(), huge: huge(for: s.format.quantization))
            }
            return try backend.prepareWeights(
                try backend.tensor(w, shape: [s.experts, wrows, s.inFeatures], dtype: s.dtype), swiglu: swiglu, pack: true,
                quantize: s.format.quantization!)
        }
    }

    static var matmul: [ConformanceCase] {
        var cases = matmulSpecs.map { s in
            let shape = s.dense
                ? "T=\(s.tokens) in=\(s.inFeatures) out=\(s.outFeatures) dense"
                : "T=\(s.tokens) k=\(s.k) E=\(s.experts) in=\(s.inFeatures) out=\(s.outFeatures) block=\(s.block)"
            let options = [
                s.format.rawValue, s.epilogue.rawValue, s.fused ? "fused-gather" : "", s.kind == "skewed" ? "" : s.kind,
                s.scale.isEmpty ? "" : "scale=\(s.scale)", s.values == "normal" ? "" : s.values,
                s.interleaved ? "interleaved" : "",
            ].filter { !$0.isEmpty }.joined(separator: " ")
            let seed = Conformance.seed("quantized_matmul \(shape) \(s.dtype) \(options)")
            let rows = s.dense ? s.tokens : s.tokens * s.k
            let op = GroupedMatmul(
                rows: rows, activeRows: rows, experts: s.experts, inFeatures: s.inFeatures, outFeatures: s.outFeatures,
                epilogue: s.epilogue, gathered: s.fused, activationType: s.dtype, weightFormat: s.format.weightFormat)
            return ConformanceCase(
                op: "quantized_matmul", shape: shape, dtype: s.dtype, options: options, seed: seed, flops: op.flops,
                bytes: op.bytes
            ) { backend in
                var g = SeededGenerator(seed: seed)
                let x = try backend.tensor(g.normals(s.tokens * s.inFeatures), shape: [s.tokens, s.inFeatures], dtype: s.dtype)
                let w = try weights(s, backend, &g)
                if s.dense {
                    return {
                        [CaseOutput("y", try backend.groupedMatmul(x, weights: w, epilogue: s.epilogue), .nmse(for: s.dtype))]
                    }
                }
                let (routing, input, scale) = try MatmulCases.routedInput(
                    backend, x: x, tokens: s.tokens, experts: s.experts, k: s.k, block: s.block, kind: s.kind,
                    fused: s.fused, scale: s.scale, seed: seed, generator: &g)
                return {
                    [CaseOutput("y", try backend.groupedMatmul(
                        input, weights: w, routing: routing, epilogue: s.epilogue, scale: scale, dtype: nil),
                     .nmse(for: s.dtype))]
                }
            }
        }
        func refused(_ what: String, _ body: @escaping @Sendable (any ComputeBackend) throws -> Void) -> ConformanceCase {
            ConformanceCase(
                op: "quantized_matmul", shape: "E=1", dtype: .f32, options: "refused \(what)",
                seed: Conformance.seed("quantized_matmul refused \(what)"), flops: 0, bytes: 0, expectsError: true
            ) { backend in
                { try body(backend); return [] }
            }
        }
        let bytes16 = [UInt8](repeating: 0x11, count: 2 * 1 * 16)
        cases += [
            refused("mxfp4 blocks of 15 bytes") { b in
                _ = try b.prepareMXFP4(
                    blocks: try b.tensor(codes: [UInt8](repeating: 0, count: 30), shape: [1, 2, 1, 15]),
                    scales: try b.tensor(codes: [127, 127], shape: [1, 2, 1]), swiglu: false, interleavedGateUp: false)
            },
            refused("mxfp4 scales shape") { b in
                _ = try b.prepareMXFP4(
                    blocks: try b.tensor(codes: bytes16, shape: [1, 2, 1, 16]),
                    scales: try b.tensor(codes: [127], shape: [1, 1, 1]), swiglu: false, interleavedGateUp: false)
            },
            refused("mxfp4 f32 blocks") { b in
                _ = try b.prepareMXFP4(
                    blocks: try b.tensor([Float](repeating: 0, count: 32), shape: [1, 2, 1, 16], dtype: .f32),
                    scales: try b.tensor(codes: [127, 127], shape: [1, 2, 1]), swiglu: false, interleavedGateUp: false)
            },
            refused("fp8 scale shape") { b in
                _ = try b.prepareFP8(
                    codes: try b.tensor(codes: [UInt8](repeating: 0x38, count: 2 * 130), shape: [1, 2, 130]),
                    scaleInv: try b.tensor([1], shape: [1, 1, 1], dtype: .f32), swiglu: false)
            },
            refused("fp8 swiglu scales of one block row") { b in
                _ = try b.prepareFP8(
                    codes: try b.tensor(codes: [UInt8](repeating: 0x38, count: 4 * 8), shape: [1, 4, 8]),
                    scaleInv: try b.tensor([1], shape: [1, 1, 1], dtype: .f32), swiglu: true)
            },
            refused("u8 activations") { b in
                let w = try b.prepareWeights(
                    try b.tensor([Float](repeating: 0.5, count: 16), shape: [1, 2, 8], dtype: .f32), swiglu: false,
                    pack: true, quantize: .int8)
                _ = try b.groupedMatmul(try b.tensor(codes: [UInt8](repeating: 1, count: 24), shape: [3, 8]), weights: w)
            },
            refused("swiglu epilogue on plain quantized weights") { b in
                let w = try b.prepareWeights(
                    try b.tensor([Float](repeating: 0.5, count: 16), shape: [1, 2, 8], dtype: .f32), swiglu: false,
                    pack: true, quantize: .int4(group: 32, zeroPoint: true))
                _ = try b.groupedMatmul(
                    try b.tensor([Float](repeating: 1, count: 24), shape: [3, 8], dtype: .f32), weights: w, epilogue: .swiglu)
            },
        ]
        return cases
    }

    /// Whole MoE layers with quantized routed and shared experts, device against reference (the
    /// same codes on both, so the float layer's tolerance).
    static var layers: [ConformanceCase] {
        let specs: [(name: String, config: MoEConfig, tokens: Int, dtype: DType, q: WeightQuantization)] = [
            ("deepseek-tiny", .deepSeekTiny, 37, .bf16, .int4(group: 32, zeroPoint: true)),
            ("mixtral-tiny", .mixtralTiny, 5, .bf16, .mxfp4),
        ]
        return specs.map { s in
            let shape = "\(s.name) T=\(s.tokens)"
            let options = "\(s.q)"
            let seed = Conformance.seed("quantized_layer \(shape) \(s.dtype) \(options)")
            let c = s.config
            let format = s.q.format(for: s.dtype)
            return ConformanceCase(
                op: "quantized_layer", shape: shape, dtype: s.dtype, options: options, seed: seed,
                flops: c.flops(tokens: s.tokens),
                bytes: Double(c.experts) * (format.bytes(rows: 2 * c.ffn, k: c.hidden) + format.bytes(rows: c.hidden, k: c.ffn))
            ) { backend in
                let weights = try MoEWeights.random(config: c, backend: backend, dtype: s.dtype, seed: seed)
                let layer = try MoELayer(backend: backend, config: c, weights: weights, quantize: s.q)
                var g = SeededGenerator(seed: seed ^ 0xF00D)
                let x = try backend.tensor(g.normals(s.tokens * c.hidden), shape: [s.tokens, c.hidden], dtype: s.dtype)
                return { [CaseOutput("y", try layer.forward(x).y, .nmse(s.dtype == .f32 ? 1e-11 : 1e-8))] }
            }
        }
    }
}
