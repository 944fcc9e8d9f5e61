extension OpenCLBackend {
    public func softmax(_ x: Tensor) throws -> Tensor {
        let op = try Softmax(validating: x)
        let xb = try deviceBuffer(x, "softmax x")
        let y = try empty(shape: x.shape, dtype: x.dtype, label: "softmax y")
        let group = tuning.rowGroup
        try launch(
            "softmax.cl", "softmax_rows",
            defines: x.dtype.defines("X").merging(x.dtype.defines("Y")) { a, _ in a }
                .merging(["GROUP": "\(group)"]) { a, _ in a },
            args: [.buffer(xb), .buffer(y.buffer!), .int(op.rows), .int(op.cols)],
            global: [op.rows * group], local: [group])
        return y
    }
}
