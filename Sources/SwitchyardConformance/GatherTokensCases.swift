import Switchyard

/// Cases of `gatherTokens`: chosen rows of `x [B, L, d]` into `[B, rows, d]`.
enum GatherTokensCases {
    static let shapes: [(b: Int, l: Int, d: Int, slots: Int, rows: Int?, layout: TokenInputs.Layout, dtype: DType, out: DType?)] = [
        (2, 50, 64, 10, nil, .sorted, .f32, nil),
        (3, 200, 100, 37, nil, .shuffled, .f16, nil),
        (4, 300, 48, 300, nil, .sorted, .bf16, nil),
        (2, 130, 33, 130, 40, .padded, .f32, nil),
        (1, 1, 16, 1, nil, .sorted, .f32, nil),
        (5, 64, 1, 9, nil, .shuffled, .f32, .bf16),
        (3, 500, 256, 64, nil, .padded, .bf16, .f32),
        (2, 40, 64, 0, nil, .sorted, .f16, nil),
        (0, 40, 64, 5, nil, .sorted, .f32, nil),
        (8, 512, 128, 64, nil, .sorted, .f32, .f16),
    ]

    static var cases: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for (b, l, d, slots, rows, layout, dtype, out) in shapes {
            let shape = "B=\(b) L=\(l) d=\(d) C=\(slots)" + (rows.map { " rows=\($0)" } ?? "")
            let options = [layout.rawValue, out.map { "to \($0)" } ?? ""].filter { !$0.isEmpty }.joined(separator: " ")
            let seed = Conformance.seed("gather_tokens \(shape) \(dtype) \(options)")
            let op = GatherTokens(batch: b, length: l, width: d, slots: slots, rows: rows, dtype: dtype, outputDType: out)
            cases.append(
                ConformanceCase(
                    op: "gather_tokens", shape: shape, dtype: dtype, options: options, seed: seed, flops: op.flops,
                    bytes: op.bytes
                ) { backend in
                    var ids = TokenInputs.indices(b: b, length: l, slots: slots, layout: layout, seed: seed)
                    if let rows {  // a compaction packed into fewer rows: nothing kept past them
                        for s in 0..<b { for j in rows..<slots { ids[s * slots + j] = -1 } }
                    }
                    let x = try backend.tensor(TokenInputs.values(b * l * d, seed: seed), shape: [b, l, d], dtype: dtype)
                    let i = try backend.tensor(ids, shape: [b, slots])
                    return { [CaseOutput("y", try backend.gatherTokens(x, indices: i, rows: rows, dtype: out), .exact)] }
                })
        }
        // Refused: bad indices (raised when the output is read) and bad arguments.
        let refused: [(name: String, edit: @Sendable (inout [Int32]) -> Void, rows: Int?, xType: DType, iType: DType, out: DType?)] = [
            ("index = L", { $0[7] = 20 }, nil, .f32, .i32, nil),
            ("index -2", { $0[3] = -2 }, nil, .f32, .i32, nil),
            ("repeated index", { $0[9] = $0[8] }, nil, .f32, .i32, nil),
            ("kept past rows", { _ in }, 3, .f32, .i32, nil),
            ("f32 indices", { _ in }, nil, .f32, .f32, nil),
            ("i32 x", { _ in }, nil, .i32, .i32, nil),
            ("i32 output", { _ in }, nil, .f32, .i32, .i32),
        ]
        for r in refused {
            let seed = Conformance.seed("gather_tokens refused \(r.name)")
            cases.append(
                ConformanceCase(
                    op: "gather_tokens", shape: "B=2 L=20 d=8 C=5", dtype: r.xType, options: r.name, seed: seed,
                    flops: 0, bytes: 0, expectsError: true
                ) { backend in
                    var ids = TokenInputs.indices(b: 2, length: 20, slots: 5, layout: .sorted, seed: seed)
                    r.edit(&ids)
                    let x = r.xType == .i32
                        ? try backend.tensor([Int32](repeating: 1, count: 320), shape: [2, 20, 8])
                        : try backend.tensor(TokenInputs.values(320, seed: seed), shape: [2, 20, 8], dtype: r.xType)
                    let i = r.iType == .i32
                        ? try backend.tensor(ids, shape: [2, 5])
                        : try backend.tensor(ids.map(Float.init), shape: [2, 5], dtype: r.iType)
                    return {
                        let y = try backend.gatherTokens(x, indices: i, rows: r.rows, dtype: r.out)
                        _ = try backend.floats(y)  // bad indices raise when the output is read
                        return [CaseOutput("y", y, .exact)]
                    }
                })
        }
        return cases
    }
}
