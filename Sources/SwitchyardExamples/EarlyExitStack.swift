import Foundation
import Switchyard
import SwitchyardConformance

/// The sizes of an early-exit stack: `blocks` residual SwiGLU MLP blocks (width `hidden`, FFN
/// width `ffn`), each followed by a linear exit head over `classes` classes, and the criterion
/// that lets a sample leave.
public struct EarlyExitConfig: Sendable, Hashable {
    public var blocks: Int
    public var hidden: Int
    public var ffn: Int
    public var classes: Int
    /// Head k's weights are N(0, (headScale · (1 + headGrowth · k))² / d): its logits spread more
    /// with depth, so confidence grows from exit to exit (a stand-in for trained heads, which grow
    /// more certain as the features improve).
    public var headScale: Float
    public var headGrowth: Float
    /// When a sample leaves (the last head is always forced).
    public var criterion: ExitCriterion

    public init(
        blocks: Int, hidden: Int, ffn: Int, classes: Int, headScale: Float, headGrowth: Float = 1,
        criterion: ExitCriterion
    ) {
        self.blocks = blocks
        self.hidden = hidden
        self.ffn = ffn
        self.classes = classes
        self.headScale = headScale
        self.headGrowth = headGrowth
        self.criterion = criterion
    }

    /// `switchyard run --config early-exit-tiny`: 4 blocks, d 256, ffn 1024, 100 classes, head
    /// scale 2.2 · (1 + k/2), leave at max probability ≥ 0.5. With the seeded weights and input at
    /// the default B 4 × L 1024 (4,096 samples), 809, 2,039, 1,077 and 171 samples leave at heads
    /// 0 to 3 (blocks compute 4,096, 3,287, 1,248 and 171 rows: 54 % of the dense block FLOPs;
    /// the same on PoCL, rusticl and the reference). With scale 1.5 · (k + 1) only 3 % left at
    /// head 0.
    public static let tiny = EarlyExitConfig(
        blocks: 4, hidden: 256, ffn: 1024, classes: 100, headScale: 2.2, headGrowth: 0.5, criterion: .maxProbability(0.5))

    /// FLOPs of one row through one block's MLP: gate|up `[2·ffn, d]` and down `[d, ffn]`.
    public var flopsPerRow: Double { 2 * Double(hidden) * 2 * Double(ffn) + 2 * Double(ffn) * Double(hidden) }
    /// FLOPs of one row through one exit head `[classes, d]`.
    public var headFLOPsPerRow: Double { 2 * Double(hidden) * Double(classes) }

    /// Checks every size; the error names the field.
    public func validate() throws {
        guard blocks >= 1 else { throw SwitchyardError.outOfRange(argument: "early-exit blocks", value: blocks, range: "1...") }
        guard hidden >= 1 else { throw SwitchyardError.outOfRange(argument: "early-exit hidden", value: hidden, range: "1...") }
        guard ffn >= 1 else { throw SwitchyardError.outOfRange(argument: "early-exit ffn", value: ffn, range: "1...") }
        guard (1...EarlyExit.maxClasses).contains(classes) else {
            throw SwitchyardError.outOfRange(argument: "early-exit classes", value: classes, range: "1...\(EarlyExit.maxClasses)")
        }
        guard headScale.isFinite, headScale > 0, headGrowth.isFinite, headGrowth >= 0 else {
            throw SwitchyardError.unsupported(
                "early-exit head scale \(headScale), growth \(headGrowth) out of range: expected scale > 0, growth ≥ 0")
        }
        switch criterion {
        case .maxProbability(let t), .entropy(let t), .margin(let t):
            guard !t.isNaN else { throw SwitchyardError.unsupported("early-exit threshold: NaN exits nothing; pass a number") }
        case .patience(let p):
            guard p >= 1 else { throw SwitchyardError.outOfRange(argument: "early-exit patience", value: p, range: "1...") }
        }
    }
}

/// Early exit (BranchyNet, DeeBERT, CALM's per-token exits) over residual SwiGLU MLP blocks:
/// the B·L tokens are N = B·L independent samples (per-token exit, as in CALM: each token leaves
/// the stack on its own; no pooling). After each block a linear exit head `[classes, d]` scores
/// the active samples (f32 logits) and `earlyExit` lets the confident ones leave (their
/// prediction and exit recorded at their position, their hidden state frozen) and compacts the
/// rest on the device. Each block runs on the active samples only: `activeRouting` routes the
/// exit state's active mask through one expert, the grouped matmuls read the samples through it
/// and skip the tiles past the active count (no host read inside the loop), and `combine` adds
/// x + W2·SwiGLU(W1·x) back at the active samples with x passing through elsewhere. The last
/// head lets every sample still active leave.
///
/// Dense: every sample through every block and every head (`x + W2·SwiGLU(W1·x)`, then the
/// head's logits), as the stack runs without exits.
public final class EarlyExitStack: ConditionalStack {
    public let backend: any ComputeBackend
    public let shape: ExampleShape
    public let config: EarlyExitConfig
    let gateUps: [ExpertWeights]
    let downs: [ExpertWeights]
    let heads: [ExpertWeights]
    /// Positions 0..<N of the one sequence of N samples: the dense residual add.
    let identity: Tensor

    public init(backend: any ComputeBackend, config c: EarlyExitConfig, shape: ExampleShape, pack: Bool = true) throws {
        try c.validate()
        try shape.validate(width: c.hidden, perToken: max(c.ffn, c.classes), backend: backend)
        self.backend = backend
        self.shape = shape
        self.config = c
        var g = SeededGenerator(seed: shape.seed)
        var gateUps: [ExpertWeights] = []
        var downs: [ExpertWeights] = []
        var heads: [ExpertWeights] = []
        for k in 0..<c.blocks {
            let gateUp = try seededWeights(&g, backend, [1, 2 * c.ffn, c.hidden], fanIn: c.hidden, dtype: shape.dtype)
            let down = try seededWeights(&g, backend, [1, c.hidden, c.ffn], fanIn: c.ffn, dtype: shape.dtype)
            let scale = c.headScale * (1 + c.headGrowth * Float(k)) / Float(c.hidden).squareRoot()
            let head = try backend.tensor(
                g.normals(c.classes * c.hidden, scale: scale), shape: [1, c.classes, c.hidden], dtype: shape.dtype)
            gateUps.append(try backend.prepareWeights(gateUp, swiglu: true, pack: pack))
            downs.append(try backend.prepareWeights(down, swiglu: false, pack: pack))
            heads.append(try backend.prepareWeights(head, swiglu: false, pack: pack))
        }
        (self.gateUps, self.downs, self.heads) = (gateUps, downs, heads)
        identity = try identityPositions(backend, batch: 1, length: shape.batch * shape.length)
        try backend.synchronize()
    }

    /// Samples N = B·L.
    public var samples: Int { shape.batch * shape.length }
    public var width: Int { config.hidden }

    public var summary: String {
        "\(config.blocks) residual SwiGLU MLP blocks (d \(config.hidden), ffn \(config.ffn)) with a linear exit head "
            + "(\(config.classes) classes, weight scale \(config.headScale)·(1 + \(config.headGrowth)·k)/√d at head k) after each: each of the B·L = \(samples) tokens "
            + "is a sample that leaves at the first head with \(config.criterion) (the last head takes the rest); "
            + "blocks and heads run on the active samples only"
    }

    public var denseDefinition: String {
        "every sample through every block (x + W2·SwiGLU(W1·x)) and every exit head (the stack without exits)"
    }

    public func input() throws -> Tensor {
        var g = SeededGenerator(seed: shape.seed ^ 0x5EED_0F_1A9E)
        return try backend.tensor(
            g.normals(samples * config.hidden), shape: [shape.batch, shape.length, config.hidden], dtype: shape.dtype)
    }

    func checkInput(_ x: Tensor) throws {
        let want = [shape.batch, shape.length, config.hidden]
        guard x.shape == want else {
            throw SwitchyardError.shape(argument: "early-exit input x", expected: "\(want)", actual: x.shape)
        }
    }

    public func forwardDense(_ x: Tensor) throws -> Tensor {
        try checkInput(x)
        let (n, d) = (samples, config.hidden)
        var x = try x.reshaped([1, n, d])
        for k in 0..<config.blocks {
            let h = try backend.groupedMatmul(try x.reshaped([n, d]), weights: gateUps[k], epilogue: .swiglu)
            let f = try backend.groupedMatmul(h, weights: downs[k], dtype: x.dtype)
            x = try backend.scatterTokens(x, updates: try f.reshaped([1, n, d]), indices: identity, weights: nil, dtype: nil)
            _ = try backend.groupedMatmul(try x.reshaped([n, d]), weights: heads[k], dtype: .f32)  // [N, classes]
        }
        return try x.reshaped([shape.batch, shape.length, d])
    }

    /// Records: per block, the routing's active count `[1]` (the rows the block and its head
    /// computed); outcomes: each sample's prediction and exit `[N]`.
    public func forwardDynamic(_ x: Tensor, clock: StageClock?) throws -> ConditionalForward {
        try checkInput(x)
        let (n, d) = (samples, config.hidden)
        let block = backend.preferredBlockSize
        var x = try x.reshaped([n, d])
        var state = try backend.exitState(samples: n, classes: config.classes, heads: config.blocks, probabilities: nil)
        var counts: [Tensor] = []
        for k in 0..<config.blocks {
            let routing = try staged(clock, "route") { try backend.activeRouting(state.active, blockSize: block) }
            let f = try staged(clock, "MLP") {
                let h = try backend.groupedMatmul(gathering: x, weights: gateUps[k], routing: routing, epilogue: .swiglu)
                return try backend.groupedMatmul(h, weights: downs[k], routing: routing, dtype: x.dtype)  // [maxRows, d]
            }
            x = try staged(clock, "combine") { try backend.combine(f, routing: routing, residual: x, dtype: nil) }
            let logits = try staged(clock, "head") {
                let all = try backend.groupedMatmul(gathering: x, weights: heads[k], routing: routing, dtype: .f32)
                // Row j is the j-th active sample's, as row j of the state's positions: the
                // first N rows go to the exit (rows past the active count are ignored there).
                return all.shape[0] == n ? all : try backend.copyRows(all, 0..<n)
            }
            state = try staged(clock, "earlyExit") {
                try backend.earlyExit(logits, state: state, criterion: config.criterion, last: k == config.blocks - 1)
            }
            counts.append(routing.counts)
        }
        return ConditionalForward(
            y: try x.reshaped([shape.batch, shape.length, d]), records: counts,
            outcomes: [("predictions", state.predictions), ("exit heads", state.exitHead)])
    }

    /// Rows computed per block: the active count each block's routing held, read back.
    public func account(_ forward: ConditionalForward) throws -> ComputeAccount {
        let computed = try forward.records.map { Int(try backend.ints($0).first ?? 0) }
        return ComputeAccount(
            computedRows: computed, denseRows: Array(repeating: samples, count: config.blocks),
            flopsPerRow: Array(repeating: config.flopsPerRow, count: config.blocks),
            dynamicOverheadFLOPs: Double(computed.reduce(0, +)) * config.headFLOPsPerRow,
            denseOverheadFLOPs: Double(config.blocks * samples) * config.headFLOPsPerRow)
    }
}
