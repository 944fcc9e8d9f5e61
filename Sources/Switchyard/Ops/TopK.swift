import SwitchyardReference

/// Row-wise top-k: the k largest values of each row, descending, with their column indices.
public struct TopK: OpDescriptor, Hashable {
    public var rows: Int
    public var cols: Int
    public var k: Int
    public var dtype: DType

    public init(rows: Int, cols: Int, k: Int, dtype: DType) {
        self.rows = rows
        self.cols = cols
        self.k = k
        self.dtype = dtype
    }

    init(validating x: Tensor, k: Int) throws {
        let s = try x.expectRank(2, "topK x", "[rows, cols]")
        try x.expectDType(DType.floatingPoint, "topK x")
        guard s[1] >= 1 else {
            throw SwitchyardError.shape(argument: "topK x", expected: "[rows, cols ≥ 1]", actual: s)
        }
        guard k >= 1 && k <= s[1] else {
            throw SwitchyardError.outOfRange(argument: "topK k", value: k, range: "1...\(s[1]) (the row length)")
        }
        self.init(rows: s[0], cols: s[1], k: k, dtype: x.dtype)
    }

    /// values `[rows, k]` (x's dtype) and indices `[rows, k]` i32.
    public var outputs: [TensorSpec] { [TensorSpec([rows, k], dtype), TensorSpec([rows, k], .i32)] }
    public var flops: Double { 0 }
    public var bytes: Double { Double(rows * cols * dtype.size + rows * k * (dtype.size + 4)) }
}

extension ReferenceBackend {
    public func topK(_ x: Tensor, k: Int) throws -> (values: Tensor, indices: Tensor) {
        let op = try TopK(validating: x, k: k)
        let r = Reference.topK(try hostFloats(x, "topK x"), rows: op.rows, cols: op.cols, k: k)
        return (
            Tensor(shape: [op.rows, k], dtype: x.dtype, storage: .host(.floats(r.values))),
            Tensor(shape: [op.rows, k], dtype: .i32, storage: .host(.ints(r.indices)))
        )
    }
}
