import SwitchyardReference
import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance

/// The routing kernels at a large prefill shape (T 16384, d 4096, E 64, k 6, bf16 activations,
/// blocks of 6 rows): each stage timed alone on inputs the previous stages made, in GB/s
/// against the bandwidth ceilings. Too large for the reference, so no peer.
func routingItems(filter: String?, quick: Bool) throws -> [BenchItem] {
    let t = quick ? 4096 : 16384
    let d = 4096
    let config = RouterConfig(experts: 64, k: 6, renormalize: true)
    let block = 6
    let dtype = DType.bf16
    let n = t * config.k
    let rows = Reference.maxRows(assignments: n, experts: config.experts, blockSize: block)
    let shape = "T=\(t) d=\(d) E=\(config.experts) k=\(config.k) block=\(block)"
    let regex = try filter.flatMap { $0.isEmpty ? nil : try Regex($0) }

    /// Inputs shared by the stages, made once per backend.
    final class Inputs: @unchecked Sendable {
        let logits: Tensor
        let x: Tensor
        let routing: Routing
        init(_ backend: OpenCLBackend, t: Int, d: Int, config: RouterConfig, block: Int, dtype: DType) throws {
            var g = SeededGenerator(seed: stableSeed("routing bench"))
            logits = try backend.tensor(g.normals(t * config.experts, scale: 2), shape: [t, config.experts], dtype: .f32)
            x = try backend.tensor(g.normals(t * d), shape: [t, d], dtype: dtype)
            routing = try backend.route(logits, config: config, blockSize: block)
            try backend.synchronize()
        }
    }
    var cached: (ObjectIdentifier, Inputs)?
    func inputs(_ backend: OpenCLBackend) throws -> Inputs {
        if let cached, cached.0 == ObjectIdentifier(backend) { return cached.1 }
        let made = try Inputs(backend, t: t, d: d, config: config, block: block, dtype: dtype)
        cached = (ObjectIdentifier(backend), made)
        return made
    }

    // Costs from the ops' descriptors, as the conformance cases count them.
    let gather = Gather(tokens: t, k: config.k, d: d, maxRows: rows, inputType: dtype)
    let combine = Combine(tokens: t, k: config.k, d: d, maxRows: rows, inputType: dtype, residual: false)
    let stages: [(op: String, bytes: Double, run: (OpenCLBackend, Inputs) throws -> () throws -> Void)] = [
        ("gating", GatingOp(tokens: t, config: config).bytes, { b, i in
            { _ = try b.gating(i.logits, bias: nil, config: config) }
        }),
        ("permute", Permute(tokens: t, k: config.k, experts: config.experts, blockSize: block).bytes, { b, i in
            let g = try b.gating(i.logits, bias: nil, config: config)
            return { _ = try b.permute(g, blockSize: block) }
        }),
        ("gather", gather.bytes, { b, i in
            { _ = try b.gather(i.x, routing: i.routing, dtype: nil) }
        }),
        ("combine", combine.bytes, { b, i in
            let ys = try b.gather(i.x, routing: i.routing, dtype: nil)
            return { _ = try b.combine(ys, routing: i.routing, residual: nil, dtype: dtype) }
        }),
        ("routing_stats", RoutingStatsOp(tokens: t, experts: config.experts, k: config.k).bytes, { b, i in { _ = try b.routingStats(i.routing) } }),
    ]
    return stages.compactMap { stage in
        let name = "\(stage.op) \(shape) \(dtype.rawValue) routing-bench"
        if let regex, !name.contains(regex) { return nil }
        return BenchItem(
            name: name, op: stage.op, shape: shape, dtype: dtype.rawValue, options: "routing-bench", flops: 0,
            bytes: stage.bytes, bound: nil, peers: []
        ) { backend in try stage.run(backend, try inputs(backend)) }
    }
}
