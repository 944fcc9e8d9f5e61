import SwitchyardReference

/// How `tokenTopK` weights the chosen positions (defined with the CPU reference).
public typealias TokenWeighting = SwitchyardReference.TokenWeighting

/// How many tokens `tokenTopK` keeps per sequence: a count C, or a ratio with C = ⌈ratio · L⌉
/// (computed in Double: 0.7 · 10 is 7.000000000000001 there, so C = 8; pass `.count` for an
/// exact capacity). Either way 0 ≤ C ≤ L.
public enum TokenCapacity: Hashable, Sendable, CustomStringConvertible {
    case count(Int)
    case ratio(Double)

    /// C for sequences of `length` tokens; an error naming the capacity when out of range.
    public func resolve(length: Int) throws -> Int {
        switch self {
        case .count(let c):
            guard c >= 0 && c <= length else {
                throw SwitchyardError.outOfRange(
                    argument: "tokenTopK capacity", value: c, range: "0...\(length) (the sequence length)")
            }
            return c
        case .ratio(let r):
            guard r.isFinite && r >= 0 && r <= 1 else {
                throw SwitchyardError.unsupported("tokenTopK capacity ratio = \(r) is out of range 0...1")
            }
            return min(length, Int((r * Double(length)).rounded(.up)))
        }
    }

    public var description: String {
        switch self {
        case .count(let c): "C=\(c)"
        case .ratio(let r): "ratio=\(r)"
        }
    }
}

/// Token selection (mixture-of-depths, ColT5): per sequence of scores `[batch, length]`, the
/// `capacity` best positions (larger score first, NaN above every number, ties to the lower
/// position) in ascending position order, i32 `[batch, capacity]`, and their weights (the score
/// or its sigmoid) `[batch, capacity]` in the scores' storage type.
public struct TokenTopK: Hashable, Sendable {
    public var batch: Int
    public var length: Int
    public var capacity: Int
    public var dtype: DType
    public var weighting: TokenWeighting

    public init(batch: Int, length: Int, capacity: Int, dtype: DType, weighting: TokenWeighting = .score) {
        self.batch = batch
        self.length = length
        self.capacity = capacity
        self.dtype = dtype
        self.weighting = weighting
    }

    init(validating scores: Tensor, capacity: TokenCapacity, weighting: TokenWeighting) throws {
        let s = try scores.expectRank(2, "tokenTopK scores", "[batch, length]")
        try scores.expectDType(DType.floatingPoint, "tokenTopK scores")
        _ = try Tensor.checkedCount(s, dtype: scores.dtype, "tokenTopK scores")
        guard fitsTokenIndices(s[0], s[1]) else {
            throw SwitchyardError.shape(argument: "tokenTopK scores", expected: "batch × length below 2³¹", actual: s)
        }
        self.init(
            batch: s[0], length: s[1], capacity: try capacity.resolve(length: s[1]), dtype: scores.dtype,
            weighting: weighting)
    }

    /// Output shape of both indices and weights.
    public var outputShape: [Int] { [batch, capacity] }
    public var flops: Double { weighting == .sigmoid ? Double(batch * capacity * 4) : 0 }
    /// Scores read once, indices and weights written.
    public var bytes: Double { Double(batch * length * dtype.size + batch * capacity * (4 + dtype.size)) }
}

extension ReferenceBackend {
    public func tokenTopK(_ scores: Tensor, capacity: TokenCapacity, weighting: TokenWeighting) throws
        -> (indices: Tensor, weights: Tensor)
    {
        let op = try TokenTopK(validating: scores, capacity: capacity, weighting: weighting)
        let r = Reference.tokenTopK(
            scores: try hostFloats(scores, "tokenTopK scores"), batch: op.batch, length: op.length,
            capacity: op.capacity, weighting: weighting)
        return (
            Tensor(shape: op.outputShape, dtype: .i32, storage: .host(.ints(r.indices))).guarded(by: scores.guards),
            output(r.weights, shape: op.outputShape, dtype: op.dtype).guarded(by: scores.guards)
        )
    }
}
