import COpenBLAS
import Foundation
import Switchyard
import SwitchyardConformance

/// Something a user could run instead of Switchyard for the same work, timed in the same run:
/// the CPU reference (every case), and for the MoE layers OpenBLAS and CLBlast SGEMM once per
/// expert beside the grouped matmul (`ExpertLoopPeers.swift`) and PyTorch eager running the
/// whole layer in a process of its own (`TorchPeer.swift`).
protocol Peer {
    var name: String { get }
    /// What the peer's time is set against: the item's whole run, or only the grouped expert
    /// matmul stages of an MoE layer.
    var scope: PeerScope { get }
    /// How many runs to time.
    var policy: PeerPolicy { get }
    /// A rough guess of one run's wall-clock seconds, if the peer can tell before running
    /// (used to skip peers that would take too long); nil when unknown.
    func estimatedSeconds() -> Double?
    /// Prepares the inputs and returns one run (wall-clock timed by the caller).
    func prepare() throws -> () throws -> Void
    /// The peer's timing within `budget` seconds (`--peer-budget`, for peers whose policy
    /// follows it). The default times `prepare()`'s run on the wall clock (`timePeer`); a peer
    /// that times itself (another process) replaces it.
    func measure(budget: Double) -> PeerTiming
}

/// What a peer's time is compared with.
enum PeerScope: String, Sendable {
    /// The item's run as a whole.
    case item
    /// The grouped expert matmul stages (gate|up with SwiGLU, and down) of an MoE layer.
    case groupedMatmul = "grouped_matmul"
}

/// How many wall-clock runs of a peer to time.
struct PeerPolicy: Sendable {
    /// Untimed runs first (thread start, first-call compiles, page faults).
    var warmups = 0
    /// At least this many timed runs ...
    var minRuns = 1
    /// ... and at most this many ...
    var maxRuns = 3
    /// ... stopping once the timed runs so far and one more would pass this many seconds (nil:
    /// half of `--peer-budget`).
    var seconds: Double? = nil
    /// Whether the peer is skipped when its estimate is over `--peer-budget`.
    var followsBudget = true

    /// The reference: up to 3 runs within half the budget, skipped when estimated over it.
    static let budgeted = PeerPolicy()
}

extension Peer {
    var scope: PeerScope { .item }
    var policy: PeerPolicy { .budgeted }
    func measure(budget: Double) -> PeerTiming { timePeer(self, budget: budget) }
}

/// The CPU reference backend: plain loops with Double accumulation, single-threaded. It is the
/// definition, not a fast implementation; it shows what the device buys over a naive loop.
struct ReferencePeer: Peer {
    let c: ConformanceCase
    init(_ c: ConformanceCase) { self.c = c }

    var name: String { "reference" }

    /// About 50 M elementary operations a second for the Double-accumulating loops (bytes
    /// stand in for element visits where an op has no flops).
    func estimatedSeconds() -> Double? { (c.flops + c.bytes) / 5e7 }

    func prepare() throws -> () throws -> Void {
        let backend = ReferenceBackend()
        let run = try c.prepare(backend)
        return { _ = try run() }
    }
}

/// A peer given by closures (the reference running a whole layer, say).
struct ClosurePeer: Peer {
    let name: String
    let estimate: Double?
    let make: () throws -> () throws -> Void

    init(name: String, estimate: Double?, prepare: @escaping () throws -> () throws -> Void) {
        self.name = name
        self.estimate = estimate
        self.make = prepare
    }

    func estimatedSeconds() -> Double? { estimate }
    func prepare() throws -> () throws -> Void { try make() }
}

/// The dense-GEMM figure beside the FMA ceiling: OpenBLAS SGEMM (all its threads) on square
/// f32 matrices of seeded random values, the best of a few wall-clock runs.
struct GemmCeiling {
    let gflops: Double
    /// What ran: "OpenBLAS 0.3.x SGEMM n=2048 (core Haswell, 2 threads)".
    let name: String
}

func measureGemmCeiling(quick: Bool) -> GemmCeiling {
    let n = quick ? 1024 : 2048
    var g = SeededGenerator(seed: 0x6E6D)
    let a = (0..<n * n).map { _ in Float(g.unit()) - 0.5 }
    let b = (0..<n * n).map { _ in Float(g.unit()) - 0.5 }
    var c = [Float](repeating: 0, count: n * n)
    let n32 = Int32(n)
    func sgemm() -> Double {
        let start = now()
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                c.withUnsafeMutableBufferPointer { c in
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasTrans, n32, n32, n32, 1, a.baseAddress, n32, b.baseAddress,
                        n32, 0, c.baseAddress, n32)
                }
            }
        }
        return now() - start
    }
    _ = sgemm()  // warm-up: thread start, page faults
    var best = Double.infinity
    var total = 0.0
    for run in 0..<10 {
        let t = sgemm()
        best = min(best, t)
        total += t
        if run >= 2 && total > (quick ? 0.3 : 1.5) { break }
    }
    let core = openblas_get_corename().map { String(cString: $0) } ?? "?"
    let name = "OpenBLAS SGEMM n=\(n) (core \(core), \(openblas_get_num_threads()) threads)"
    return GemmCeiling(gflops: 2 * Double(n) * Double(n) * Double(n) / best / 1e9, name: name)
}
