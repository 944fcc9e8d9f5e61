import OpenCLHost

extension OpenCLBackend {
    public func gatherTokens(_ x: Tensor, indices: Tensor, rows: Int?, dtype: DType?) throws -> Tensor {
        let op = try GatherTokens(validating: x, indices: indices, rows: rows, dtype: dtype)
        let xb = try deviceBuffer(x, "gatherTokens x")
        let ib = try deviceBuffer(indices, "gatherTokens indices")
        let y = try empty(shape: op.outputShape, dtype: op.outputDType, label: "gathered tokens")
        let flags = try tokenFlagsTensor()
        let inv = try tokenIndexMap(indices, batch: op.batch, length: op.length, slots: op.slots, rows: op.rows, flags: flags)
        let total = op.batch * op.rows
        if total > 0 && op.width > 0 {
            let raw = rawCopyDefines(output: op.outputDType, sources: ["RAW_X": op.dtype]).isEmpty ? nil : op.outputDType
            let (global, local, per) = try tokenRowLaunch(
                rows: total, width: op.width, raw: raw, argument: "gatherTokens")
            try launch(
                "gather_tokens.cl", "gather_tokens",
                defines: op.dtype.defines("X").merging(op.outputDType.defines("Y")) { a, _ in a }
                    .merging(["GROUP": "\(local)"]) { a, _ in a }
                    .merging(rawCopyDefines(output: op.outputDType, sources: ["RAW_X": op.dtype])) { a, _ in a },
                args: [.buffer(xb), .buffer(ib), .buffer(y.buffer!), .int(total), .int(op.length), .int(op.slots),
                       .int(op.rows), .int(op.width), .int(per)],
                global: [global], local: [local])
        }
        holdScratch([inv.buffer!], until: try context.queue.marker())
        return y.guarded(by: x.guards + indices.guards + [flags])
    }
}
