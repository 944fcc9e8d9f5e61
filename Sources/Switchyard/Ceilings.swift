import Foundation
import OpenCLHost

/// How `OpenCLBackend.measureCeilings` measures.
public struct CeilingOptions: Sendable, Hashable {
    /// Bytes of each of the two bandwidth buffers (source and destination). Pick it well above
    /// the last-level cache, or the figures are cache bandwidth. Clamped to the device's
    /// largest allocation and to a quarter of its global memory.
    public var bandwidthBytes: Int
    /// Timed runs per measurement (after one warm-up); the ceiling is the best of them.
    public var runs: Int
    /// Device seconds one FMA-throughput run is sized to take.
    public var fmaSeconds: Double

    public init(bandwidthBytes: Int = 512 << 20, runs: Int = 5, fmaSeconds: Double = 0.1) {
        self.bandwidthBytes = bandwidthBytes
        self.runs = runs
        self.fmaSeconds = fmaSeconds
    }

    /// Smaller buffers and fewer runs, for a quick look.
    public static let quick = CeilingOptions(bandwidthBytes: 256 << 20, runs: 3, fmaSeconds: 0.05)
}

/// One ceiling measurement: what ran and the rate it reached (GB/s, or GFLOP/s for the FMA
/// loop). Bandwidth counts bytes read plus bytes written.
public struct CeilingMeasurement: Sendable, Hashable {
    /// What was timed: `clEnqueueCopyBuffer` or a kernel name.
    public var name: String
    public var unit: String
    /// The best run (the ceiling) and the median run.
    public var best: Double
    public var median: Double
    /// Device seconds of every timed run.
    public var seconds: [Double]
}

/// The device's measured ceilings: what its memory and its FMA units reach on the simplest
/// possible kernels, the yardsticks benchmark results are given as a percentage of.
public struct Ceilings: Sendable, Hashable {
    /// `clEnqueueCopyBuffer` between two large buffers, GB/s (read + written).
    public var copyGBps: Double
    /// A streaming copy kernel with plain stores, GB/s (read + written).
    public var streamGBps: Double
    /// The same kernel with non-temporal stores (a plain store where the compiler lacks them),
    /// GB/s (read + written).
    public var streamNTGBps: Double
    /// Independent FMA chains, GFLOP/s (an FMA counts 2).
    public var fmaGFlops: Double
    /// A read-only stream (a sum of a large buffer), GB/s of bytes read: the limit of an op that
    /// reads much and writes little, as decode reads its weights.
    public var readGBps: Double

    /// What each figure timed.
    public var copyName: String
    public var streamKernel: String
    public var streamNTKernel: String
    public var fmaKernel: String
    public var readKernel: String
    /// The FMA kernel's vector width and independent chains per work-item.
    public var fmaVectorWidth: Int
    public var fmaChains: Int
    /// Whether `streamNTKernel` was compiled with non-temporal stores.
    public var nonTemporalStores: Bool
    /// Bytes of each bandwidth buffer.
    public var bufferBytes: Int
    /// Every measurement, with its median and its runs.
    public var measurements: [CeilingMeasurement]

    /// The best of the three read + write bandwidth figures: the ceiling of memory-bound ops
    /// that write as much as they read (ops that mostly read, such as decode, are also given
    /// against `readGBps`).
    public var bandwidthGBps: Double { max(copyGBps, streamGBps, streamNTGBps) }

    /// The name of the measurement `bandwidthGBps` comes from.
    public var bandwidthName: String {
        if streamNTGBps >= streamGBps && streamNTGBps >= copyGBps { return streamNTKernel }
        return streamGBps >= copyGBps ? streamKernel : copyName
    }

    /// Flops per byte above which an op is bound by the FMA units rather than by memory.
    public var ridgeFlopsPerByte: Double { fmaGFlops / bandwidthGBps }
}

extension OpenCLBackend {
    /// Measures the device's ceilings with device-event timing: `clEnqueueCopyBuffer`, a
    /// streaming copy kernel with plain and with non-temporal stores, and an FMA-throughput
    /// kernel. The buffers are filled on the device with hashed pseudo-random values first
    /// (never zeros, and every page touched before anything is timed).
    public func measureCeilings(_ options: CeilingOptions = CeilingOptions()) throws -> Ceilings {
        let file = "ceilings.cl"
        let isCPU = device.kind == .cpu
        // CPU: a work-group runs on one core and walks its work-items in turn, so few work-items
        // that each own a contiguous range; enough work-groups that every core stays busy to
        // the end. GPU: interleaved accesses, many work-groups.
        let local = isCPU ? 16 : 256
        let groups = isCPU ? max(64, device.computeUnits * 32) : max(64, device.computeUnits * 16)
        let global = local * groups
        var defines = ["CEILINGS_INTERLEAVED": isCPU ? "0" : "1", "CEILINGS_NONTEMPORAL": "1"]
        do {
            try prepare(file, "ceilings_features", defines: defines)
        } catch OpenCLHostError.buildFailed {
            defines["CEILINGS_NONTEMPORAL"] = "0"
            try prepare(file, "ceilings_features", defines: defines)
        }
        let flag = try context.buffer(byteCount: 4, label: "ceilings flag")
        try launch(file, "ceilings_features", defines: defines, args: [.buffer(flag)], global: [local], local: [local])
        let nonTemporal = try flag.download(Int32.self, count: 1)[0] == 1

        let runs = max(1, options.runs)
        func timed(_ name: String, unit: String, amount: Double, _ body: () throws -> Event) throws
            -> CeilingMeasurement
        {
            try body().wait()  // warm-up (and the first-launch compile)
            var seconds: [Double] = []
            for _ in 0..<runs { seconds.append(try body().seconds()) }
            let rates = seconds.map { amount / max($0, 1e-12) }.sorted()
            return CeilingMeasurement(
                name: name, unit: unit, best: rates.last!, median: rates[rates.count / 2], seconds: seconds)
        }

        // Bandwidth: two buffers of float16 vectors.
        let vector = 64
        let limit = min(device.maxAllocationBytes, device.globalMemoryBytes / 4, Int(Int32.max) / 16 * vector)
        let n = max(global, min(options.bandwidthBytes, limit) / vector)
        let bytes = n * vector
        let perItem = (n + global - 1) / global
        let src = try context.buffer(byteCount: bytes, label: "ceilings source")
        let dst = try context.buffer(byteCount: bytes, label: "ceilings destination")
        for (buffer, seed) in [(src, 1), (dst, 2)] {
            try launch(
                file, "ceilings_fill", defines: defines,
                args: [.buffer(buffer), .int(n), .int(perItem), .int(seed)], global: [global], local: [local])
        }
        try synchronize()
        let moved = Double(2 * bytes) / 1e9
        let copy = try timed("clEnqueueCopyBuffer", unit: "GB/s", amount: moved) {
            try dst.copy(from: src, bytes: bytes)
        }
        func stream(_ kernel: String) throws -> CeilingMeasurement {
            try timed(kernel, unit: "GB/s", amount: moved) {
                try launch(
                    file, kernel, defines: defines,
                    args: [.buffer(src), .buffer(dst), .int(n), .int(perItem), .float(1)],
                    global: [global], local: [local])
            }
        }
        let plain = try stream("ceilings_stream")
        let nt = try stream("ceilings_stream_nt")
        let sums = try context.buffer(byteCount: global * 4, label: "ceilings read sums")
        let read = try timed("ceilings_read", unit: "GB/s", amount: Double(bytes) / 1e9) {
            try launch(
                file, "ceilings_read", defines: defines, args: [.buffer(src), .buffer(sums), .int(n), .int(perItem)],
                global: [global], local: [local])
        }

        // FMA throughput: calibrate the iteration count to about `fmaSeconds` a run.
        // At the native vector width, with enough chains to cover latency × throughput and no
        // spill: 16 × float16 (AVX-512, 32 registers), 12 × float8 (AVX2), 12 × float4, and
        // 8 × float where work-items are lanes (many work-items cover the latency there).
        let width = device.workItemsAreLanes ? 1 : ([16, 8, 4, 2].first { $0 <= device.nativeFloatVectorWidth } ?? 1)
        let chains = width >= 16 ? 16 : width == 1 ? 8 : 12
        var fmaDefines = defines
        fmaDefines["FMA_VW"] = "\(width)"
        fmaDefines["FMA_CHAINS"] = "\(chains)"
        let out = try context.buffer(byteCount: global * 4, label: "ceilings fma out")
        let flopsPerIteration = Double(global * width * chains * 2)
        func fma(_ iterations: Int) throws -> Event {
            try launch(
                file, "ceilings_fma", defines: fmaDefines,
                args: [.buffer(out), .int(iterations), .float(0.999_999), .float(1e-6)],
                global: [global], local: [local])
        }
        var iterations = 256
        try fma(iterations).wait()
        let probe = try fma(iterations).seconds()
        let target = max(options.fmaSeconds, 1e-3)
        // (Lane-style devices such as llvmpipe cut a work-item's loops at 65,535 iterations.)
        let cap = device.workItemsAreLanes ? 60_000.0 : Double(Int32.max)
        iterations = Int(min(cap, max(256, (Double(iterations) * target / max(probe, 1e-9)).rounded())))
        let flops = try timed("ceilings_fma", unit: "GFLOP/s", amount: flopsPerIteration * Double(iterations) / 1e9) {
            try fma(iterations)
        }
        return Ceilings(
            copyGBps: copy.best, streamGBps: plain.best, streamNTGBps: nt.best, fmaGFlops: flops.best,
            readGBps: read.best, copyName: copy.name, streamKernel: plain.name, streamNTKernel: nt.name,
            fmaKernel: flops.name, readKernel: read.name, fmaVectorWidth: width, fmaChains: chains,
            nonTemporalStores: nonTemporal, bufferBytes: bytes, measurements: [copy, plain, nt, flops, read])
    }
}

extension Ceilings {
    /// Each figure the best of `self` and `other` (ceilings measured twice, e.g. before and
    /// after a benchmark run on a machine other work shares).
    public func best(with other: Ceilings) -> Ceilings {
        var c = self
        c.copyGBps = max(copyGBps, other.copyGBps)
        c.streamGBps = max(streamGBps, other.streamGBps)
        c.streamNTGBps = max(streamNTGBps, other.streamNTGBps)
        c.fmaGFlops = max(fmaGFlops, other.fmaGFlops)
        c.readGBps = max(readGBps, other.readGBps)
        c.measurements = zip(measurements, other.measurements).map { $0.best >= $1.best ? $0 : $1 }
        return c
    }
}
