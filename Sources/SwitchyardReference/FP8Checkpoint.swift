/// FP8 checkpoint weights dequantized at load (DeepSeek-V3's `float8_e4m3fn` weights with a
/// `weight_scale_inv` per 128 × 128 block, read into a float storage type).
extension Quantization {
    /// The 256 e4m3fn values by code (`e4m3` of each byte).
    public static let e4m3Table: [Float] = (0...255).map { e4m3(UInt8($0)) }

    /// Dequantizes `count` consecutive FP8 codes of one weight matrix `[rows, k]`, the first at
    /// element `first` (row-major), into `destination` as `storage`: w = e4m3(q) · s, the f32
    /// product (as `dequantizeFP8` and the FP8 matmul form it), then rounded to nearest even for
    /// a 16-bit storage. `scales` is the matrix's `weight_scale_inv`, `[ceil(rows/128), ceil(k/128)]`
    /// row-major: element (r, c) takes the scale of block (r / 128, c / 128).
    public static func dequantizeFP8(
        codes: UnsafeRawBufferPointer, first: Int, count: Int, k: Int, scales: [Float],
        into destination: UnsafeMutableRawBufferPointer, as storage: Reference.FloatStorage
    ) {
        let bk = (k + 127) / 128
        precondition(codes.count >= count && destination.count >= count * storage.size && k > 0)
        precondition(count == 0 || ((first + count - 1) / k / 128 + 1) * bk <= scales.count)
        for i in 0..<count {
            let element = first + i
            let v = e4m3Table[Int(codes[i])] * scales[(element / k / 128) * bk + (element % k) / 128]
            switch storage {
            case .f32: destination.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self)
            case .f16: destination.storeBytes(of: FloatBits.f16(v).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            case .bf16: destination.storeBytes(of: FloatBits.bf16(v).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            }
        }
    }
}
