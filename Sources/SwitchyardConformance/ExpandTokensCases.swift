import Switchyard

/// Cases of `expandTokens` (packed rows back to their positions) and of the compaction round
/// trip: compact → gatherTokens → expandTokens gives x back.
enum ExpandTokensCases {
    static let shapes: [(b: Int, l: Int, d: Int, slots: Int, rows: Int, layout: TokenInputs.Layout, dtype: DType, base: DType?, out: DType?)] = [
        (2, 50, 64, 50, 50, .padded, .f32, .f32, nil),
        (3, 120, 33, 120, 60, .padded, .f16, nil, nil),
        (2, 300, 48, 30, 30, .shuffled, .bf16, .bf16, nil),
        (1, 1, 16, 1, 1, .sorted, .f32, nil, nil),
        (4, 64, 1, 64, 64, .padded, .f32, .f16, .f16),
        (3, 256, 128, 40, 40, .sorted, .bf16, nil, .f32),
        (2, 90, 32, 90, 45, .padded, .bf16, .f16, .f32),
    ]

    static var cases: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for (b, l, d, slots, rows, layout, dtype, baseType, out) in shapes {
            let shape = "B=\(b) L=\(l) d=\(d) C=\(slots) rows=\(rows)"
            let options = [layout.rawValue, baseType.map { "base \($0)" } ?? "fill", out.map { "to \($0)" } ?? ""]
                .filter { !$0.isEmpty }.joined(separator: " ")
            let seed = Conformance.seed("expand_tokens \(shape) \(dtype) \(options)")
            let op = ExpandTokens(
                batch: b, length: l, width: d, slots: slots, rows: rows, dtype: dtype, baseDType: baseType, fill: -1.5,
                outputDType: out)
            cases.append(
                ConformanceCase(
                    op: "expand_tokens", shape: shape, dtype: dtype, options: options, seed: seed, flops: op.flops,
                    bytes: op.bytes
                ) { backend in
                    var ids = TokenInputs.indices(b: b, length: l, slots: slots, layout: layout, seed: seed)
                    for s in 0..<b { for j in rows..<slots { ids[s * slots + j] = -1 } }
                    let packed = try backend.tensor(
                        TokenInputs.values(b * rows * d, seed: seed), shape: [b, rows, d], dtype: dtype)
                    let base = try baseType.map {
                        try backend.tensor(TokenInputs.values(b * l * d, seed: seed, salt: 0xB), shape: [b, l, d], dtype: $0)
                    }
                    let p = try backend.tensor(ids, shape: [b, slots])
                    return {
                        let y = try backend.expandTokens(packed, positions: p, length: l, base: base, fill: -1.5, dtype: out)
                        return [CaseOutput("y", y, .exact)]
                    }
                })
        }
        // The round trip on one backend: compact, gather into L_max rows, expand onto x: x again.
        for (b, l, d, lMax, dtype) in [(3, 700, 64, 700, DType.f32), (4, 500, 40, 300, .bf16)] {
            let shape = "B=\(b) L=\(l) d=\(d) rows=\(lMax)"
            let seed = Conformance.seed("expand_tokens round trip \(shape) \(dtype)")
            let op = ExpandTokens(batch: b, length: l, width: d, slots: l, rows: lMax, dtype: dtype, baseDType: dtype)
            cases.append(
                ConformanceCase(
                    op: "expand_tokens", shape: shape, dtype: dtype, options: "compact round trip", seed: seed,
                    flops: op.flops, bytes: op.bytes
                ) { backend in
                    var g = SeededGenerator(seed: seed)
                    // At most lMax kept per sequence: keep each position with probability lMax / (2l).
                    let keep = (0..<(b * l)).map { _ in Int32(g.next() % UInt64(2 * l) < UInt64(lMax) ? 1 : 0) }
                    let x = try backend.tensor(TokenInputs.values(b * l * d, seed: seed), shape: [b, l, d], dtype: dtype)
                    let mask = try backend.tensor(keep, shape: [b, l])
                    return {
                        let (positions, counts) = try backend.compact(mask, threshold: nil)
                        let packed = try backend.gatherTokens(x, indices: positions, rows: lMax, dtype: nil)
                        let y = try backend.expandTokens(packed, positions: positions, length: l, base: x, fill: 0, dtype: nil)
                        return [CaseOutput("y", y, .exact), CaseOutput("packed", packed, .exact), CaseOutput("counts", counts, .exact)]
                    }
                })
        }
        let refused: [(name: String, edit: @Sendable (inout [Int32]) -> Void, rows: Int, baseShape: [Int]?)] = [
            ("repeated position", { $0[4] = $0[3] }, 5, nil),
            ("kept past rows", { _ in }, 3, nil),
            ("rows > slots", { _ in }, 6, nil),
            ("base shape", { _ in }, 5, [2, 19, 8]),
        ]
        for r in refused {
            let seed = Conformance.seed("expand_tokens refused \(r.name)")
            cases.append(
                ConformanceCase(
                    op: "expand_tokens", shape: "B=2 L=20 d=8 C=5", dtype: .f32, options: r.name, seed: seed,
                    flops: 0, bytes: 0, expectsError: true
                ) { backend in
                    var ids = TokenInputs.indices(b: 2, length: 20, slots: 5, layout: .sorted, seed: seed)
                    r.edit(&ids)
                    let packed = try backend.tensor(
                        TokenInputs.values(2 * r.rows * 8, seed: seed), shape: [2, r.rows, 8], dtype: .f32)
                    let base = try r.baseShape.map {
                        try backend.tensor(TokenInputs.values($0.reduce(1, *), seed: seed, salt: 1), shape: $0, dtype: .f32)
                    }
                    let p = try backend.tensor(ids, shape: [2, 5])
                    return {
                        let y = try backend.expandTokens(packed, positions: p, length: 20, base: base, fill: 0, dtype: nil)
                        _ = try backend.floats(y)
                        return [CaseOutput("y", y, .exact)]
                    }
                })
        }
        return cases
    }
}
