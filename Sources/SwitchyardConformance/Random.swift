/// A small seeded generator (SplitMix64): the same seed gives the same inputs on every machine.
///
/// Its drawing functions are compiled optimized even in debug builds (`@_optimize(speed)`): the
/// test suite runs in debug, and a case's tens of millions of normals would otherwise spend
/// seconds in unspecialized generic code. The values are the same either way.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed &+ 0x9E37_79B9_7F4A_7C15
    }

    @_optimize(speed)
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    @_optimize(speed)
    public mutating func unit() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }

    /// Standard normal (Box–Muller).
    @_optimize(speed)
    public mutating func normal() -> Float {
        let u1 = max(unit(), 1e-300)
        let u2 = unit()
        return Float((-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2))
    }

    /// `count` normal values times `scale`.
    @_optimize(speed)
    public mutating func normals(_ count: Int, scale: Float = 1) -> [Float] {
        let n = max(count, 0)
        return [Float](unsafeUninitializedCapacity: n) { buffer, initialized in
            for i in 0..<n { buffer[i] = normal() * scale }
            initialized = n
        }
    }
}

#if canImport(Glibc)
import Glibc
private func _log(_ x: Double) -> Double { Glibc.log(x) }
private func _cos(_ x: Double) -> Double { Glibc.cos(x) }
#elseif canImport(Darwin)
import Darwin
private func _log(_ x: Double) -> Double { Darwin.log(x) }
private func _cos(_ x: Double) -> Double { Darwin.cos(x) }
#endif
