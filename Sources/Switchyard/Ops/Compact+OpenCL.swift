import OpenCLHost

extension OpenCLBackend {
    public func compact(_ keep: Tensor, threshold: Float?) throws -> (positions: Tensor, counts: Tensor) {
        let op = try Compact(validating: keep, threshold: threshold)
        let kb = try deviceBuffer(keep, "compact keep")
        let positions = try empty(shape: [op.batch, op.length], dtype: .i32, label: "compact positions")
        let counts = try empty(shape: [op.batch], dtype: .i32, label: "compact counts")
        let flags = try tokenFlagsTensor()
        let guards = keep.guards + [flags]
        if op.batch == 0 { return (positions.guarded(by: guards), counts.guarded(by: guards)) }
        let (b, l) = (op.batch, op.length)
        let group = tokenGroup
        let nchunks = (l + tokenChunk - 1) / tokenChunk
        var defines = tokenChunkDefines
        if op.dtype == .i32 { defines["MASK_I32"] = "1" } else { defines.merge(op.dtype.defines("X")) { a, _ in a } }
        let t = threshold ?? 0
        if nchunks > 0 && oneGroupPerSequence(nchunks: nchunks, passes: 3, phases: 1) {
            try launch(
                "compact.cl", "compact_one", defines: defines,
                args: [.buffer(kb), .buffer(counts.buffer!), .buffer(flags.buffer!), .buffer(positions.buffer!), .int(l),
                       .int(nchunks), .float(t)],
                global: [group, b], local: [group, 1])
            return (positions.guarded(by: guards), counts.guarded(by: guards))
        }
        let chunkCounts = try tokenScratch([b, max(nchunks, 1), 2], .i32, "compact chunk counts")
        if nchunks > 0 {
            try launch(
                "compact.cl", "compact_count", defines: defines,
                args: [.buffer(kb), .buffer(chunkCounts), .buffer(flags.buffer!), .int(l), .int(nchunks), .float(t)],
                global: [nchunks * group, b], local: [group, 1])
        }
        var last = try launch(
            "compact.cl", "compact_scan", defines: defines,
            args: [.buffer(chunkCounts), .buffer(counts.buffer!), .int(nchunks)], global: [group, b], local: [group, 1])
        if nchunks > 0 {
            last = try launch(
                "compact.cl", "compact_emit", defines: defines,
                args: [.buffer(kb), .buffer(chunkCounts), .buffer(counts.buffer!), .buffer(positions.buffer!), .int(l),
                       .int(nchunks), .float(t)],
                global: [nchunks * group, b], local: [group, 1])
        }
        holdScratch([chunkCounts], until: last)
        return (positions.guarded(by: guards), counts.guarded(by: guards))
    }
}
