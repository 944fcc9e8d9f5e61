extension OpenCLBackend {
    public func softmax(_ x: Tensor) throws -> Tensor {
        let op = try Softmax(validating: x)
        let xb = try deviceBuffer(x, "softmax x")
        let y = try empty(shape: x.shape, dtype: x.dtype, label: "softmax y")
        let group = try softmaxGroup(cols: op.cols)
        try launch(
            "softmax.cl", "softmax_rows",
            defines: x.dtype.defines("X").merging(x.dtype.defines("Y")) { a, _ in a }
                .merging(["GROUP": "\(group)"]) { a, _ in a },
            args: [.buffer(xb), .buffer(y.buffer!), .int(op.rows), .int(op.cols)],
            global: [op.rows * group], local: [group])
        return y
    }

    /// Work-items per row of `softmax_rows`: the tuning's `rowGroup`, or where the device stops a
    /// work-item's loops (`loopStepBudget`) doubled (up to its largest work-group) until a
    /// work-item's loop steps, counted cumulatively, fit: three passes over its columns and two
    /// trees, 3 · (⌈cols / group⌉ + 1) + 2 · (log₂ group + 1). (The group sets the summation
    /// order, so it depends on the row length alone, never on the rows.) A row too long for the
    /// largest work-group is refused by name.
    func softmaxGroup(cols: Int) throws -> Int {
        var group = tuning.rowGroup
        guard let budget = loopStepBudget else { return group }
        func steps(_ g: Int) -> Int {
            var log = 0
            while 1 << log < g { log += 1 }
            return 3 * ((cols + g - 1) / g + 1) + 2 * (log + 1)
        }
        let largest = max(1, device.maxWorkGroupSize)
        while steps(group) > budget && group * 2 <= largest { group *= 2 }
        guard steps(group) <= budget else {
            throw SwitchyardError.outOfRange(
                argument: "softmax cols", value: cols,
                range: "at most \((budget - 2 * 12) / 3 * group - group) on this device (its loops stop after \(device.loopIterationLimit ?? 0) steps a work-item; work-groups of \(group))")
        }
        return group
    }
}
