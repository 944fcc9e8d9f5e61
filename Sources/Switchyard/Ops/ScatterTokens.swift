import SwitchyardReference

/// Scatters a block's output back (mixture-of-depths): `out = x` everywhere and
/// `out[b, i] = x[b, i] + g · f[b, j]` at `i = indices[b, j]`, with the router weight
/// `g = weights[b, j]` (1 without weights). `x [batch, length, d]`, `f [batch, slots, d]`,
/// indices and weights `[batch, slots]`; any float storage in, output storage selectable
/// (x's by default). Empty slots (−1) add nothing; bad or repeated indices raise
/// `invalidValues` when the output is read (and add nothing, never write out of bounds).
public struct ScatterTokens: Hashable, Sendable {
    public var batch: Int
    public var length: Int
    public var width: Int
    public var slots: Int
    public var dtype: DType
    public var updateDType: DType
    /// The weights' storage type, nil without weights.
    public var weightDType: DType?
    public var outputDType: DType

    public init(
        batch: Int, length: Int, width: Int, slots: Int, dtype: DType, updateDType: DType? = nil,
        weightDType: DType? = nil, outputDType: DType? = nil
    ) {
        self.batch = batch
        self.length = length
        self.width = width
        self.slots = slots
        self.dtype = dtype
        self.updateDType = updateDType ?? dtype
        self.weightDType = weightDType
        self.outputDType = outputDType ?? dtype
    }

    init(validating x: Tensor, updates f: Tensor, indices: Tensor, weights: Tensor?, dtype: DType?) throws {
        let (b, l, d) = try validateTokenRows(x, "scatterTokens x")
        let slots = try validateTokenIndices(indices, batch: b, "scatterTokens indices")
        let fs = try f.expectRank(3, "scatterTokens updates", "[\(b), \(slots), \(d)]")
        try f.expectDType(DType.floatingPoint, "scatterTokens updates")
        guard fs == [b, slots, d] else {
            throw SwitchyardError.shape(argument: "scatterTokens updates", expected: "[\(b), \(slots), \(d)]", actual: fs)
        }
        if let weights {
            guard weights.shape == [b, slots] else {
                throw SwitchyardError.shape(argument: "scatterTokens weights", expected: "[\(b), \(slots)]", actual: weights.shape)
            }
            try weights.expectDType(DType.floatingPoint, "scatterTokens weights")
        }
        try validateOutputDType(dtype, "scatterTokens dtype")
        self.init(
            batch: b, length: l, width: d, slots: slots, dtype: x.dtype, updateDType: f.dtype,
            weightDType: weights?.dtype, outputDType: dtype)
    }

    public var outputShape: [Int] { [batch, length, width] }
    /// A multiply and an add per element of the chosen rows.
    public var flops: Double { Double(2 * batch * slots * width) }
    /// x read and the output written in full, the chosen rows of f, indices and weights read.
    public var bytes: Double {
        Double(batch * length * width * (dtype.size + outputDType.size) + batch * slots * width * updateDType.size
            + batch * slots * (4 + (weightDType?.size ?? 0)))
    }
}

extension ReferenceBackend {
    public func scatterTokens(_ x: Tensor, updates f: Tensor, indices: Tensor, weights: Tensor?, dtype: DType?) throws
        -> Tensor
    {
        let op = try ScatterTokens(validating: x, updates: f, indices: indices, weights: weights, dtype: dtype)
        let ids = try hostInts(indices, "scatterTokens indices")
        let problems = Reference.checkTokenIndices(ids, batch: op.batch, length: op.length, slots: op.slots, rows: op.slots)
        let y = Reference.scatterTokens(
            x: try hostFloats(x, "scatterTokens x"), f: try hostFloats(f, "scatterTokens updates"), indices: ids,
            weights: try weights.map { try hostFloats($0, "scatterTokens weights") }, batch: op.batch, length: op.length,
            slots: op.slots, width: op.width)
        var guards = x.guards + f.guards + indices.guards + (weights?.guards ?? [])
        guards.append(tokenFlags(problems))
        return output(y, shape: op.outputShape, dtype: op.outputDType).guarded(by: guards)
    }
}
