import Switchyard

/// Calls every backend must refuse with a `SwitchyardError` naming what is wrong (the same
/// validation runs on both: each op's descriptor), one case per kind of bad input.
enum RefusalCases {
    typealias Make = @Sendable (any ComputeBackend) throws -> [CaseOutput]

    static func refusal(_ op: String, _ what: String, _ match: String, _ body: @escaping Make) -> ConformanceCase {
        ConformanceCase(
            op: op, shape: "refused", dtype: .f32, options: what, seed: Conformance.seed("\(op) refused \(what)"),
            flops: 0, bytes: 0, expectsError: true, errorMatch: match
        ) { backend in { try body(backend) } }
    }

    static func routing(_ b: any ComputeBackend, tokens: Int = 6, experts: Int = 4, k: Int = 2) throws -> Routing {
        var g = SeededGenerator(seed: 5)
        let logits = try b.tensor(g.normals(tokens * experts), shape: [tokens, experts], dtype: .f32)
        return try b.route(logits, config: RouterConfig(experts: experts, k: k), blockSize: 4)
    }

    static var cases: [ConformanceCase] {
        [
            refusal("softmax", "i32 input", "softmax x: expected dtype") { b in
                [CaseOutput("y", try b.softmax(b.tensor([1, 2, 3], shape: [1, 3])), .exact)]
            },
            refusal("softmax", "rank 3", "softmax x: expected shape") { b in
                [CaseOutput("y", try b.softmax(b.tensor([1, 2], shape: [1, 1, 2], dtype: .f32)), .exact)]
            },
            refusal("topk", "k = 0", "topK k = 0") { b in
                [CaseOutput("v", try b.topK(b.tensor([1, 2], shape: [1, 2], dtype: .f32), k: 0).values, .exact)]
            },
            refusal("topk", "k past the row", "topK k = 3") { b in
                [CaseOutput("v", try b.topK(b.tensor([1, 2], shape: [1, 2], dtype: .f32), k: 3).values, .exact)]
            },
            refusal("gating", "logits width against config", "router logits") { b in
                let x = try b.tensor([Float](repeating: 0, count: 10), shape: [2, 5], dtype: .f32)
                return [CaseOutput("ids", try b.gating(x, bias: nil, config: .mixtral()).ids, .exact)]
            },
            refusal("gating", "bias of the wrong shape", "correction bias") { b in
                let x = try b.tensor([Float](repeating: 0, count: 16), shape: [2, 8], dtype: .f32)
                let bias = try b.tensor([0, 0, 0], shape: [3], dtype: .f32)
                return [CaseOutput("ids", try b.gating(x, bias: bias, config: .mixtral()).ids, .exact)]
            },
            refusal("gating", "k above experts", "k = 9") { b in
                let x = try b.tensor([Float](repeating: 0, count: 16), shape: [2, 8], dtype: .f32)
                return [CaseOutput("ids", try b.gating(x, bias: nil, config: RouterConfig(experts: 8, k: 9)).ids, .exact)]
            },
            refusal("permute", "block size 0", "blockSize = 0") { b in
                var g = SeededGenerator(seed: 3)
                let x = try b.tensor(g.normals(32), shape: [4, 8], dtype: .f32)
                return [CaseOutput("rowOf", try b.permute(b.gating(x, bias: nil, config: .mixtral()), blockSize: 0).rowOf, .exact)]
            },
            refusal("gather", "i32 output dtype", "gather output dtype") { b in
                let r = try routing(b)
                let x = try b.tensor([Float](repeating: 1, count: 6 * 3), shape: [6, 3], dtype: .f32)
                return [CaseOutput("xs", try b.gather(x, routing: r, dtype: .i32), .exact)]
            },
            refusal("gather", "rows against the routing's tokens", "gather x") { b in
                let r = try routing(b)
                let x = try b.tensor([Float](repeating: 1, count: 5 * 3), shape: [5, 3], dtype: .f32)
                return [CaseOutput("xs", try b.gather(x, routing: r, dtype: nil), .exact)]
            },
            refusal("combine", "residual of another dtype", "combine residual") { b in
                let r = try routing(b)
                let ys = try b.tensor([Float](repeating: 1, count: r.maxRows * 3), shape: [r.maxRows, 3], dtype: .f32)
                let res = try b.tensor([Float](repeating: 1, count: 6 * 3), shape: [6, 3], dtype: .bf16)
                return [CaseOutput("y", try b.combine(ys, routing: r, residual: res, dtype: .f32), .exact)]
            },
            refusal("combine", "ys rows against maxRows", "combine ys") { b in
                let r = try routing(b)
                let ys = try b.tensor([Float](repeating: 1, count: 6 * 3), shape: [6, 3], dtype: .f32)
                return [CaseOutput("y", try b.combine(ys, routing: r, residual: nil, dtype: nil), .exact)]
            },
            refusal("grouped_matmul", "i32 output dtype", "matmul output dtype") { b in
                let w = try b.prepareWeights(
                    b.tensor([Float](repeating: 0.5, count: 8), shape: [1, 2, 4], dtype: .f32), swiglu: false, pack: true)
                return [CaseOutput("y", try b.groupedMatmul(b.tensor([1, 2, 3, 4], shape: [1, 4], dtype: .f32), weights: w, dtype: .i32), .exact)]
            },
            refusal("grouped_matmul", "SwiGLU without fused weights", "SwiGLU") { b in
                let w = try b.prepareWeights(
                    b.tensor([Float](repeating: 0.5, count: 8), shape: [1, 2, 4], dtype: .f32), swiglu: false, pack: true)
                return [CaseOutput("y", try b.groupedMatmul(b.tensor([1, 2, 3, 4], shape: [1, 4], dtype: .f32), weights: w, epilogue: .swiglu), .exact)]
            },
            refusal("grouped_matmul", "K against the weights", "matmul x") { b in
                let w = try b.prepareWeights(
                    b.tensor([Float](repeating: 0.5, count: 8), shape: [1, 2, 4], dtype: .f32), swiglu: false, pack: true)
                return [CaseOutput("y", try b.groupedMatmul(b.tensor([1, 2, 3], shape: [1, 3], dtype: .f32), weights: w), .exact)]
            },
            refusal("grouped_matmul", "gathered rows against the routing's tokens", "matmul x (gathered)") { b in
                let r = try routing(b)
                let w = try b.prepareWeights(
                    b.tensor([Float](repeating: 0.5, count: 4 * 2 * 3), shape: [4, 2, 3], dtype: .f32), swiglu: false, pack: true)
                return [CaseOutput("y", try b.groupedMatmul(gathering: b.tensor([Float](repeating: 1, count: 15), shape: [5, 3], dtype: .f32), weights: w, routing: r), .exact)]
            },
            refusal("prepare_weights", "odd gate|up rows", "gate|up weights") { b in
                let w = try b.prepareWeights(
                    b.tensor([Float](repeating: 0.5, count: 12), shape: [1, 3, 4], dtype: .f32), swiglu: true, pack: true)
                return [CaseOutput("w", w.weight!, .exact)]
            },
            refusal("tensor", "host values against the shape", "tensor values") { b in
                [CaseOutput("t", try b.tensor([1, 2, 3], shape: [2, 2], dtype: .f32), .exact)]
            },
            refusal("tensor", "negative extent", "extent") { b in
                [CaseOutput("t", try b.tensor([], shape: [-1, 0], dtype: .f32), .exact)]
            },
        ]
    }
}
