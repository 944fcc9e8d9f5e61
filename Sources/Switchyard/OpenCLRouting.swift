import SwitchyardReference
import OpenCLHost

extension OpenCLBackend {
    /// Assignments per chunk of the counting sort. Where work-items are SIMD lanes (llvmpipe
    /// stops a work-item's loops after 65,535 iterations): 256, or √n above 65,536 assignments,
    /// so neither a chunk's walk (count, scatter) nor an expert's scan over the chunks passes
    /// ~46,000 steps for any n below 2³¹. On CPU-class devices: 256 up to 2²⁴ assignments (more
    /// chunks balance the cores better), then n / 65,536, so the chunk-count scratch stays at
    /// most 65,536 · E. The sort is exact and stable for any chunk, so results never depend on it.
    func permuteChunk(assignments n: Int) -> Int {
        if !device.workItemsAreLanes { return max(256, (n + 65535) / 65536) }
        var root = Int(Double(n).squareRoot())
        while root * root < n { root += 1 }
        while root > 0 && (root - 1) * (root - 1) >= n { root -= 1 }
        return max(256, root)
    }

    /// Tokens per chunk of the routing statistics' partial sums (a constant: results never
    /// depend on the device).
    static let statsChunk = 256

    /// Local size of the one-work-item-per-token kernels.
    var itemGroup: Int { device.workItemsAreLanes ? 64 : 1 }

    /// Tokens each work-item of the per-token kernels handles (a CPU device pays a cost per
    /// work-group that one token's work does not cover; where work-items are SIMD lanes, each
    /// takes one token, so no work-item runs a long loop).
    var tokensPerItem: Int { device.workItemsAreLanes ? 1 : 32 }

    /// Whether gating ranks experts in parallel (one work-item per token and expert) instead of
    /// one work-item keeping a token's k best: for k above the single pass's 64, and where
    /// work-items are SIMD lanes and a token's pass would be long.
    func gatingByRank(experts: Int, k: Int) -> Bool {
        k > 64 || (device.workItemsAreLanes && experts * k > 16384)
    }

    func roundUp(_ n: Int, _ m: Int) -> Int { max(m, (n + m - 1) / m * m) }

    /// The most work-groups a launch puts in its grid's second or third dimension where the count
    /// there grows with the data (rows, tokens): some drivers cap those dimensions at 65,535
    /// work-groups (CUDA's grid limit), so kernels stride the rest over the capped grid.
    static let stridedGridGroups = 49152

    public func gating(_ logits: Tensor, bias: Tensor?, config c: RouterConfig) throws -> Gating {
        let op = try GatingOp(validating: logits, bias: bias, config: c)
        let (tokens, experts) = (op.tokens, op.experts)
        let lb = try deviceBuffer(logits, "router logits")
        let ids = try empty(shape: [tokens, c.k], dtype: .i32, label: "gating ids")
        let weights = try empty(shape: [tokens, c.k], dtype: .f32, label: "gating weights")
        let flags = try empty(shape: [2], dtype: .i32, label: "routing flags")
        try fill(flags, 0)  // enqueued: nothing waits for the router matmul
        let biasBuffer = try bias.map { try deviceBuffer($0, "correction bias") } ?? flags.buffer!
        let group = itemGroup
        let sigmoid = c.scoring == .sigmoid ? 1 : 0
        let hasBias = bias == nil ? 0 : 1
        if tokens > 0 && gatingByRank(experts: experts, k: c.k) {
            // Released when this returns; OpenCL keeps them until the kernels that use them have run.
            let rowStats = try scratch(byteCount: tokens * 8, label: "gating row stats")
            let rowGroups = try scratch(byteCount: tokens * 8, label: "gating kept groups")
            try launch(
                "routing.cl", "gating_prepare", defines: logits.dtype.defines("X"),
                args: [.buffer(lb), .buffer(biasBuffer), .buffer(rowStats), .buffer(rowGroups), .buffer(flags.buffer!),
                       .int(tokens), .int(experts), .int(sigmoid), .int(hasBias), .int(c.renormalize ? 1 : 0),
                       .int(c.expertGroups), .int(c.topKGroups)],
                global: [roundUp(tokens, group)], local: [group])
            try launch(
                "routing.cl", "gating_rank", defines: logits.dtype.defines("X"),
                args: [.buffer(lb), .buffer(biasBuffer), .buffer(rowStats), .buffer(rowGroups), .buffer(ids.buffer!),
                       .buffer(weights.buffer!), .int(tokens), .int(experts), .int(c.k), .int(sigmoid), .int(hasBias),
                       .int(c.expertGroups)],
                // (tokens strided over the capped second dimension)
                global: [roundUp(experts, group), min(tokens, Self.stridedGridGroups)], local: [group, 1])
            holdScratch([rowStats, rowGroups], until: try launch(
                "routing.cl", "gating_finish",
                args: [.buffer(weights.buffer!), .int(tokens), .int(c.k), .int(c.renormalize ? 1 : 0),
                       .float(c.routedScale)],
                global: [roundUp(tokens, group)], local: [group]))
        } else {
            try launch(
                "routing.cl", "gating_topk", defines: logits.dtype.defines("X"),
                args: [
                    .buffer(lb), .buffer(biasBuffer), .buffer(ids.buffer!), .buffer(weights.buffer!),
                    .buffer(flags.buffer!), .int(tokens), .int(experts), .int(c.k), .int(sigmoid), .int(hasBias),
                    .int(c.renormalize ? 1 : 0), .float(c.routedScale), .int(c.expertGroups), .int(c.topKGroups),
                    .int(tokensPerItem),
                ],
                global: [roundUp((tokens + tokensPerItem - 1) / tokensPerItem, group)], local: [group])
        }
        return Gating(unchecked: c, tokens: tokens, logits: logits, ids: ids, weights: weights, flags: flags)
    }

    /// Fills an i32 tensor's elements on the queue without waiting (a kernel, not
    /// clEnqueueFillBuffer: rusticl was seen to fill wrong values under concurrent enqueues).
    func fill(_ t: Tensor, _ value: Int32) throws {
        let n = t.count
        if n == 0 { return }
        try launch(
            "routing.cl", "fill_i32", args: [.buffer(t.buffer!), .int(Int(value)), .int(n)],
            global: [roundUp(n, 64)], local: [64])
    }

    /// One counting-sort pass: counts per chunk, scan, offsets/tiles, scatter.
    func countingSort(
        ids: Buffer, keep: Buffer?, flags: Buffer, assignments n: Int, experts: Int, blockSize: Int, capacity: Int,
        counts: Tensor, routed: Tensor, offsets: Tensor, tiles: Tensor, rowOf: Tensor, assignmentOf: Tensor,
        weights: Buffer, dropped: Tensor
    ) throws {
        let chunk = permuteChunk(assignments: n)
        let chunks = max(1, (n + chunk - 1) / chunk)
        let scratch = try scratch(byteCount: chunks * experts * 4, label: "permute chunk counts")
        let keepArg: OpenCLBackend.Arg = .buffer(keep ?? ids)
        let useKeep = keep == nil ? 0 : 1
        try fill(assignmentOf, Int32(n))
        try launch(
            "routing.cl", "permute_count",
            args: [.buffer(ids), keepArg, .int(useKeep), .buffer(scratch), .buffer(flags), .int(n), .int(experts),
                   .int(chunk), .int(chunks)],
            global: [roundUp(chunks, itemGroup)], local: [itemGroup])
        try launch(
            "routing.cl", "permute_scan",
            args: [.buffer(scratch), .buffer(routed.buffer!), .int(chunks), .int(experts)],
            global: [roundUp(experts, itemGroup)], local: [itemGroup])
        try launch(
            "routing.cl", "permute_offsets",
            args: [.buffer(routed.buffer!), .buffer(counts.buffer!), .buffer(offsets.buffer!),
                   .buffer(dropped.buffer!), .int(experts), .int(blockSize), .int(capacity), .int(n)],
            global: [1], local: [1])
        if tiles.count > 0 {
            try launch(
                "routing.cl", "permute_tiles",
                args: [.buffer(offsets.buffer!), .buffer(tiles.buffer!), .int(experts), .int(blockSize),
                       .int(tiles.count)],
                global: [roundUp(tiles.count, 64)], local: [64])
        }
        let last = try launch(
            "routing.cl", "permute_scatter",
            args: [.buffer(ids), keepArg, .int(useKeep), .buffer(scratch), .buffer(offsets.buffer!),
                   .buffer(rowOf.buffer!), .buffer(assignmentOf.buffer!), .buffer(weights), .int(n), .int(experts),
                   .int(chunk), .int(capacity), .int(assignmentOf.count)],
            global: [roundUp(chunks, itemGroup)], local: [itemGroup])
        holdScratch([scratch], until: last)
    }

    public func permute(_ g: Gating, blockSize: Int) throws -> Routing {
        _ = try Permute(validating: g, blockSize: blockSize)
        let c = g.config
        let n = g.tokens * c.k
        let experts = c.experts
        let ids = try deviceBuffer(g.ids, "ids")
        let maxRows = Reference.maxRows(assignments: n, experts: experts, blockSize: blockSize)
        let maxTiles = Reference.maxTiles(assignments: n, experts: experts, blockSize: blockSize)
        let counts = try empty(shape: [experts], dtype: .i32, label: "expert counts")
        let routed = try empty(shape: [experts], dtype: .i32, label: "routed counts")
        let offsets = try empty(shape: [experts + 1], dtype: .i32, label: "expert offsets")
        let tiles = try empty(shape: [maxTiles], dtype: .i32, label: "tile expert map")
        let rowOf = try empty(shape: [g.tokens, c.k], dtype: .i32, label: "row of assignment")
        let assignmentOf = try empty(shape: [maxRows], dtype: .i32, label: "assignment of row")
        let dropped = try empty(shape: [1], dtype: .i32, label: "dropped count")
        let weights = try empty(shape: [g.tokens, c.k], dtype: .f32, label: "routing weights")
        if n > 0 { try weights.buffer!.copy(from: try deviceBuffer(g.weights, "weights"), bytes: n * 4) }
        let flags = try deviceBuffer(g.flags, "flags")
        let capacity = c.capacity(tokens: g.tokens) ?? Int(Int32.max)

        var keep: Buffer?
        var temporaries: [Tensor] = []
        if c.capacityFactor != nil && c.dropPriority == .weight && n > 0 {
            // First an uncapped sort, so each expert's assignments are contiguous; then per expert
            // a radix select of its `capacity` best by weight clears the others' keep flags.
            let keepTensor = try empty(shape: [n], dtype: .i32, label: "keep flags")
            let scratchTiles = try empty(shape: [n + experts], dtype: .i32, label: "scratch tiles")
            temporaries += [keepTensor, scratchTiles]
            try fill(keepTensor, 1)
            try countingSort(
                ids: ids, keep: nil, flags: flags, assignments: n, experts: experts, blockSize: 1,
                capacity: Int(Int32.max), counts: counts, routed: routed, offsets: offsets,
                tiles: scratchTiles, rowOf: rowOf,
                assignmentOf: assignmentOf, weights: weights.buffer!, dropped: dropped)
            try capacityByWeight(
                counts: counts, offsets: offsets, assignmentOf: assignmentOf, weights: weights, keep: keepTensor,
                experts: experts, capacity: capacity, assignments: n, maxRows: maxRows)
            keep = keepTensor.buffer
        }
        let secondRouted = keep == nil ? routed : try empty(shape: [experts], dtype: .i32)
        if keep != nil { temporaries.append(secondRouted) }
        try countingSort(
            ids: ids, keep: keep, flags: flags, assignments: n, experts: experts, blockSize: blockSize,
            capacity: capacity, counts: counts, routed: secondRouted,
            offsets: offsets, tiles: tiles, rowOf: rowOf, assignmentOf: assignmentOf, weights: weights.buffer!,
            dropped: dropped)
        if !temporaries.isEmpty {
            holdScratch(temporaries.compactMap(\.buffer), until: try context.queue.marker())
        }
        return Routing(
            gating: g, blockSize: blockSize, counts: counts, routedCounts: routed, offsets: offsets, tileExpert: tiles,
            rowOf: rowOf, assignmentOf: assignmentOf, weights: weights, dropped: dropped)
    }

    /// Rows of an expert's assignments one work-group of the split select walks
    /// (`capacity_select_hist` / `_clear`): 8,192 loop steps per work-item.
    static let capacitySliceSteps = 8192

    /// Weight-priority capacity: clears the keep flags of each expert's assignments past its
    /// `capacity` best by weight (the radix select of `capacity_by_weight`, one work-group per
    /// expert). That work-group's loops take 17 · ⌈rows / group⌉ + 850 steps, counted
    /// cumulatively, for an expert's `rows` (at most all `assignments`), + 16 · (⌈16 / group⌉ + 1)
    /// for a group below 16 (1,200 in all at most); where that could pass
    /// the device's `loopStepBudget` the select is split over work-groups of 8,192 · group rows
    /// and launches (`capacity_select_*`: a histogram pass and a digit pass per 4-bit digit),
    /// which clear the same flags.
    func capacityByWeight(
        counts: Tensor, offsets: Tensor, assignmentOf: Tensor, weights: Tensor, keep: Tensor, experts: Int,
        capacity: Int, assignments n: Int, maxRows: Int
    ) throws {
        let group = tuning.rowGroup
        let rows = min(n, maxRows)
        let walk = (rows + group - 1) / group
        let common: [Arg] = [.buffer(counts.buffer!), .buffer(offsets.buffer!), .buffer(assignmentOf.buffer!),
                             .buffer(weights.buffer!)]
        guard let budget = loopStepBudget, 17 * walk + 1200 > budget else {
            try launch(
                "routing.cl", "capacity_by_weight", defines: ["GROUP": "\(group)"],
                args: common + [.buffer(keep.buffer!), .int(capacity), .int(n), .int(maxRows)],
                global: [experts * group], local: [group])
            return
        }
        let slice = Self.capacitySliceSteps * group
        let slices = (rows + slice - 1) / slice
        let state = try scratch(byteCount: experts * 16, label: "capacity select state")
        let hist = try scratch(byteCount: experts * 16 * 4, label: "capacity select histogram")
        let defines = ["GROUP": "\(group)"]
        try launch(
            "routing.cl", "capacity_select_init", args: [.buffer(state), .buffer(hist), .int(experts), .int(capacity)],
            global: [roundUp(experts, itemGroup)], local: [itemGroup])
        for shift in stride(from: 60, through: 0, by: -4) {
            try launch(
                "routing.cl", "capacity_select_hist", defines: defines,
                args: common + [.buffer(state), .buffer(hist), .int(capacity), .int(n), .int(maxRows), .int(slice),
                                .int(shift)],
                global: [slices * group, experts], local: [group, 1])
            try launch(
                "routing.cl", "capacity_select_digit", args: [.buffer(state), .buffer(hist), .int(experts), .int(shift)],
                global: [roundUp(experts, itemGroup)], local: [itemGroup])
        }
        holdScratch([state, hist], until: try launch(
            "routing.cl", "capacity_select_clear", defines: defines,
            args: common + [.buffer(state), .buffer(keep.buffer!), .int(capacity), .int(n), .int(maxRows), .int(slice)],
            global: [slices * group, experts], local: [group, 1]))
    }

    public func gather(_ x: Tensor, routing r: Routing, dtype: DType? = nil) throws -> Tensor {
        let op = try Gather(validating: x, routing: r, dtype: dtype)
        let (d, out) = (op.d, op.outputType)
        let xs = try empty(shape: [r.maxRows, d], dtype: out, label: "expert-ordered rows")
        if r.maxRows == 0 || d == 0 { return xs.guarded(by: [r.flags]) }
        let group = tuning.copyGroup
        let per = try boundedRowsPerGroup(width: d, group: group, argument: "gather")
        try launch(
            "routing.cl", "gather_rows",
            defines: x.dtype.defines("X").merging(out.defines("Y")) { a, _ in a }
                .merging(["GROUP": "\(group)"].merging(x.dtype == out ? ["RAW_COPY": out.size == 4 ? "uint" : "ushort"] : [:]) { a, _ in a }) { a, _ in a },
            args: [.buffer(try deviceBuffer(x, "gather x")), .buffer(try deviceBuffer(r.assignmentOf, "routing")),
                   .buffer(xs.buffer!), .int(r.maxRows), .int(r.tokens), .int(r.config.k), .int(d),
                   .int(per)],
            global: [(r.maxRows + per - 1) / per * group], local: [group])
        return xs.guarded(by: [r.flags])
    }

    public func combine(_ ys: Tensor, routing r: Routing, residual: Tensor? = nil, dtype: DType? = nil) throws -> Tensor {
        let op = try Combine(validating: ys, routing: r, residual: residual, dtype: dtype)
        let (d, out) = (op.d, op.outputType)
        let y = try empty(shape: [r.tokens, d], dtype: out, label: "combined output")
        if r.tokens == 0 || d == 0 { return y.guarded(by: [r.flags]) }
        let group = tuning.copyGroup
        let per = try boundedRowsPerGroup(
            width: d, steps: d % 16 == 0 ? d / 16 : d, group: group, inner: r.config.k, argument: "combine")
        try launch(
            "routing.cl", "combine_rows",
            defines: ys.dtype.defines("X").merging(out.defines("Y")) { a, _ in a }.merging(["GROUP": "\(group)"]) { a, _ in a },
            args: [.buffer(try deviceBuffer(ys, "combine ys")), .buffer(try deviceBuffer(r.rowOf, "routing")),
                   .buffer(try deviceBuffer(r.weights, "routing")),
                   .buffer(try residual.map { try deviceBuffer($0, "combine residual") } ?? y.buffer!),
                   .int(residual == nil ? 0 : 1), .buffer(y.buffer!), .int(r.tokens), .int(r.config.k), .int(d),
                   .int(r.maxRows), .int(per)],
            global: [(r.tokens + per - 1) / per * group], local: [group])
        return y.guarded(by: [r.flags])
    }

    public func expertChoice(_ logits: Tensor, config c: RouterConfig) throws -> ExpertChoice {
        let op = try ExpertChoiceOp(validating: logits, config: c)
        let (tokens, experts, capacity) = (op.tokens, op.experts, op.capacity)
        let flags = try empty(shape: [2], dtype: .i32, label: "routing flags")
        try fill(flags, 0)
        if capacity == 0 {
            return ExpertChoice(
                tokens: try empty(shape: [experts, 0], dtype: .i32), weights: try empty(shape: [experts, 0], dtype: .f32),
                flags: flags, capacity: 0)
        }
        let scores = try empty(shape: [experts, tokens], dtype: .f32, label: "scores by expert")
        try launch(
            "routing.cl", "router_scores_transposed", defines: logits.dtype.defines("X"),
            args: [.buffer(try deviceBuffer(logits, "router logits")), .buffer(scores.buffer!), .buffer(flags.buffer!),
                   .int(tokens), .int(experts), .int(c.scoring == .sigmoid ? 1 : 0)],
            global: [roundUp(tokens, itemGroup)], local: [itemGroup])
        let (values, indices) = try topK(scores, k: capacity)
        holdScratch([scores.buffer!], until: try context.queue.marker())
        return ExpertChoice(tokens: indices, weights: values, flags: flags, capacity: capacity)
    }

    public func routingStats(_ r: Routing) throws -> RoutingStats {
        try check(flags: r.flags)
        let t = r.tokens
        let e = r.config.experts
        let logits = try deviceBuffer(r.gating.logits, "router logits")
        let chunk = Self.statsChunk
        let chunks = (t + chunk - 1) / chunk
        let rowStats = try scratch(byteCount: max(1, t) * 16, label: "stats per token")
        let partial = try scratch(byteCount: max(1, chunks * e) * 4, label: "stats partial sums")
        let zPartial = try scratch(byteCount: max(1, chunks * e) * 4, label: "stats z partial sums")
        let out = try scratch(byteCount: (e + 2) * 4, label: "stats out")
        let defines = r.gating.logits.dtype.defines("X")
        let sigmoid = r.config.scoring == .sigmoid ? 1 : 0
        if t > 0 {
            try launch(
                "routing.cl", "stats_tokens", defines: defines,
                args: [.buffer(logits), .buffer(rowStats), .int(e), .int(sigmoid)],
                global: [t], local: [1])  // exactly T work-items: the kernel has no bounds branch
            try launch(
                "routing.cl", "stats_partial", defines: defines,
                args: [.buffer(logits), .buffer(rowStats), .buffer(partial), .buffer(zPartial), .int(t), .int(e),
                       .int(sigmoid), .int(chunk)],
                global: [e, chunks], local: [1, 1])  // exactly E × chunks work-items
        }
        try launch(
            "routing.cl", "stats_experts",
            args: [.buffer(partial), .buffer(out), .int(t), .int(e), .int(chunks)],
            global: [e], local: [1])  // exactly E work-items: the kernel has no bounds branch
        try launch(
            "routing.cl", "stats_final",
            args: [.buffer(try deviceBuffer(r.routedCounts, "routing")), .buffer(zPartial), .buffer(out), .int(t),
                   .int(e), .int(r.config.k), .int(chunks)],
            global: [1], local: [1])
        let values = try out.download(Float.self, count: e + 2)
        return RoutingStats(
            tokensPerExpert: try ints(r.counts).map(Int.init), dropped: Int(try ints(r.dropped)[0]),
            meanProbability: Array(values[0..<e]), balanceLoss: values[e], zLoss: values[e + 1])
    }
}
