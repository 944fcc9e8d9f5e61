/// The shape and storage type of one tensor an op takes or returns.
public struct TensorSpec: Hashable, Sendable, CustomStringConvertible {
    public var shape: [Int]
    public var dtype: DType

    public init(_ shape: [Int], _ dtype: DType) {
        self.shape = shape
        self.dtype = dtype
    }

    public var description: String { "\(shape) \(dtype)" }
}

/// An op's descriptor: the validated sizes and storage types of one call, what it returns, and
/// what it costs. Every op has one (`Softmax`, `TopK`, `GatingOp`, `Permute`, `Gather`,
/// `Combine`, `ExpertChoiceOp`, `RoutingStatsOp`, `GroupedMatmul`, ...). Both backends build it
/// from their inputs with its `init(validating:...)` (one validation, so the backends cannot
/// drift apart), and the conformance cases and benchmarks build it from sizes (one cost formula).
public protocol OpDescriptor: Sendable {
    /// The outputs of one call, in the order the op returns them.
    var outputs: [TensorSpec] { get }
    /// Floating-point operations of one call (the useful work: padding rows not counted).
    var flops: Double { get }
    /// Bytes one call must move at least: every input read once, every output written once.
    var bytes: Double { get }
}
