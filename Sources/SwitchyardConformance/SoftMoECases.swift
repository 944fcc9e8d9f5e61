import Switchyard

extension SoftMoEWeights {
    /// Seeded random weights for `config` on `backend` (N(0, 1/fan_in)).
    public static func random(config c: SoftMoEConfig, backend: any ComputeBackend, dtype: DType, seed: UInt64) throws
        -> SoftMoEWeights
    {
        var g = SeededGenerator(seed: seed)
        func t(_ shape: [Int], fanIn: Int) throws -> Tensor {
            try backend.tensor(g.normals(shape.reduce(1, *), scale: 1 / Float(fanIn).squareRoot()), shape: shape, dtype: dtype)
        }
        let h = c.hidden
        return SoftMoEWeights(
            phi: try t([c.slots, h], fanIn: h), gateUp: try t([c.experts, 2 * c.ffn, h], fanIn: h),
            down: try t([c.experts, h, c.ffn], fanIn: c.ffn))
    }
}

/// Cases of Soft MoE: dispatch, combine (plain and through a fixed routing) and the whole layer.
enum SoftMoECases {
    /// x `[B, T, d]` and Φᵀ `[n, d]`: normal (Φ scaled 1/√d) around a common component of 1 (slots
    /// are averages over the tokens: around 0 they would cancel to a few large elements, and one
    /// 16-bit rounding flip there, legitimate between f32 and Double sums, weighs like a wrong
    /// store), or integers whose logits are exact in f32 and reach the hundreds ("large": a
    /// softmax that does not subtract its maximum overflows).
    static func inputs(b: Int, t: Int, d: Int, n: Int, large: Bool, g: inout SeededGenerator) -> (x: [Float], phi: [Float]) {
        if large {
            let x = (0..<b * t * d).map { _ in Float(Int(g.next() % 17) - 8) }
            let phi = (0..<n * d).map { _ in Float(Int(g.next() % 9) - 4) }
            return (x, phi)
        }
        return (g.normals(b * t * d).map { $0 + 1 }, g.normals(n * d, scale: 1 / Float(max(d, 1)).squareRoot()))
    }

    static var dispatch: [ConformanceCase] {
        let specs: [(b: Int, t: Int, d: Int, n: Int, dtype: DType, pack: Bool, large: Bool)] = [
            (2, 1, 16, 8, .f32, true, false), (2, 37, 24, 12, .f32, true, false), (1, 5, 16, 16, .f32, false, false),
            (3, 50, 32, 6, .f32, true, false), (2, 37, 24, 12, .f16, true, false), (2, 37, 24, 12, .bf16, false, false),
            (2, 64, 64, 32, .bf16, true, false), (1, 130, 100, 20, .f32, true, false), (2, 40, 64, 16, .f32, true, true),
            (2, 40, 64, 16, .bf16, false, true), (2, 0, 16, 8, .f32, true, false), (1, 16384, 2, 2, .f32, false, false),
            // the most slots: a softmax over a token's 16,384 slots (a lane's loops stay within llvmpipe's budget)
            (1, 3, 2, 16384, .f32, false, false),
        ]
        return specs.map { s in
            let shape = "B=\(s.b) T=\(s.t) d=\(s.d) n=\(s.n)"
            let options = [s.pack ? "packed" : "plain", s.large ? "large-logits" : ""].filter { !$0.isEmpty }
                .joined(separator: " ")
            let seed = Conformance.seed("softmoe_dispatch \(shape) \(s.dtype) \(options)")
            let op = SoftMoEDispatch(batches: s.b, tokens: s.t, dim: s.d, slots: s.n, dtype: s.dtype)
            return ConformanceCase(
                op: "softmoe_dispatch", shape: shape, dtype: s.dtype, options: options, seed: seed, flops: op.flops,
                bytes: op.bytes
            ) { backend in
                var g = SeededGenerator(seed: seed)
                let (xv, pv) = inputs(b: s.b, t: s.t, d: s.d, n: s.n, large: s.large, g: &g)
                let x = try backend.tensor(xv, shape: [s.b, s.t, s.d], dtype: s.dtype)
                let phi = try backend.prepareWeights(
                    backend.tensor(pv, shape: [1, s.n, s.d], dtype: s.dtype), swiglu: false, pack: s.pack)
                return {
                    let out = try backend.softMoEDispatch(x, phi: phi)
                    return [
                        CaseOutput("slots", out.slots, .nmse(for: s.dtype)),
                        CaseOutput("combineWeights", out.combineWeights, .nmse(for: .f32)),
                    ]
                }
            }
        }
    }

    static var combine: [ConformanceCase] {
        // experts × slotsPerExpert = n when routed (through a fixed routing of blocks of 4 rows)
        let specs: [(b: Int, t: Int, n: Int, d: Int, dtype: DType, routed: (experts: Int, block: Int)?)] = [
            (2, 37, 12, 24, .f32, nil), (2, 37, 12, 24, .f16, nil), (2, 37, 12, 24, .bf16, nil), (1, 1, 8, 16, .f32, nil),
            (2, 0, 8, 16, .f32, nil), (2, 37, 12, 24, .f32, (3, 4)), (3, 20, 8, 70, .bf16, (8, 6)),
            (1, 3, 16384, 2, .f32, nil),
        ]
        return specs.map { s in
            let shape = "B=\(s.b) T=\(s.t) n=\(s.n) d=\(s.d)"
            let options = s.routed.map { "routed E=\($0.experts) block=\($0.block)" } ?? ""
            let seed = Conformance.seed("softmoe_combine \(shape) \(s.dtype) \(options)")
            let op = SoftMoECombine(
                batches: s.b, tokens: s.t, slots: s.n, dim: s.d, dtype: s.dtype, outputDType: .f32, routed: s.routed != nil)
            return ConformanceCase(
                op: "softmoe_combine", shape: shape, dtype: s.dtype, options: options, seed: seed, flops: op.flops,
                bytes: op.bytes
            ) { backend in
                var g = SeededGenerator(seed: seed)
                let weights = try backend.tensor(
                    (0..<s.b * s.t * s.n).map { _ in Float(g.unit()) }, shape: [s.b, s.t, s.n], dtype: .f32)
                let routing = try s.routed.map { r in
                    try backend.fixedRouting(
                        ids: (0..<s.b * s.n).map { Int32(($0 % s.n) / (s.n / r.experts)) }, experts: r.experts,
                        blockSize: r.block)
                }
                let rows = routing?.maxRows ?? s.b * s.n
                let ys = try backend.tensor(
                    g.normals(rows * s.d), shape: routing == nil ? [s.b, s.n, s.d] : [rows, s.d], dtype: s.dtype)
                // A sum over 16,384 slots: its rounding error alone measured an NMSE of 9.3e-12 with
                // fma chains and 1.06e-11 with a multiply and an add (rusticl), at the f32 bound
                // of 1e-11, so that case gets 1e-10 (a wrong slot or weight is far above it).
                let comparison: Comparison = s.n > 4096 && s.dtype == .f32 ? .nmse(1e-10) : .nmse(for: s.dtype)
                return {
                    [CaseOutput("y", try backend.softMoECombine(ys, weights: weights, routing: routing, dtype: .f32),
                                comparison)]
                }
            }
        }
    }

    static var layers: [ConformanceCase] {
        let specs: [(b: Int, t: Int, config: SoftMoEConfig, dtype: DType, pack: Bool)] = [
            (2, 37, SoftMoEConfig(hidden: 64, ffn: 96, experts: 4, slotsPerExpert: 2), .f32, true),
            (2, 37, SoftMoEConfig(hidden: 64, ffn: 96, experts: 4, slotsPerExpert: 2), .bf16, true),
            (1, 1, SoftMoEConfig(hidden: 64, ffn: 96, experts: 4, slotsPerExpert: 2), .f32, false),
            (3, 20, SoftMoEConfig(hidden: 48, ffn: 40, experts: 8, slotsPerExpert: 1), .f16, false),
            (1, 5, SoftMoEConfig(hidden: 32, ffn: 64, experts: 4, slotsPerExpert: 4), .f32, true),
        ]
        return specs.map { s in
            let c = s.config
            let shape = "B=\(s.b) T=\(s.t) d=\(c.hidden) ffn=\(c.ffn) E=\(c.experts) S=\(c.slotsPerExpert)"
            let options = s.pack ? "packed" : "plain"
            let seed = Conformance.seed("soft_moe_layer \(shape) \(s.dtype) \(options)")
            return ConformanceCase(
                op: "soft_moe_layer", shape: shape, dtype: s.dtype, options: options, seed: seed,
                flops: c.flops(batches: s.b, tokens: s.t),
                bytes: Double((c.slots * c.hidden + 3 * c.experts * c.hidden * c.ffn) * s.dtype.size)
            ) { backend in
                let weights = try SoftMoEWeights.random(config: c, backend: backend, dtype: s.dtype, seed: seed)
                let layer = try SoftMoELayer(backend: backend, config: c, weights: weights, pack: s.pack)
                var g = SeededGenerator(seed: seed ^ 0xF00D)
                let x = try backend.tensor(g.normals(s.b * s.t * c.hidden), shape: [s.b, s.t, c.hidden], dtype: s.dtype)
                // As the MoE layers: f32 1e-11, 16-bit storage 1e-8 over the chain of stages.
                let tolerance = s.dtype == .f32 ? 1e-11 : 1e-8
                return { [CaseOutput("y", try layer.forward(x).y, .nmse(tolerance))] }
            }
        }
    }

    static var errors: [ConformanceCase] {
        typealias Make = @Sendable (any ComputeBackend, inout SeededGenerator) throws -> () throws -> Void
        let cases: [(String, String, Make)] = [
            ("softmoe_dispatch", "phi of another width", { b, g in
                let x = try TokenMergeCases.x(b, [2, 5, 8], &g)
                let phi = try b.prepareWeights(try TokenMergeCases.x(b, [1, 4, 7], &g), swiglu: false, pack: false)
                return { _ = try b.softMoEDispatch(x, phi: phi) }
            }),
            ("softmoe_dispatch", "phi of two experts", { b, g in
                let x = try TokenMergeCases.x(b, [2, 5, 8], &g)
                let phi = try b.prepareWeights(try TokenMergeCases.x(b, [2, 4, 8], &g), swiglu: false, pack: false)
                return { _ = try b.softMoEDispatch(x, phi: phi) }
            }),
            ("softmoe_dispatch", "T past 16384", { b, g in
                let x = try b.tensor([Float](repeating: 1, count: 16385), shape: [1, 16385, 1], dtype: .f32)
                let phi = try b.prepareWeights(try TokenMergeCases.x(b, [1, 2, 1], &g), swiglu: false, pack: false)
                return { _ = try b.softMoEDispatch(x, phi: phi) }
            }),
            ("softmoe_dispatch", "x rank 2", { b, g in
                let x = try TokenMergeCases.x(b, [5, 8], &g)
                let phi = try b.prepareWeights(try TokenMergeCases.x(b, [1, 4, 8], &g), swiglu: false, pack: false)
                return { _ = try b.softMoEDispatch(x, phi: phi) }
            }),
            ("softmoe_combine", "weights f16", { b, g in
                let ys = try TokenMergeCases.x(b, [2, 4, 8], &g)
                let w = try b.tensor(g.normals(2 * 3 * 4), shape: [2, 3, 4], dtype: .f16)
                return { _ = try b.softMoECombine(ys, weights: w, routing: nil, dtype: nil) }
            }),
            ("softmoe_combine", "ys of other slots", { b, g in
                let ys = try TokenMergeCases.x(b, [2, 5, 8], &g)
                let w = try TokenMergeCases.x(b, [2, 3, 4], &g)
                return { _ = try b.softMoECombine(ys, weights: w, routing: nil, dtype: nil) }
            }),
            ("softmoe_combine", "routing of other slots", { b, g in
                let routing = try b.fixedRouting(ids: [0, 0, 1, 1, 0, 0], experts: 2, blockSize: 2)
                let ys = try TokenMergeCases.x(b, [routing.maxRows, 8], &g)
                let w = try TokenMergeCases.x(b, [2, 3, 4], &g)
                return { _ = try b.softMoECombine(ys, weights: w, routing: routing, dtype: nil) }
            }),
            ("softmoe_combine", "fixed routing id out of range", { b, _ in
                { _ = try b.fixedRouting(ids: [0, 2, 1], experts: 2, blockSize: 2) }
            }),
            ("soft_moe_layer", "phi of another shape", { b, g in
                let c = SoftMoEConfig(hidden: 8, ffn: 8, experts: 2, slotsPerExpert: 2)
                var w = try SoftMoEWeights.random(config: c, backend: b, dtype: .f32, seed: 7)
                w.phi = try TokenMergeCases.x(b, [3, 8], &g)
                return { _ = try SoftMoELayer(backend: b, config: c, weights: w, pack: false) }
            }),
        ]
        return cases.map { (op, what, make) in
            let seed = Conformance.seed("\(op) refuses \(what)")
            return ConformanceCase(
                op: op, shape: "refuses", dtype: .f32, options: what, seed: seed, flops: 0, bytes: 0, expectsError: true
            ) { backend in
                var g = SeededGenerator(seed: seed)
                let run = try make(backend, &g)
                return {
                    try run()
                    return []
                }
            }
        }
    }

    static var all: [ConformanceCase] { dispatch + combine + layers + errors }
}
