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
