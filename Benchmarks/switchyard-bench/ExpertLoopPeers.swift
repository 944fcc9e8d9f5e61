import CCLBlast
import COpenBLAS
import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance

/// What the MoE-layer peers share with the device run of the same item: the device, and the
/// per-expert row counts of a real routing (the layer's own router on the item's input, run once
/// on the device and read back), so the per-expert loops do exactly the work the grouped matmul
/// does. Filled by the item's device preparation, which runs before its peers.
final class LayerRunInfo: @unchecked Sendable {
    var device: Device?
    /// Rows routed to each expert.
    var counts: [Int] = []
    /// One forward of the item's layer with per-stage device times.
    var profiledRun: (() throws -> [StageTime])?

    func requireCounts(_ peer: String) throws -> [Int] {
        guard !counts.isEmpty else {
            throw BenchError("\(peer): no routing counts (the device run of the layer did not record them)")
        }
        return counts
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The shape of the routed experts of an MoE layer, as the per-expert peers see it.
struct ExpertLoopShape {
    let hidden: Int
    let ffn: Int
    let experts: Int
    /// Copies of the expert weights to rotate over (decode: enough that they do not stay in the
    /// last-level cache between runs, as on the device); 1 for prefill.
    let copies: Int
    let seed: UInt64

    var gateUpCount: Int { experts * 2 * ffn * hidden }
    var downCount: Int { experts * hidden * ffn }

    /// Flops of one pass over `counts`: gate|up (2·ffn outputs) and down, per routed row.
    func flops(_ counts: [Int]) -> Double {
        Double(counts.reduce(0, +)) * (2 * Double(hidden) * 2 * Double(ffn) + 2 * Double(ffn) * Double(hidden))
    }
}

/// Host f32 storage, filled with seeded uniform values in [-scale, scale) (fast to make even at
/// hundreds of MB; the values do not change a GEMM's speed as long as they are normal numbers).
final class HostFloats: @unchecked Sendable {
    let buffer: UnsafeMutableBufferPointer<Float>
    var base: UnsafeMutablePointer<Float> { buffer.baseAddress! }
    var count: Int { buffer.count }

    init(count: Int, seed: UInt64, scale: Float = 1) {
        buffer = .allocate(capacity: max(count, 1))
        var g = SeededGenerator(seed: seed)
        let s = scale * 0x1.0p-31
        var i = 0
        while i < count {
            let r = g.next()
            buffer[i] = Float(Int32(truncatingIfNeeded: r)) * s
            if i + 1 < count { buffer[i + 1] = Float(Int32(truncatingIfNeeded: r >> 32)) * s }
            i += 2
        }
    }

    deinit { buffer.deallocate() }
}

/// OpenBLAS SGEMM once per expert, on the host (wall clock, OpenBLAS's threads): for each expert
/// e with n_e routed rows at row offset o_e of the expert-ordered activations,
///
///     H[o_e ..< o_e + n_e, 2·ffn] = Xs[o_e ..< o_e + n_e, hidden] · Wgu[e]ᵀ   (Wgu[e]: [2·ffn, hidden])
///     Y[o_e ..< o_e + n_e, hidden] = A[o_e ..< o_e + n_e, ffn] · Wd[e]ᵀ      (Wd[e]: [hidden, ffn])
///
/// with the weights in the checkpoint layout Switchyard reads (`cblas_sgemm` with B transposed).
/// The gather and the SwiGLU between the two GEMMs are not run: this is the GEMM work alone,
/// set beside the grouped matmul stages (gate|up with its fused gather and SwiGLU epilogue, and
/// down) of the same layer.
struct OpenBLASExpertLoop: Peer {
    let shape: ExpertLoopShape
    let info: LayerRunInfo
    let policy: PeerPolicy

    var name: String { "openblas" }
    var scope: PeerScope { .groupedMatmul }
    func estimatedSeconds() -> Double? { nil }

    func prepare() throws -> () throws -> Void {
        let counts = try info.requireCounts(name)
        let s = shape
        let rows = counts.reduce(0, +)
        let gateUp = (0..<s.copies).map { HostFloats(count: s.gateUpCount, seed: s.seed &+ UInt64($0), scale: 0.05) }
        let down = (0..<s.copies).map { HostFloats(count: s.downCount, seed: s.seed &+ 100 &+ UInt64($0), scale: 0.05) }
        let xs = HostFloats(count: rows * s.hidden, seed: s.seed ^ 1)
        let a = HostFloats(count: rows * s.ffn, seed: s.seed ^ 2)
        let h = HostFloats(count: rows * 2 * s.ffn, seed: 0)
        let y = HostFloats(count: rows * s.hidden, seed: 0)
        let hidden = Int32(s.hidden)
        let ffn = Int32(s.ffn)
        var next = 0
        return {
            let wgu = gateUp[next].base
            let wd = down[next].base
            next = (next + 1) % s.copies
            var offset = 0
            for (e, n) in counts.enumerated() where n > 0 {
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), 2 * ffn, hidden, 1,
                    xs.base + offset * s.hidden, hidden, wgu + e * 2 * s.ffn * s.hidden, hidden, 0,
                    h.base + offset * 2 * s.ffn, 2 * ffn)
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), hidden, ffn, 1,
                    a.base + offset * s.ffn, ffn, wd + e * s.hidden * s.ffn, ffn, 0,
                    y.base + offset * s.hidden, hidden)
                offset += n
            }
        }
    }
}

/// CLBlast SGEMM once per expert on the same OpenCL device, in a context and queue of its own:
/// the same two GEMMs per expert as `OpenBLASExpertLoop`, on device buffers, one `CLBlastSgemm`
/// each, timed on the wall clock from the first enqueue to `clFinish` (CLBlast's own per-call
/// host work, temporary buffers and helper kernels included, as a user would see it). Its first
/// call compiles CLBlast's kernels (many seconds on PoCL): the warm-up pass runs every distinct
/// call once outside the timing.
struct CLBlastExpertLoop: Peer {
    let shape: ExpertLoopShape
    let info: LayerRunInfo
    let policy: PeerPolicy

    var name: String { "clblast" }
    var scope: PeerScope { .groupedMatmul }
    func estimatedSeconds() -> Double? { nil }

    func prepare() throws -> () throws -> Void {
        let counts = try info.requireCounts(name)
        guard let device = info.device else { throw BenchError("clblast: no device recorded") }
        let s = shape
        let rows = counts.reduce(0, +)
        let context = try Context(device: device)
        func upload(_ host: HostFloats, _ label: String) throws -> Buffer {
            let buffer = try context.buffer(byteCount: host.count * 4, label: label)
            try buffer.upload(Array(host.buffer), byteOffset: 0)
            return buffer
        }
        func zeros(_ count: Int, _ label: String) throws -> Buffer {
            let buffer = try context.buffer(byteCount: count * 4, label: label)
            try buffer.fill(pattern: [0, 0, 0, 0])
            return buffer
        }
        var gateUp: [Buffer] = []
        var down: [Buffer] = []
        for c in 0..<s.copies {
            gateUp.append(try upload(HostFloats(count: s.gateUpCount, seed: s.seed &+ UInt64(c), scale: 0.05), "clblast gate|up"))
            down.append(try upload(HostFloats(count: s.downCount, seed: s.seed &+ 100 &+ UInt64(c), scale: 0.05), "clblast down"))
        }
        let xs = try upload(HostFloats(count: rows * s.hidden, seed: s.seed ^ 1), "clblast xs")
        let a = try upload(HostFloats(count: rows * s.ffn, seed: s.seed ^ 2), "clblast a")
        let h = try zeros(rows * 2 * s.ffn, "clblast h")
        let y = try zeros(rows * s.hidden, "clblast y")
        try context.queue.finish()
        var queue: cl_command_queue? = context.queue.handle
        var next = 0
        return {
            let wgu = gateUp[next].handle
            let wd = down[next].handle
            next = (next + 1) % s.copies
            var offset = 0
            for (e, n) in counts.enumerated() where n > 0 {
                var status = CLBlastSgemm(
                    CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, n, 2 * s.ffn, s.hidden, 1,
                    xs.handle, offset * s.hidden, s.hidden, wgu, e * 2 * s.ffn * s.hidden, s.hidden, 0,
                    h.handle, offset * 2 * s.ffn, 2 * s.ffn, &queue, nil)
                if status != CLBlastSuccess { throw BenchError("CLBlastSgemm (gate|up, expert \(e), \(n) rows) returned \(status.rawValue)") }
                status = CLBlastSgemm(
                    CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, n, s.hidden, s.ffn, 1,
                    a.handle, offset * s.ffn, s.ffn, wd, e * s.hidden * s.ffn, s.ffn, 0,
                    y.handle, offset * s.hidden, s.hidden, &queue, nil)
                if status != CLBlastSuccess { throw BenchError("CLBlastSgemm (down, expert \(e), \(n) rows) returned \(status.rawValue)") }
                offset += n
            }
            try context.queue.finish()
        }
    }
}

// MARK: OpenBLAS setup

func openBLASCoreName() -> String {
    openblas_get_corename().map { String(cString: $0) } ?? "?"
}

/// The x86 CPU flags and vendor of the first processor (Linux), empty elsewhere.
private func cpuInfo() -> (flags: Set<String>, vendor: String) {
    guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return ([], "") }
    let lines = text.split(separator: "\n")
    func field(_ name: String) -> String? {
        lines.first { $0.hasPrefix(name) }.flatMap { $0.split(separator: ":", maxSplits: 1).last }.map(String.init)
    }
    let flags = Set(field("flags")?.split(separator: " ").map(String.init) ?? [])
    return (flags, field("vendor_id")?.trimmingCharacters(in: .whitespaces) ?? "")
}

/// The OpenBLAS core for this CPU's vector ISA, from its flags: AVX-512 → SkylakeX, AVX2 + FMA
/// → Zen on AMD and Haswell elsewhere; nil for older CPUs (and non-x86), left to OpenBLAS.
/// With the cores that run kernels at least as wide (a detected Cooperlake is kept on an
/// AVX-512 CPU: it runs the SkylakeX SGEMM).
private func derivedOpenBLASCore() -> (name: String, isa: String, good: Set<String>)? {
    let (flags, vendor) = cpuInfo()
    let avx512: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]
    if ["avx512f", "avx512bw", "avx512dq", "avx512vl"].allSatisfy(flags.contains) {
        return ("SkylakeX", "AVX-512", avx512)
    }
    if ["avx2", "fma"].allSatisfy(flags.contains) {
        return (vendor == "AuthenticAMD" ? "Zen" : "Haswell", "AVX2", avx512.union(["haswell", "zen"]))
    }
    return nil
}

/// How the OpenBLAS core in use was chosen, for the ceiling table and the peers' line.
nonisolated(unsafe) var openBLASCoreSource = "detected by OpenBLAS"

/// Makes sure OpenBLAS runs the kernels this CPU can run best, and says which core it runs.
/// The core is chosen when the library loads (Debian's 0.3.21 misdetects some CPUs: SSE-era
/// kernels on AMD Zen, AVX2 ones on AVX-512 parts), so unless `OPENBLAS_CORETYPE` is set, a
/// detected core narrower than the CPU's vector ISA makes the process run itself again with
/// `OPENBLAS_CORETYPE` derived from /proc/cpuinfo (`derivedOpenBLASCore`); it returns only when
/// no restart is needed. A user's `OPENBLAS_CORETYPE` is kept, with a note when it is narrower.
/// Then sets the thread count.
func configureOpenBLAS(threads: Int) {
    let core = openBLASCoreName()
    let environment = ProcessInfo.processInfo.environment
    let derived = derivedOpenBLASCore()
    let narrower = derived.map { !$0.good.contains(core.lowercased()) } ?? false
    if environment["SWITCHYARD_OPENBLAS_CORE_DERIVED"] != nil {
        openBLASCoreSource = "OPENBLAS_CORETYPE=\(environment["OPENBLAS_CORETYPE"] ?? "?") derived from /proc/cpuinfo"
    } else if let forced = environment["OPENBLAS_CORETYPE"] {
        openBLASCoreSource = "OPENBLAS_CORETYPE=\(forced) set by the user"
        if let derived, narrower {
            openBLASCoreSource += "; this \(derived.isa) CPU would run \(derived.name)"
            FileHandle.standardError.write(Data(
                "note: OPENBLAS_CORETYPE=\(forced) (set by the user) runs OpenBLAS core \(core) on a CPU with \(derived.isa): \(derived.name) would be faster, the OpenBLAS figures will be low (unset it to let switchyard-bench pick)\n".utf8))
        }
    } else if let derived, narrower {
        FileHandle.standardError.write(Data(
            "note: OpenBLAS detected core \(core) on a CPU with \(derived.isa); restarting with OPENBLAS_CORETYPE=\(derived.name)\n".utf8))
        setenv("OPENBLAS_CORETYPE", derived.name, 1)
        setenv("SWITCHYARD_OPENBLAS_CORE_DERIVED", "1", 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // execv returned: it failed; carry on with the detected core.
        FileHandle.standardError.write(Data("note: restart failed (errno \(errno)); OpenBLAS keeps core \(core)\n".utf8))
        openBLASCoreSource = "detected by OpenBLAS (restart with \(derived.name) failed)"
    }
    openblas_set_num_threads(Int32(threads))
}
