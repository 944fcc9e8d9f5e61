import OpenCLHost

extension OpenCLBackend {
    /// A zeroed depth flags tensor `[8]` (see `DepthFlags`), filled on the queue.
    func depthFlagsTensor() throws -> Tensor {
        let flags = try empty(shape: [DepthFlags.count], dtype: .i32, label: "depth flags")
        try fill(flags, 0)
        return flags
    }

    /// The grid of the halting row kernels over `tokens` rows of width `d`: column blocks of
    /// 1,024 · group elements (Kernels/halting.cl's COLS) times row groups of at most 16 rows, so
    /// a work-item's loop nest stays at 16 · 1,024 iterations whatever d and the tuning.
    func haltingGrid(tokens: Int, width d: Int) -> (global: [Int], local: [Int], rowsPerGroup: Int, defines: [String: String]) {
        let group = tuning.copyGroup
        let per = min(tuning.rowsPerGroup, 16)
        let blocks = max(1, (d + 1024 * group - 1) / (1024 * group))
        return ([blocks * group, (tokens + per - 1) / per], [group, 1], per, ["GROUP": "\(group)"])
    }

    public func haltingState(tokens: Int, width: Int, dtype: DType) throws -> HaltingState {
        try Halting.validateState(tokens: tokens, width: width, dtype: dtype)
        let n = tokens
        func vector(_ dtype: DType, _ label: String, _ value: Int32) throws -> Tensor {
            let t = try empty(shape: [n], dtype: dtype, label: label)
            try fill(t, value)  // f32 zero is the i32 zero's bits
            return t
        }
        let acc = try empty(shape: [n, width], dtype: dtype, label: "halting accumulated")
        let positions = try empty(shape: [n], dtype: .i32, label: "halting positions")
        let count = try empty(shape: [1], dtype: .i32, label: "halting count")
        try fill(count, Int32(n))
        if n > 0 {
            let grid = haltingGrid(tokens: n, width: width)
            try launch(
                "halting.cl", "halting_init", defines: grid.defines.merging(dtype.defines("Y")) { a, _ in a },
                args: [.buffer(acc.buffer!), .buffer(positions.buffer!), .int(n), .int(width), .int(grid.rowsPerGroup)],
                global: grid.global, local: grid.local)
        }
        return HaltingState(
            cumulative: try vector(.f32, "halting cumulative", 0), remainder: try vector(.f32, "halting remainder", 0),
            ponder: try vector(.f32, "halting ponder", 0), steps: try vector(.i32, "halting steps", 0),
            running: try vector(.i32, "halting running", 1), accumulated: acc, positions: positions, count: count, step: 0)
    }

    public func halting(_ p: Tensor, h: Tensor, state: HaltingState, config: HaltingConfig) throws -> HaltingState {
        let op = try Halting(validating: p, h: h, state: state, config: config)
        let (n, d) = (op.tokens, op.width)
        let inputs = try [
            deviceBuffer(p, "halting p"), deviceBuffer(h, "halting h"), deviceBuffer(state.running, "halting state.running"),
            deviceBuffer(state.cumulative, "halting state.cumulative"), deviceBuffer(state.steps, "halting state.steps"),
            deviceBuffer(state.remainder, "halting state.remainder"), deviceBuffer(state.ponder, "halting state.ponder"),
            deviceBuffer(state.accumulated, "halting state.accumulated"),
        ]
        _ = try deviceBuffer(state.positions, "halting state.positions")
        let running = try empty(shape: [n], dtype: .i32, label: "halting running")
        let cumulative = try empty(shape: [n], dtype: .f32, label: "halting cumulative")
        let steps = try empty(shape: [n], dtype: .i32, label: "halting steps")
        let remainder = try empty(shape: [n], dtype: .f32, label: "halting remainder")
        let ponder = try empty(shape: [n], dtype: .f32, label: "halting ponder")
        let acc = try empty(shape: [n, d], dtype: op.accumulatorDType, label: "halting accumulated")
        let flags = try depthFlagsTensor()
        let inv = try tokenIndexMap(
            try state.positions.reshaped([1, n]), batch: 1, length: n, slots: n, rows: op.rows, flags: flags)
        if n > 0 {
            let grid = haltingGrid(tokens: n, width: d)
            var defines = grid.defines.merging(op.dtype.defines("X")) { a, _ in a }
            defines.merge(op.accumulatorDType.defines("Y")) { a, _ in a }
            defines.merge(op.probabilityDType.defines("P")) { a, _ in a }
            if config.input == .logit { defines["LOGIT"] = "1" }
            try launch(
                "halting.cl", "halting_step", defines: defines,
                args: [.buffer(inputs[0]), .buffer(inputs[1]), .int(op.rows), .buffer(inv.buffer!), .buffer(inputs[2]),
                       .buffer(inputs[3]), .buffer(inputs[4]), .buffer(inputs[5]), .buffer(inputs[6]), .buffer(inputs[7]),
                       .buffer(running.buffer!), .buffer(cumulative.buffer!), .buffer(steps.buffer!),
                       .buffer(remainder.buffer!), .buffer(ponder.buffer!), .buffer(acc.buffer!), .buffer(flags.buffer!),
                       .int(n), .int(d), .int(grid.rowsPerGroup), .float(config.threshold), .int(op.isLast ? 1 : 0)],
                global: grid.global, local: grid.local)
        }
        holdScratch([inv.buffer!], until: try context.queue.marker())
        // The running tokens compacted for the next step: positions and count stay on the device.
        let packed = try compact(try running.reshaped([1, n]), threshold: nil)
        let guards = p.guards + h.guards + state.running.guards + state.accumulated.guards + [flags]
        return HaltingState(
            cumulative: cumulative.guarded(by: guards), remainder: remainder.guarded(by: guards),
            ponder: ponder.guarded(by: guards), steps: steps.guarded(by: guards), running: running.guarded(by: guards),
            accumulated: acc.guarded(by: guards), positions: try packed.positions.reshaped([n]).guarded(by: guards),
            count: try packed.counts.reshaped([1]).guarded(by: guards), step: state.step + 1)
    }
}
