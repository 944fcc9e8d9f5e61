import OpenCLHost

extension OpenCLBackend {
    public func scatterTokens(_ x: Tensor, updates f: Tensor, indices: Tensor, weights: Tensor?, dtype: DType?) throws
        -> Tensor
    {
        let op = try ScatterTokens(validating: x, updates: f, indices: indices, weights: weights, dtype: dtype)
        let xb = try deviceBuffer(x, "scatterTokens x")
        let fb = try deviceBuffer(f, "scatterTokens updates")
        let wb = try weights.map { try deviceBuffer($0, "scatterTokens weights") }
        let y = try empty(shape: op.outputShape, dtype: op.outputDType, label: "scattered tokens")
        let flags = try tokenFlagsTensor()
        let inv = try tokenIndexMap(indices, batch: op.batch, length: op.length, slots: op.slots, rows: op.slots, flags: flags)
        let total = op.batch * op.length
        if total > 0 && op.width > 0 {
            let raw = rawCopyDefines(output: op.outputDType, sources: ["RAW_X": op.dtype]).isEmpty ? nil : op.outputDType
            let (global, local, per) = try tokenRowLaunch(
                rows: total, width: op.width, raw: raw, argument: "scatterTokens")
            var defines = op.dtype.defines("X").merging(op.outputDType.defines("Y")) { a, _ in a }
            defines.merge(op.updateDType.defines("A")) { a, _ in a }
            defines.merge((op.weightDType ?? .f32).defines("W")) { a, _ in a }
            defines["GROUP"] = "\(local)"
            defines.merge(rawCopyDefines(output: op.outputDType, sources: ["RAW_X": op.dtype])) { a, _ in a }
            try launch(
                "scatter_tokens.cl", "scatter_tokens", defines: defines,
                args: [.buffer(xb), .int(1), .float(0), .buffer(fb), .buffer(wb ?? fb), .int(wb == nil ? 0 : 1),
                       .buffer(inv.buffer!), .buffer(y.buffer!), .int(total), .int(op.length), .int(op.slots),
                       .int(op.slots), .int(op.width), .int(per)],
                global: [global], local: [local])
        }
        holdScratch([inv.buffer!], until: try context.queue.marker())
        return y.guarded(by: x.guards + f.guards + indices.guards + (weights?.guards ?? []) + [flags])
    }
}
