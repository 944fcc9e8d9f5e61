import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance
import SwitchyardExamples

/// The conditional-computation example stacks of `switchyard run` (issue 16) at their default
/// sizes — mod-tiny B 4 × L 1024 (d 256, ffn 1024, 4 blocks, capacity 12.5 %) and soft-moe-tiny
/// B 4 × L 256 (d 256, 8 experts of ffn 512 with 16 slots each, 4 blocks) and early-exit-tiny
/// B 4 × L 1024 (d 256, ffn 1024, 4 blocks with 100-class exit heads) — each as two rows, the
/// dynamic stack and the same stack run densely, in GFLOP/s of the FLOPs each computes (dynamic:
/// the capacity's rows, routers, Soft MoE's dispatch and combine, early exit's active rows and
/// heads; dense: every row). Their ratio
/// of times is the speedup `switchyard run` reports. Too large for the reference: no peer
/// (`switchyard run --check` and the tests check the same code at the same or smaller sizes).
func exampleItems(filter: String?, quick: Bool, device: Device) throws -> [BenchItem] {
    let regex = try filter.flatMap { $0.isEmpty ? nil : try Regex($0) }
    var items: [BenchItem] = []
    for name in ConditionalExample.named.keys.sorted() {
        let example = ConditionalExample.named[name]!
        for dtype in quick ? [DType.f32] : [.f32, .bf16] {
            let shape = ExampleShape(batch: example.defaultBatch, length: example.defaultLength, dtype: dtype)
            let (b, l) = (Double(shape.batch), Double(shape.length))
            // The FLOPs of each forward as the stacks account them (the capacity's rows: a device
            // that chose fewer would show as a higher rate here; `run` counts the rows read back).
            let dense: (flops: Double, bytes: Double)
            let dynamic: (flops: Double, bytes: Double)
            let size = Double(dtype.size)
            switch name {
            case "mod-tiny":
                let c = MixtureOfDepthsConfig.tiny
                let rows = Double(try TokenCapacity.ratio(c.capacity).resolve(length: shape.length))
                let blocks = Double(c.blocks)
                let weights = blocks * Double(3 * c.ffn * c.hidden) * size
                let x = b * l * Double(c.hidden) * size
                dense = (blocks * b * l * c.flopsPerRow, weights + blocks * 2 * x)
                dynamic = (blocks * (b * rows * c.flopsPerRow + 2 * b * l * Double(c.hidden)), weights + blocks * 3 * x)
            case "soft-moe-tiny":
                let c = SoftMoEStackConfig.tiny
                let (blocks, e, n, h) = (Double(c.blocks), Double(c.layer.experts), Double(c.layer.slots), Double(c.layer.hidden))
                let weights = blocks * (e * 3 * Double(c.layer.ffn) * h + n * h) * size
                let x = b * l * h * size
                dense = (blocks * (b * l * e * c.flopsPerRow + 2 * b * l * h * e), weights + blocks * 2 * x)
                dynamic = (blocks * (b * n * c.flopsPerRow + b * 6 * l * n * h), weights + blocks * 2 * x)
            case "early-exit-tiny":
                let names = ["dynamic", "dense"].map { "\(name) B=\(shape.batch) L=\(shape.length) \(dtype.rawValue) \($0) example-bench" }
                if let regex, !names.contains(where: { $0.contains(regex) }) { continue }
                // The rows each block computes depend on who left before it: counted from one
                // dynamic forward on the benchmarked device (the active counts it read back).
                let c = EarlyExitConfig.tiny
                let stack = try EarlyExitStack(backend: try OpenCLBackend(device: device), config: c, shape: shape)
                let account = try stack.account(try stack.forwardDynamic(try stack.input()))
                let weights = Double(c.blocks) * Double(3 * c.ffn * c.hidden + c.classes * c.hidden) * size
                let h = Double(c.hidden) * size
                let rows = Double(account.computedRows.reduce(0, +))
                dense = (account.denseFLOPs, weights + Double(c.blocks) * b * l * (3 * h + 4 * Double(c.classes)))
                dynamic = (account.dynamicFLOPs, weights + rows * (3 * h + 4 * Double(c.classes)))
            default:
                continue
            }
            let shapeText = "B=\(shape.batch) L=\(shape.length)"
            for (mode, work) in [("dynamic", dynamic), ("dense", dense)] {
                let itemName = "\(name) \(shapeText) \(dtype.rawValue) \(mode) example-bench"
                if let regex, !itemName.contains(regex) { continue }
                items.append(BenchItem(
                    name: itemName, op: "\(name) \(mode)", shape: shapeText, dtype: dtype.rawValue,
                    options: "example-bench", flops: work.flops, bytes: work.bytes, bound: .compute, peers: []
                ) { backend in
                    let s = try example.make(backend, shape)
                    let x = try s.input()
                    try backend.synchronize()
                    if mode == "dense" { return { _ = try s.forwardDense(x) } }
                    return { _ = try s.forwardDynamic(x) }
                })
            }
        }
    }
    return items
}
