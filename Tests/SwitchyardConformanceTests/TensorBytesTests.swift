import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance
import SwitchyardReference
import Testing

@Suite("Tensors from raw bytes")
struct TensorBytesTests {
    static func backends() throws -> [any ComputeBackend] {
        try Device.all().map { try OpenCLBackend(device: $0) as any ComputeBackend } + [ReferenceBackend()]
    }

    /// Hand-written bit patterns, little-endian, read back as values and as the same bytes.
    @Test func knownBitPatterns() throws {
        for backend in try Self.backends() {
            let f16: [UInt8] = [0x00, 0x3C, 0x00, 0xC0, 0x01, 0x00, 0x00, 0x7C, 0xFF, 0x7B]  // 1, -2, 2^-24, inf, 65504
            let t16 = try backend.tensor(bytes: Data(f16), shape: [5], dtype: .f16)
            #expect(try backend.floats(t16) == [1, -2, 0x1p-24, .infinity, 65504], "\(backend.name)")
            #expect(try backend.bytes(t16) == f16)
            let bf16: [UInt8] = [0x80, 0x3F, 0x49, 0x40, 0x80, 0xFF]  // 1, 3.140625, -inf
            let tb = try backend.tensor(bytes: Data(bf16), shape: [1, 3], dtype: .bf16)
            #expect(try backend.floats(tb) == [1, 3.140625, -.infinity])
            #expect(try backend.bytes(tb) == bf16)
            let f32: [UInt8] = [0x00, 0x00, 0xC0, 0x3F, 0x01, 0x00, 0x00, 0x80]  // 1.5, -2^-149
            #expect(try backend.floats(try backend.tensor(bytes: Data(f32), shape: [2], dtype: .f32)) == [1.5, -0x1p-149])
            let i32: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0x02, 0x01, 0x00, 0x00]
            let ti = try backend.tensor(bytes: Data(i32), shape: [2], dtype: .i32)
            #expect(try backend.ints(ti) == [-1, 258])
            #expect(try backend.bytes(ti, elements: 1..<2) == [0x02, 0x01, 0x00, 0x00])
        }
    }

    /// Random bit patterns of every dtype come back byte for byte (on the reference, NaNs other
    /// than quiet ones come back quiet, so it gets finite values there).
    @Test func bytesRoundTripExactly() throws {
        var g = SeededGenerator(seed: 99)
        for backend in try Self.backends() {
            for dtype in DType.allCases {
                var bytes = (0..<1000 * dtype.size).map { _ in UInt8(truncatingIfNeeded: g.next()) }
                if backend is ReferenceBackend && dtype.isFloatingPoint {
                    // Clear the top exponent bit of every element: no NaN or infinity.
                    for i in stride(from: dtype.size - 1, to: bytes.count, by: dtype.size) { bytes[i] &= 0xBF }
                }
                let t = try backend.tensor(bytes: Data(bytes), shape: [10, 100], dtype: dtype)
                #expect(try backend.bytes(t) == bytes, "\(backend.name) \(dtype)")
                #expect(try backend.bytes(t, elements: 123..<457) == Array(bytes[(123 * dtype.size)..<(457 * dtype.size)]))
                #expect(try backend.bytes(t, elements: 5..<5).isEmpty)
            }
        }
    }

    /// A write reaches every view of the tensor (a reshaped one made before the write), on
    /// either backend, and leaves the other elements alone.
    @Test func writesReachViews() throws {
        for backend in try Self.backends() {
            let t = try backend.tensor([1, 2, 3, 4, 5, 6], shape: [2, 3], dtype: .f32)
            let view = try t.reshaped([6])
            let seven: Float = 7, eight: Float = 8
            let patch = withUnsafeBytes(of: seven.bitPattern.littleEndian) { Array($0) }
                + withUnsafeBytes(of: eight.bitPattern.littleEndian) { Array($0) }
            try backend.write(Data(patch), into: t, atElement: 2)
            #expect(try backend.floats(view) == [1, 2, 7, 8, 5, 6], "\(backend.name)")
            #expect(try backend.floats(t) == [1, 2, 7, 8, 5, 6])
            #expect(throws: SwitchyardError.hostData(argument: "tensor bytes", expected: 24, actual: 20)) {
                try backend.tensor(bytes: Data(count: 20), shape: [2, 3], dtype: .f32)
            }
            #expect(throws: SwitchyardError.self) { try backend.write(Data(patch), into: t, atElement: 5) }
            #expect(throws: SwitchyardError.self) { try backend.bytes(t, elements: 0..<7) }
        }
        // A tensor of one backend cannot be written by the other.
        let device = try OpenCLBackend()
        let host = try ReferenceBackend().tensor([1], shape: [1], dtype: .f32)
        #expect(throws: SwitchyardError.self) { try device.write(Data(count: 4), into: host, atElement: 0) }
        #expect(throws: SwitchyardError.self) {
            try ReferenceBackend().write(Data(count: 4), into: try device.tensor([1], shape: [1], dtype: .f32), atElement: 0)
        }
    }
}
