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

/// OpenBLAS cores that run SSE-era or AVX1 kernels: when the library reports one of these on a
/// CPU with AVX2 or AVX-512, it misdetected the CPU (Debian's 0.3.21 does on some AMD parts).
private let weakOpenBLASCores: Set<String> = [
    "unknown", "katmai", "coppermine", "northwood", "prescott", "banias", "core2", "penryn", "dunnington", "nehalem",
    "atom", "amd64", "opteron", "opteron_sse3", "barcelona", "bobcat", "bulldozer", "piledriver", "steamroller",
    "excavator", "sandybridge",
]

func openBLASCoreName() -> String {
    openblas_get_corename().map { String(cString: $0) } ?? "?"
}

/// The x86 CPU flags of the first processor (Linux), empty elsewhere.
private func cpuFlags() -> Set<String> {
    guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
    else { return [] }
    return Set(line.split(separator: ":", maxSplits: 1).last?.split(separator: " ").map(String.init) ?? [])
}

/// Makes sure OpenBLAS runs the kernels this CPU can run best. The core is chosen when the
/// library loads, so when it reports an SSE/AVX1-era core on a CPU with AVX-512 (or AVX2) and
/// `OPENBLAS_CORETYPE` is not set, the process runs itself again with `OPENBLAS_CORETYPE` set
/// (SkylakeX, or Haswell); it returns only when no restart is needed. Then sets its thread
/// count.
func configureOpenBLAS(threads: Int) {
    let core = openBLASCoreName()
    let flags = cpuFlags()
    let avx512 = ["avx512f", "avx512bw", "avx512dq", "avx512vl"].allSatisfy(flags.contains)
    // An AVX2-era core (Haswell, Zen) on a CPU with AVX-512 (Debian's 0.3.21 maps Zen 4/5 to
    // Haswell kernels) leaves half the vector width unused: the peer would not be at its best.
    if weakOpenBLASCores.contains(core.lowercased()) || (avx512 && ["haswell", "zen"].contains(core.lowercased())) {
        let better: String? =
            avx512 ? "SkylakeX" : ["avx2", "fma"].allSatisfy(flags.contains) ? "Haswell" : nil
        if let better, let forced = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] {
            FileHandle.standardError.write(Data(
                "note: OPENBLAS_CORETYPE=\(forced) runs OpenBLAS core \(core) where \(better) would be faster; the OpenBLAS figures will be low\n".utf8))
        } else if let better {
            FileHandle.standardError.write(Data(
                "note: OpenBLAS detected core \(core) on a CPU with \(better == "SkylakeX" ? "AVX-512" : "AVX2"); restarting with OPENBLAS_CORETYPE=\(better)\n".utf8))
            setenv("OPENBLAS_CORETYPE", better, 1)
            execv("/proc/self/exe", CommandLine.unsafeArgv)
            // execv returned: it failed; carry on with the detected core.
            FileHandle.standardError.write(Data("note: restart failed (errno \(errno)); OpenBLAS keeps core \(core)\n".utf8))
        }
    }
    openblas_set_num_threads(Int32(threads))
}
