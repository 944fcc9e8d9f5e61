import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance

/// The Soft MoE block at a ViT-like shape (8 sequence groups of 1024 tokens, hidden 512, SwiGLU
/// experts of width 1024, 32 experts × 4 slots = 128 slots per group), bf16 and f32, in GFLOP/s
/// of its matmuls (`SoftMoEConfig.flops`), with its stages (dispatch, experts, combine) timed
/// apart. Too large for the reference: no peer.
func softMoEItems(filter: String?, quick: Bool) throws -> [BenchItem] {
    let config = SoftMoEConfig(hidden: 512, ffn: 1024, experts: 32, slotsPerExpert: 4)
    let (b, t) = (quick ? 2 : 8, 1024)
    let regex = try filter.flatMap { $0.isEmpty ? nil : try Regex($0) }
    return [DType.f32, .bf16].compactMap { dtype in
        let shape = "B=\(b) T=\(t) d=\(config.hidden) ffn=\(config.ffn) E=\(config.experts) S=\(config.slotsPerExpert)"
        let name = "soft_moe_layer \(shape) \(dtype.rawValue) layer-bench"
        if let regex, !name.contains(regex) { return nil }
        let weightBytes = (config.slots * config.hidden + 3 * config.experts * config.hidden * config.ffn) * dtype.size
        return BenchItem(
            name: name, op: "soft_moe_layer", shape: shape, dtype: dtype.rawValue, options: "layer-bench",
            flops: config.flops(batches: b, tokens: t), bytes: Double(weightBytes + 2 * b * t * config.hidden * dtype.size),
            bound: nil, peers: []
        ) { backend in
            let seed = stableSeed("soft moe bench \(dtype)")
            let weights = try SoftMoEWeights.random(config: config, backend: backend, dtype: dtype, seed: seed)
            let layer = try SoftMoELayer(backend: backend, config: config, weights: weights, pack: true)
            var g = SeededGenerator(seed: seed ^ 1)
            let x = try backend.tensor(g.normals(b * t * config.hidden), shape: [b, t, config.hidden], dtype: dtype)
            _ = try layer.routing(batches: b)
            try backend.synchronize()
            return { _ = try layer.forward(x) }
        }
    }
}

/// The conditional ops of the example stacks at the sizes `switchyard run` gives them (issue 16):
/// the Soft MoE dispatch (logits, both softmaxes, slot mix) and combine (through the fixed slot
/// routing) of one soft-moe-tiny block (B 4 × T 256, d 256, 8 experts × 16 slots = 128 slots),
/// and the mixture-of-depths router of one mod-tiny block (B 4 × L 1024 = 4096 tokens, d 256, one
/// f32 score per token: the narrow matmul). f32; in GFLOP/s. No peer (the conformance cases check
/// the same kernels at smaller sizes).
func exampleOpItems(filter: String?) throws -> [BenchItem] {
    let regex = try filter.flatMap { $0.isEmpty ? nil : try Regex($0) }
    func wanted(_ name: String) -> Bool { regex.map { name.contains($0) } ?? true }
    var items: [BenchItem] = []
    let (b, t, d, experts, perExpert) = (4, 256, 256, 8, 16)
    let n = experts * perExpert
    let dispatch = SoftMoEDispatch(batches: b, tokens: t, dim: d, slots: n, dtype: .f32)
    let dispatchShape = "B=\(b) T=\(t) d=\(d) n=\(n)"
    if wanted("softmoe_dispatch \(dispatchShape) f32 example-size") {
        items.append(BenchItem(
            name: "softmoe_dispatch \(dispatchShape) f32 example-size", op: "softmoe_dispatch", shape: dispatchShape,
            dtype: "f32", options: "example-size", flops: dispatch.flops, bytes: dispatch.bytes, bound: .compute, peers: []
        ) { backend in
            var g = SeededGenerator(seed: stableSeed("softmoe_dispatch example-size"))
            let x = try backend.tensor(g.normals(b * t * d), shape: [b, t, d], dtype: .f32)
            let phi = try backend.prepareWeights(
                backend.tensor(g.normals(n * d, scale: 1 / Float(d).squareRoot()), shape: [1, n, d], dtype: .f32),
                swiglu: false, pack: true)
            try backend.synchronize()
            return { _ = try backend.softMoEDispatch(x, phi: phi) }
        })
    }
    let combineShape = "B=\(b) T=\(t) n=\(n) d=\(d)"
    if wanted("softmoe_combine \(combineShape) f32 routed example-size") {
        let op = SoftMoECombine(batches: b, tokens: t, slots: n, dim: d, dtype: .f32, outputDType: .f32, routed: true)
        items.append(BenchItem(
            name: "softmoe_combine \(combineShape) f32 routed example-size", op: "softmoe_combine", shape: combineShape,
            dtype: "f32", options: "routed example-size", flops: op.flops, bytes: op.bytes, bound: .compute, peers: []
        ) { backend in
            var g = SeededGenerator(seed: stableSeed("softmoe_combine example-size"))
            let routing = try backend.fixedRouting(
                ids: (0..<b * n).map { Int32(($0 % n) / perExpert) }, experts: experts, blockSize: backend.preferredBlockSize)
            let weights = try backend.tensor((0..<b * t * n).map { _ in Float(g.unit()) }, shape: [b, t, n], dtype: .f32)
            let ys = try backend.tensor(g.normals(routing.maxRows * d), shape: [routing.maxRows, d], dtype: .f32)
            try backend.synchronize()
            return { _ = try backend.softMoECombine(ys, weights: weights, routing: routing, dtype: .f32) }
        })
    }
    let tokens = 4 * 1024
    let routerShape = "T=\(tokens) in=\(d) out=1 dense"
    if wanted("grouped_matmul \(routerShape) f32 router example-size") {
        let op = GroupedMatmul(
            rows: tokens, activeRows: tokens, experts: 1, inFeatures: d, outFeatures: 1, epilogue: .none,
            activationType: .f32, outputType: .f32)
        items.append(BenchItem(
            name: "grouped_matmul \(routerShape) f32 router example-size", op: "grouped_matmul", shape: routerShape,
            dtype: "f32", options: "router example-size", flops: op.flops, bytes: op.bytes, bound: .memory, peers: []
        ) { backend in
            var g = SeededGenerator(seed: stableSeed("mod router example-size"))
            let x = try backend.tensor(g.normals(tokens * d), shape: [tokens, d], dtype: .f32)
            let router = try backend.prepareWeights(
                backend.tensor(g.normals(d, scale: 1 / Float(d).squareRoot()), shape: [1, 1, d], dtype: .f32),
                swiglu: false, pack: true)
            try backend.synchronize()
            return { _ = try backend.groupedMatmul(x, weights: router, dtype: .f32) }
        })
    }
    return items
}
