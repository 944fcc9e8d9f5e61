import OpenCLHost

extension OpenCLBackend {
    public func tokenTopK(_ scores: Tensor, capacity: TokenCapacity, weighting: TokenWeighting) throws
        -> (indices: Tensor, weights: Tensor)
    {
        let op = try TokenTopK(validating: scores, capacity: capacity, weighting: weighting)
        let sb = try deviceBuffer(scores, "tokenTopK scores")
        let indices = try empty(shape: op.outputShape, dtype: .i32, label: "tokenTopK indices")
        let weights = try empty(shape: op.outputShape, dtype: op.dtype, label: "tokenTopK weights")
        let guards = scores.guards
        if op.batch == 0 || op.capacity == 0 { return (indices.guarded(by: guards), weights.guarded(by: guards)) }
        let (b, l, c) = (op.batch, op.length, op.capacity)
        let group = tokenGroup
        let nchunks = (l + tokenChunk - 1) / tokenChunk
        let defines = scores.dtype.defines("X").merging(tokenChunkDefines) { a, _ in a }
        if oneGroupPerSequence(nchunks: nchunks, passes: 6, phases: 4) {
            try launch(
                "token_topk.cl", "token_topk_one", defines: defines,
                args: [.buffer(sb), .buffer(indices.buffer!), .buffer(weights.buffer!), .int(l), .int(nchunks), .int(c),
                       .int(weighting == .sigmoid ? 1 : 0)],
                global: [group, b], local: [group, 1])
            return (indices.guarded(by: guards), weights.guarded(by: guards))
        }
        let state = try tokenScratch([b, 2], .i32, "tokenTopK select state")
        let hist = try tokenScratch([b, 256], .i32, "tokenTopK histogram")
        let counts = try tokenScratch([b, nchunks, 2], .i32, "tokenTopK chunk counts")
        try launch(
            "token_topk.cl", "token_topk_init", defines: defines,
            args: [.buffer(state), .buffer(hist), .int(b), .int(c)], global: [roundUp(b * 256, 64)], local: [64])
        // The radix select: 4 passes of 8 bits, from the top.
        for shift in stride(from: 24, through: 0, by: -8) {
            try launch(
                "token_topk.cl", "token_topk_hist", defines: defines,
                args: [.buffer(sb), .buffer(state), .buffer(hist), .int(l), .int(shift)],
                global: [nchunks * group, b], local: [group, 1])
            try launch(
                "token_topk.cl", "token_topk_digit", defines: defines,
                args: [.buffer(state), .buffer(hist), .int(b), .int(shift)],
                global: [roundUp(b, itemGroup)], local: [itemGroup])
        }
        // The stable compaction of the chosen positions.
        try launch(
            "token_topk.cl", "token_topk_count", defines: defines,
            args: [.buffer(sb), .buffer(state), .buffer(counts), .int(l), .int(nchunks)],
            global: [nchunks * group, b], local: [group, 1])
        try launch(
            "token_topk.cl", "token_topk_scan", defines: defines, args: [.buffer(counts), .int(nchunks)],
            global: [group, b], local: [group, 1])
        let last = try launch(
            "token_topk.cl", "token_topk_emit", defines: defines,
            args: [.buffer(sb), .buffer(state), .buffer(counts), .buffer(indices.buffer!), .buffer(weights.buffer!),
                   .int(l), .int(nchunks), .int(c), .int(weighting == .sigmoid ? 1 : 0)],
            global: [nchunks * group, b], local: [group, 1])
        holdScratch([state, hist, counts], until: last)
        return (indices.guarded(by: guards), weights.guarded(by: guards))
    }
}
