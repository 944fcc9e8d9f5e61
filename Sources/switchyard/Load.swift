import ArgumentParser
import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance
import SwitchyardReference

#if canImport(Glibc)
import Glibc
#endif

/// Resident memory of this process, sampled on a thread while a load runs. What the loader holds
/// at a sample is the resident size then, less the resident size before the load, less the
/// device buffer bytes resident so far: a CPU device (PoCL, llvmpipe) keeps its buffers in this
/// process's pages. PoCL's pages become resident as the load writes them (count the bytes
/// written), rusticl's when the buffer is made (it clears it: count the bytes allocated); which,
/// is measured on the device before the load (`probe`). A piece being written when a sample is
/// taken counts against the loader (at most one staging buffer).
final class MemorySampler: @unchecked Sendable {
    private let lock = NSLock()
    private var written = 0
    private var peak = Int.min
    private var samples = 0
    private var running = true
    private let statm: Int32
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    private var thread: Thread?
    private var baselineValue = 0

    init() throws {
        statm = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard statm >= 0 else { throw ValidationError("cannot read /proc/self/statm: memory sampling needs Linux") }
    }

    deinit {
        close(statm)
    }

    /// Resident bytes now (the second field of /proc/self/statm, in pages).
    func resident() -> Int {
        var buffer = [UInt8](repeating: 0, count: 128)
        let n = buffer.withUnsafeMutableBytes { pread(statm, $0.baseAddress!, 127, 0) }
        guard n > 0 else { return 0 }
        let fields = String(decoding: buffer[0..<n], as: UTF8.self).split(separator: " ")
        return fields.count > 1 ? (Int(fields[1]) ?? 0) * page : 0
    }

    /// A `/proc/self/status` field in bytes (VmHWM, VmRSS).
    static func status(_ key: String) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
            return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
        }
        return 0
    }

    func sample() {
        let r = resident()
        lock.lock()
        peak = max(peak, r - baselineValue - written)
        samples += 1
        lock.unlock()
    }

    /// Starts sampling every `interval` seconds from a fresh baseline.
    func start(interval: Double = 0.0005) {
        lock.lock()
        baselineValue = resident()
        written = 0
        peak = Int.min
        samples = 0
        running = true
        lock.unlock()
        let t = Thread { [self] in
            while true {
                lock.lock()
                let go = running
                lock.unlock()
                if !go { break }
                sample()
                usleep(UInt32(interval * 1e6))
            }
        }
        t.start()
        thread = t
        sample()
    }

    /// Whether device buffers are resident once allocated (else once written).
    var residentWhenAllocated = false

    /// Records the load's progress: the device bytes resident now.
    func progress(_ p: LoadProgress) {
        lock.lock()
        written = residentWhenAllocated ? p.allocatedBytes : p.writtenBytes
        lock.unlock()
    }

    /// Measures whether `backend`'s buffers are resident once allocated: the resident size grows
    /// by at least half of a 64 MiB buffer made and not written.
    func probe(_ backend: OpenCLBackend) throws -> (eager: Bool, grew: Int) {
        let bytes = 64 << 20
        let before = resident()
        // Not from the backend's pool: a pooled probe would be handed to the load and counted twice.
        let probe = try backend.context.buffer(byteCount: bytes, label: "memory probe")
        try backend.synchronize()
        let grew = resident() - before
        withExtendedLifetime(probe) {}
        residentWhenAllocated = grew * 2 >= bytes
        return (residentWhenAllocated, grew)
    }

    /// Stops sampling; returns the peak held bytes, the sample count and the baseline.
    func stop() -> (peak: Int, samples: Int, baseline: Int) {
        sample()
        lock.lock()
        running = false
        let result = (peak, samples, baselineValue)
        lock.unlock()
        while thread?.isFinished == false { usleep(100) }
        return result
    }
}

struct Load: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load one MoE layer of a Hugging Face checkpoint onto a device and report the load's host memory and time.",
        discussion: """
            Each tensor goes from the file to its place in the device tensor through one staging buffer. The host \
            memory the loader holds is sampled every 0.5 ms as the resident size less the resident size before the \
            load less the bytes written to the device so far (a CPU device's buffers are this process's pages), \
            and checked against 1.2 × the layer's largest tensor + 3 × the staging size + 16 MiB. Exit status 1 \
            when it is over.
            """)

    @Option(help: "A Hugging Face model folder (config.json + .safetensors).")
    var model: String

    @Option(help: "The layer to load.")
    var layer: Int

    @Option(help: "Device index or case-insensitive name substring.")
    var device: String?

    @Option(help: "Storage type for the expert weights (f32, f16, bf16); default: as stored.")
    var weightType: String?

    @Option(help: "Staging buffer size in MiB.")
    var stagingMib = HFCheckpoint.defaultStagingBytes >> 20

    @Flag(help: "Then pack the weights on the device and run one forward of 8 tokens.")
    var pack = false

    @Flag(help: "Compare head, middle and tail runs of every loaded tensor with the file, bitwise.")
    var verify = false

    @Flag(help: "Also measure the way layers loaded before (the largest tensor read whole and widened to Float on the host), to show the sampler sees a whole-tensor host copy.")
    var hostCopyControl = false

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    func run() throws {
        try failing {
            let weightType = try self.weightType.map { name -> DType in
                guard let d = DType(rawValue: name), d.isFloatingPoint else { throw ValidationError("--weight-type: f32, f16 or bf16") }
                return d
            }
            guard (1...1024).contains(stagingMib) else { throw ValidationError("--staging-mib: 1...1024") }
            let staging = stagingMib << 20
            let sampler = try MemorySampler()
            let backend = try OpenCLBackend(device: try Device.select(device))
            let checkpoint = try HFCheckpoint(folder: model)
            let c = try checkpoint.moeConfig(layer: layer)
            let tensors = try checkpoint.layerTensors(layer)
            let largest = tensors.map(\.bytes).max() ?? 0
            let total = tensors.reduce(0) { $0 + $1.bytes }
            let constant = 3 * staging + (16 << 20)
            let bound = Int(1.2 * Double(largest)) + constant
            var report: [String: Any] = [
                "device": backend.device.name, "model": model, "layer": layer, "experts": c.experts, "hidden": c.hidden,
                "ffn": c.ffn, "fileBytes": total, "largestTensorBytes": largest, "stagingBytes": staging,
                "constantBytes": constant, "boundBytes": bound,
            ]
            var lines: [String] = []
            lines.append("device  \(backend.device.name)")
            lines.append(String(
                format: "layer   %@ layer %d of %@: %d experts, hidden %d, ffn %d; %.1f MB in %d tensors, the largest %.1f MB",
                checkpoint.modelType, layer, model, c.experts, c.hidden, c.ffn, Double(total) / 1e6, tensors.count,
                Double(largest) / 1e6))

            let probe = try sampler.probe(backend)
            report["deviceBuffersResidentWhen"] = probe.eager ? "allocated" : "written"
            lines.append(String(
                format: "probe   a 64 MiB device buffer made and not written grew RSS by %.1f MB: buffers counted when %@",
                Double(probe.grew) / 1e6, probe.eager ? "allocated" : "written"))
            sampler.start()
            let start = Date()
            let weights = try checkpoint.loadWeights(
                layer, backend: backend, weightType: weightType, stagingBytes: staging, progress: sampler.progress)
            try backend.synchronize()
            let seconds = Date().timeIntervalSince(start)
            let measured = sampler.stop()
            let written = weights.byteCount  // FP8 block scales included
            let rssAfter = sampler.resident()
            let hwm = MemorySampler.status("VmHWM")
            let passed = measured.peak < bound
            report.merge([
                "loadSeconds": seconds, "writtenBytes": written, "loaderPeakBytes": measured.peak, "samples": measured.samples,
                "rssBeforeBytes": measured.baseline, "rssAfterBytes": rssAfter, "vmHWMBytes": hwm, "passed": passed,
            ]) { a, _ in a }
            lines.append(String(
                format: "load    %.1f MB written to the device in %.2f s (%.2f GB/s), staging %d MiB", Double(written) / 1e6,
                seconds, Double(written) / seconds / 1e9, stagingMib))
            lines.append(String(
                format: "memory  loader-held peak %.1f MB over %d samples; bound 1.2 × %.1f MB + %.1f MB = %.1f MB: %@",
                Double(measured.peak) / 1e6, measured.samples, Double(largest) / 1e6, Double(constant) / 1e6,
                Double(bound) / 1e6, passed ? "pass" : "FAIL"))
            lines.append(String(
                format: "        process RSS %.1f MB before, %.1f MB after (device buffers included), peak (VmHWM) %.1f MB",
                Double(measured.baseline) / 1e6, Double(rssAfter) / 1e6, Double(hwm) / 1e6))
            if verify {
                let regions = try checkpoint.verify(weights, layer: layer, backend: backend)
                report["verifiedRegions"] = regions
                lines.append("verify  \(regions) runs of up to 4096 elements bit-exact against the file")
            }
            if pack {
                let packStart = Date()
                let moe = try MoELayer(backend: backend, config: c, weights: weights, pack: true)
                let packSeconds = Date().timeIntervalSince(packStart)
                var g = SeededGenerator(seed: 14)
                let x = try backend.tensor(g.normals(8 * c.hidden), shape: [8, c.hidden], dtype: .f32)
                let forwardStart = Date()
                let y = try backend.floats(try moe.forward(x).y)
                let forwardSeconds = Date().timeIntervalSince(forwardStart)
                let finite = y.allSatisfy(\.isFinite)
                report.merge([
                    "packSeconds": packSeconds, "rssAfterPackBytes": sampler.resident(), "forwardSeconds": forwardSeconds,
                    "forwardFinite": finite,
                ]) { a, _ in a }
                lines.append(String(
                    format: "pack    %.2f s (RSS %.1f MB after); forward of 8 tokens %.1f ms, output %@", packSeconds,
                    Double(sampler.resident()) / 1e6, forwardSeconds * 1e3, finite ? "finite" : "NOT FINITE"))
            }
            if hostCopyControl {
                // The former way, on the largest tensor: its bytes read whole, then widened to Float.
                let name = tensors.max { $0.bytes < $1.bytes }!.name
                let file = try SafeTensorsFile(path: checkpoint.path(of: name))
                let count = try file.entry(name).shape.reduce(1, *)
                let dtype = try file.dtype(of: name)
                sampler.start()
                let whole = try file.bytes(name, elements: 0..<count)
                let floats = whole.withUnsafeBytes { Reference.decodeFloats($0, as: dtype == .f32 ? .f32 : dtype == .f16 ? .f16 : .bf16) }
                let control = sampler.stop()
                withExtendedLifetime((whole, floats)) {}
                report["controlPeakBytes"] = control.peak
                lines.append(String(
                    format: "control the former way (largest tensor read whole and widened to Float): %.1f MB held, %@ the bound",
                    Double(control.peak) / 1e6, control.peak < bound ? "under" : "over"))
            }
            if json {
                let data = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                lines.forEach { print($0) }
            }
            if !passed { throw ExitCode(1) }
        }
    }
}
