import Foundation
import SwitchyardReference
import Testing

@Suite("CPU reference, hand-checked")
struct ReferenceTests {
    @Test func softmaxOfASmallRow() {
        // exp([0, ln 2, ln 3 ... ]) = [1, 2, 3, 2] / 8
        let y = Reference.softmax([0, Float(log(2.0)), Float(log(3.0)), Float(log(2.0))], rows: 1, cols: 4)
        let expected = [1.0, 2, 3, 2].map { $0 / 8 }
        for (a, b) in zip(y, expected) { #expect(abs(a - b) < 1e-7) }
    }

    @Test func softmaxIsShiftInvariantPerRow() {
        let y = Reference.softmax([1, 2, 3, 101, 102, 103], rows: 2, cols: 3)
        for i in 0..<3 { #expect(abs(y[i] - y[i + 3]) < 1e-12) }
        #expect(abs(y[0..<3].reduce(0, +) - 1) < 1e-12)
    }

    @Test func topKDescendingWithTiesToTheLowerIndex() {
        let r = Reference.topK([3, 1, 3, 2, 5, 2], rows: 1, cols: 6, k: 4)
        #expect(r.values == [5, 3, 3, 2])
        #expect(r.indices == [4, 0, 2, 3])
    }

    @Test func topKPutsNaNFirstAndTreatsSignedZerosAsEqual() {
        let r = Reference.topK([-0.0, .nan, 0.0, -.infinity, .infinity], rows: 1, cols: 5, k: 5)
        #expect(r.indices == [1, 4, 0, 2, 3])
    }

    @Test func topKPerRow() {
        let r = Reference.topK([1, 2, 3, 6, 5, 4], rows: 2, cols: 3, k: 1)
        #expect(r.values == [3, 6])
        #expect(r.indices == [2, 0])
    }

    @Test func halfPrecisionRounding() {
        #expect(FloatBits.f16(1) == 0x3C00)
        #expect(FloatBits.f16(-2) == 0xC000)
        #expect(FloatBits.f16(65504) == 0x7BFF)
        #expect(FloatBits.f16(65520) == 0x7C00)  // rounds to infinity
        #expect(FloatBits.f16(1 + 0x1p-11) == 0x3C00)  // tie to even
        #expect(FloatBits.f16(1 + 0x1p-11 + 0x1p-20) == 0x3C01)
        #expect(FloatBits.f16(0x1p-24) == 0x0001)  // smallest subnormal
        #expect(FloatBits.f16(0x1p-26) == 0)
        #expect(FloatBits.fromF16(0x0001) == 0x1p-24)
        #expect(FloatBits.fromF16(0x3555) == Float(0x1.554p-2))
        for h in stride(from: 0, to: 0x7C00, by: 7) {
            #expect(FloatBits.f16(FloatBits.fromF16(UInt16(h))) == UInt16(h))
        }
    }

    @Test func bfloat16Rounding() {
        #expect(FloatBits.bf16(1) == 0x3F80)
        #expect(FloatBits.bf16(Float(bitPattern: 0x3F80_8000)) == 0x3F80)  // tie to even
        #expect(FloatBits.bf16(Float(bitPattern: 0x3F81_8000)) == 0x3F82)
        #expect(FloatBits.fromBF16(FloatBits.bf16(.nan)).isNaN)
        #expect(FloatBits.fromBF16(0xC040) == -3)
    }

    @Test func nmseMeasuresRelativeError() {
        #expect(ErrorMeasure.nmse([1, 2], [1, 2]) == 0)
        #expect(abs(ErrorMeasure.nmse([1.1, 2], [1, 2]) - 0.01 / 5) < 1e-9)
        #expect(ErrorMeasure.nmse([.nan], [1]).isNaN)
        #expect(ErrorMeasure.nmse([], []) == 0)
    }
}

@Suite("CPU reference: raw bytes, hand-checked")
struct ReferenceBytesTests {
    @Test func decodeEncodeAndConvert() {
        let f16: [UInt8] = [0x00, 0x3C, 0x01, 0x3C, 0x00, 0xFC]  // 1, 1 + 2^-10, -inf
        let values = f16.withUnsafeBytes { Reference.decodeFloats($0, as: .f16) }
        #expect(values == [1, 1 + 0x1p-10, -.infinity])
        #expect(Reference.encode(values[...], as: .f16) == f16)
        #expect(Reference.encode(values[...], as: .bf16) == [0x80, 0x3F, 0x80, 0x3F, 0x80, 0xFF])  // 1 + 2^-10 rounds to 1
        #expect(Reference.encode([Float(1.5)][...], as: .f32) == [0x00, 0x00, 0xC0, 0x3F])
        #expect(Reference.encode([Int32(-2), 65536][...]) == [0xFE, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x01, 0x00])
        #expect([UInt8]([0xFE, 0xFF, 0xFF, 0xFF]).withUnsafeBytes { Reference.decodeInts($0) } == [-2])
        // bf16 → f16 → f32 conversions of pieces: 3.140625 and 70000 (f16 overflows to inf).
        let bf16: [UInt8] = [0x49, 0x40, 0x89, 0x47]
        var out = [UInt8](repeating: 0, count: 4)
        bf16.withUnsafeBytes { src in out.withUnsafeMutableBytes { Reference.convert(src, from: .bf16, into: $0, as: .f16, count: 2) } }
        #expect(out == [0x48, 0x42, 0x00, 0x7C])  // 3.140625 = 0x4248 in f16; 70144 → inf
        var wide = [UInt8](repeating: 0, count: 8)
        bf16.withUnsafeBytes { src in wide.withUnsafeMutableBytes { Reference.convert(src, from: .bf16, into: $0, as: .f32, count: 2) } }
        #expect(wide == [0x00, 0x00, 0x49, 0x40, 0x00, 0x00, 0x89, 0x47])
    }
}
