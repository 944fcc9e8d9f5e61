import Switchyard
import SwitchyardReference

/// Cases of the grouped matmul's parameterized gated epilogue and per-expert output bias
/// (gpt-oss: clamped SwiGLU with α and `up + 1`, biases on gate|up and down, a router's linear
/// bias), over every weight format the matmul reads: float (f32, f16, bf16; packed and in the
/// checkpoint layout) and quantized (int8, int4, int4 with zeros, MXFP4 plain and interleaved as
/// gpt-oss stores it, FP8).
enum GatedEpilogueCases {
    struct Spec {
        /// "f32", "f16", "bf16" (float weights) or a `QuantizedWeightsCases.Format` raw value.
        var format: String
        var packed = true
        var tokens: Int
        var k = 2
        var experts = 4
        var inFeatures = 96
        var outFeatures = 45
        var block = 4
        var gated = true
        var glu: GLUParameters = .gptOSS()
        var bias = true
        var dtype: DType = .f32
        var fused = true
        var scale = "routing"  // "routing", "" (none)
        var dense = false
        var interleaved = false

        var quantized: QuantizedWeightsCases.Format? { QuantizedWeightsCases.Format(rawValue: format) }
        var weightFormat: WeightFormat { quantized?.weightFormat ?? .float(DType(rawValue: format)!) }
    }

    static let gegluOffset = GLUParameters(activation: .geluTanh, upLimit: 3, upOffset: 0.5)
    static let sigmoidGLU = GLUParameters(activation: .sigmoid, alpha: 0.75, gateLimit: 1)

    static var specs: [Spec] {
        var out: [Spec] = []
        // gpt-oss gate|up (clamped SwiGLU, α 1.702, up + 1, bias) for every weight format.
        for (format, packed, dtype) in [("f32", true, DType.f32), ("f32", false, .f32), ("bf16", true, .bf16),
                                        ("f16", false, .f16), ("bf16", false, .bf16)] {
            out.append(Spec(format: format, packed: packed, tokens: 37, dtype: dtype))
        }
        for f in QuantizedWeightsCases.Format.allCases {
            out.append(Spec(format: f.rawValue, tokens: 37, inFeatures: f == .fp8 ? 200 : 96, dtype: .bf16))
        }
        out.append(Spec(format: "mxfp4", tokens: 50, experts: 8, inFeatures: 128, outFeatures: 128, dtype: .bf16,
                        interleaved: true))
        // gpt-oss down: no activation, the bias then the routing weight, for a float and a quantized format.
        for (format, packed) in [("f32", true), ("bf16", false), ("mxfp4", true), ("int8", true)] {
            out.append(Spec(format: format, packed: packed, tokens: 29, inFeatures: 64, outFeatures: 70, gated: false,
                            glu: .swiglu, dtype: format == "bf16" ? .bf16 : .f32, fused: false))
        }
        // The router's linear bias: dense, one expert, logits in f32.
        for packed in [true, false] {
            out.append(Spec(format: "f32", packed: packed, tokens: 33, experts: 1, inFeatures: 64, outFeatures: 8,
                            gated: false, glu: .swiglu, fused: false, scale: "", dense: true))
        }
        // Other parameter sets: GeGLU with an up clamp and offset; sigmoid GLU with α and a gate
        // clamp; plain SwiGLU with a bias only; gpt-oss without a bias.
        out += [
            Spec(format: "f16", tokens: 21, glu: gegluOffset, dtype: .f16),
            Spec(format: "int4-g32", tokens: 21, glu: gegluOffset, dtype: .f32),
            Spec(format: "f32", packed: false, tokens: 21, glu: sigmoidGLU, fused: false, scale: ""),
            Spec(format: "fp8", tokens: 21, inFeatures: 128, glu: sigmoidGLU, dtype: .f32),
            Spec(format: "bf16", tokens: 21, glu: .swiglu, dtype: .bf16),
            Spec(format: "mxfp4", tokens: 21, bias: false, dtype: .bf16, interleaved: true),
            // decode (one token), zero tokens, a dense gated layer with a bias
            Spec(format: "mxfp4", tokens: 1, experts: 16, inFeatures: 256, outFeatures: 128, dtype: .bf16,
                 interleaved: true),
            Spec(format: "f32", tokens: 0, dtype: .f32),
            Spec(format: "bf16", packed: false, tokens: 0, dtype: .bf16),
            Spec(format: "f32", tokens: 30, experts: 1, inFeatures: 64, outFeatures: 40, fused: false, scale: "",
                 dense: true),
        ]
        return out
    }

    static func name(_ s: Spec) -> (shape: String, options: String) {
        let shape = s.dense
            ? "T=\(s.tokens) in=\(s.inFeatures) out=\(s.outFeatures) dense"
            : "T=\(s.tokens) k=\(s.k) E=\(s.experts) in=\(s.inFeatures) out=\(s.outFeatures) block=\(s.block)"
        let options = [
            s.quantized == nil ? "\(s.format)-weights" : s.format, s.quantized == nil ? (s.packed ? "packed" : "plain") : "",
            s.gated ? "glu=\(s.glu)" : "none", s.bias ? "bias" : "", s.fused ? "fused-gather" : "",
            s.scale.isEmpty ? "" : "scale=\(s.scale)", s.interleaved ? "interleaved" : "",
        ].filter { !$0.isEmpty }.joined(separator: " ")
        return (shape, options)
    }

        // E = 2, ffn 3, K 4: gate|up weights [2, 6, 4], down-like [2, 3, 4]; x [5, 4].
    static func call(_ b: any ComputeBackend, gated: Bool, glu: GLUParameters, bias: Tensor?, quantize: Bool = false) throws {
        let rows = gated ? 6 : 3
        let w = try b.prepareWeights(
            try b.tensor((0..<(2 * rows * 4)).map { Float($0 % 7) * 0.1 }, shape: [2, rows, 4], dtype: .f32),
            swiglu: gated, pack: true, quantize: quantize ? .int8 : .none)
        let routing = try RoutingCases.randomRouting(b, tokens: 5, experts: 2, k: 1, block: 4, capacity: nil, seed: 3)
        _ = try b.groupedMatmul(
            .gathered(try b.tensor([Float](repeating: 0.5, count: 20), shape: [5, 4], dtype: .f32)), weights: w,
            routing: routing, epilogue: gated ? .swiglu : .none, glu: glu, bias: bias, scale: .none, dtype: nil)
    }

    static var cases: [ConformanceCase] {
        var cases = specs.map { s in
            let (shape, options) = name(s)
            let seed = Conformance.seed("gated_matmul \(shape) \(s.dtype) \(options)")
            let rows = s.dense ? s.tokens : s.tokens * s.k
            let epilogue: Epilogue = s.gated ? .swiglu : .none
            let op = GroupedMatmul(
                rows: rows, activeRows: rows, experts: s.experts, inFeatures: s.inFeatures, outFeatures: s.outFeatures,
                epilogue: epilogue, gathered: s.fused, activationType: s.dtype, weightFormat: s.weightFormat, glu: s.glu,
                biased: s.bias)
            let wrows = op.weightRows
            return ConformanceCase(
                op: "gated_matmul", shape: shape, dtype: s.dtype, options: options, seed: seed, rows: s.tokens,
                flops: op.flops, bytes: op.bytes
            ) { backend in
                var g = SeededGenerator(seed: seed)
                // Activations ×2 and biases of σ 3: pre-activations often past the clamps.
                let x = try backend.tensor(
                    g.normals(s.tokens * s.inFeatures, scale: 2), shape: [s.tokens, s.inFeatures], dtype: s.dtype)
                let w: ExpertWeights
                if let q = s.quantized {
                    w = try QuantizedWeightsCases.weights(
                        QuantizedWeightsCases.MSpec(
                            format: q, tokens: s.tokens, k: s.k, experts: s.experts, inFeatures: s.inFeatures,
                            outFeatures: s.outFeatures, block: s.block, epilogue: epilogue, dtype: s.dtype,
                            interleaved: s.interleaved),
                        backend, &g)
                } else {
                    w = try backend.prepareWeights(
                        try backend.tensor(
                            g.normals(s.experts * wrows * s.inFeatures, scale: 0.2), shape: [s.experts, wrows, s.inFeatures],
                            dtype: DType(rawValue: s.format)!),
                        swiglu: s.gated, pack: s.packed)
                }
                let bias = s.bias
                    ? try backend.tensor(g.normals(s.experts * wrows, scale: 3), shape: [s.experts, wrows], dtype: .f32) : nil
                let comparison = Comparison.nmse(for: s.dtype)
                if s.dense {
                    return {
                        [CaseOutput("y", try backend.groupedMatmul(
                            .rows(x), weights: w, routing: nil, epilogue: epilogue, glu: s.glu, bias: bias, scale: .none,
                            dtype: s.gated ? nil : .f32), comparison)]
                    }
                }
                let (routing, input, scale) = try MatmulCases.routedInput(
                    backend, x: x, tokens: s.tokens, experts: s.experts, k: s.k, block: s.block, kind: "skewed",
                    fused: s.fused, scale: s.scale, seed: seed, generator: &g)
                return {
                    [CaseOutput("y", try backend.groupedMatmul(
                        input, weights: w, routing: routing, epilogue: epilogue, glu: s.glu, bias: bias, scale: scale,
                        dtype: nil), comparison)]
                }
            }
        }
        func refused(_ what: String, _ match: String, _ body: @escaping @Sendable (any ComputeBackend) throws -> Void)
            -> ConformanceCase
        {
            ConformanceCase(
                op: "gated_matmul", shape: "E=2", dtype: .f32, options: "refused \(what)",
                seed: Conformance.seed("gated_matmul refused \(what)"), flops: 0, bytes: 0, expectsError: true,
                errorMatch: match
            ) { backend in
                { try body(backend); return [] }
            }
        }
        cases += [
            refused("bias of the output width, not the weight rows", "matmul bias") { b in
                try Self.call(b, gated: true, glu: .gptOSS(), bias: try b.tensor([Float](repeating: 1, count: 6), shape: [2, 3], dtype: .f32))
            },
            refused("bias of one expert", "matmul bias") { b in
                try Self.call(b, gated: false, glu: .swiglu, bias: try b.tensor([1, 2, 3], shape: [1, 3], dtype: .f32))
            },
            refused("bf16 bias", "matmul bias") { b in
                try Self.call(b, gated: false, glu: .swiglu, bias: try b.tensor([Float](repeating: 1, count: 6), shape: [2, 3], dtype: .bf16))
            },
            refused("i32 bias on quantized weights", "matmul bias") { b in
                try Self.call(b, gated: true, glu: .gptOSS(), bias: try b.tensor([Int32](repeating: 1, count: 12), shape: [2, 6]), quantize: true)
            },
            refused("glu parameters without the gated epilogue", "GLU parameters") { b in
                try Self.call(b, gated: false, glu: .gptOSS(), bias: nil)
            },
            refused("nan gate limit", "GLU gate limit") { b in
                try Self.call(b, gated: true, glu: GLUParameters(gateLimit: .nan), bias: nil)
            },
            refused("negative up limit", "GLU up limit") { b in
                try Self.call(b, gated: true, glu: GLUParameters(upLimit: -1), bias: nil)
            },
            refused("alpha with gelu", "GLU alpha") { b in
                try Self.call(b, gated: true, glu: GLUParameters(activation: .geluErf, alpha: 2), bias: nil)
            },
            refused("infinite alpha", "GLU alpha") { b in
                try Self.call(b, gated: true, glu: GLUParameters(alpha: .infinity), bias: nil)
            },
            refused("swiglu as the gate activation", "GLU activation") { b in
                try Self.call(b, gated: true, glu: GLUParameters(activation: .swiglu), bias: nil)
            },
        ]
        return cases
    }
}

extension GatedEpilogueCases {
    /// Whole gpt-oss-style layers (router bias, top-k then softmax over k, clamped SwiGLU with
    /// biases), device against reference: float weights, and MXFP4 blocks with interleaved gate|up
    /// as gpt-oss stores them.
    static var layers: [ConformanceCase] {
        let specs: [(tokens: Int, dtype: DType, pack: Bool, mxfp4: Bool)] = [
            (37, .bf16, true, false), (5, .f32, false, false), (21, .bf16, true, true), (1, .f32, true, true),
            (0, .f32, true, true),
        ]
        return specs.map { s in
            let c = MoEConfig.gptOssTiny
            let shape = "gpt-oss-tiny T=\(s.tokens)"
            let options = [s.mxfp4 ? "mxfp4 interleaved" : s.pack ? "packed" : "plain"].joined()
            let seed = Conformance.seed("gpt_oss_layer \(shape) \(s.dtype) \(options)")
            let format: WeightFormat = s.mxfp4 ? .mxfp4 : .float(s.dtype)
            return ConformanceCase(
                op: "gpt_oss_layer", shape: shape, dtype: s.dtype, options: options, seed: seed, rows: s.tokens,
                flops: c.flops(tokens: s.tokens),
                bytes: Double(c.experts) * (format.bytes(rows: 2 * c.ffn, k: c.hidden) + format.bytes(rows: c.hidden, k: c.ffn))
            ) { backend in
                var weights = try MoEWeights.random(config: c, backend: backend, dtype: s.dtype, seed: seed)
                var g = SeededGenerator(seed: seed ^ 0xF00D)
                if s.mxfp4 {
                    func blocks(_ rows: Int, _ k: Int) throws -> (Tensor, Tensor) {
                        let n = c.experts * rows * (k / 32)
                        return (try backend.tensor(
                                    codes: (0..<(n * 16)).map { _ in UInt8(truncatingIfNeeded: g.next()) },
                                    shape: [c.experts, rows, k / 32, 16]),
                                try backend.tensor(codes: (0..<n).map { _ in UInt8(122 + g.next() % 4) },
                                                   shape: [c.experts, rows, k / 32]))
                    }
                    (weights.gateUp, weights.gateUpScales) = try blocks(2 * c.ffn, c.hidden)
                    (weights.down, weights.downScales) = try blocks(c.hidden, c.ffn)
                    weights.gateUpInterleaved = true
                }
                let layer = try MoELayer(backend: backend, config: c, weights: weights, pack: s.pack)
                let x = try backend.tensor(g.normals(s.tokens * c.hidden, scale: 2), shape: [s.tokens, c.hidden], dtype: s.dtype)
                return { [CaseOutput("y", try layer.forward(x).y, .nmse(s.dtype == .f32 ? 1e-11 : 1e-8))] }
            }
        }
    }
}
