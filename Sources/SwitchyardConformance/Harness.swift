import Foundation
import OpenCLHost
@_spi(Testing) import Switchyard
import SwitchyardReference

/// How one output of a case is compared with the reference.
public enum Comparison: Sendable, Hashable, CustomStringConvertible {
    /// Integer outputs and copied values: every element bitwise equal.
    case exact
    /// Float outputs: normalized mean squared error at most this.
    case nmse(Double)

    public var description: String {
        switch self {
        case .exact: "exact"
        case .nmse(let t): "nmse≤\(t)"
        }
    }

    /// The default NMSE threshold for an op computed in f32 and stored as `dtype`: 10–100× the
    /// largest error measured over every case on PoCL and rusticl (f32 2.7e-13, f16 9.5e-10,
    /// bf16 8.0e-9), so that a store rounding toward zero (f16 ≈ 1e-7, bf16 truncation ≈ 8e-6) or
    /// an off-by-one fails.
    public static func nmse(for dtype: DType) -> Comparison {
        switch dtype {
        case .f32, .i32, .u8: .nmse(1e-11)
        case .f16: .nmse(1e-8)
        case .bf16: .nmse(1e-7)
        }
    }

    /// Beside the mean: no element may differ from the reference by more than this fraction of
    /// the reference's largest magnitude (a few units in the last place of the storage type), so
    /// one wrong element in a large tensor fails even where the mean hides it.
    public static func elementBound(for dtype: DType) -> Double {
        switch dtype {
        case .f32, .i32, .u8: 1e-5
        case .f16: 4e-3
        case .bf16: 3e-2
        }
    }
}

/// A named output of a case run and how it is compared.
public struct CaseOutput {
    public let name: String
    public let tensor: Tensor
    public let comparison: Comparison

    public init(_ name: String, _ tensor: Tensor, _ comparison: Comparison) {
        self.name = name
        self.tensor = tensor
        self.comparison = comparison
    }
}

/// One conformance case: an op on one shape, dtype and option set, with a seeded input
/// generator. The same description serves the tests, `switchyard conformance` and the
/// benchmarks (which time `prepare`'s returned closure).
public struct ConformanceCase: Sendable, CustomStringConvertible {
    public let op: String
    public let shape: String
    public let dtype: DType
    public let options: String
    public let seed: UInt64
    /// Floating-point operations and bytes moved by one run (for benchmarks).
    public let flops: Double
    public let bytes: Double
    /// Whether the op must refuse this input with a `SwitchyardError` on every backend.
    public let expectsError: Bool
    /// Text the refusal must contain on every backend (the argument it names, say), so a case
    /// refused for another reason than the one it tests fails.
    public let errorMatch: String?
    /// Tokens (or rows) of the case, when the op has such a count: a case with none checks edge
    /// handling and has nothing to time.
    public let rows: Int?
    /// Uploads the seeded inputs to a backend and returns the op's launch.
    public let prepare: @Sendable (any ComputeBackend) throws -> () throws -> [CaseOutput]

    public init(
        op: String, shape: String, dtype: DType, options: String = "", seed: UInt64, rows: Int? = nil, flops: Double,
        bytes: Double, expectsError: Bool = false, errorMatch: String? = nil, prepare: @escaping @Sendable (any ComputeBackend) throws -> () throws -> [CaseOutput]
    ) {
        self.op = op
        self.shape = shape
        self.dtype = dtype
        self.options = options
        self.seed = seed
        self.flops = flops
        self.bytes = bytes
        self.expectsError = expectsError
        self.errorMatch = errorMatch
        self.rows = rows
        self.prepare = prepare
    }

    /// Whether the case has zero tokens or rows.
    public var isEmpty: Bool { rows == 0 }

    public var name: String { [op, shape, dtype.rawValue, options].filter { !$0.isEmpty }.joined(separator: " ") }
    public var description: String { name }
}

/// The result of one case on one device.
public struct CaseResult: Sendable {
    public let name: String
    public let op: String
    public let shape: String
    public let dtype: DType
    public let passed: Bool
    /// The largest NMSE over the float outputs (0 when every output matched exactly).
    public let error: Double
    /// Why it failed, or a note.
    public let detail: String
    public let seconds: Double
}

/// Runs conformance cases on an OpenCL device against the reference backend.
public final class ConformanceRunner: @unchecked Sendable {
    public let device: OpenCLBackend
    public let reference = ReferenceBackend()
    /// Cases on one device run one at a time. Several threads enqueueing on one rusticl context
    /// corrupted other cases' buffers (about one case in a thousand: stray flags, wrong outputs;
    /// PoCL never did), so a result must not depend on what else runs.
    private let serial = NSLock()

    /// A runner on `device`; its backend poisons outputs and guards them with sentinel tails.
    /// Without `tuning` it runs the device's defaults (never the user's stored entry, so results
    /// do not depend on what `switchyard tune` stored; the CLI passes the stored entry explicitly).
    public init(device: Device, tuning: Tuning? = nil) throws {
        self.device = try OpenCLBackend(
            device: device, tuning: tuning ?? Tuning.defaults(for: device), sentinelBytes: 256)
    }

    /// Runs one case: reference, then the device twice (the second run must be bitwise equal to
    /// the first), comparing every output and checking every sentinel.
    public func run(_ c: ConformanceCase) -> CaseResult {
        serial.lock()
        defer { serial.unlock() }
        let start = Date()
        func result(_ passed: Bool, _ error: Double, _ detail: String) -> CaseResult {
            CaseResult(
                name: c.name, op: c.op, shape: c.shape, dtype: c.dtype, passed: passed, error: error, detail: detail,
                seconds: Date().timeIntervalSince(start))
        }
        if c.expectsError {
            var messages: [String] = []
            for backend in [reference as any ComputeBackend, device] {
                do {
                    _ = try c.prepare(backend)()
                    try backend.synchronize()
                    return result(false, .nan, "\(backend.name) accepted an input it must refuse")
                } catch let error as SwitchyardError {
                    if let match = c.errorMatch, !"\(error)".contains(match) {
                        return result(false, .nan, "\(backend.name) refused for another reason: \(error) (expected '\(match)')")
                    }
                    messages.append("\(error)")
                } catch {
                    return result(false, .nan, "\(backend.name) threw a non-Switchyard error: \(error)")
                }
            }
            return result(true, 0, "refused: \(messages.last ?? "")")
        }
        do {
            let expected = try c.prepare(reference)()
            let launch = try c.prepare(device)
            let first = try launch()
            try device.synchronize()
            var worst = 0.0
            guard expected.count == first.count else {
                return result(false, .nan, "the device gave \(first.count) outputs, the reference \(expected.count)")
            }
            for (e, a) in zip(expected, first) {
                guard e.tensor.shape == a.tensor.shape, e.tensor.dtype == a.tensor.dtype else {
                    return result(false, .nan, "\(a.name): device gave \(a.tensor), reference \(e.tensor)")
                }
                if let violation = try device.sentinelViolation(a.tensor) {
                    return result(false, .nan, "\(a.name): \(violation)")
                }
                switch (e.tensor.dtype, a.comparison) {
                case (.i32, _):
                    let want = try reference.ints(e.tensor)
                    let got = try device.ints(a.tensor)
                    if let i = firstDifference(want, got) {
                        return result(false, .nan, "\(a.name)[\(i)] = \(got[i]), reference \(want[i])")
                    }
                case (.u8, _):
                    let want = try reference.codes(e.tensor)
                    let got = try device.codes(a.tensor)
                    if let i = firstDifference(want, got) {
                        return result(false, .nan, "\(a.name)[\(i)] = \(got[i]), reference \(want[i])")
                    }
                case (_, .exact):
                    let want = try reference.floats(e.tensor)
                    let got = try device.floats(a.tensor)
                    if let i = firstBitwiseDifference(want, got) {
                        return result(false, .nan, "\(a.name)[\(i)] = \(got[i]), reference \(want[i])")
                    }
                case (_, .nmse(let threshold)):
                    let want = try reference.floats(e.tensor)
                    let got = try device.floats(a.tensor)
                    let error = ErrorMeasure.nmse(got, want)
                    worst = max(worst, error.isNaN ? .infinity : error)
                    if !(error <= threshold) {
                        let unwritten = got.firstIndex { $0.isNaN } ?? -1
                        let hint = unwritten >= 0 && !want[unwritten].isNaN ? " (element \(unwritten) unwritten)" : ""
                        return result(false, error, "\(a.name): nmse \(error) over \(threshold)\(hint)")
                    }
                    // Any non-finite value where the reference is finite fails, and so does any
                    // element far from the reference relative to the tensor's scale.
                    let scale = largestFiniteMagnitude(want)
                    // (16-bit inputs bound an f32 output's elements as loosely as 16-bit storage.)
                    let bound = max(Comparison.elementBound(for: a.tensor.dtype), Comparison.elementBound(for: c.dtype))
                        * max(scale, 1e-30)
                    if let i = firstBeyond(bound, got, want) {
                        return result(
                            false, error,
                            "\(a.name)[\(i)] = \(got[i]), reference \(want[i]) (element bound \(bound) at scale \(scale))")
                    }
                }
            }
            // Same input, same device: bitwise the same output.
            let second = try launch()
            guard second.count == first.count else {
                return result(false, worst, "a second run gave \(second.count) outputs, the first \(first.count)")
            }
            for (a, b) in zip(first, second) {
                if let violation = try device.sentinelViolation(b.tensor) {
                    return result(false, worst, "\(b.name) (second run): \(violation)")
                }
                if try device.bytes(a.tensor) != device.bytes(b.tensor) {
                    return result(false, worst, "\(a.name): a second run on the same input differs bitwise")
                }
            }
            return result(true, worst, "")
        } catch {
            return result(false, .nan, "threw \(error)")
        }
    }
}

// The comparisons, as plain loops over buffers compiled optimized even in debug builds
// (`@_optimize(speed)`): `swift test` runs the whole registry in debug, where closures over
// indices of arrays of millions of elements cost seconds a case.

/// The first index where the two differ (the arrays have the same count).
@_optimize(speed)
func firstDifference(_ want: [Int32], _ got: [Int32]) -> Int? {
    want.withUnsafeBufferPointer { w in
        got.withUnsafeBufferPointer { g in
            for i in 0..<min(w.count, g.count) where w[i] != g[i] { return i }
            return nil
        }
    }
}

@_optimize(speed)
func firstDifference(_ want: [UInt8], _ got: [UInt8]) -> Int? {
    want.withUnsafeBufferPointer { w in
        got.withUnsafeBufferPointer { g in
            for i in 0..<min(w.count, g.count) where w[i] != g[i] { return i }
            return nil
        }
    }
}

/// The first index where the two differ bitwise, except that any NaN matches any NaN (payloads
/// differ across converters).
@_optimize(speed)
func firstBitwiseDifference(_ want: [Float], _ got: [Float]) -> Int? {
    want.withUnsafeBufferPointer { w in
        got.withUnsafeBufferPointer { g in
            for i in 0..<min(w.count, g.count) where w[i].bitPattern != g[i].bitPattern && !(w[i].isNaN && g[i].isNaN) {
                return i
            }
            return nil
        }
    }
}

/// The largest |value| over the finite elements (0 when none is).
@_optimize(speed)
func largestFiniteMagnitude(_ values: [Float]) -> Double {
    values.withUnsafeBufferPointer { v in
        var m: Float = 0
        for x in v where x.isFinite { m = max(m, abs(x)) }
        return Double(m)
    }
}

/// The first index where the reference is finite and the device's value is not finite or
/// further than `bound` from it.
@_optimize(speed)
func firstBeyond(_ bound: Double, _ got: [Float], _ want: [Float]) -> Int? {
    want.withUnsafeBufferPointer { w in
        got.withUnsafeBufferPointer { g in
            for i in 0..<min(w.count, g.count) where w[i].isFinite {
                if !g[i].isFinite || abs(Double(g[i]) - Double(w[i])) > bound { return i }
            }
            return nil
        }
    }
}
