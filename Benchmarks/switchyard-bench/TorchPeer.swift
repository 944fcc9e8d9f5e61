import Foundation
import Switchyard

/// PyTorch eager running the same MoE layer (router linear → softmax → top-k → renormalize →
/// per-expert SwiGLU FFN → weighted sum), f32, on `threads` threads: `Benchmarks/peers/torch_moe.py`
/// run by `python3` in a process of its own, which times itself (warm-up, then the median of its
/// runs on the wall clock) and prints JSON. Skipped when `python3 -c 'import torch'` fails: torch
/// is never a dependency of the package or its tests.
///
/// With `gpu` (the benchmark's device is a GPU and torch sees a CUDA device: NVIDIA, or AMD under
/// ROCm) it runs on that GPU in the layer's dtype instead, each sample one forward from a
/// synchronized start to `torch.cuda.synchronize()`: a host peer beside a GPU device would
/// measure the wrong machine.
struct TorchPeer: Peer {
    let tokens: Int
    let hidden: Int
    let ffn: Int
    let experts: Int
    let k: Int
    let copies: Int
    let threads: Int
    let runs: Int
    let seconds: Double
    /// On the GPU torch sees (`cuda`), in `dtype` (f32, f16 or bf16); else on the host in f32.
    var gpu = false
    var dtype: DType = .f32

    var name: String { "torch" }
    func estimatedSeconds() -> Double? { nil }
    func prepare() throws -> () throws -> Void { throw BenchError("torch times itself in its own process") }

    func measure(budget: Double) -> PeerTiming {
        guard let script = TorchPeer.script else {
            return .skipped("Benchmarks/peers/torch_moe.py not found (set SWITCHYARD_TORCH_SCRIPT)")
        }
        if let why = TorchPeer.unavailable { return .skipped(why) }
        var arguments = [
            script, "\(tokens)", "\(hidden)", "\(ffn)", "\(experts)", "\(k)", "--threads", "\(threads)",
            "--copies", "\(copies)", "--runs", "\(runs)", "--seconds", "\(seconds)",
        ]
        if gpu { arguments += ["--device", "cuda", "--dtype", dtype.rawValue] }
        // Twice: with OpenMP's default wait policy (threads spin between ops) and with PASSIVE
        // (they sleep). On an idle machine the two are close; when another process holds a core,
        // spinning threads wait on a descheduled one and the default ran 20–60× slower here
        // (mixtral-small decode 110–340 ms against 6 ms). The faster run is torch at its best.
        var best: Stats?
        var failure: PeerTiming?
        for policy in gpu ? ["default"] : ["default", "PASSIVE"] {
            var environment = ["OMP_NUM_THREADS": "\(threads)"]
            if policy != "default" { environment["OMP_WAIT_POLICY"] = policy }
            let result = runProcess("python3", arguments, environment: environment, timeout: 600)
            guard result.status == 0 else {
                failure = .failed("torch_moe.py exited \(result.status): \(result.stderr.suffix(400))")
                continue
            }
            guard let line = result.stdout.split(separator: "\n").last,
                let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                let samples = object["samples_ms"] as? [Double], !samples.isEmpty
            else {
                failure = .failed("torch_moe.py printed no result: \(result.stdout.suffix(200))")
                continue
            }
            // Same thread count as the other host peers, or the comparison is not fair.
            if !gpu, let used = object["threads"] as? Int, used != threads {
                return .failed("torch ran on \(used) threads, not the \(threads) asked for")
            }
            let stats = Stats(samples.map { $0 * 1e-3 })
            if best == nil || stats.median < best!.median { best = stats }
        }
        guard let best else { return failure ?? .failed("torch_moe.py did not run") }
        return .timed(best)
    }

    /// The script: `SWITCHYARD_TORCH_SCRIPT`, else beside this source file in the checkout,
    /// else under the working directory.
    static let script: String? = {
        let fm = FileManager.default
        var candidates: [String] = []
        if let path = ProcessInfo.processInfo.environment["SWITCHYARD_TORCH_SCRIPT"] { candidates.append(path) }
        let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(here.appendingPathComponent("peers/torch_moe.py").path)
        candidates.append(fm.currentDirectoryPath + "/Benchmarks/peers/torch_moe.py")
        return candidates.first { fm.fileExists(atPath: $0) }
    }()

    /// Why torch cannot run (nil when `python3 -c 'import torch'` works); asked once.
    static let unavailable: String? = {
        let result = runProcess("python3", ["-c", "import torch; print(torch.__version__)"], environment: [:], timeout: 120)
        if result.status == 0 {
            version = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            return nil
        }
        return result.status == 127 ? "python3 not found" : "python3 cannot import torch"
    }()

    nonisolated(unsafe) static var version = ""

    /// The name of the CUDA device torch sees (nil when torch cannot import or sees none); asked once.
    static let cudaDevice: String? = {
        guard unavailable == nil else { return nil }
        let result = runProcess(
            "python3", ["-c", "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')"],
            environment: [:], timeout: 120)
        let name = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        return result.status == 0 && !name.isEmpty ? name : nil
    }()
}

/// Runs `executable` (looked up on PATH) with `arguments` and extra `environment`; its exit
/// status (127 when it could not start, 124 after `timeout` seconds), stdout and stderr.
func runProcess(_ executable: String, _ arguments: [String], environment: [String: String], timeout: Double)
    -> (status: Int32, stdout: String, stderr: String)
{
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = [executable] + arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    do {
        try process.run()
    } catch {
        return (127, "", "\(error)")
    }
    // Read both pipes while the process runs, so neither fills up and blocks it.
    final class Sink: @unchecked Sendable { var data = Data() }
    let stderrSink = Sink()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
        stderrSink.data = err.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    let timer = DispatchWorkItem { if process.isRunning { process.terminate() } }
    DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: timer)
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    timer.cancel()
    group.wait()
    let status: Int32 = process.terminationReason == .uncaughtSignal ? 124 : process.terminationStatus
    return (status, String(decoding: stdout, as: UTF8.self), String(decoding: stderrSink.data, as: UTF8.self))
}
