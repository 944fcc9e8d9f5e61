import Foundation
import OpenCLHost
import Switchyard

func xmlEscaped(_ text: String) -> String {
    text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}

/// A self-contained SVG bar chart: one horizontal bar per case, its length the percentage of
/// the ceiling it is measured against, labelled with the case, the rate and the percentage.
func svgChart(device: Device, ceilings: BenchCeilings, results: [ItemResult], scaling: [ScalingPoint] = []) -> String {
    let d = ceilings.device
    func label(_ r: ItemResult) -> String {
        [r.item.op, r.item.shape, r.item.dtype, r.item.options].filter { !$0.isEmpty }.joined(separator: " ")
    }
    // About 7 px a character at 12 px DejaVu Sans.
    let longest = results.map { label($0).count }.max() ?? 20
    let labelWidth = max(200, Double(longest) * 7 + 16)
    let barWidth = 440.0
    // Decode rows say their share of two ceilings: a longer value text.
    let valueWidth = results.contains { $0.bound == .copy } ? 340.0 : 200.0
    let rowHeight = 22.0
    let top = 92.0
    let width = max(labelWidth + barWidth + valueWidth + 20, scaling.isEmpty ? 0 : 1300)
    let staged = results.filter { $0.profile != nil }
    let stagesTop = top + Double(max(results.count, 1)) * rowHeight + 84
    let stagesPart = staged.isEmpty ? nil : stageBreakdownSVG(staged, top: stagesTop, labelWidth: labelWidth)
    let peersTop = stagesTop + (stagesPart?.height ?? 0)
    let peersPart = peerBarsSVG(staged, ceilings: ceilings, top: peersTop, labelWidth: labelWidth)
    let barsHeight = peersTop + (peersPart?.height ?? 0)
    let scalingPart = scaling.isEmpty ? nil : scalingSVG(scaling, fmaGFlops: d.fmaGFlops, top: barsHeight, width: max(labelWidth + barWidth + valueWidth + 20, 1300))
    let height = barsHeight + (scalingPart?.height ?? 0)
    let maxPercent = max(100, ((results.map(\.percent).filter(\.isFinite).max() ?? 0) / 25).rounded(.up) * 25)
    func x(_ percent: Double) -> Double { labelWidth + barWidth * max(0, min(percent, maxPercent)) / maxPercent }
    let colors: [Bound: String] = [.memory: "#4a7fb5", .compute: "#d9822b", .copy: "#5aa469", .copyTraffic: "#8e6bb0"]

    var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
        viewBox="0 0 \(Int(width)) \(Int(height))" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>

        """
    s += "<text x=\"10\" y=\"22\" font-size=\"16\" font-weight=\"bold\">switchyard-bench: percent of the device's measured ceiling</text>\n"
    s += "<text x=\"10\" y=\"42\">\(xmlEscaped(device.name)) (\(xmlEscaped(device.platformName)), driver \(xmlEscaped(device.driverVersion)))</text>\n"
    let nt = d.nonTemporalStores ? "non-temporal" : "non-temporal unavailable"
    let gemm = ceilings.gemmGFlops.map { String(format: "%.0f GFLOP/s", $0) } ?? "not measured"
    let line = String(
        format: "ceilings: copy %.1f GB/s · stream %.1f GB/s · stream (%@) %.1f GB/s · read-only %.1f GB/s · FMA %.0f GFLOP/s (%d × float%@ chains) · GEMM %@",
        d.copyGBps, d.streamGBps, nt, d.streamNTGBps, d.readGBps, d.fmaGFlops, d.fmaChains,
        d.fmaVectorWidth == 1 ? "" : String(d.fmaVectorWidth), gemm)
    s += "<text x=\"10\" y=\"60\" fill=\"#444\">\(xmlEscaped(line))</text>\n"

    // Grid and axis labels.
    let bottom = top + Double(results.count) * rowHeight
    var tick = 0.0
    while tick <= maxPercent {
        let tx = x(tick)
        s += "<line x1=\"\(tx)\" y1=\"\(top - 6)\" x2=\"\(tx)\" y2=\"\(bottom)\" stroke=\"#ddd\"/>\n"
        s += "<text x=\"\(tx)\" y=\"\(top - 10)\" text-anchor=\"middle\" fill=\"#666\">\(Int(tick))%</text>\n"
        tick += maxPercent > 200 ? 50 : 25
    }

    for (i, r) in results.enumerated() {
        let y = top + Double(i) * rowHeight
        s += "<text x=\"\(labelWidth - 8)\" y=\"\(y + 15)\" text-anchor=\"end\">\(xmlEscaped(label(r)))</text>\n"
        let percent = r.percent.isFinite ? r.percent : 0
        let w = max(1, x(percent) - labelWidth)
        s += "<rect x=\"\(labelWidth)\" y=\"\(y + 3)\" width=\"\(w)\" height=\"\(rowHeight - 6)\" fill=\"\(colors[r.bound]!)\"/>\n"
        let unit = r.bound == .compute ? "GFLOP/s" : "GB/s"
        let value =
            r.bound == .copy
            ? String(format: "%@ %@ · %.1f%% of copy, %.1f%% of read-only · %@ ms", rate(r.rate), unit, percent,
                     r.percentOfRead, ms(r.device.median))
            : String(format: "%@ %@ · %.1f%% · %@ ms", rate(r.rate), unit, percent, ms(r.device.median))
        s += "<text x=\"\(x(percent) + 6)\" y=\"\(y + 15)\">\(xmlEscaped(value))</text>\n"
    }

    // The ceiling itself.
    let cx = x(100)
    s += "<line x1=\"\(cx)\" y1=\"\(top - 6)\" x2=\"\(cx)\" y2=\"\(bottom)\" stroke=\"#c0392b\" stroke-width=\"1.5\" stroke-dasharray=\"4 3\"/>\n"

    // Legend.
    let ly = bottom + 24
    var legend: [(Bound, String)] = [
        (.memory, String(format: "memory-bound: GB/s (read + written) of the best bandwidth ceiling, %.1f GB/s", d.bandwidthGBps)),
        (.compute, String(format: "compute-bound: GFLOP/s of the FMA ceiling, %.0f GFLOP/s", d.fmaGFlops)),
    ]
    if results.contains(where: { $0.bound == .copy }) {
        legend.append((.copy, String(
            format: "decode: GB/s of weight bytes read, of the clEnqueueCopyBuffer ceiling, %.1f GB/s (read + written; the read-only ceiling: %.1f GB/s)",
            d.copyGBps, d.readGBps)))
    }
    if results.contains(where: { $0.bound == .copyTraffic }) {
        legend.append((.copyTraffic, String(
            format: "row moves (token ops): GB/s (read + written) of the clEnqueueCopyBuffer ceiling, %.1f GB/s", d.copyGBps)))
    }
    for (j, (bound, text)) in legend.enumerated() {
        let yy = ly + Double(j) * 18
        s += "<rect x=\"10\" y=\"\(yy - 10)\" width=\"12\" height=\"12\" fill=\"\(colors[bound]!)\"/>\n"
        s += "<text x=\"28\" y=\"\(yy)\">\(xmlEscaped(text))</text>\n"
    }
    s += "<text x=\"\(width - 10)\" y=\"\(ly)\" text-anchor=\"end\" fill=\"#c0392b\">dashed: 100% of ceiling</text>\n"
    if let stagesPart { s += stagesPart.svg }
    if let peersPart { s += peersPart.svg }
    if let scalingPart { s += scalingPart.svg }
    s += "</svg>\n"
    return s
}

/// One stacked bar per MoE-layer row: each stage's median device time, then the launch and sync
/// overhead (wall clock minus the stages), all as a share of the layer's wall time.
func stageBreakdownSVG(_ results: [ItemResult], top: Double, labelWidth: Double) -> (svg: String, height: Double) {
    let palette = ["#4a7fb5", "#5aa469", "#d9822b", "#8e6bb8", "#c0392b", "#16a085", "#7f8c8d"]
    var names: [String] = []
    for r in results { for stage in r.profile!.stages where !names.contains(stage.name) { names.append(stage.name) } }
    names.append("launch + sync")
    let barWidth = 440.0  // as the bars above, so the wall-time label fits the value column
    let rowHeight = 24.0
    var s = "<text x=\"10\" y=\"\(top + 16)\" font-size=\"15\" font-weight=\"bold\">MoE layer stage breakdown (share of the wall time per forward; median device time per stage)</text>\n"
    let y0 = top + 30
    for (i, r) in results.enumerated() {
        let p = r.profile!
        let wall = max(p.wall.median, p.stages.reduce(0) { $0 + $1.stats.median })
        let y = y0 + Double(i) * rowHeight
        let label = [r.item.shape, r.item.dtype, r.item.options].filter { !$0.isEmpty }.joined(separator: " ")
        s += "<text x=\"\(labelWidth - 8)\" y=\"\(y + 16)\" text-anchor=\"end\">\(xmlEscaped(label))</text>\n"
        var x = labelWidth
        var parts = p.stages.map { ($0.name, $0.stats.median) }
        parts.append(("launch + sync", max(0, p.wall.median - parts.reduce(0) { $0 + $1.1 })))
        for (name, seconds) in parts {
            let w = barWidth * seconds / wall
            let color = palette[(names.firstIndex(of: name) ?? 0) % palette.count]
            s += "<rect x=\"\(x)\" y=\"\(y + 4)\" width=\"\(max(w, 0))\" height=\"\(rowHeight - 8)\" fill=\"\(color)\"><title>\(xmlEscaped(name)) \(ms(seconds)) ms</title></rect>\n"
            x += w
        }
        s += "<text x=\"\(labelWidth + barWidth + 8)\" y=\"\(y + 16)\">\(ms(p.wall.median)) ms wall</text>\n"
    }
    let ly = y0 + Double(results.count) * rowHeight + 16
    for (j, name) in names.enumerated() {
        let lx = 10 + Double(j % 4) * 260
        let yy = ly + Double(j / 4) * 18
        s += "<rect x=\"\(lx)\" y=\"\(yy - 10)\" width=\"12\" height=\"12\" fill=\"\(palette[j % palette.count])\"/>\n"
        s += "<text x=\"\(lx + 18)\" y=\"\(yy)\">\(xmlEscaped(name))</text>\n"
    }
    return (s, 30 + Double(results.count) * rowHeight + 24 + Double((names.count + 3) / 4) * 18 + 20)
}

/// The MoE layers beside their peers, one group of bars per layer row, each bar a rate in the
/// row's unit with the ceilings drawn across: prefill rows in GFLOP/s (Switchyard's grouped
/// matmul against the per-expert SGEMM loops, the whole layer against PyTorch eager; the FMA
/// ceiling and the dense-GEMM figure dashed), decode rows in GB/s of weight bytes (the copy and
/// read-only ceilings dashed).
func peerBarsSVG(_ results: [ItemResult], ceilings: BenchCeilings, top: Double, labelWidth: Double) -> (svg: String, height: Double)? {
    let d = ceilings.device
    struct Bar {
        let name: String
        let value: Double
        let color: String
    }
    var groups: [(label: String, unit: String, bars: [Bar], lines: [(String, Double)])] = []
    for r in results {
        guard let p = r.profile else { continue }
        let decode = r.bound == .copy
        var bars: [Bar] = []
        func peerSeconds(_ name: String) -> Double? {
            if case .timed(let st)? = r.peers.first(where: { $0.name == name })?.timing { return st.median }
            return nil
        }
        let amount = decode ? r.item.bytes : r.item.flops
        if let part = r.item.groupedMatmul, let grouped = p.median(of: part.stages) {
            let partAmount = decode ? r.item.bytes : part.flops
            bars.append(Bar(name: "Switchyard grouped matmul", value: partAmount / grouped / 1e9, color: "#d9822b"))
            for (name, label, color) in [("openblas", "OpenBLAS SGEMM per expert", "#7f8c8d"), ("clblast", "CLBlast SGEMM per expert", "#95a5a6")] {
                if let t = peerSeconds(name) { bars.append(Bar(name: label, value: partAmount / t / 1e9, color: color)) }
            }
        }
        bars.append(Bar(name: "Switchyard whole layer (wall)", value: amount / p.wall.median / 1e9, color: "#4a7fb5"))
        if let t = peerSeconds("torch") { bars.append(Bar(name: "PyTorch eager whole layer", value: amount / t / 1e9, color: "#8e6bb8")) }
        guard bars.count > 1 else { continue }
        let lines: [(String, Double)] =
            decode
            ? [("copy", d.copyGBps), ("read-only", d.readGBps)]
            : [("FMA", d.fmaGFlops)] + (ceilings.gemmGFlops.map { [("GEMM (OpenBLAS)", $0)] } ?? [])
        groups.append((label: [r.item.shape, r.item.dtype, r.item.options].filter { !$0.isEmpty }.joined(separator: " "),
                       unit: decode ? "GB/s of weights" : "GFLOP/s", bars: bars, lines: lines))
    }
    guard !groups.isEmpty else { return nil }
    let barWidth = 440.0
    let barHeight = 14.0
    var s = "<text x=\"10\" y=\"\(top + 16)\" font-size=\"15\" font-weight=\"bold\">MoE layers beside their peers (same run; dashed: the ceilings)</text>\n"
    var y = top + 34
    for g in groups {
        let scale = max(g.bars.map(\.value).max() ?? 1, g.lines.map(\.1).max() ?? 1) * 1.05
        s += "<text x=\"10\" y=\"\(y + 11)\" font-weight=\"bold\">\(xmlEscaped(g.label)) (\(g.unit))</text>\n"
        y += 16
        let y0 = y
        for bar in g.bars {
            let w = max(1, barWidth * bar.value / scale)
            s += "<text x=\"\(labelWidth - 8)\" y=\"\(y + barHeight + 1)\" text-anchor=\"end\" fill=\"#444\">\(xmlEscaped(bar.name))</text>\n"
            s += "<rect x=\"\(labelWidth)\" y=\"\(y + 4)\" width=\"\(w)\" height=\"\(barHeight)\" fill=\"\(bar.color)\"/>\n"
            s += "<text x=\"\(labelWidth + w + 6)\" y=\"\(y + barHeight + 1)\">\(xmlEscaped(rate(bar.value) + " " + g.unit))</text>\n"
            y += barHeight + 4
        }
        // Ceiling labels above the bars, then below them, in turn (two close lines do not overlap).
        for (j, (name, value)) in g.lines.enumerated() {
            let lx = labelWidth + barWidth * value / scale
            s += "<line x1=\"\(lx)\" y1=\"\(y0 + 2)\" x2=\"\(lx)\" y2=\"\(y + 4)\" stroke=\"#c0392b\" stroke-dasharray=\"4 3\"/>\n"
            let ly = j % 2 == 0 ? y0 : y + 14
            s += "<text x=\"\(lx)\" y=\"\(ly)\" text-anchor=\"middle\" fill=\"#c0392b\" font-size=\"10\">\(xmlEscaped(name + " " + rate(value)))</text>\n"
        }
        y += 30
    }
    return (s, y - top + 10)
}
