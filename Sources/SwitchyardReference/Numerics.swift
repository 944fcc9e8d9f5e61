/// Bit-level conversions for the 16-bit storage types. These define how Switchyard rounds:
/// round to nearest, ties to even, NaN kept NaN, overflow to infinity (as `vstore_half_rte` does).
public enum FloatBits {
    /// IEEE binary16 bits of `value`, rounded to nearest even.
    @_optimize(speed)
    public static func f16(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        let sign = UInt16((bits >> 16) & 0x8000)
        let exponent = Int((bits >> 23) & 0xFF)
        var mantissa = bits & 0x7F_FFFF
        if exponent == 0xFF {  // inf or NaN
            return sign | 0x7C00 | (mantissa != 0 ? 0x200 | UInt16(mantissa >> 13) : 0)
        }
        let e = exponent - 127 + 15
        if e >= 0x1F { return sign | 0x7C00 }
        if e <= 0 {
            if e < -10 { return sign }
            mantissa |= 0x80_0000
            let shift = UInt32(14 - e)
            let half = UInt32(1) << (shift - 1)
            let rest = mantissa & ((UInt32(1) << shift) - 1)
            var result = mantissa >> shift
            if rest > half || (rest == half && (result & 1) == 1) { result += 1 }
            return sign | UInt16(result)
        }
        var result = UInt32(e) << 10 | (mantissa >> 13)
        let rest = mantissa & 0x1FFF
        if rest > 0x1000 || (rest == 0x1000 && (result & 1) == 1) { result += 1 }
        return sign | UInt16(result)  // a carry into the exponent rounds up correctly, to inf at most
    }

    /// The Float value of IEEE binary16 bits.
    @_optimize(speed)
    public static func fromF16(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exponent = UInt32((h >> 10) & 0x1F)
        let mantissa = UInt32(h & 0x3FF)
        if exponent == 0 {
            let magnitude = Float(mantissa) * Float(sign: .plus, exponent: -24, significand: 1)
            return sign != 0 ? -magnitude : magnitude
        }
        if exponent == 0x1F {
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
        }
        return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
    }

    /// bfloat16 bits of `value`, rounded to nearest even; NaN stays a quiet NaN.
    @_optimize(speed)
    public static func bf16(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        if value.isNaN { return UInt16(bits >> 16) | 0x40 }
        let rounded = bits &+ 0x7FFF &+ ((bits >> 16) & 1)
        return UInt16(rounded >> 16)
    }

    /// The Float value of bfloat16 bits.
    @_optimize(speed)
    public static func fromBF16(_ b: UInt16) -> Float {
        Float(bitPattern: UInt32(b) << 16)
    }

    /// Every element of `bits` as `fromF16` gives it. (This and the other conversions here are
    /// compiled optimized even in debug builds, where the test suite converts tens of millions
    /// of elements.)
    @_optimize(speed)
    public static func fromF16(_ bits: [UInt16]) -> [Float] {
        bits.withUnsafeBufferPointer { src in
            [Float](unsafeUninitializedCapacity: src.count) { out, n in
                for i in 0..<src.count { out[i] = fromF16(src[i]) }
                n = src.count
            }
        }
    }

    /// Every element of `bits` as `fromBF16` gives it.
    @_optimize(speed)
    public static func fromBF16(_ bits: [UInt16]) -> [Float] {
        bits.withUnsafeBufferPointer { src in
            [Float](unsafeUninitializedCapacity: src.count) { out, n in
                for i in 0..<src.count { out[i] = fromBF16(src[i]) }
                n = src.count
            }
        }
    }
}

/// Error measures used by conformance.
public enum ErrorMeasure {
    /// Normalized mean squared error: Σ(a−b)² / Σb², with b the reference (ggml's NMSE).
    /// Returns 0 for two empty arrays; NaN where either side holds a NaN the other does not.
    @_optimize(speed)
    public static func nmse(_ actual: [Float], _ expected: [Float]) -> Double {
        precondition(actual.count == expected.count)
        var num = 0.0
        var den = 0.0
        for (a, b) in zip(actual, expected) {
            if a.isNaN || b.isNaN {
                if a.isNaN && b.isNaN { continue }
                return .nan
            }
            if a.isInfinite || b.isInfinite {
                if a == b { continue }
                return .infinity
            }
            let d = Double(a) - Double(b)
            num += d * d
            den += Double(b) * Double(b)
        }
        if num == 0 { return 0 }
        return den == 0 ? .infinity : num / den
    }
}
