import Switchyard

extension MoEWeights {
    /// Seeded random weights for `config` on `backend` (N(0, 1/fan_in), a small router bias).
    public static func random(config c: MoEConfig, backend: any ComputeBackend, dtype: DType, seed: UInt64) throws
        -> MoEWeights
    {
        var g = SeededGenerator(seed: seed)
        func t(_ shape: [Int], fanIn: Int, _ d: DType? = nil) throws -> Tensor {
            let n = shape.reduce(1, *)
            return try backend.tensor(
                g.normals(n, scale: 1 / Float(fanIn).squareRoot()), shape: shape, dtype: d ?? dtype)
        }
        let h = c.hidden
        var w = MoEWeights(
            router: try t([c.experts, h], fanIn: h),
            bias: c.routerBias ? try backend.tensor(g.normals(c.experts, scale: 0.05), shape: [c.experts], dtype: .f32) : nil,
            gateUp: try t([c.experts, 2 * c.ffn, h], fanIn: h),
            down: try t([c.experts, h, c.ffn], fanIn: c.ffn),
            sharedGateUp: c.sharedFFN > 0 ? try t([2 * c.sharedFFN, h], fanIn: h) : nil,
            sharedDown: c.sharedFFN > 0 ? try t([h, c.sharedFFN], fanIn: c.sharedFFN) : nil,
            sharedGate: c.sharedGate ? try t([1, h], fanIn: h) : nil)
        // gpt-oss biases (drawn after the rest, so other configs' weights are unchanged)
        if c.routerLinearBias { w.routerLinearBias = try t([c.experts], fanIn: 1, .f32) }
        if c.expertBias {
            w.gateUpBias = try t([c.experts, 2 * c.ffn], fanIn: 1, .f32)
            w.downBias = try t([c.experts, h], fanIn: 4, .f32)
        }
        return w
    }
}

/// Whole MoE layers, device against reference.
enum LayerCases {
    static var layers: [ConformanceCase] {
        var specs: [(name: String, config: MoEConfig, tokens: Int, dtype: DType, pack: Bool)] = []
        for (name, config) in [("mixtral-tiny", MoEConfig.mixtralTiny), ("qwen-moe-tiny", .qwenMoETiny),
                               ("deepseek-tiny", .deepSeekTiny)] {
            specs.append((name, config, 100, .f32, true))
            specs.append((name, config, 37, .bf16, true))
            specs.append((name, config, 1, .f32, false))
        }
        specs.append(("mixtral-tiny", .mixtralTiny, 0, .f32, true))
        specs.append(("mixtral-tiny", .mixtralTiny, 5, .f16, false))
        return specs.map { s in
            let shape = "\(s.name) T=\(s.tokens)"
            let options = s.pack ? "packed" : "plain"
            let seed = Conformance.seed("moe_layer \(shape) \(s.dtype) \(options)")
            return ConformanceCase(
                op: "moe_layer", shape: shape, dtype: s.dtype, options: options, seed: seed, rows: s.tokens,
                flops: s.config.flops(tokens: s.tokens),
                bytes: Double(s.config.experts * 3 * s.config.hidden * s.config.ffn * s.dtype.size)
            ) { backend in
                let weights = try MoEWeights.random(config: s.config, backend: backend, dtype: s.dtype, seed: seed)
                let layer = try MoELayer(backend: backend, config: s.config, weights: weights, pack: s.pack)
                var g = SeededGenerator(seed: seed ^ 0xF00D)
                let x = try backend.tensor(
                    g.normals(s.tokens * s.config.hidden), shape: [s.tokens, s.config.hidden], dtype: s.dtype)
                // The whole layer: 10–100× the largest measured error (f32 2.0e-13, f16 9.5e-10,
                // bf16 2.4e-10; a routing decision flipped by rounding would be far above).
                let tolerance = s.dtype == .f32 ? 1e-11 : 1e-8
                return { [CaseOutput("y", try layer.forward(x).y, .nmse(tolerance))] }
            }
        }
    }
}
