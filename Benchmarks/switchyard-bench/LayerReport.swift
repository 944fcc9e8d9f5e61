import COpenBLAS
import Foundation

/// One line naming the MoE-layer peers and how they run.
func peerSummary(threads: Int, skip: Set<String>, torchOnGPU: Bool = false) -> String {
    var parts: [String] = []
    if !skip.contains("openblas") {
        let config = openblas_get_config().map { String(cString: $0) } ?? "OpenBLAS"
        let version = config.split(separator: " ").prefix(2).joined(separator: " ")
        parts.append("\(version) SGEMM per expert (core \(openBLASCoreName()): \(openBLASCoreSource); \(openblas_get_num_threads()) threads)")
    }
    if !skip.contains("clblast") { parts.append("CLBlast SGEMM per expert (own context and queue on this device)") }
    if !skip.contains("torch") {
        if let why = TorchPeer.unavailable {
            parts.append("PyTorch eager: skipped (\(why))")
        } else if torchOnGPU {
            parts.append("PyTorch \(TorchPeer.version) eager on \(TorchPeer.cudaDevice ?? "the GPU") (CUDA, each unquantized plain-SwiGLU layer in its dtype, "
                + "wall clock to torch.cuda.synchronize())")
        } else {
            parts.append("PyTorch \(TorchPeer.version) eager (\(threads) threads; the faster of OpenMP's default and PASSIVE wait policies)")
        }
    }
    let scope = torchOnGPU && !skip.contains("torch") ? "f32 layers; PyTorch on the GPU: unquantized plain-SwiGLU layers" : "f32 layers"
    return "MoE-layer peers (\(scope)): " + (parts.isEmpty ? "none" : parts.joined(separator: "; "))
}

private func median(_ timing: PeerTiming?) -> Double? {
    if case .timed(let s)? = timing { return s.median }
    return nil
}

private func peerText(_ timing: PeerTiming?) -> String {
    switch timing {
    case .timed(let s)?: ms(s.median)
    case .skipped?: "skipped"
    case .failed?: "failed"
    case nil: "-"
    }
}

/// The MoE layers beside their peers, or nil when no layer has any: the grouped expert matmul
/// against SGEMM once per expert (OpenBLAS, CLBlast), and the whole layer against PyTorch eager.
func layerPeerTables(_ results: [ItemResult], torchOnGPU: Bool = false) -> String? {
    let layers = results.filter { $0.item.groupedMatmul != nil && $0.profile != nil }
    let withPeers = layers.filter { r in r.item.peers.contains { $0.scope == .groupedMatmul || $0.name == "torch" } }
    guard !withPeers.isEmpty else { return nil }
    var out: [String] = []

    var rows: [[String]] = [[
        "layer", "dtype", "rows/expert", "gate|up ms", "down ms", "grouped ms", "GFLOP/s", "OpenBLAS ms", "GFLOP/s",
        "SY/OpenBLAS", "CLBlast ms", "GFLOP/s", "SY/CLBlast",
    ]]
    // (Layers whose only peer is PyTorch, on a GPU, have no per-expert GEMM row.)
    for r in withPeers where r.item.peers.contains(where: { $0.scope == .groupedMatmul }) {
        guard let part = r.item.groupedMatmul, let profile = r.profile, let grouped = profile.median(of: part.stages)
        else { continue }
        let counts = part.info.counts
        let spread = counts.isEmpty ? "-" : "\(counts.min()!)–\(counts.max()!)"
        var row = [
            r.item.shape, r.item.dtype, spread, ms(profile.median(of: [part.stages[0]]) ?? 0),
            ms(profile.median(of: Array(part.stages.dropFirst())) ?? 0), ms(grouped), rate(part.flops / grouped / 1e9),
        ]
        for name in ["openblas", "clblast"] {
            let timing = r.peers.first { $0.name == name }?.timing
            row.append(peerText(timing))
            if let t = median(timing) {
                row += [rate(part.flops / t / 1e9), String(format: "%.2f", t / grouped)]
            } else {
                row += ["-", "-"]
            }
        }
        rows.append(row)
    }
    out.append(table(rows, rightAligned: Set(3...12)))
    out.append(
        "grouped: Switchyard's gate|up (gather and SwiGLU fused) and down stages, device events; OpenBLAS/CLBlast: "
            + "the same two GEMMs once per expert over the same per-expert rows (no gather, no SwiGLU), wall clock; "
            + "GFLOP/s of the routed rows; SY/peer: Switchyard's rate over the peer's (above 1: Switchyard faster)")

    rows = [["layer", "dtype", "device ms", "wall ms", "torch ms", "SY/torch"]]
    for r in withPeers {
        guard let profile = r.profile else { continue }
        let timing = r.peers.first { $0.name == "torch" }?.timing
        rows.append([
            r.item.shape, r.item.dtype, ms(r.device.median), ms(profile.wall.median), peerText(timing),
            median(timing).map { String(format: "%.2f", $0 / profile.wall.median) } ?? "-",
        ])
    }
    out.append("")
    out.append(table(rows, rightAligned: Set(2...5)))
    out.append(
        "whole layer: device ms = sum of its launches' events; wall ms = forward + synchronize on the host clock; "
            + (torchOnGPU
                ? "torch: PyTorch eager, same layer on the GPU in its dtype, wall clock to torch.cuda.synchronize(); "
                : "torch: PyTorch eager, same layer and threads, wall clock; ")
            + "SY/torch: torch ms / wall ms")
    return out.joined(separator: "\n")
}

/// JSON fields of an MoE layer's stages and its peers' comparisons (empty for other items).
func layerPeerJSON(_ r: ItemResult) -> [String: Any] {
    guard let profile = r.profile else { return [:] }
    var fields: [String: Any] = [
        "wall_ms": profile.wall.median * 1e3,
        "stages_ms": Dictionary(uniqueKeysWithValues: profile.stages.map { ($0.name, $0.stats.median * 1e3) }),
        "peer_scope": Dictionary(uniqueKeysWithValues: r.item.peers.map { ($0.name, $0.scope.rawValue) }),
    ]
    if let part = r.item.groupedMatmul, let grouped = profile.median(of: part.stages) {
        var peers: [String: Any] = [:]
        for p in r.item.peers where p.scope == .groupedMatmul {
            guard let t = median(r.peers.first(where: { $0.name == p.name })?.timing) else { continue }
            peers[p.name] = [
                "ms": t * 1e3, "gflops": part.flops / t / 1e9, "switchyard_over_peer": t / grouped,
            ] as [String: Any]
        }
        fields["grouped_matmul"] = [
            "stages": part.stages, "flops": part.flops, "median_ms": grouped * 1e3,
            "gflops": part.flops / grouped / 1e9, "rows_per_expert": part.info.counts, "peers": peers,
        ] as [String: Any]
    }
    if let t = median(r.peers.first(where: { $0.name == "torch" })?.timing) {
        fields["torch_over_wall"] = t / profile.wall.median
    }
    return fields
}
