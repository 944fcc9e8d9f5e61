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
}

func checkHostCount(_ count: Int, _ shape: [Int], _ argument: String) throws {
    let expected = try Tensor.checkedCount(shape, dtype: .f32, argument)
    if count != expected { throw SwitchyardError.hostData(argument: argument, expected: expected, actual: count) }
}
