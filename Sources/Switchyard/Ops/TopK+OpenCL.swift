import OpenCLHost

extension OpenCLBackend {
    public func topK(_ x: Tensor, k: Int) throws -> (values: Tensor, indices: Tensor) {
        let op = try TopK(validating: x, k: k)
        let xb = try deviceBuffer(x, "topK x")
        let values = try empty(shape: [op.rows, k], dtype: x.dtype, label: "topK values")
        let indices = try empty(shape: [op.rows, k], dtype: .i32, label: "topK indices")
        if op.rows == 0 { return (values, indices) }
        var padded = 1
        while padded < op.cols { padded <<= 1 }
        let (group, launches) = try topKPlan(cols: op.cols, padded: padded, k: k)
        // Sort keys live in local memory when a row fits and one launch sorts it, else in a
        // global scratch buffer with the same bitonic network (one work-group per row either way).
        let inLocal = padded <= tuning.topKLocalKeys && launches.count == 1
        var defines = x.dtype.defines("X").merging(["GROUP": "\(group)"]) { a, _ in a }
        var args: [Arg] = [.buffer(xb), .buffer(values.buffer!), .buffer(indices.buffer!)]
        args += [.int(op.rows), .int(op.cols), .int(k), .int(padded)]
        if inLocal {
            args.append(.local(bytes: padded * 8))
        } else {
            // Released when this returns; OpenCL keeps it until the kernel that uses it has run.
            defines["SCRATCH_GLOBAL"] = "1"
            args.append(.buffer(try scratch(byteCount: op.rows * padded * 8, label: "topK scratch")))
        }
        var event: Event?
        for stages in launches {
            event = try launch(
                "topk.cl", "topk_rows", defines: defines, args: args + [.int(stages.lowerBound), .int(stages.upperBound)],
                global: [op.rows * group], local: [group])
        }
        if !inLocal, case .buffer(let scratch) = args.last!, let event { holdScratch([scratch], until: event) }
        return (values, indices)
    }

    /// Work-items per row and the bitonic network's stages (log₂ padded · (log₂ padded + 1) / 2
    /// of them) per launch of `topk_rows`: the tuning's `rowGroup` (at most padded / 2) and all
    /// stages in one launch; where the device stops a work-item's loops (`loopStepBudget`), the
    /// group doubled (up to the device's largest work-group) until one stage beside the keys fits
    /// a work-item's budget, and as many stages per launch as keep its loop steps within it,
    /// counted cumulatively: ⌈padded / group⌉ + 1 for the keys (first launch), ⌈padded / 2 /
    /// group⌉ + 2 per stage, ⌈k / group⌉ + 1 for the outputs (last launch), the stage lookup
    /// (log₂ padded + 1) and the stage loop's exit test. The network sorts unique keys, so
    /// neither the group nor the split changes a result. A row too wide for the largest work-group
    /// is refused by name.
    func topKPlan(cols: Int, padded: Int, k: Int) throws -> (group: Int, launches: [Range<Int>]) {
        var log = 0
        while 1 << log < padded { log += 1 }
        let stages = log * (log + 1) / 2
        var group = min(tuning.rowGroup, max(1, padded / 2))
        guard let budget = loopStepBudget else { return (group, [0..<stages]) }
        let fixed = log + 2
        func steps(_ n: Int, _ g: Int) -> Int { (n + g - 1) / g }
        // One stage beside the keys: the most a launch needs (the outputs are at most the keys).
        func fits(_ g: Int) -> Bool { steps(padded, g) + 1 + steps(padded / 2, g) + 2 + fixed <= budget }
        let largest = min(max(1, device.maxWorkGroupSize), max(1, padded / 2))
        while !fits(group) && group * 2 <= largest { group *= 2 }
        guard fits(group) else {
            throw SwitchyardError.outOfRange(
                argument: "topK cols", value: cols,
                range: "at most \((budget - fixed - 3) * 2 / 3 * group) on this device (its loops stop after \(device.loopIterationLimit ?? 0) steps a work-item; work-groups of \(group))")
        }
        let keys = steps(padded, group) + 1
        let stage = steps(padded / 2, group) + 2
        let outputs = steps(k, group) + 1
        var launches: [Range<Int>] = []
        var begin = 0
        repeat {
            var used = fixed + (begin == 0 ? keys : 0)
            var end = begin
            while end < stages && used + stage + (end + 1 == stages ? outputs : 0) <= budget {
                used += stage
                end += 1
            }
            guard end > begin || stages == 0 else {  // (fits leaves room for a stage)
                throw SwitchyardError.outOfRange(argument: "topK cols", value: cols, range: "a sort this device can split")
            }
            launches.append(begin..<end)
            begin = end
        } while begin < stages
        return (group, launches)
    }
}
