import SwitchyardReference

/// Storage type of a tensor. Floating-point types are always computed in f32 on the device.
/// `u8` holds raw bytes: the codes and byte scales of quantized weights (int8, int4, MXFP4,
/// FP8); only the ops that say so take it.
public enum DType: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// IEEE single (`f32`), IEEE half (`f16`), bfloat16 (`bf16`: the top 16 bits of an f32,
    /// rounded to nearest even) 32-bit signed integers (`i32`: indices and counts) and bytes (`u8`: quantized weight codes and scales).
    case f32, f16, bf16, i32, u8

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f32, .i32: 4
        case .f16, .bf16: 2
        case .u8: 1
        }
    }

    /// Whether this is a floating-point storage type (f32, f16, bf16).
    public var isFloatingPoint: Bool { self != .i32 && self != .u8 }

    /// "f32", "f16", "bf16" or "i32".
    public var description: String { rawValue }

    /// The floating-point storage types.
    public static let floatingPoint: [DType] = [.f32, .f16, .bf16]

    /// Rounds `value` to the nearest value this type can store (identity for f32).
    @_optimize(speed)
    public func round(_ value: Float) -> Float {
        switch self {
        case .f32, .i32, .u8: value
        case .f16: FloatBits.fromF16(FloatBits.f16(value))
        case .bf16: FloatBits.fromBF16(FloatBits.bf16(value))
        }
    }

    /// Every element of `values` rounded as `round(_:)` rounds it (a plain loop compiled
    /// optimized even in debug builds, where the test suite rounds millions of elements a case).
    @_optimize(speed)
    public func round(_ values: [Float]) -> [Float] {
        if self == .f32 || self == .i32 || self == .u8 { return values }
        return values.withUnsafeBufferPointer { src in
            [Float](unsafeUninitializedCapacity: src.count) { out, n in
                for i in 0..<src.count { out[i] = round(src[i]) }
                n = src.count
            }
        }
    }

    /// The `-D` options that make `PREFIX_T`, `PREFIX_LOAD(p, i)` and `PREFIX_STORE(p, i, v)`
    /// read and write this type in a kernel (see Kernels/common.h).
    func defines(_ prefix: String) -> [String: String] {
        let (type, access): (String, String) =
            switch self {
            case .f32: ("float", "F32")
            case .f16: ("half", "F16")
            case .bf16: ("ushort", "BF16")
            case .i32: ("int", "I32")
            case .u8: ("uchar", "I32")
            }
        return [
            "\(prefix)_T": type, "\(prefix)_LOAD": "LOAD_\(access)", "\(prefix)_STORE": "STORE_\(access)",
            "\(prefix)_DT": "\(kernelCode)",
        ]
    }

    /// The number kernels select this storage type by (`X_DT`, `W_DT`, ...; see Kernels/common.h).
    var kernelCode: Int {
        switch self {
        case .f32: 0
        case .f16: 1
        case .bf16: 2
        case .i32: 3
        case .u8: 4
        }
    }
}
