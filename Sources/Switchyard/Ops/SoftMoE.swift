import SwitchyardReference

/// The output of a Soft MoE dispatch (see `SoftMoEDispatch`).
public struct SoftMoESlots: Sendable {
    /// `[B, n, d]` (x's dtype): each sequence group's slot inputs X̃ = Dᵀ · X.
    public let slots: Tensor
    /// `[B, T, n]` f32: the combine weights C (softmax of the logits over the slots, per token).
    public let combineWeights: Tensor
}

/// Soft MoE dispatch (Puigcerver et al. 2023) of `x [B, T, d]` (B sequence groups of T tokens)
/// with the slot parameters `phi`, prepared from Φᵀ `[1, n, d]` (one row of d weights per slot,
/// the `nn.Linear(d, n).weight` layout; n = E·S slots, expert e owning slots e·S ..< (e+1)·S;
/// the paper's Φ is `[d, n]`): logits = X·Φ `[T, n]` in f32, dispatch weights D = softmax over
/// the tokens (per slot), combine weights C = softmax over the slots (per token), slots
/// X̃ = Dᵀ · X `[n, d]`. No token is dropped. `Reference.softMoEDispatch` is the definition.
/// Limits: T ≤ 16,384 and n ≤ 16,384 (a work-item's loop over them stays within llvmpipe's
/// budget).
public struct SoftMoEDispatch: Hashable, Sendable {
    public var batches: Int
    public var tokens: Int
    public var dim: Int
    public var slots: Int
    public var dtype: DType
    public var phiDType: DType

    public static let maxTokens = 16384
    public static let maxSlots = 16384

    public init(batches: Int, tokens: Int, dim: Int, slots: Int, dtype: DType, phiDType: DType? = nil) {
        self.batches = batches
        self.tokens = tokens
        self.dim = dim
        self.slots = slots
        self.dtype = dtype
        self.phiDType = phiDType ?? dtype
    }

    init(validating x: Tensor, phi: ExpertWeights) throws {
        let s = try x.expectRank(3, "softMoEDispatch x", "[batches, tokens, d]")
        try x.expectDType(DType.floatingPoint, "softMoEDispatch x")
        guard let phiWeight = phi.weight else {
            throw SwitchyardError.unsupported("softMoEDispatch phi: quantized slot parameters are not supported; prepare Φᵀ unquantized")
        }
        guard phi.experts == 1, !phi.swiglu, phi.inFeatures == s[2] else {
            throw SwitchyardError.shape(
                argument: "softMoEDispatch phi", expected: "[1, slots, \(s[2])] (Φᵀ, prepared without SwiGLU)",
                actual: phiWeight.shape)
        }
        let n = phi.outFeatures
        guard s[1] <= Self.maxTokens else {
            throw SwitchyardError.shape(
                argument: "softMoEDispatch x", expected: "[batches, tokens ≤ \(Self.maxTokens), d]", actual: s)
        }
        guard n <= Self.maxSlots else {
            throw SwitchyardError.shape(
                argument: "softMoEDispatch phi", expected: "[1, slots ≤ \(Self.maxSlots), d]", actual: phiWeight.shape)
        }
        _ = try Tensor.checkedCount(s, dtype: x.dtype, "softMoEDispatch x")
        try Self.checkRows(batches: s[0], tokens: s[1], slots: n, "softMoEDispatch x")
        _ = try Tensor.checkedCount([s[0], max(s[1], n), n], dtype: .f32, "softMoEDispatch weights")
        _ = try Tensor.checkedCount([s[0], n, s[2]], dtype: x.dtype, "softMoEDispatch slots")
        self.init(batches: s[0], tokens: s[1], dim: s[2], slots: n, dtype: x.dtype, phiDType: phiWeight.dtype)
    }

    /// Row indices (batch × tokens, batch × slots) stay below 2³¹ in the kernels.
    static func checkRows(batches: Int, tokens: Int, slots: Int, _ argument: String) throws {
        let (rows, overflow) = batches.multipliedReportingOverflow(by: max(tokens, slots))
        guard !overflow, rows < Int(Int32.max) else {
            throw SwitchyardError.shape(
                argument: argument, expected: "batches × max(tokens, slots) below 2³¹", actual: [batches, tokens, slots])
        }
    }

    /// The logits, both softmaxes (~5 per element each) and the slot mix.
    public var flops: Double {
        let btn = Double(batches) * Double(tokens) * Double(slots)
        return 4 * btn * Double(dim) + 10 * btn
    }

    /// x and Φ read, the slots and the combine weights written.
    public var bytes: Double {
        let b = Double(batches)
        return b * Double(tokens * dim * dtype.size) + Double(slots * dim * phiDType.size)
            + b * Double(slots * dim * dtype.size) + b * Double(tokens * slots * 4)
    }
}

/// Soft MoE combine: `y[b, t, :] = Σ_s C[b, t, s] · Ỹ[b, s, :]` with the combine weights
/// `C [B, T, n]` (f32) and the expert outputs Ỹ either `[B, n, d]`, or the rows `[maxRows, d]` of
/// grouped matmuls over a fixed routing of the B·n slots (`fixedRouting`), slot (b, s) read from
/// row `routing.rowOf[b·n + s]`. f32 sums in slot order. `Reference.softMoECombine` is the
/// definition.
public struct SoftMoECombine: Hashable, Sendable {
    public var batches: Int
    public var tokens: Int
    public var slots: Int
    public var dim: Int
    /// Rows of the expert outputs (B·n, or the routing's maxRows).
    public var rows: Int
    public var dtype: DType
    public var outputDType: DType
    /// Whether the rows are read through a routing's row map.
    public var routed: Bool

    public init(
        batches: Int, tokens: Int, slots: Int, dim: Int, rows: Int? = nil, dtype: DType, outputDType: DType? = nil,
        routed: Bool = false
    ) {
        self.batches = batches
        self.tokens = tokens
        self.slots = slots
        self.dim = dim
        self.rows = rows ?? batches * slots
        self.dtype = dtype
        self.outputDType = outputDType ?? dtype
        self.routed = routed
    }

    init(validating ys: Tensor, weights: Tensor, routing: Routing?, dtype: DType?) throws {
        let w = try weights.expectRank(3, "softMoECombine weights", "[batches, tokens, slots] f32")
        try weights.expectDType([.f32], "softMoECombine weights")
        let (b, t, n) = (w[0], w[1], w[2])
        guard t <= SoftMoEDispatch.maxTokens, n <= SoftMoEDispatch.maxSlots else {
            throw SwitchyardError.shape(
                argument: "softMoECombine weights",
                expected: "[batches, tokens ≤ \(SoftMoEDispatch.maxTokens), slots ≤ \(SoftMoEDispatch.maxSlots)] f32", actual: w)
        }
        try SoftMoEDispatch.checkRows(batches: b, tokens: t, slots: n, "softMoECombine weights")
        try ys.expectDType(DType.floatingPoint, "softMoECombine ys")
        let d: Int
        if let routing {
            let s = try ys.expectRank(2, "softMoECombine ys", "[\(routing.maxRows), d] (the routing's rows)")
            guard s[0] == routing.maxRows, routing.tokens == b * n, routing.config.k == 1 else {
                throw SwitchyardError.shape(
                    argument: "softMoECombine ys", expected: "[\(routing.maxRows), d] over a k = 1 routing of \(b * n) slots",
                    actual: s)
            }
            d = s[1]
        } else {
            let s = try ys.expectRank(3, "softMoECombine ys", "[\(b), \(n), d]")
            guard s[0] == b, s[1] == n else {
                throw SwitchyardError.shape(argument: "softMoECombine ys", expected: "[\(b), \(n), d]", actual: s)
            }
            d = s[2]
        }
        let out = dtype ?? ys.dtype
        guard out.isFloatingPoint else {
            throw SwitchyardError.dtype(argument: "softMoECombine output dtype", expected: "f32, f16 or bf16", actual: out)
        }
        _ = try Tensor.checkedCount([b, t, d], dtype: out, "softMoECombine output")
        self.init(
            batches: b, tokens: t, slots: n, dim: d, rows: ys.shape[0] * (routing == nil ? n : 1), dtype: ys.dtype,
            outputDType: out, routed: routing != nil)
    }

    public var flops: Double { 2 * Double(batches) * Double(tokens) * Double(slots) * Double(dim) }

    /// The expert outputs and the weights read, the output written.
    public var bytes: Double {
        let b = Double(batches)
        return b * Double(slots * dim * dtype.size) + b * Double(tokens * slots * 4) + b * Double(tokens * dim * outputDType.size)
    }
}

extension ComputeBackend {
    /// A routing that sends assignment a (one per token, k = 1) to expert `ids[a]` with weight 1,
    /// sorted on the host once (`Reference.permute`) and uploaded: for layers whose routing does
    /// not depend on the input, such as Soft MoE's slots (each expert owns its slots). Its
    /// gating's logits are zeros, so `routingStats` reports the uniform probabilities it stands
    /// for.
    public func fixedRouting(ids: [Int32], experts: Int, blockSize: Int) throws -> Routing {
        let config = RouterConfig(experts: experts, k: 1, renormalize: false)
        try config.validate(experts: experts)
        if let bad = ids.first(where: { $0 < 0 || Int($0) >= experts }) {
            throw SwitchyardError.outOfRange(argument: "fixedRouting ids", value: Int(bad), range: "0..<\(experts)")
        }
        guard (1...4096).contains(blockSize) else {
            throw SwitchyardError.outOfRange(argument: "blockSize", value: blockSize, range: "1...4096")
        }
        let n = ids.count
        guard n + experts * blockSize < Int(Int32.max) else {
            throw SwitchyardError.outOfRange(argument: "fixedRouting ids", value: n, range: "below 2³¹ rows")
        }
        let ones = [Float](repeating: 1, count: n)
        let p = Reference.permute(
            ids: ids, weights: ones, tokens: n, k: 1, experts: experts, blockSize: blockSize, capacity: nil,
            priority: .tokenOrder)
        var routed = [Int32](repeating: 0, count: experts)
        for id in ids { routed[Int(id)] += 1 }
        let flags = try tensor([0, 0] as [Int32], shape: [2])
        let gating = try Gating(
            config: config, tokens: n, logits: try tensor([Float](repeating: 0, count: n * experts), shape: [n, experts], dtype: .f32),
            ids: try tensor(ids, shape: [n, 1]), weights: try tensor(ones, shape: [n, 1], dtype: .f32), flags: flags)
        return Routing(
            gating: gating, blockSize: blockSize, counts: try tensor(p.counts, shape: [experts]),
            routedCounts: try tensor(routed, shape: [experts]), offsets: try tensor(p.offsets, shape: [experts + 1]),
            tileExpert: try tensor(p.tileExpert, shape: [p.tileExpert.count]), rowOf: try tensor(p.rowOf, shape: [n, 1]),
            assignmentOf: try tensor(p.assignmentOf, shape: [p.assignmentOf.count]),
            weights: try tensor(p.weights, shape: [n, 1], dtype: .f32), dropped: try tensor([p.dropped], shape: [1]))
    }
}

extension ReferenceBackend {
    public func softMoEDispatch(_ x: Tensor, phi: ExpertWeights) throws -> SoftMoESlots {
        let op = try SoftMoEDispatch(validating: x, phi: phi)
        let r = Reference.softMoEDispatch(
            x: try hostFloats(x, "softMoEDispatch x"), phiT: try hostFloats(phi.weight!, "softMoEDispatch phi"),
            batches: op.batches, tokens: op.tokens, d: op.dim, slots: op.slots)
        return SoftMoESlots(
            slots: output(r.slots, shape: [op.batches, op.slots, op.dim], dtype: x.dtype).guarded(by: x.guards),
            combineWeights: output(r.combineWeights, shape: [op.batches, op.tokens, op.slots], dtype: .f32)
                .guarded(by: x.guards))
    }

    public func softMoECombine(_ ys: Tensor, weights: Tensor, routing: Routing?, dtype: DType?) throws -> Tensor {
        let op = try SoftMoECombine(validating: ys, weights: weights, routing: routing, dtype: dtype)
        let y = Reference.softMoECombine(
            ys: try hostFloats(ys, "softMoECombine ys"), rows: op.rows,
            rowOf: try routing.map { try hostInts($0.rowOf, "routing") }, weights: try hostFloats(weights, "softMoECombine weights"),
            batches: op.batches, tokens: op.tokens, d: op.dim, slots: op.slots)
        return output(y, shape: [op.batches, op.tokens, op.dim], dtype: op.outputDType)
            .guarded(by: ys.guards + weights.guards + (routing.map { [$0.flags] } ?? []))
    }
}
