import SwitchyardReference

/// A routing of the active samples of an early exit (`ExitState.active`, `[N]` i32, nonzero:
/// active) through one expert, defined by `Reference.activeRouting`: the active samples in
/// ascending order take rows 0..<count, each padded to `blockSize`, the rest are dropped. With it
/// a dense block runs on the active rows only, with no host read of the count: the grouped
/// matmul reads the samples through it (`.gathered(x)`) and skips the tiles past the padded
/// count, and `combine(_:routing:residual:)` adds its rows back with the residual elsewhere. Row
/// j of its output belongs to the j-th active sample, as row j of `ExitState.positions` does, so
/// an exit head's logits over it go to `earlyExit` as they are (their first N rows).
public struct ActiveRouting: OpDescriptor, Hashable {
    public var samples: Int
    public var blockSize: Int

    public init(samples: Int, blockSize: Int) {
        self.samples = samples
        self.blockSize = blockSize
    }

    /// Checks the mask (`[N]` i32) and the block size (1…4096), and that the rows stay below 2³¹.
    public init(validating active: Tensor, blockSize: Int) throws {
        let s = try active.expectRank(1, "activeRouting active", "[samples]")
        try active.expectDType([.i32], "activeRouting active")
        guard (1...4096).contains(blockSize) else {
            throw SwitchyardError.outOfRange(argument: "activeRouting blockSize", value: blockSize, range: "1...4096")
        }
        guard s[0] + blockSize < Int(Int32.max) else {
            throw SwitchyardError.outOfRange(argument: "activeRouting samples", value: s[0], range: "below 2³¹ rows")
        }
        self.init(samples: s[0], blockSize: blockSize)
    }

    var permute: Permute { Permute(tokens: samples, k: 1, experts: 1, blockSize: blockSize) }
    /// Rows of its expert-ordered buffers: N padded to the block.
    public var maxRows: Int { permute.maxRows }
    /// counts `[1]`, routed counts `[1]`, offsets `[2]`, tile map `[maxTiles]`, rowOf `[N, 1]`,
    /// assignmentOf `[maxRows]`, weights `[N, 1]` f32, dropped `[1]` (a permutation's outputs).
    public var outputs: [TensorSpec] { permute.outputs }
    public var flops: Double { 0 }
    /// The mask read twice (count and scatter), rowOf, weights and assignmentOf written.
    public var bytes: Double { Double(samples * 4 * 4 + maxRows * 4) }
}

extension ReferenceBackend {
    public func activeRouting(_ active: Tensor, blockSize: Int) throws -> Routing {
        let op = try ActiveRouting(validating: active, blockSize: blockSize)
        let n = op.samples
        let mask = try hostInts(active, "activeRouting active")
        let p = Reference.activeRouting(active: mask, blockSize: blockSize)
        let config = RouterConfig(experts: 1, k: 1, renormalize: false)
        let gating = Gating(
            unchecked: config, tokens: n, logits: f32([Float](repeating: 0, count: n), [n, 1]),
            ids: ints([Int32](repeating: 0, count: n), [n, 1]), weights: f32([Float](repeating: 1, count: n), [n, 1]),
            flags: ints([0, 0], [2]))
        return Routing(
            gating: gating, blockSize: blockSize, counts: ints(p.counts, [1]), routedCounts: ints(p.counts, [1]),
            offsets: ints(p.offsets, [2]), tileExpert: ints(p.tileExpert, [p.tileExpert.count]),
            rowOf: ints(p.rowOf, [n, 1]), assignmentOf: ints(p.assignmentOf, [p.assignmentOf.count]),
            weights: f32(p.weights, [n, 1]), dropped: ints([p.dropped], [1]))
    }
}
