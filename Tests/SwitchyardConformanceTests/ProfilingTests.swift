import Foundation
import Synchronization
import OpenCLHost
@_spi(Profiling) import Switchyard
import SwitchyardConformance
import Testing

@Suite("Profiling")
struct ProfilingTests {
    /// Two threads profiling forwards on one backend each see only their own launches.
    @Test func recordingsFromTwoThreadsDoNotMix() throws {
        let backend = try OpenCLBackend()
        let config = MoEConfig.mixtralTiny
        let layer = try MoELayer(
            backend: backend, config: config,
            weights: try MoEWeights.random(config: config, backend: backend, dtype: .f32, seed: 3))
        var g = SeededGenerator(seed: 4)
        let x = try backend.tensor(g.normals(40 * config.hidden), shape: [40, config.hidden], dtype: .f32)
        let single = try backend.recordingLaunches { try layer.forward(x) }.1.count
        #expect(single > 0)
        let counts = Mutex<[Int]>([])
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            for _ in 0..<5 {
                let n = (try? backend.recordingLaunches { try layer.forward(x) }.1.count) ?? -1
                counts.withLock { $0.append(n) }
            }
        }
        #expect(counts.withLock { $0 }.allSatisfy { $0 == single }, "launches per recorded forward: \(counts.withLock { $0 })")
    }
}
