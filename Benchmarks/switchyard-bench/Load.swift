import Foundation
import Switchyard
import SwitchyardConformance

/// The raw-byte transfers a checkpoint load makes, at the size of one Mixtral-8x7B expert
/// projection ([14336, 4096] bf16, 117 MB): host bytes written into a stacked device tensor
/// at an expert's offset (what `HFCheckpoint.loadWeights` does per tensor, from its staging
/// buffer, here from one whole-tensor host buffer), the same through 8 MiB pieces (the default
/// staging size), and the tensor's bytes read back. Against the copy ceiling; transfers are timed
/// by their events like launches.
func loadItems(filter: String?) throws -> [BenchItem] {
    let (n, k) = (14336, 4096)
    let dtype = DType.bf16
    let count = n * k
    let bytes = count * dtype.size
    let piece = HFCheckpoint.defaultStagingBytes
    let shape = "experts=2 n=\(n) k=\(k)"
    let regex = try filter.flatMap { $0.isEmpty ? nil : try Regex($0) }

    /// Seeded bf16 bit patterns of finite values (made when an item is prepared).
    func makeHost() -> [UInt16] {
        var g = SeededGenerator(seed: stableSeed("load bench"))
        return (0..<count).map { _ in UInt16(truncatingIfNeeded: g.next() >> 40) & 0xBFFF }
    }
    let write = TensorBytes(access: .write, tensorCount: 2 * count, offset: count, count: count, dtype: dtype)
    let read = TensorBytes(access: .read, tensorCount: 2 * count, offset: count, count: count, dtype: dtype)
    let items: [(String, String, Double, (OpenCLBackend) throws -> () throws -> Void)] = [
        ("tensor_bytes", "write expert 1", write.bytes, { b in
            let t = try b.empty(shape: [2, n, k], dtype: dtype, label: "stacked")
            let host = makeHost()
            return { try host.withUnsafeBytes { try b.write($0, into: t, atElement: count) } }
        }),
        ("tensor_bytes", "write expert 1 in \(piece >> 20) MiB pieces", write.bytes, { b in
            let t = try b.empty(shape: [2, n, k], dtype: dtype, label: "stacked")
            let host = makeHost()
            return {
                try host.withUnsafeBytes { all in
                    var done = 0
                    while done < bytes {
                        let m = min(piece, bytes - done)
                        try b.write(UnsafeRawBufferPointer(rebasing: all[done..<(done + m)]), into: t, atElement: count + done / 2)
                        done += m
                    }
                }
            }
        }),
        ("tensor_bytes", "read expert 1", read.bytes, { b in
            let t = try b.empty(shape: [2, n, k], dtype: dtype, label: "stacked")
            try makeHost().withUnsafeBytes { try b.write($0, into: t, atElement: count) }
            return { _ = try b.bytes(t, elements: count..<(2 * count)) }
        }),
    ]
    return items.compactMap { op, options, moved, run in
        let name = "\(op) \(shape) \(dtype.rawValue) \(options)"
        if let regex, !name.contains(regex) { return nil }
        return BenchItem(
            name: name, op: op, shape: shape, dtype: dtype.rawValue, options: options, flops: 0, bytes: moved, bound: .copy,
            peers: [], prepareDevice: run)
    }
}
