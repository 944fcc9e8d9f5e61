import SwitchyardReference

/// Row-wise softmax: `y[r, c] = exp(x[r, c] − max_r) / Σ_c exp(x[r, c] − max_r)`.
public struct Softmax: OpDescriptor, Hashable {
    public var rows: Int
    public var cols: Int
    public var dtype: DType

    public init(rows: Int, cols: Int, dtype: DType) {
        self.rows = rows
        self.cols = cols
        self.dtype = dtype
    }

    init(validating x: Tensor) throws {
        let s = try x.expectRank(2, "softmax x", "[rows, cols]")
        try x.expectDType(DType.floatingPoint, "softmax x")
        if s[0] > 0 && s[1] == 0 {
            throw SwitchyardError.shape(argument: "softmax x", expected: "[rows, cols ≥ 1]", actual: s)
        }
        self.init(rows: s[0], cols: s[1], dtype: x.dtype)
    }

    public var outputs: [TensorSpec] { [TensorSpec([rows, cols], dtype)] }
    public var flops: Double { Double(rows * cols) * 5 }
    public var bytes: Double { Double(rows * cols * dtype.size * 2) }
}

extension ReferenceBackend {
    public func softmax(_ x: Tensor) throws -> Tensor {
        let op = try Softmax(validating: x)
        let y = Reference.softmax(try hostFloats(x, "softmax x"), rows: op.rows, cols: op.cols)
        return output(y, shape: x.shape, dtype: x.dtype)
    }
}
