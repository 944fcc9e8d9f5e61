import Foundation
import Switchyard
import SwitchyardConformance
import SwitchyardReference

/// The batch an example stack runs on: `batch` sequences of `length` tokens, in `dtype` storage,
/// weights and input drawn from `seed`.
public struct ExampleShape: Sendable, Hashable, CustomStringConvertible {
    /// Sequences B.
    public var batch: Int
    /// Tokens per sequence L.
    public var length: Int
    /// Storage type of the activations and weights (f32, f16 or bf16).
    public var dtype: DType
    /// The seed of the weights and the input (the same on every backend).
    public var seed: UInt64

    public init(batch: Int, length: Int, dtype: DType = .f32, seed: UInt64 = 20_261_124) {
        self.batch = batch
        self.length = length
        self.dtype = dtype
        self.seed = seed
    }

    /// Checks the sizes (each at least 1, a floating-point dtype), that `[B, L, width]` is a valid
    /// tensor, and that the widest intermediate, `perToken` f32 values per token, fits one tensor of
    /// `backend` (the device's largest allocation); the error names the argument.
    public func validate(width: Int, perToken: Int, backend: any ComputeBackend) throws {
        try validate(width: width)
        let count = try Tensor.checkedCount([batch, length, max(width, perToken)], dtype: .f32, "example intermediate")
        guard count * 4 <= backend.maxTensorBytes else {
            throw SwitchyardError.shape(
                argument: "example batch × tokens",
                expected: "B·L·\(max(width, perToken)) f32 within the backend's largest tensor (\(backend.maxTensorBytes) bytes)",
                actual: [batch, length])
        }
    }

    /// Checks the sizes (each at least 1, a floating-point dtype) and that `[B, L, width]` of
    /// `dtype` is a valid tensor; the error names the argument.
    public func validate(width: Int) throws {
        guard batch >= 1 else { throw SwitchyardError.outOfRange(argument: "example batch", value: batch, range: "1...") }
        guard length >= 1 else {
            throw SwitchyardError.outOfRange(argument: "example tokens per sequence", value: length, range: "1...")
        }
        guard dtype.isFloatingPoint else {
            throw SwitchyardError.dtype(argument: "example dtype", expected: "f32, f16 or bf16", actual: dtype)
        }
        _ = try Tensor.checkedCount([batch, length, width], dtype: .f32, "example input x")
    }

    public var description: String { "B \(batch) × L \(length), \(dtype)" }
}

/// What a dynamic forward of a conditional stack left on the backend: its output and, per block,
/// the backend's own record of which rows the block computed (read only when accounted).
public struct ConditionalForward: Sendable {
    /// The stack's output `[B, L, d]`.
    public let y: Tensor
    /// Per block, what the backend recorded about the rows the block's heavy part ran on (for
    /// mixture-of-depths the chosen positions `[B, C]` i32, −1 an empty slot; for Soft MoE the
    /// slot routing's kept rows per expert `[E]` i32). Each stack's `account` says how it reads them.
    public let records: [Tensor]
    /// Per-sample results besides the output, compared exactly with the reference's by the check
    /// (early exit: each sample's prediction and the exit it left at), by name.
    public let outcomes: [(name: String, tensor: Tensor)]

    public init(y: Tensor, records: [Tensor], outcomes: [(name: String, tensor: Tensor)] = []) {
        self.y = y
        self.records = records
        self.outcomes = outcomes
    }
}

/// FLOPs of one forward of a stack, dynamic against dense, from the rows actually computed.
public struct ComputeAccount: Sendable, Equatable {
    /// Rows each block's heavy part ran on in the dynamic forward (read back from the backend).
    public var computedRows: [Int]
    /// Rows each block's heavy part runs on in the dense forward.
    public var denseRows: [Int]
    /// FLOPs of one row through each block's heavy part (its matmuls).
    public var flopsPerRow: [Double]
    /// FLOPs the dynamic forward spends besides the blocks' heavy parts (routers, Soft MoE's
    /// dispatch and combine: their matmuls).
    public var dynamicOverheadFLOPs: Double
    /// FLOPs the dense forward spends besides the blocks' heavy parts (a dense mixture's router).
    public var denseOverheadFLOPs: Double

    public init(
        computedRows: [Int], denseRows: [Int], flopsPerRow: [Double], dynamicOverheadFLOPs: Double,
        denseOverheadFLOPs: Double
    ) {
        self.computedRows = computedRows
        self.denseRows = denseRows
        self.flopsPerRow = flopsPerRow
        self.dynamicOverheadFLOPs = dynamicOverheadFLOPs
        self.denseOverheadFLOPs = denseOverheadFLOPs
    }

    /// Block FLOPs of the dynamic forward (the rows computed).
    public var computedBlockFLOPs: Double { zip(computedRows, flopsPerRow).reduce(0) { $0 + Double($1.0) * $1.1 } }
    /// Block FLOPs of the dense forward.
    public var denseBlockFLOPs: Double { zip(denseRows, flopsPerRow).reduce(0) { $0 + Double($1.0) * $1.1 } }
    /// The fraction of the dense forward's block FLOPs the dynamic forward computed.
    public var blockFraction: Double { denseBlockFLOPs > 0 ? computedBlockFLOPs / denseBlockFLOPs : 0 }
    /// Every FLOP of the dynamic forward (blocks and overhead).
    public var dynamicFLOPs: Double { computedBlockFLOPs + dynamicOverheadFLOPs }
    /// Every FLOP of the dense forward.
    public var denseFLOPs: Double { denseBlockFLOPs + denseOverheadFLOPs }
    /// The speedup the FLOP ratio promises: dense FLOPs over dynamic FLOPs, overhead included.
    public var flopRatioSpeedup: Double { dynamicFLOPs > 0 ? denseFLOPs / dynamicFLOPs : .infinity }
}

/// A stack of blocks with conditional computation: a dynamic forward that runs each block's heavy
/// part on some rows only, and the same stack run densely (every token through every block) to
/// time it against. Built on one backend from an `ExampleShape` (seeded weights and input), so the
/// same stack built on the `ReferenceBackend` checks the device's.
///
/// A new example is one more conforming type and one `ConditionalExample.named` entry. Early exit,
/// for instance: blocks with exit heads, where a token whose head is confident leaves the stack —
/// `forwardDynamic` compacts the still-active positions per block (the `earlyExit` op, or `compact`
/// on the confidence mask, then `gatherTokens` / `expandTokens`) and records each block's active
/// counts `[B]` (i32, on the device); `account` sums them as the rows each block computed against
/// B·L dense rows (the exit heads' matmuls as overhead); `forwardDense` runs every token through
/// every block and head. The report, the timing, the reference check and the command line need
/// nothing more.
public protocol ConditionalStack: AnyObject {
    /// The backend its weights live on.
    var backend: any ComputeBackend { get }
    /// The batch it was built for.
    var shape: ExampleShape { get }
    /// Model width d: the input and output are `[B, L, d]`.
    var width: Int { get }
    /// One line: the blocks and what is conditional about them.
    var summary: String { get }
    /// One line: what the dense forward computes (the baseline it is timed against).
    var denseDefinition: String { get }
    /// The seeded input `[B, L, d]` on the stack's backend (the same values on every backend).
    func input() throws -> Tensor
    /// Enqueues the dense forward (no host read) and returns its output `[B, L, d]`.
    func forwardDense(_ x: Tensor) throws -> Tensor
    /// Enqueues the dynamic forward (no host read) and returns its output and records; with a
    /// `clock`, each stage's launches are timed under the stage's name.
    func forwardDynamic(_ x: Tensor, clock: StageClock?) throws -> ConditionalForward
    /// Reads the records of a dynamic forward back and accounts its FLOPs against the dense one's.
    func account(_ forward: ConditionalForward) throws -> ComputeAccount
}

extension ConditionalStack {
    /// The dynamic forward, untimed.
    public func forwardDynamic(_ x: Tensor) throws -> ConditionalForward { try forwardDynamic(x, clock: nil) }
}

/// Device time of a forward's stages by name: `clock("gather") { ... }` times the launches the
/// body makes (`ComputeBackend.timed`); `stages()` waits and sums them per name, in first-use order.
public final class StageClock {
    let backend: any ComputeBackend
    private var recorded: [(String, () throws -> Double?)] = []

    public init(backend: any ComputeBackend) {
        self.backend = backend
    }

    public func callAsFunction<T>(_ stage: String, _ body: () throws -> T) throws -> T {
        let (value, seconds) = try backend.timed(body)
        recorded.append((stage, seconds))
        return value
    }

    /// Each stage's device time summed over its uses (stages without a device clock left out).
    public func stages() throws -> [StageTime] {
        var order: [String] = []
        var sums: [String: Double] = [:]
        for (name, seconds) in recorded {
            guard let s = try seconds() else { continue }
            if sums[name] == nil { order.append(name) }
            sums[name, default: 0] += s
        }
        return order.map { StageTime(stage: $0, seconds: sums[$0]!) }
    }
}

/// Runs `body` under `clock` when there is one.
func staged<T>(_ clock: StageClock?, _ stage: String, _ body: () throws -> T) throws -> T {
    guard let clock else { return try body() }
    return try clock(stage, body)
}

/// A named example: how to build its stack on any backend, and its default batch.
public struct ConditionalExample: Sendable {
    /// The name `switchyard run --config` takes.
    public let name: String
    /// Sequences and tokens per sequence when not given.
    public let defaultBatch: Int
    public let defaultLength: Int
    /// Builds the stack on a backend for a shape (validated).
    public let make: @Sendable (any ComputeBackend, ExampleShape) throws -> any ConditionalStack

    public init(
        name: String, defaultBatch: Int, defaultLength: Int,
        make: @escaping @Sendable (any ComputeBackend, ExampleShape) throws -> any ConditionalStack
    ) {
        self.name = name
        self.defaultBatch = defaultBatch
        self.defaultLength = defaultLength
        self.make = make
    }

    /// The built-in examples by name (`mod-tiny`, `soft-moe-tiny`, `early-exit-tiny`).
    public static let named: [String: ConditionalExample] = [
        "mod-tiny": ConditionalExample(name: "mod-tiny", defaultBatch: 4, defaultLength: 1024) {
            try MixtureOfDepthsStack(backend: $0, config: .tiny, shape: $1)
        },
        "soft-moe-tiny": ConditionalExample(name: "soft-moe-tiny", defaultBatch: 4, defaultLength: 256) {
            try SoftMoEStack(backend: $0, config: .tiny, shape: $1)
        },
        "early-exit-tiny": ConditionalExample(name: "early-exit-tiny", defaultBatch: 4, defaultLength: 1024) {
            try EarlyExitStack(backend: $0, config: .tiny, shape: $1)
        },
    ]
}

/// The agreement of a device's dynamic forward with the reference's on the same weights and input.
public struct ExampleCheck: Sendable {
    /// Normalized mean squared error of the output against the reference's.
    public var error: Double
    /// The largest error that passes, from the dtype.
    public var tolerance: Double
    /// Output values that are not finite.
    public var nonFinite: Int
    /// Blocks whose record (chosen positions, slot counts) differs from the reference's.
    public var recordsDiffering: Int
    /// Blocks compared.
    public var blocks: Int
    /// The per-sample outcomes compared (`ConditionalForward.outcomes`, by name) and those that
    /// differ from the reference's anywhere.
    public var outcomes: [String] = []
    public var outcomesDiffering: [String] = []

    /// The error within the tolerance, every value finite, every block's record and every
    /// outcome the reference's.
    public var passed: Bool { error <= tolerance && nonFinite == 0 && recordsDiffering == 0 && outcomesDiffering.isEmpty }

    /// The end-to-end tolerance of a stack stored in `dtype`: 1e-9 in f32, 1e-5 in 16-bit storage,
    /// where every block rounds its output (measured at the default sizes on PoCL: f32 8.3e-14,
    /// bf16 3.4e-8, f16 4.7e-9; the same positions chosen in every block, which is checked apart).
    public static func tolerance(for dtype: DType) -> Double { dtype == .f32 ? 1e-9 : 1e-5 }
}

/// One run of an example: its FLOP account, the dense and dynamic device times, and the check.
public struct ExampleReport: Sendable {
    public var name: String
    public var summary: String
    public var denseDefinition: String
    public var shape: ExampleShape
    public var account: ComputeAccount
    /// Device time (kernel events) of each timed forward, seconds.
    public var denseSeconds: [Double]
    public var dynamicSeconds: [Double]
    /// Wall time of each timed forward, enqueue to completion, seconds.
    public var denseWallSeconds: [Double]
    public var dynamicWallSeconds: [Double]
    /// Device time of each stage of one dynamic forward (after the timed ones), summed over blocks.
    public var dynamicStages: [StageTime]
    /// The reference check, when asked for.
    public var check: ExampleCheck?

    /// Whether the device's kernel events gave plausible times: some, and medians that
    /// `ProfilingEvents.plausible` accepts against the enqueue-to-completion wall time (rusticl
    /// 22.3 over llvmpipe reports kernels of seconds as taking microseconds). Otherwise the
    /// medians are wall times.
    public var hasDeviceTimes: Bool {
        guard !denseSeconds.isEmpty, !dynamicSeconds.isEmpty else { return false }
        return ProfilingEvents.plausible(eventSeconds: median(denseSeconds), wallSeconds: median(denseWallSeconds))
            && ProfilingEvents.plausible(eventSeconds: median(dynamicSeconds), wallSeconds: median(dynamicWallSeconds))
    }
    /// Median time of the dense forward: device time, or wall time where the events give none.
    public var denseMedian: Double { median(hasDeviceTimes ? denseSeconds : denseWallSeconds) }
    /// Median time of the dynamic forward: device time, or wall time where the events give none.
    public var dynamicMedian: Double { median(hasDeviceTimes ? dynamicSeconds : dynamicWallSeconds) }
    /// Dense time over dynamic time.
    public var speedup: Double { dynamicMedian > 0 ? denseMedian / dynamicMedian : .nan }
    /// The measured speedup as a fraction of the FLOP ratio's (issue 16's target: at least 0.8).
    public var speedupEfficiency: Double { speedup / account.flopRatioSpeedup }

    /// The report as printed by `switchyard run --config NAME`.
    public var lines: [String] {
        let a = account
        var out: [String] = []
        out.append("example \(name): \(summary); \(shape)")
        out.append("dense   \(denseDefinition)")
        out.append(
            String(
                format: "compute fraction %.4f of the block FLOPs (%d of %d block rows computed; per block %@)",
                a.blockFraction, a.computedRows.reduce(0, +), a.denseRows.reduce(0, +),
                a.computedRows.map(String.init).joined(separator: " ")))
        out.append(
            String(
                format: "flops   dynamic %.4f GFLOP (blocks %.4f + routing and mixing %.4f), dense %.4f GFLOP: FLOP-ratio speedup %.2fx",
                a.dynamicFLOPs / 1e9, a.computedBlockFLOPs / 1e9, a.dynamicOverheadFLOPs / 1e9, a.denseFLOPs / 1e9,
                a.flopRatioSpeedup))
        if denseWallSeconds.isEmpty {
            out.append("time    not timed (0 iterations)")
        } else {
            if hasDeviceTimes {
                out.append(
                    String(
                        format: "time    dynamic %.3f ms, dense %.3f ms (device time from kernel events, median of %d after a "
                            + "warm-up; wall %.3f and %.3f ms)",
                        dynamicMedian * 1e3, denseMedian * 1e3, denseSeconds.count, median(dynamicWallSeconds) * 1e3,
                        median(denseWallSeconds) * 1e3))
                let total = dynamicStages.reduce(0) { $0 + $1.seconds }
                out.append(
                    "stages  of one more dynamic forward: "
                        + dynamicStages.map {
                            String(format: "%@ %.3f ms (%.0f %%)", $0.stage, $0.seconds * 1e3, total > 0 ? 100 * $0.seconds / total : 0)
                        }.joined(separator: ", "))
            } else {
                out.append(
                    String(
                        format: "time    dynamic %.3f ms, dense %.3f ms (wall time, enqueue to completion, median of %d after a "
                            + "warm-up: this driver's kernel events report no usable time)",
                        dynamicMedian * 1e3, denseMedian * 1e3, denseWallSeconds.count))
            }
            let verdict = speedupEfficiency >= 0.8 ? "met" : "not met"
            out.append(
                String(
                    format: "speedup %.2fx measured vs %.2fx from the FLOP ratio: %.2f of it (target 0.8: %@)",
                    speedup, a.flopRatioSpeedup, speedupEfficiency, verdict))
        }
        if let check {
            var records = check.recordsDiffering == 0
                ? "records identical in all \(check.blocks) blocks"
                : "records differ in \(check.recordsDiffering) of \(check.blocks) blocks"
            if !check.outcomes.isEmpty {
                let same = check.outcomes.filter { !check.outcomesDiffering.contains($0) }
                if !same.isEmpty { records += ", \(same.joined(separator: " and ")) identical" }
                if !check.outcomesDiffering.isEmpty { records += ", \(check.outcomesDiffering.joined(separator: " and ")) DIFFER" }
            }
            out.append(
                String(
                    format: "check   normalized error vs the CPU reference %.3e (tolerance %.0e), %@%@: %@", check.error,
                    check.tolerance, records, check.nonFinite > 0 ? ", \(check.nonFinite) values not finite" : "",
                    check.passed ? "pass" : "FAIL"))
        }
        return out
    }

    /// Builds `example` on `backend` for `shape`, accounts one dynamic forward's FLOPs from the rows
    /// it computed (read back from the backend), times `iterations` dense and dynamic forwards after
    /// a warm-up of each (device time from kernel events; none on a backend without a clock), and
    /// with `check` runs the same stack on the `ReferenceBackend` and compares.
    public static func run(
        _ example: ConditionalExample, backend: any ComputeBackend, shape: ExampleShape, iterations: Int, check: Bool
    ) throws -> ExampleReport {
        guard iterations >= 0 else {
            throw SwitchyardError.outOfRange(argument: "example iterations", value: iterations, range: "0...")
        }
        let stack = try example.make(backend, shape)
        let x = try stack.input()
        // Warm-up (program builds), then the account from the first dynamic forward's records.
        _ = try backend.floats(try stack.forwardDense(x))
        let forward = try stack.forwardDynamic(x)
        let got = try backend.floats(forward.y)
        let account = try stack.account(forward)
        var (dense, dynamic, denseWall, dynamicWall) = ([Double](), [Double](), [Double](), [Double]())
        /// Device seconds (nil without a device clock) and wall seconds of one forward.
        func time(_ body: () throws -> Void) throws -> (Double?, Double) {
            try backend.synchronize()
            let start = Date()
            let (_, seconds) = try backend.timed(body)
            try backend.synchronize()
            let wall = Date().timeIntervalSince(start)
            return (try seconds(), wall)
        }
        for _ in 0..<iterations {
            let (d, dw) = try time { _ = try stack.forwardDense(x) }
            let (s, sw) = try time { _ = try stack.forwardDynamic(x) }
            if let d, let s {
                dense.append(d)
                dynamic.append(s)
            }
            denseWall.append(dw)
            dynamicWall.append(sw)
        }
        var result = ExampleReport(
            name: example.name, summary: stack.summary, denseDefinition: stack.denseDefinition, shape: shape,
            account: account, denseSeconds: dense, dynamicSeconds: dynamic, denseWallSeconds: denseWall,
            dynamicWallSeconds: dynamicWall, dynamicStages: [], check: nil)
        if result.hasDeviceTimes {
            // One more dynamic forward, each stage timed apart (where its time goes).
            let clock = StageClock(backend: backend)
            _ = try stack.forwardDynamic(x, clock: clock)
            result.dynamicStages = try clock.stages()
        }
        if check {
            let reference = ReferenceBackend()
            let rstack = try example.make(reference, shape)
            let rforward = try rstack.forwardDynamic(try rstack.input())
            let want = try reference.floats(rforward.y)
            var differing = 0
            for (a, b) in zip(forward.records, rforward.records) {
                if try backend.ints(a) != reference.ints(b) { differing += 1 }
            }
            differing += abs(forward.records.count - rforward.records.count)
            var outcomesDiffering: [String] = []
            for (a, b) in zip(forward.outcomes, rforward.outcomes) {
                if try a.name != b.name || backend.ints(a.tensor) != reference.ints(b.tensor) { outcomesDiffering.append(a.name) }
            }
            result.check = ExampleCheck(
                error: ErrorMeasure.nmse(got, want), tolerance: ExampleCheck.tolerance(for: shape.dtype),
                nonFinite: got.filter { !$0.isFinite }.count, recordsDiffering: differing,
                blocks: max(forward.records.count, rforward.records.count), outcomes: forward.outcomes.map(\.name),
                outcomesDiffering: outcomesDiffering)
        }
        return result
    }
}

/// The median of `values` (0 when empty).
func median(_ values: [Double]) -> Double {
    let s = values.sorted()
    guard !s.isEmpty else { return 0 }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Seeded weights N(0, 1/fan_in) of `shape` in `dtype` on `backend`.
func seededWeights(
    _ g: inout SeededGenerator, _ backend: any ComputeBackend, _ shape: [Int], fanIn: Int, dtype: DType
) throws -> Tensor {
    let n = try Tensor.checkedCount(shape, dtype: dtype, "example weights")
    return try backend.tensor(g.normals(n, scale: 1 / Float(max(fanIn, 1)).squareRoot()), shape: shape, dtype: dtype)
}

/// `[B, L]` i32 positions 0..<L in every sequence: scattering with them is a residual add.
func identityPositions(_ backend: any ComputeBackend, batch: Int, length: Int) throws -> Tensor {
    try backend.tensor((0..<batch * length).map { Int32($0 % length) }, shape: [batch, length])
}
