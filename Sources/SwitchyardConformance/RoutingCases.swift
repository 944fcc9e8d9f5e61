import SwitchyardReference
import Switchyard

/// Cases of the MoE routing ops: gating, permute, route (both), gather, combine, expert choice
/// and routing statistics.
enum RoutingCases {
    // MARK: inputs

    /// Router logits for `config`: N(0, scale²), or few levels (ties), or with a skew that sends
    /// every token to expert `hot`, or with expert `cold` never chosen. When a bias is used,
    /// tokens whose choice has a near tie (two distinct values closer than 1e-5 where the order
    /// matters) are drawn again: the device ranks f32 values, the reference Double ones, and a
    /// near tie would make the integer outputs depend on rounding rather than on the definition.
    static func logits(
        tokens: Int, config c: RouterConfig, bias: [Float]?, kind: String, seed: UInt64
    ) -> [Float] {
        var g = SeededGenerator(seed: seed)
        let e = c.experts
        func draw() -> [Float] {
            switch kind {
            case "ties": return (0..<e).map { _ in Float(Int(g.next() % 3)) - 1 }
            case "hot": return (0..<e).map { $0 == 3 % e ? 20 : g.normal() }
            case "cold": return (0..<e).map { $0 == e - 1 ? -30 : g.normal() }
            default: return g.normals(e, scale: 2)
            }
        }
        var out = [Float]()
        out.reserveCapacity(tokens * e)
        for _ in 0..<tokens {
            var row = draw()
            var tries = 0
            while bias != nil && kind != "ties" && hasNearTie(row, c, bias!) && tries < 100 {
                row = draw()
                tries += 1
            }
            out += row
        }
        return out
    }

    static func nearTie(_ sorted: [Double], _ count: Int) -> Bool {
        for i in stride(from: 1, to: min(count + 1, sorted.count), by: 1) {
            let gap = sorted[i - 1] - sorted[i]
            if gap > 0 && gap < 1e-5 { return true }
        }
        return false
    }

    static func hasNearTie(_ row: [Float], _ c: RouterConfig, _ bias: [Float]) -> Bool {
        let choice = Reference.choiceValues(row[...], bias: bias, scoring: c.scoring)
        let gs = c.experts / c.expertGroups
        var allowed = Array(0..<c.experts)
        if c.expertGroups > 1 {
            let groupValues = (0..<c.expertGroups).map { grp -> Double in
                let m = choice[(grp * gs)..<((grp + 1) * gs)].sorted(by: >)
                return m[0] + (gs > 1 ? m[1] : 0)
            }
            if nearTie(groupValues.sorted(by: >), c.topKGroups) { return true }
            // Pairs inside a group matter too (which two are the best two).
            for grp in 0..<c.expertGroups where nearTie(choice[(grp * gs)..<((grp + 1) * gs)].sorted(by: >), 2) {
                return true
            }
            let kept = Set(
                groupValues.indices.sorted { groupValues[$0] > groupValues[$1] }.prefix(c.topKGroups))
            allowed = allowed.filter { kept.contains($0 / gs) }
        }
        return nearTie(allowed.map { choice[$0] }.sorted(by: >), c.k)
    }

    static func bias(_ experts: Int, seed: UInt64) -> [Float] {
        var g = SeededGenerator(seed: seed ^ 0xB1A5)
        return (0..<experts).map { _ in g.normal() * 0.1 }
    }

    /// Random expert ids `[T·k]` (distinct within a token) with a distribution: uniform, skewed
    /// (a few experts get most), one expert taking everything possible, expert 0 left empty, or
    /// expert 0 given token 0's first choice alone ("lone": the first row of the expert order is
    /// row 0, read from source row 0, with padding after it).
    static func ids(tokens: Int, k: Int, experts: Int, kind: String, seed: UInt64) -> [Int32] {
        var g = SeededGenerator(seed: seed)
        var out = [Int32]()
        out.reserveCapacity(tokens * k)
        for t in 0..<tokens {
            var chosen: [Int32] = []
            while chosen.count < k {
                var e: Int
                switch kind {
                case "skewed": e = Int(Double(experts) * pow(g.unit(), 3))
                case "hot": e = chosen.isEmpty ? 1 % experts : Int(g.next() % UInt64(experts))
                case "empty": e = experts == 1 ? 0 : 1 + Int(g.next() % UInt64(experts - 1))
                case "lone":
                    e = (t == 0 && chosen.isEmpty) || experts == 1 ? 0 : 1 + Int(g.next() % UInt64(experts - 1))
                default: e = Int(g.next() % UInt64(experts))
                }
                e = min(e, experts - 1)
                if (kind == "empty" || kind == "lone") && k >= experts { e = Int(g.next() % UInt64(experts)) }
                if !chosen.contains(Int32(e)) { chosen.append(Int32(e)) }
            }
            out += chosen
        }
        return out
    }

    /// Positive random weights `[T·k]` (quantized so exact ties occur).
    static func weights(_ n: Int, seed: UInt64) -> [Float] {
        var g = SeededGenerator(seed: seed ^ 0x5EED)
        return (0..<n).map { _ in Float(1 + Int(g.next() % 1000)) / 1000 }
    }

    // MARK: cases

    static func configName(_ c: RouterConfig) -> String {
        var parts = ["E=\(c.experts)", "k=\(c.k)", c.scoring.rawValue]
        if c.renormalize { parts.append("renorm") }
        if c.routedScale != 1 { parts.append("scale=\(c.routedScale)") }
        if c.expertGroups > 1 { parts.append("groups=\(c.expertGroups)/\(c.topKGroups)") }
        if let f = c.capacityFactor { parts.append("cap=\(f) \(c.dropPriority.rawValue)") }
        return parts.joined(separator: " ")
    }

    static func gatingOutputs(_ backend: any ComputeBackend, _ g: Gating) throws -> [CaseOutput] {
        try backend.check(flags: g.flags)
        return [CaseOutput("ids", g.ids, .exact), CaseOutput("weights", g.weights, .nmse(for: .f32))]
    }

    static var gating: [ConformanceCase] {
        var specs: [(tokens: Int, config: RouterConfig, bias: Bool, kind: String, dtype: DType)] = []
        for e in [8, 64, 160, 256, 384, 512] {
            for k in Set([1, 2, 6, 8, e]).sorted() where k <= e {
                specs.append((e >= 256 ? 300 : 1000, RouterConfig(experts: e, k: k), false, "normal", .f32))
            }
        }
        specs += [
            (0, .mixtral(), false, "normal", .f32),
            (1, .mixtral(), false, "normal", .f32),
            (65536, RouterConfig(experts: 64, k: 6, renormalize: false), false, "normal", .f32),
            // k > 64 ranks every expert (gating_rank), tokens strided over its grid's second
            // dimension past 49,152
            (50_000, RouterConfig(experts: 72, k: 72, scoring: .sigmoid, renormalize: true), true, "normal", .f32),
            (16384, RouterConfig(experts: 64, k: 6, renormalize: false), false, "normal", .bf16),
            (4096, .mixtral(), false, "normal", .f16),
            (4096, .mixtral(), false, "normal", .bf16),
            (777, .qwenMoE(), false, "normal", .f32),
            (777, .qwenMoE(experts: 60, k: 4, renormalize: true), false, "ties", .f32),
            (500, RouterConfig(experts: 64, k: 6, scoring: .sigmoid, renormalize: false), false, "normal", .f32),
            (500, RouterConfig(experts: 64, k: 6, scoring: .sigmoid, renormalize: true, routedScale: 2.5), false,
             "normal", .f32),
            (500, RouterConfig(experts: 64, k: 6, scoring: .sigmoid), true, "normal", .f32),
            (500, RouterConfig(experts: 64, k: 6, scoring: .softmax), true, "normal", .f32),
            (300, .deepSeekV3(), true, "normal", .f32),
            (300, .deepSeekV3(), true, "normal", .bf16),
            (300, .deepSeekV3(), false, "normal", .f32),
            (300, .deepSeekV3(), true, "ties", .f32),
            (300, .deepSeekV3(experts: 256, k: 8, groups: 8, topKGroups: 8), true, "normal", .f32),
            (200, .deepSeekV3(experts: 160, k: 6, groups: 8, topKGroups: 3), true, "normal", .f32),
            (200, .deepSeekV3(experts: 64, k: 8, groups: 64, topKGroups: 8), true, "normal", .f32),
            (200, RouterConfig(experts: 64, k: 4, expertGroups: 8, topKGroups: 2), false, "normal", .f32),
            (200, RouterConfig(experts: 384, k: 8, scoring: .sigmoid, expertGroups: 8, topKGroups: 1), true, "normal",
             .f32),
            (1000, .mixtral(), false, "hot", .f32),
            (1000, .mixtral(), false, "cold", .f32),
            (257, .mixtral(), false, "ties", .f32),
        ]
        var cases = specs.map { s -> ConformanceCase in
            let shape = "T=\(s.tokens) \(configName(s.config))"
            let options = [s.bias ? "bias" : "", s.kind == "normal" ? "" : s.kind].filter { !$0.isEmpty }
                .joined(separator: " ")
            let seed = Conformance.seed("gating \(shape) \(s.dtype) \(options)")
            let biasValues = s.bias ? bias(s.config.experts, seed: seed) : nil
            let op = GatingOp(tokens: s.tokens, config: s.config, logitType: s.dtype, hasBias: s.bias)
            return ConformanceCase(
                op: "gating", shape: shape, dtype: s.dtype, options: options, seed: seed, rows: s.tokens, flops: op.flops,
                bytes: op.bytes
            ) { backend in
                let x = try backend.tensor(
                    logits(tokens: s.tokens, config: s.config, bias: biasValues, kind: s.kind, seed: seed),
                    shape: [s.tokens, s.config.experts], dtype: s.dtype)
                let b = try biasValues.map { try backend.tensor($0, shape: [s.config.experts], dtype: .f32) }
                return { try gatingOutputs(backend, try backend.gating(x, bias: b, config: s.config)) }
            }
        }
        // NaN and infinite logits must be refused, not routed.
        for (special, name) in [(Float.nan, "nan"), (Float.infinity, "inf")] {
            for c in [RouterConfig.mixtral(), .deepSeekV3()] {
                let shape = "T=33 \(configName(c))"
                let seed = Conformance.seed("gating \(shape) \(name)")
                cases.append(
                    ConformanceCase(
                        op: "gating", shape: shape, dtype: .f32, options: name, seed: seed, flops: 0, bytes: 0,
                        expectsError: true, errorMatch: "router logits: NaN or infinite"
                    ) { backend in
                        var values = logits(tokens: 33, config: c, bias: nil, kind: "normal", seed: seed)
                        values[17 * c.experts + 5] = special
                        let x = try backend.tensor(values, shape: [33, c.experts], dtype: .f32)
                        return { try gatingOutputs(backend, try backend.gating(x, bias: nil, config: c)) }
                    })
            }
        }
        return cases
    }

    static func routingOutputs(_ backend: any ComputeBackend, _ r: Routing) throws -> [CaseOutput] {
        try backend.check(flags: r.flags)
        return [
            CaseOutput("counts", r.counts, .exact), CaseOutput("offsets", r.offsets, .exact),
            CaseOutput("tileExpert", r.tileExpert, .exact), CaseOutput("rowOf", r.rowOf, .exact),
            CaseOutput("assignmentOf", r.assignmentOf, .exact), CaseOutput("weights", r.weights, .exact),
            CaseOutput("dropped", r.dropped, .exact), CaseOutput("routedCounts", r.routedCounts, .exact),
        ]
    }

    static var permute: [ConformanceCase] {
        var specs: [(tokens: Int, experts: Int, k: Int, block: Int, kind: String, capacity: Double?,
                     priority: RouterConfig.DropPriority)] = []
        for (t, e, k) in [(0, 8, 2), (1, 8, 2), (5, 8, 8), (100, 8, 2), (1000, 64, 6), (4096, 160, 6),
                          (2048, 256, 8), (300, 384, 8), (16384, 64, 6), (65536, 64, 6), (70, 8, 1)] {
            for block in [1, 16, 64] {
                specs.append((t, e, k, block, "uniform", nil, .tokenOrder))
            }
        }
        specs += [
            (1000, 8, 2, 16, "hot", nil, .tokenOrder), (1000, 64, 6, 4, "hot", nil, .tokenOrder),
            (1000, 8, 2, 16, "empty", nil, .tokenOrder), (1000, 64, 6, 5, "empty", nil, .tokenOrder),
            (4096, 64, 6, 64, "skewed", nil, .tokenOrder), (3000, 8, 8, 7, "uniform", nil, .tokenOrder),
        ]
        for priority in [RouterConfig.DropPriority.tokenOrder, .weight] {
            for (factor, kind) in [(1.0, "skewed"), (1.25, "uniform"), (0.5, "hot"), (2.0, "skewed")] {
                specs.append((2000, 8, 2, 16, kind, factor, priority))
                specs.append((4096, 64, 6, 64, kind, factor, priority))
            }
            specs.append((16384, 8, 1, 64, "skewed", 1.25, priority))
            // One expert over capacity with 40,000 assignments: the weight-priority select walks
            // them 16 times (1 in 64 bits); with a small work-group (ConformanceTests runs these
            // with 16) a 64-pass select passed llvmpipe's 65,535-iteration loop budget.
            specs.append((40000, 8, 1, 64, "hot", 0.5, priority))
            specs.append((0, 8, 1, 64, "uniform", 1.0, priority))
            specs.append((10, 64, 6, 1, "uniform", 0.1, priority))
        }
        // One expert holding 1,000,000 assignments: one work-group of 256 (llvmpipe's rowGroup)
        // walks them 17 times, 66,400 loop steps a work-item, past llvmpipe's 65,535; the host
        // splits the select over work-groups there.
        specs.append((1_000_000, 2, 1, 64, "hot", 0.5, .weight))
        var cases = specs.map { s -> ConformanceCase in
            let config = RouterConfig(
                experts: s.experts, k: s.k, capacityFactor: s.capacity, dropPriority: s.priority)
            let shape = "T=\(s.tokens) E=\(s.experts) k=\(s.k) block=\(s.block)"
            let options = [s.kind, s.capacity.map { "cap=\($0) \(s.priority.rawValue)" } ?? ""]
                .filter { !$0.isEmpty }.joined(separator: " ")
            let seed = Conformance.seed("permute \(shape) \(options)")
            let n = s.tokens * s.k
            let op = Permute(tokens: s.tokens, k: s.k, experts: s.experts, blockSize: s.block)
            return ConformanceCase(
                op: "permute", shape: shape, dtype: .i32, options: options, seed: seed, rows: s.tokens, flops: op.flops,
                bytes: op.bytes
            ) { backend in
                let ids = try backend.tensor(
                    ids(tokens: s.tokens, k: s.k, experts: s.experts, kind: s.kind, seed: seed), shape: [s.tokens, s.k])
                let w = try backend.tensor(weights(n, seed: seed), shape: [s.tokens, s.k], dtype: .f32)
                let flags = try backend.tensor([0, 0] as [Int32], shape: [2])
                let logits = try backend.tensor(
                    [Float](repeating: 0, count: s.tokens * s.experts), shape: [s.tokens, s.experts], dtype: .f32)
                let g = try Gating(config: config, tokens: s.tokens, logits: logits, ids: ids, weights: w, flags: flags)
                return { try routingOutputs(backend, try backend.permute(g, blockSize: s.block)) }
            }
        }
        // An expert id out of range is refused.
        let seed = Conformance.seed("permute bad id")
        cases.append(
            ConformanceCase(
                op: "permute", shape: "T=50 E=8 k=2 block=4", dtype: .i32, options: "id out of range", seed: seed,
                flops: 0, bytes: 0, expectsError: true, errorMatch: "expert ids: an expert index is out of range"
            ) { backend in
                var values = ids(tokens: 50, k: 2, experts: 8, kind: "uniform", seed: seed)
                values[37] = 8
                let ids = try backend.tensor(values, shape: [50, 2])
                let w = try backend.tensor(weights(100, seed: seed), shape: [50, 2], dtype: .f32)
                let flags = try backend.tensor([0, 0] as [Int32], shape: [2])
                let logits = try backend.tensor([Float](repeating: 0, count: 50 * 8), shape: [50, 8], dtype: .f32)
                let g = try Gating(config: .mixtral(), tokens: 50, logits: logits, ids: ids, weights: w, flags: flags)
                return { try routingOutputs(backend, try backend.permute(g, blockSize: 4)) }
            })
        return cases
    }

    /// Gating then permutation in one call, for the presets and the capacity options.
    static var route: [ConformanceCase] {
        let specs: [(tokens: Int, config: RouterConfig, bias: Bool, block: Int, kind: String)] = [
            (2048, .mixtral(), false, 16, "normal"),
            (1000, .mixtral(), false, 16, "hot"),
            (1000, .mixtral(), false, 16, "cold"),
            (512, .qwenMoE(), false, 32, "normal"),
            (300, .deepSeekV3(), true, 16, "normal"),
            (4096, .switchTransformer(), false, 64, "normal"),
            (1024, .switchTransformer(experts: 8, capacityFactor: 1.0), false, 64, "hot"),
            (1024, RouterConfig(experts: 8, k: 2, capacityFactor: 1.0, dropPriority: .weight), false, 16, "normal"),
            (1024, RouterConfig(experts: 64, k: 6, capacityFactor: 1.25, dropPriority: .weight), false, 16, "normal"),
        ]
        return specs.map { s in
            let shape = "T=\(s.tokens) \(configName(s.config)) block=\(s.block)"
            let options = [s.bias ? "bias" : "", s.kind == "normal" ? "" : s.kind].filter { !$0.isEmpty }
                .joined(separator: " ")
            let seed = Conformance.seed("route \(shape) \(options)")
            let biasValues = s.bias ? bias(s.config.experts, seed: seed) : nil
            let gating = GatingOp(tokens: s.tokens, config: s.config, hasBias: s.bias)
            let permute = Permute(tokens: s.tokens, k: s.config.k, experts: s.config.experts, blockSize: s.block)
            return ConformanceCase(
                op: "route", shape: shape, dtype: .f32, options: options, seed: seed, rows: s.tokens,
                flops: gating.flops + permute.flops, bytes: gating.bytes + permute.bytes
            ) { backend in
                let x = try backend.tensor(
                    logits(tokens: s.tokens, config: s.config, bias: biasValues, kind: s.kind, seed: seed),
                    shape: [s.tokens, s.config.experts], dtype: .f32)
                let b = try biasValues.map { try backend.tensor($0, shape: [s.config.experts], dtype: .f32) }
                return {
                    let r = try backend.route(x, bias: b, config: s.config, blockSize: s.block)
                    return try [CaseOutput("ids", r.ids, .exact)] + routingOutputs(backend, r).map {
                        $0.name == "weights" ? CaseOutput("weights", $0.tensor, .nmse(for: .f32)) : $0
                    }
                }
            }
        }
    }

    /// A routing of random ids for the data-movement cases.
    static func randomRouting(
        _ backend: any ComputeBackend, tokens: Int, experts: Int, k: Int, block: Int, capacity: Double?, seed: UInt64,
        kind: String = "skewed"
    ) throws -> Routing {
        let config = RouterConfig(experts: experts, k: k, capacityFactor: capacity)
        let ids = try backend.tensor(
            ids(tokens: tokens, k: k, experts: experts, kind: kind, seed: seed), shape: [tokens, k])
        var g = SeededGenerator(seed: seed ^ 0x77)
        let w = try backend.tensor((0..<(tokens * k)).map { _ in Float(g.unit()) }, shape: [tokens, k], dtype: .f32)
        let flags = try backend.tensor([0, 0] as [Int32], shape: [2])
        let logits = try backend.tensor(
            [Float](repeating: 0, count: tokens * experts), shape: [tokens, experts], dtype: .f32)
        return try backend.permute(
            Gating(config: config, tokens: tokens, logits: logits, ids: ids, weights: w, flags: flags), blockSize: block)
    }

    static let movementShapes: [(tokens: Int, d: Int, experts: Int, k: Int, block: Int, capacity: Double?)] = [
        (0, 64, 8, 2, 16, nil), (1, 1, 8, 2, 1, nil), (7, 33, 8, 8, 4, nil), (100, 64, 8, 2, 16, 1.0),
        (257, 130, 64, 6, 16, nil), (64, 4096, 64, 6, 64, 1.25), (1024, 512, 8, 2, 64, nil),
        (16384, 64, 64, 6, 64, nil), (500, 100, 160, 8, 8, 0.5),
    ]

    static var gather: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for s in movementShapes {
            for dtype in DType.floatingPoint {
                let shape = "T=\(s.tokens) d=\(s.d) E=\(s.experts) k=\(s.k) block=\(s.block)"
                let options = s.capacity.map { "cap=\($0)" } ?? ""
                let seed = Conformance.seed("gather \(shape) \(dtype) \(options)")
                let op = Gather(
                    tokens: s.tokens, k: s.k, d: s.d,
                    maxRows: Reference.maxRows(assignments: s.tokens * s.k, experts: s.experts, blockSize: s.block),
                    inputType: dtype)
                cases.append(
                    ConformanceCase(
                        op: "gather", shape: shape, dtype: dtype, options: options, seed: seed, rows: s.tokens, flops: op.flops,
                        bytes: op.bytes
                    ) { backend in
                        var g = SeededGenerator(seed: seed)
                        let x = try backend.tensor(g.normals(s.tokens * s.d), shape: [s.tokens, s.d], dtype: dtype)
                        let r = try randomRouting(
                            backend, tokens: s.tokens, experts: s.experts, k: s.k, block: s.block, capacity: s.capacity,
                            seed: seed)
                        return { [CaseOutput("xs", try backend.gather(x, routing: r, dtype: nil), .exact)] }
                    })
            }
        }
        // Storage conversion on the way: f32 activations dispatched as bf16.
        let seed = Conformance.seed("gather convert")
        cases.append(
            ConformanceCase(
                op: "gather", shape: "T=300 d=96 E=8 k=2 block=16", dtype: .bf16, options: "from f32", seed: seed,
                flops: 0,
                bytes: Gather(
                    tokens: 300, k: 2, d: 96, maxRows: Reference.maxRows(assignments: 600, experts: 8, blockSize: 16),
                    inputType: .f32, outputType: .bf16
                ).bytes
            ) { backend in
                var g = SeededGenerator(seed: seed)
                let x = try backend.tensor(g.normals(300 * 96), shape: [300, 96], dtype: .f32)
                let r = try randomRouting(backend, tokens: 300, experts: 8, k: 2, block: 16, capacity: nil, seed: seed)
                return { [CaseOutput("xs", try backend.gather(x, routing: r, dtype: .bf16), .exact)] }
            })
        return cases
    }

    static var combine: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for s in movementShapes {
            for dtype in DType.floatingPoint {
                for residual in [false, true] where residual == false || s.tokens % 2 == 1 || s.d == 4096 {
                    let shape = "T=\(s.tokens) d=\(s.d) E=\(s.experts) k=\(s.k) block=\(s.block)"
                    let options = [s.capacity.map { "cap=\($0)" } ?? "", residual ? "residual" : ""]
                        .filter { !$0.isEmpty }.joined(separator: " ")
                    let seed = Conformance.seed("combine \(shape) \(dtype) \(options)")
                    let rows = Reference.maxRows(assignments: s.tokens * s.k, experts: s.experts, blockSize: s.block)
                    cases.append(
                        ConformanceCase(
                            op: "combine", shape: shape, dtype: dtype, options: options, seed: seed, rows: s.tokens,
                            flops: Combine(
                                tokens: s.tokens, k: s.k, d: s.d, maxRows: rows, inputType: dtype, residual: residual
                            ).flops,
                            bytes: Combine(
                                tokens: s.tokens, k: s.k, d: s.d, maxRows: rows, inputType: dtype, residual: residual
                            ).bytes
                        ) { backend in
                            var g = SeededGenerator(seed: seed)
                            let ys = try backend.tensor(g.normals(rows * s.d), shape: [rows, s.d], dtype: dtype)
                            let res = residual
                                ? try backend.tensor(g.normals(s.tokens * s.d), shape: [s.tokens, s.d], dtype: dtype)
                                : nil
                            let r = try randomRouting(
                                backend, tokens: s.tokens, experts: s.experts, k: s.k, block: s.block,
                                capacity: s.capacity, seed: seed)
                            return {
                                [CaseOutput("y", try backend.combine(ys, routing: r, residual: res, dtype: nil),
                                            .nmse(for: dtype))]
                            }
                        })
                }
            }
        }
        return cases
    }

    /// Expert-choice scores with near ties (where the order matters) redrawn, as for gating.
    static func expertChoiceLogits(tokens: Int, experts: Int, capacity: Int, scoring: RouterConfig.Scoring, seed: UInt64)
        -> [Float]
    {
        var g = SeededGenerator(seed: seed)
        var logits = g.normals(tokens * experts, scale: 2)
        // Redrawn until no chosen pair is a near tie (the device ranks f32 scores, the reference
        // Double ones); the redrawn tokens in ascending order, so the draws are a pure function
        // of the seed (a Set's iteration order changes from process to process).
        for _ in 0..<1000 {
            var scores = [Double](repeating: 0, count: tokens * experts)
            for t in 0..<tokens {
                let s = Reference.scores(logits[(t * experts)..<((t + 1) * experts)], scoring)
                for e in 0..<experts { scores[t * experts + e] = s[e] }
            }
            var redraw = Set<Int>()
            for e in 0..<experts {
                let order = (0..<tokens).sorted { scores[$0 * experts + e] > scores[$1 * experts + e] }
                for i in stride(from: 1, to: min(capacity + 1, order.count), by: 1) {
                    let a = scores[order[i - 1] * experts + e]
                    let b = scores[order[i] * experts + e]
                    if a - b > 0 && a - b < 1e-6 * a { redraw.insert(order[i]) }
                }
            }
            if redraw.isEmpty { break }
            for t in redraw.sorted() { for e in 0..<experts { logits[t * experts + e] = g.normal() * 2 } }
        }
        return logits
    }

    static var expertChoice: [ConformanceCase] {
        let specs: [(tokens: Int, experts: Int, k: Int, factor: Double, scoring: RouterConfig.Scoring)] = [
            (0, 8, 2, 1, .softmax), (1, 8, 2, 1, .softmax), (64, 8, 2, 1, .softmax), (1000, 8, 2, 1.25, .softmax),
            (1000, 64, 6, 1, .softmax), (2048, 64, 1, 2, .sigmoid), (300, 160, 8, 0.5, .softmax),
            (4096, 8, 8, 1, .softmax), (100, 8, 8, 8, .sigmoid),
        ]
        return specs.map { s in
            let config = RouterConfig(experts: s.experts, k: s.k, scoring: s.scoring, capacityFactor: s.factor)
            let capacity = min(s.tokens, config.capacity(tokens: s.tokens)!)
            let shape = "T=\(s.tokens) E=\(s.experts) k=\(s.k) cap=\(s.factor)"
            let seed = Conformance.seed("expert_choice \(shape) \(s.scoring)")
            return ConformanceCase(
                op: "expert_choice", shape: shape, dtype: .f32, options: s.scoring.rawValue, seed: seed, rows: s.tokens,
                flops: ExpertChoiceOp(tokens: s.tokens, experts: s.experts, capacity: capacity).flops,
                bytes: ExpertChoiceOp(tokens: s.tokens, experts: s.experts, capacity: capacity).bytes
            ) { backend in
                let x = try backend.tensor(
                    expertChoiceLogits(
                        tokens: s.tokens, experts: s.experts, capacity: capacity, scoring: s.scoring, seed: seed),
                    shape: [s.tokens, s.experts], dtype: .f32)
                return {
                    let r = try backend.expertChoice(x, config: config)
                    try backend.check(flags: r.flags)
                    return [CaseOutput("tokens", r.tokens, .exact), CaseOutput("weights", r.weights, .nmse(for: .f32))]
                }
            }
        }
    }

    static var routingStats: [ConformanceCase] {
        let specs: [(tokens: Int, config: RouterConfig, kind: String)] = [
            (0, .mixtral(), "normal"), (1, .mixtral(), "normal"), (2048, .mixtral(), "normal"),
            (4096, .switchTransformer(), "hot"), (1000, RouterConfig(experts: 64, k: 6, renormalize: false), "cold"),
            (16384, RouterConfig(experts: 64, k: 6, capacityFactor: 1.0), "normal"),
            (500, RouterConfig(experts: 64, k: 6, scoring: .sigmoid), "normal"),
        ]
        return specs.map { s in
            let shape = "T=\(s.tokens) \(configName(s.config))"
            let options = s.kind == "normal" ? "" : s.kind
            let seed = Conformance.seed("routing_stats \(shape) \(options)")
            return ConformanceCase(
                op: "routing_stats", shape: shape, dtype: .f32, options: options, seed: seed, rows: s.tokens,
                flops: RoutingStatsOp(tokens: s.tokens, experts: s.config.experts, k: s.config.k).flops,
                bytes: RoutingStatsOp(tokens: s.tokens, experts: s.config.experts, k: s.config.k).bytes
            ) { backend in
                let x = try backend.tensor(
                    logits(tokens: s.tokens, config: s.config, bias: nil, kind: s.kind, seed: seed),
                    shape: [s.tokens, s.config.experts], dtype: .f32)
                let r = try backend.route(x, config: s.config, blockSize: 16)
                return {
                    let st = try backend.routingStats(r)
                    return [
                        CaseOutput("tokensPerExpert", try backend.tensor(st.tokensPerExpert.map { Int32($0) },
                                                                         shape: [s.config.experts]), .exact),
                        CaseOutput("dropped", try backend.tensor([Int32(st.dropped)], shape: [1]), .exact),
                        CaseOutput("meanProbability", try backend.tensor(st.meanProbability, shape: [s.config.experts],
                                                                         dtype: .f32), .nmse(1e-8)),
                        CaseOutput("losses", try backend.tensor([st.balanceLoss, st.zLoss], shape: [2], dtype: .f32),
                                   .nmse(1e-8)),
                    ]
                }
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
