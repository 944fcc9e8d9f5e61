import OpenCLHost

extension OpenCLBackend {
    /// Work-group size of the token selection and compaction kernels (a power of two, at most 256).
    var tokenGroup: Int { min(tuning.rowGroup, 256) }

    /// Positions per work-item of the selection and compaction kernels: chunks of 4,096
    /// positions per work-group, so a work-item's loops stay at 4,096 / group steps.
    var tokenPerItem: Int { max(1, 4096 / tokenGroup) }

    /// Positions per chunk (one work-group each).
    var tokenChunk: Int { tokenGroup * tokenPerItem }

    /// Whether one work-group per sequence does a whole selection or compaction in one launch
    /// (`token_topk_one`, `compact_one`) over `nchunks` chunks: up to 8 chunks (32,768
    /// positions), where launches cost more than the lost parallelism across chunks, and within
    /// the device's loop budget. `passes` is how many times a work-item walks its positions
    /// (6 for the selection, 3 for the compaction); `phases` how many digit phases (bin loops
    /// and a group scan each) it runs besides. Longer sequences, and sequences whose steps would
    /// pass the loop budget, use the chunked kernels.
    func oneGroupPerSequence(nchunks: Int, passes: Int, phases: Int) -> Bool {
        guard nchunks <= 8 else { return false }
        guard let budget = loopStepBudget else { return true }
        let scanSteps = tokenGroup.trailingZeroBitCount + 2
        let binSteps = 256 / tokenGroup + 1
        let steps = nchunks * (passes * (tokenPerItem + 1) + 2 * scanSteps) + phases * (3 * binSteps + scanSteps) + 16
        return steps <= budget
    }

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

    /// The loop steps, counted cumulatively (every loop of the work-item, n + 1 for a loop of n
    /// iterations, nothing unrolled), that the host plans for one work-item on a device with a
    /// loop limit: half the limit, leaving room for short loops a count leaves out (trees of
    /// log₂ GROUP steps, index searches). Nil where the device has no limit.
    var loopStepBudget: Int? { device.loopIterationLimit.map { $0 / 2 } }

    /// Column steps a row kernel's work-group takes over a row of `width` elements: 16 a step
    /// when the width is a multiple of 16, else one. With a raw copy (`raw`: the storage type the
    /// row kernels copy bits of, see `rawCopyDefines`) a 16-bit row of even width moves as
    /// width / 2 32-bit words, 16 a step only when that is a multiple of 16 (Kernels/token_rows.h):
    /// a width of 16 × an odd number takes width / 2 steps there, not width / 16. The larger of
    /// the two, since a kernel copies some rows raw and converts others.
    func rowCopySteps(width: Int, raw: DType?) -> Int {
        let plain = width % 16 == 0 ? width / 16 : width
        guard let raw, raw.size == 2, width % 2 == 0 else { return plain }
        let words = width / 2
        return max(plain, words % 16 == 0 ? words / 16 : words)
    }

    /// Work-items and rows per work-group of the row-copy kernels (gather, scatter, expand) over
    /// rows of `width` columns (`raw`: the output's storage type when some rows are copied bit
    /// for bit, see `rowCopySteps`): the gather/combine tuning, its rows per group bounded by
    /// `boundedRowsPerGroup`.
    func tokenRowLaunch(rows: Int, width: Int, raw: DType?, argument: String) throws
        -> (global: Int, local: Int, rowsPerGroup: Int)
    {
        let group = tuning.copyGroup
        let steps = rowCopySteps(width: width, raw: raw)
        let per = try boundedRowsPerGroup(width: width, steps: steps, group: group, argument: argument)
        return ((rows + per - 1) / per * group, group, per)
    }

    /// Cumulative loop steps (see `loopStepBudget`) one work-item of a row kernel may run where
    /// work-items are lanes: rows per work-group are lowered to stay within it (on a device
    /// without a loop limit this only keeps a work-group's rows short).
    static let laneLoopBudget = 16_384

    /// Rows per work-group of a row kernel whose `group` work-items stride over a row's `steps`
    /// column steps (`width` columns, or width / 16 where 16 are copied at a time), each column
    /// step running a loop of `inner` iterations when given (combine: its k slots). One
    /// work-item's loops, counted cumulatively (n + 1 for a loop of n iterations): the row loop
    /// and, per row, the column loop and its inner loops,
    ///     rows × (⌈steps / group⌉ × (inner + 1, or 1 without one) + 2) + 1.
    /// The tuning's `rowsPerGroup`, lowered where work-items are lanes so this stays within
    /// `laneLoopBudget`; a single row past the device's `loopStepBudget` is refused by name
    /// rather than left partly unwritten.
    func boundedRowsPerGroup(width: Int, steps columnSteps: Int? = nil, group: Int, inner: Int? = nil,
                             argument: String) throws -> Int {
        let per = tuning.rowsPerGroup
        guard device.workItemsAreLanes || loopStepBudget != nil else { return per }
        let columns = columnSteps ?? width
        let step = ((columns + group - 1) / group).multipliedReportingOverflow(by: (inner ?? 0) + 1)
        let row = step.partialValue.addingReportingOverflow(2)
        let overflow = step.overflow || row.overflow
        if let budget = loopStepBudget, overflow || row.partialValue + 1 > budget {
            throw SwitchyardError.outOfRange(
                argument: "\(argument) row width", value: width,
                range: "at most \(budget) loop steps per work-item on this device (copyGroup \(group); one row needs \(overflow ? "more" : "\(row.partialValue + 1)"))")
        }
        guard !overflow else { return 1 }
        return max(1, min(per, (Self.laneLoopBudget - 1) / row.partialValue))
    }
}
