import SwitchyardReference

/// How a router picks experts (scoring, k, renormalization, groups, capacity, drop priority):
/// defined with the CPU reference, used by both backends.
public typealias RouterConfig = SwitchyardReference.RouterConfig
/// The activation applied to a grouped matmul's output (none, SiLU, GELU, SwiGLU, sigmoid).
public typealias Epilogue = SwitchyardReference.Epilogue
/// The parameters of a gated (GLU) epilogue: see `SwitchyardReference.GLUParameters`.
public typealias GLUParameters = SwitchyardReference.GLUParameters

// MARK: - Presets

extension RouterConfig {
    /// Mixtral: softmax, top-2 of 8, renormalized.
    public static func mixtral(experts: Int = 8, k: Int = 2) -> RouterConfig {
        RouterConfig(experts: experts, k: k, scoring: .softmax, renormalize: true)
    }

    /// Qwen1.5/2/3-MoE and OLMoE: softmax, top-k, `norm_topk_prob` (default false).
    public static func qwenMoE(experts: Int = 60, k: Int = 4, renormalize: Bool = false) -> RouterConfig {
        RouterConfig(experts: experts, k: k, scoring: .softmax, renormalize: renormalize)
    }

    /// DeepSeek-V3 (`noaux_tc`): sigmoid scores, a score-correction bias for choosing, 8 groups
    /// of which the best 4 (by the sum of their best two biased scores) stay, top 8, weights
    /// renormalized and scaled by 2.5.
    public static func deepSeekV3(
        experts: Int = 256, k: Int = 8, groups: Int = 8, topKGroups: Int = 4, routedScale: Float = 2.5
    ) -> RouterConfig {
        RouterConfig(
            experts: experts, k: k, scoring: .sigmoid, renormalize: true, routedScale: routedScale,
            expertGroups: groups, topKGroups: topKGroups)
    }

    /// Switch Transformer: top-1 with capacity (factor 1.25), overflow dropped in token order.
    public static func switchTransformer(experts: Int = 8, capacityFactor: Double = 1.25) -> RouterConfig {
        RouterConfig(
            experts: experts, k: 1, scoring: .softmax, renormalize: false, capacityFactor: capacityFactor,
            dropPriority: .tokenOrder)
    }

    /// The most experts a router may have.
    public static let maxExperts = 1024

    /// Checks the options against each other and against `experts` (the logits' width).
    public func validate(experts width: Int) throws {
        guard experts == width else {
            throw SwitchyardError.shape(argument: "router logits", expected: "[tokens, \(experts)]", actual: [width])
        }
        guard (1...Self.maxExperts).contains(experts) else {
            throw SwitchyardError.outOfRange(argument: "experts", value: experts, range: "1...\(Self.maxExperts)")
        }
        guard (1...64).contains(expertGroups), experts % expertGroups == 0 else {
            throw SwitchyardError.outOfRange(
                argument: "expertGroups", value: expertGroups, range: "1...64, dividing experts = \(experts)")
        }
        guard (1...expertGroups).contains(topKGroups) else {
            throw SwitchyardError.outOfRange(argument: "topKGroups", value: topKGroups, range: "1...\(expertGroups)")
        }
        let reachable = expertGroups == 1 ? experts : topKGroups * (experts / expertGroups)
        guard (1...reachable).contains(k) else {
            throw SwitchyardError.outOfRange(
                argument: "k", value: k, range: "1...\(reachable) (experts in the kept groups)")
        }
        if let factor = capacityFactor, !(factor > 0 && factor.isFinite) {
            throw SwitchyardError.unsupported("capacityFactor must be positive and finite, got \(factor)")
        }
        if !routedScale.isFinite { throw SwitchyardError.unsupported("routedScale must be finite") }
    }
}

// MARK: - Values

/// The output of gating: chosen experts and weights per token, on the backend that ran it.
public struct Gating: Sendable {
    /// The router options the gating ran with.
    public let config: RouterConfig
    /// Tokens routed (T).
    public let tokens: Int
    /// The router logits `[T, E]` it was computed from (kept for the statistics).
    public let logits: Tensor
    /// Chosen experts `[T, k]` (i32), in descending choice order.
    public let ids: Tensor
    /// Their weights `[T, k]` (f32).
    public let weights: Tensor
    /// Device-side flags: [non-finite logit, expert id out of range]. Nothing waits for them:
    /// `ids` and `weights` (and every tensor computed from this gating) carry them, so reading
    /// one (`floats`, `ints`, `bytes`) throws `SwitchyardError.invalidValues` after the values
    /// arrive if a flag is raised; `check(flags:)` checks them explicitly.
    public let flags: Tensor

    /// A gating result made by the caller (ids chosen by its own router, say), checked: logits
    /// `[tokens, E]` (floating point), ids `[tokens, k]` (i32), weights `[tokens, k]` (f32),
    /// flags `[2]` (i32, zeros when the caller has nothing to flag), all on one backend. Expert
    /// ids out of range are caught by `permute` on the device (a raised flag), not here.
    public init(config: RouterConfig, tokens: Int, logits: Tensor, ids: Tensor, weights: Tensor, flags: Tensor) throws {
        try config.validate(experts: config.experts)
        guard tokens >= 0 else { throw SwitchyardError.outOfRange(argument: "gating tokens", value: tokens, range: "0...") }
        func expect(_ t: Tensor, _ shape: [Int], _ dtypes: [DType], _ name: String) throws {
            guard t.shape == shape else {
                throw SwitchyardError.shape(argument: name, expected: "\(shape)", actual: t.shape)
            }
            try t.expectDType(dtypes, name)
        }
        try expect(logits, [tokens, config.experts], DType.floatingPoint, "gating logits")
        try expect(ids, [tokens, config.k], [.i32], "gating ids")
        try expect(weights, [tokens, config.k], [.f32], "gating weights")
        try expect(flags, [2], [.i32], "gating flags")
        for (t, name) in [(ids, "gating ids"), (weights, "gating weights"), (flags, "gating flags")]
        where !t.sameBackend(as: logits) {
            throw SwitchyardError.backendMismatch(
                argument: name, expected: "the backend of the gating logits", actual: "another backend")
        }
        self.init(unchecked: config, tokens: tokens, logits: logits, ids: ids, weights: weights, flags: flags)
    }

    /// A gating result from a backend's own `gating`; `ids` and `weights` are guarded by `flags`.
    init(unchecked config: RouterConfig, tokens: Int, logits: Tensor, ids: Tensor, weights: Tensor, flags: Tensor) {
        self.config = config
        self.tokens = tokens
        self.logits = logits
        self.ids = ids.guarded(by: [flags])
        self.weights = weights.guarded(by: [flags])
        self.flags = flags
    }
}

/// Everything between the router and the expert matmuls, on the device: the gating result and
/// the stable permutation by expert, with each expert's rows padded to `blockSize`. Nothing of
/// it has been read by the host.
public struct Routing: Sendable {
    /// The gating result the permutation was made from.
    public let gating: Gating
    /// Rows each expert's block is padded to (the grouped matmul's row tile).
    public let blockSize: Int
    /// Kept assignments per expert `[E]`.
    public let counts: Tensor
    /// Assignments routed to each expert before dropping `[E]`.
    public let routedCounts: Tensor
    /// Block-padded exclusive scan `[E + 1]`; the last is the padded row total.
    public let offsets: Tensor
    /// Expert of each block of `blockSize` rows `[maxTiles]`, -1 past the total.
    public let tileExpert: Tensor
    /// Row of assignment (t, j) in expert order `[T·k]`, -1 when dropped.
    public let rowOf: Tensor
    /// Assignment t·k + j of each row `[maxRows]`, T·k on padding rows.
    public let assignmentOf: Tensor
    /// Weights `[T, k]` with dropped assignments set to 0.
    public let weights: Tensor
    /// Number of dropped assignments `[1]`.
    public let dropped: Tensor

    /// The router options.
    public var config: RouterConfig { gating.config }
    /// Tokens routed (T).
    public var tokens: Int { gating.tokens }
    /// Chosen experts `[T, k]` (i32).
    public var ids: Tensor { gating.ids }
    /// The routing flags (see `Gating.flags`).
    public var flags: Tensor { gating.flags }
    /// Rows the expert-ordered buffers are sized for (the worst case, known without a read).
    public var maxRows: Int { assignmentOf.shape[0] }
    /// Blocks the tile map is sized for (`maxRows / blockSize`).
    public var maxTiles: Int { tileExpert.shape[0] }

    /// A routing; every tensor is guarded by the gating's flags (reading one throws if the router
    /// logits were not finite or an expert id was out of range).
    init(
        gating: Gating, blockSize: Int, counts: Tensor, routedCounts: Tensor, offsets: Tensor, tileExpert: Tensor,
        rowOf: Tensor, assignmentOf: Tensor, weights: Tensor, dropped: Tensor
    ) {
        let flags = [gating.flags]
        self.gating = gating
        self.blockSize = blockSize
        self.counts = counts.guarded(by: flags)
        self.routedCounts = routedCounts.guarded(by: flags)
        self.offsets = offsets.guarded(by: flags)
        self.tileExpert = tileExpert.guarded(by: flags)
        self.rowOf = rowOf.guarded(by: flags)
        self.assignmentOf = assignmentOf.guarded(by: flags)
        self.weights = weights.guarded(by: flags)
        self.dropped = dropped.guarded(by: flags)
    }
}

extension Routing {
    /// The same permutation with other combine weights `[T, k]` (f32, on the routing's backend):
    /// what `combine` multiplies each row by. Ones turn `combine` into an exact un-permute
    /// (rows back to assignment order), as expert parallelism does before sending rows home.
    public func replacingWeights(_ newWeights: Tensor) throws -> Routing {
        guard newWeights.shape == [tokens, config.k] else {
            throw SwitchyardError.shape(
                argument: "routing weights", expected: "[\(tokens), \(config.k)]", actual: newWeights.shape)
        }
        try newWeights.expectDType([.f32], "routing weights")
        guard newWeights.sameBackend(as: rowOf) else {
            throw SwitchyardError.backendMismatch(
                argument: "routing weights", expected: "the routing's backend", actual: "another backend")
        }
        return Routing(
            gating: gating, blockSize: blockSize, counts: counts, routedCounts: routedCounts, offsets: offsets,
            tileExpert: tileExpert, rowOf: rowOf, assignmentOf: assignmentOf, weights: newWeights, dropped: dropped)
    }
}

/// Expert-choice routing: each expert's chosen tokens and their scores.
public struct ExpertChoice: Sendable {
    /// Tokens `[E, C]` (i32), each expert's in descending score order.
    public let tokens: Tensor
    /// Scores `[E, C]` (f32).
    public let weights: Tensor
    /// Device-side flags, as `Gating.flags`; `tokens` and `weights` are guarded by them.
    public let flags: Tensor
    /// Tokens each expert takes (C).
    public let capacity: Int

    init(tokens: Tensor, weights: Tensor, flags: Tensor, capacity: Int) {
        self.tokens = tokens.guarded(by: [flags])
        self.weights = weights.guarded(by: [flags])
        self.flags = flags
        self.capacity = capacity
    }
}

/// Routing statistics, read from the device when asked.
public struct RoutingStats: Sendable, Equatable {
    /// Kept assignments per expert.
    public var tokensPerExpert: [Int]
    /// Assignments dropped by capacity.
    public var dropped: Int
    /// Mean router probability per expert over the tokens (sigmoid scores normalized per token).
    public var meanProbability: [Float]
    /// Switch-Transformer load-balancing loss E · Σ_e f_e · P_e.
    public var balanceLoss: Float
    /// Router z-loss mean_t(logsumexp(logits_t)²).
    public var zLoss: Float

    /// Statistics from their parts.
    public init(tokensPerExpert: [Int], dropped: Int, meanProbability: [Float], balanceLoss: Float, zLoss: Float) {
        self.tokensPerExpert = tokensPerExpert
        self.dropped = dropped
        self.meanProbability = meanProbability
        self.balanceLoss = balanceLoss
        self.zLoss = zLoss
    }

    /// The statistics of a batch routed in parts (each with its token count), as if routed at
    /// once without capacity: counts and drops add, mean probabilities and the z-loss are
    /// token-weighted means, and the balance loss E · Σ f_e · P_e is formed again from the totals.
    public static func merging(_ parts: [(RoutingStats, tokens: Int)], experts: Int, k: Int) throws -> RoutingStats {
        let total = parts.reduce(0) { $0 + $1.tokens }
        guard parts.allSatisfy({ $0.0.tokensPerExpert.count == experts && $0.0.meanProbability.count == experts }) else {
            throw SwitchyardError.unsupported("merging routing statistics of different expert counts")
        }
        var counts = [Int](repeating: 0, count: experts)
        var probability = [Double](repeating: 0, count: experts)
        var z = 0.0
        var dropped = 0
        for (s, t) in parts {
            for e in 0..<experts {
                counts[e] += s.tokensPerExpert[e]
                probability[e] += Double(s.meanProbability[e]) * Double(t)
            }
            z += Double(s.zLoss) * Double(t)
            dropped += s.dropped
        }
        let n = Double(max(1, total))
        let assignments = Double(max(1, total * k))
        var balance = 0.0
        for e in 0..<experts { balance += Double(counts[e]) / assignments * (probability[e] / n) }
        return RoutingStats(
            tokensPerExpert: counts, dropped: dropped, meanProbability: probability.map { Float($0 / n) },
            balanceLoss: Float(Double(experts) * balance), zLoss: Float(z / n))
    }
}

// MARK: - Backend-independent entry points

extension ComputeBackend {
    /// Gating then the permutation: the one call between router logits and expert matmuls.
    /// `blockSize` is the grouped matmul's row tile (each expert's rows padded to it): this
    /// backend's `preferredBlockSize` unless given.
    public func route(_ logits: Tensor, bias: Tensor? = nil, config: RouterConfig, blockSize: Int? = nil) throws
        -> Routing
    {
        try permute(gating(logits, bias: bias, config: config), blockSize: blockSize ?? preferredBlockSize)
    }

    /// Throws if the device flagged the routing's input: NaN or infinite logits, or an expert
    /// id out of range. Reads two integers.
    public func check(flags: Tensor) throws {
        let f = try ints(flags)
        try Self.raise(flags: f)
    }

    /// Checks every flags tensor guarding `tensor` (after its values were read).
    func checkGuards(_ tensor: Tensor) throws {
        for flags in tensor.guards { try check(flags: flags) }
    }

    /// Checks every flags tensor guarding `tensor`, reading them without blocking a thread.
    func checkGuards(_ tensor: Tensor) async throws {
        for flags in tensor.guards { try await check(flags: flags) }
    }

    /// Throws if the device flagged the routing's input (see `check(flags:)`), reading the
    /// flags without blocking a thread.
    public func check(flags: Tensor) async throws {
        try Self.raise(flags: try await ints(flags))
    }

    /// Flags tensors share one layout, by slot: [0] non-finite router logits, [1] an expert id
    /// out of range (routing: 2 slots); [2] non-finite token-merge keys, [3] a token-merge size
    /// that is not positive and finite, [4] a source-map entry outside the merged rows (token
    /// merging: 5 slots, the first two unused).
    static func raise(flags f: [Int32]) throws {
        if f.count == TokenFlags.count {
            try TokenFlags.raise(f)
            return
        }
        if f.count > 0 && f[0] != 0 {
            throw SwitchyardError.invalidValues(
                argument: "router logits", detail: "NaN or infinite values; routing refused")
        }
        if f.count > 1 && f[1] != 0 {
            throw SwitchyardError.invalidValues(argument: "expert ids", detail: "an expert index is out of range")
        }
        if f.count > 2 && f[2] != 0 {
            throw SwitchyardError.invalidValues(argument: "token merge keys", detail: "NaN or infinite values; merge refused")
        }
        if f.count > 3 && f[3] != 0 {
            throw SwitchyardError.invalidValues(
                argument: "token merge sizes", detail: "a size that is not positive and finite; merge refused")
        }
        if f.count > 4 && f[4] != 0 {
            throw SwitchyardError.invalidValues(
                argument: "token unmerge sourceMap", detail: "an entry outside the merged rows; unmerge refused")
        }
    }
}

func validateRows(_ x: Tensor, _ argument: String, rows: Int?) throws -> (rows: Int, d: Int) {
    let s = try x.expectRank(2, argument, "[rows, d]")
    try x.expectDType(DType.floatingPoint, argument)
    if let rows, s[0] != rows {
        throw SwitchyardError.shape(argument: argument, expected: "[\(rows), d]", actual: s)
    }
    return (s[0], s[1])
}
