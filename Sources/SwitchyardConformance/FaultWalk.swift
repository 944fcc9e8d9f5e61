import OpenCLHost
import Switchyard

/// The result of walking an injected OpenCL failure over every call of an MoE layer forward.
public struct FaultWalkReport: Sendable {
    /// OpenCL calls one forward and read make (each is a fault point).
    public var calls: Int
    /// Points whose failure surfaced as the injected `CLError` naming the call.
    public var surfaced: Int
    /// Failures that surfaced otherwise (another error, or none), with the call number.
    public var problems: [String]
    /// Forwards after a failure whose output differed from the fault-free one.
    public var wrongAfter: Int
    /// OpenCL objects the host layer still held after the backend and layer were dropped,
    /// beyond what it held before they were made.
    public var leaked: [String: Int]
    /// OpenCL objects the host layer held while the backend and layer were alive (so the leak
    /// count above is known to count something).
    public var heldWhileAlive: Int

    public var passed: Bool {
        problems.isEmpty && wrongAfter == 0 && leaked.isEmpty && surfaced == calls && heldWhileAlive > 0
    }
}

/// Fault injection over an MoE layer forward: every OpenCL call of one forward (and the read of
/// its output) made to fail in turn. Each failure must surface as a `CLError` naming the call,
/// the next forward must give the fault-free output bitwise, and once the backend is gone no
/// OpenCL object may be left. Uses the process-wide `FaultInjection` and `LiveObjects`, so run it
/// alone in its process (`switchyard fault-walk`).
public enum FaultWalk {
    public static func run(device: Device, config: MoEConfig = .mixtralTiny, tokens: Int = 16) throws -> FaultWalkReport {
        FaultInjection.arm(failingCall: nil)
        let before = LiveObjects.counts
        var report = FaultWalkReport(calls: 0, surfaced: 0, problems: [], wrongAfter: 0, leaked: [:], heldWhileAlive: 0)
        do {
            let backend = try OpenCLBackend(device: device, tuning: Tuning.defaults(for: device))
            let weights = try MoEWeights.random(config: config, backend: backend, dtype: .f32, seed: 7)
            let layer = try MoELayer(backend: backend, config: config, weights: weights)
            var g = SeededGenerator(seed: 11)
            let x = try backend.tensor(g.normals(tokens * config.hidden), shape: [tokens, config.hidden], dtype: .f32)
            let expected = try backend.bytes(layer.forward(x).y)
            FaultInjection.arm(failingCall: nil)
            _ = try backend.bytes(layer.forward(x).y)
            report.calls = FaultInjection.callsSinceArmed
            for n in 1...max(1, report.calls) {
                FaultInjection.arm(failingCall: n)
                do {
                    _ = try backend.bytes(layer.forward(x).y)
                    report.problems.append("call \(n): the forward succeeded although the call was to fail")
                } catch let error as CLError where error.call.hasSuffix("(injected fault)") {
                    report.surfaced += 1
                } catch {
                    report.problems.append("call \(n): surfaced as \(error)")
                }
                FaultInjection.arm(failingCall: nil)
                try backend.synchronize()
                if try backend.bytes(layer.forward(x).y) != expected { report.wrongAfter += 1 }
            }
            try backend.synchronize()
            report.heldWhileAlive = LiveObjects.total
        }
        FaultInjection.arm(failingCall: nil)
        let after = LiveObjects.counts
        for (kind, count) in after where count > before[kind, default: 0] {
            report.leaked[kind] = count - before[kind, default: 0]
        }
        return report
    }
}
