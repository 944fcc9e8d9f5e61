import OpenCLHost
import Switchyard
import SwitchyardConformance

/// What a result is compared against.
enum Bound: String, Sendable {
    /// Bytes moved: against the best measured bandwidth ceiling.
    case memory
    /// Flops: against the FMA-throughput ceiling.
    case compute
    /// Weight bytes read at decode: against the `clEnqueueCopyBuffer` ceiling (for the MoE
    /// layer at a handful of tokens, when it exists).
    case copy
    /// Bytes read plus written by an op that moves rows (the token ops): against the
    /// `clEnqueueCopyBuffer` ceiling, which counts a copy's bytes the same way.
    case copyTraffic
}

/// One thing the benchmark times: a device launch with its work counted, and how to run the
/// same work on each peer: every conformance case (`conformanceItems`) and the MoE layer at the
/// benchmark shapes (`layerItems`).
struct BenchItem {
    let name: String
    let op: String
    let shape: String
    let dtype: String
    let options: String
    /// Floating-point operations and bytes moved by one run.
    let flops: Double
    let bytes: Double
    /// Forced comparison; nil: memory or compute by arithmetic intensity against the ridge.
    let bound: Bound?
    /// Uploads the inputs to the device backend and returns one run (which enqueues its
    /// launches through the backend, so `recordingLaunches` sees them).
    let prepareDevice: (OpenCLBackend) throws -> () throws -> Void
    /// The peers that run this item, in report order.
    let peers: [any Peer]
    /// For items whose run splits into stages (the MoE layers): one run with per-stage device
    /// times (after `prepareDevice`), timed apart from the plain runs.
    var profiledRun: (() throws -> [StageTime])? = nil
    /// Called once the item is measured: drops what its runs hold (a layer's device weights), so
    /// the items measured before do not add up in memory.
    var finished: (() -> Void)? = nil
    /// The grouped expert matmul inside the item (MoE layers), which the per-expert GEMM peers
    /// are set against.
    var groupedMatmul: GroupedMatmulPart? = nil

    /// Work to time: anything at all moved or computed.
    var hasWork: Bool { flops > 0 || bytes > 0 }

    init(
        name: String, op: String, shape: String, dtype: String, options: String, flops: Double, bytes: Double,
        bound: Bound?, peers: [any Peer], prepareDevice: @escaping (OpenCLBackend) throws -> () throws -> Void
    ) {
        self.name = name
        self.op = op
        self.shape = shape
        self.dtype = dtype
        self.options = options
        self.flops = flops
        self.bytes = bytes
        self.bound = bound
        self.peers = peers
        self.prepareDevice = prepareDevice
    }

    init(_ c: ConformanceCase, peers: [any Peer]) {
        name = c.name
        op = c.op
        shape = c.shape
        dtype = c.dtype.rawValue
        options = c.options
        flops = c.flops
        bytes = c.bytes
        bound = nil
        prepareDevice = { backend in
            let run = try c.prepare(backend)
            return { _ = try run() }
        }
        self.peers = peers
    }
}

/// The items of the registry that match `filter`: cases that must refuse their input and cases
/// with no work (zero rows) are left out; `quick` keeps the largest case per op and dtype.
func conformanceItems(filter: String?, quick: Bool) throws -> [BenchItem] {
    let cases = try Conformance.cases(matching: filter).filter {
        !$0.expectsError && ($0.flops > 0 || $0.bytes > 0) && !$0.isEmpty
    }
    var chosen = cases
    if quick {
        var best: [String: ConformanceCase] = [:]
        var order: [String] = []
        for c in cases {
            let key = "\(c.op) \(c.dtype.rawValue)"
            if let current = best[key] {
                if c.flops + c.bytes > current.flops + current.bytes { best[key] = c }
            } else {
                best[key] = c
                order.append(key)
            }
        }
        chosen = order.map { best[$0]! }
    }
    return chosen.map { c in BenchItem(c, peers: [ReferencePeer(c)]) }
}

/// The grouped expert matmul part of an MoE-layer item: the stages (as `MoELayer.forward`
/// names them) and the flops of the routed rows (the same per-expert GEMM work the peers do).
struct GroupedMatmulPart {
    let stages: [String]
    let flops: Double
    /// Rows routed to each expert in the measured routing (filled by the device run).
    let info: LayerRunInfo
}
