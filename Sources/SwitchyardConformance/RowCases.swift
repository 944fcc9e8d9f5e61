import Switchyard

/// Cases of the row-wise ops: softmax and top-k.
enum RowCases {
    /// Input distributions for row ops.
    enum Values: String {
        /// N(0, scale²).
        case normal
        /// Few distinct levels, so many ties (checks ties go to the lower index).
        case ties
        /// Normal values with NaN, ±inf, −0 and +0 sprinkled in.
        case special
    }

    static func values(_ kind: Values, count: Int, scale: Float, seed: UInt64) -> [Float] {
        var g = SeededGenerator(seed: seed)
        switch kind {
        case .normal:
            return g.normals(count, scale: scale)
        case .ties:
            return (0..<count).map { _ in Float(Int(g.next() % 5)) - 2 }
        case .special:
            let specials: [Float] = [.nan, .infinity, -.infinity, -0.0, 0.0]
            return (0..<count).map { _ in
                g.next() % 7 == 0 ? specials[Int(g.next() % 5)] : g.normal()
            }
        }
    }

    static let softmaxShapes: [(rows: Int, cols: Int)] = [
        (0, 5), (1, 1), (1, 7), (3, 16), (5, 33), (64, 64), (17, 1000), (8, 4096), (2, 5000), (257, 129),
        (1024, 8), (31, 384),
    ]

    /// A vocabulary-wide row, stored f16 and bf16: under a 2-work-item rowGroup
    /// (ConformanceTests' softmaxSmallGroups) a work-item's three passes take 75,003 loop steps,
    /// past llvmpipe's 65,535, and the host widens the group there. (Not f32: on PoCL, which
    /// keeps the 2 work-items, a work-item's 25,000-term f32 sum misses the f32 NMSE bound,
    /// 1.9e-11 against 1e-11; so do the 375,000-term sums of the 5.6 million columns that the
    /// default group of 256 would need to pass llvmpipe's limit.)
    static let softmaxLongRows: [(rows: Int, cols: Int)] = [(1, 50_000)]

    static var softmax: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for dtype in DType.floatingPoint {
            for (rows, cols) in softmaxShapes + (dtype == .f32 ? [] : softmaxLongRows) {
                for scale: Float in [1, 8] where scale == 1 || (rows * cols >= 1000 && dtype == .f32) {
                    let shape = "rows=\(rows) cols=\(cols)"
                    let options = scale == 1 ? "" : "scale=\(Int(scale))"
                    let seed = Conformance.seed("softmax \(shape) \(dtype) \(options)")
                    let op = Softmax(rows: rows, cols: cols, dtype: dtype)
                    cases.append(
                        ConformanceCase(
                            op: "softmax", shape: shape, dtype: dtype, options: options, seed: seed, rows: rows, flops: op.flops,
                            bytes: op.bytes
                        ) { backend in
                            let x = try backend.tensor(
                                values(.normal, count: rows * cols, scale: scale, seed: seed), shape: [rows, cols],
                                dtype: dtype)
                            return { [CaseOutput("y", try backend.softmax(x), .nmse(for: dtype))] }
                        })
                }
            }
        }
        return cases
    }

    static let topKShapes: [(rows: Int, cols: Int, k: Int, values: Values)] = [
        (0, 8, 1, .normal), (1, 1, 1, .normal), (1, 8, 8, .normal), (3, 7, 1, .normal), (3, 7, 7, .normal),
        (16, 64, 2, .normal), (33, 100, 10, .normal), (5, 1000, 1000, .normal), (4, 4096, 8, .normal),
        (2, 4096, 4096, .normal), (3, 5000, 17, .normal), (100, 256, 6, .normal), (65, 33, 5, .normal),
        (40, 64, 8, .ties), (7, 129, 129, .ties), (50, 160, 6, .special), (9, 3, 3, .special),
        (2048, 8, 2, .normal), (3, 8192, 64, .normal),
        // Vocabulary-wide rows (Gemma's 262,144 tokens; 150,000 padded to 2¹⁸): the bitonic
        // network's 171 stages pass llvmpipe's 65,535 loop steps per work-item in one launch.
        (1, 262_144, 16, .normal), (2, 150_000, 8, .ties),
    ]

    static var topK: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for (rows, cols, k, kind) in topKShapes {
            for dtype in DType.floatingPoint where dtype == .f32 || cols <= 1000 {
                let shape = "rows=\(rows) cols=\(cols) k=\(k)"
                let options = kind == .normal ? "" : kind.rawValue
                let seed = Conformance.seed("topk \(shape) \(dtype) \(options)")
                let op = TopK(rows: rows, cols: cols, k: k, dtype: dtype)
                cases.append(
                    ConformanceCase(
                        op: "topk", shape: shape, dtype: dtype, options: options, seed: seed, rows: rows, flops: op.flops,
                        bytes: op.bytes
                    ) { backend in
                        let x = try backend.tensor(
                            values(kind, count: rows * cols, scale: 1, seed: seed), shape: [rows, cols], dtype: dtype)
                        return {
                            let (v, i) = try backend.topK(x, k: k)
                            return [CaseOutput("values", v, .exact), CaseOutput("indices", i, .exact)]
                        }
                    })
            }
        }
        return cases
    }
}
