extension OpenCLBackend {
    public func topK(_ x: Tensor, k: Int) throws -> (values: Tensor, indices: Tensor) {
        let op = try TopK(validating: x, k: k)
        let xb = try deviceBuffer(x, "topK x")
        let values = try empty(shape: [op.rows, k], dtype: x.dtype, label: "topK values")
        let indices = try empty(shape: [op.rows, k], dtype: .i32, label: "topK indices")
        if op.rows == 0 { return (values, indices) }
        var padded = 1
        while padded < op.cols { padded <<= 1 }
        let group = min(tuning.rowGroup, max(1, padded / 2))
        // Sort keys live in local memory when a row fits, else in a global scratch buffer with
        // the same bitonic network (one work-group per row either way).
        let inLocal = padded <= tuning.topKLocalKeys
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
        let event = try launch("topk.cl", "topk_rows", defines: defines, args: args, global: [op.rows * group], local: [group])
        if !inLocal, case .buffer(let scratch) = args.last! { holdScratch([scratch], until: event) }
        return (values, indices)
    }
}
