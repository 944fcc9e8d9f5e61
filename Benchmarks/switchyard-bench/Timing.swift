import Foundation
import OpenCLHost
@_spi(Profiling) import Switchyard

/// Order statistics of a set of timings (seconds).
struct Stats: Sendable {
    let samples: [Double]
    let sorted: [Double]

    init(_ samples: [Double]) {
        precondition(!samples.isEmpty, "statistics of no samples")
        self.samples = samples
        sorted = samples.sorted()
    }

    /// Linear interpolation between the closest ranks.
    func quantile(_ q: Double) -> Double {
        let position = q * Double(sorted.count - 1)
        let lower = Int(position.rounded(.down))
        let upper = Swift.min(lower + 1, sorted.count - 1)
        let t = position - Double(lower)
        return sorted[lower] * (1 - t) + sorted[upper] * t
    }

    var median: Double { quantile(0.5) }
    var min: Double { sorted.first! }
    var max: Double { sorted.last! }
    var q1: Double { quantile(0.25) }
    var q3: Double { quantile(0.75) }
    var count: Int { samples.count }
}

/// How many runs to time.
struct RunPolicy: Sendable {
    /// Untimed runs after the first launch.
    var warmups: Int
    /// At least this many timed runs ...
    var minRuns: Int
    /// ... and more until this much device time has accumulated ...
    var deviceSeconds: Double
    /// ... but never more than this many runs, nor past this much wall-clock time once
    /// `minRuns` are done.
    var maxRuns: Int
    var wallSeconds: Double
    /// Time each run on the host clock (run + synchronize) instead of summing its launches'
    /// events: for a device whose profiling events are implausible (rusticl on llvmpipe reports
    /// next to nothing; the ceilings found it). Stage times are then not available.
    var wallClock = false

    static func standard(runs: Int) -> RunPolicy {
        RunPolicy(warmups: 3, minRuns: runs, deviceSeconds: 0.2, maxRuns: Swift.max(runs, 500), wallSeconds: 3)
    }

    static func quick(runs: Int) -> RunPolicy {
        RunPolicy(warmups: 2, minRuns: runs, deviceSeconds: 0.05, maxRuns: Swift.max(runs, 100), wallSeconds: 0.5)
    }
}

/// A peer's timing, or why there is none.
enum PeerTiming {
    case timed(Stats)
    case skipped(String)
    case failed(String)
}

/// One item's measurements set against the ceiling it is compared with.
struct ItemResult {
    let measured: Measured
    let bound: Bound
    let ceilingName: String
    let ceiling: Double
    /// The read-only stream ceiling (decode rows are also given against it: they read weights
    /// and write little, while copy counts a read and a write).
    var readCeiling: Double = 0

    var item: BenchItem { measured.item }
    /// Percent of the read-only ceiling (decode rows).
    var percentOfRead: Double { readCeiling > 0 ? 100 * gbps / readCeiling : .nan }
    /// Wall-clock seconds of the first run (program builds and the driver's first-launch
    /// compile for this local size included).
    var firstSeconds: Double { measured.firstSeconds }
    /// Device seconds per run: the sum of the event durations of the run's launches.
    var device: Stats { measured.device }
    /// Kernel launches per run, and their names.
    var kernels: [String] { measured.kernels }
    var peers: [(name: String, timing: PeerTiming)] { measured.peers }
    /// Per-stage device times and the wall clock (items with a `profiledRun`).
    var profile: StageProfile? { measured.profile }

    var gflops: Double { item.flops / device.median / 1e9 }
    var gbps: Double { item.bytes / device.median / 1e9 }
    /// The achieved rate in the ceiling's unit.
    var rate: Double { bound == .compute ? gflops : gbps }
    var percent: Double { 100 * rate / ceiling }
}

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }

/// An item's timings, before they are set against the ceilings.
struct Measured {
    let item: BenchItem
    let firstSeconds: Double
    let device: Stats
    let kernels: [String]
    let peers: [(name: String, timing: PeerTiming)]
    let profile: StageProfile?
    /// Whether `device` was timed on the host clock (`RunPolicy.wallClock`).
    var wallClock = false

    /// The result against `ceilings`: memory- or compute-bound by arithmetic intensity against
    /// the ridge point, unless the item says which.
    func result(against ceilings: BenchCeilings) -> ItemResult {
        let bound: Bound
        if let forced = item.bound {
            bound = forced
        } else if item.bytes == 0 || item.flops / item.bytes >= ceilings.device.ridgeFlopsPerByte {
            bound = .compute
        } else {
            bound = .memory
        }
        let (ceilingName, ceiling): (String, Double) =
            switch bound {
            case .memory: (ceilings.device.bandwidthName, ceilings.device.bandwidthGBps)
            case .compute: (ceilings.device.fmaKernel, ceilings.device.fmaGFlops)
            case .copy, .copyTraffic: (ceilings.device.copyName, ceilings.device.copyGBps)
            }
        return ItemResult(
            measured: self, bound: bound, ceilingName: ceilingName, ceiling: ceiling,
            readCeiling: ceilings.device.readGBps)
    }
}

/// Times `item` on `backend`: a first run on the wall clock, warm-ups, then timed runs by
/// device events; then each peer on the wall clock.
func measure(_ item: BenchItem, on backend: OpenCLBackend, policy: RunPolicy, peerBudget: Double) throws -> Measured {
    let run = try item.prepareDevice(backend)
    try backend.synchronize()

    let start = now()
    try run()
    try backend.synchronize()
    let firstSeconds = now() - start

    for _ in 0..<policy.warmups { try run() }
    try backend.synchronize()

    var samples: [Double] = []
    var kernels: [String] = []
    var accumulated = 0.0
    let began = now()
    while samples.count < policy.maxRuns {
        let start = now()
        let (_, launches) = try backend.recordingLaunches { try run() }
        var seconds = 0.0
        for launch in launches { seconds += try launch.event.seconds() }
        if policy.wallClock {
            try backend.synchronize()
            seconds = now() - start
        }
        if kernels.isEmpty { kernels = launches.map(\.kernel) }
        samples.append(seconds)
        accumulated += seconds
        if samples.count >= policy.minRuns && (accumulated >= policy.deviceSeconds || now() - began >= policy.wallSeconds) {
            break
        }
    }
    let device = Stats(samples)

    // Items that can say how their run splits into stages (the MoE layers): profiled runs on
    // their own, per-stage device times and the wall clock of a run with its synchronization.
    var profile: StageProfile?
    if let profiled = item.profiledRun {
        var stages: [String: [Double]] = [:]
        var order: [String] = []
        var wall: [Double] = []
        for _ in 0..<max(policy.minRuns, min(samples.count, 20)) {
            let start = now()
            let times = try profiled()
            try backend.synchronize()
            wall.append(now() - start)
            for t in times where !policy.wallClock {
                if stages[t.stage] == nil { order.append(t.stage) }
                stages[t.stage, default: []].append(t.seconds)
            }
        }
        profile = StageProfile(stages: order.map { ($0, Stats(stages[$0]!)) }, wall: Stats(wall))
    }

    var peers: [(name: String, timing: PeerTiming)] = []
    for peer in item.peers {
        peers.append((peer.name, peer.measure(budget: peerBudget)))
    }
    item.finished?()

    return Measured(
        item: item, firstSeconds: firstSeconds, device: device, kernels: kernels, peers: peers, profile: profile,
        wallClock: policy.wallClock)
}

/// An item's run split into stages: each stage's device time (sum of its launches' events) and
/// the wall clock of a whole run including its synchronization, over separate profiled runs.
struct StageProfile {
    let stages: [(name: String, stats: Stats)]
    let wall: Stats

    /// The median device seconds of the named stages, summed; nil when one is missing.
    func median(of names: [String]) -> Double? {
        var total = 0.0
        for name in names {
            guard let s = stages.first(where: { $0.name == name }) else { return nil }
            total += s.stats.median
        }
        return total
    }
}

/// Times a peer on the wall clock by its policy: warm-ups, then at least `minRuns` and at most
/// `maxRuns` runs, stopping early once the runs so far and one more would pass the policy's
/// seconds (half of `budget` unless the policy says); none when its estimate is over `budget`
/// and the policy follows it.
func timePeer(_ peer: any Peer, budget: Double) -> PeerTiming {
    let policy = peer.policy
    if policy.followsBudget, let estimate = peer.estimatedSeconds(), estimate > budget {
        return .skipped(String(format: "estimated %.1f s", estimate))
    }
    let limit = policy.seconds ?? budget / 2
    do {
        let run = try peer.prepare()
        for _ in 0..<policy.warmups { try run() }
        var samples: [Double] = []
        var total = 0.0
        while samples.count < max(policy.maxRuns, 1) {
            let start = now()
            try run()
            let seconds = now() - start
            samples.append(seconds)
            total += seconds
            if total + seconds > limit && samples.count >= policy.minRuns { break }
        }
        return .timed(Stats(samples))
    } catch {
        return .failed("\(error)")
    }
}
