import Foundation
import Switchyard

/// A rate measured in the run above a ceiling it is set against. A ceiling below what a peer
/// (or Switchyard itself) reaches in the same run is a wrong ceiling: an FMA kernel that misses
/// the device's vector width or latency, or a bandwidth figure timed on a cache.
struct CeilingExcess {
    /// The ceiling: "fma" (GFLOP/s) or "read-only" (GB/s of bytes read).
    let ceiling: String
    let ceilingRate: Double
    /// Who beat it: "openblas", "clblast", "torch", "switchyard", "gemm (peer)".
    let by: String
    /// The item it ran ("" for the dense-GEMM figure beside the ceilings).
    let item: String
    /// What was measured, in the ceiling's unit.
    let what: String
    let value: Double
    let unit: String

    var line: String {
        let on = item.isEmpty ? "" : " on \(item)"
        return String(
            format: "WARNING: %@%@ (%@) runs at %@ %@, above the device's %@ ceiling of %@ %@: that ceiling is wrong (below what this hardware reaches)",
            by, on, what, rate(value), unit, ceiling, rate(ceilingRate), unit)
    }

    var json: [String: Any] {
        [
            "ceiling": ceiling, "ceiling_rate": ceilingRate, "by": by, "item": item, "what": what, "rate": value,
            "unit": unit,
        ]
    }
}

/// Every rate of the run that a ceiling should bound and does not:
/// - the FMA ceiling against the dense-GEMM peer (OpenBLAS SGEMM), every compute-bound item
///   (Switchyard), and the prefill MoE layers' peers (OpenBLAS and CLBlast per expert, the
///   GFLOP/s of the grouped matmul's work; PyTorch, the whole layer's);
/// - the read-only ceiling against the decode layers (GB/s of weight bytes, from weights
///   rotated so the last-level cache does not hold them), Switchyard's and each peer's.
/// Memory-bound conformance cases are left out: a small one runs from cache, above any memory
/// ceiling, and that says nothing about the ceiling. The host peers (OpenBLAS, PyTorch) are
/// set against the device's ceilings only when the device is a CPU (`hostPeersShareDevice`):
/// beside a GPU they run on other hardware, except PyTorch when it runs on the GPU itself
/// (`torchSharesDevice`: `LayerPeerOptions.torchOnGPU`).
func ceilingExcesses(_ c: BenchCeilings, results: [ItemResult], hostPeersShareDevice: Bool, torchSharesDevice: Bool = false)
    -> [CeilingExcess]
{
    let d = c.device
    var out: [CeilingExcess] = []
    let hostPeers: Set<String> = ["openblas", "torch", "gemm (peer)"]
    func counts(_ by: String) -> Bool {
        hostPeersShareDevice || !hostPeers.contains(by) || (by == "torch" && torchSharesDevice)
    }
    if let gemm = c.gemm, gemm.gflops > d.fmaGFlops, counts("gemm (peer)") {
        out.append(CeilingExcess(
            ceiling: "fma", ceilingRate: d.fmaGFlops, by: "gemm (peer)", item: "", what: gemm.name,
            value: gemm.gflops, unit: "GFLOP/s"))
    }
    for r in results {
        let label = [r.item.op, r.item.shape, r.item.dtype].filter { !$0.isEmpty }.joined(separator: " ")
        let clock = r.measured.wallClock ? "host clock" : "device events"
        func peerSeconds(_ name: String) -> Double? {
            if case .timed(let s)? = r.peers.first(where: { $0.name == name })?.timing { return s.median }
            return nil
        }
        if r.bound == .copy {
            // Decode: weight bytes read per second against the read-only ceiling.
            guard r.item.bytes > 0 else { continue }
            var rates: [(String, String, Double)] = [("switchyard", "layer, \(clock)", r.gbps)]
            for name in ["openblas", "clblast", "torch"] {
                if let t = peerSeconds(name) { rates.append((name, "weight bytes over its time", r.item.bytes / t / 1e9)) }
            }
            for (by, what, gbps) in rates where gbps > d.readGBps && counts(by) {
                out.append(CeilingExcess(
                    ceiling: "read-only", ceilingRate: d.readGBps, by: by, item: label, what: what, value: gbps,
                    unit: "GB/s"))
            }
            continue
        }
        guard r.bound == .compute, r.item.flops > 0 else { continue }
        var rates: [(String, String, Double)] = [("switchyard", clock, r.gflops)]
        if let part = r.item.groupedMatmul, let profile = r.profile, let grouped = profile.median(of: part.stages) {
            rates.append(("switchyard", "grouped matmul, device events", part.flops / grouped / 1e9))
            for name in ["openblas", "clblast"] {
                if let t = peerSeconds(name) { rates.append((name, "per-expert SGEMM loop", part.flops / t / 1e9)) }
            }
        }
        if let t = peerSeconds("torch") { rates.append(("torch", "whole layer", r.item.flops / t / 1e9)) }
        for (by, what, gflops) in rates where gflops > d.fmaGFlops && counts(by) {
            out.append(CeilingExcess(
                ceiling: "fma", ceilingRate: d.fmaGFlops, by: by, item: label, what: what, value: gflops,
                unit: "GFLOP/s"))
        }
    }
    return out
}
