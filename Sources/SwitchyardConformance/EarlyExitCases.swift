import Foundation
import Switchyard

/// Cases of `earlyExit`: each case runs several exits on the device in sequence, as a caller's
/// loop does (exit k's logits drawn per sample by original position, packed by `gatherTokens`
/// through the state's positions), and compares the final state with the reference's sequence.
enum EarlyExitCases {
    /// Exit-logit distributions.
    enum Logits: String {
        /// normal · 3: confidence varies, some samples leave at each exit.
        case normal
        /// One class +20 above normal noise: every sample is confident at once.
        case peaked
        /// normal · 0.01: nobody is confident.
        case flat
        /// Integers 0...2: exact ties for the argmax and zero margins.
        case ties
        /// A per-sample base (normal · 2) plus small per-exit noise: stable predictions (patience).
        case stable
        /// NaN, +inf and −inf among normal values, and whole rows of −inf.
        case special
        /// normal · 3 with one class −inf in every other row: finite statistics from rows that a
        /// CPU device's fast path leaves to the exact one (which takes rows with an infinity).
        case masked
        /// Integers 0...2 with one class −inf in every other row: exact ties and zero margins
        /// there too.
        case tiesMasked
    }

    static func logits(_ kind: Logits, n: Int, classes: Int, head: Int, seed: UInt64) -> [Float] {
        var g = SeededGenerator(seed: seed &+ UInt64(head) &* 0x51ED)
        switch kind {
        case .normal: return g.normals(n * classes, scale: 3)
        case .flat: return g.normals(n * classes, scale: 0.01)
        case .peaked:
            var v = g.normals(n * classes)
            for i in 0..<n { v[i * classes + Int(g.next() % UInt64(classes))] += 20 }
            return v
        case .ties: return (0..<(n * classes)).map { _ in Float(g.next() % 3) }
        case .stable:
            var base = SeededGenerator(seed: seed)
            let b = base.normals(n * classes, scale: 2)
            return b.map { $0 + g.normal() * 0.3 }
        case .masked, .tiesMasked:
            var v = kind == .masked ? g.normals(n * classes, scale: 3) : (0..<(n * classes)).map { _ in Float(g.next() % 3) }
            for i in stride(from: 0, to: n, by: 2) { v[i * classes + Int(g.next() % UInt64(classes))] = -.infinity }
            return v
        case .special:
            var v = g.normals(n * classes, scale: 3)
            let special: [Float] = [.nan, .infinity, -.infinity]
            for i in 0..<n where g.next() % 4 == 0 {
                let r = Int(g.next() % 4)
                if r == 3 {
                    for c in 0..<classes { v[i * classes + c] = -.infinity }
                } else {
                    v[i * classes + Int(g.next() % UInt64(classes))] = special[r]
                }
            }
            return v
        }
    }

    struct Shape: Sendable {
        var n: Int
        var classes: Int
        var dtype: DType = .f32
        var logits: Logits = .normal
        var criterion: ExitCriterion
        var heads: Int = 4
        /// Exits run (all heads, the last forced, when nil).
        var exits: Int? = nil
        var probabilities: DType? = nil
    }

    static let shapes: [Shape] = [
        Shape(n: 1, classes: 10, criterion: .maxProbability(0.5), heads: 3),
        Shape(n: 0, classes: 10, criterion: .maxProbability(0.5)),
        Shape(n: 1000, classes: 10, criterion: .maxProbability(0.8)),
        Shape(n: 500, classes: 1000, dtype: .f16, criterion: .entropy(5.5), heads: 3),
        Shape(n: 500, classes: 100, dtype: .bf16, criterion: .margin(0.5)),
        Shape(n: 300, classes: 50, logits: .stable, criterion: .patience(2), heads: 5),
        Shape(n: 300, classes: 20, dtype: .f16, logits: .stable, criterion: .patience(3), heads: 6),
        Shape(n: 2000, classes: 17, logits: .normal, criterion: .patience(1), heads: 3),
        Shape(n: 800, classes: 40, logits: .peaked, criterion: .maxProbability(0.9)),
        Shape(n: 800, classes: 40, logits: .flat, criterion: .maxProbability(0.99), heads: 3),
        Shape(n: 600, classes: 12, logits: .ties, criterion: .margin(0.001)),
        Shape(n: 600, classes: 12, logits: .ties, criterion: .patience(2), heads: 3),
        Shape(n: 300, classes: 40, logits: .ties, criterion: .margin(0.001), heads: 2),
        Shape(n: 400, classes: 30, logits: .special, criterion: .maxProbability(0.5), heads: 3, probabilities: .f32),
        Shape(n: 400, classes: 30, logits: .special, criterion: .entropy(1.0), heads: 3),
        Shape(n: 400, classes: 30, logits: .special, criterion: .patience(2), heads: 4),
        Shape(n: 600, classes: 40, logits: .tiesMasked, criterion: .margin(0.001), heads: 3),
        Shape(n: 400, classes: 37, logits: .masked, criterion: .margin(0.3), heads: 3),
        Shape(n: 700, classes: 33, dtype: .f16, criterion: .margin(0.3), probabilities: .f16),
        Shape(n: 700, classes: 64, criterion: .maxProbability(0.6), probabilities: .bf16),
        Shape(n: 50, classes: 1, criterion: .maxProbability(0.999), heads: 2),
        Shape(n: 4, classes: 262_144, criterion: .maxProbability(0.5), heads: 2),
        Shape(n: 3, classes: 70_001, dtype: .bf16, logits: .peaked, criterion: .entropy(0.5), heads: 2),
        Shape(n: 4099, classes: 7, criterion: .entropy(1.2)),
        Shape(n: 800, classes: 25, criterion: .maxProbability(0.7), heads: 5, exits: 2),
        Shape(n: 500, classes: 16, criterion: .maxProbability(0), heads: 2),
        Shape(n: 500, classes: 16, criterion: .entropy(-1), heads: 3),
    ]

    static func outputs(_ s: ExitState) -> [CaseOutput] {
        var o = [CaseOutput("predictions", s.predictions, .exact), CaseOutput("exitHead", s.exitHead, .exact),
                 CaseOutput("confidence", s.confidence, .nmse(for: .f32))]
        if let p = s.probabilities { o.append(CaseOutput("probabilities", p, .nmse(for: p.dtype))) }
        o += [CaseOutput("active", s.active, .exact), CaseOutput("positions", s.positions, .exact),
              CaseOutput("count", s.count, .exact), CaseOutput("lastPrediction", s.lastPrediction, .exact),
              CaseOutput("streak", s.streak, .exact), CaseOutput("histogram", s.histogram, .exact)]
        return o
    }

    /// Runs `exits` exits from a fresh state, exit k's logits by original position packed
    /// through the state's positions by `gatherTokens`; the last head is forced.
    static func run(
        _ backend: any ComputeBackend, _ s: Shape, logits: [Tensor], exits: Int
    ) throws -> ExitState {
        var state = try backend.exitState(samples: s.n, classes: s.classes, heads: s.heads, probabilities: s.probabilities)
        for k in 0..<exits {
            let packed = try backend.gatherTokens(
                logits[k], indices: try state.positions.reshaped([1, s.n]), rows: nil, dtype: nil)
            state = try backend.earlyExit(
                try packed.reshaped([s.n, s.classes]), state: state, criterion: s.criterion, last: k == s.heads - 1)
        }
        return state
    }

    static func inputs(_ backend: any ComputeBackend, _ s: Shape, exits: Int, seed: UInt64) throws -> [Tensor] {
        try (0..<exits).map {
            try backend.tensor(
                logits(s.logits, n: s.n, classes: s.classes, head: $0, seed: seed), shape: [1, s.n, s.classes],
                dtype: s.dtype)
        }
    }

    static var cases: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for s in shapes {
            let exits = s.exits ?? s.heads
            let shape = "N=\(s.n) classes=\(s.classes)"
            var options = "\(s.logits) \(s.criterion) exits=\(exits)/\(s.heads)"
            if let p = s.probabilities { options += " probabilities=\(p)" }
            let seed = Conformance.seed("early_exit \(shape) \(s.dtype) \(options)")
            let op = EarlyExit(
                samples: s.n, classes: s.classes, dtype: s.dtype, heads: s.heads, criterion: s.criterion,
                probabilityDType: s.probabilities)
            cases.append(
                ConformanceCase(
                    op: "early_exit", shape: shape, dtype: s.dtype, options: options, seed: seed, rows: s.n,
                    flops: op.flops * Double(exits), bytes: op.bytes * Double(exits)
                ) { backend in
                    let l = try inputs(backend, s, exits: exits, seed: seed)
                    return { outputs(try run(backend, s, logits: l, exits: exits)) }
                })
        }
        // Refused: bad arguments (at the call), states the op did not make and too few rows
        // (raised when an output is read).
        enum Refusal: String, CaseIterable {
            case nanTau = "NaN threshold", patienceZero = "patience 0", pastHeads = "exit past the heads"
            case classMismatch = "logits classes != probabilities", tooManyRows = "logits rows > N", intLogits = "i32 logits"
            case noClasses = "exitState classes 0", noHeads = "exitState heads 0", intProbabilities = "i32 probabilities"
            case fewRows = "more active samples than rows", repeated = "state position repeated"
            case inconsistent = "state active/positions disagree", badMask = "state active value 2"
        }
        let matches: [Refusal: String] = [
            .nanTau: "threshold", .patienceZero: "patience", .pastHeads: "earlyExit head",
            .classMismatch: "probabilities", .tooManyRows: "earlyExit logits", .intLogits: "earlyExit logits",
            .noClasses: "exitState classes", .noHeads: "exitState heads", .intProbabilities: "exitState probabilities",
            .fewRows: "depth rows", .repeated: "positions", .inconsistent: "depth state", .badMask: "depth state mask",
        ]
        for r in Refusal.allCases {
            let (n, classes) = (30, 6)
            let seed = Conformance.seed("early_exit refused \(r.rawValue)")
            cases.append(
                ConformanceCase(
                    op: "early_exit", shape: "N=\(n) classes=\(classes)", dtype: .f32, options: r.rawValue, seed: seed,
                    flops: 0, bytes: 0, expectsError: true, errorMatch: matches[r]
                ) { backend in
                    let x = try backend.tensor(
                        logits(.normal, n: n + 1, classes: classes, head: 0, seed: seed), shape: [n + 1, classes], dtype: .f32)
                    return {
                        var criterion = ExitCriterion.maxProbability(0.5)
                        var probabilities: DType? = nil
                        var heads = 2
                        var stateClasses = classes
                        switch r {
                        case .nanTau: criterion = .maxProbability(.nan)
                        case .patienceZero: criterion = .patience(0)
                        case .classMismatch: probabilities = .f32; stateClasses = classes + 1
                        case .noClasses: stateClasses = 0
                        case .noHeads: heads = 0
                        case .intProbabilities: probabilities = .i32
                        default: break
                        }
                        var state = try backend.exitState(samples: n, classes: stateClasses, heads: heads, probabilities: probabilities)
                        var rows = n
                        var logitsIn = try backend.copyRows(x, 0..<n)
                        switch r {
                        case .tooManyRows: logitsIn = x; rows = n + 1
                        case .fewRows: logitsIn = try backend.copyRows(x, 0..<(n / 2)); rows = n / 2
                        case .intLogits: logitsIn = try backend.tensor([Int32](repeating: 0, count: n * classes), shape: [n, classes])
                        case .repeated, .inconsistent, .badMask:
                            let (index, value): (Int, Int32) = r == .repeated ? (1, 0) : (3, r == .badMask ? 2 : 0)
                            let target = r == .repeated ? state.positions : state.active
                            try withUnsafeBytes(of: value.littleEndian) { try backend.write($0, into: target, atElement: index) }
                        default: break
                        }
                        _ = rows
                        state = try backend.earlyExit(logitsIn, state: state, criterion: criterion, last: false)
                        if r == .pastHeads {
                            for _ in 0..<2 { state = try backend.earlyExit(logitsIn, state: state, criterion: criterion, last: false) }
                        }
                        _ = try backend.ints(state.predictions)
                        return outputs(state)
                    }
                })
        }
        return cases
    }
}
