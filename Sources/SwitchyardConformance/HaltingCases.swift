import Foundation
import Switchyard

/// Cases of `halting` (adaptive computation time): each case runs several steps on the device
/// in sequence, as a caller's loop does (the step's per-token p and h drawn by original
/// position, packed by `gatherTokens` through the state's positions), and compares the final
/// state with the reference's sequence.
enum HaltingCases {
    /// Halting-signal distributions (per token per step).
    enum Signal: String {
        /// p in [0, 0.6): tokens halt after 2–5 steps.
        case uniform
        /// p ≥ 0.995: every token halts at step 1.
        case all
        /// p = 0: no token halts before maxSteps.
        case none
        /// p = 0.25 exactly: with ε = 0.5 a token reaches 1 − ε exactly at step 2 (the ≥ tie).
        case quarter
        /// Values outside [0, 1] and ±inf (clamped) among uniform ones.
        case outside
        /// Logits (normal · 2), read with `.logit`.
        case logits
        /// A NaN among uniform values.
        case nan
    }

    static func signal(_ kind: Signal, count: Int, seed: UInt64) -> [Float] {
        var g = SeededGenerator(seed: seed)
        switch kind {
        case .uniform: return (0..<count).map { _ in Float(g.unit() * 0.6) }
        case .all: return (0..<count).map { _ in Float(0.995 + g.unit() * 0.005) }
        case .none: return [Float](repeating: 0, count: count)
        case .quarter: return [Float](repeating: 0.25, count: count)
        case .outside:
            let special: [Float] = [-0.5, 1.7, .infinity, -.infinity, -0, 1, 0]
            return (0..<count).map { _ in g.next() % 5 == 0 ? special[Int(g.next() % 7)] : Float(g.unit() * 0.5) }
        case .logits: return g.normals(count, scale: 2)
        case .nan:
            var v = (0..<count).map { _ in Float(g.unit() * 0.6) }
            if count > 0 { v[count / 2] = .nan }
            return v
        }
    }

    struct Shape: Sendable {
        var n: Int
        var d: Int
        var dtype: DType = .f32
        var pType: DType? = nil
        var acc: DType = .f32
        var signal: Signal = .uniform
        var epsilon: Float = 0.01
        var maxSteps: Int = 6
        /// Steps run (maxSteps when nil).
        var steps: Int? = nil
    }

    static let shapes: [Shape] = [
        Shape(n: 1, d: 16, maxSteps: 8),
        Shape(n: 0, d: 8),
        Shape(n: 5, d: 0),
        Shape(n: 1000, d: 33),
        Shape(n: 777, d: 64, dtype: .f16),
        Shape(n: 777, d: 64, dtype: .bf16, acc: .bf16),
        Shape(n: 300, d: 2100, maxSteps: 3),
        Shape(n: 500, d: 24, signal: .all),
        Shape(n: 500, d: 24, signal: .none, maxSteps: 4),
        Shape(n: 200, d: 20, signal: .quarter, epsilon: 0.5),
        Shape(n: 600, d: 17, signal: .outside),
        Shape(n: 900, d: 48, pType: .f16, signal: .logits),
        Shape(n: 1500, d: 40, maxSteps: 10, steps: 2),
        Shape(n: 400, d: 32, epsilon: 0, maxSteps: 5),
        Shape(n: 300, d: 16, maxSteps: 1),
        Shape(n: 350, d: 80, acc: .f16),
        Shape(n: 4099, d: 16, dtype: .bf16, pType: .f32),
    ]

    static func outputs(_ s: HaltingState, acc: DType) -> [CaseOutput] {
        [CaseOutput("accumulated", s.accumulated, .nmse(for: acc)),
         CaseOutput("cumulative", s.cumulative, .nmse(for: .f32)), CaseOutput("remainder", s.remainder, .nmse(for: .f32)),
         CaseOutput("ponder", s.ponder, .nmse(for: .f32)), CaseOutput("steps", s.steps, .exact),
         CaseOutput("running", s.running, .exact), CaseOutput("positions", s.positions, .exact),
         CaseOutput("count", s.count, .exact)]
    }

    /// Runs `steps` halting steps from a fresh state: step k's p and h by original position
    /// (seeded by k), packed through the state's positions by `gatherTokens`.
    static func run(
        _ backend: any ComputeBackend, n: Int, d: Int, steps: Int, p: [Tensor], h: [Tensor], acc: DType,
        config: HaltingConfig, rows: Int? = nil
    ) throws -> HaltingState {
        var state = try backend.haltingState(tokens: n, width: d, dtype: acc)
        for k in 0..<steps {
            let indices = try state.positions.reshaped([1, n])
            let hs = try backend.gatherTokens(h[k], indices: indices, rows: rows, dtype: nil)
            let ps = try backend.gatherTokens(p[k], indices: indices, rows: rows, dtype: nil)
            let r = rows ?? n
            state = try backend.halting(
                try ps.reshaped([r]), h: try hs.reshaped([r, d]), state: state, config: config)
        }
        return state
    }

    static func inputs(
        _ backend: any ComputeBackend, _ s: Shape, steps: Int, seed: UInt64
    ) throws -> (p: [Tensor], h: [Tensor]) {
        var p: [Tensor] = []
        var h: [Tensor] = []
        for k in 0..<steps {
            let stepSeed = seed &+ UInt64(k) &* 0x9E37
            p.append(try backend.tensor(signal(s.signal, count: s.n, seed: stepSeed), shape: [1, s.n, 1], dtype: s.pType ?? s.dtype))
            h.append(try backend.tensor(TokenInputs.values(s.n * s.d, seed: stepSeed, salt: 0xAC7), shape: [1, s.n, s.d], dtype: s.dtype))
        }
        return (p, h)
    }

    static var cases: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for s in shapes {
            let steps = s.steps ?? s.maxSteps
            let shape = "N=\(s.n) d=\(s.d)"
            var options = "\(s.signal) eps=\(s.epsilon) steps=\(steps)/\(s.maxSteps)"
            if let pt = s.pType { options += " p=\(pt)" }
            if s.acc != .f32 { options += " acc=\(s.acc)" }
            let seed = Conformance.seed("halting \(shape) \(s.dtype) \(options)")
            let config = HaltingConfig(epsilon: s.epsilon, maxSteps: s.maxSteps, input: s.signal == .logits ? .logit : .probability)
            let op = Halting(
                tokens: s.n, width: s.d, probabilityDType: s.pType ?? s.dtype, dtype: s.dtype, accumulatorDType: s.acc,
                config: config)
            cases.append(
                ConformanceCase(
                    op: "halting", shape: shape, dtype: s.dtype, options: options, seed: seed, rows: s.n,
                    flops: op.flops * Double(steps), bytes: op.bytes * Double(steps)
                ) { backend in
                    let (p, h) = try inputs(backend, s, steps: steps, seed: seed)
                    return {
                        outputs(try run(backend, n: s.n, d: s.d, steps: steps, p: p, h: h, acc: s.acc, config: config), acc: s.acc)
                    }
                })
        }
        // Refused: bad values (raised when an output is read), bad arguments, states the op did not make.
        enum Refusal: String, CaseIterable {
            case nanP = "NaN p", fewRows = "more running tokens than rows", pastMaxSteps = "step past maxSteps"
            case epsilonOne = "epsilon 1", epsilonNaN = "epsilon NaN", epsilonNegative = "epsilon -0.1"
            case maxStepsZero = "maxSteps 0", widthMismatch = "h width mismatch", tooManyRows = "p rows > N"
            case intP = "i32 p", negativeTokens = "haltingState tokens -1", repeated = "state position repeated"
            case inconsistent = "state running/positions disagree", badMask = "state running value 2"
        }
        let matches: [Refusal: String] = [
            .nanP: "halting p", .fewRows: "depth rows", .pastMaxSteps: "halting step", .epsilonOne: "epsilon",
            .epsilonNaN: "epsilon", .epsilonNegative: "epsilon", .maxStepsZero: "maxSteps", .widthMismatch: "halting h",
            .tooManyRows: "halting p", .intP: "halting p", .negativeTokens: "haltingState tokens",
            .repeated: "positions", .inconsistent: "depth state", .badMask: "depth state mask",
        ]
        for r in Refusal.allCases {
            let (n, d) = (40, 8)
            let seed = Conformance.seed("halting refused \(r.rawValue)")
            cases.append(
                ConformanceCase(
                    op: "halting", shape: "N=\(n) d=\(d)", dtype: .f32, options: r.rawValue, seed: seed, flops: 0, bytes: 0,
                    expectsError: true, errorMatch: matches[r]
                ) { backend in
                    let s = Shape(n: n, d: d, signal: r == .nanP ? .nan : .uniform, maxSteps: 3)
                    let (p, h) = try inputs(backend, s, steps: 4, seed: seed)
                    return {
                        var config = HaltingConfig(maxSteps: 3)
                        var steps = 1
                        switch r {
                        case .pastMaxSteps: steps = 4
                        case .epsilonOne: config.epsilon = 1
                        case .epsilonNaN: config.epsilon = .nan
                        case .epsilonNegative: config.epsilon = -0.1
                        case .maxStepsZero: config.maxSteps = 0
                        case .negativeTokens: _ = try backend.haltingState(tokens: -1, width: d, dtype: .f32)
                        default: break
                        }
                        var state = try backend.haltingState(tokens: n, width: d, dtype: .f32)
                        let pp = try p[0].reshaped([n])
                        let hh = try h[0].reshaped([n, d])
                        switch r {
                        case .widthMismatch:
                            state = try backend.halting(
                                pp, h: try backend.tensor([Float](repeating: 1, count: n * (d + 1)), shape: [n, d + 1], dtype: .f32),
                                state: state, config: config)
                        case .fewRows:
                            state = try backend.halting(
                                try backend.tensor([Float](repeating: 0.1, count: n / 2), shape: [n / 2], dtype: .f32),
                                h: try backend.tensor([Float](repeating: 1, count: n / 2 * d), shape: [n / 2, d], dtype: .f32),
                                state: state, config: config)
                        case .tooManyRows:
                            state = try backend.halting(
                                try backend.tensor([Float](repeating: 0.1, count: n + 1), shape: [n + 1], dtype: .f32), h: hh,
                                state: state, config: config)
                        case .intP:
                            state = try backend.halting(
                                try backend.tensor([Int32](repeating: 0, count: n), shape: [n]), h: hh, state: state, config: config)
                        case .repeated, .inconsistent, .badMask:
                            let (index, value): (Int, Int32) = r == .repeated ? (1, 0) : (3, r == .badMask ? 2 : 0)
                            let target = r == .repeated ? state.positions : state.running
                            try withUnsafeBytes(of: value.littleEndian) { try backend.write($0, into: target, atElement: index) }
                            state = try backend.halting(pp, h: hh, state: state, config: config)
                        default:
                            state = try run(backend, n: n, d: d, steps: steps, p: p, h: h, acc: .f32, config: config)
                        }
                        _ = try backend.floats(state.accumulated)
                        return outputs(state, acc: .f32)
                    }
                })
        }
        return cases
    }
}
