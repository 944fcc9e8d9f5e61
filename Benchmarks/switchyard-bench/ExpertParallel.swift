import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance
import SwitchyardMPI

/// `mpirun -np P switchyard-bench --ep`: the expert-parallel layer at the benchmark shapes
/// (mixtral-small T 2048, deepseek-like T 4096; f32; `--quick`: mixtral-small only), experts in
/// contiguous blocks and tokens split evenly over the ranks. Rank 0 prints a row per layer: the
/// slowest rank's median forward split into compute, staging and exchange, the layer's GFLOP/s,
/// each rank's exchange rate (bytes sent and received between ranks over its time in MPI), and
/// the bytes per token sent between ranks against the least possible; `--json` writes the rows
/// with every rank's figures.
func runExpertParallelBench(device: String?, quick: Bool, runs: Int, json: String?) throws {
    let comm = try Communicator.world()
    let backend = try OpenCLBackend(device: try Device.select(device))
    var specs: [(name: String, config: MoEConfig, tokens: Int)] = [("mixtral-small", .mixtralSmall, 2048)]
    if !quick { specs.append(("deepseek-like", .deepSeekLike, 4096)) }
    if comm.rank == 0 {
        let d = backend.device
        print("device: \(d.name) (\(d.kind.rawValue), \(d.platformName), driver \(d.driverVersion)); \(comm.size) ranks, one context each")
        print("layer                      ranks  layer ms  compute ms  staging ms  exchange ms  GFLOP/s  exchange GB/s/rank  "
            + "rows max/mean  bytes/token  least")
    }
    struct Row: Codable {
        var layer: String
        var tokens: Int
        var dtype: String
        var gflops: Double
        var exchangeGBPerSecondPerRank: Double
        var measurement: ExpertParallelMeasurement
    }
    var rows: [Row] = []
    for s in specs {
        let c = s.config
        let placement = try ExpertPlacement.contiguous(experts: c.experts, ranks: comm.size)
        let all = try MoEWeights.random(config: c, backend: backend, dtype: .f32, seed: 20_261_124)
        let weights = try ExpertParallelMoELayer.localWeights(
            from: all, experts: placement.experts(onRank: comm.rank), backend: backend)
        let layer = try ExpertParallelMoELayer(backend: backend, config: c, communicator: comm, weights: weights)
        let first = comm.rank * s.tokens / comm.size
        let count = (comm.rank + 1) * s.tokens / comm.size - first
        var g = SeededGenerator(seed: 20_261_124 ^ 0xABCD)
        let x = Array(g.normals(s.tokens * c.hidden)[(first * c.hidden)..<((first + count) * c.hidden)])
        let (m, _) = try layer.measure(try backend.tensor(x, shape: [count, c.hidden], dtype: .f32), iterations: runs)
        let rates = m.ranks.filter { $0.exchangeSeconds > 0 && $0.bytesToOthers > 0 }
            .map { 2 * Double($0.bytesToOthers) / $0.exchangeSeconds / 1e9 }
        let rate = rates.isEmpty ? 0 : rates.reduce(0, +) / Double(rates.count)
        let row = Row(
            layer: s.name, tokens: s.tokens, dtype: "f32", gflops: c.flops(tokens: s.tokens) / m.layerSeconds / 1e9,
            exchangeGBPerSecondPerRank: rate, measurement: m)
        rows.append(row)
        let slow = m.ranks[m.slowest]
        if comm.rank == 0 {
            print("\(s.name) T=\(s.tokens) f32".padding(toLength: 26, withPad: " ", startingAt: 0)
                + String(format: " %5d  %8.2f  %10.2f  %10.2f  %11.2f  %7.1f  %18.2f  %13.2f  %11.0f  %5.0f",
                         comm.size, m.layerSeconds * 1e3, slow.computeSeconds * 1e3,
                         slow.stagingSeconds * 1e3, slow.exchangeSeconds * 1e3, row.gflops, rate, m.imbalance,
                         m.bytesPerToken, m.leastBytesPerToken))
        }
    }
    if comm.rank == 0, let json {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(rows).write(to: URL(fileURLWithPath: json))
    }
    try comm.barrier()
    try Communicator.finalize()
}
