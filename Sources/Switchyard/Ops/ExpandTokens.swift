import SwitchyardReference

/// The inverse of a compaction or a gather: packed rows `[batch, rows, d]` back to their
/// positions in `[batch, length, d]`: `out[b, positions[b, j]] = packed[b, j]` for the first
/// `rows` slots of positions `[batch, slots]` (slots ≥ rows); every other position is the
/// original `base [batch, length, d]` when given, else `fill`. Empty slots (−1) place nothing;
/// bad or repeated positions, or a kept position past the packed rows, raise `invalidValues`
/// when the output is read.
public struct ExpandTokens: Hashable, Sendable {
    public var batch: Int
    public var length: Int
    public var width: Int
    public var slots: Int
    public var rows: Int
    public var dtype: DType
    /// The base's storage type, nil when dropped positions get `fill`.
    public var baseDType: DType?
    public var fill: Float
    public var outputDType: DType

    public init(
        batch: Int, length: Int, width: Int, slots: Int, rows: Int, dtype: DType, baseDType: DType? = nil,
        fill: Float = 0, outputDType: DType? = nil
    ) {
        self.batch = batch
        self.length = length
        self.width = width
        self.slots = slots
        self.rows = rows
        self.dtype = dtype
        self.baseDType = baseDType
        self.fill = fill
        self.outputDType = outputDType ?? baseDType ?? dtype
    }

    init(validating packed: Tensor, positions: Tensor, length: Int, base: Tensor?, fill: Float, dtype: DType?) throws {
        let (b, rows, d) = try validateTokenRows(packed, "expandTokens packed", pattern: "[batch, rows, d]")
        let slots = try validateTokenIndices(positions, batch: b, "expandTokens positions")
        guard rows <= slots else {
            throw SwitchyardError.shape(
                argument: "expandTokens packed", expected: "[\(b), rows ≤ \(slots) (the position slots), \(d)]",
                actual: packed.shape)
        }
        guard length >= 0 && fitsTokenIndices(b, length) else {
            throw SwitchyardError.outOfRange(
                argument: "expandTokens length", value: length, range: "0... with batch × length below 2³¹")
        }
        if let base {
            guard base.shape == [b, length, d] else {
                throw SwitchyardError.shape(argument: "expandTokens base", expected: "[\(b), \(length), \(d)]", actual: base.shape)
            }
            try base.expectDType(DType.floatingPoint, "expandTokens base")
        }
        try validateOutputDType(dtype, "expandTokens dtype")
        self.init(
            batch: b, length: length, width: d, slots: slots, rows: rows, dtype: packed.dtype, baseDType: base?.dtype,
            fill: fill, outputDType: dtype)
        _ = try Tensor.checkedCount(outputShape, dtype: outputDType, "expandTokens output")
    }

    public var outputShape: [Int] { [batch, length, width] }
    public var flops: Double { 0 }
    /// The output written and one source row read per output row (the packed row or the base
    /// row) with a base; without one, the output written and the packed rows read; positions read.
    public var bytes: Double {
        let sources = baseDType.map { batch * length * width * $0.size } ?? batch * rows * width * dtype.size
        return Double(batch * length * width * outputDType.size + sources + batch * slots * 4)
    }
}

extension ReferenceBackend {
    public func expandTokens(
        _ packed: Tensor, positions: Tensor, length: Int, base: Tensor?, fill: Float, dtype: DType?
    ) throws -> Tensor {
        let op = try ExpandTokens(validating: packed, positions: positions, length: length, base: base, fill: fill, dtype: dtype)
        let ids = try hostInts(positions, "expandTokens positions")
        let problems = Reference.checkTokenIndices(ids, batch: op.batch, length: op.length, slots: op.slots, rows: op.rows)
        let y = Reference.expandTokens(
            packed: try hostFloats(packed, "expandTokens packed"), positions: ids,
            base: try base.map { try hostFloats($0, "expandTokens base") }, fill: fill, batch: op.batch, length: op.length,
            slots: op.slots, rows: op.rows, width: op.width)
        var guards = packed.guards + positions.guards + (base?.guards ?? [])
        guards.append(tokenFlags(problems))
        return Tensor(shape: op.outputShape, dtype: op.outputDType, storage: .host(.floats(op.outputDType.round(y))))
            .guarded(by: guards)
    }
}
