import SwitchyardReference
import Switchyard

/// Cases of token merging (ToMe) and unmerging.
enum TokenMergeCases {
    enum Kind: String {
        /// Normal keys, kept clear of near ties.
        case normal
        /// Keys drawn from a few prototypes (one of them zero): exact ties in the partners and
        /// in the scores, which must go to the lower index.
        case ties
        /// Normal keys, each token's scaled by 1e-30, 1 or 1e30 (their squares underflow or
        /// overflow f32; the cosine does not change).
        case extreme
        /// Normal keys shifted by −3 (A) and +3 (B) in every element: every similarity is
        /// negative, so no padding column of a kernel's tile may count as a 0.
        case negative
    }

    struct Spec {
        var batches: Int
        var tokens: Int
        var d: Int
        /// Key width; nil: the keys are x.
        var dk: Int?
        var r: Int
        var protect: Bool
        var dtype: DType
        var keyDType: DType = .f32
        var kind: Kind = .normal
        /// Sizes from earlier merges (small integers) instead of none (ones).
        var sizes: Bool = false
    }

    /// The smallest gap between two distinct similarities (or scores) where the order decides an
    /// integer output: the device ranks f32 similarities, the reference Double ones, and an f32
    /// dot product of unit vectors is off by far less than this.
    static func tieGap(_ dk: Int) -> Double { max(1e-4, Double(dk) * 1e-7) }

    /// Indices of the A tokens whose partner choice or whose place at the r-th score is a near
    /// tie in batch `b` (distinct values closer than `tieGap`).
    static func nearTies(keys: [Float], batch b: Int, tokens l: Int, dk: Int, r: Int, protect: Bool) -> [Int] {
        if r == 0 { return [] }
        let gap = tieGap(dk)
        let sims = Reference.mergeSimilarities(keys: keys, batch: b, tokens: l, dk: dk)
        var bad: [Int] = []
        var scores: [Double] = []
        for (i, row) in sims.enumerated() {
            let best = row.max() ?? -.infinity
            if let second = row.filter({ $0 < best }).max(), best - second < gap { bad.append(i) }
            scores.append(protect && i == 0 ? -.infinity : best)
        }
        let order = scores.indices.sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }
        if r < order.count {
            let (last, next) = (scores[order[r - 1]], scores[order[r]])
            if last != next && last - next < gap { bad.append(order[r]) }
        }
        return bad
    }

    /// Seeded keys `[B, L, dk]`, rounded to `dtype`, clear of near ties: offending A tokens are
    /// drawn again (their rows only, so the draw stays a function of the seed).
    static func keys(batches: Int, tokens l: Int, dk: Int, r: Int, protect: Bool, dtype: DType, kind: Kind,
                     g: inout SeededGenerator) -> [Float]
    {
        if kind == .ties {
            // Prototypes for A positions and for B positions (one of each zero), every A-B
            // similarity equal to another or at least 1e-3 from it. (Sharing prototypes between
            // A and B would give self-similarities of 1 ± rounding: distinct near ties.)
            var a: [[Float]] = []
            var b: [[Float]] = []
            let zero = [Float](repeating: 0, count: dk)
            while true {
                a = (0..<3).map { _ in g.normals(dk).map(dtype.round) } + [zero]
                b = (0..<3).map { _ in g.normals(dk).map(dtype.round) } + [zero]
                let pairs = (0..<4).flatMap { a[$0] + b[$0] }
                let values = Set(Reference.mergeSimilarities(keys: pairs, batch: 0, tokens: 8, dk: dk).flatMap { $0 }).sorted()
                if zip(values, values.dropFirst()).allSatisfy({ $1 - $0 >= 1e-3 }) { break }
            }
            return (0..<batches * l).flatMap { p in (p % l) % 2 == 0 ? a[Int(g.next() % 4)] : b[Int(g.next() % 4)] }
        }
        let scales: [Float] = kind == .extreme ? [1e-30, 1, 1e30] : [1]
        let scale = (0..<batches * l).map { _ in scales[Int(g.next() % UInt64(scales.count))] }
        let shift: Float = kind == .negative ? 3 : 0
        func draw(_ p: Int) -> [Float] {
            g.normals(dk).map { dtype.round($0 * scale[p] + ((p % l) % 2 == 0 ? -shift : shift)) }
        }
        var values = (0..<batches * l).flatMap { draw($0) }
        for b in 0..<batches {
            for _ in 0..<200 {
                let bad = nearTies(keys: values, batch: b, tokens: l, dk: dk, r: r, protect: protect)
                if bad.isEmpty { break }
                for i in bad {
                    let start = (b * l + 2 * i) * dk
                    values.replaceSubrange(start..<(start + dk), with: draw(b * l + 2 * i))
                }
            }
        }
        return values
    }

    /// Sizes as earlier merges leave them: small integers.
    static func sizes(_ n: Int, g: inout SeededGenerator) -> [Float] { (0..<n).map { _ in Float(1 + g.next() % 4) } }

    static var specs: [Spec] {
        [
            // r = 0, a middle r, the largest r with and without the class token, L even and odd
            Spec(batches: 2, tokens: 16, d: 8, dk: nil, r: 0, protect: false, dtype: .f32),
            Spec(batches: 2, tokens: 16, d: 8, dk: nil, r: 4, protect: false, dtype: .f32),
            Spec(batches: 2, tokens: 16, d: 8, dk: nil, r: 8, protect: false, dtype: .f32),
            Spec(batches: 2, tokens: 16, d: 8, dk: nil, r: 7, protect: true, dtype: .f32),
            Spec(batches: 3, tokens: 17, d: 12, dk: 8, r: 8, protect: true, dtype: .f32),
            Spec(batches: 3, tokens: 17, d: 12, dk: 8, r: 8, protect: false, dtype: .f32),
            Spec(batches: 1, tokens: 300, d: 80, dk: nil, r: 150, protect: false, dtype: .f32),
            // L = 1 and 2
            Spec(batches: 1, tokens: 1, d: 5, dk: nil, r: 0, protect: false, dtype: .f32),
            Spec(batches: 2, tokens: 1, d: 5, dk: nil, r: 0, protect: true, dtype: .bf16),
            Spec(batches: 2, tokens: 2, d: 6, dk: nil, r: 1, protect: false, dtype: .f32),
            Spec(batches: 2, tokens: 2, d: 6, dk: nil, r: 0, protect: true, dtype: .f16),
            // ties in partners and scores (d = 1: every similarity is ±1 or 0)
            Spec(batches: 2, tokens: 40, d: 24, dk: 16, r: 12, protect: false, dtype: .f32, kind: .ties),
            Spec(batches: 2, tokens: 40, d: 24, dk: nil, r: 12, protect: true, dtype: .bf16, kind: .ties),
            Spec(batches: 3, tokens: 64, d: 16, dk: 8, r: 20, protect: false, dtype: .f16, keyDType: .f16, kind: .ties),
            Spec(batches: 2, tokens: 9, d: 1, dk: nil, r: 4, protect: false, dtype: .f32, kind: .ties),
            // ties across the CPU match's 64-column panels, and across its column ranges (dk 4096:
            // 128 columns a launch there, 32 where work-items are lanes), the earlier range winning
            Spec(batches: 1, tokens: 300, d: 8, dk: 16, r: 100, protect: true, dtype: .f32, kind: .ties),
            Spec(batches: 1, tokens: 300, d: 8, dk: 4096, r: 100, protect: false, dtype: .f32, kind: .ties),
            // every similarity negative, B tokens not a multiple of any tile
            Spec(batches: 2, tokens: 37, d: 8, dk: 8, r: 10, protect: false, dtype: .f32, kind: .negative),
            // keys whose squares underflow or overflow f32
            Spec(batches: 2, tokens: 50, d: 16, dk: 24, r: 20, protect: true, dtype: .f32, kind: .extreme),
            // sizes from earlier merges
            Spec(batches: 2, tokens: 33, d: 20, dk: 16, r: 10, protect: true, dtype: .f32, sizes: true),
            Spec(batches: 2, tokens: 257, d: 64, dk: 32, r: 64, protect: false, dtype: .f32, sizes: true),
            Spec(batches: 2, tokens: 60, d: 32, dk: 16, r: 15, protect: true, dtype: .bf16, keyDType: .bf16, sizes: true),
            // every storage type, keys in another type than x
            Spec(batches: 2, tokens: 100, d: 48, dk: 16, r: 30, protect: true, dtype: .f16, keyDType: .f16),
            Spec(batches: 2, tokens: 100, d: 48, dk: 16, r: 30, protect: true, dtype: .bf16, keyDType: .bf16),
            Spec(batches: 2, tokens: 100, d: 48, dk: 16, r: 30, protect: true, dtype: .bf16, keyDType: .f32),
            Spec(batches: 1, tokens: 513, d: 32, dk: 16, r: 128, protect: true, dtype: .f32),
            // wide keys: several column ranges per match where work-items are lanes
            Spec(batches: 2, tokens: 70, d: 33, dk: 4096, r: 17, protect: true, dtype: .f32),
            // nothing to merge
            Spec(batches: 0, tokens: 16, d: 8, dk: nil, r: 4, protect: false, dtype: .f32),
            Spec(batches: 2, tokens: 0, d: 8, dk: nil, r: 0, protect: true, dtype: .f32),
            Spec(batches: 2, tokens: 16, d: 0, dk: 8, r: 4, protect: false, dtype: .f32),
        ]
    }

    static func name(_ s: Spec) -> (shape: String, options: String) {
        let shape = "B=\(s.batches) L=\(s.tokens) d=\(s.d)" + (s.dk.map { " dk=\($0)" } ?? "") + " r=\(s.r)"
        var options = [s.protect ? "cls" : "", s.dk != nil && s.keyDType != .f32 ? "keys=\(s.keyDType)" : ""]
        options += [s.kind == .normal ? "" : s.kind.rawValue, s.sizes ? "sizes" : ""]
        return (shape, options.filter { !$0.isEmpty }.joined(separator: " "))
    }

    static var merge: [ConformanceCase] {
        specs.map { s in
            let (shape, options) = name(s)
            let seed = Conformance.seed("token_merge \(shape) \(s.dtype) \(options)")
            let op = TokenMerge(
                batches: s.batches, tokens: s.tokens, dim: s.d, keyDim: s.dk, r: s.r, protectFirst: s.protect,
                dtype: s.dtype, keyDType: s.dk == nil ? nil : s.keyDType, hasSizes: s.sizes)
            return ConformanceCase(
                op: "token_merge", shape: shape, dtype: s.dtype, options: options, seed: seed, flops: op.flops,
                bytes: op.bytes
            ) { backend in
                var g = SeededGenerator(seed: seed)
                let n = s.batches * s.tokens
                let keyValues = keys(
                    batches: s.batches, tokens: s.tokens, dk: s.dk ?? s.d, r: s.r, protect: s.protect,
                    dtype: s.dk == nil ? s.dtype : s.keyDType, kind: s.kind, g: &g)
                let xValues = s.dk == nil ? keyValues : g.normals(n * s.d)
                let x = try backend.tensor(xValues, shape: [s.batches, s.tokens, s.d], dtype: s.dtype)
                let k = try s.dk.map {
                    try backend.tensor(keyValues, shape: [s.batches, s.tokens, $0], dtype: s.keyDType)
                }
                let sz = s.sizes ? try backend.tensor(sizes(n, g: &g), shape: [s.batches, s.tokens], dtype: .f32) : nil
                return {
                    let out = try backend.tokenMerge(x, keys: k, sizes: sz, r: s.r, protectFirst: s.protect)
                    return [
                        CaseOutput("x", out.x, .nmse(for: s.dtype)), CaseOutput("sizes", out.sizes, .nmse(for: .f32)),
                        CaseOutput("sourceMap", out.sourceMap, .exact),
                    ]
                }
            }
        }
    }

    /// Two merges in a row (the second on the first's output and sizes, with its own keys), the
    /// maps composed by an unmerge of the second map, and the second output unmerged both ways.
    static var stacked: [ConformanceCase] {
        [(2, 48, 16, 8, 12, 9, true), (1, 31, 32, 16, 15, 4, false)].map { (b, l, d, dk, r1, r2, cls) in
            let shape = "B=\(b) L=\(l) d=\(d) dk=\(dk) r=\(r1)+\(r2)"
            let options = "two-layers" + (cls ? " cls" : "")
            let seed = Conformance.seed("token_merge \(shape) f32 \(options)")
            let m1 = l - r1
            let first = TokenMerge(batches: b, tokens: l, dim: d, keyDim: dk, r: r1, protectFirst: cls, dtype: .f32, keyDType: .f32)
            let second = TokenMerge(
                batches: b, tokens: m1, dim: d, keyDim: dk, r: r2, protectFirst: cls, dtype: .f32, keyDType: .f32,
                hasSizes: true)
            return ConformanceCase(
                op: "token_merge", shape: shape, dtype: .f32, options: options, seed: seed,
                flops: first.flops + second.flops, bytes: first.bytes + second.bytes
            ) { backend in
                var g = SeededGenerator(seed: seed)
                let k1 = keys(batches: b, tokens: l, dk: dk, r: r1, protect: cls, dtype: .f32, kind: .normal, g: &g)
                let k2 = keys(batches: b, tokens: m1, dk: dk, r: r2, protect: cls, dtype: .f32, kind: .normal, g: &g)
                let x = try backend.tensor(g.normals(b * l * d), shape: [b, l, d], dtype: .f32)
                let keys1 = try backend.tensor(k1, shape: [b, l, dk], dtype: .f32)
                let keys2 = try backend.tensor(k2, shape: [b, m1, dk], dtype: .f32)
                return {
                    let one = try backend.tokenMerge(x, keys: keys1, sizes: nil, r: r1, protectFirst: cls)
                    let two = try backend.tokenMerge(one.x, keys: keys2, sizes: one.sizes, r: r2, protectFirst: cls)
                    let composed = try backend.tokenUnmerge(
                        two.sourceMap.reshaped([b, m1, 1]), sourceMap: one.sourceMap).reshaped([b, l])
                    let once = try backend.tokenUnmerge(two.x, sourceMap: composed)
                    let twice = try backend.tokenUnmerge(backend.tokenUnmerge(two.x, sourceMap: two.sourceMap), sourceMap: one.sourceMap)
                    return [
                        CaseOutput("x", two.x, .nmse(for: .f32)), CaseOutput("sizes", two.sizes, .nmse(for: .f32)),
                        CaseOutput("composedMap", composed, .exact), CaseOutput("unmergedOnce", once, .nmse(for: .f32)),
                        CaseOutput("unmergedTwice", twice, .nmse(for: .f32)),
                    ]
                }
            }
        }
    }

    /// Unmerges through random maps (any row may be copied to many tokens).
    static var unmerge: [ConformanceCase] {
        let shapes: [(b: Int, m: Int, l: Int, d: Int, dtype: DType)] = [
            (2, 12, 16, 8, .f32), (2, 12, 16, 8, .f16), (2, 12, 16, 8, .bf16), (3, 7, 9, 5, .i32),
            (2, 300, 400, 64, .f32), (1, 50, 77, 129, .bf16), (0, 4, 8, 8, .f32), (2, 4, 0, 8, .f32), (2, 5, 9, 0, .f16),
        ]
        return shapes.map { s in
            let shape = "B=\(s.b) M=\(s.m) L=\(s.l) d=\(s.d)"
            let seed = Conformance.seed("token_unmerge \(shape) \(s.dtype)")
            let op = TokenUnmerge(batches: s.b, rows: s.m, tokens: s.l, dim: s.d, dtype: s.dtype)
            return ConformanceCase(
                op: "token_unmerge", shape: shape, dtype: s.dtype, seed: seed, flops: op.flops, bytes: op.bytes
            ) { backend in
                var g = SeededGenerator(seed: seed)
                let map = (0..<s.b * s.l).map { _ in Int32(g.next() % UInt64(s.m)) }
                let n = s.b * s.m * s.d
                let y = s.dtype == .i32
                    ? try backend.tensor((0..<n).map { _ in Int32(truncatingIfNeeded: g.next()) }, shape: [s.b, s.m, s.d])
                    : try backend.tensor(g.normals(n), shape: [s.b, s.m, s.d], dtype: s.dtype)
                let sourceMap = try backend.tensor(map, shape: [s.b, s.l])
                return { [CaseOutput("y", try backend.tokenUnmerge(y, sourceMap: sourceMap), .exact)] }
            }
        }
    }

    /// Inputs both backends must refuse: an error when called, or flags raised on the device and
    /// thrown when the output is read.
    static func x(_ backend: any ComputeBackend, _ shape: [Int], _ g: inout SeededGenerator) throws -> Tensor {
        try backend.tensor(g.normals(shape.reduce(1, *)), shape: shape, dtype: .f32)
    }

    static var errors: [ConformanceCase] {
        typealias Make = @Sendable (any ComputeBackend, inout SeededGenerator) throws -> () throws -> Void
        let cases: [(String, Make)] = [
            ("r past the largest (L=16 cls: 7)", { b, g in
                let t = try x(b, [2, 16, 8], &g)
                return { _ = try b.tokenMerge(t, keys: nil, sizes: nil, r: 8, protectFirst: true) }
            }),
            ("r negative", { b, g in
                let t = try x(b, [2, 16, 8], &g)
                return { _ = try b.tokenMerge(t, keys: nil, sizes: nil, r: -1, protectFirst: false) }
            }),
            ("keys of another length", { b, g in
                let t = try x(b, [2, 16, 8], &g)
                let k = try x(b, [2, 15, 4], &g)
                return { _ = try b.tokenMerge(t, keys: k, sizes: nil, r: 2, protectFirst: false) }
            }),
            ("keys wider than 4096", { b, g in
                let t = try x(b, [1, 4, 2], &g)
                let k = try x(b, [1, 4, 4097], &g)
                return { _ = try b.tokenMerge(t, keys: k, sizes: nil, r: 1, protectFirst: false) }
            }),
            ("sizes f16", { b, g in
                let t = try x(b, [2, 16, 8], &g)
                let s = try b.tensor([Float](repeating: 1, count: 32), shape: [2, 16], dtype: .f16)
                return { _ = try b.tokenMerge(t, keys: nil, sizes: s, r: 2, protectFirst: false) }
            }),
            ("x rank 2", { b, g in
                let t = try x(b, [16, 8], &g)
                return { _ = try b.tokenMerge(t, keys: nil, sizes: nil, r: 2, protectFirst: false) }
            }),
            ("L past 65536", { b, _ in
                let t = try b.tensor([Float](), shape: [1, 65537, 0], dtype: .f32)
                return { _ = try b.tokenMerge(t, keys: nil, sizes: nil, r: 0, protectFirst: false) }
            }),
            ("batches × tokens past 2³¹", { b, _ in
                let t = try b.tensor([Float](), shape: [1 << 21, 1 << 10, 0], dtype: .f32)
                return { _ = try b.tokenMerge(t, keys: nil, sizes: nil, r: 0, protectFirst: false) }
            }),
            ("NaN key", { b, g in
                var values = g.normals(2 * 16 * 8)
                values[77] = .nan
                let t = try b.tensor(values, shape: [2, 16, 8], dtype: .f32)
                return { _ = try b.ints(b.tokenMerge(t, keys: nil, sizes: nil, r: 3, protectFirst: false).sourceMap) }
            }),
            ("infinite key", { b, g in
                let t = try x(b, [2, 16, 8], &g)
                var kv = g.normals(2 * 16 * 4)
                kv[5] = -.infinity
                let k = try b.tensor(kv, shape: [2, 16, 4], dtype: .bf16)
                return { _ = try b.floats(b.tokenMerge(t, keys: k, sizes: nil, r: 3, protectFirst: true).x) }
            }),
            // keys wider than a CPU vector: the bad value in the vector part of a key
            ("NaN key in a wide key", { b, g in
                var values = g.normals(2 * 16 * 40)
                values[3 * 40 + 5] = .nan
                let t = try b.tensor(values, shape: [2, 16, 40], dtype: .f32)
                return { _ = try b.ints(b.tokenMerge(t, keys: nil, sizes: nil, r: 3, protectFirst: false).sourceMap) }
            }),
            ("infinite key in a wide key", { b, g in
                let t = try x(b, [2, 16, 8], &g)
                var kv = g.normals(2 * 16 * 36)
                kv[7 * 36 + 2] = .infinity
                let k = try b.tensor(kv, shape: [2, 16, 36], dtype: .bf16)
                return { _ = try b.floats(b.tokenMerge(t, keys: k, sizes: nil, r: 3, protectFirst: true).x) }
            }),
            ("zero size", { b, g in
                let t = try x(b, [2, 16, 8], &g)
                var sv = [Float](repeating: 2, count: 32)
                sv[19] = 0
                let s = try b.tensor(sv, shape: [2, 16], dtype: .f32)
                return { _ = try b.floats(b.tokenMerge(t, keys: nil, sizes: s, r: 0, protectFirst: false).sizes) }
            }),
            ("NaN size", { b, g in
                let t = try x(b, [2, 16, 8], &g)
                var sv = [Float](repeating: 1, count: 32)
                sv[2] = .nan
                let s = try b.tensor(sv, shape: [2, 16], dtype: .f32)
                return { _ = try b.floats(b.tokenMerge(t, keys: nil, sizes: s, r: 5, protectFirst: false).x) }
            }),
            ("unmerge map entry out of range", { b, g in
                let y = try x(b, [2, 4, 8], &g)
                let map = try b.tensor((0..<16).map { Int32($0 == 11 ? 4 : $0 % 4) }, shape: [2, 8])
                return { _ = try b.floats(b.tokenUnmerge(y, sourceMap: map)) }
            }),
            ("unmerge map negative", { b, g in
                let y = try x(b, [1, 4, 8], &g)
                let map = try b.tensor([0, 1, -1, 3] as [Int32], shape: [1, 4])
                return { _ = try b.floats(b.tokenUnmerge(y, sourceMap: map)) }
            }),
            ("unmerge map f32", { b, g in
                let y = try x(b, [1, 4, 8], &g)
                let map = try b.tensor([0, 1, 2, 3], shape: [1, 4], dtype: .f32)
                return { _ = try b.floats(b.tokenUnmerge(y, sourceMap: map)) }
            }),
        ]
        return cases.map { (what, make) in
            let op = what.hasPrefix("unmerge") ? "token_unmerge" : "token_merge"
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

    static var all: [ConformanceCase] { merge + stacked + unmerge + errors }
}
