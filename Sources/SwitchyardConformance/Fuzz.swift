import Switchyard

/// Random valid configurations, skewed to small and awkward sizes (0, 1, primes, one off a
/// power of two), each compared with the reference like a registered case. Case i of
/// `cases(count:seed:)` is drawn from seed `seed + i` alone, so `--fuzz 1 --seed (seed + i)`
/// replays it.
public enum Fuzz {
    public static func cases(count: Int, seed: UInt64) -> [ConformanceCase] {
        (0..<max(0, count)).map { make(seed: seed &+ UInt64($0)) }
    }

    /// A size drawn from 0…`limit`, most often small or one off a tile.
    static func size(_ g: inout SeededGenerator, _ limit: Int, min lower: Int = 0) -> Int {
        let awkward = [1, 2, 3, 5, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 255, 257]
        let v: Int
        switch g.next() % 8 {
        case 0: v = lower
        case 1, 2: v = awkward[Int(g.next() % UInt64(awkward.count))]
        case 3, 4, 5: v = 1 + Int(g.next() % 32)
        default: v = Int(g.next() % UInt64(limit + 1))
        }
        return Swift.min(limit, Swift.max(lower, v))
    }

    static func pick<T>(_ g: inout SeededGenerator, _ options: [T]) -> T { options[Int(g.next() % UInt64(options.count))] }

    /// A router config with E experts whose options are all valid together.
    static func router(_ g: inout SeededGenerator) -> RouterConfig {
        let experts = pick(&g, [1, 2, 3, 4, 8, 16, 32, 60, 64, 128, 160, 256])
        var groups = 1
        var topKGroups = 1
        if g.next() % 4 == 0 {
            let divisors = (1...Swift.min(64, experts)).filter { experts % $0 == 0 }
            groups = pick(&g, divisors)
            topKGroups = 1 + Int(g.next() % UInt64(groups))
        }
        let reachable = groups == 1 ? experts : topKGroups * (experts / groups)
        let k = Swift.max(1, Swift.min(reachable, pick(&g, [1, 1, 2, 2, 4, 6, 8, reachable])))
        var c = RouterConfig(
            experts: experts, k: k, scoring: g.next() % 3 == 0 ? .sigmoid : .softmax, renormalize: g.next() % 2 == 0,
            routedScale: g.next() % 4 == 0 ? 2.5 : 1, expertGroups: groups, topKGroups: topKGroups)
        if g.next() % 3 == 0 {
            c.capacityFactor = pick(&g, [0.25, 0.5, 1.0, 1.25, 2.0])
            c.dropPriority = g.next() % 2 == 0 ? .tokenOrder : .weight
        }
        return c
    }

    static func make(seed: UInt64) -> ConformanceCase {
        var g = SeededGenerator(seed: seed)
        let dtype = pick(&g, DType.floatingPoint)
        let name = "seed=\(seed)"
        switch g.next() % 7 {
        case 0:
            let rows = size(&g, 300)
            let cols = size(&g, 5000, min: 1)
            let op = Softmax(rows: rows, cols: cols, dtype: dtype)
            return ConformanceCase(
                op: "fuzz softmax", shape: "rows=\(rows) cols=\(cols)", dtype: dtype, options: name, seed: seed, rows: rows,
                flops: op.flops, bytes: op.bytes
            ) { b in
                let x = try b.tensor(
                    RowCases.values(.normal, count: rows * cols, scale: 3, seed: seed), shape: [rows, cols], dtype: dtype)
                return { [CaseOutput("y", try b.softmax(x), .nmse(for: dtype))] }
            }
        case 1:
            let rows = size(&g, 200)
            let cols = size(&g, 5000, min: 1)
            let k = 1 + Int(g.next() % UInt64(Swift.min(cols, g.next() % 2 == 0 ? 16 : cols)))
            let kind = pick(&g, [RowCases.Values.normal, .ties, .special])
            let op = TopK(rows: rows, cols: cols, k: k, dtype: dtype)
            return ConformanceCase(
                op: "fuzz topk", shape: "rows=\(rows) cols=\(cols) k=\(k)", dtype: dtype, options: "\(kind) \(name)",
                seed: seed, rows: rows, flops: op.flops, bytes: op.bytes
            ) { b in
                let x = try b.tensor(
                    RowCases.values(kind, count: rows * cols, scale: 1, seed: seed), shape: [rows, cols], dtype: dtype)
                return {
                    let (v, i) = try b.topK(x, k: k)
                    return [CaseOutput("values", v, .exact), CaseOutput("indices", i, .exact)]
                }
            }
        case 2:
            let tokens = size(&g, 600)
            let c = router(&g)
            let block = pick(&g, [1, 2, 3, 4, 6, 8, 16, 32, 64])
            let useBias = c.expertGroups > 1 && g.next() % 2 == 0
            let kind = pick(&g, ["normal", "normal", "hot", "cold"])
            let gating = GatingOp(tokens: tokens, config: c, hasBias: useBias)
            return ConformanceCase(
                op: "fuzz route", shape: "T=\(tokens) \(RoutingCases.configName(c)) block=\(block)", dtype: .f32,
                options: "\(kind)\(useBias ? " bias" : "") \(name)", seed: seed, rows: tokens, flops: gating.flops,
                bytes: gating.bytes
            ) { b in
                let bias = useBias ? RoutingCases.bias(c.experts, seed: seed) : nil
                let x = try b.tensor(
                    RoutingCases.logits(tokens: tokens, config: c, bias: bias, kind: kind, seed: seed),
                    shape: [tokens, c.experts], dtype: .f32)
                let bt = try bias.map { try b.tensor($0, shape: [c.experts], dtype: .f32) }
                if c.capacityFactor != nil && c.dropPriority == .weight {
                    // Weight-priority dropping ranks assignments by weight: weights computed on
                    // each side may differ in the last place and flip a near tie, so the ids come
                    // from gating and the weights are seeded values both sides share exactly.
                    let w = try b.tensor(RoutingCases.weights(tokens * c.k, seed: seed), shape: [tokens, c.k], dtype: .f32)
                    return {
                        let chosen = try b.gating(x, bias: bt, config: c)
                        let g = try Gating(
                            config: c, tokens: tokens, logits: x, ids: chosen.ids, weights: w, flags: chosen.flags)
                        let r = try b.permute(g, blockSize: block)
                        return try [CaseOutput("ids", r.ids, .exact)] + RoutingCases.routingOutputs(b, r)
                    }
                }
                return {
                    let r = try b.route(x, bias: bt, config: c, blockSize: block)
                    // The routing weights are computed (softmax or sigmoid): compared within f32 tolerance.
                    return try [CaseOutput("ids", r.ids, .exact)] + RoutingCases.routingOutputs(b, r).map {
                        $0.name == "weights" ? CaseOutput("weights", $0.tensor, .nmse(for: .f32)) : $0
                    }
                }
            }
        case 3, 4:
            let tokens = size(&g, 400)
            let experts = pick(&g, [1, 2, 4, 8, 16, 64])
            let k = 1 + Int(g.next() % UInt64(Swift.min(experts, 8)))
            let d = size(&g, 300, min: 1)
            let block = pick(&g, [1, 4, 6, 16])
            let capacity: Double? = g.next() % 3 == 0 ? pick(&g, [0.5, 1.0, 1.5]) : nil
            let out = pick(&g, DType.floatingPoint)
            let combine = g.next() % 2 == 0
            let residual = combine && g.next() % 2 == 0
            let maxRows = Switchyard.Permute(tokens: tokens, k: k, experts: experts, blockSize: block).maxRows
            let shape = "T=\(tokens) d=\(d) E=\(experts) k=\(k) block=\(block)\(capacity.map { " cap=\($0)" } ?? "")"
            if combine {
                let op = Combine(tokens: tokens, k: k, d: d, maxRows: maxRows, inputType: dtype, residual: residual,
                                 outputType: residual ? out : out)
                return ConformanceCase(
                    op: "fuzz combine", shape: shape, dtype: dtype, options: "to \(out)\(residual ? " residual" : "") \(name)",
                    seed: seed, rows: tokens, flops: op.flops, bytes: op.bytes
                ) { b in
                    var r = SeededGenerator(seed: seed ^ 0xC0)
                    let routing = try RoutingCases.randomRouting(
                        b, tokens: tokens, experts: experts, k: k, block: block, capacity: capacity, seed: seed)
                    let ys = try b.tensor(r.normals(maxRows * d), shape: [maxRows, d], dtype: dtype)
                    let res = residual ? try b.tensor(r.normals(tokens * d), shape: [tokens, d], dtype: out) : nil
                    return {
                        [CaseOutput("y", try b.combine(ys, routing: routing, residual: res, dtype: out), .nmse(for: out))]
                    }
                }
            }
            let op = Gather(tokens: tokens, k: k, d: d, maxRows: maxRows, inputType: dtype, outputType: out)
            return ConformanceCase(
                op: "fuzz gather", shape: shape, dtype: dtype, options: "to \(out) \(name)", seed: seed, rows: tokens,
                flops: op.flops, bytes: op.bytes
            ) { b in
                var r = SeededGenerator(seed: seed ^ 0x6A)
                let routing = try RoutingCases.randomRouting(
                    b, tokens: tokens, experts: experts, k: k, block: block, capacity: capacity, seed: seed)
                let x = try b.tensor(r.normals(tokens * d), shape: [tokens, d], dtype: dtype)
                return { [CaseOutput("xs", try b.gather(x, routing: routing, dtype: out), .exact)] }
            }
        case 5:
            let dense = g.next() % 4 == 0
            let tokens = size(&g, 200)
            let experts = dense ? 1 : pick(&g, [1, 2, 3, 8, 16])
            let k = dense ? 1 : 1 + Int(g.next() % UInt64(Swift.min(experts, 4)))
            let inF = size(&g, 200, min: 1)
            let outF = size(&g, 150, min: 1)
            let block = pick(&g, [1, 2, 4, 5, 8, 16])
            let epilogue = pick(&g, Epilogue.allCases)
            let packed = g.next() % 3 != 0
            let gathered = !dense && g.next() % 2 == 0
            let scale = dense ? "none" : pick(&g, ["none", "none", "routing"])
            let wrows = epilogue == .swiglu ? 2 * outF : outF
            let rows = dense ? tokens : tokens * k
            let op = GroupedMatmul(
                rows: rows, activeRows: rows, experts: experts, inFeatures: inF, outFeatures: outF, epilogue: epilogue,
                gathered: gathered, activationType: dtype)
            let shape = dense ? "T=\(tokens) in=\(inF) out=\(outF) dense"
                : "T=\(tokens) k=\(k) E=\(experts) in=\(inF) out=\(outF) block=\(block)"
            let options = [epilogue.rawValue, packed ? "packed" : "plain", gathered ? "gathered" : "",
                           scale == "none" ? "" : "scale=\(scale)", name].filter { !$0.isEmpty }.joined(separator: " ")
            return ConformanceCase(
                op: "fuzz grouped_matmul", shape: shape, dtype: dtype, options: options, seed: seed, rows: tokens,
                flops: op.flops, bytes: op.bytes
            ) { b in
                var r = SeededGenerator(seed: seed ^ 0x33)
                let x = try b.tensor(r.normals(tokens * inF), shape: [tokens, inF], dtype: dtype)
                let w = try b.prepareWeights(
                    b.tensor(r.normals(experts * wrows * inF, scale: 0.2), shape: [experts, wrows, inF], dtype: dtype),
                    swiglu: epilogue == .swiglu, pack: packed)
                if dense {
                    return { [CaseOutput("y", try b.groupedMatmul(x, weights: w, epilogue: epilogue), .nmse(for: dtype))] }
                }
                let routing = try RoutingCases.randomRouting(
                    b, tokens: tokens, experts: experts, k: k, block: block, capacity: nil, seed: seed)
                let a: MatmulInput = gathered ? .gathered(x) : .rows(try b.gather(x, routing: routing, dtype: nil))
                let s: RowScale = scale == "routing" ? .routingWeights : .none
                return {
                    [CaseOutput("y", try b.groupedMatmul(a, weights: w, routing: routing, epilogue: epilogue, scale: s,
                                                         dtype: nil), .nmse(for: dtype))]
                }
            }
        default:
            let c = router(&g)
            let hidden = size(&g, 96, min: 1)
            let ffn = size(&g, 96, min: 1)
            let shared = g.next() % 3 == 0 ? size(&g, 64, min: 1) : 0
            let config = MoEConfig(
                hidden: hidden, ffn: ffn, router: RouterConfig(
                    experts: c.experts, k: c.k, scoring: .softmax, renormalize: c.renormalize,
                    capacityFactor: c.capacityFactor, dropPriority: c.dropPriority),
                sharedFFN: shared, sharedGate: shared > 0 && g.next() % 2 == 0)
            let tokens = size(&g, 200)
            let pack = g.next() % 3 != 0
            return ConformanceCase(
                op: "fuzz moe_layer", shape: "T=\(tokens) hidden=\(hidden) ffn=\(ffn) shared=\(shared) "
                    + RoutingCases.configName(config.router), dtype: dtype, options: "\(pack ? "packed" : "plain") \(name)",
                seed: seed, rows: tokens, flops: config.flops(tokens: tokens), bytes: 0
            ) { b in
                let weights = try MoEWeights.random(config: config, backend: b, dtype: dtype, seed: seed)
                let layer = try MoELayer(backend: b, config: config, weights: weights, pack: pack)
                var r = SeededGenerator(seed: seed ^ 0xF00D)
                let x = try b.tensor(r.normals(tokens * hidden), shape: [tokens, hidden], dtype: dtype)
                return { [CaseOutput("y", try layer.forward(x).y, .nmse(dtype == .f32 ? 1e-11 : 1e-8))] }
            }
        }
    }
}
