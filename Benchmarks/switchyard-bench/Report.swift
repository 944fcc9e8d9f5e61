import Foundation
import OpenCLHost
import Switchyard

func table(_ rows: [[String]], rightAligned: Set<Int> = []) -> String {
    guard let first = rows.first else { return "" }
    var widths = [Int](repeating: 0, count: first.count)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in
            let pad = String(repeating: " ", count: widths[i] - cell.count)
            return rightAligned.contains(i) ? pad + cell : cell + pad
        }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
    }.joined(separator: "\n")
}

/// Milliseconds with about three significant digits.
func ms(_ seconds: Double) -> String {
    let m = seconds * 1e3
    if m >= 100 { return String(format: "%.0f", m) }
    if m >= 10 { return String(format: "%.1f", m) }
    if m >= 1 { return String(format: "%.2f", m) }
    return String(format: "%.3f", m)
}

func rate(_ value: Double) -> String {
    value >= 100 ? String(format: "%.0f", value) : value >= 10 ? String(format: "%.1f", value) : String(format: "%.2f", value)
}

func ceilingTable(_ c: BenchCeilings, hostPeersShareDevice: Bool) -> String {
    let d = c.device
    var rows: [[String]] = [["ceiling", "timed", "best", "median", "unit", "clock"]]
    let fmaShape = "\(d.fmaChains) × float\(d.fmaVectorWidth == 1 ? "" : String(d.fmaVectorWidth)) chains, \(d.fmaWorkItems) work-items"
    let labels = [
        "copy", "stream", d.nonTemporalStores ? "stream (non-temporal)" : "stream (NT unavailable: plain)",
        "fma (\(fmaShape))", "read-only (bytes read)",
    ]
    for (label, m) in zip(labels, d.measurements) {
        rows.append([label, m.name, rate(m.best), rate(m.median), m.unit, m.clock])
    }
    if let gemm = c.gemm {
        rows.append(["gemm (peer)", gemm.name, rate(gemm.gflops), "-", "GFLOP/s", "wall clock"])
    } else {
        rows.append(["gemm (peer)", "(not measured)", "-", "-", "GFLOP/s", "-"])
    }
    let mib = d.bufferBytes >> 20
    var lines = [
        table(rows, rightAligned: [2, 3]),
        String(format: "bandwidth buffers 2 × %d MiB; copy and stream count bytes read + written, read-only bytes read; "
                + "memory-bound ceiling %.1f GB/s (%@); ridge %.1f flop/byte",
               mib, d.bandwidthGBps, d.bandwidthName, d.ridgeFlopsPerByte),
    ]
    if c.gemm != nil { lines.append("OpenBLAS core \(openBLASCoreName()): \(openBLASCoreSource)") }
    let (slow, fast) = (min(d.fmaBuiltinGFlops, d.madGFlops), max(d.fmaBuiltinGFlops, d.madGFlops))
    if slow < 0.5 * fast {
        lines.append(String(
            format: "note: the FMA kernel ran at %@ GFLOP/s with fma() and %@ with mad(): this driver computes %@ slowly (%@ in software?); kernels that use it run at that rate",
            rate(d.fmaBuiltinGFlops), rate(d.madGFlops), d.fmaBuiltinGFlops < d.madGFlops ? "fma()" : "mad()",
            d.fmaBuiltinGFlops < d.madGFlops ? "correctly rounded" : "unfused"))
    }
    lines += ceilingExcesses(c, results: [], hostPeersShareDevice: hostPeersShareDevice).map(\.line)
    return lines.joined(separator: "\n")
}

func resultTable(_ results: [ItemResult]) -> String {
    var rows: [[String]] = [[
        "op", "shape", "dtype", "opts", "first ms", "median ms", "min–max ms", "runs", "GFLOP/s", "GB/s", "% ceil",
        "ref ms", "× ref",
    ]]
    for r in results {
        let reference = r.peers.first { $0.name == "reference" }?.timing
        var refText = "-"
        var ratio = "-"
        switch reference {
        case .timed(let s)?:
            refText = ms(s.median)
            ratio = rate(s.median / r.device.median)
        case .skipped?: refText = "skipped"
        case .failed?: refText = "failed"
        case nil: break
        }
        rows.append([
            r.item.op, r.item.shape, r.item.dtype, r.item.options, ms(r.firstSeconds), ms(r.device.median),
            "\(ms(r.device.min))–\(ms(r.device.max))", "\(r.device.count)",
            r.item.flops > 0 ? rate(r.gflops) : "-", r.item.bytes > 0 ? rate(r.gbps) : "-",
            r.bound == .copy
                ? String(format: "%.1f C %.1f R", r.percent, r.percentOfRead)
                : String(format: "%.1f%@", r.percent, r.bound == .compute ? " F" : r.bound == .copyTraffic ? " C" : " B"),
            refText, ratio,
        ])
    }
    return table(rows, rightAligned: Set(4...12)) + "\n"
        + "% ceil: B of the best bandwidth ceiling, F of the FMA ceiling, C of the copy ceiling, R of the read-only ceiling; × ref: reference time / device time"
}

func jsonReport(
    device: Device, ceilings: BenchCeilings, results: [ItemResult], quick: Bool, scaling: [ScalingPoint] = [],
    torchOnGPU: Bool = false
) throws -> Data {
    let d = ceilings.device
    let excesses = ceilingExcesses(
        ceilings, results: results, hostPeersShareDevice: device.kind == .cpu, torchSharesDevice: torchOnGPU)
    func number(_ x: Double?) -> Any { x.map { $0.isFinite ? $0 as Any : NSNull() } ?? NSNull() }
    let items: [[String: Any]] = results.map { r in
        var peers: [String: Any] = [:]
        var skipped: [String: String] = [:]
        for (name, timing) in r.peers {
            switch timing {
            case .timed(let s): peers[name] = s.median * 1e3
            case .skipped(let why), .failed(let why):
                peers[name] = NSNull()
                skipped[name] = why
            }
        }
        var item: [String: Any] = [
            "name": r.item.name, "op": r.item.op, "shape": r.item.shape, "dtype": r.item.dtype,
            "options": r.item.options, "flops": r.item.flops, "bytes": r.item.bytes,
            "first_ms": r.firstSeconds * 1e3, "median_ms": r.device.median * 1e3, "min_ms": r.device.min * 1e3,
            "max_ms": r.device.max * 1e3, "q1_ms": r.device.q1 * 1e3, "q3_ms": r.device.q3 * 1e3,
            "runs": r.device.count, "kernels": r.kernels, "bound": r.bound.rawValue, "ceiling": r.ceilingName,
            "percent_of_ceiling": number(r.percent), "peers": peers,
            "percent_of_read_ceiling": r.bound == .copy ? number(r.percentOfRead) : NSNull(),
        ]
        if r.item.flops > 0 { item["gflops"] = number(r.gflops) }
        if r.item.bytes > 0 { item["gbps"] = number(r.gbps) }
        if !skipped.isEmpty { item["peers_skipped"] = skipped }
        if r.bound == .compute, let gemm = ceilings.gemmGFlops { item["percent_of_gemm"] = number(100 * r.gflops / gemm) }
        item.merge(layerPeerJSON(r)) { _, new in new }
        return item
    }
    // Where the "torch" peer figures come from: the GPU torch sees, in each layer's dtype, or
    // the host in f32 (on the benchmark's thread count).
    let torchPeer: [String: String] = torchOnGPU
        ? ["device": TorchPeer.cudaDevice ?? "cuda", "dtype": "layer"] : ["device": "host", "dtype": "f32"]
    let document: [String: Any] = [
        "device": device.name, "driver": device.driverVersion, "platform": device.platformName, "quick": quick,
        "torch_peer": torchPeer,
        "ceilings": [
            "copy_gbps": d.copyGBps, "stream_gbps": d.streamGBps, "stream_nt_gbps": d.streamNTGBps,
            "non_temporal_stores": d.nonTemporalStores, "bandwidth_gbps": d.bandwidthGBps,
            "fma_gflops": d.fmaGFlops, "gemm_gflops": number(ceilings.gemmGFlops), "read_gbps": d.readGBps,
            "fma_vector_width": d.fmaVectorWidth, "fma_chains": d.fmaChains,
            "fma_workitems": d.fmaWorkItems, "fma_builtin_gflops": d.fmaBuiltinGFlops, "mad_gflops": d.madGFlops,
            "fma_exceeded_by_peer": excesses.contains { $0.ceiling == "fma" && $0.by != "switchyard" },
            "exceeded": excesses.map(\.json),
            "gemm": ceilings.gemm.map { $0.name as Any } ?? NSNull(),
            "openblas_core": openBLASCoreName(), "openblas_core_source": openBLASCoreSource, "buffer_bytes": d.bufferBytes,
            "measurements": d.measurements.map {
                ["name": $0.name, "unit": $0.unit, "best": $0.best, "median": $0.median, "clock": $0.clock] as [String: Any]
            },
        ] as [String: Any],
        "results": items,
        "scaling": scalingJSON(scaling),
    ]
    return try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])
}
