/// The definition of Switchyard's quantized weight formats: how float weights are quantized
/// (int8, int4) and what every stored code means (int8, int4, MXFP4, FP8 e4m3). The device's
/// quantization must give these codes and scales bit for bit; its matmul must give the matmul of
/// these dequantized weights (each an exact f32 value, accumulated in f64 here).
///
/// Canonical layouts (row-major, `rows` = every expert's weight rows, `K` along a row):
/// - int8: codes `[rows, K]` (two's complement), one f32 scale per row; w = q · s.
/// - int4: codes `[rows, K]`, one nibble value 0...15 per byte; per group of `group` values
///   along K (the last group shorter when K is not a multiple), an f16 scale and, with a zero
///   point, a zero z in 0...15 (symmetric: z = 8); w = (q − z) · s.
/// - MXFP4 (OCP Microscaling): e2m1 codes two per byte, low nibble first, `[rows, K/32, 16]`
///   bytes, and one e8m0 scale byte per 32 values `[rows, K/32]`; w = e2m1(q) · 2^(s − 127),
///   scale byte 0xFF is NaN.
/// - FP8 e4m3 (OCP e4m3fn: no infinities, S.1111.111 is NaN) codes `[rows, K]` with f32 block
///   scales `[ceil(rows/128), ceil(K/128)]` per expert (DeepSeek-V3's `weight_scale_inv`; for fused
///   gate|up the gate's and the up's concatenated); w = e4m3(q) · s.
public enum Quantization {
    /// 1/127, 1/7 and 1/15 as f32 (the scale is the range times one of these, a correctly rounded
    /// product, so it is the same on every device).
    public static let inv127 = Float(bitPattern: 0x3C01_0204)
    public static let inv7 = Float(bitPattern: 0x3E12_4925)
    public static let inv15 = Float(bitPattern: 0x3D88_8889)

    /// round-to-nearest-even of the exact quotient w / s (s > 0 and finite), clamped to lo...hi.
    /// (The quotient of two floats is never within 2^-53 of a half-integer without being one, so
    /// Double division decides it exactly.)
    public static func roundedQuotient(_ w: Float, _ s: Float, _ lo: Int, _ hi: Int) -> Int {
        let q = (Double(w) / Double(s)).rounded(.toNearestOrEven)
        if q.isNaN { return 0 }
        return Int(min(max(q, Double(lo)), Double(hi)))
    }

    /// int8 with one f32 scale per row: s = max|w| · (1/127) (NaN when a weight of the row is not
    /// finite); q = rne(w / s) in −127...127 (0 where s is 0 or NaN).
    public static func quantizeInt8(_ w: [Float], rows: Int, k: Int) -> (codes: [UInt8], scales: [Float]) {
        precondition(w.count == rows * k)
        var codes = [UInt8](repeating: 0, count: w.count)
        var scales = [Float](repeating: 0, count: rows)
        for r in 0..<rows {
            let row = w[(r * k)..<((r + 1) * k)]
            let s = row.allSatisfy(\.isFinite) ? row.reduce(Float(0)) { max($0, abs($1)) } * inv127 : Float.nan
            scales[r] = s
            guard s > 0 && s.isFinite else { continue }
            for (i, v) in row.enumerated() {
                codes[r * k + i] = UInt8(bitPattern: Int8(roundedQuotient(v, s, -127, 127)))
            }
        }
        return (codes, scales)
    }

    /// Groups of `group` along a row of `k` (the last one shorter when k is not a multiple).
    public static func groups(k: Int, group: Int) -> Int { (k + group - 1) / group }

    /// int4 in groups of `group` along K with an f16 scale per group.
    /// Symmetric: s = f16(max|w| · (1/7)), q = rne(w / s) in −8...7 stored as q + 8.
    /// With a zero point: lo = min(0, min w), hi = max(0, max w), s = f16((hi − lo) · (1/15)),
    /// z = rne(−lo / s) in 0...15, q = rne(w / s) + z in 0...15.
    /// A group holding a non-finite weight gets a NaN scale; where s is 0 or not finite every
    /// code is the zero (q = z: 8 symmetric, 0 with a zero point), so w = (q − z) · s is 0 or NaN.
    public static func quantizeInt4(_ w: [Float], rows: Int, k: Int, group: Int, zeroPoint: Bool)
        -> (codes: [UInt8], scales: [UInt16], zeros: [UInt8])
    {
        precondition(w.count == rows * k && group > 0)
        let g = groups(k: k, group: group)
        var codes = [UInt8](repeating: zeroPoint ? 0 : 8, count: w.count)
        var scales = [UInt16](repeating: 0, count: rows * g)
        var zeros = [UInt8](repeating: zeroPoint ? 0 : 8, count: rows * g)
        for r in 0..<rows {
            for j in 0..<g {
                let range = (r * k + j * group)..<(r * k + min(k, (j + 1) * group))
                let values = w[range]
                let bits: UInt16
                if !values.allSatisfy(\.isFinite) {
                    bits = 0x7E00
                } else if zeroPoint {
                    let lo = min(0, values.min()!)
                    let hi = max(0, values.max()!)
                    bits = FloatBits.f16((hi - lo) * inv15)
                } else {
                    bits = FloatBits.f16(values.reduce(Float(0)) { max($0, abs($1)) } * inv7)
                }
                scales[r * g + j] = bits
                let s = FloatBits.fromF16(bits)
                guard s > 0 && s.isFinite else { continue }
                if zeroPoint {
                    let z = roundedQuotient(-min(0, values.min()!), s, 0, 15)
                    zeros[r * g + j] = UInt8(z)
                    for i in range { codes[i] = UInt8(min(15, max(0, roundedQuotient(w[i], s, -15, 15) + z))) }
                } else {
                    for i in range { codes[i] = UInt8(roundedQuotient(w[i], s, -8, 7) + 8) }
                }
            }
        }
        return (codes, scales, zeros)
    }

    public static func dequantizeInt8(codes: [UInt8], scales: [Float], rows: Int, k: Int) -> [Float] {
        (0..<(rows * k)).map { Float(Int8(bitPattern: codes[$0])) * scales[$0 / k] }
    }

    public static func dequantizeInt4(codes: [UInt8], scales: [UInt16], zeros: [UInt8], rows: Int, k: Int, group: Int)
        -> [Float]
    {
        let g = groups(k: k, group: group)
        return (0..<(rows * k)).map { i in
            let j = (i / k) * g + (i % k) / group
            return Float(Int(codes[i]) - Int(zeros[j])) * FloatBits.fromF16(scales[j])
        }
    }

    /// OCP e2m1 (4 bits: sign, 2 exponent, 1 mantissa): ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}.
    public static func e2m1(_ code: UInt8) -> Float {
        let m = Float(code & 1)
        let e = Int((code >> 1) & 3)
        let magnitude = e == 0 ? m * 0.5 : Float(sign: .plus, exponent: e - 1, significand: 1 + m / 2)
        return code & 8 != 0 ? -magnitude : magnitude
    }

    /// OCP e8m0 scale: 2^(s − 127) (s = 0 is the subnormal 2^-127 in f32); 0xFF is NaN.
    public static func e8m0(_ s: UInt8) -> Float {
        s == 0xFF ? .nan : Float(sign: .plus, exponent: Int(s) - 127, significand: 1)
    }

    /// MXFP4 encoding of float weights `[rows, K]` (K a multiple of 32), as the OCP MX spec
    /// converts: per block of 32, scale X = 2^(floor(log2(max|w|)) − 2) (e8m0, clamped to
    /// 2^-127...2^127; 2^-127 for an all-zero block, 0xFF for a block holding a non-finite value),
    /// each value w / X rounded to the nearest e2m1 value (ties to the even code), saturating at ±6.
    public static func quantizeMXFP4(_ w: [Float], rows: Int, k: Int) -> (blocks: [UInt8], scales: [UInt8]) {
        precondition(k % 32 == 0 && w.count == rows * k)
        let magnitudes: [Double] = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
        var blocks = [UInt8](repeating: 0, count: w.count / 2)
        var scales = [UInt8](repeating: 0, count: w.count / 32)
        for b in 0..<(w.count / 32) {
            let values = w[(b * 32)..<((b + 1) * 32)]
            guard values.allSatisfy(\.isFinite) else {
                scales[b] = 0xFF
                continue
            }
            let amax = values.reduce(Float(0)) { max($0, abs($1)) }
            let e = amax > 0 ? min(127, max(-127, Int(amax.exponent) - 2)) : -127
            scales[b] = UInt8(e + 127)
            for (i, v) in values.enumerated() {
                let q = abs(Double(v)) / Double(sign: .plus, exponent: e, significand: 1)
                var best = 0
                for c in 1..<8 {
                    let d = abs(q - magnitudes[c])
                    let bestD = abs(q - magnitudes[best])
                    if d < bestD || (d == bestD && c % 2 == 0) { best = c }
                }
                let code = UInt8(best) | (v.sign == .minus && best != 0 ? 8 : 0)
                let at = b * 32 + i
                blocks[at / 2] |= at % 2 == 0 ? code : code << 4
            }
        }
        return (blocks, scales)
    }

    /// OCP FP8 e4m3fn: bias 7, subnormals m · 2^-9, no infinities, S.1111.111 NaN.
    public static func e4m3(_ code: UInt8) -> Float {
        let e = Int((code >> 3) & 15)
        let m = Float(code & 7)
        if e == 15 && code & 7 == 7 { return .nan }
        let magnitude = e == 0 ? m * 0x1p-9 : Float(sign: .plus, exponent: e - 7, significand: 1 + m / 8)
        return code & 0x80 != 0 ? -magnitude : magnitude
    }

    /// MXFP4 weights `[rows, K]` from blocks `[rows, K/32, 16]` and scales `[rows, K/32]`:
    /// e2m1(q) · 2^(s − 127) as an f32 product.
    public static func dequantizeMXFP4(blocks: [UInt8], scales: [UInt8], rows: Int, k: Int) -> [Float] {
        precondition(k % 32 == 0 && blocks.count == rows * k / 2 && scales.count == rows * k / 32)
        return (0..<(rows * k)).map { i in
            let byte = blocks[i / 2]
            return e2m1(i % 2 == 0 ? byte & 15 : byte >> 4) * e8m0(scales[i / 32])
        }
    }

    /// FP8 weights of `experts` experts `[E, n, K]` with block scales `[E, ceil(n/128), ceil(K/128)]`
    /// (fused gate|up with `gateRows` = ffn: the gate's and the up's blocks, `[E, 2·ceil(ffn/128), ...]`):
    /// e4m3(q) · s as an f32 product.
    public static func dequantizeFP8(codes: [UInt8], scales: [Float], experts: Int, n: Int, k: Int, gateRows: Int? = nil)
        -> [Float]
    {
        let bn = gateRows.map { 2 * (($0 + 127) / 128) } ?? (n + 127) / 128
        let bk = (k + 127) / 128
        precondition(codes.count == experts * n * k && scales.count == experts * bn * bk)
        func blockRow(_ row: Int) -> Int {
            guard let g = gateRows, row >= g else { return row / 128 }
            return (g + 127) / 128 + (row - g) / 128
        }
        return (0..<(experts * n * k)).map { i in
            let e = i / (n * k)
            let row = (i / k) % n
            return e4m3(codes[i]) * scales[(e * bn + blockRow(row)) * bk + (i % k) / 128]
        }
    }

    /// Rows `[E, 2·ffn, K]` with gate and up interleaved (gpt-oss: gate 2c, up 2c + 1) as gate rows
    /// first, then up rows (the layout the SwiGLU epilogue reads).
    public static func deinterleaveGateUp(_ w: [Float], experts: Int, ffn: Int, k: Int) -> [Float] {
        var out = [Float](repeating: 0, count: w.count)
        for e in 0..<experts {
            for c in 0..<ffn {
                for h in 0..<2 {
                    let src = (e * 2 * ffn + 2 * c + h) * k
                    let dst = (e * 2 * ffn + h * ffn + c) * k
                    for i in 0..<k { out[dst + i] = w[src + i] }
                }
            }
        }
        return out
    }
}
