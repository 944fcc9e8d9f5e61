import OpenCLHost

extension OpenCLBackend {
    /// The similarity tile of `merge_match` (CPU-class devices): A tokens per work-item and B
    /// columns as `vectors` vectors of `width` floats: the register matmul's tile (the device's
    /// vector width and register file), or 4 × 4 scalars under a work-group matmul tuning.
    var mergeTile: (rows: Int, width: Int, vectors: Int) {
        switch tuning.matmulKernel {
        case .registers: (tuning.matmulRows, tuning.matmulVectorWidth, tuning.matmulPanel / tuning.matmulVectorWidth)
        case .workGroup: (4, 1, 4)
        }
    }

    /// Loop iterations one `merge_match` work-item (or `merge_match_lanes` lane) may run per
    /// launch: far below llvmpipe's 65,535 per work-item (measured: the register tile's loop nest
    /// counts ~5–8 per key element there, so that kernel runs only on CPU-class devices).
    /// Wider column ranges take more launches, each continuing the best of the earlier ones.
    static let mergeMatchBudget = 8192

    /// Row tiles each `merge_match` work-item walks per panel.
    static let mergeTileStep = 8

    /// Lanes per A token in `merge_match_lanes`: 32, or the largest power of two the device's
    /// work-groups hold.
    var mergeLanes: Int { lanesGroup(32) }

    /// The largest power of two ≤ `wanted` and ≤ the device's largest work-group.
    func lanesGroup(_ wanted: Int) -> Int {
        var group = 1
        while group * 2 <= min(wanted, max(1, device.maxWorkGroupSize)) { group *= 2 }
        return group
    }

    /// The grid of the row-copying kernels (`merge_rows`, `token_unmerge`) over `rows` rows of
    /// `d` columns: where work-items are lanes one column each (a work-item's loop is then one
    /// merge run at most), else whole rows, `rowsPerGroup` per work-item.
    func mergeRowGrid(rows: Int, d: Int) -> (rowsPerItem: Int, chunk: Int, global: [Int], local: [Int]) {
        if device.workItemsAreLanes {
            var group = 1
            while group < min(d, tuning.copyGroup) { group <<= 1 }
            return (1, 1, [roundUp(max(d, 1), group), rows], [group, 1])
        }
        let per = tuning.rowsPerGroup
        return (per, max(d, 1), [1, (rows + per - 1) / per], [1, 1])
    }

    static func rawWord(_ dtype: DType) -> String { dtype.size == 4 ? "uint" : "ushort" }

    public func tokenMerge(_ x: Tensor, keys: Tensor?, sizes: Tensor?, r: Int, protectFirst: Bool) throws -> MergedTokens {
        let op = try TokenMerge(validating: x, keys: keys, sizes: sizes, r: r, protectFirst: protectFirst)
        let (b, l, d) = (op.batches, op.tokens, op.dim)
        let (na, nb, m) = (op.setA, op.setB, op.outputTokens)
        let xb = try deviceBuffer(x, "tokenMerge x")
        let kb = try keys.map { try deviceBuffer($0, "tokenMerge keys") } ?? xb
        let sb = try sizes.map { try deviceBuffer($0, "tokenMerge sizes") }
        let inputGuards = x.guards + (keys?.guards ?? []) + (sizes?.guards ?? [])
        let y = try empty(shape: [b, m, d], dtype: x.dtype, label: "merged tokens")
        let sizesOut = try empty(shape: [b, m], dtype: .f32, label: "merged sizes")
        let map = try empty(shape: [b, l], dtype: .i32, label: "source map")
        let flags = try empty(shape: [5], dtype: .i32, label: "merge flags")
        try fill(flags, 0)
        let result = MergedTokens(
            x: y.guarded(by: inputGuards), sizes: sizesOut.guarded(by: inputGuards),
            sourceMap: map.guarded(by: inputGuards), flags: flags)
        if b == 0 || l == 0 { return result }

        // Similarities, partners and the r best scores (r > 0 only: r = 0 reorders).
        let bestIdx = try empty(shape: [b, na], dtype: .i32, label: "merge partners")
        var chosen: Tensor?
        if r > 0 {
            let dk = op.keyDim
            let tile = mergeTile
            let panel = tile.width * tile.vectors
            let nbPad = roundUp(nb, panel)
            let lanes = device.workItemsAreLanes
            let ka = try empty(shape: [b, na, dk], dtype: .f32, label: "merge A keys")
            let kbt = try empty(shape: [b, nbPad / panel, dk, panel], dtype: .f32, label: "merge B keys")
            try launch(
                "token_merge.cl", "merge_normalize",
                defines: (keys?.dtype ?? x.dtype).defines("K")
                    .merging(["GROUP": "\(tuning.copyGroup)", "VW": "\(lanes ? 1 : tile.width)"]) { a, _ in a },
                args: [.buffer(kb), .buffer(ka.buffer!), .buffer(kbt.buffer!), .buffer(flags.buffer!), .int(b * l),
                       .int(l), .int(dk), .int(na), .int(nbPad), .int(panel), .int(tuning.rowsPerGroup)],
                global: [(b * l + tuning.rowsPerGroup - 1) / tuning.rowsPerGroup * tuning.copyGroup],
                local: [tuning.copyGroup])
            let bestVal = try empty(shape: [b, na], dtype: .f32, label: "merge scores")
            // Lanes: one work-group per A token, a lane per column; else the register tile.
            let columns = lanes
                ? mergeLanes * max(1, Self.mergeMatchBudget / (dk + 1))
                : panel * max(1, Self.mergeMatchBudget / max(1, dk))
            // A register work-item walks `mergeTileStep` row tiles per panel (the panel stays in cache).
            let groups = (na + tile.rows * Self.mergeTileStep - 1) / (tile.rows * Self.mergeTileStep)
            let defines = lanes
                ? ["GROUP": "\(mergeLanes)"]
                : ["RA": "\(tile.rows)", "VW": "\(tile.width)", "NV": "\(tile.vectors)", "TS": "\(Self.mergeTileStep)"]
            var begin = 0
            repeat {
                try launch(
                    "token_merge.cl", lanes ? "merge_match_lanes" : "merge_match", defines: defines,
                    args: [.buffer(ka.buffer!), .buffer(kbt.buffer!), .buffer(bestVal.buffer!), .buffer(bestIdx.buffer!),
                           .int(na), .int(nb), .int(nbPad)] + (lanes ? [.int(panel)] : []) + [
                           .int(dk), .int(begin), .int(min(nb, begin + columns)), .int(begin == 0 ? 1 : 0),
                           .int(protectFirst ? 1 : 0)],
                    global: lanes ? [mergeLanes, na, b] : [roundUp(groups, itemGroup), b],
                    local: lanes ? [mergeLanes, 1, 1] : [itemGroup, 1])
                begin += columns
            } while begin < nb
            if lanes {
                chosen = try topK(bestVal, k: r).indices
            } else {
                // CPU-class devices: a radix sort per batch in one work-item (a bitonic top-k
                // network costs such a device ~10× more).
                let top = try empty(shape: [b, r], dtype: .i32, label: "merge choices")
                let keysScratch = try empty(shape: [b, 2, na], dtype: .i32, label: "merge choice keys")
                let idxScratch = try empty(shape: [b, 2, na], dtype: .i32, label: "merge choice indices")
                try launch(
                    "token_merge.cl", "merge_choose",
                    args: [.buffer(bestVal.buffer!), .buffer(keysScratch.buffer!), .buffer(idxScratch.buffer!),
                           .buffer(top.buffer!), .int(b), .int(na), .int(r)],
                    global: [roundUp(b, itemGroup)], local: [itemGroup])
                chosen = top
            }
        }

        // The plan: who merges where, the unmerged rows' order, the source map.
        let dstOf = try empty(shape: [b, na], dtype: .i32, label: "merge destinations")
        let mergeKey = try empty(shape: [b, na], dtype: .f32, label: "merge sort keys")
        let rowSource = try empty(shape: [b, na - r], dtype: .i32, label: "unmerged rows")
        let group = tuning.rowGroup
        try launch(
            "token_merge.cl", "merge_plan", defines: ["GROUP": "\(group)"],
            args: [.buffer(chosen?.buffer ?? bestIdx.buffer!), .buffer(bestIdx.buffer!), .buffer(dstOf.buffer!),
                   .buffer(mergeKey.buffer!), .buffer(rowSource.buffer!), .buffer(map.buffer!), .int(na), .int(nb),
                   .int(l), .int(r)],
            global: [b * group], local: [group])
        // The merged A tokens ordered by partner, then position: each B token's run.
        var sorted: Tensor?
        if r > 0 && device.workItemsAreLanes {
            sorted = try topK(mergeKey, k: r).indices
        } else if r > 0 {
            let order = try empty(shape: [b, r], dtype: .i32, label: "merge order")
            let starts = try empty(shape: [b, nb], dtype: .i32, label: "merge order starts")
            try launch(
                "token_merge.cl", "merge_order",
                args: [.buffer(dstOf.buffer!), .buffer(starts.buffer!), .buffer(order.buffer!), .int(b), .int(na), .int(nb),
                       .int(r)],
                global: [roundUp(b, itemGroup)], local: [itemGroup])
            sorted = order
        }

        let grid = mergeRowGrid(rows: b * m, d: d)
        try launch(
            "token_merge.cl", "merge_rows",
            defines: x.dtype.defines("X").merging(x.dtype.defines("Y")) { a, _ in a }
                .merging(["RAW_T": Self.rawWord(x.dtype)]) { a, _ in a },
            args: [.buffer(xb), .buffer(sb ?? flags.buffer!), .int(sb == nil ? 0 : 1), .buffer(rowSource.buffer!),
                   .buffer(dstOf.buffer!), .buffer(sorted?.buffer ?? dstOf.buffer!), .buffer(y.buffer!),
                   .buffer(sizesOut.buffer!), .buffer(flags.buffer!), .int(b), .int(l), .int(d), .int(na), .int(nb),
                   .int(r), .int(grid.rowsPerItem), .int(grid.chunk)],
            global: grid.global, local: grid.local)
        return result
    }

    public func tokenUnmerge(_ y: Tensor, sourceMap: Tensor) throws -> Tensor {
        let op = try TokenUnmerge(validating: y, sourceMap: sourceMap)
        let yb = try deviceBuffer(y, "tokenUnmerge y")
        let mb = try deviceBuffer(sourceMap, "tokenUnmerge sourceMap")
        let out = try empty(shape: [op.batches, op.tokens, op.dim], dtype: y.dtype, label: "unmerged tokens")
        let flags = try empty(shape: [5], dtype: .i32, label: "unmerge flags")
        try fill(flags, 0)
        let rows = op.batches * op.tokens
        if rows > 0 {
            // Rows of an even number of 16-bit elements move as 32-bit words (half the vector ops).
            let (word, words) = y.dtype.size == 2 && op.dim % 2 == 0 ? ("uint", op.dim / 2) : (Self.rawWord(y.dtype), op.dim)
            let grid = mergeRowGrid(rows: rows, d: words)
            try launch(
                "token_merge.cl", "token_unmerge", defines: ["RAW_T": word],
                args: [.buffer(yb), .buffer(mb), .buffer(out.buffer!), .buffer(flags.buffer!), .int(op.batches),
                       .int(op.rows), .int(op.tokens), .int(words), .int(grid.rowsPerItem), .int(grid.chunk)],
                global: grid.global, local: grid.local)
        }
        return out.guarded(by: [flags] + y.guards + sourceMap.guards)
    }
}
