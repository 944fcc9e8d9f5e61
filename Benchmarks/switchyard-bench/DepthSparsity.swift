import Foundation
import OpenCLHost
@_spi(Profiling) import Switchyard
import SwitchyardConformance

/// The depth-sparsity ops at the shapes of issue 16: one `halting` step over N = 8 · 4096 tokens
/// of d = 1024 (every token running: the packed rows are all N), and one `earlyExit` over
/// N = 8 · 4096 samples of 1,000 classes, f32 and bf16, in GB/s against the copy ceiling (a step
/// reads the accumulator and writes it, reads h; an exit reads the logits). Too large for the
/// reference, so no peer; conformance checks the same kernels at smaller shapes.
func depthItems(filter: String?, quick: Bool) throws -> [BenchItem] {
    let (n, d, classes) = (8 * 4096, 1024, 1000)
    let regex = try filter.flatMap { $0.isEmpty ? nil : try Regex($0) }
    var items: [BenchItem] = []
    /// `stages` names each launch's stage: the item then also reports per-stage device times.
    func add(_ op: String, _ shape: String, _ options: String, _ dtype: DType, _ bytes: Double, _ flops: Double,
             stages: [String]? = nil, stageOf: @escaping (String) -> String = { _ in "" },
             _ prepare: @escaping (OpenCLBackend) throws -> () throws -> Void) {
        let name = "\(op) \(shape) \(dtype.rawValue) \(options) depth-bench"
        if let regex, !name.contains(regex) { return }
        var prepared: (OpenCLBackend, () throws -> Void)?
        var item = BenchItem(
            name: name, op: op, shape: shape, dtype: dtype.rawValue, options: "\(options) depth-bench", flops: flops,
            bytes: bytes, bound: .copyTraffic, peers: []
        ) { backend in
            let run = try prepare(backend)
            prepared = (backend, run)
            return run
        }
        if let stages {
            item.profiledRun = {
                guard let (backend, run) = prepared else { throw BenchError("\(name): profiled run before the device run") }
                let (_, launches) = try backend.recordingLaunches { try run() }
                try backend.synchronize()
                var times = Dictionary(uniqueKeysWithValues: stages.map { ($0, 0.0) })
                for launch in launches { times[stageOf(launch.kernel), default: 0] += try launch.event.seconds() }
                return stages.map { StageTime(stage: $0, seconds: times[$0] ?? 0) }
            }
            item.finished = { prepared = nil }
        }
        items.append(item)
    }
    for dtype in quick ? [DType.f32] : [.f32, .bf16] {
        let config = HaltingConfig(maxSteps: 8)
        let h = Halting(tokens: n, width: d, probabilityDType: dtype, dtype: dtype, accumulatorDType: dtype, config: config)
        add("halting", "N=\(n) d=\(d)", "step 1 all running", dtype, h.bytes, h.flops) { backend in
            var g = SeededGenerator(seed: stableSeed("halting bench \(dtype)"))
            let p = try backend.tensor((0..<n).map { _ in Float(g.unit() * 0.6) }, shape: [n], dtype: dtype)
            let x = try backend.tensor(g.normals(n * d), shape: [n, d], dtype: dtype)
            let state = try backend.haltingState(tokens: n, width: d, dtype: dtype)
            try backend.synchronize()
            return { _ = try backend.halting(p, h: x, state: state, config: config) }
        }
        let criterion = ExitCriterion.maxProbability(0.9)
        // Stages: the row statistics (the logits read) and the state (the per-sample update,
        // the compaction and the histogram). At this threshold almost no sample of these logits
        // exits, and a sample that provably stays skips the exps (Kernels/early_exit.cl); the
        // last exit, where every sample exits, takes the full softmax statistics of every row.
        for last in quick ? [false] : [false, true] {
            let e = EarlyExit(samples: n, classes: classes, dtype: dtype, heads: 4, criterion: criterion, last: last)
            add("early_exit", "N=\(n) classes=\(classes)", "\(criterion)\(last ? " last" : "")", dtype, e.bytes, e.flops,
                stages: ["rows", "state"], stageOf: { $0.hasPrefix("early_exit_rows") ? "rows" : "state" }) { backend in
                var g = SeededGenerator(seed: stableSeed("early exit bench \(dtype)"))
                let logits = try backend.tensor(g.normals(n * classes, scale: 3), shape: [n, classes], dtype: dtype)
                let state = try backend.exitState(samples: n, classes: classes, heads: 4, probabilities: nil)
                try backend.synchronize()
                return { _ = try backend.earlyExit(logits, state: state, criterion: criterion, last: last) }
            }
        }
    }
    return items
}
