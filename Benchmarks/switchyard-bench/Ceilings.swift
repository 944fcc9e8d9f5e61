import Foundation
import OpenCLHost
import Switchyard

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

    /// Options for a full measurement: 512 MiB buffers, 5 runs, 0.1 s FMA runs.
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
    /// "GB/s" or "GFLOP/s".
    public var unit: String
    /// The best run (the ceiling) and the median run.
    public var best: Double
    /// The median run, in `unit`.
    public var median: Double
    /// Seconds of every timed run.
    public var seconds: [Double]
    /// How the runs were timed: "device events", or "wall clock" where the device's profiling
    /// events were implausible (`ProfilingEvents.plausible`: rusticl on llvmpipe reports next
    /// to nothing).
    public var clock: String = "device events"
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
    /// The plain-store streaming kernel's name.
    public var streamKernel: String
    /// The non-temporal-store streaming kernel's name.
    public var streamNTKernel: String
    /// The FMA kernel (builtin `fma` or `mad` form) that gave `fmaGFlops`.
    public var fmaKernel: String
    /// The read-only streaming kernel's name.
    public var readKernel: String
    /// The FMA kernel's shape: vector width (1: scalar work-items, the lanes of a SIMD device),
    /// independent chains per work-item, and work-items.
    public var fmaVectorWidth: Int
    /// Independent FMA chains per work-item.
    public var fmaChains: Int
    /// Work-items of the FMA launch.
    public var fmaWorkItems: Int
    /// The FMA kernel written with the fma() builtin and with mad(), GFLOP/s (`fmaGFlops` is the
    /// faster; a driver that computes fma() in software shows here).
    public var fmaBuiltinGFlops: Double
    /// The FMA kernel written with `mad()`, GFLOP/s.
    public var madGFlops: Double
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
    /// streaming copy kernel with plain and with non-temporal stores, a read-only stream, and an
    /// FMA-throughput kernel at the device's native vector width. The buffers are filled on the
    /// device with hashed pseudo-random values first (never zeros, and every page touched before
    /// anything is timed).
    public func measureCeilings(_ options: CeilingOptions = CeilingOptions()) throws -> Ceilings {
        let file = String(decoding: PackageResources.ceilings_cl, as: UTF8.self)
        // Where work-items are SIMD lanes (GPUs, llvmpipe), neighbouring work-items read
        // neighbouring addresses (interleaved) in large work-groups. On a CPU whose work-items
        // are threads of a work-group's loop, few work-items that each own a contiguous range,
        // and enough work-groups that every core stays busy to the end.
        let lanes = device.workItemsAreLanes
        let local = lanes ? max(1, min(256, device.maxWorkGroupSize)) : 16
        var groups = lanes ? max(64, device.computeUnits * 16) : max(64, device.computeUnits * 32)
        var defines = ["CEILINGS_INTERLEAVED": lanes ? "1" : "0", "CEILINGS_NONTEMPORAL": "1"]
        do {
            try prepare(program: file, kernel: "ceilings_features", defines: defines)
        } catch OpenCLHostError.buildFailed {
            defines["CEILINGS_NONTEMPORAL"] = "0"
            try prepare(program: file, kernel: "ceilings_features", defines: defines)
        }
        let flag = try context.buffer(byteCount: 4, label: "ceilings flag")
        try launch(
                program: file, kernel: "ceilings_features", defines: defines,
                arguments: [.buffer(flag)], global: [local], local: [local])
        let nonTemporal = try flag.download(Int32.self, count: 1)[0] == 1

        let runs = max(1, options.runs)
        func timed(_ name: String, unit: String, amount: Double, runs: Int = runs, _ body: () throws -> Event) throws
            -> CeilingMeasurement
        {
            try body().wait()  // warm-up (and the first-launch compile)
            var seconds: [Double] = []
            var wall: [Double] = []
            for _ in 0..<max(1, runs) {
                let start = DispatchTime.now().uptimeNanoseconds
                let event = try body()
                try event.wait()
                wall.append(Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
                seconds.append(try event.seconds())
            }
            // Events that say a run took a sliver of its wall clock are not the device's time.
            let plausible = zip(seconds, wall).allSatisfy { ProfilingEvents.plausible(eventSeconds: $0, wallSeconds: $1) }
            let used = plausible ? seconds : wall
            let rates = used.map { amount / max($0, 1e-12) }.sorted()
            return CeilingMeasurement(
                name: name, unit: unit, best: rates.last!, median: rates[rates.count / 2], seconds: used,
                clock: plausible ? "device events" : "wall clock")
        }

        // The native vector width (on lanes-style devices 1: a work-item is a lane): the FMA
        // kernel's vectors, and the fill's and streaming kernels' elements (so that on a CPU no
        // vector is wider than its registers, and where work-items are lanes a SIMD group's
        // loads form one contiguous vector).
        let width = lanes ? 1 : device.floatVectorWidth
        defines["CEILINGS_VW"] = "\(width)"

        // Bandwidth: two buffers of `elements` float`width`s. Every work-item walks at most
        // 16,384 elements (llvmpipe stops a work-item's loops after 65,535 iterations).
        let vector = 64
        let limit = min(device.maxAllocationBytes, device.globalMemoryBytes / 4, Int(Int32.max) / 16 * vector)
        let bytes = max(local * groups, min(options.bandwidthBytes, limit) / vector) * vector
        let elements = bytes / (4 * width)
        groups = max(groups, (elements + local * 16_384 - 1) / (local * 16_384))
        let global = local * groups
        let perItem = (elements + global - 1) / global
        let src = try context.buffer(byteCount: bytes, label: "ceilings source")
        let dst = try context.buffer(byteCount: bytes, label: "ceilings destination")
        for (buffer, seed) in [(src, 1), (dst, 2)] {
            try launch(
                program: file, kernel: "ceilings_fill", defines: defines,
                arguments: [.buffer(buffer), .int(elements), .int(perItem), .int(seed)], global: [global], local: [local])
        }
        try synchronize()
        let moved = Double(2 * bytes) / 1e9
        let copy = try timed("clEnqueueCopyBuffer", unit: "GB/s", amount: moved) {
            try dst.copy(from: src, bytes: bytes)
        }
        // Where work-items are lanes, both layouts are timed and the faster kept: interleaved is
        // a GPU's way, but llvmpipe turns each lane's load into a gather and streams faster
        // when each lane owns a contiguous range (measured 2.2 against 5.9 GB/s).
        let layouts = lanes ? ["1", "0"] : [defines["CEILINGS_INTERLEAVED"]!]
        func fastest(_ kernel: String, amount: Double, args: [KernelArgument]) throws -> CeilingMeasurement {
            var best: CeilingMeasurement?
            for layout in layouts {
                var d = defines
                d["CEILINGS_INTERLEAVED"] = layout
                let name = layouts.count > 1 ? "\(kernel) (\(layout == "1" ? "interleaved" : "contiguous"))" : kernel
                let m = try timed(name, unit: "GB/s", amount: amount) {
                    try launch(
                program: file, kernel: kernel, defines: d,
                arguments: args, global: [global], local: [local])
                }
                if best == nil || m.best > best!.best { best = m }
            }
            return best!
        }
        func stream(_ kernel: String) throws -> CeilingMeasurement {
            try fastest(
                kernel, amount: moved, args: [.buffer(src), .buffer(dst), .int(elements), .int(perItem), .float(1)])
        }
        let plain = try stream("ceilings_stream")
        let nt = try stream("ceilings_stream_nt")
        // Read-only: bytes read only (what decode, which reads weights and writes little, is bound by).
        let sums = try context.buffer(byteCount: global * 4, label: "ceilings read sums")
        let read = try fastest(
            "ceilings_read", amount: Double(bytes) / 1e9,
            args: [.buffer(src), .buffer(sums), .int(elements), .int(perItem)])

        // FMA throughput at the native vector width, with enough independent chains per
        // work-item to cover FMA latency × throughput (4–5 cycles × 2 units) and no spill:
        // 16 × float16 on AVX-512 (32 registers), 12 × float8 on AVX2 (16 registers), 12 ×
        // float4 on SSE/NEON; where work-items are lanes, 8 × float each and many work-items.
        let fmaWidth = width
        let chains = lanes ? 8 : fmaWidth >= 16 ? 16 : 12
        let unroll = 8  // FMA_UNROLL in ceilings.cl
        let fmaSums = try context.buffer(byteCount: global * 4, label: "ceilings fma sums")
        let fmaSteps = try context.buffer(byteCount: global * 4, label: "ceilings fma steps")
        let flopsPerOuter = Double(global * fmaWidth * chains * unroll * 2)
        // Timed with fma() and with mad() (a driver may compute fma() in software, correctly
        // rounded, as llvmpipe does; mad() lets it use the hardware FMA); the faster is the ceiling.
        func fmaThroughput(mad: Bool, other: CeilingMeasurement?) throws -> CeilingMeasurement {
            var fmaDefines = defines
            fmaDefines["FMA_VW"] = "\(fmaWidth)"
            fmaDefines["FMA_CHAINS"] = "\(chains)"
            fmaDefines["FMA_MAD"] = mad ? "1" : "0"
            func fma(_ outer: Int) throws -> Event {
                try launch(
                program: file, kernel: "ceilings_fma", defines: fmaDefines,
                arguments: [.buffer(fmaSums), .buffer(fmaSteps), .int(outer), .float(0.999_999), .float(1e-6)],
                    global: [global], local: [local])
            }
            // Calibrate the outer count to about `fmaSeconds` a run, at most 16,384 (a small
            // count: llvmpipe cuts loops at 65,535; a device that fast gets a shorter run).
            let name = mad ? "ceilings_fma (mad)" : "ceilings_fma (fma)"
            // Probe with growing counts until a run takes a fifth of the target (a run timed
            // on the host clock includes the launch, which a short probe would mistake for work).
            let target = max(options.fmaSeconds, 1e-3)
            var probeOuter = 4
            var probe = try timed(name, unit: "GFLOP/s", amount: flopsPerOuter * Double(probeOuter) / 1e9, runs: 1) {
                try fma(probeOuter)
            }
            while probe.seconds[0] < target / 5 && probeOuter < 16_384 {
                probeOuter = min(16_384, probeOuter * 8)
                probe = try timed(name, unit: "GFLOP/s", amount: flopsPerOuter * Double(probeOuter) / 1e9, runs: 1) {
                    try fma(probeOuter)
                }
            }
            var outer = Int(min(16_384, max(4, (Double(probeOuter) * target / max(probe.seconds[0], 1e-9)).rounded())))
            let m: CeilingMeasurement
            if let other, probe.best < 0.1 * other.best, probe.seconds[0] >= target {
                // Far below the variant timed before it (fma() in software), and the probe as long
                // as a timed run would be: the probe will do.
                m = probe
                outer = probeOuter
            } else {
                m = try timed(name, unit: "GFLOP/s", amount: flopsPerOuter * Double(outer) / 1e9) { try fma(outer) }
            }
            // Every work-item must have run every outer iteration, or the rate is overstated.
            let done = try fmaSteps.download(Int32.self, count: global)
            if let short = done.first(where: { Int($0) != outer }) {
                throw SwitchyardError.invalidValues(
                    argument: "ceilings_fma steps",
                    detail: "a work-item ran \(short) of \(outer) outer iterations (the device cut its loop): the FMA ceiling would be wrong")
            }
            return m
        }
        let viaMad = try fmaThroughput(mad: true, other: nil)
        let viaFMA = try fmaThroughput(mad: false, other: viaMad)
        let flops = viaMad.best > viaFMA.best ? viaMad : viaFMA
        return Ceilings(
            copyGBps: copy.best, streamGBps: plain.best, streamNTGBps: nt.best, fmaGFlops: flops.best,
            readGBps: read.best, copyName: copy.name, streamKernel: plain.name, streamNTKernel: nt.name,
            fmaKernel: flops.name, readKernel: read.name, fmaVectorWidth: fmaWidth, fmaChains: chains,
            fmaWorkItems: global, fmaBuiltinGFlops: viaFMA.best, madGFlops: viaMad.best,
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
        c.fmaBuiltinGFlops = max(fmaBuiltinGFlops, other.fmaBuiltinGFlops)
        c.madGFlops = max(madGFlops, other.madGFlops)
        c.measurements = zip(measurements, other.measurements).map { $0.best >= $1.best ? $0 : $1 }
        return c
    }
}
