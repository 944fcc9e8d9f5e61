import OpenCLHost

extension OpenCLBackend {
    public func expandTokens(
        _ packed: Tensor, positions: Tensor, length: Int, base: Tensor?, fill: Float, dtype: DType?
    ) throws -> Tensor {
        let op = try ExpandTokens(
            validating: packed, positions: positions, length: length, base: base, fill: fill, dtype: dtype)
        let pb = try deviceBuffer(packed, "expandTokens packed")
        let bb = try base.map { try deviceBuffer($0, "expandTokens base") }
        let y = try empty(shape: op.outputShape, dtype: op.outputDType, label: "expanded tokens")
        let flags = try tokenFlagsTensor()
        let inv = try tokenIndexMap(
            positions, batch: op.batch, length: op.length, slots: op.slots, rows: op.rows, flags: flags)
        let total = op.batch * op.length
        if total > 0 && op.width > 0 {
            let raw = rawCopyDefines(output: op.outputDType, sources: ["RAW_X": op.baseDType, "RAW_A": op.dtype]).isEmpty ? nil : op.outputDType
            let (global, local, per) = try tokenRowLaunch(
                rows: total, width: op.width, raw: raw, argument: "expandTokens")
            var defines = (op.baseDType ?? .f32).defines("X").merging(op.outputDType.defines("Y")) { a, _ in a }
            defines.merge(op.dtype.defines("A")) { a, _ in a }
            defines["GROUP"] = "\(local)"
            defines.merge(rawCopyDefines(output: op.outputDType, sources: ["RAW_X": op.baseDType, "RAW_A": op.dtype])) { a, _ in a }
            try launch(
                "expand_tokens.cl", "expand_tokens", defines: defines,
                args: [.buffer(bb ?? pb), .int(bb == nil ? 0 : 1), .float(fill), .buffer(pb), .buffer(pb), .int(0),
                       .buffer(inv.buffer!), .buffer(y.buffer!), .int(total), .int(op.length), .int(op.slots),
                       .int(op.rows), .int(op.width), .int(per)],
                global: [global], local: [local])
        }
        holdScratch([inv.buffer!], until: try context.queue.marker())
        return y.guarded(by: packed.guards + positions.guards + (base?.guards ?? []) + [flags])
    }
}
