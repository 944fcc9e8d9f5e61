import OpenCLHost

extension OpenCLBackend {
    /// `y [B, M, N] = a [B, M, K] · rows of x` (`softmoe_mix`): the register tile of the merge's
    /// similarity on CPU-class devices, one element per lane where work-items are lanes.
    func softMoEMix(
        a: Buffer, x: Buffer, xDType: DType, rowOf: Buffer?, rows: Int, y: Tensor, batches: Int, m: Int, k: Int, n: Int
    ) throws {
        if batches == 0 || m == 0 || n == 0 { return }
        var defines = xDType.defines("X").merging(y.dtype.defines("Y")) { a, _ in a }
        let common: [Arg] = [.buffer(a), .buffer(x), .buffer(rowOf ?? a), .int(rowOf == nil ? 0 : 1), .int(rows), .buffer(y.buffer!)]
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

    public func softMoEDispatch(_ x: Tensor, phi: ExpertWeights) throws -> SoftMoESlots {
        let op = try SoftMoEDispatch(validating: x, phi: phi)
        let (b, t, d, n) = (op.batches, op.tokens, op.dim, op.slots)
        let xb = try deviceBuffer(x, "softMoEDispatch x")
        let slots = try empty(shape: [b, n, d], dtype: x.dtype, label: "soft MoE slots")
        let logits = try groupedMatmul(x.reshaped([b * t, d]), weights: phi, dtype: .f32)
        let combine = try softmax(logits).reshaped([b, t, n])
        let dt = try empty(shape: [b, n, t], dtype: .f32, label: "soft MoE dispatch weights")
        if b > 0 && t > 0 {
            let group = tuning.rowGroup
            try launch(
                "soft_moe.cl", "softmoe_dispatch_weights", defines: ["GROUP": "\(group)"],
                args: [.buffer(logits.buffer!), .buffer(dt.buffer!), .int(t), .int(n)],
                global: [n * group, b], local: [group, 1])
        }
        try softMoEMix(
            a: dt.buffer!, x: xb, xDType: x.dtype, rowOf: nil, rows: b * t,
            y: slots, batches: b, m: n, k: t, n: d)
        return SoftMoESlots(slots: slots.guarded(by: x.guards), combineWeights: combine.guarded(by: x.guards))
    }

    public func softMoECombine(_ ys: Tensor, weights: Tensor, routing: Routing?, dtype: DType?) throws -> Tensor {
        let op = try SoftMoECombine(validating: ys, weights: weights, routing: routing, dtype: dtype)
        let y = try empty(shape: [op.batches, op.tokens, op.dim], dtype: op.outputDType, label: "soft MoE output")
        try softMoEMix(
            a: try deviceBuffer(weights, "softMoECombine weights"), x: try deviceBuffer(ys, "softMoECombine ys"),
            xDType: ys.dtype, rowOf: try routing.map { try deviceBuffer($0.rowOf, "routing") }, rows: op.rows, y: y,
            batches: op.batches, m: op.tokens, k: op.slots, n: op.dim)
        return y.guarded(by: ys.guards + weights.guards + (routing.map { [$0.flags] } ?? []))
    }
}
