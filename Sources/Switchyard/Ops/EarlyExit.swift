import SwitchyardReference

/// When `earlyExit` lets a sample leave (defined with the CPU reference).
public typealias ExitCriterion = SwitchyardReference.ExitCriterion

/// The state of early-exit inference over N samples, kept on the backend between `earlyExit`
/// calls (each call returns a new one; nothing changes in place). Made by
/// `exitState(samples:classes:heads:probabilities:)`.
public struct ExitState: @unchecked Sendable {
    /// The final prediction (argmax class) of each sample at its original position, −1 until it
    /// exits, `[N]` i32.
    public let predictions: Tensor
    /// The exit (head index) each sample left at, −1 until it exits, `[N]` i32.
    public let exitHead: Tensor
    /// The criterion's statistic at the exit (max probability for `maxProbability` and
    /// `patience`, entropy, margin; NaN for a non-finite row), 0 until it exits, `[N]` f32.
    public let confidence: Tensor
    /// The softmax row of each exited sample at its original position, `[N, classes]` (zero
    /// until it exits), when asked for.
    public let probabilities: Tensor?
    /// 1 while active, 0 once exited, `[N]` i32.
    public let active: Tensor
    /// The active samples' original positions in order, then −1, `[N]` i32: row j of the next
    /// block's packed input and of the next exit's logits belongs to sample `positions[j]`.
    public let positions: Tensor
    /// The number of active samples, `[1]` i32, on the device.
    public let count: Tensor
    /// Patience: each sample's previous prediction (−1: none) and streak, `[N]` i32.
    public let lastPrediction: Tensor
    public let streak: Tensor
    /// Samples that left at each exit, `[heads]` i32 (read it at the end).
    public let histogram: Tensor
    /// The next exit's index (host-side: the caller's loop counter).
    public let head: Int

    init(
        predictions: Tensor, exitHead: Tensor, confidence: Tensor, probabilities: Tensor?, active: Tensor,
        positions: Tensor, count: Tensor, lastPrediction: Tensor, streak: Tensor, histogram: Tensor, head: Int
    ) {
        self.predictions = predictions
        self.exitHead = exitHead
        self.confidence = confidence
        self.probabilities = probabilities
        self.active = active
        self.positions = positions
        self.count = count
        self.lastPrediction = lastPrediction
        self.streak = streak
        self.histogram = histogram
        self.head = head
    }

    /// Samples N.
    public var samples: Int { active.shape[0] }
    /// Exits available.
    public var heads: Int { histogram.shape[0] }
}

/// One exit of early-exit inference (BranchyNet, DeeBERT, PABEE), defined by
/// `Reference.earlyExitStep`. Input: the exit head's logits `[rows, classes]` of the active
/// samples *packed* (row j belongs to sample `state.positions[j]`; rows ≥ the active count, rows
/// past it ignored). A sample exits when its softmax is confident (max probability ≥ τ,
/// entropy ≤ τ, top-2 margin ≥ τ, or the same argmax at `patience` consecutive exits) or when
/// `last` is set: its prediction (argmax, ties to the lower class), exit index, statistic and
/// (when kept) softmax row are written at its *original* position; the samples still active are
/// compacted (`positions`, `count`, on the device) for the next block, and the exit's count goes
/// to `histogram[head]`. A row with a NaN or +inf (or all −inf) is never confident; forced out
/// by `last`, its prediction follows `topK` (the first NaN, else the first +inf) and its
/// statistic is NaN. Classes 1...2²⁰.
///
/// A loop with no host read inside (read `predictions` and `histogram` at the end). `blocks`
/// and `exitHeads` are the caller's:
///
/// ```
/// var state = try backend.exitState(samples: n, classes: classes, heads: blocks.count, probabilities: nil)
/// var x = x0                                               // [1, N, d], by original position
/// for k in blocks.indices {
///     let positions = try state.positions.reshaped([1, n])
///     let rows = try backend.gatherTokens(x, indices: positions, rows: nil, dtype: nil)  // active rows packed
///     let h = try blocks[k](rows.reshaped([n, d]))         // [N, d]: rows past the count are ignored
///     x = try backend.expandTokens(h.reshaped([1, n, d]), positions: positions, length: n, base: x, fill: 0, dtype: nil)
///     state = try backend.earlyExit(try exitHeads[k](h), state: state, criterion: .maxProbability(0.9),
///                                   last: k == blocks.count - 1)
/// }
/// let predictions = try backend.ints(state.predictions)   // [N] by original position
/// let perExit = try backend.ints(state.histogram)          // samples that left at each exit
/// ```
public struct EarlyExit: OpDescriptor, Hashable {
    public var samples: Int
    public var classes: Int
    /// Rows of the packed logits.
    public var rows: Int
    public var dtype: DType
    public var heads: Int
    /// This exit's index.
    public var head: Int
    public var criterion: ExitCriterion
    public var last: Bool
    /// The storage type of the kept probability rows, nil when not kept.
    public var probabilityDType: DType?

    /// The largest class count: a work-group reduces a row with loops of classes / group steps.
    public static let maxClasses = 1 << 20

    public init(
        samples: Int, classes: Int, rows: Int? = nil, dtype: DType, heads: Int = 1, head: Int = 0,
        criterion: ExitCriterion, last: Bool = false, probabilityDType: DType? = nil
    ) {
        self.samples = samples
        self.classes = classes
        self.rows = rows ?? samples
        self.dtype = dtype
        self.heads = heads
        self.head = head
        self.criterion = criterion
        self.last = last
        self.probabilityDType = probabilityDType
    }

    /// Checks the sizes of a new state.
    static func validateState(samples: Int, classes: Int, heads: Int, probabilities: DType?) throws {
        guard samples >= 0, fitsTokenIndices(1, samples) else {
            throw SwitchyardError.outOfRange(argument: "exitState samples", value: samples, range: "0..<2³¹")
        }
        guard (1...maxClasses).contains(classes) else {
            throw SwitchyardError.outOfRange(argument: "exitState classes", value: classes, range: "1...\(maxClasses)")
        }
        guard (1...65536).contains(heads) else {
            throw SwitchyardError.outOfRange(argument: "exitState heads", value: heads, range: "1...65536")
        }
        try validateOutputDType(probabilities, "exitState probabilities")
        if let probabilities {
            _ = try Tensor.checkedCount([samples, classes], dtype: probabilities, "exitState probabilities")
            guard fitsTokenIndices(samples, classes) else {
                throw SwitchyardError.shape(
                    argument: "exitState probabilities", expected: "samples × classes below 2³¹", actual: [samples, classes])
            }
        }
    }

    init(validating logits: Tensor, state: ExitState, criterion: ExitCriterion, last: Bool) throws {
        let n = state.active.shape.first ?? -1
        let spec: [(Tensor, String, [Int], DType)] = [
            (state.predictions, "predictions", [n], .i32), (state.exitHead, "exitHead", [n], .i32),
            (state.confidence, "confidence", [n], .f32), (state.active, "active", [n], .i32),
            (state.positions, "positions", [n], .i32), (state.count, "count", [1], .i32),
            (state.lastPrediction, "lastPrediction", [n], .i32), (state.streak, "streak", [n], .i32),
        ]
        for (t, name, shape, dtype) in spec {
            guard t.shape == shape else { throw SwitchyardError.shape(argument: "earlyExit state.\(name)", expected: "\(shape)", actual: t.shape) }
            try t.expectDType([dtype], "earlyExit state.\(name)")
        }
        let hs = try state.histogram.expectRank(1, "earlyExit state.histogram", "[heads]")
        try state.histogram.expectDType([.i32], "earlyExit state.histogram")
        let s = try logits.expectRank(2, "earlyExit logits", "[rows, classes]")
        try logits.expectDType(DType.floatingPoint, "earlyExit logits")
        guard (1...Self.maxClasses).contains(s[1]) else {
            throw SwitchyardError.shape(argument: "earlyExit logits", expected: "[rows, 1...\(Self.maxClasses) classes]", actual: s)
        }
        guard s[0] <= n else {
            throw SwitchyardError.shape(argument: "earlyExit logits", expected: "[rows ≤ \(n), classes] (one row per sample at most)", actual: s)
        }
        if let p = state.probabilities {
            guard p.shape == [n, s[1]] else {
                throw SwitchyardError.shape(argument: "earlyExit state.probabilities", expected: "[\(n), \(s[1])] (the logits' classes)", actual: p.shape)
            }
            try p.expectDType(DType.floatingPoint, "earlyExit state.probabilities")
        }
        switch criterion {
        case .maxProbability(let t), .entropy(let t), .margin(let t):
            guard !t.isNaN else { throw SwitchyardError.unsupported("earlyExit threshold: NaN exits nothing; pass a number") }
        case .patience(let p):
            guard p >= 1 else { throw SwitchyardError.outOfRange(argument: "earlyExit patience", value: p, range: "1...") }
        }
        guard state.head >= 0, state.head < hs[0] else {
            throw SwitchyardError.outOfRange(argument: "earlyExit head", value: state.head, range: "0..<\(hs[0]) (the state's heads)")
        }
        self.init(
            samples: n, classes: s[1], rows: s[0], dtype: logits.dtype, heads: hs[0], head: state.head, criterion: criterion,
            last: last, probabilityDType: state.probabilities?.dtype)
    }

    /// The new state's tensors: predictions, exitHead [N] i32; confidence [N] f32; probabilities
    /// [N, classes] when kept; active, positions [N] i32; count [1]; lastPrediction, streak [N]; histogram [heads].
    public var outputs: [TensorSpec] {
        var o = [TensorSpec([samples], .i32), TensorSpec([samples], .i32), TensorSpec([samples], .f32)]
        if let p = probabilityDType { o.append(TensorSpec([samples, classes], p)) }
        o += [TensorSpec([samples], .i32), TensorSpec([samples], .i32), TensorSpec([1], .i32), TensorSpec([samples], .i32),
              TensorSpec([samples], .i32), TensorSpec([heads], .i32)]
        return o
    }

    /// Per logit: a compare, a subtraction, an exponential, two multiply-adds (rows taken as active).
    public var flops: Double { Double(rows) * Double(classes) * 5 }

    /// The logits read once; the per-sample state (7 values) read and written; the kept
    /// probability rows copied forward (read and written).
    public var bytes: Double {
        Double(rows) * Double(classes * dtype.size) + Double(samples) * 4 * 14 + Double(heads * 8) + 8
            + Double(probabilityDType.map { 2 * samples * classes * $0.size } ?? 0)
    }
}

extension ReferenceBackend {
    func exitState(_ s: ExitSamples, classes: Int, heads histogram: [Int32], probabilities: DType?, head: Int, guards: [Tensor])
        -> ExitState
    {
        let n = s.active.count
        let packed = Reference.compact(keep: s.active, batch: 1, length: n)
        func i(_ v: [Int32], _ shape: [Int]) -> Tensor { ints(v, shape).guarded(by: guards) }
        return ExitState(
            predictions: i(s.predictions, [n]), exitHead: i(s.exitHead, [n]),
            confidence: Tensor(shape: [n], dtype: .f32, storage: .host(.floats(s.confidence))).guarded(by: guards),
            probabilities: probabilities.map {
                Tensor(shape: [n, classes], dtype: $0, storage: .host(.floats($0.round(s.probabilities)))).guarded(by: guards)
            },
            active: i(s.active, [n]), positions: i(packed.positions, [n]), count: i(packed.counts, [1]),
            lastPrediction: i(s.lastPrediction, [n]), streak: i(s.streak, [n]), histogram: i(histogram, [histogram.count]),
            head: head)
    }

    public func exitState(samples: Int, classes: Int, heads: Int, probabilities: DType?) throws -> ExitState {
        try EarlyExit.validateState(samples: samples, classes: classes, heads: heads, probabilities: probabilities)
        return exitState(
            .initial(samples: samples, classes: classes, probabilities: probabilities != nil), classes: classes,
            heads: [Int32](repeating: 0, count: heads), probabilities: probabilities, head: 0, guards: [])
    }

    public func earlyExit(_ logits: Tensor, state: ExitState, criterion: ExitCriterion, last: Bool) throws -> ExitState {
        let op = try EarlyExit(validating: logits, state: state, criterion: criterion, last: last)
        let old = ExitSamples(
            predictions: try hostInts(state.predictions, "earlyExit state.predictions"),
            exitHead: try hostInts(state.exitHead, "earlyExit state.exitHead"),
            confidence: try hostFloats(state.confidence, "earlyExit state.confidence"),
            active: try hostInts(state.active, "earlyExit state.active"),
            lastPrediction: try hostInts(state.lastPrediction, "earlyExit state.lastPrediction"),
            streak: try hostInts(state.streak, "earlyExit state.streak"),
            probabilities: try state.probabilities.map { try hostFloats($0, "earlyExit state.probabilities") } ?? [])
        let r = Reference.earlyExitStep(
            logits: try hostFloats(logits, "earlyExit logits"), rows: op.rows, classes: op.classes,
            positions: try hostInts(state.positions, "earlyExit state.positions"), state: old, criterion: criterion,
            head: op.head, last: last)
        // The exit's count: active before less active after (what the device computes from its counts).
        var histogram = try hostInts(state.histogram, "earlyExit state.histogram")
        let before = try hostInts(state.count, "earlyExit state.count")[0]
        histogram[op.head] = before - Int32(r.state.active.filter { $0 == 1 }.count)
        let guards = logits.guards + state.active.guards + [depthFlags(r.problems)]
        return exitState(
            r.state, classes: op.classes, heads: histogram, probabilities: op.probabilityDType, head: state.head + 1,
            guards: guards)
    }
}
