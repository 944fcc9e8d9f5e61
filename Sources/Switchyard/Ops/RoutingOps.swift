import SwitchyardReference

// Descriptors of the routing ops (see `OpDescriptor`): each validates one call's inputs once,
// for both backends, and gives its outputs and cost to the conformance cases and benchmarks.

/// Token-choice top-k gating of router logits `[T, E]`.
public struct GatingOp: OpDescriptor, Hashable {
    public var tokens: Int
    public var config: RouterConfig
    public var logitType: DType
    public var hasBias: Bool

    public init(tokens: Int, config: RouterConfig, logitType: DType = .f32, hasBias: Bool = false) {
        self.tokens = tokens
        self.config = config
        self.logitType = logitType
        self.hasBias = hasBias
    }

    /// Checks logits `[T, E]` (floating point), the config against E, and the bias (`[E]` f32).
    public init(validating logits: Tensor, bias: Tensor?, config: RouterConfig) throws {
        let s = try logits.expectRank(2, "router logits", "[tokens, experts]")
        try logits.expectDType(DType.floatingPoint, "router logits")
        try config.validate(experts: s[1])
        if let bias {
            guard bias.shape == [s[1]] else {
                throw SwitchyardError.shape(argument: "correction bias", expected: "[\(s[1])]", actual: bias.shape)
            }
            try bias.expectDType([.f32], "correction bias")
        }
        self.init(tokens: s[0], config: config, logitType: logits.dtype, hasBias: bias != nil)
    }

    public var experts: Int { config.experts }
    /// ids `[T, k]` i32, weights `[T, k]` f32, flags `[2]` i32.
    public var outputs: [TensorSpec] {
        [TensorSpec([tokens, config.k], .i32), TensorSpec([tokens, config.k], .f32), TensorSpec([2], .i32)]
    }
    public var flops: Double { Double(tokens) * Double(experts) * Double(config.k + 4) }
    public var bytes: Double {
        Double(tokens) * (Double(experts * logitType.size) + Double(config.k * 8)) + (hasBias ? Double(experts * 4) : 0)
    }
}

/// The stable counting sort of a gating's T·k assignments by expert, with capacity dropping and
/// each expert's rows padded to `blockSize`.
public struct Permute: OpDescriptor, Hashable {
    public var tokens: Int
    public var k: Int
    public var experts: Int
    public var blockSize: Int

    public init(tokens: Int, k: Int, experts: Int, blockSize: Int) {
        self.tokens = tokens
        self.k = k
        self.experts = experts
        self.blockSize = blockSize
    }

    /// Checks the block size (1…4096), the gating's tensors against its config, and that the
    /// row count stays below 2³¹.
    public init(validating g: Gating, blockSize: Int) throws {
        guard (1...4096).contains(blockSize) else {
            throw SwitchyardError.outOfRange(argument: "blockSize", value: blockSize, range: "1...4096")
        }
        let n = g.tokens * g.config.k
        guard g.ids.shape == [g.tokens, g.config.k], g.ids.dtype == .i32 else {
            throw SwitchyardError.shape(argument: "ids", expected: "[\(g.tokens), \(g.config.k)] i32", actual: g.ids.shape)
        }
        guard g.weights.shape == [g.tokens, g.config.k], g.weights.dtype == .f32 else {
            throw SwitchyardError.shape(
                argument: "weights", expected: "[\(g.tokens), \(g.config.k)] f32", actual: g.weights.shape)
        }
        guard n + g.config.experts * blockSize < Int(Int32.max) else {
            throw SwitchyardError.outOfRange(argument: "tokens × k", value: n, range: "below 2³¹ rows")
        }
        self.init(tokens: g.tokens, k: g.config.k, experts: g.config.experts, blockSize: blockSize)
    }

    public var assignments: Int { tokens * k }
    /// Rows of the expert-ordered buffers (the block-padded worst case, known without a read).
    public var maxRows: Int { Reference.maxRows(assignments: assignments, experts: experts, blockSize: blockSize) }
    public var maxTiles: Int { Reference.maxTiles(assignments: assignments, experts: experts, blockSize: blockSize) }
    /// counts `[E]`, routed counts `[E]`, offsets `[E + 1]`, tile map `[maxTiles]`, rowOf `[T, k]`,
    /// assignmentOf `[maxRows]`, weights `[T, k]` f32, dropped `[1]`.
    public var outputs: [TensorSpec] {
        [TensorSpec([experts], .i32), TensorSpec([experts], .i32), TensorSpec([experts + 1], .i32),
         TensorSpec([maxTiles], .i32), TensorSpec([tokens, k], .i32), TensorSpec([maxRows], .i32),
         TensorSpec([tokens, k], .f32), TensorSpec([1], .i32)]
    }
    public var flops: Double { 0 }
    /// ids and weights read, rowOf and weights written, the row and tile maps written.
    public var bytes: Double { Double(assignments * 16 + maxRows * 4 + maxTiles * 4 + experts * 12) }
}

/// Dispatch: the rows of `x [T, d]` in expert order, `[maxRows, d]`.
public struct Gather: OpDescriptor, Hashable {
    public var tokens: Int
    public var k: Int
    public var d: Int
    public var maxRows: Int
    public var inputType: DType
    public var outputType: DType

    public init(tokens: Int, k: Int, d: Int, maxRows: Int, inputType: DType, outputType: DType? = nil) {
        self.tokens = tokens
        self.k = k
        self.d = d
        self.maxRows = maxRows
        self.inputType = inputType
        self.outputType = outputType ?? inputType
    }

    /// Checks `x [T, d]` (floating point) against the routing and the output dtype (floating point).
    public init(validating x: Tensor, routing r: Routing, dtype: DType?) throws {
        let (_, d) = try validateRows(x, "gather x", rows: r.tokens)
        let out = dtype ?? x.dtype
        guard out.isFloatingPoint else {
            throw SwitchyardError.dtype(argument: "gather output dtype", expected: "f32, f16 or bf16", actual: out)
        }
        self.init(tokens: r.tokens, k: r.config.k, d: d, maxRows: r.maxRows, inputType: x.dtype, outputType: out)
    }

    public var outputs: [TensorSpec] { [TensorSpec([maxRows, d], outputType)] }
    public var flops: Double { 0 }
    /// Every routed row read, every row written (padding rows too: they are zeroed), the row map read.
    public var bytes: Double { Double(tokens * k * d * inputType.size + maxRows * (d * outputType.size + 4)) }
}

/// Weighted combine of expert-ordered rows `[maxRows, d]` back to `[T, d]`, plus a residual.
public struct Combine: OpDescriptor, Hashable {
    public var tokens: Int
    public var k: Int
    public var d: Int
    public var maxRows: Int
    public var inputType: DType
    public var residual: Bool
    public var outputType: DType

    public init(tokens: Int, k: Int, d: Int, maxRows: Int, inputType: DType, residual: Bool, outputType: DType? = nil) {
        self.tokens = tokens
        self.k = k
        self.d = d
        self.maxRows = maxRows
        self.inputType = inputType
        self.residual = residual
        self.outputType = outputType ?? inputType
    }

    /// Checks `ys [maxRows, d]`, the residual (`[T, d]`, of the output's dtype), and the output
    /// dtype (floating point; the residual's, else the rows', when nil).
    public init(validating ys: Tensor, routing r: Routing, residual: Tensor?, dtype: DType?) throws {
        let (_, d) = try validateRows(ys, "combine ys", rows: r.maxRows)
        let out = dtype ?? residual?.dtype ?? ys.dtype
        guard out.isFloatingPoint else {
            throw SwitchyardError.dtype(argument: "combine output dtype", expected: "f32, f16 or bf16", actual: out)
        }
        if let residual {
            guard residual.shape == [r.tokens, d] else {
                throw SwitchyardError.shape(argument: "combine residual", expected: "[\(r.tokens), \(d)]", actual: residual.shape)
            }
            guard residual.dtype == out else {
                throw SwitchyardError.dtype(
                    argument: "combine residual", expected: "\(out) (the output's dtype)", actual: residual.dtype)
            }
        }
        self.init(
            tokens: r.tokens, k: r.config.k, d: d, maxRows: r.maxRows, inputType: ys.dtype, residual: residual != nil,
            outputType: out)
    }

    public var outputs: [TensorSpec] { [TensorSpec([tokens, d], outputType)] }
    public var flops: Double { 2 * Double(tokens * k * d) }
    public var bytes: Double {
        Double(tokens * k * (d * inputType.size + 8) + tokens * d * outputType.size * (residual ? 2 : 1))
    }
}

/// Expert-choice routing: each expert takes its top C tokens by router score.
public struct ExpertChoiceOp: OpDescriptor, Hashable {
    public var tokens: Int
    public var experts: Int
    public var capacity: Int
    public var logitType: DType

    public init(tokens: Int, experts: Int, capacity: Int, logitType: DType = .f32) {
        self.tokens = tokens
        self.experts = experts
        self.capacity = capacity
        self.logitType = logitType
    }

    /// Checks the logits and config; C = min(T, ceil(capacityFactor · T · k / E)), factor 1 when unset.
    public init(validating logits: Tensor, config c: RouterConfig) throws {
        let gating = try GatingOp(validating: logits, bias: nil, config: c)
        let capacity = min(
            gating.tokens,
            RouterConfig(experts: c.experts, k: c.k, capacityFactor: c.capacityFactor ?? 1).capacity(tokens: gating.tokens)!)
        self.init(tokens: gating.tokens, experts: c.experts, capacity: capacity, logitType: logits.dtype)
    }

    /// tokens `[E, C]` i32, weights `[E, C]` f32, flags `[2]` i32.
    public var outputs: [TensorSpec] {
        [TensorSpec([experts, capacity], .i32), TensorSpec([experts, capacity], .f32), TensorSpec([2], .i32)]
    }
    public var flops: Double { Double(tokens * experts * 6) }
    public var bytes: Double { Double(tokens * experts * (logitType.size + 8) + experts * capacity * 8) }
}

/// Routing statistics: tokens per expert, drops, mean probabilities and the auxiliary losses.
public struct RoutingStatsOp: OpDescriptor, Hashable {
    public var tokens: Int
    public var experts: Int
    public var k: Int
    public var logitType: DType

    public init(tokens: Int, experts: Int, k: Int, logitType: DType = .f32) {
        self.tokens = tokens
        self.experts = experts
        self.k = k
        self.logitType = logitType
    }

    public init(validating r: Routing) {
        self.init(tokens: r.tokens, experts: r.config.experts, k: r.config.k, logitType: r.gating.logits.dtype)
    }

    /// Read by the host: E mean probabilities, the two losses (f32), E counts and the drops.
    public var outputs: [TensorSpec] { [TensorSpec([experts + 2], .f32), TensorSpec([experts + 1], .i32)] }
    public var flops: Double { Double(tokens * experts * 8) }
    /// The logits read twice (per-token statistics, then per-expert sums).
    public var bytes: Double { Double(2 * tokens * experts * logitType.size + experts * 8) }
}
