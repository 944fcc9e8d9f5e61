import SwitchyardReference

/// Gathers chosen tokens: `y[b, j] = x[b, indices[b, j]]` for the first `rows` slots of
/// indices `[batch, slots]` (all of them by default), `x [batch, length, d]` → `[batch, rows, d]`.
/// An index of −1 is an empty slot (a zero row: `compact`'s padding); any other index outside
/// 0..<length, a position repeated within a sequence, or a valid index in a slot past `rows`
/// raises `invalidValues` when the output is read (its row is zeros, never read out of bounds).
public struct GatherTokens: Hashable, Sendable {
    public var batch: Int
    public var length: Int
    public var width: Int
    public var slots: Int
    public var rows: Int
    public var dtype: DType
    public var outputDType: DType

    public init(batch: Int, length: Int, width: Int, slots: Int, rows: Int? = nil, dtype: DType, outputDType: DType? = nil) {
        self.batch = batch
        self.length = length
        self.width = width
        self.slots = slots
        self.rows = rows ?? slots
        self.dtype = dtype
        self.outputDType = outputDType ?? dtype
    }

    init(validating x: Tensor, indices: Tensor, rows: Int?, dtype: DType?) throws {
        let (b, l, d) = try validateTokenRows(x, "gatherTokens x")
        let slots = try validateTokenIndices(indices, batch: b, "gatherTokens indices")
        if let rows, !(0...slots).contains(rows) {
            throw SwitchyardError.outOfRange(argument: "gatherTokens rows", value: rows, range: "0...\(slots) (the index slots)")
        }
        try validateOutputDType(dtype, "gatherTokens dtype")
        self.init(batch: b, length: l, width: d, slots: slots, rows: rows, dtype: x.dtype, outputDType: dtype)
        _ = try Tensor.checkedCount(outputShape, dtype: outputDType, "gatherTokens output")
        guard fitsTokenIndices(batch, self.rows) else {
            throw SwitchyardError.shape(argument: "gatherTokens output", expected: "batch × rows below 2³¹", actual: outputShape)
        }
    }

    public var outputShape: [Int] { [batch, rows, width] }
    public var flops: Double { 0 }
    /// Chosen rows read and written, indices read.
    public var bytes: Double { Double(batch * rows * width * (dtype.size + outputDType.size) + batch * slots * 4) }
}

extension ReferenceBackend {
    public func gatherTokens(_ x: Tensor, indices: Tensor, rows: Int?, dtype: DType?) throws -> Tensor {
        let op = try GatherTokens(validating: x, indices: indices, rows: rows, dtype: dtype)
        let ids = try hostInts(indices, "gatherTokens indices")
        let problems = Reference.checkTokenIndices(ids, batch: op.batch, length: op.length, slots: op.slots, rows: op.rows)
        let y = Reference.gatherTokens(
            x: try hostFloats(x, "gatherTokens x"), batch: op.batch, length: op.length, width: op.width, indices: ids,
            slots: op.slots, rows: op.rows)
        return Tensor(shape: op.outputShape, dtype: op.outputDType, storage: .host(.floats(op.outputDType.round(y))))
            .guarded(by: x.guards + indices.guards + [tokenFlags(problems)])
    }
}
