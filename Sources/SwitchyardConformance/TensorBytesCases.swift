import Foundation
import Switchyard

/// Cases of the raw-byte tensor transfers: a tensor made from stored bytes (`create`), a
/// stacked `[E, n, k]` tensor assembled from per-slice writes in a shuffled order the way a
/// checkpoint loads experts, then partly overwritten at an odd offset (`assemble`), and a region
/// read back as bytes (`read`). Inputs are seeded random bit patterns, so NaNs, infinities and
/// subnormals occur; outputs compare bitwise (any NaN matching any NaN: the reference keeps
/// values as Float and quiets 16-bit NaNs). The harness's poisoned outputs and sentinels catch
/// an element left unwritten and a write past the end.
enum TensorBytesCases {
    /// `count` elements of `dtype` as random bit patterns.
    static func randomBytes(_ count: Int, _ dtype: DType, _ g: inout SeededGenerator) -> [UInt8] {
        (0..<count * dtype.size).map { _ in UInt8(truncatingIfNeeded: g.next() >> 29) }
    }

    static let createShapes: [[Int]] = [[0], [1], [3, 5], [7, 129], [2, 0, 4], [4, 1000]]
    /// (experts, rows, cols) of assembled stacks.
    static let stacks: [(Int, Int, Int)] = [(1, 1, 1), (3, 5, 7), (8, 17, 33), (4, 64, 129)]
    /// (shape, elements read).
    static let reads: [([Int], Range<Int>)] = [([1], 0..<1), ([9, 13], 0..<0), ([9, 13], 5..<116), ([9, 13], 117..<117),
                                              ([100, 100], 1..<9999)]

    static func name(_ shape: [Int]) -> String { "shape=" + shape.map(String.init).joined(separator: "x") }

    static var cases: [ConformanceCase] {
        var cases: [ConformanceCase] = []
        for dtype in DType.allCases {
            for shape in createShapes {
                let s = name(shape)
                let seed = Conformance.seed("tensor_bytes create \(s) \(dtype)")
                let count = shape.reduce(1, *)
                let op = TensorBytes(access: .create, tensorCount: count, offset: 0, count: count, dtype: dtype)
                cases.append(
                    ConformanceCase(
                        op: "tensor_bytes", shape: s, dtype: dtype, options: "create", seed: seed, flops: op.flops,
                        bytes: op.bytes
                    ) { backend in
                        var g = SeededGenerator(seed: seed)
                        let bytes = randomBytes(count, dtype, &g)
                        return { [CaseOutput("t", try backend.tensor(bytes: bytes.withUnsafeBytes { Data($0) }, shape: shape, dtype: dtype), .exact)] }
                    })
            }
            for (e, n, k) in stacks {
                let s = "E=\(e) n=\(n) k=\(k)"
                let seed = Conformance.seed("tensor_bytes assemble \(s) \(dtype)")
                let slice = n * k
                let total = e * slice
                // Overwrite: a run from an odd element across a slice boundary.
                let patchStart = min(total - 1, slice / 2 + 1)
                let patchCount = min(total - patchStart, slice)
                let op = TensorBytes(access: .write, tensorCount: total, offset: 0, count: total + patchCount, dtype: dtype)
                cases.append(
                    ConformanceCase(
                        op: "tensor_bytes", shape: s, dtype: dtype, options: "assemble", seed: seed, flops: op.flops,
                        bytes: op.bytes
                    ) { backend in
                        var g = SeededGenerator(seed: seed)
                        let slices = (0..<e).map { _ in randomBytes(slice, dtype, &g) }
                        var order = Array(0..<e)
                        for i in stride(from: e - 1, to: 0, by: -1) { order.swapAt(i, Int(g.next() % UInt64(i + 1))) }
                        let patch = randomBytes(patchCount, dtype, &g)
                        return {
                            let t = try backend.empty(shape: [e, n, k], dtype: dtype, label: "stacked")
                            for i in order {
                                try slices[i].withUnsafeBytes { try backend.write($0, into: t, atElement: i * slice) }
                            }
                            try patch.withUnsafeBytes { try backend.write($0, into: t, atElement: patchStart) }
                            return [CaseOutput("stacked", t, .exact)]
                        }
                    })
            }
            for (shape, range) in reads {
                let s = name(shape) + " elements=\(range.lowerBound)..<\(range.upperBound)"
                let seed = Conformance.seed("tensor_bytes read \(s) \(dtype)")
                let count = shape.reduce(1, *)
                let op = TensorBytes(access: .read, tensorCount: count, offset: range.lowerBound, count: range.count, dtype: dtype)
                cases.append(
                    ConformanceCase(
                        op: "tensor_bytes", shape: s, dtype: dtype, options: "read", seed: seed, flops: op.flops,
                        bytes: op.bytes
                    ) { backend in
                        var g = SeededGenerator(seed: seed)
                        let t = try backend.tensor(bytes: Data(randomBytes(count, dtype, &g)), shape: shape, dtype: dtype)
                        return {
                            let region = try backend.bytes(t, elements: range)
                            return [CaseOutput("region", try backend.tensor(bytes: Data(region), shape: [range.count], dtype: dtype), .exact)]
                        }
                    })
            }
        }
        // Refused inputs: (name, dtype, what it does).
        let refused: [(String, DType, @Sendable (any ComputeBackend) throws -> Void)] = [
            ("create one byte short", .f32, { b in _ = try b.tensor(bytes: Data(count: 23), shape: [2, 3], dtype: .f32) }),
            ("create one element too many", .bf16, { b in _ = try b.tensor(bytes: Data(count: 14), shape: [6], dtype: .bf16) }),
            ("create negative extent", .f16, { b in _ = try b.tensor(bytes: Data(), shape: [-1, 0], dtype: .f16) }),
            ("create size overflow", .i32, { b in _ = try b.tensor(bytes: Data(count: 4), shape: [1 << 40, 1 << 40], dtype: .i32) }),
            ("write past the end", .f32, { b in
                let t = try b.empty(shape: [4, 4], dtype: .f32, label: "t")
                try b.write(Data(count: 8), into: t, atElement: 15)
            }),
            ("write part of an element", .f16, { b in
                let t = try b.empty(shape: [8], dtype: .f16, label: "t")
                try b.write(Data(count: 3), into: t, atElement: 0)
            }),
            ("write negative offset", .i32, { b in
                let t = try b.empty(shape: [8], dtype: .i32, label: "t")
                try b.write(Data(count: 4), into: t, atElement: -1)
            }),
            ("write offset past the end", .bf16, { b in
                let t = try b.empty(shape: [8], dtype: .bf16, label: "t")
                try b.write(Data(), into: t, atElement: 9)
            }),
            ("read past the end", .f32, { b in _ = try b.bytes(try b.tensor(bytes: Data(count: 16), shape: [4], dtype: .f32), elements: 2..<5) }),
            ("read negative start", .i32, { b in _ = try b.bytes(try b.tensor(bytes: Data(count: 16), shape: [4], dtype: .i32), elements: -1..<2) }),
        ]
        for (what, dtype, body) in refused {
            cases.append(
                ConformanceCase(
                    op: "tensor_bytes", shape: what.replacingOccurrences(of: " ", with: "-"), dtype: dtype, options: "refused",
                    seed: Conformance.seed("tensor_bytes \(what)"), flops: 0, bytes: 0, expectsError: true
                ) { backend in { try body(backend); return [] } })
        }
        return cases
    }
}
