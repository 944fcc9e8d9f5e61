import Foundation
import OpenCLHost
import Switchyard
import Testing

/// Host memory while a layer loads: `switchyard load` (run as a child process, so other tests'
/// allocations do not count) samples its resident size every 0.5 ms less the device bytes made
/// resident so far (CPU devices keep buffers in the process's pages) and checks the peak against
/// 1.2 × the layer's largest tensor + 3 × the staging buffer + 16 MiB. The same run measures the
/// former way (the largest tensor read whole and widened to Float), which must be over the bound:
/// the meter sees a whole-tensor host copy.
@Suite("Checkpoint loading: bounded host memory", .serialized)
struct LoadMemoryTests {
    /// The `switchyard` executable built beside this test binary.
    static var tool: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("switchyard").path
    }

    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Fixtures/big_moe.py")
            .standardized.path
    }

    /// Runs `executable` with `arguments`; its standard output and exit status.
    static func run(_ executable: String, _ arguments: [String]) throws -> (out: String, status: Int32) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (String(decoding: data, as: UTF8.self), process.terminationStatus)
    }

    /// Writes a Mixtral-style layer with big_moe.py; returns its folder, file bytes and seconds taken.
    static func makeLayer(_ name: String, experts: Int, hidden: Int, ffn: Int, folder: String? = nil) throws
        -> (folder: String, bytes: Int, seconds: Double)
    {
        let dir = folder ?? FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-\(name)-\(getpid())").path
        let start = Date()
        let (out, status) = try run(
            "/usr/bin/env", ["python3", script, dir, "\(experts)", "\(hidden)", "\(ffn)", "bf16"])
        guard status == 0, let bytes = Int(out.split(separator: " ").first ?? "") else {
            throw CheckpointError("big_moe.py failed (python3 with numpy and safetensors is needed): \(out)")
        }
        return (dir, bytes, Date().timeIntervalSince(start))
    }

    /// `switchyard load --json` on device `index`; the report.
    static func load(_ folder: String, device index: Int, extra: [String]) throws -> [String: Any] {
        let (out, status) = try run(
            tool, ["load", "--model", folder, "--layer", "0", "--device", "\(index)", "--json", "--verify"] + extra)
        guard let line = out.split(separator: "\n").last,
            let report = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        else {
            throw CheckpointError("switchyard load exited \(status) without a report: \(out)")
        }
        return report
    }

    static func summary(_ r: [String: Any]) -> String {
        func mb(_ key: String) -> String { String(format: "%.1f MB", Double(r[key] as? Int ?? 0) / 1e6) }
        return "\(r["device"] ?? "?"): loader-held peak \(mb("loaderPeakBytes")) (bound \(mb("boundBytes")), largest tensor "
            + "\(mb("largestTensorBytes"))), RSS \(mb("rssBeforeBytes")) → \(mb("rssAfterBytes")) (VmHWM \(mb("vmHWMBytes"))), "
            + String(format: "%.2f s", r["loadSeconds"] as? Double ?? 0) + " for \(mb("writtenBytes")); device buffers resident when "
            + "\(r["deviceBuffersResidentWhen"] ?? "?"); control (whole tensor as Float) \(mb("controlPeakBytes"))"
    }

    /// A 201 MB layer (2 experts, hidden 2048, ffn 8192, bf16; the largest tensor 33.6 MB),
    /// through a 4 MiB staging buffer, on every device.
    @Test func aLayerLoadsThroughBoundedHostMemory() throws {
        let layer = try Self.makeLayer("load-small", experts: 2, hidden: 2048, ffn: 8192)
        defer { try? FileManager.default.removeItem(atPath: layer.folder) }
        let devices = try Device.all()
        #expect(!devices.isEmpty)
        for index in devices.indices {
            let r = try Self.load(layer.folder, device: index, extra: ["--staging-mib", "4", "--host-copy-control"])
            let peak = r["loaderPeakBytes"] as? Int ?? .max
            let bound = r["boundBytes"] as? Int ?? 0
            let largest = r["largestTensorBytes"] as? Int ?? 0
            #expect(largest == 8192 * 2048 * 2)
            #expect(bound == Int(1.2 * Double(largest)) + 3 * (4 << 20) + (16 << 20))
            #expect(r["passed"] as? Bool == true && peak < bound, "\(Self.summary(r))")
            #expect((r["controlPeakBytes"] as? Int ?? 0) > bound, "the meter missed a whole-tensor host copy: \(Self.summary(r))")
            #expect(r["writtenBytes"] as? Int == r["fileBytes"] as? Int)
            // 6 expert tensors × 3 runs, and the router's 4096 elements in one.
            #expect((r["verifiedRegions"] as? Int ?? 0) == 6 * 3 + 1, "\(r)")
            print("load-memory small layer, \(Self.summary(r))")
        }
    }

    /// A Mixtral-8x7B layer (8 experts, hidden 4096, ffn 14336, bf16: about 2.8 GB on disk)
    /// with the default staging buffer, packed and run once after the load: `make check-load`
    /// (SWITCHYARD_CHECK_LOAD=1; SWITCHYARD_CHECK_LOAD_DIR keeps the folder there). On every
    /// device whose memory holds the layer twice (weights and their packed copy).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["SWITCHYARD_CHECK_LOAD"] == "1"))
    func aMixtral8x7BLayerLoadsThroughBoundedHostMemory() throws {
        let env = ProcessInfo.processInfo.environment
        let keep = env["SWITCHYARD_CHECK_LOAD_DIR"].flatMap { $0.isEmpty ? nil : $0 }
        let layer = try Self.makeLayer("load-mixtral", experts: 8, hidden: 4096, ffn: 14336, folder: keep)
        defer { if keep == nil { try? FileManager.default.removeItem(atPath: layer.folder) } }
        print(String(format: "load-memory mixtral-8x7b layer: %.3f GB written by big_moe.py in %.1f s to %@",
                     Double(layer.bytes) / 1e9, layer.seconds, layer.folder))
        #expect(layer.bytes > 2_800_000_000)
        var ran = 0
        for (index, device) in try Device.all().enumerated() {
            guard device.globalMemoryBytes >= 2 * layer.bytes, device.maxAllocationBytes >= 8 * 2 * 14336 * 4096 * 2 else {
                print("load-memory mixtral-8x7b layer: \(device.name) skipped: \(device.globalMemoryBytes) bytes of global memory, "
                    + "largest allocation \(device.maxAllocationBytes)")
                continue
            }
            let r = try Self.load(layer.folder, device: index, extra: ["--pack", "--host-copy-control"])
            let peak = r["loaderPeakBytes"] as? Int ?? .max
            let bound = r["boundBytes"] as? Int ?? 0
            #expect(r["largestTensorBytes"] as? Int == 14336 * 4096 * 2)
            #expect(r["passed"] as? Bool == true && peak < bound, "\(Self.summary(r))")
            #expect((r["controlPeakBytes"] as? Int ?? 0) > bound, "\(Self.summary(r))")
            #expect(r["forwardFinite"] as? Bool == true)
            #expect((r["verifiedRegions"] as? Int ?? 0) == 25 * 3)
            print("load-memory mixtral-8x7b layer, \(Self.summary(r)); "
                + String(format: "pack %.2f s, RSS after pack %.1f MB", r["packSeconds"] as? Double ?? 0,
                         Double(r["rssAfterPackBytes"] as? Int ?? 0) / 1e6))
            ran += 1
        }
        #expect(ran > 0, "no device holds the layer")
    }
}
