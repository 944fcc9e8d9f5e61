import OpenCLHost

extension OpenCLBackend {
    /// Work-group size of the token selection and compaction kernels (a power of two, at most 256).
    var tokenGroup: Int { min(tuning.rowGroup, 256) }

    /// Positions per work-item of the selection and compaction kernels: chunks of 4,096
    /// positions per work-group, so a work-item's loops stay at 4,096 / group steps.
    var tokenPerItem: Int { max(1, 4096 / tokenGroup) }

    /// Positions per chunk (one work-group each).
    var tokenChunk: Int { tokenGroup * tokenPerItem }

    /// The `-D` options of the chunked kernels.
    var tokenChunkDefines: [String: String] { ["GROUP": "\(tokenGroup)", "PER": "\(tokenPerItem)"] }

    /// A scratch buffer of `count` elements of `dtype`, checked against the device's largest
    /// allocation (an error naming it, never a failed allocation deep in the op).
    func tokenScratch(_ shape: [Int], _ dtype: DType, _ label: String) throws -> Buffer {
        let bytes = try Tensor.checkedCount(shape, dtype: dtype, label) * dtype.size
        guard bytes <= device.maxAllocationBytes else {
            throw SwitchyardError.shape(
                argument: label, expected: "at most \(device.maxAllocationBytes) bytes (the device's largest allocation)",
                actual: shape)
        }
        return try context.buffer(byteCount: max(bytes, 4), label: label)
    }

    /// A zeroed token flags tensor `[4]` (see `TokenFlags`), filled on the queue.
    func tokenFlagsTensor() throws -> Tensor {
        let flags = try empty(shape: [TokenFlags.count], dtype: .i32, label: "token flags")
        try fill(flags, 0)
        return flags
    }

    /// Checks token indices `[batch, slots]` on the device against sequences of `length` and the
    /// first `rows` slots, raising bits of `flags`; returns the inverse map `[batch, length]`
    /// (slot of each position, −1 for none), enqueued, nothing read back.
    func tokenIndexMap(_ indices: Tensor, batch: Int, length: Int, slots: Int, rows: Int, flags: Tensor) throws -> Tensor {
        let inv = try empty(shape: [batch, length], dtype: .i32, label: "token inverse map")
        try fill(inv, -1)
        let n = batch * slots
        if n > 0 {
            try launch(
                "token_index.cl", "token_index_map",
                args: [.buffer(try deviceBuffer(indices, "token indices")), .buffer(inv.buffer!), .buffer(flags.buffer!),
                       .int(batch), .int(length), .int(slots), .int(rows)],
                global: [roundUp(n, 64)], local: [64])
        }
        return inv
    }

    /// The `-D` options that make the row kernels copy bits (no conversion) from each source
    /// whose storage type is the output's (see Kernels/token_rows.h): `sources` maps a source's
    /// define (`RAW_X`, `RAW_A`) to its type.
    func rawCopyDefines(output: DType, sources: [String: DType?]) -> [String: String] {
        var defines: [String: String] = [:]
        for (name, type) in sources where type == output { defines[name] = "1" }
        if !defines.isEmpty {
            defines["RAW_T"] = output.size == 4 ? "uint" : "ushort"
            defines["RAW_SIZE"] = "\(output.size)"
        }
        return defines
    }

    /// Work-items and rows per work-group of the row-copy kernels (gather, scatter, expand) over
    /// rows of `width` columns: the gather/combine tuning, its rows per group bounded by
    /// `boundedRowsPerGroup`.
    func tokenRowLaunch(rows: Int, width: Int, argument: String) throws -> (global: Int, local: Int, rowsPerGroup: Int) {
        let group = tuning.copyGroup
        // The kernels copy 16 elements a step when the width is a multiple of 16.
        let steps = width % 16 == 0 ? width / 16 : width
        let per = try boundedRowsPerGroup(width: width, steps: steps, group: group, argument: argument)
        return ((rows + per - 1) / per * group, group, per)
    }

    /// Loop iterations one work-item of a row kernel may run on a lanes device: a quarter of
    /// llvmpipe's 65,535, after which it silently leaves a loop.
    static let laneLoopBudget = 16_384

    /// Rows per work-group of a row kernel whose `group` work-items stride over a row's `steps`
    /// column steps (`width` columns, or width / 16 where 16 are copied at a time; `inner` loop
    /// steps per column step, e.g. combine's k): the tuning's `rowsPerGroup`, lowered on lanes
    /// devices so one work-item's loop nest (rows × ⌈steps / group⌉ × inner) stays within
    /// `laneLoopBudget`. A single row beyond the budget is refused by name rather than left
    /// partly unwritten.
    func boundedRowsPerGroup(width: Int, steps columnSteps: Int? = nil, group: Int, inner: Int = 1,
                             argument: String) throws -> Int {
        let per = tuning.rowsPerGroup
        guard device.workItemsAreLanes else { return per }
        let columns = columnSteps ?? width
        let steps = ((columns + group - 1) / group).multipliedReportingOverflow(by: max(1, inner))
        let budget = Self.laneLoopBudget
        guard !steps.overflow, steps.partialValue <= budget else {
            throw SwitchyardError.outOfRange(
                argument: "\(argument) row width", value: width,
                range: "at most \(budget) loop steps per work-item on this lanes device (copyGroup \(group); this row needs \(steps.overflow ? "more" : "\(steps.partialValue)"))")
        }
        return max(1, min(per, budget / max(1, steps.partialValue)))
    }
}
