import SwitchyardReference

extension ReferenceBackend {
    func flagsTensor(nonFinite: Bool, badIds: Bool) -> Tensor {
        Tensor(shape: [2], dtype: .i32, storage: .host(.ints([nonFinite ? 1 : 0, badIds ? 1 : 0])))
    }

    func ints(_ values: [Int32], _ shape: [Int]) -> Tensor {
        Tensor(shape: shape, dtype: .i32, storage: .host(.ints(values)))
    }

    func f32(_ values: [Float], _ shape: [Int]) -> Tensor {
        Tensor(shape: shape, dtype: .f32, storage: .host(.floats(values)))
    }

    public func gating(_ logits: Tensor, bias: Tensor?, config c: RouterConfig) throws -> Gating {
        let tokens = try GatingOp(validating: logits, bias: bias, config: c).tokens
        let r = Reference.gating(
            logits: try hostFloats(logits, "router logits"), tokens: tokens,
            bias: try bias.map { try hostFloats($0, "correction bias") }, config: c)
        return Gating(
            unchecked: c, tokens: tokens, logits: logits, ids: ints(r.ids, [tokens, c.k]),
            weights: f32(r.weights.map { Float($0) }, [tokens, c.k]), flags: flagsTensor(nonFinite: r.invalid, badIds: false))
    }

    public func permute(_ g: Gating, blockSize: Int) throws -> Routing {
        _ = try Permute(validating: g, blockSize: blockSize)
        let c = g.config
        let ids = try hostInts(g.ids, "ids")
        let flags = try hostInts(g.flags, "flags")
        let bad = ids.contains { $0 < 0 || Int($0) >= c.experts }
        let p = Reference.permute(
            ids: ids, weights: try hostFloats(g.weights, "weights"), tokens: g.tokens, k: c.k, experts: c.experts,
            blockSize: blockSize, capacity: c.capacity(tokens: g.tokens), priority: c.dropPriority)
        var routed = [Int32](repeating: 0, count: c.experts)
        for id in ids where id >= 0 && Int(id) < c.experts { routed[Int(id)] += 1 }
        let gating = Gating(
            unchecked: c, tokens: g.tokens, logits: g.logits, ids: g.ids, weights: g.weights,
            flags: ints([flags.first ?? 0, bad ? 1 : 0], [2]))
        return Routing(
            gating: gating, blockSize: blockSize, counts: ints(p.counts, [c.experts]),
            routedCounts: ints(routed, [c.experts]), offsets: ints(p.offsets, [c.experts + 1]),
            tileExpert: ints(p.tileExpert, [p.tileExpert.count]), rowOf: ints(p.rowOf, [g.tokens, c.k]),
            assignmentOf: ints(p.assignmentOf, [p.assignmentOf.count]), weights: f32(p.weights, [g.tokens, c.k]),
            dropped: ints([p.dropped], [1]))
    }

    public func gather(_ x: Tensor, routing r: Routing, dtype: DType? = nil) throws -> Tensor {
        let op = try Gather(validating: x, routing: r, dtype: dtype)
        let (d, out) = (op.d, op.outputType)
        let rows = Reference.gather(
            x: try hostFloats(x, "gather x"), tokens: r.tokens, d: d, k: r.config.k,
            assignmentOf: try hostInts(r.assignmentOf, "routing"))
        return Tensor(shape: [r.maxRows, d], dtype: out, storage: .host(.floats(out.round(rows))))
            .guarded(by: [r.flags])
    }

    public func combine(_ ys: Tensor, routing r: Routing, residual: Tensor? = nil, dtype: DType? = nil) throws -> Tensor {
        let op = try Combine(validating: ys, routing: r, residual: residual, dtype: dtype)
        let (d, out) = (op.d, op.outputType)
        let y = Reference.combine(
            ys: try hostFloats(ys, "combine ys"), d: d, rowOf: try hostInts(r.rowOf, "routing"),
            weights: try hostFloats(r.weights, "routing"), tokens: r.tokens, k: r.config.k,
            residual: try residual.map { try hostFloats($0, "combine residual") })
        return output(y, shape: [r.tokens, d], dtype: out).guarded(by: [r.flags])
    }

    public func expertChoice(_ logits: Tensor, config c: RouterConfig) throws -> ExpertChoice {
        let op = try ExpertChoiceOp(validating: logits, config: c)
        let (tokens, experts, capacity) = (op.tokens, op.experts, op.capacity)
        let values = try hostFloats(logits, "router logits")
        let r = Reference.expertChoice(logits: values, tokens: tokens, experts: experts, capacity: capacity, scoring: c.scoring)
        return ExpertChoice(
            tokens: ints(r.tokens, [experts, capacity]), weights: f32(r.weights.map { Float($0) }, [experts, capacity]),
            flags: flagsTensor(nonFinite: values.contains { !$0.isFinite }, badIds: false), capacity: capacity)
    }

    public func routingStats(_ r: Routing) throws -> RoutingStats {
        try check(flags: r.flags)
        let s = Reference.routingStats(
            logits: try hostFloats(r.gating.logits, "router logits"), tokens: r.tokens, experts: r.config.experts,
            k: r.config.k, scoring: r.config.scoring, ids: try hostInts(r.ids, "ids"),
            keptCounts: try hostInts(r.counts, "routing"), dropped: try hostInts(r.dropped, "routing")[0])
        return RoutingStats(
            tokensPerExpert: s.tokensPerExpert.map(Int.init), dropped: Int(s.dropped),
            meanProbability: s.meanProbability.map { Float($0) }, balanceLoss: Float(s.balanceLoss), zLoss: Float(s.zLoss))
    }
}
