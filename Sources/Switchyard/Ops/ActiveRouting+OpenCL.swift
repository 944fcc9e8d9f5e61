import OpenCLHost

extension OpenCLBackend {
    /// The permutation's counting sort (routing.cl: permute_count, permute_scan, permute_offsets,
    /// permute_tiles, permute_scatter) over ids all 0 with the mask as its keep flags: no kernel
    /// of its own, and nothing read by the host.
    public func activeRouting(_ active: Tensor, blockSize: Int) throws -> Routing {
        let op = try ActiveRouting(validating: active, blockSize: blockSize)
        let n = op.samples
        let mask = try deviceBuffer(active, "activeRouting active")
        let p = op.permute
        let ids = try empty(shape: [n, 1], dtype: .i32, label: "active routing ids")
        let ones = try empty(shape: [n, 1], dtype: .f32, label: "active routing weights in")
        let logits = try empty(shape: [n, 1], dtype: .f32, label: "active routing logits")
        let flags = try empty(shape: [2], dtype: .i32, label: "active routing flags")
        try fill(ids, 0)
        try fill(ones, Int32(bitPattern: Float(1).bitPattern))
        try fill(logits, 0)
        try fill(flags, 0)
        let counts = try empty(shape: [1], dtype: .i32, label: "active count")
        let routed = try empty(shape: [1], dtype: .i32, label: "active routed count")
        let offsets = try empty(shape: [2], dtype: .i32, label: "active offsets")
        let tiles = try empty(shape: [p.maxTiles], dtype: .i32, label: "active tile map")
        let rowOf = try empty(shape: [n, 1], dtype: .i32, label: "active row of sample")
        let assignmentOf = try empty(shape: [p.maxRows], dtype: .i32, label: "active sample of row")
        let dropped = try empty(shape: [1], dtype: .i32, label: "exited count")
        let weights = try empty(shape: [n, 1], dtype: .f32, label: "active routing weights")
        try fill(weights, Int32(bitPattern: Float(1).bitPattern))
        try countingSort(
            ids: ids.buffer!, keep: mask, flags: flags.buffer!, assignments: n, experts: 1,
            blockSize: blockSize, capacity: Int(Int32.max), counts: counts, routed: routed, offsets: offsets, tiles: tiles,
            rowOf: rowOf, assignmentOf: assignmentOf, weights: weights.buffer!, dropped: dropped)
        let config = RouterConfig(experts: 1, k: 1, renormalize: false)
        let guards = active.guards
        let gating = Gating(
            unchecked: config, tokens: n, logits: logits, ids: ids.guarded(by: guards), weights: ones, flags: flags)
        return Routing(
            gating: gating, blockSize: blockSize, counts: counts.guarded(by: guards), routedCounts: routed.guarded(by: guards),
            offsets: offsets.guarded(by: guards), tileExpert: tiles.guarded(by: guards), rowOf: rowOf.guarded(by: guards),
            assignmentOf: assignmentOf.guarded(by: guards), weights: weights.guarded(by: guards),
            dropped: dropped.guarded(by: guards))
    }
}
