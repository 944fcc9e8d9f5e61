import Foundation
import SwitchyardReference
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
    /// A copy of rows `range` of `t` (rank ≥ 1, split along its first dimension).
    func copyRows(_ t: Tensor, _ range: Range<Int>) throws -> Tensor
    /// The rows of `parts` one after another (same dtype and row shape), as one new tensor.
    func concatenateRows(_ parts: [Tensor]) throws -> Tensor
    /// The largest single tensor this backend can hold, in bytes.
    var maxTensorBytes: Int { get }
    /// The values of a floating-point tensor, widened to Float.
    func floats(_ tensor: Tensor) throws -> [Float]
    /// The values of an Int32 tensor.
    func ints(_ tensor: Tensor) throws -> [Int32]
    /// Waits until every op issued so far has finished.
    func synchronize() throws
    /// The values of a floating-point tensor, widened to Float, read without blocking a thread.
    func floats(_ tensor: Tensor) async throws -> [Float]
    /// The values of an Int32 tensor, read without blocking a thread.
    func ints(_ tensor: Tensor) async throws -> [Int32]
    /// The raw bytes of a tensor (its elements' bit patterns, little-endian), read without
    /// blocking a thread.
    func bytes(_ tensor: Tensor) async throws -> [UInt8]
    /// Suspends until every op issued so far has finished, blocking no thread.
    func synchronize() async throws
    /// The routing block size this backend's grouped matmul runs fastest with (its row tile):
    /// what `route` and `MoELayer` pad each expert's rows to unless told otherwise.
    var preferredBlockSize: Int { get }
    /// Runs `body` (which enqueues ops) and returns its result with a function giving the device
    /// time of the kernels it launched, in seconds (it waits for them), or nil where the backend
    /// has no device clock (the reference; a wrapped queue without profiling).
    func timed<T>(_ body: () throws -> T) throws -> (value: T, seconds: () throws -> Double?)

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
    /// activations (`input`: expert-ordered rows `[maxRows, K]`, or tokens `[T, K]` read through
    /// the permutation), one launch for all experts; `[maxRows, N]`. Without a routing it is a
    /// dense linear layer (`weights` with one expert, rows `[T, K]` → `[T, N]`). The output has
    /// `dtype` (floating point), else the activations' type. See `GroupedMatmul` for every check;
    /// `groupedMatmul(_:weights:...)` and `groupedMatmul(gathering:...)` give the defaults.
    func groupedMatmul(
        _ input: MatmulInput, weights: ExpertWeights, routing: Routing?, epilogue: Epilogue, scale: RowScale,
        dtype: DType?
    ) throws -> Tensor

    // MARK: Raw bytes and checkpoint loading (issue 14)

    /// A tensor whose elements are not yet written (zeros on the reference; on a device whatever
    /// its buffer held, or the poison pattern when the backend places sentinels), to be filled
    /// with `write`. Sizes checked: a shape past `Tensor.maxBytes` or the device's largest
    /// allocation is an error naming `label`.
    func empty(shape: [Int], dtype: DType, label: String) throws -> Tensor
    /// A tensor of any dtype from its elements' bit patterns as stored, little-endian (f32,
    /// f16 and bf16 bits, i32 two's complement): no rounding. A byte count other than the
    /// shape's is `SwitchyardError.hostData`.
    func tensor(bytes: UnsafeRawBufferPointer, shape: [Int], dtype: DType) throws -> Tensor
    /// Writes elements given as stored bytes (as `tensor(bytes:)` reads them) into `tensor` from
    /// element `offset` on, in place; the region must lie inside the tensor and the byte count
    /// be a whole number of elements. Ordered after every op issued before it.
    func write(_ bytes: UnsafeRawBufferPointer, into tensor: Tensor, atElement offset: Int) throws
    /// The elements of `tensor` as stored bytes, little-endian (the inverse of `tensor(bytes:)`;
    /// on the reference a NaN comes back quiet).
    func bytes(_ tensor: Tensor) throws -> [UInt8]
    /// The stored bytes of the elements `elements` of `tensor`.
    func bytes(_ tensor: Tensor, elements: Range<Int>) throws -> [UInt8]

    // MARK: Token merging (ToMe) and Soft MoE

    /// ToMe bipartite soft matching of `x [B, L, d]` on `keys [B, L, dk]` (x when nil) with token
    /// sizes `[B, L]` (f32, ones when nil): `r` tokens merged per batch (see `TokenMerge`).
    func tokenMerge(_ x: Tensor, keys: Tensor?, sizes: Tensor?, r: Int, protectFirst: Bool) throws -> MergedTokens
    /// Copies each row of `y [B, M, d]` back to every token its source map `[B, L]` sends there (see `TokenUnmerge`).
    func tokenUnmerge(_ y: Tensor, sourceMap: Tensor) throws -> Tensor
    /// Soft MoE dispatch of `x [B, T, d]` with prepared slot parameters Φᵀ `[1, n, d]`: the slots
    /// `[B, n, d]` and the combine weights `[B, T, n]` (see `SoftMoEDispatch`).
    func softMoEDispatch(_ x: Tensor, phi: ExpertWeights) throws -> SoftMoESlots
    /// Soft MoE combine of expert outputs (`[B, n, d]`, or a fixed routing's rows) with the combine
    /// weights `[B, T, n]` into `[B, T, d]` (see `SoftMoECombine`).
    func softMoECombine(_ ys: Tensor, weights: Tensor, routing: Routing?, dtype: DType?) throws -> Tensor

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

    // MARK: quantized expert weights (Ops/QuantizedWeights.swift)

    /// A `u8` tensor holding `codes` (quantized weight codes and byte scales, raw).
    func tensor(codes: [UInt8], shape: [Int]) throws -> Tensor
    /// The bytes of a `u8` tensor.
    func codes(_ tensor: Tensor) throws -> [UInt8]
    /// Float weights `[E, N_w, K]` quantized (`.int8` or `.int4`) into canonical codes and scales
    /// (`QuantizedCodes`; the definition is `SwitchyardReference.Quantization`).
    func quantizeWeights(_ w: Tensor, _ quantization: WeightQuantization) throws -> QuantizedCodes
    /// `prepareWeights`, quantizing the weights once on the backend unless `quantize` is `.none`
    /// (`.mxfp4` converts on the host, then repacks on the backend). Quantized weights are always
    /// in the panel layout the matmul reads (`pack` is for float weights) and keep no float copy.
    func prepareWeights(_ w: Tensor, swiglu: Bool, pack: Bool, quantize: WeightQuantization) throws -> ExpertWeights
    /// MXFP4 checkpoint tensors (`PrepareMXFP4`) repacked once for `groupedMatmul`; with
    /// `interleavedGateUp` (gpt-oss) gate|up rows alternate gate, up instead of gate rows first.
    func prepareMXFP4(blocks: Tensor, scales: Tensor, swiglu: Bool, interleavedGateUp: Bool) throws -> ExpertWeights
    /// FP8 e4m3 checkpoint tensors with 128 × 128 block scales (`PrepareFP8`) repacked once.
    func prepareFP8(codes: Tensor, scaleInv: Tensor, swiglu: Bool) throws -> ExpertWeights

    // MARK: Gated-epilogue parameters and expert output bias (gpt-oss, issue 17; Ops/GatedEpilogue.swift)

    /// `groupedMatmul` with the gated epilogue's parameters `glu` (activation, α, clamps, the
    /// offset on up; `.swiglu` is the plain SwiGLU, other values need the SwiGLU epilogue) and an
    /// optional per-expert output bias `bias [E, N_w]` f32 (gate columns first for the gated
    /// epilogue), added to the product before the activation and the row scale: gpt-oss's
    /// `gate_up + b` and `down + b`, and a router's linear bias (dense, one expert).
    func groupedMatmul(
        _ input: MatmulInput, weights: ExpertWeights, routing: Routing?, epilogue: Epilogue, glu: GLUParameters,
        bias: Tensor?, scale: RowScale, dtype: DType?
    ) throws -> Tensor

    // MARK: - Depth sparsity

    /// The adaptive-computation-time state of `tokens` tokens of width `width` before the first
    /// step: every token running at its own row, sums zero, accumulator zero in `dtype` (see `HaltingState`).
    func haltingState(tokens: Int, width: Int, dtype: DType) throws -> HaltingState
    /// One ACT step: the packed running rows' halting signal `p [rows]` and block output
    /// `h [rows, d]` folded into `state`, the still-running tokens compacted on the device (see `Halting`).
    func halting(_ p: Tensor, h: Tensor, state: HaltingState, config: HaltingConfig) throws -> HaltingState
    /// The early-exit state of `samples` samples before the first exit: all active, nothing
    /// predicted, `heads` exits counted, softmax rows kept in `probabilities` when given (see `ExitState`).
    func exitState(samples: Int, classes: Int, heads: Int, probabilities: DType?) throws -> ExitState
    /// One exit: the packed active samples' exit logits `[rows, classes]` decide who leaves (by
    /// `criterion`, or all when `last`); predictions land at original positions, the rest are
    /// compacted on the device (see `EarlyExit`).
    func earlyExit(_ logits: Tensor, state: ExitState, criterion: ExitCriterion, last: Bool) throws -> ExitState

    // MARK: - Early-exit example (blocks on the active samples only; Ops/ActiveRouting.swift)

    /// The active samples of a mask `[N]` (nonzero: active) routed through one expert, ascending,
    /// padded to `blockSize`: grouped matmuls over it compute the active rows only, with no host
    /// read of their count (see `ActiveRouting`).
    func activeRouting(_ active: Tensor, blockSize: Int) throws -> Routing
}

extension ComputeBackend {
    /// `tensor(bytes:shape:dtype:)` from `Data`.
    public func tensor(bytes data: Data, shape: [Int], dtype: DType) throws -> Tensor {
        try data.withUnsafeBytes { try tensor(bytes: $0, shape: shape, dtype: dtype) }
    }

    /// `write(_:into:atElement:)` from `Data`.
    public func write(_ data: Data, into tensor: Tensor, atElement offset: Int) throws {
        try data.withUnsafeBytes { try write($0, into: tensor, atElement: offset) }
    }
}

/// Checks a row range of `t` and that `parts` can be stacked; returns the bytes of one row.
func validateRowRange(_ t: Tensor, _ range: Range<Int>) throws -> Int {
    guard let rows = t.shape.first else {
        throw SwitchyardError.shape(argument: "copyRows tensor", expected: "[rows, ...]", actual: t.shape)
    }
    guard range.lowerBound >= 0, range.upperBound <= rows else {
        throw SwitchyardError.outOfRange(argument: "copyRows upper bound", value: range.upperBound, range: "0...\(rows)")
    }
    return rows == 0 ? 0 : t.byteCount / rows
}

func validateConcatenation(_ parts: [Tensor]) throws -> (shape: [Int], dtype: DType) {
    guard let first = parts.first, !first.shape.isEmpty else {
        throw SwitchyardError.unsupported("concatenateRows needs at least one tensor of rank 1 or more")
    }
    var rows = 0
    for (i, p) in parts.enumerated() {
        guard p.dtype == first.dtype, p.shape.count == first.shape.count, Array(p.shape.dropFirst()) == Array(first.shape.dropFirst())
        else {
            throw SwitchyardError.shape(
                argument: "concatenateRows part \(i)", expected: "[rows] + \(Array(first.shape.dropFirst())) \(first.dtype)",
                actual: p.shape)
        }
        rows += p.shape[0]
    }
    let shape = [rows] + Array(first.shape.dropFirst())
    _ = try Tensor.checkedCount(shape, dtype: first.dtype, "concatenateRows result")
    return (shape, first.dtype)
}

func checkHostCount(_ count: Int, _ shape: [Int], _ argument: String) throws {
    let expected = try Tensor.checkedCount(shape, dtype: .f32, argument)
    if count != expected { throw SwitchyardError.hostData(argument: argument, expected: expected, actual: count) }
}
