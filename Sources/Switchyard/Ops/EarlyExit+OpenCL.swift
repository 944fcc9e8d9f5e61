import OpenCLHost

extension OpenCLBackend {
    /// Work-items per row of `early_exit_rows`: the token group, widened (a power of two, up to
    /// the device's largest work-group) until each of a work-item's three loops over the classes
    /// takes at most 8,192 steps: well below llvmpipe's 65,535 iterations even if its budget
    /// counted the three loops together. A device too small for that where work-items are
    /// lanes is an error naming the classes.
    func exitGroup(classes: Int) throws -> Int {
        var group = tokenGroup
        let largest = max(1, device.maxWorkGroupSize)
        while (classes + group - 1) / group > 8192 && group * 2 <= min(largest, 1024) { group *= 2 }
        if (classes + group - 1) / group > 8192 && device.workItemsAreLanes {
            throw SwitchyardError.outOfRange(
                argument: "earlyExit classes", value: classes, range: "1...\(8192 * group) on this device (work-groups of \(group))")
        }
        return group
    }

    /// The widest row `early_exit_rows_item` (a work-item per row, CPU-class devices) takes:
    /// 1,024 vectors of the device's float width (`exitWidth`), so its loops are short and each
    /// lane's plain f32 sums (≤ 1,025 terms) stay within the conformance tolerance (at 262,144
    /// classes, 16,384 terms a lane, the max probability's NMSE was 4.7e-11 against the 1e-11
    /// allowed).
    var exitItemClasses: Int { exitWidth * 1024 }

    /// The float vector width of `early_exit_rows_item`'s fast path: the device's native one.
    var exitWidth: Int { device.floatVectorWidth }

    public func exitState(samples: Int, classes: Int, heads: Int, probabilities: DType?) throws -> ExitState {
        try EarlyExit.validateState(samples: samples, classes: classes, heads: heads, probabilities: probabilities)
        let n = samples
        func vector(_ shape: [Int], _ dtype: DType, _ label: String, _ value: Int32) throws -> Tensor {
            let t = try empty(shape: shape, dtype: dtype, label: label)
            try fill(t, value)  // f32 zero is the i32 zero's bits
            return t
        }
        let positions = try empty(shape: [n], dtype: .i32, label: "exit positions")
        if n > 0 {
            try launch(
                "early_exit.cl", "early_exit_iota", args: [.buffer(positions.buffer!), .int(n)],
                global: [roundUp(n, 64)], local: [64])
        }
        var probs: Tensor?
        if let dtype = probabilities {
            let p = try empty(shape: [n, classes], dtype: dtype, label: "exit probabilities")
            if n > 0 {
                try launch(
                    "early_exit.cl", "early_exit_zero", defines: dtype.defines("Y"), args: [.buffer(p.buffer!), .int(n * classes)],
                    global: [roundUp(n * classes, 64)], local: [64])
            }
            probs = p
        }
        return ExitState(
            predictions: try vector([n], .i32, "exit predictions", -1), exitHead: try vector([n], .i32, "exit heads", -1),
            confidence: try vector([n], .f32, "exit confidence", 0), probabilities: probs,
            active: try vector([n], .i32, "exit active", 1), positions: positions, count: try vector([1], .i32, "exit count", Int32(n)),
            lastPrediction: try vector([n], .i32, "exit last prediction", -1), streak: try vector([n], .i32, "exit streak", 0),
            histogram: try vector([heads], .i32, "exit histogram", 0), head: 0)
    }

    public func earlyExit(_ logits: Tensor, state: ExitState, criterion: ExitCriterion, last: Bool) throws -> ExitState {
        let op = try EarlyExit(validating: logits, state: state, criterion: criterion, last: last)
        let n = op.samples
        let lb = try deviceBuffer(logits, "earlyExit logits")
        let old = try [
            state.active, state.predictions, state.exitHead, state.confidence, state.lastPrediction, state.streak,
            state.positions, state.count, state.histogram,
        ].map { try deviceBuffer($0, "earlyExit state") }
        let active = try empty(shape: [n], dtype: .i32, label: "exit active")
        let predictions = try empty(shape: [n], dtype: .i32, label: "exit predictions")
        let exitHead = try empty(shape: [n], dtype: .i32, label: "exit heads")
        let confidence = try empty(shape: [n], dtype: .f32, label: "exit confidence")
        let lastPrediction = try empty(shape: [n], dtype: .i32, label: "exit last prediction")
        let streak = try empty(shape: [n], dtype: .i32, label: "exit streak")
        let histogram = try empty(shape: [op.heads], dtype: .i32, label: "exit histogram")
        // The kept rows are copied forward, then the exiting samples' rows written over them.
        let probs = try state.probabilities.map { try copy($0) }
        // The state stage in five launches besides the rows (Kernels/early_exit.cl; nine before
        // the fusion): the inverse map's fill, the flags' zeroing and the histogram's copy together,
        // the map, the per-sample update with the compaction's chunk counts, the scan with the
        // exit's count, then compact_emit.
        let flags = try empty(shape: [DepthFlags.count], dtype: .i32, label: "depth flags")
        let inv = try empty(shape: [n], dtype: .i32, label: "token inverse map")
        let prepareItems = max(n, DepthFlags.count, op.heads)
        try launch(
            "early_exit.cl", "early_exit_prepare",
            args: [.buffer(inv.buffer!), .int(n), .buffer(flags.buffer!), .int(DepthFlags.count), .buffer(old[8]),
                   .buffer(histogram.buffer!), .int(op.heads), .int(op.head)],
            global: [roundUp(prepareItems, 64)], local: [64])
        if n > 0 {
            try launch(
                "token_index.cl", "token_index_map",
                args: [.buffer(old[6]), .buffer(inv.buffer!), .buffer(flags.buffer!), .int(1), .int(n), .int(n), .int(op.rows)],
                global: [roundUp(n, 64)], local: [64])
        }
        let record = try tokenScratch([max(op.rows, 1), 4], .i32, "exit records")
        let recordConf = try tokenScratch([max(op.rows, 1)], .f32, "exit record confidence")
        if op.rows > 0 {
            // Where work-items are lanes, a work-group per row (loops bounded by widening the
            // group); on a CPU-class device a work-item per row, rows across the vector lanes,
            // up to `exitItemClasses`, wider rows a work-group each there too.
            let lanes = device.workItemsAreLanes || op.classes > exitItemClasses
            let group = lanes ? try exitGroup(classes: op.classes) : tokenGroup
            var defines = op.dtype.defines("X").merging(["GROUP": "\(group)"]) { a, _ in a }
            if !lanes { defines["EW"] = "\(exitWidth)" }
            if let p = op.probabilityDType {
                defines.merge(p.defines("Y")) { a, _ in a }
                defines["KEEP_PROBS"] = "1"
            }
            var patience = 0
            if case .patience(let p) = criterion { patience = p }
            try launch(
                "early_exit.cl", lanes ? "early_exit_rows" : "early_exit_rows_item", defines: defines,
                args: [.buffer(lb), .int(op.rows), .int(op.classes), .buffer(old[6]), .int(n), .buffer(old[4]), .buffer(old[5]),
                       .buffer(record), .buffer(recordConf), .buffer(probs?.buffer ?? record), .int(criterion.code),
                       .float(criterion.threshold), .int(patience), .int(last ? 1 : 0)],
                global: [lanes ? op.rows * group : roundUp(op.rows, group)], local: [group])
        }
        // The still-active samples compacted for the next block (compact.cl's stable compaction,
        // its count and scan stages fused into early_exit_tokens and early_exit_scan).
        let positions = try empty(shape: [n], dtype: .i32, label: "exit positions")
        let count = try empty(shape: [1], dtype: .i32, label: "exit count")
        let group = tokenGroup
        let nchunks = (n + tokenChunk - 1) / tokenChunk
        let chunkCounts = try tokenScratch([max(nchunks, 1), 2], .i32, "exit chunk counts")
        var chunkDefines = tokenChunkDefines
        if nchunks > 0 {
            try launch(
                "early_exit.cl", "early_exit_tokens", defines: chunkDefines,
                args: [.buffer(inv.buffer!), .int(op.rows), .buffer(record), .buffer(recordConf), .buffer(old[0]),
                       .buffer(old[1]), .buffer(old[2]), .buffer(old[3]), .buffer(old[4]), .buffer(old[5]),
                       .buffer(active.buffer!), .buffer(predictions.buffer!), .buffer(exitHead.buffer!),
                       .buffer(confidence.buffer!), .buffer(lastPrediction.buffer!), .buffer(streak.buffer!),
                       .buffer(flags.buffer!), .int(n), .int(op.head), .buffer(chunkCounts)],
                global: [nchunks * group], local: [group])
        }
        var last = try launch(
            "early_exit.cl", "early_exit_scan", defines: chunkDefines,
            args: [.buffer(chunkCounts), .int(nchunks), .buffer(count.buffer!), .buffer(histogram.buffer!), .buffer(old[7]),
                   .int(op.heads), .int(op.head)],
            global: [group], local: [group])
        if nchunks > 0 {
            chunkDefines["MASK_I32"] = "1"
            last = try launch(
                "compact.cl", "compact_emit", defines: chunkDefines,
                args: [.buffer(active.buffer!), .buffer(chunkCounts), .buffer(count.buffer!), .buffer(positions.buffer!),
                       .int(n), .int(nchunks), .float(0)],
                global: [nchunks * group], local: [group])
        }
        holdScratch([inv.buffer!, record, recordConf, chunkCounts], until: last)
        let guards = logits.guards + state.active.guards + [flags]
        return ExitState(
            predictions: predictions.guarded(by: guards), exitHead: exitHead.guarded(by: guards),
            confidence: confidence.guarded(by: guards), probabilities: probs?.guarded(by: guards),
            active: active.guarded(by: guards), positions: positions.guarded(by: guards),
            count: count.guarded(by: guards), lastPrediction: lastPrediction.guarded(by: guards),
            streak: streak.guarded(by: guards), histogram: histogram.guarded(by: guards), head: state.head + 1)
    }
}
