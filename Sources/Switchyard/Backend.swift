import OpenCLHost

/// A place ops run: the OpenCL device (`OpenCLBackend`) or the CPU reference
/// (`ReferenceBackend`). Both take and return `Tensor`s of their own storage.
public protocol ComputeBackend: AnyObject, Sendable {
    /// A human-readable name ("reference", or the device name).
    var name: String { get }

    /// A tensor holding `values` (rounded to `dtype`, a floating-point type).
    func tensor(_ values: [Float], shape: [Int], dtype: DType) throws -> Tensor
    /// An Int32 tensor holding `values`.
    func tensor(_ values: [Int32], shape: [Int]) throws -> Tensor
    /// The values of a floating-point tensor, widened to Float.
    func floats(_ tensor: Tensor) throws -> [Float]
    /// The values of an Int32 tensor.
    func ints(_ tensor: Tensor) throws -> [Int32]
    /// Waits until every op issued so far has finished.
    func synchronize() throws

    /// Row-wise softmax of `x [rows, cols]` (any float dtype; the result has x's dtype).
    func softmax(_ x: Tensor) throws -> Tensor
    /// Row-wise top-k of `x [rows, cols]`: `values [rows, k]` (x's dtype) and `indices [rows, k]`
    /// (i32), descending, ties to the lower index, NaN above every number.
    func topK(_ x: Tensor, k: Int) throws -> (values: Tensor, indices: Tensor)

    /// Token-choice top-k gating of router logits `[T, E]` (see `Reference.gating`), with an
    /// optional correction bias `[E]` (f32) used for choosing only.
    func gating(_ logits: Tensor, bias: Tensor?, config: RouterConfig) throws -> Gating
    /// The stable counting sort of a gating's assignments by expert, with capacity dropping,
    /// each expert's rows padded to `blockSize` (see `Reference.permute`). No host read.
    func permute(_ gating: Gating, blockSize: Int) throws -> Routing
    /// Dispatch: the rows of `x [T, d]` in expert order, `[maxRows, d]`, padding rows zero.
    func gather(_ x: Tensor, routing: Routing, dtype: DType?) throws -> Tensor
    /// Weighted combine of expert outputs `ys [maxRows, d]` back to `[T, d]`, plus `residual`.
    func combine(_ ys: Tensor, routing: Routing, residual: Tensor?, dtype: DType?) throws -> Tensor
    /// Expert-choice routing: each expert takes its top ceil(capacityFactor · T · k / E) tokens
    /// (capacityFactor 1 when unset) by router score.
    func expertChoice(_ logits: Tensor, config: RouterConfig) throws -> ExpertChoice
    /// Tokens per expert, dropped count, mean probabilities and the auxiliary losses (a read).
    func routingStats(_ routing: Routing) throws -> RoutingStats

    /// Expert weights `[E, N_w, K]` ready for `groupedMatmul`, repacked once when `pack`.
    func prepareWeights(_ w: Tensor, swiglu: Bool, pack: Bool) throws -> ExpertWeights
    /// For every expert e, `Y_e = act(X_e · W_eᵀ) · scale` over the expert's rows of the
    /// expert-ordered activations (`a [maxRows, K]`, or `x [T, K]` read through the permutation
    /// when `fusedGather`), one launch for all experts; `[maxRows, N]`. Without a routing it is
    /// a dense linear layer (`weights` with one expert, `a [T, K]` → `[T, N]`).
    func groupedMatmul(
        _ a: Tensor, weights: ExpertWeights, routing: Routing?, fusedGather: Bool, epilogue: Epilogue, scale: RowScale,
        dtype: DType?
    ) throws -> Tensor

    // MARK: - Token selection and compaction (mixture-of-depths, token dropping)

    /// Per sequence of scores `[B, L]`, the top C positions (C given, or ⌈ratio · L⌉) in ascending
    /// position order, i32 `[B, C]`, and their weights (score or sigmoid) `[B, C]` (see `TokenTopK`).
    func tokenTopK(_ scores: Tensor, capacity: TokenCapacity, weighting: TokenWeighting) throws
        -> (indices: Tensor, weights: Tensor)
    /// The rows of `x [B, L, d]` at `indices [B, C]` (−1: a zero row), first `rows` slots (all when
    /// nil), `[B, rows, d]` (see `GatherTokens`).
    func gatherTokens(_ x: Tensor, indices: Tensor, rows: Int?, dtype: DType?) throws -> Tensor
    /// `x` with `g · f[b, j]` added at `indices[b, j]` (g = weights, or 1), `[B, L, d]` (see `ScatterTokens`).
    func scatterTokens(_ x: Tensor, updates: Tensor, indices: Tensor, weights: Tensor?, dtype: DType?) throws -> Tensor
    /// Kept positions of a keep mask `[B, L]` packed first (−1 after) and the count per sequence,
    /// on the device (see `Compact`).
    func compact(_ keep: Tensor, threshold: Float?) throws -> (positions: Tensor, counts: Tensor)
    /// Packed rows `[B, rows, d]` back to their positions in `[B, length, d]`, the rest from
    /// `base` or `fill` (see `ExpandTokens`).
    func expandTokens(_ packed: Tensor, positions: Tensor, length: Int, base: Tensor?, fill: Float, dtype: DType?) throws
        -> Tensor
}

func checkHostCount(_ count: Int, _ shape: [Int], _ argument: String) throws {
    let expected = try Tensor.checkedCount(shape, dtype: .f32, argument)
    if count != expected { throw SwitchyardError.hostData(argument: argument, expected: expected, actual: count) }
}

// MARK: - Op descriptors

/// Row-wise softmax: `y[r, c] = exp(x[r, c] − max_r) / Σ_c exp(x[r, c] − max_r)`.
public struct Softmax: Hashable, Sendable {
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

    public var flops: Double { Double(rows * cols) * 5 }
    public var bytes: Double { Double(rows * cols * dtype.size * 2) }
}

/// Row-wise top-k: the k largest values of each row, descending, with their column indices.
public struct TopK: Hashable, Sendable {
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

    public var flops: Double { 0 }
    public var bytes: Double { Double(rows * cols * dtype.size + rows * k * (dtype.size + 4)) }
}
