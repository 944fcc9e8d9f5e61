import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance

/// The token selection and compaction ops at the mixture-of-depths shape of issue 16: B 8
/// sequences of L 4096 tokens, d 1024, capacity C = L/8 = 512 (and a 50 % keep mask for the
/// compaction), f32 and bf16, in GB/s against the copy ceiling (each op reads and writes about
/// what a copy of its rows would). Too large for the reference, so no peer; conformance checks
/// the same kernels at smaller shapes.
func tokenItems(filter: String?, quick: Bool) throws -> [BenchItem] {
    let (b, l, d) = (8, 4096, 1024)
    let c = l / 8
    let regex = try filter.flatMap { $0.isEmpty ? nil : try Regex($0) }

    /// Inputs made once per backend and dtype.
    final class Inputs: @unchecked Sendable {
        let scores: Tensor
        let x: Tensor
        let f: Tensor
        let w: Tensor
        let indices: Tensor
        let mask: Tensor
        let positions: Tensor
        init(_ backend: OpenCLBackend, b: Int, l: Int, d: Int, c: Int, dtype: DType) throws {
            var g = SeededGenerator(seed: stableSeed("token bench \(dtype)"))
            scores = try backend.tensor(g.normals(b * l), shape: [b, l], dtype: dtype)
            x = try backend.tensor(g.normals(b * l * d), shape: [b, l, d], dtype: dtype)
            f = try backend.tensor(g.normals(b * c * d), shape: [b, c, d], dtype: dtype)
            indices = try backend.tokenTopK(scores, capacity: .count(c), weighting: .sigmoid).indices
            w = try backend.tensor(g.normals(b * c), shape: [b, c], dtype: dtype)
            mask = try backend.tensor((0..<(b * l)).map { _ in Int32(g.next() & 1) }, shape: [b, l])
            positions = try backend.compact(mask, threshold: nil).positions
            try backend.synchronize()
        }
    }
    var cached: [DType: (ObjectIdentifier, Inputs)] = [:]
    func inputs(_ backend: OpenCLBackend, _ dtype: DType) throws -> Inputs {
        if let hit = cached[dtype], hit.0 == ObjectIdentifier(backend) { return hit.1 }
        let made = try Inputs(backend, b: b, l: l, d: d, c: c, dtype: dtype)
        cached[dtype] = (ObjectIdentifier(backend), made)
        return made
    }

    var items: [BenchItem] = []
    func add(
        _ op: String, _ shape: String, _ dtype: DType, _ bytes: Double, inputs inputType: DType? = nil,
        _ run: @escaping (OpenCLBackend, Inputs) throws -> Void
    ) {
        let name = "\(op) \(shape) \(dtype.rawValue) token-bench"
        if let regex, !name.contains(regex) { return }
        items.append(
            BenchItem(
                name: name, op: op, shape: shape, dtype: dtype.rawValue, options: "token-bench", flops: 0, bytes: bytes,
                bound: .copyTraffic, peers: []
            ) { backend in
                let i = try inputs(backend, inputType ?? dtype)
                return { try run(backend, i) }
            })
    }
    for dtype in quick ? [DType.f32] : [.f32, .bf16] {
        add("token_topk", "B=\(b) L=\(l) C=\(c)", dtype, TokenTopK(batch: b, length: l, capacity: c, dtype: dtype).bytes) {
            _ = try $0.tokenTopK($1.scores, capacity: .count(c), weighting: .score)
        }
        add(
            "gather_tokens", "B=\(b) L=\(l) d=\(d) C=\(c)", dtype,
            GatherTokens(batch: b, length: l, width: d, slots: c, dtype: dtype).bytes
        ) { _ = try $0.gatherTokens($1.x, indices: $1.indices, rows: nil, dtype: nil) }
        add(
            "scatter_tokens", "B=\(b) L=\(l) d=\(d) C=\(c)", dtype,
            ScatterTokens(batch: b, length: l, width: d, slots: c, dtype: dtype, weightDType: dtype).bytes
        ) { _ = try $0.scatterTokens($1.x, updates: $1.f, indices: $1.indices, weights: $1.w, dtype: nil) }
        add(
            "expand_tokens", "B=\(b) L=\(l) d=\(d) rows=\(l) keep=50%", dtype,
            ExpandTokens(batch: b, length: l, width: d, slots: l, rows: l, dtype: dtype, baseDType: dtype).bytes
        ) { _ = try $0.expandTokens($1.x, positions: $1.positions, length: l, base: $1.x, fill: 0, dtype: nil) }
    }
    add("compact", "B=\(b) L=\(l) keep=50%", .i32, Compact(batch: b, length: l, dtype: .i32).bytes, inputs: .f32) {
        _ = try $0.compact($1.mask, threshold: nil)
    }
    return items
}
