import COpenCL
import Foundation

/// Fault injection and live-object counts, for reliability tests of everything above the host
/// layer: `SWITCHYARD_CL_FAULT=N` (or `FaultInjection.arm(failingCall:)`) makes the Nth OpenCL
/// call from now fail, before it is made, with `CL_OUT_OF_RESOURCES` and a `CLError` naming the
/// call; `LiveObjects.counts` says how many OpenCL objects the host layer holds, so a test can
/// check that a failure in the middle of an op leaks none.
public enum FaultInjection {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var remaining: Int? = {
        ProcessInfo.processInfo.environment["SWITCHYARD_CL_FAULT"].flatMap { Int($0) }.flatMap { $0 >= 1 ? $0 : nil }
    }()
    nonisolated(unsafe) private static var counted = 0

    /// Makes the `n`th OpenCL call from now fail (1: the next one); nil disarms.
    public static func arm(failingCall n: Int?) {
        lock.lock()
        defer { lock.unlock() }
        remaining = n.flatMap { $0 >= 1 ? $0 : nil }
        counted = 0
    }

    /// OpenCL calls made through the host layer since the last `arm` (whether or not armed).
    public static var callsSinceArmed: Int {
        lock.lock()
        defer { lock.unlock() }
        return counted
    }

    /// Called before every OpenCL call that can fail: throws when this is the armed call.
    static func point(_ call: @autoclosure () -> String) throws(CLError) {
        lock.lock()
        counted += 1
        var fire = false
        if let n = remaining {
            if n <= 1 {
                remaining = nil
                fire = true
            } else {
                remaining = n - 1
            }
        }
        lock.unlock()
        if fire { throw CLError(code: CL_OUT_OF_RESOURCES, call: "\(call()) (injected fault)") }
    }
}

/// Counts of the OpenCL objects the host layer's wrappers hold, by kind.
public enum LiveObjects {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var live: [String: Int] = [:]

    /// Live objects by kind ("context", "queue", "buffer", "program", "kernel", "event").
    public static var counts: [String: Int] {
        lock.lock()
        defer { lock.unlock() }
        return live.filter { $0.value != 0 }
    }

    /// All live objects.
    public static var total: Int { counts.values.reduce(0, +) }

    static func created(_ kind: String) {
        lock.lock()
        live[kind, default: 0] += 1
        lock.unlock()
    }

    static func released(_ kind: String) {
        lock.lock()
        live[kind, default: 0] -= 1
        lock.unlock()
    }
}
