import OpenCLHost

extension OpenCLBackend {
    /// `y [B, M, N] = a · rows of x` (`softmoe_mix`), batch b's `a` block `M × K` at `b·M·K`,
    /// element (m, k) at `m·aStrides.m + k·aStrides.k`: the register tile of the device's matmul
    /// on CPU-class devices, one element per lane where work-items are lanes.
    func softMoEMix(
        a: Buffer, aStrides: (m: Int, k: Int), x: Buffer, xDType: DType, rowOf: Buffer?, rows: Int, y: Tensor,
        batches: Int, m: Int, k: Int, n: Int
    ) throws {
        if batches == 0 || m == 0 || n == 0 { return }
        var defines = xDType.defines("X").merging(y.dtype.defines("Y")) { a, _ in a }
        let common: [Arg] = [
            .buffer(a), .int(aStrides.m), .int(aStrides.k), .buffer(x), .buffer(rowOf ?? a), .int(rowOf == nil ? 0 : 1),
            .int(rows), .buffer(y.buffer!),
        ]
        if device.workItemsAreLanes {
            let lanes = lanesGroup(32)
            try launch(
                "soft_moe.cl", "softmoe_mix_lanes", defines: defines, args: common + [.int(m), .int(k), .int(n)],
                global: [roundUp(n, lanes), m, batches], local: [lanes, 1, 1])
            return
        }
        let tile = mergeTile
        defines.merge(["RA": "\(tile.rows)", "VW": "\(tile.width)", "NV": "\(tile.vectors)"]) { a, _ in a }
        let panel = tile.width * tile.vectors
        let tiles = (m + tile.rows - 1) / tile.rows
        try launch(
            "soft_moe.cl", "softmoe_mix", defines: defines, args: common + [.int(m), .int(k), .int(n), .int(tiles)],
            global: [tiles, (n + panel - 1) / panel, batches], local: [1, 1, 1])
    }

    /// Both softmaxes of the logits `[B, T, n]` f32: the combine weights C (over the slots, per
    /// token) and the dispatch weights D (over the tokens, per slot), each `[B, T, n]`. CPU-class
    /// devices read the logits in vectors of their native float width (D: a vector of slots per
    /// work-item; C: rows of `rowsPerGroup` tokens per work-item); where work-items are lanes, a
    /// lane per slot column (D) or per token row (C).
    func softMoESoftmaxes(logits: Tensor, combine: Tensor, dispatch: Tensor, batches: Int, tokens: Int, slots: Int) throws {
        let rows = batches * tokens
        if rows == 0 || slots == 0 { return }
        let lanes = device.workItemsAreLanes
        let width = lanes ? 1 : device.floatVectorWidth
        let perItem = lanes ? 1 : max(1, tuning.rowsPerGroup)
        let group = lanes ? lanesGroup(32) : 1
        let defines = ["VW": "\(width)", "ROWS_PER_ITEM": "\(perItem)"]
        let runs = (slots + width - 1) / width
        try launch(
            "soft_moe.cl", "softmoe_softmax_tokens", defines: defines,
            args: [.buffer(logits.buffer!), .buffer(dispatch.buffer!), .int(tokens), .int(slots), .int(runs)],
            global: [roundUp(runs, group), batches], local: [group, 1])
        let items = (rows + perItem - 1) / perItem
        try launch(
            "soft_moe.cl", "softmoe_softmax_slots", defines: defines,
            args: [.buffer(logits.buffer!), .buffer(combine.buffer!), .int(rows), .int(slots)],
            global: [roundUp(items, group)], local: [group])
    }

    public func softMoEDispatch(_ x: Tensor, phi: ExpertWeights) throws -> SoftMoESlots {
        let op = try SoftMoEDispatch(validating: x, phi: phi)
        let (b, t, d, n) = (op.batches, op.tokens, op.dim, op.slots)
        let xb = try deviceBuffer(x, "softMoEDispatch x")
        let slots = try empty(shape: [b, n, d], dtype: x.dtype, label: "soft MoE slots")
        let logits = try groupedMatmul(x.reshaped([b * t, d]), weights: phi, dtype: .f32)
        let combine = try empty(shape: [b, t, n], dtype: .f32, label: "soft MoE combine weights")
        let dispatch = try empty(shape: [b, t, n], dtype: .f32, label: "soft MoE dispatch weights")
        try softMoESoftmaxes(logits: logits, combine: combine, dispatch: dispatch, batches: b, tokens: t, slots: n)
        try softMoEMix(
            a: dispatch.buffer!, aStrides: (m: 1, k: n), x: xb, xDType: x.dtype, rowOf: nil, rows: b * t,
            y: slots, batches: b, m: n, k: t, n: d)
        return SoftMoESlots(slots: slots.guarded(by: x.guards), combineWeights: combine.guarded(by: x.guards))
    }

    public func softMoECombine(_ ys: Tensor, weights: Tensor, routing: Routing?, dtype: DType?) throws -> Tensor {
        let op = try SoftMoECombine(validating: ys, weights: weights, routing: routing, dtype: dtype)
        let y = try empty(shape: [op.batches, op.tokens, op.dim], dtype: op.outputDType, label: "soft MoE output")
        try softMoEMix(
            a: try deviceBuffer(weights, "softMoECombine weights"), aStrides: (m: op.slots, k: 1),
            x: try deviceBuffer(ys, "softMoECombine ys"), xDType: ys.dtype,
            rowOf: try routing.map { try deviceBuffer($0.rowOf, "routing") }, rows: op.rows, y: y,
            batches: op.batches, m: op.tokens, k: op.slots, n: op.dim)
        return y.guarded(by: ys.guards + weights.guards + (routing.map { [$0.flags] } ?? []))
    }
}
