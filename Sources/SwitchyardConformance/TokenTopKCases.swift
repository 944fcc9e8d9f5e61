import Switchyard

/// Cases of `tokenTopK` (mixture-of-depths token selection) and the seeded token inputs the
/// gather, scatter, compact and expand cases share.
enum TokenTopKCases {
    /// Score distributions.
    enum Scores: String {
        case normal
        /// Five levels: many ties, decided by position.
        case ties
        /// Every score equal: the first C positions.
        case constant
        /// NaN, ±inf, ±0 sprinkled among normal values.
        case special
        /// Every score NaN.
        case nan
    }

    static func scores(_ kind: Scores, count: Int, seed: UInt64) -> [Float] {
        var g = SeededGenerator(seed: seed)
        switch kind {
        case .normal: return g.normals(count)
        case .ties: return (0..<count).map { _ in Float(Int(g.next() % 5)) - 2 }
        case .constant: return [Float](repeating: 0.5, count: count)
        case .nan: return [Float](repeating: .nan, count: count)
        case .special:
            let specials: [Float] = [.nan, .infinity, -.infinity, -0.0, 0.0]
            return (0..<count).map { _ in g.next() % 5 == 0 ? specials[Int(g.next() % 5)] : g.normal() }
        }
    }

    static let shapes: [(b: Int, l: Int, capacity: TokenCapacity, kind: Scores, dtypes: [DType], weighting: TokenWeighting)] = [
        (1, 1, .count(1), .normal, [.f32], .score),
        (1, 1, .count(0), .normal, [.f32], .score),
        (3, 100, .count(0), .normal, [.f32], .score),
        (3, 100, .count(100), .normal, [.f32, .bf16], .score),
        (0, 50, .count(10), .normal, [.f32], .score),
        (2, 0, .ratio(0.5), .normal, [.f32], .score),
        (1, 4097, .count(1000), .normal, [.f32], .score),
        (5, 777, .ratio(0.25), .normal, [.f16], .score),
        (8, 4096, .ratio(0.125), .normal, [.f32, .f16, .bf16], .score),
        (2, 32768, .count(4096), .normal, [.f32], .score),
        (2, 40000, .count(9000), .ties, [.f32], .score),
        (1, 40000, .count(40000), .special, [.f32, .bf16], .sigmoid),
        (1, 32768, .count(32768), .ties, [.bf16], .score),
        (1, 32768, .count(12345), .special, [.f32], .score),
        (6, 1000, .count(300), .ties, [.f32], .score),
        (3, 12289, .count(6000), .ties, [.f16], .score),
        (4, 3000, .count(700), .special, [.f32, .bf16], .score),
        (2, 9000, .count(4500), .constant, [.f32], .score),
        (1, 300, .count(100), .nan, [.f32], .score),
        (4, 2000, .ratio(0.3), .normal, [.f32, .bf16], .sigmoid),
        (300, 17, .count(5), .normal, [.f32], .score),
    ]

    static var cases: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for (b, l, capacity, kind, dtypes, weighting) in shapes {
            for dtype in dtypes {
                let shape = "B=\(b) L=\(l) \(capacity)"
                let options = [kind == .normal ? "" : kind.rawValue, weighting == .score ? "" : weighting.rawValue]
                    .filter { !$0.isEmpty }.joined(separator: " ")
                let seed = Conformance.seed("token_topk \(shape) \(dtype) \(options)")
                let op = TokenTopK(
                    batch: b, length: l, capacity: (try? capacity.resolve(length: l)) ?? 0, dtype: dtype,
                    weighting: weighting)
                cases.append(
                    ConformanceCase(
                        op: "token_topk", shape: shape, dtype: dtype, options: options, seed: seed, flops: op.flops,
                        bytes: op.bytes
                    ) { backend in
                        let x = try backend.tensor(scores(kind, count: b * l, seed: seed), shape: [b, l], dtype: dtype)
                        return {
                            let (i, w) = try backend.tokenTopK(x, capacity: capacity, weighting: weighting)
                            return [
                                CaseOutput("indices", i, .exact),
                                CaseOutput("weights", w, weighting == .score ? .exact : .nmse(for: dtype)),
                            ]
                        }
                    })
            }
        }
        // Refused: capacity out of range, a ratio out of 0...1 or NaN, i32 or rank-3 scores.
        let refused: [(name: String, shape: [Int], dtype: DType, capacity: TokenCapacity)] = [
            ("C > L", [2, 10], .f32, .count(11)),
            ("C < 0", [2, 10], .f32, .count(-1)),
            ("ratio 1.5", [2, 10], .f32, .ratio(1.5)),
            ("ratio -0.1", [2, 10], .f32, .ratio(-0.1)),
            ("ratio nan", [2, 10], .f32, .ratio(.nan)),
            ("rank 3", [2, 5, 2], .f32, .count(1)),
            ("i32 scores", [2, 10], .i32, .count(1)),
        ]
        for r in refused {
            let seed = Conformance.seed("token_topk refused \(r.name)")
            cases.append(
                ConformanceCase(
                    op: "token_topk", shape: "\(r.shape) \(r.capacity)", dtype: r.dtype, options: r.name, seed: seed,
                    flops: 0, bytes: 0, expectsError: true
                ) { backend in
                    let n = r.shape.reduce(1, *)
                    let x = r.dtype == .i32
                        ? try backend.tensor((0..<n).map { Int32($0) }, shape: r.shape)
                        : try backend.tensor(scores(.normal, count: n, seed: seed), shape: r.shape, dtype: r.dtype)
                    return {
                        let (i, w) = try backend.tokenTopK(x, capacity: r.capacity, weighting: .score)
                        return [CaseOutput("indices", i, .exact), CaseOutput("weights", w, .exact)]
                    }
                })
        }
        return cases
    }
}

/// Seeded token inputs: activations and index sets.
enum TokenInputs {
    /// How a case's indices `[B, slots]` are laid out.
    enum Layout: String {
        /// C distinct positions per sequence in ascending order (as `tokenTopK` returns them).
        case sorted
        /// C distinct positions in random order.
        case shuffled
        /// A compaction's layout: a random number of kept positions in order, then −1.
        case padded
    }

    /// Indices `[b, slots]` naming positions of sequences of `length` (slots ≤ length).
    static func indices(b: Int, length: Int, slots: Int, layout: Layout, seed: UInt64) -> [Int32] {
        var g = SeededGenerator(seed: seed ^ 0x1D1C)
        var out = [Int32]()
        out.reserveCapacity(b * slots)
        for _ in 0..<b {
            var pool = Array(0..<length)
            let n = layout == .padded ? Int(g.next() % UInt64(slots + 1)) : slots
            for i in 0..<n {
                let j = i + Int(g.next() % UInt64(length - i))
                pool.swapAt(i, j)
            }
            var chosen = Array(pool[0..<n])
            if layout != .shuffled { chosen.sort() }
            out += chosen.map { Int32($0) } + [Int32](repeating: -1, count: slots - n)
        }
        return out
    }

    static func values(_ count: Int, seed: UInt64, salt: UInt64 = 0) -> [Float] {
        var g = SeededGenerator(seed: seed ^ salt)
        return g.normals(count)
    }
}
