import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance

/// How the MoE layer's time grows with the batch (T) and with expert granularity (E at fixed
/// active and total parameters: k · ffn = 2048 and E · ffn = 8192, hidden 512).
struct ScalingPoint {
    let sweep: String  // "tokens" or "experts"
    let tokens: Int
    let experts: Int
    let k: Int
    let ffn: Int
    let seconds: Double
    let flops: Double

    var gflops: Double { flops / seconds / 1e9 }
    var microsecondsPerToken: Double { seconds / Double(max(tokens, 1)) * 1e6 }
}

func scalingSweeps(backend: OpenCLBackend, quick: Bool, progress: (String) -> Void) throws -> [ScalingPoint] {
    let tokenCounts = quick ? [1, 16, 256, 4096] : [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536]
    let expertCounts = quick ? [8, 32, 128] : [8, 16, 32, 64, 128, 256]
    var points: [ScalingPoint] = []
    func time(_ config: MoEConfig, tokens: Int, sweep: String) throws {
        progress("scaling \(sweep): T \(tokens), E \(config.experts), k \(config.router.k), ffn \(config.ffn)")
        let weights = try MoEWeights.random(config: config, backend: backend, dtype: .f32, seed: 17)
        let layer = try MoELayer(backend: backend, config: config, weights: weights)
        var g = SeededGenerator(seed: 23)
        let x = try backend.tensor(g.normals(tokens * config.hidden), shape: [tokens, config.hidden], dtype: .f32)
        _ = try layer.forward(x)
        try backend.synchronize()
        let runs = tokens >= 16384 ? 3 : tokens >= 1024 ? 5 : 15
        var samples: [Double] = []
        for _ in 0..<runs {
            let start = now()
            _ = try layer.forward(x)
            try backend.synchronize()
            samples.append(now() - start)
        }
        samples.sort()
        points.append(ScalingPoint(
            sweep: sweep, tokens: tokens, experts: config.experts, k: config.router.k, ffn: config.ffn,
            seconds: samples[samples.count / 2], flops: config.flops(tokens: tokens)))
    }
    for t in tokenCounts { try time(.mixtralSmall, tokens: t, sweep: "tokens") }
    for e in expertCounts {
        let k = e / 4
        let config = MoEConfig(hidden: 512, ffn: 8192 / e, router: RouterConfig(experts: e, k: k, renormalize: true))
        try time(config, tokens: 2048, sweep: "experts")
    }
    return points
}

func scalingTable(_ points: [ScalingPoint]) -> String {
    var rows = [["sweep", "T", "E", "k", "ffn", "median ms", "µs/token", "GFLOP/s"]]
    for p in points {
        rows.append([
            p.sweep, "\(p.tokens)", "\(p.experts)", "\(p.k)", "\(p.ffn)", ms(p.seconds),
            String(format: "%.2f", p.microsecondsPerToken), rate(p.gflops),
        ])
    }
    return table(rows, rightAligned: Set(1..<8))
}

func scalingJSON(_ points: [ScalingPoint]) -> [[String: Any]] {
    points.map {
        [
            "sweep": $0.sweep, "tokens": $0.tokens, "experts": $0.experts, "k": $0.k, "ffn": $0.ffn,
            "median_ms": $0.seconds * 1e3, "gflops": $0.gflops, "us_per_token": $0.microsecondsPerToken,
        ]
    }
}

/// Two line charts (log-scaled x): time per token against T, and GFLOP/s against E.
func scalingSVG(_ points: [ScalingPoint], fmaGFlops: Double, top: Double, width: Double) -> (svg: String, height: Double) {
    let chartHeight = 220.0
    let chartWidth = min(560.0, (width - 60) / 2 - 40)
    var s = "<text x=\"10\" y=\"\(top + 16)\" font-size=\"15\" font-weight=\"bold\">MoE layer scaling (wall clock per forward, f32, hidden 512)</text>\n"
    func chart(_ sweep: String, x0: Double, title: String, xLabel: String, value: (ScalingPoint) -> Double,
               xValue: (ScalingPoint) -> Double, yLabel: String, reference: Double?) {
        let ps = points.filter { $0.sweep == sweep }
        guard ps.count >= 2 else { return }
        let y0 = top + 40
        let xs = ps.map { log2(xValue($0)) }
        let ys = ps.map(value)
        let xmin = xs.min()!, xmax = xs.max()!
        let ymax = max(ys.max()!, reference ?? 0) * 1.1
        func px(_ v: Double) -> Double { x0 + 40 + (v - xmin) / max(xmax - xmin, 1e-9) * chartWidth }
        func py(_ v: Double) -> Double { y0 + chartHeight - v / max(ymax, 1e-12) * chartHeight }
        s += "<text x=\"\(x0 + 40)\" y=\"\(y0 - 8)\" font-weight=\"bold\">\(xmlEscaped(title))</text>\n"
        s += "<rect x=\"\(x0 + 40)\" y=\"\(y0)\" width=\"\(chartWidth)\" height=\"\(chartHeight)\" fill=\"none\" stroke=\"#999\"/>\n"
        for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let v = ymax * frac
            s += "<line x1=\"\(x0 + 40)\" y1=\"\(py(v))\" x2=\"\(x0 + 40 + chartWidth)\" y2=\"\(py(v))\" stroke=\"#eee\"/>\n"
            s += "<text x=\"\(x0 + 36)\" y=\"\(py(v) + 4)\" text-anchor=\"end\" fill=\"#666\">\(rate(v))</text>\n"
        }
        if let reference {
            s += "<line x1=\"\(x0 + 40)\" y1=\"\(py(reference))\" x2=\"\(x0 + 40 + chartWidth)\" y2=\"\(py(reference))\" stroke=\"#c0392b\" stroke-dasharray=\"4 3\"/>\n"
            s += "<text x=\"\(x0 + 44 + chartWidth)\" y=\"\(py(reference) + 4)\" fill=\"#c0392b\">FMA</text>\n"
        }
        let path = zip(xs, ys).map { "\(px($0)),\(py($1))" }.joined(separator: " ")
        s += "<polyline points=\"\(path)\" fill=\"none\" stroke=\"#4a7fb5\" stroke-width=\"2\"/>\n"
        for (p, (xv, yv)) in zip(ps, zip(xs, ys)) {
            s += "<circle cx=\"\(px(xv))\" cy=\"\(py(yv))\" r=\"3\" fill=\"#4a7fb5\"/>\n"
            s += "<text x=\"\(px(xv))\" y=\"\(y0 + chartHeight + 16)\" text-anchor=\"middle\" fill=\"#444\">\(Int(xValue(p)))</text>\n"
        }
        s += "<text x=\"\(x0 + 40 + chartWidth / 2)\" y=\"\(y0 + chartHeight + 34)\" text-anchor=\"middle\">\(xmlEscaped(xLabel))</text>\n"
        s += "<text x=\"\(x0 + 40)\" y=\"\(y0 + chartHeight + 50)\" fill=\"#444\">\(xmlEscaped(yLabel))</text>\n"
    }
    chart("tokens", x0: 10, title: "GFLOP/s against tokens T (mixtral-small: E 8, k 2, ffn 1024)",
          xLabel: "tokens T (log scale)", value: \.gflops, xValue: { Double($0.tokens) }, yLabel: "GFLOP/s of the whole layer",
          reference: fmaGFlops)
    chart("experts", x0: 10 + chartWidth + 80, title: "GFLOP/s against experts E (k·ffn = 2048, E·ffn = 8192, T 2048)",
          xLabel: "experts E (log scale; k = E/4)", value: \.gflops, xValue: { Double($0.experts) },
          yLabel: "GFLOP/s of the whole layer", reference: fmaGFlops)
    return (s, chartHeight + 110)
}
