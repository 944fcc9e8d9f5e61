import Switchyard

/// Cases of the grouped expert matmul (and its dense form).
enum MatmulCases {
    /// The routed input of a matmul case: a random routing (`RoutingCases.randomRouting`), x's
    /// rows gathered into expert order (or left to the matmul's fused gather), and the row scale
    /// `scale` names: "routing" (the routing weights), "row" (a random one per row, drawn from
    /// `generator`) or none.
    static func routedInput(
        _ backend: any ComputeBackend, x: Tensor, tokens: Int, experts: Int, k: Int, block: Int, kind: String,
        fused: Bool, scale: String, seed: UInt64, generator g: inout SeededGenerator
    ) throws -> (routing: Routing, input: MatmulInput, scale: RowScale) {
        let routing = try RoutingCases.randomRouting(
            backend, tokens: tokens, experts: experts, k: k, block: block, capacity: nil, seed: seed, kind: kind)
        let input: MatmulInput = fused ? .gathered(x) : .rows(try backend.gather(x, routing: routing, dtype: nil))
        switch scale {
        case "routing": return (routing, input, .routingWeights)
        case "row":
            let scales = try backend.tensor(
                (0..<routing.maxRows).map { _ in Float(g.unit()) }, shape: [routing.maxRows], dtype: .f32)
            return (routing, input, .perRow(scales))
        default: return (routing, input, .none)
        }
    }

    struct Spec {
        var tokens: Int
        var k: Int
        var experts: Int
        var inFeatures: Int
        var outFeatures: Int
        var block: Int
        var epilogue: Epilogue
        var dtype: DType
        var packed: Bool
        var fused: Bool = false
        var kind: String = "skewed"
        var scale: String = ""  // "", "routing", "row"
        var dense: Bool = false
    }

    static var specs: [Spec] {
        var out: [Spec] = []
        // Every epilogue, dtype and weight layout on a ragged shape that fits no tile evenly.
        for epilogue in Epilogue.allCases {
            for dtype in DType.floatingPoint {
                for packed in [true, false] {
                    out.append(Spec(tokens: 67, k: 2, experts: 8, inFeatures: 70, outFeatures: 45, block: 4,
                                    epilogue: epilogue, dtype: dtype, packed: packed))
                }
            }
        }
        for packed in [true, false] {
            out += [
                // fused gather, larger shapes, and the routing weight applied in the epilogue
                Spec(tokens: 128, k: 2, experts: 8, inFeatures: 128, outFeatures: 96, block: 4, epilogue: .swiglu,
                     dtype: .f32, packed: packed, fused: true),
                Spec(tokens: 100, k: 6, experts: 16, inFeatures: 64, outFeatures: 130, block: 4, epilogue: .none,
                     dtype: .bf16, packed: packed, fused: true, scale: "routing"),
                Spec(tokens: 100, k: 2, experts: 8, inFeatures: 33, outFeatures: 64, block: 16, epilogue: .silu,
                     dtype: .f16, packed: packed, scale: "row"),
                // one expert taking (nearly) every row, and experts left empty
                Spec(tokens: 200, k: 1, experts: 8, inFeatures: 64, outFeatures: 64, block: 4, epilogue: .swiglu,
                     dtype: .f32, packed: packed, kind: "hot"),
                Spec(tokens: 150, k: 2, experts: 8, inFeatures: 48, outFeatures: 72, block: 4, epilogue: .geluTanh,
                     dtype: .f32, packed: packed, kind: "empty"),
                Spec(tokens: 40, k: 8, experts: 8, inFeatures: 16, outFeatures: 17, block: 8, epilogue: .none,
                     dtype: .f32, packed: packed, kind: "uniform"),
                // expert 0 with one row, row 0 (read from source row 0), padded: a tile whose only
                // real row is 0, among enough rows an expert that no decode path takes them
                Spec(tokens: 40, k: 2, experts: 4, inFeatures: 64, outFeatures: 64, block: 4, epilogue: .none,
                     dtype: .f32, packed: packed, kind: "lone"),
                // decode: a handful of tokens, 1-6 rows per expert
                Spec(tokens: 3, k: 2, experts: 8, inFeatures: 256, outFeatures: 128, block: 4, epilogue: .swiglu,
                     dtype: .bf16, packed: packed, fused: true),
                Spec(tokens: 1, k: 6, experts: 64, inFeatures: 64, outFeatures: 32, block: 4, epilogue: .none,
                     dtype: .f32, packed: packed),
                // zero tokens
                Spec(tokens: 0, k: 2, experts: 8, inFeatures: 32, outFeatures: 32, block: 4, epilogue: .swiglu,
                     dtype: .f32, packed: packed),
                // dense (router / shared expert)
                Spec(tokens: 77, k: 1, experts: 1, inFeatures: 96, outFeatures: 8, block: 4, epilogue: .none,
                     dtype: .f32, packed: packed, dense: true),
                Spec(tokens: 130, k: 1, experts: 1, inFeatures: 64, outFeatures: 100, block: 4, epilogue: .swiglu,
                     dtype: .bf16, packed: packed, dense: true),
                Spec(tokens: 5, k: 1, experts: 1, inFeatures: 40, outFeatures: 1, block: 4, epilogue: .none,
                     dtype: .f32, packed: packed, scale: "row", dense: true),
                // narrow outputs (the dot-product path where N is well below the panel): a router's one
                // score per token with k off every vector width, a long k (a lane's loops near their
                // budget), an activation, and routed rows with SwiGLU and with experts left empty
                Spec(tokens: 300, k: 1, experts: 1, inFeatures: 259, outFeatures: 1, block: 4, epilogue: .none,
                     dtype: .bf16, packed: packed, dense: true),
                Spec(tokens: 3, k: 1, experts: 1, inFeatures: 10000, outFeatures: 1, block: 4, epilogue: .none,
                     dtype: .f32, packed: packed, dense: true),
                // a long k (Mixtral's down projection): devices with a loop limit run it in k slices
                Spec(tokens: 9, k: 2, experts: 4, inFeatures: 14336, outFeatures: 40, block: 4, epilogue: .swiglu,
                     dtype: .bf16, packed: packed),
                // (13 rows: more than split-k takes, so that lanes devices run the work-group
                // kernel's k slices; the row or few of the other long-k cases run split-k there)
                Spec(tokens: 13, k: 1, experts: 1, inFeatures: 20000, outFeatures: 72, block: 4, epilogue: .none,
                     dtype: .bf16, packed: packed, dense: true),
                // two rows (a shared expert at decode): a work-item's panels run together (the
                // register kernel's panel groups), through k slices, the last group short
                Spec(tokens: 2, k: 1, experts: 1, inFeatures: 20000, outFeatures: 72, block: 4, epilogue: .none,
                     dtype: .bf16, packed: packed, dense: true),
                Spec(tokens: 61, k: 1, experts: 1, inFeatures: 37, outFeatures: 2, block: 4, epilogue: .silu,
                     dtype: .f16, packed: packed, dense: true),
                Spec(tokens: 50, k: 2, experts: 4, inFeatures: 70, outFeatures: 2, block: 4, epilogue: .swiglu,
                     dtype: .f32, packed: packed, fused: true, scale: "routing"),
                Spec(tokens: 40, k: 2, experts: 8, inFeatures: 24, outFeatures: 3, block: 8, epilogue: .none,
                     dtype: .f16, packed: packed, kind: "empty"),
            ]
        }
        return out
    }

    static var grouped: [ConformanceCase] {
        specs.map { s in
            let shape = s.dense
                ? "T=\(s.tokens) in=\(s.inFeatures) out=\(s.outFeatures) dense"
                : "T=\(s.tokens) k=\(s.k) E=\(s.experts) in=\(s.inFeatures) out=\(s.outFeatures) block=\(s.block)"
            let options = [s.epilogue.rawValue, s.packed ? "packed" : "plain", s.fused ? "fused-gather" : "",
                           s.kind == "skewed" ? "" : s.kind, s.scale.isEmpty ? "" : "scale=\(s.scale)"]
                .filter { !$0.isEmpty }.joined(separator: " ")
            let seed = Conformance.seed("grouped_matmul \(shape) \(s.dtype) \(options)")
            let rows = s.dense ? s.tokens : s.tokens * s.k
            let op = GroupedMatmul(
                rows: rows, activeRows: rows, experts: s.experts, inFeatures: s.inFeatures, outFeatures: s.outFeatures,
                epilogue: s.epilogue, gathered: s.fused, activationType: s.dtype)
            let wrows = op.weightRows
            return ConformanceCase(
                op: "grouped_matmul", shape: shape, dtype: s.dtype, options: options, seed: seed, rows: s.tokens,
                flops: op.flops,
                bytes: op.bytes
            ) { backend in
                var g = SeededGenerator(seed: seed)
                let x = try backend.tensor(
                    g.normals(s.tokens * s.inFeatures), shape: [s.tokens, s.inFeatures], dtype: s.dtype)
                let w = try backend.prepareWeights(
                    backend.tensor(
                        g.normals(s.experts * wrows * s.inFeatures, scale: 0.2), shape: [s.experts, wrows, s.inFeatures],
                        dtype: s.dtype),
                    swiglu: s.epilogue == .swiglu, pack: s.packed)
                if s.dense {
                    let scale: RowScale = s.scale == "row"
                        ? .perRow(try backend.tensor((0..<s.tokens).map { _ in Float(g.unit()) }, shape: [s.tokens],
                                                     dtype: .f32))
                        : .none
                    return {
                        [CaseOutput("y", try backend.groupedMatmul(
                            x, weights: w, epilogue: s.epilogue, scale: scale), .nmse(for: s.dtype))]
                    }
                }
                let (routing, input, scale) = try routedInput(
                    backend, x: x, tokens: s.tokens, experts: s.experts, k: s.k, block: s.block, kind: s.kind,
                    fused: s.fused, scale: s.scale, seed: seed, generator: &g)
                return {
                    [CaseOutput("y", try backend.groupedMatmul(
                        input, weights: w, routing: routing, epilogue: s.epilogue, scale: scale, dtype: nil),
                     .nmse(for: s.dtype))]
                }
            }
        }
    }
}
