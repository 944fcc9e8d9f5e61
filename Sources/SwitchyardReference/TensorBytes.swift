/// Tensors as raw bytes: the elements' bit patterns as stored, little-endian, as safetensors
/// files and `ComputeBackend.tensor(bytes:)` hold them.
extension Reference {
    /// How floating-point elements are stored.
    public enum FloatStorage: Sendable {
        /// IEEE binary32, 4 bytes.
        case f32
        /// IEEE binary16, 2 bytes.
        case f16
        /// bfloat16 (the high half of a binary32), 2 bytes.
        case bf16

        public var size: Int { self == .f32 ? 4 : 2 }
    }

    /// The values of the elements stored in `bytes` (a whole number of elements), exactly.
    public static func decodeFloats(_ bytes: UnsafeRawBufferPointer, as storage: FloatStorage) -> [Float] {
        precondition(bytes.count % storage.size == 0)
        let count = bytes.count / storage.size
        var out = [Float]()
        out.reserveCapacity(count)
        for i in 0..<count {
            switch storage {
            case .f32:
                out.append(Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))))
            case .f16:
                out.append(FloatBits.fromF16(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
            case .bf16:
                out.append(FloatBits.fromBF16(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
            }
        }
        return out
    }

    /// The Int32 values stored in `bytes` (4 bytes each, two's complement).
    public static func decodeInts(_ bytes: UnsafeRawBufferPointer) -> [Int32] {
        precondition(bytes.count % 4 == 0)
        return (0..<bytes.count / 4).map { Int32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
    }

    /// The stored bytes of `values`, each rounded to nearest even for a 16-bit storage (NaN
    /// stays NaN, made quiet).
    public static func encode(_ values: ArraySlice<Float>, as storage: FloatStorage) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(values.count * storage.size)
        for v in values {
            switch storage {
            case .f32: withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 }
            case .f16: withUnsafeBytes(of: FloatBits.f16(v).littleEndian) { out += $0 }
            case .bf16: withUnsafeBytes(of: FloatBits.bf16(v).littleEndian) { out += $0 }
            }
        }
        return out
    }

    /// The stored bytes of Int32 `values`.
    public static func encode(_ values: ArraySlice<Int32>) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(values.count * 4)
        for v in values { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        return out
    }

    /// Converts stored elements from one float storage to another, `source` into `destination`
    /// (`count` elements): widening is exact, narrowing rounds to nearest even. Used on bounded
    /// chunks when a checkpoint is loaded in another storage type than it was saved in.
    public static func convert(
        _ source: UnsafeRawBufferPointer, from: FloatStorage, into destination: UnsafeMutableRawBufferPointer,
        as to: FloatStorage, count: Int
    ) {
        precondition(source.count >= count * from.size && destination.count >= count * to.size)
        for i in 0..<count {
            let v: Float
            switch from {
            case .f32: v = Float(bitPattern: UInt32(littleEndian: source.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
            case .f16: v = FloatBits.fromF16(UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            case .bf16: v = FloatBits.fromBF16(UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            }
            switch to {
            case .f32: destination.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self)
            case .f16: destination.storeBytes(of: FloatBits.f16(v).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            case .bf16: destination.storeBytes(of: FloatBits.bf16(v).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            }
        }
    }
}
