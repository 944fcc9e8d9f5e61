/// When `earlyExit` lets a sample leave (BranchyNet, DeeBERT, PABEE). Thresholds compare with
/// the softmax of the sample's exit-head logits.
public enum ExitCriterion: Hashable, Sendable, CustomStringConvertible {
    /// The largest softmax probability is at least τ.
    case maxProbability(Float)
    /// The softmax's entropy (natural log) is at most τ.
    case entropy(Float)
    /// The two largest softmax probabilities differ by at least τ.
    case margin(Float)
    /// PABEE: the same argmax prediction at this many consecutive exits (≥ 1; PABEE's patience
    /// t is `patience(t + 1)`).
    case patience(Int)

    /// The kernels' code of the criterion.
    public var code: Int {
        switch self {
        case .maxProbability: 0
        case .entropy: 1
        case .margin: 2
        case .patience: 3
        }
    }

    /// τ (0 for patience).
    public var threshold: Float {
        switch self {
        case .maxProbability(let t), .entropy(let t), .margin(let t): t
        case .patience: 0
        }
    }

    public var description: String {
        switch self {
        case .maxProbability(let t): "maxprob≥\(t)"
        case .entropy(let t): "entropy≤\(t)"
        case .margin(let t): "margin≥\(t)"
        case .patience(let p): "patience=\(p)"
        }
    }
}

/// The per-sample state of early exit over N samples, as host arrays (see `Reference.earlyExitStep`).
public struct ExitSamples: Sendable, Equatable {
    /// The predicted class (argmax of the exit logits) once exited, −1 before.
    public var predictions: [Int32]
    /// The exit (head index) a sample left at, −1 before.
    public var exitHead: [Int32]
    /// The criterion's statistic at the exit (max probability for `maxProbability` and
    /// `patience`, entropy, margin); NaN for a non-finite row; 0 before.
    public var confidence: [Float]
    /// 1 while active, 0 once exited.
    public var active: [Int32]
    /// Patience: the previous exit's prediction (−1: none, or a non-finite row).
    public var lastPrediction: [Int32]
    /// Patience: consecutive exits with the same prediction.
    public var streak: [Int32]
    /// The softmax row at the exit, `[N, classes]`, when kept (else empty).
    public var probabilities: [Float]

    public init(
        predictions: [Int32], exitHead: [Int32], confidence: [Float], active: [Int32], lastPrediction: [Int32],
        streak: [Int32], probabilities: [Float]
    ) {
        self.predictions = predictions
        self.exitHead = exitHead
        self.confidence = confidence
        self.active = active
        self.lastPrediction = lastPrediction
        self.streak = streak
        self.probabilities = probabilities
    }

    /// Before the first exit: every sample active, nothing predicted.
    public static func initial(samples n: Int, classes: Int, probabilities: Bool) -> ExitSamples {
        ExitSamples(
            predictions: [Int32](repeating: -1, count: n), exitHead: [Int32](repeating: -1, count: n),
            confidence: [Float](repeating: 0, count: n), active: [Int32](repeating: 1, count: n),
            lastPrediction: [Int32](repeating: -1, count: n), streak: [Int32](repeating: 0, count: n),
            probabilities: probabilities ? [Float](repeating: 0, count: n * classes) : [])
    }
}

/// The statistics of one exit-head row (see `Reference.exitStatistics`).
public struct ExitStatistics: Sendable, Equatable {
    /// The argmax: `Reference.topK`'s order (NaN above every number, ties to the lower class).
    public var prediction: Int
    /// Whether the row can be confident: its best value is finite (no NaN, no +inf, not all −inf).
    public var finite: Bool
    public var maxProbability: Double
    public var entropy: Double
    public var margin: Double
}

extension Reference {
    /// The statistics of one row of exit logits (classes ≥ 1): with m the row maximum and
    /// S = Σ exp(x − m), the max probability 1/S, the entropy log S − Σ exp(x − m)(x − m)/S
    /// (a class with probability 0 adds 0), and the margin (1 − exp(x₂ − m))/S with x₂ the
    /// runner-up in top-k order (1/S with one class).
    public static func exitStatistics(_ row: ArraySlice<Float>) -> ExitStatistics {
        let x = Array(row)
        var best = 0
        var second = -1
        for c in 1..<x.count {
            if ranksBefore(x[c], c, x[best], best) {
                second = best
                best = c
            } else if second < 0 || ranksBefore(x[c], c, x[second], second) {
                second = c
            }
        }
        let m = Double(x[best])
        guard m.isFinite else {
            return ExitStatistics(prediction: best, finite: false, maxProbability: .nan, entropy: .nan, margin: .nan)
        }
        var s = 0.0
        var t = 0.0
        for v in x {
            let e = exp(Double(v) - m)
            s += e
            if e > 0 { t += e * (Double(v) - m) }
        }
        let e2 = second >= 0 ? exp(Double(x[second]) - m) : 0
        return ExitStatistics(
            prediction: best, finite: true, maxProbability: 1 / s, entropy: log(s) - t / s, margin: (1 - e2) / s)
    }

    /// One exit of early-exit inference over N samples (`state` arrays of N, `classes` classes).
    /// The active samples' logits are packed: slot j < `rows` of `logits [rows, classes]` belongs
    /// to sample `positions[j]` (`positions [N]`, the active samples in order, then −1). For each
    /// active sample with row j, from the row's statistics (`exitStatistics`): a finite row is
    /// confident when its max probability ≥ τ, entropy ≤ τ or margin ≥ τ; under `patience(P)`
    /// the streak becomes streak + 1 when the prediction equals the previous exit's, else 1, and
    /// the sample is confident once the streak reaches P (a non-finite row is never confident
    /// and resets the streak to 0 and the previous prediction to −1). The sample exits when
    /// confident or `last`: prediction = the argmax (NaN rows: `topK`'s order), exitHead =
    /// `head`, confidence = the criterion's statistic (NaN for a non-finite row), active = 0 and,
    /// when kept, its probability row = `softmax` of the logits row. Inactive samples are untouched.
    public static func earlyExitStep(
        logits: [Float], rows: Int, classes: Int, positions: [Int32], state: ExitSamples, criterion: ExitCriterion,
        head: Int, last: Bool
    ) -> (state: ExitSamples, problems: DepthProblems) {
        let n = state.active.count
        precondition(logits.count == rows * classes && positions.count == n && classes >= 1)
        var problems = DepthProblems()
        let inverse = depthInverse(positions, tokens: n, rows: rows, problems: &problems)
        var s = state
        for i in 0..<n {
            let a = state.active[i]
            let j = inverse[i]
            if a != 0 && a != 1 { problems.badMask = true }
            if (a == 1 && j < 0) || (a != 1 && j >= 0) { problems.inconsistent = true }
            guard a == 1 && j >= 0 else { continue }
            let row = logits[(j * classes)..<((j + 1) * classes)]
            let st = exitStatistics(row)
            var confident: Bool
            let statistic: Double
            switch criterion {
            case .maxProbability(let tau):
                statistic = st.maxProbability
                confident = st.finite && st.maxProbability >= Double(tau)
            case .entropy(let tau):
                statistic = st.entropy
                confident = st.finite && st.entropy <= Double(tau)
            case .margin(let tau):
                statistic = st.margin
                confident = st.finite && st.margin >= Double(tau)
            case .patience(let p):
                statistic = st.maxProbability
                if st.finite {
                    s.streak[i] = Int32(st.prediction) == state.lastPrediction[i] ? state.streak[i] + 1 : 1
                    s.lastPrediction[i] = Int32(st.prediction)
                } else {
                    s.streak[i] = 0
                    s.lastPrediction[i] = -1
                }
                confident = Int(s.streak[i]) >= p
            }
            if confident || last {
                s.predictions[i] = Int32(st.prediction)
                s.exitHead[i] = Int32(head)
                s.confidence[i] = Float(statistic)
                s.active[i] = 0
                if !state.probabilities.isEmpty {
                    let y = softmax(Array(row), rows: 1, cols: classes)
                    for c in 0..<classes { s.probabilities[i * classes + c] = Float(y[c]) }
                }
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
