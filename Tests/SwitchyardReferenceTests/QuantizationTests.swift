import SwitchyardReference
import Testing

@Suite("Quantized weight formats, hand-checked")
struct QuantizationTests {
    @Test func e2m1Table() {
        let positive: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
        for c in 0..<8 {
            #expect(Quantization.e2m1(UInt8(c)) == positive[c])
            #expect(Quantization.e2m1(UInt8(c | 8)) == -positive[c])
        }
    }

    @Test func e8m0Scales() {
        #expect(Quantization.e8m0(127) == 1)
        #expect(Quantization.e8m0(128) == 2)
        #expect(Quantization.e8m0(0) == 0x1p-127)
        #expect(Quantization.e8m0(254) == 0x1p127)
        #expect(Quantization.e8m0(0xFF).isNaN)
    }

    @Test func e4m3Values() {
        #expect(Quantization.e4m3(0x38) == 1)  // 0.0111.000
        #expect(Quantization.e4m3(0x7E) == 448)  // the largest finite
        #expect(Quantization.e4m3(0x01) == 0x1p-9)  // the smallest subnormal
        #expect(Quantization.e4m3(0x07) == 7 * 0x1p-9)
        #expect(Quantization.e4m3(0x08) == 0x1p-6)  // the smallest normal
        #expect(Quantization.e4m3(0xB8) == -1)
        #expect(Quantization.e4m3(0x80) == 0 && Quantization.e4m3(0x80).sign == .minus)
        #expect(Quantization.e4m3(0x7F).isNaN && Quantization.e4m3(0xFF).isNaN)
        #expect(Quantization.e4m3(0x78) == 256)  // S.1111.000 is a number in e4m3fn
    }

    @Test func int8RoundsHalfToEven() {
        // max 63.5: s = 63.5 · (1/127) rounds to 0.5, so 0.25 and 0.75 are ties (0.5 and 1.5 steps).
        let r = Quantization.quantizeInt8([63.5, 0.25, 0.75, -0.25, -1.25, 0], rows: 1, k: 6)
        #expect(r.scales == [0.5])
        #expect(r.codes.map { Int8(bitPattern: $0) } == [127, 0, 2, 0, -2, 0])
    }

    @Test func int4ZeroPointAndGroups() {
        // Group 2 of K 5 (the last group one value). Group 0: lo −3.75, hi 3.75 → s 0.5, z = rne(7.5) = 8.
        let w: [Float] = [-3.75, 3.75, 0, 0, 1]
        let r = Quantization.quantizeInt4(w, rows: 1, k: 5, group: 2, zeroPoint: true)
        #expect(r.scales.count == 3)
        #expect(r.zeros[0] == 8)
        #expect(r.codes[0] == 0 && r.codes[1] == 15)  // −7.5 + 8 = 0.5 → 0; 7.5 + 8 → 15 (clamped)
        #expect(r.scales[1] == 0 && r.codes[2] == 0 && r.codes[3] == 0)  // all-zero group
        let back = Quantization.dequantizeInt4(
            codes: r.codes, scales: r.scales, zeros: r.zeros, rows: 1, k: 5, group: 2)
        #expect(back[2] == 0 && back[3] == 0)
        #expect(r.codes[4] == 15 && abs(back[4] - 1) < 1e-3)  // one value: s = f16(1/15), z 0, q 15
    }

    @Test func mxfp4RoundTripOfRepresentableValues() {
        // Every e2m1 value times 2^3 survives the conversion exactly (block max 6·8 → scale 2^3).
        var w = [Float](repeating: 0, count: 32)
        let values: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
        for i in 0..<16 { w[i] = values[i % 8] * 8 * (i >= 8 ? -1 : 1) }
        let q = Quantization.quantizeMXFP4(w, rows: 1, k: 32)
        #expect(q.scales == [130])
        #expect(Quantization.dequantizeMXFP4(blocks: q.blocks, scales: q.scales, rows: 1, k: 32) == w)
    }
}
