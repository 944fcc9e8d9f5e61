import SwitchyardReference

/// How `halting` reads its per-token halting signal (defined with the CPU reference).
public typealias HaltingInput = SwitchyardReference.HaltingInput

/// The device-side flags of the depth-sparsity ops (`halting`, `earlyExit`): an `[8]` i32
/// tensor, zero until a kernel finds a bad input; the ops' outputs carry it (`Tensor.guards`)
/// and reading one throws `SwitchyardError.invalidValues` naming the problem. Slots 0–2 are
/// the token-index checks of `token_index_map` (the same slots as `TokenFlags`).
enum DepthFlags {
    static let count = 8
    static let outOfRange = 0
    static let repeated = 1
    static let pastRows = 2
    /// A running/active mask value other than 0 or 1.
    static let badMask = 3
    /// A NaN halting probability or logit.
    static let nanValue = 4
    /// A running token with no packed row, or a halted token with one.
    static let inconsistent = 5

    static func raise(_ f: [Int32]) throws {
        if f[outOfRange] != 0 {
            throw SwitchyardError.invalidValues(
                argument: "depth state positions", detail: "a packed position is out of range (valid: −1, or 0..<N)")
        }
        if f[repeated] != 0 {
            throw SwitchyardError.invalidValues(argument: "depth state positions", detail: "a position is packed twice")
        }
        if f[pastRows] != 0 {
            throw SwitchyardError.invalidValues(
                argument: "depth rows", detail: "more running/active tokens than rows given (the packed rows are too few)")
        }
        if f[badMask] != 0 {
            throw SwitchyardError.invalidValues(argument: "depth state mask", detail: "a running/active value is neither 0 nor 1")
        }
        if f[nanValue] != 0 {
            throw SwitchyardError.invalidValues(
                argument: "halting p", detail: "a NaN halting probability (the token was halted with weight R)")
        }
        if f[inconsistent] != 0 {
            throw SwitchyardError.invalidValues(
                argument: "depth state", detail: "the mask and the packed positions disagree (a state the op did not make)")
        }
    }

    static func values(_ p: DepthProblems) -> [Int32] {
        [p.outOfRange, p.repeated, p.pastRows, p.badMask, p.nanValue, p.inconsistent, false, false].map { $0 ? 1 : 0 }
    }
}

/// The options of `halting`: ε (a token halts once its cumulative probability reaches 1 − ε),
/// the last allowed step, and whether p holds probabilities or logits.
public struct HaltingConfig: Hashable, Sendable {
    /// ε in [0, 1) (Graves' 0.01 by default).
    public var epsilon: Float
    /// The number of steps allowed: every token still running halts at step `maxSteps`.
    public var maxSteps: Int
    public var input: HaltingInput

    public init(epsilon: Float = 0.01, maxSteps: Int, input: HaltingInput = .probability) {
        self.epsilon = epsilon
        self.maxSteps = maxSteps
        self.input = input
    }

    /// The halting threshold 1 − ε, in f32 (what both backends compare with).
    public var threshold: Float { 1 - epsilon }
}

/// The running state of adaptive computation time over N tokens of width d, kept on the
/// backend between `halting` calls (each call returns a new one; nothing is changed in place).
/// Made by `haltingState(tokens:width:dtype:)`.
public struct HaltingState: @unchecked Sendable {
    /// Σ p over the steps each token ran, `[N]` f32.
    public let cumulative: Tensor
    /// R = 1 − Σ p before the halting step for halted tokens, 0 while running, `[N]` f32.
    public let remainder: Tensor
    /// Ponder cost N_steps + R for halted tokens (Graves), steps so far while running, `[N]` f32.
    public let ponder: Tensor
    /// Steps each token ran, `[N]` i32.
    public let steps: Tensor
    /// 1 while running, 0 once halted, `[N]` i32.
    public let running: Tensor
    /// The weighted mean state Σ_n w_n · h_n, `[N, d]` (f32 or a 16-bit storage type).
    public let accumulated: Tensor
    /// The running tokens' positions in order, then −1, `[N]` i32: row j of the next step's
    /// packed block input and output belongs to token `positions[j]`.
    public let positions: Tensor
    /// The number of running tokens, `[1]` i32, on the device.
    public let count: Tensor
    /// Steps taken so far (host-side: the caller's loop counter, no device read).
    public let step: Int

    init(
        cumulative: Tensor, remainder: Tensor, ponder: Tensor, steps: Tensor, running: Tensor, accumulated: Tensor,
        positions: Tensor, count: Tensor, step: Int
    ) {
        self.cumulative = cumulative
        self.remainder = remainder
        self.ponder = ponder
        self.steps = steps
        self.running = running
        self.accumulated = accumulated
        self.positions = positions
        self.count = count
        self.step = step
    }

    /// Tokens N.
    public var tokens: Int { running.shape[0] }
    /// Width d.
    public var width: Int { accumulated.shape[1] }
}

/// One step of adaptive computation time (ACT, Graves 2016; Universal Transformer; A-ViT;
/// PonderNet-style), defined by `Reference.haltingStep`. Inputs: the step's halting signal
/// `p [rows]` and block output `h [rows, d]` for the running tokens *packed* (row j belongs to
/// token `state.positions[j]`; rows ≥ the running count, rows past the count are ignored), and
/// the running `state`. For each running token: c' = c + q (q = p, or sigmoid(p) with
/// `.logit`, clamped to [0, 1], all in f32); it halts when c' ≥ 1 − ε or this is step
/// `maxSteps`, with weight R = 1 − c (ACT's remainder) and ponder cost N_steps + R, else its
/// weight is q; `accumulated += weight · h`. Halted tokens are untouched. The running tokens
/// are then compacted (the `compact` scan): `positions` and `count` of the result name the
/// next step's rows, on the device.
///
/// Bad input: a NaN p halts its token (q = 1, weight R) and raises `invalidValues` when an
/// output is read; p outside [0, 1] (or ±inf) is clamped. More running tokens than rows, or a
/// state the op did not make (bad positions, a mask not matching them), also raise on read.
/// N = 0 and d = 0 are allowed. Calling past `maxSteps` is an error.
///
/// The loop, with no host read inside (counts stay on the device; read `count` at the end, or
/// between steps only to stop early). `block` and `haltingHead` are the caller's:
///
/// ```
/// var state = try backend.haltingState(tokens: n, width: d, dtype: .f32)
/// var x = x0                                               // [1, N, d], by original position
/// for _ in 0..<maxSteps {
///     let positions = try state.positions.reshaped([1, n])
///     let rows = try backend.gatherTokens(x, indices: positions, rows: nil, dtype: nil)  // running rows first
///     let h = try block(rows.reshaped([n, d]))             // [N, d]: rows past the count are ignored
///     let p = try haltingHead(h)                           // [N] (logits: HaltingConfig(input: .logit))
///     x = try backend.expandTokens(h.reshaped([1, n, d]), positions: positions, length: n, base: x, fill: 0, dtype: nil)
///     state = try backend.halting(p, h: h, state: state, config: HaltingConfig(maxSteps: maxSteps))
/// }
/// let y = state.accumulated                                // [N, d] Σ_n w_n · h_n; state.ponder: N + R
/// ```
public struct Halting: OpDescriptor, Hashable {
    public var tokens: Int
    public var width: Int
    /// Rows of the packed p and h.
    public var rows: Int
    /// Storage types of p, h and the accumulated state.
    public var probabilityDType: DType
    public var dtype: DType
    public var accumulatorDType: DType
    public var config: HaltingConfig
    /// The step this call takes (0-based): the last allowed one is `config.maxSteps − 1`.
    public var step: Int

    public init(
        tokens: Int, width: Int, rows: Int? = nil, probabilityDType: DType, dtype: DType, accumulatorDType: DType,
        config: HaltingConfig, step: Int = 0
    ) {
        self.tokens = tokens
        self.width = width
        self.rows = rows ?? tokens
        self.probabilityDType = probabilityDType
        self.dtype = dtype
        self.accumulatorDType = accumulatorDType
        self.config = config
        self.step = step
    }

    /// Checks the sizes of a new state.
    static func validateState(tokens: Int, width: Int, dtype: DType) throws {
        guard tokens >= 0, fitsTokenIndices(1, tokens) else {
            throw SwitchyardError.outOfRange(argument: "haltingState tokens", value: tokens, range: "0..<2³¹")
        }
        guard width >= 0 else { throw SwitchyardError.outOfRange(argument: "haltingState width", value: width, range: "0...") }
        try validateOutputDType(dtype, "haltingState dtype")
        _ = try Tensor.checkedCount([tokens, width], dtype: dtype, "haltingState accumulated")
    }

    init(validating p: Tensor, h: Tensor, state: HaltingState, config: HaltingConfig) throws {
        let n = state.running.shape.first ?? -1
        let spec: [(Tensor, String, [Int], [DType])] = [
            (state.cumulative, "cumulative", [n], [.f32]), (state.remainder, "remainder", [n], [.f32]),
            (state.ponder, "ponder", [n], [.f32]), (state.steps, "steps", [n], [.i32]),
            (state.running, "running", [n], [.i32]), (state.positions, "positions", [n], [.i32]),
            (state.count, "count", [1], [.i32]),
        ]
        for (t, name, shape, dtypes) in spec {
            guard t.shape == shape else { throw SwitchyardError.shape(argument: "halting state.\(name)", expected: "\(shape)", actual: t.shape) }
            try t.expectDType(dtypes, "halting state.\(name)")
        }
        let a = try state.accumulated.expectRank(2, "halting state.accumulated", "[\(n), d]")
        guard a[0] == n else { throw SwitchyardError.shape(argument: "halting state.accumulated", expected: "[\(n), d]", actual: a) }
        try state.accumulated.expectDType(DType.floatingPoint, "halting state.accumulated")
        let d = a[1]
        let ps = try p.expectRank(1, "halting p", "[rows]")
        try p.expectDType(DType.floatingPoint, "halting p")
        guard ps[0] <= n else {
            throw SwitchyardError.shape(argument: "halting p", expected: "[rows ≤ \(n)] (at most one row per token)", actual: ps)
        }
        let hs = try h.expectRank(2, "halting h", "[\(ps[0]), \(d)]")
        try h.expectDType(DType.floatingPoint, "halting h")
        guard hs == [ps[0], d] else { throw SwitchyardError.shape(argument: "halting h", expected: "[\(ps[0]), \(d)] (p's rows, the state's width)", actual: hs) }
        guard config.epsilon.isFinite, config.epsilon >= 0, config.epsilon < 1 else {
            throw SwitchyardError.unsupported("halting epsilon = \(config.epsilon) is out of range [0, 1)")
        }
        guard config.maxSteps >= 1 else {
            throw SwitchyardError.outOfRange(argument: "halting maxSteps", value: config.maxSteps, range: "1...")
        }
        guard state.step >= 0, state.step < config.maxSteps else {
            throw SwitchyardError.outOfRange(
                argument: "halting step", value: state.step, range: "0..<\(config.maxSteps) (maxSteps: every token has halted)")
        }
        self.init(
            tokens: n, width: d, rows: ps[0], probabilityDType: p.dtype, dtype: h.dtype,
            accumulatorDType: state.accumulated.dtype, config: config, step: state.step)
    }

    /// Whether this step is the last allowed one (every running token halts).
    public var isLast: Bool { step + 1 == config.maxSteps }

    /// The new state's tensors: cumulative, remainder, ponder [N] f32; steps, running [N] i32;
    /// accumulated [N, d]; positions [N] i32; count [1] i32.
    public var outputs: [TensorSpec] {
        [TensorSpec([tokens], .f32), TensorSpec([tokens], .f32), TensorSpec([tokens], .f32), TensorSpec([tokens], .i32),
         TensorSpec([tokens], .i32), TensorSpec([tokens, width], accumulatorDType), TensorSpec([tokens], .i32),
         TensorSpec([1], .i32)]
    }

    /// A multiply-add per element of each row (rows taken as all running).
    public var flops: Double { Double(rows) * Double(width) * 2 + Double(rows) * 4 }

    /// The accumulated state read and written, the packed rows of h and p read, the per-token
    /// state (5 values) and positions read and written.
    public var bytes: Double {
        Double(tokens) * Double(width) * Double(2 * accumulatorDType.size) + Double(rows) * Double(width * dtype.size)
            + Double(rows * probabilityDType.size) + Double(tokens) * 4 * 14 + 8
    }
}

extension ReferenceBackend {
    /// Host depth flags for a step's problems.
    func depthFlags(_ p: DepthProblems) -> Tensor {
        Tensor(shape: [DepthFlags.count], dtype: .i32, storage: .host(.ints(DepthFlags.values(p))))
    }

    func haltingState(_ s: HaltingTokens, width: Int, dtype: DType, step: Int, guards: [Tensor]) -> HaltingState {
        let n = s.running.count
        let packed = Reference.compact(keep: s.running, batch: 1, length: n)
        func f(_ v: [Float]) -> Tensor { Tensor(shape: [n], dtype: .f32, storage: .host(.floats(v))).guarded(by: guards) }
        func i(_ v: [Int32], _ shape: [Int]) -> Tensor { ints(v, shape).guarded(by: guards) }
        return HaltingState(
            cumulative: f(s.cumulative), remainder: f(s.remainder), ponder: f(s.ponder), steps: i(s.steps, [n]),
            running: i(s.running, [n]),
            accumulated: Tensor(
                shape: [n, width], dtype: dtype, storage: .host(.floats(dtype.round(s.accumulated)))
            ).guarded(by: guards),
            positions: i(packed.positions, [n]), count: i(packed.counts, [1]), step: step)
    }

    public func haltingState(tokens: Int, width: Int, dtype: DType) throws -> HaltingState {
        try Halting.validateState(tokens: tokens, width: width, dtype: dtype)
        return haltingState(.initial(tokens: tokens, width: width), width: width, dtype: dtype, step: 0, guards: [])
    }

    public func halting(_ p: Tensor, h: Tensor, state: HaltingState, config: HaltingConfig) throws -> HaltingState {
        let op = try Halting(validating: p, h: h, state: state, config: config)
        let old = HaltingTokens(
            cumulative: try hostFloats(state.cumulative, "halting state.cumulative"),
            remainder: try hostFloats(state.remainder, "halting state.remainder"),
            ponder: try hostFloats(state.ponder, "halting state.ponder"),
            steps: try hostInts(state.steps, "halting state.steps"),
            running: try hostInts(state.running, "halting state.running"),
            accumulated: try hostFloats(state.accumulated, "halting state.accumulated"))
        let r = Reference.haltingStep(
            p: try hostFloats(p, "halting p"), h: try hostFloats(h, "halting h"), rows: op.rows, width: op.width,
            positions: try hostInts(state.positions, "halting state.positions"), state: old,
            threshold: config.threshold, last: op.isLast, input: config.input)
        let guards = p.guards + h.guards + state.running.guards + state.accumulated.guards + [depthFlags(r.problems)]
        return haltingState(r.state, width: op.width, dtype: op.accumulatorDType, step: state.step + 1, guards: guards)
    }
}
