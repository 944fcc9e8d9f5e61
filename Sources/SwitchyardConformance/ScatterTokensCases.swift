import Switchyard

/// Cases of `scatterTokens`: `x + g · f` at the chosen rows, x elsewhere.
enum ScatterTokensCases {
    static let shapes: [(b: Int, l: Int, d: Int, slots: Int, layout: TokenInputs.Layout, dtype: DType, f: DType, w: DType?, out: DType?)] = [
        (2, 50, 64, 10, .sorted, .f32, .f32, .f32, nil),
        (3, 200, 100, 37, .shuffled, .f32, .f32, nil, nil),
        (2, 300, 48, 300, .sorted, .bf16, .bf16, .bf16, nil),
        (4, 129, 33, 20, .padded, .f16, .f16, .f32, nil),
        (1, 1, 16, 1, .sorted, .f32, .f32, .f32, nil),
        (5, 64, 1, 9, .shuffled, .f32, .bf16, .f16, nil),
        (3, 256, 256, 32, .sorted, .bf16, .f32, .f32, .f32),
        (2, 40, 64, 0, .sorted, .f16, .f16, nil, nil),
        (8, 512, 128, 64, .sorted, .f32, .f32, .bf16, .bf16),
    ]

    static var cases: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for (b, l, d, slots, layout, dtype, fType, wType, out) in shapes {
            let shape = "B=\(b) L=\(l) d=\(d) C=\(slots)"
            let options = [layout.rawValue, "f \(fType)", wType.map { "w \($0)" } ?? "unweighted", out.map { "to \($0)" } ?? ""]
                .filter { !$0.isEmpty }.joined(separator: " ")
            let seed = Conformance.seed("scatter_tokens \(shape) \(dtype) \(options)")
            let op = ScatterTokens(
                batch: b, length: l, width: d, slots: slots, dtype: dtype, updateDType: fType, weightDType: wType,
                outputDType: out)
            cases.append(
                ConformanceCase(
                    op: "scatter_tokens", shape: shape, dtype: dtype, options: options, seed: seed, flops: op.flops,
                    bytes: op.bytes
                ) { backend in
                    let ids = TokenInputs.indices(b: b, length: l, slots: slots, layout: layout, seed: seed)
                    let x = try backend.tensor(TokenInputs.values(b * l * d, seed: seed), shape: [b, l, d], dtype: dtype)
                    let f = try backend.tensor(
                        TokenInputs.values(b * slots * d, seed: seed, salt: 0xF), shape: [b, slots, d], dtype: fType)
                    let w = try wType.map {
                        try backend.tensor(TokenInputs.values(b * slots, seed: seed, salt: 0x3), shape: [b, slots], dtype: $0)
                    }
                    let i = try backend.tensor(ids, shape: [b, slots])
                    return {
                        let y = try backend.scatterTokens(x, updates: f, indices: i, weights: w, dtype: out)
                        return [CaseOutput("y", y, .nmse(for: out ?? dtype))]
                    }
                })
        }
        // Mixture-of-depths end to end on one backend: tokenTopK picks 1/8 of the tokens by router
        // score, gatherTokens packs them, the block (here the identity: its output is the packed
        // rows) runs, scatterTokens adds its output back weighted by σ(score): x · (1 + σ) at the
        // chosen tokens, x elsewhere.
        for dtype in [DType.f32, .bf16] {
            let (b, l, d) = (4, 600, 64)
            let shape = "B=\(b) L=\(l) d=\(d) ratio=0.125"
            let seed = Conformance.seed("scatter_tokens mod pipeline \(shape) \(dtype)")
            let op = ScatterTokens(
                batch: b, length: l, width: d, slots: l / 8 + (l % 8 == 0 ? 0 : 1), dtype: dtype, weightDType: dtype)
            cases.append(
                ConformanceCase(
                    op: "scatter_tokens", shape: shape, dtype: dtype, options: "mixture-of-depths pipeline", seed: seed,
                    flops: op.flops, bytes: op.bytes
                ) { backend in
                    let scores = try backend.tensor(TokenInputs.values(b * l, seed: seed, salt: 0x5C), shape: [b, l], dtype: dtype)
                    let x = try backend.tensor(TokenInputs.values(b * l * d, seed: seed), shape: [b, l, d], dtype: dtype)
                    return {
                        let (i, w) = try backend.tokenTopK(scores, capacity: .ratio(0.125), weighting: .sigmoid)
                        let h = try backend.gatherTokens(x, indices: i, rows: nil, dtype: nil)
                        let y = try backend.scatterTokens(x, updates: h, indices: i, weights: w, dtype: nil)
                        return [CaseOutput("indices", i, .exact), CaseOutput("y", y, .nmse(for: dtype))]
                    }
                })
        }
        let refused: [(name: String, edit: @Sendable (inout [Int32]) -> Void, fShape: [Int], wShape: [Int]?, wType: DType)] = [
            ("index = L", { $0[2] = 20 }, [2, 5, 8], nil, .f32),
            ("repeated index", { $0[1] = $0[0] }, [2, 5, 8], [2, 5], .f32),
            ("updates shape", { _ in }, [2, 4, 8], nil, .f32),
            ("weights shape", { _ in }, [2, 5, 8], [2, 4], .f32),
            ("i32 weights", { _ in }, [2, 5, 8], [2, 5], .i32),
        ]
        for r in refused {
            let seed = Conformance.seed("scatter_tokens refused \(r.name)")
            cases.append(
                ConformanceCase(
                    op: "scatter_tokens", shape: "B=2 L=20 d=8 C=5", dtype: .f32, options: r.name, seed: seed,
                    flops: 0, bytes: 0, expectsError: true
                ) { backend in
                    var ids = TokenInputs.indices(b: 2, length: 20, slots: 5, layout: .shuffled, seed: seed)
                    r.edit(&ids)
                    let x = try backend.tensor(TokenInputs.values(320, seed: seed), shape: [2, 20, 8], dtype: .f32)
                    let f = try backend.tensor(
                        TokenInputs.values(r.fShape.reduce(1, *), seed: seed, salt: 1), shape: r.fShape, dtype: .f32)
                    let w = try r.wShape.map { s in
                        r.wType == .i32
                            ? try backend.tensor([Int32](repeating: 1, count: s.reduce(1, *)), shape: s)
                            : try backend.tensor(TokenInputs.values(s.reduce(1, *), seed: seed, salt: 2), shape: s, dtype: r.wType)
                    }
                    let i = try backend.tensor(ids, shape: [2, 5])
                    return {
                        let y = try backend.scatterTokens(x, updates: f, indices: i, weights: w, dtype: nil)
                        _ = try backend.floats(y)
                        return [CaseOutput("y", y, .nmse(for: .f32))]
                    }
                })
        }
        return cases
    }
}
