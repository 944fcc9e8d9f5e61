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

@Suite("CPU reference, hand-checked: token merging and Soft MoE")
struct MergeReferenceTests {
    /// L = 5, d = 1, x = 1...5. A = positions 0, 2, 4 with keys (1, 0), (0, 1), (1, 0.05); B =
    /// positions 1, 3 with keys (1, 0.1), (0.1, 1). A0 and A1 both score 1/√1.01 (a tie), A2
    /// scores 1.005/(√1.0025·√1.01), the most; A0 and A2 pick B0, A1 picks B1.
    static let keys: [Float] = [1, 0, 1, 0.1, 0, 1, 0.1, 1, 1, 0.05]

    @Test func twoMergesTieToTheLowerIndex() {
        let r = Reference.tokenMerge(
            x: [1, 2, 3, 4, 5], keys: Self.keys, sizes: nil, batches: 1, tokens: 5, d: 1, dk: 2, r: 2, protectFirst: false)
        // A2 first, then A0 (tied with A1, lower index): both into B0 = (2 + 1 + 5) / 3.
        #expect(r.merged.count == 3)
        #expect(r.merged[0] == 3)
        #expect(abs(r.merged[1] - 8.0 / 3) < 1e-12)
        #expect(r.merged[2] == 4)
        #expect(r.sizes == [1, 3, 1])
        #expect(r.sourceMap == [1, 1, 0, 2, 1])
    }

    @Test func theClassTokenNeverMerges() {
        let r = Reference.tokenMerge(
            x: [1, 2, 3, 4, 5], keys: Self.keys, sizes: [1, 1, 3, 1, 1], batches: 1, tokens: 5, d: 1, dk: 2, r: 2,
            protectFirst: true)
        // A0 scores −∞: A2 → B0 = (2 + 5) / 2, A1 (size 3) → B1 = (4 + 3·3) / 4.
        #expect(r.merged == [1, 3.5, 13.0 / 4])
        #expect(r.sizes == [1, 2, 4])
        #expect(r.sourceMap == [0, 1, 2, 2, 1])
        #expect(Reference.maxMerges(tokens: 5, protectFirst: true) == 2)
        #expect(Reference.maxMerges(tokens: 6, protectFirst: true) == 2)
        #expect(Reference.maxMerges(tokens: 6, protectFirst: false) == 3)
    }

    @Test func unmergeCopiesRowsBack() {
        let r = Reference.tokenUnmerge(y: [10, 11, 20, 21], sourceMap: [1, 0, 1], batches: 1, rows: 2, tokens: 3, d: 2)
        #expect(r.values == [20, 21, 10, 11, 20, 21])
        #expect(!r.invalid)
        #expect(Reference.tokenUnmerge(y: [1, 2], sourceMap: [2], batches: 1, rows: 2, tokens: 1, d: 1).invalid)
    }

    /// One slot: every token's combine weight is 1, the slot is the softmax-weighted mean of the
    /// tokens (logits x·φ = 0, 1·ln 3: weights 1/4, 3/4).
    @Test func softMoEWithOneSlot() {
        let x: [Float] = [0, 2, 1, 6]  // T = 2, d = 2
        let phi: [Float] = [Float(log(3.0)), 0]
        let r = Reference.softMoEDispatch(x: x, phiT: phi, batches: 1, tokens: 2, d: 2, slots: 1)
        #expect(r.combineWeights == [1, 1])
        #expect(abs(r.slots[0] - 0.75) < 1e-6 && abs(r.slots[1] - (0.5 + 4.5)) < 1e-6)
        let y = Reference.softMoECombine(
            ys: [7, 8], rows: 1, rowOf: nil, weights: [1, 0.5], batches: 1, tokens: 2, d: 2, slots: 1)
        #expect(y == [7, 8, 3.5, 4])
    }
}
