/// How `halting` reads its per-token halting signal.
public enum HaltingInput: String, Sendable, Hashable, CaseIterable {
    /// The halting probability itself.
    case probability
    /// A logit: the probability is its sigmoid.
    case logit
}

/// The per-token state of adaptive computation time (see `Reference.haltingStep`), as host
/// arrays over the N tokens.
public struct HaltingTokens: Sendable, Equatable {
    /// Σ p over every step the token ran (the halting step included), f32.
    public var cumulative: [Float]
    /// R = 1 − (Σ p before the halting step) once halted; 0 while running.
    public var remainder: [Float]
    /// Ponder cost ρ = N_steps + R once halted; the steps run so far while running.
    public var ponder: [Float]
    /// Steps run.
    public var steps: [Int32]
    /// 1 while running, 0 once halted.
    public var running: [Int32]
    /// The weighted mean state Σ w_n · h_n, `[N, d]`.
    public var accumulated: [Float]

    public init(
        cumulative: [Float], remainder: [Float], ponder: [Float], steps: [Int32], running: [Int32], accumulated: [Float]
    ) {
        self.cumulative = cumulative
        self.remainder = remainder
        self.ponder = ponder
        self.steps = steps
        self.running = running
        self.accumulated = accumulated
    }

    /// The state before the first step: every token running, sums and accumulator zero.
    public static func initial(tokens: Int, width: Int) -> HaltingTokens {
        HaltingTokens(
            cumulative: [Float](repeating: 0, count: tokens), remainder: [Float](repeating: 0, count: tokens),
            ponder: [Float](repeating: 0, count: tokens), steps: [Int32](repeating: 0, count: tokens),
            running: [Int32](repeating: 1, count: tokens), accumulated: [Float](repeating: 0, count: tokens * width))
    }
}

/// What a depth-sparsity step (`haltingStep`, `earlyExitStep`) found wrong in its input; each
/// raises an error when an output is read.
public struct DepthProblems: Sendable, Equatable {
    /// A packed position outside −1 and 0..<N.
    public var outOfRange = false
    /// A position named twice among the packed positions.
    public var repeated = false
    /// A position in a slot at or past the rows given (more running tokens than rows).
    public var pastRows = false
    /// A running/active mask value other than 0 or 1.
    public var badMask = false
    /// A NaN halting probability (or logit).
    public var nanValue = false
    /// A running token with no row, or a halted one with a row (a state not made by the op).
    public var inconsistent = false

    public init() {}
}

extension Reference {
    /// The halting probability of `value` read as `input`: the sigmoid of a logit, then clamped
    /// to [0, 1] (±inf go to 1 and 0); NaN becomes 1 (the token halts) and is reported.
    public static func haltingProbability(_ value: Float, input: HaltingInput) -> (p: Float, nan: Bool) {
        var q = value
        if input == .logit { q = Float(1 / (1 + exp(-Double(value)))) }
        if q.isNaN { return (1, true) }
        return (min(max(q, 0), 1), false)
    }

    /// Checks packed positions `[N]` of N tokens against `rows` rows and builds the inverse map
    /// (the slot of each position, −1 for none).
    static func depthInverse(_ positions: [Int32], tokens: Int, rows: Int, problems: inout DepthProblems) -> [Int] {
        let p = checkTokenIndices(positions, batch: 1, length: tokens, slots: positions.count, rows: rows)
        problems.outOfRange = problems.outOfRange || p.outOfRange
        problems.repeated = problems.repeated || p.repeated
        problems.pastRows = problems.pastRows || p.pastRows
        var inverse = [Int](repeating: -1, count: tokens)
        for j in 0..<positions.count {
            if let t = tokenPosition(positions, 0, j, slots: positions.count, length: tokens, rows: rows), inverse[t] < 0 {
                inverse[t] = j
            }
        }
        return inverse
    }

    /// One step of adaptive computation time (Graves 2016; Universal Transformer, A-ViT,
    /// PonderNet-style) over N tokens of width d. The running tokens' rows are packed: slot j <
    /// `rows` of `p [rows]` and `h [rows, d]` belongs to token `positions[j]` (`positions [N]`,
    /// the running tokens in order, then −1). For each token t:
    ///
    /// - halted (`running[t] == 0`): untouched.
    /// - running, row j: q = `haltingProbability(p[j])`; c = cumulative[t]; c' = c + q (f32);
    ///   steps' = steps + 1. The token halts when c' ≥ `threshold` (= 1 − ε, f32) or `last`
    ///   (the step is the last allowed, maxSteps): then its weight is R = 1 − c (f32), remainder
    ///   = R, ponder = steps' + R (f32), running = 0; otherwise the weight is q, ponder = steps'.
    ///   cumulative = c'; accumulated[t] += weight · h[j] (Double, rounded by the caller).
    ///
    /// The weights of a token over its steps sum to 1 (Σ q before the halting step, plus R).
    public static func haltingStep(
        p: [Float], h: [Float], rows: Int, width: Int, positions: [Int32], state: HaltingTokens, threshold: Float,
        last: Bool, input: HaltingInput
    ) -> (state: HaltingTokens, problems: DepthProblems) {
        let tokens = state.running.count
        precondition(p.count == rows && h.count == rows * width && positions.count == tokens)
        var problems = DepthProblems()
        let inverse = depthInverse(positions, tokens: tokens, rows: rows, problems: &problems)
        var s = state
        for t in 0..<tokens {
            let r = state.running[t]
            let j = inverse[t]
            if r != 0 && r != 1 { problems.badMask = true }
            if (r == 1 && j < 0) || (r != 1 && j >= 0) { problems.inconsistent = true }
            guard r == 1 && j >= 0 else { continue }
            let (q, nan) = haltingProbability(p[j], input: input)
            if nan { problems.nanValue = true }
            let c = state.cumulative[t]
            let c1 = c + q
            let n1 = state.steps[t] + 1
            let halts = c1 >= threshold || last
            let weight: Float
            if halts {
                let remainder = 1 - c
                weight = remainder
                s.remainder[t] = remainder
                s.ponder[t] = Float(n1) + remainder
                s.running[t] = 0
            } else {
                weight = q
                s.ponder[t] = Float(n1)
            }
            s.cumulative[t] = c1
            s.steps[t] = n1
            for k in 0..<width {
                let a = Double(state.accumulated[t * width + k]) + Double(weight) * Double(h[j * width + k])
                s.accumulated[t * width + k] = Float(a)
            }
        }
        return (s, problems)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
