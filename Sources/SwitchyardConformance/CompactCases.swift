import Switchyard

/// Cases of `compact` (token dropping by a keep mask or a score threshold).
enum CompactCases {
    /// Keep-mask distributions.
    enum Mask: String {
        case half, all, none, sparse
    }

    static func mask(_ kind: Mask, count: Int, seed: UInt64) -> [Int32] {
        var g = SeededGenerator(seed: seed)
        switch kind {
        case .all: return [Int32](repeating: 1, count: count)
        case .none: return [Int32](repeating: 0, count: count)
        case .half: return (0..<count).map { _ in Int32(g.next() & 1) }
        case .sparse: return (0..<count).map { _ in g.next() % 50 == 0 ? 1 : 0 }
        }
    }

    static let maskShapes: [(b: Int, l: Int, kind: Mask)] = [
        (3, 100, .half), (2, 77, .all), (2, 77, .none), (1, 1, .all), (1, 1, .none), (3, 10000, .half),
        (2, 40000, .sparse), (0, 10, .half), (2, 0, .half), (64, 197, .half),
    ]

    static func outputs(_ r: (positions: Tensor, counts: Tensor)) -> [CaseOutput] {
        [CaseOutput("positions", r.positions, .exact), CaseOutput("counts", r.counts, .exact)]
    }

    static var cases: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for (b, l, kind) in maskShapes {
            let shape = "B=\(b) L=\(l)"
            let seed = Conformance.seed("compact \(shape) \(kind)")
            let op = Compact(batch: b, length: l, dtype: .i32)
            cases.append(
                ConformanceCase(
                    op: "compact", shape: shape, dtype: .i32, options: kind.rawValue, seed: seed, flops: op.flops,
                    bytes: op.bytes
                ) { backend in
                    let keep = try backend.tensor(mask(kind, count: b * l, seed: seed), shape: [b, l])
                    return { outputs(try backend.compact(keep, threshold: nil)) }
                })
        }
        // Float scores against a threshold, NaN and infinities among them.
        // (L = 40000: past the one-launch path's 8 chunks, the chunked kernels.)
        for (dtype, threshold, b, l) in [
            (DType.f32, Float(0.3), 4, 5000), (.f16, -0.5, 4, 5000), (.bf16, 1.0, 4, 5000), (.bf16, 0.0, 2, 40000),
        ] {
            let shape = "B=\(b) L=\(l)"
            let options = "threshold=\(threshold)"
            let seed = Conformance.seed("compact \(shape) \(dtype) \(options)")
            let op = Compact(batch: b, length: l, dtype: dtype, threshold: threshold)
            cases.append(
                ConformanceCase(
                    op: "compact", shape: shape, dtype: dtype, options: options, seed: seed, flops: op.flops,
                    bytes: op.bytes
                ) { backend in
                    let x = try backend.tensor(
                        TokenTopKCases.scores(.special, count: b * l, seed: seed), shape: [b, l], dtype: dtype)
                    return { outputs(try backend.compact(x, threshold: threshold)) }
                })
        }
        // Refused: a mask value other than 0/1 (raised when read), and bad arguments.
        let refused: [(name: String, dtype: DType, shape: [Int], threshold: Float?)] = [
            ("mask value 2", .i32, [2, 30], nil),
            ("i32 with threshold", .i32, [2, 30], 0.5),
            ("float without threshold", .f32, [2, 30], nil),
            ("NaN threshold", .f32, [2, 30], .nan),
            ("rank 1", .i32, [60], nil),
        ]
        for r in refused {
            let seed = Conformance.seed("compact refused \(r.name)")
            cases.append(
                ConformanceCase(
                    op: "compact", shape: "\(r.shape)", dtype: r.dtype, options: r.name, seed: seed, flops: 0, bytes: 0,
                    expectsError: true
                ) { backend in
                    var m = mask(.half, count: 60, seed: seed)
                    if r.name == "mask value 2" { m[41] = 2 }
                    let keep = r.dtype == .i32
                        ? try backend.tensor(m, shape: r.shape)
                        : try backend.tensor(m.map(Float.init), shape: r.shape, dtype: r.dtype)
                    return {
                        let c = try backend.compact(keep, threshold: r.threshold)
                        _ = try backend.ints(c.positions)
                        return outputs(c)
                    }
                })
        }
        return cases
    }
}
