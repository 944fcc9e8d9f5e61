import Foundation
import OpenCLHost
@_spi(Profiling) import Switchyard
import SwitchyardConformance

/// Token merging at the shape (B 8, L 4096, d 1024; ToMe keys of 64 features, the
/// attention keys' head mean; r = L/4, class token protected) and the unmerge of its output,
/// in GB/s against the copy ceiling (bytes of the tensors read and written once, as
/// `TokenMerge.bytes` and `TokenUnmerge.bytes` count them). Too large for the reference: no peer.
func tokenMergeItems(filter: String?, quick: Bool) throws -> [BenchItem] {
    let (b, l, d, dk) = (quick ? 2 : 8, 4096, 1024, 64)
    let r = l / 4
    let regex = try filter.flatMap { $0.isEmpty ? nil : try Regex($0) }
    /// Inputs made once per backend: x, keys, and one merge's output and map for the unmerge.
    final class Inputs: @unchecked Sendable {
        let x: Tensor
        let keys: Tensor
        let merged: MergedTokens
        init(_ backend: OpenCLBackend, b: Int, l: Int, d: Int, dk: Int, r: Int, dtype: DType) throws {
            var g = SeededGenerator(seed: stableSeed("token merge bench \(dtype)"))
            x = try backend.tensor(g.normals(b * l * d), shape: [b, l, d], dtype: dtype)
            keys = try backend.tensor(g.normals(b * l * dk), shape: [b, l, dk], dtype: dtype)
            merged = try backend.tokenMerge(x, keys: keys, sizes: nil, r: r, protectFirst: true)
            try backend.synchronize()
        }
    }
    var items: [BenchItem] = []
    for dtype in [DType.f32, .bf16] {
        let merge = TokenMerge(
            batches: b, tokens: l, dim: d, keyDim: dk, r: r, protectFirst: true, dtype: dtype, keyDType: dtype)
        let unmerge = TokenUnmerge(batches: b, rows: l - r, tokens: l, dim: d, dtype: dtype)

        var cached: (OpenCLBackend, Inputs)?
        func inputs(_ backend: OpenCLBackend) throws -> Inputs {
            if let cached, cached.0 === backend { return cached.1 }
            let made = try Inputs(backend, b: b, l: l, d: d, dk: dk, r: r, dtype: dtype)
            cached = (backend, made)
            return made
        }
        let mergeShape = "B=\(b) L=\(l) d=\(d) dk=\(dk) r=\(r)"
        let unmergeShape = "B=\(b) M=\(l - r) L=\(l) d=\(d)"
        let rows: [(op: String, shape: String, options: String, flops: Double, bytes: Double,
                    run: (OpenCLBackend, Inputs) -> () throws -> Void)] = [
            ("token_merge", mergeShape, "cls merge-bench", merge.flops, merge.bytes, { backend, i in
                { _ = try backend.tokenMerge(i.x, keys: i.keys, sizes: nil, r: r, protectFirst: true) }
            }),
            ("token_unmerge", unmergeShape, "merge-bench", unmerge.flops, unmerge.bytes, { backend, i in
                { _ = try backend.tokenUnmerge(i.merged.x, sourceMap: i.merged.sourceMap) }
            }),
        ]
        for row in rows {
            let name = "\(row.op) \(row.shape) \(dtype.rawValue) \(row.options)"
            if let regex, !name.contains(regex) { continue }
            var item = BenchItem(
                name: name, op: row.op, shape: row.shape, dtype: dtype.rawValue, options: row.options, flops: row.flops,
                bytes: row.bytes, bound: .copy, peers: []
            ) { backend in row.run(backend, try inputs(backend)) }
            if row.op == "token_merge" {
                // Stage times: the key normalization, the similarity (partner search), the selection
                // (the two top-k sorts and the plan) and the merged rows.
                item.profiledRun = {
                    guard let (backend, i) = cached else { throw BenchError("\(name): profiled run before the device run") }
                    let (_, launches) = try backend.recordingLaunches {
                        _ = try backend.tokenMerge(i.x, keys: i.keys, sizes: nil, r: r, protectFirst: true)
                    }
                    try backend.synchronize()
                    let stages = ["normalize", "similarity", "selection", "rows"]
                    var times = Dictionary(uniqueKeysWithValues: stages.map { ($0, 0.0) })
                    for launch in launches {
                        let stage = launch.kernel == "merge_normalize" ? "normalize"
                            : launch.kernel.hasPrefix("merge_match") ? "similarity"
                            : launch.kernel == "merge_rows" ? "rows" : "selection"
                        times[stage, default: 0] += try launch.event.seconds()
                    }
                    return stages.map { StageTime(stage: $0, seconds: times[$0]!) }
                }
            }
            items.append(item)
        }
    }
    return items
}


/// Per-stage device times of the items that split into stages and are not MoE layers (those have
/// their own tables): token merging's similarity, selection and merged rows; early exit's rows
/// and state. One table per set of stage names.
func stageTable(_ results: [ItemResult]) -> String? {
    let staged = results.filter { $0.profile != nil && $0.item.groupedMatmul == nil }
    guard !staged.isEmpty else { return nil }
    var kinds: [[String]] = []
    for r in staged {
        let names = r.profile!.stages.map(\.name)
        if !kinds.contains(names) { kinds.append(names) }
    }
    let tables = kinds.map { names in
        var rows = [["op", "shape", "dtype", "device ms"] + names.map { "\($0) ms" }]
        for r in staged where r.profile!.stages.map(\.name) == names {
            rows.append([r.item.op, r.item.shape, r.item.dtype, ms(r.device.median)] + r.profile!.stages.map { ms($0.stats.median) })
        }
        return table(rows, rightAligned: Set(3..<rows[0].count))
    }
    return tables.joined(separator: "\n\n")
        + "\nstages: median device ms of separately profiled runs (sum of each stage's launch events)"
}
