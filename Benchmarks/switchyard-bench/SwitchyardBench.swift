import ArgumentParser
import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance

/// The device's ceilings and, beside them, the dense-GEMM figure of the peer library (nil when
/// not measured).
struct BenchCeilings {
    let device: Ceilings
    let gemm: GemmCeiling?
    var gemmGFlops: Double? { gemm?.gflops }
}

@main
struct SwitchyardBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard-bench",
        abstract: "Measure the device's ceilings, then time every conformance case against them and its peers.",
        discussion: """
            Device times are the sum of a run's kernel event durations (profiling queue; the host clock \
            where a device's events are implausible), the median of many runs after warm-up; the first \
            run is reported apart (wall clock, program build and first-launch compile included). Copy and \
            stream bandwidth count bytes read plus bytes written, the read-only ceiling bytes read. \
            Memory-bound cases are given as a percentage of the best bandwidth ceiling, compute-bound ones \
            of the FMA ceiling, decode layers of the copy and the read-only ceilings. Peers run on the \
            wall clock; a peer rate above a ceiling is flagged (that ceiling is wrong).
            """)

    @Option(help: "Device index or case-insensitive name substring (default: SWITCHYARD_DEVICE, else GPU > accelerator > CPU).")
    var device: String?

    @Option(help: "Only the cases whose name matches this regular expression.")
    var filter: String?

    @Flag(help: "The largest case per op and dtype, smaller ceiling buffers, shorter timing (under a minute).")
    var quick = false

    @Option(help: "Write the results as JSON to this file.")
    var json: String?

    @Option(help: "Write a bar chart (percent of ceiling per case) as SVG to this file.")
    var svg: String?

    @Option(help: "Timed runs per case, at least (more for short kernels, until enough device time has accumulated).")
    var runs: Int = 10

    @Option(name: .customLong("ceiling-mib"), help: "Bytes of each bandwidth-ceiling buffer, in MiB (default 512, 256 with --quick).")
    var ceilingMiB: Int?

    @Flag(help: "Leave out the MoE layers at the benchmark shapes (mixtral-small, deepseek-like; prefill and decode).")
    var noLayers = false

    @Flag(help: ArgumentHelp(
        "Add decode layers at full model sizes (Mixtral-8x7B: hidden 4096, ffn 14336, 8 experts, top-2; "
            + "gpt-oss-20b: hidden and ffn 2880, 32 experts, top-4), T 1 and 16, bf16 and quantized: GB of weights "
            + "each, so that a GPU's decode time is its weight reads, not its launches."))
    var modelSizes = false

    @Option(name: .customLong("cold-mib"), help: "Weight bytes, in MiB, a decode layer reads before it reads an expert's weights again (copies of the layer and rotating inputs; default 512: about twice the last-level cache of the machines measured).")
    var coldMiB: Int = 512

    @Flag(help: "Do not measure the OpenBLAS SGEMM ceiling.")
    var noGemm = false

    @Option(help: "Skip a peer whose run would take longer than this many seconds.")
    var peerBudget: Double = 2

    @Flag(help: "Leave out the scaling sweeps (layer time against T and against E).")
    var noScaling = false

    @Option(name: .customLong("skip-peer"), help: "Leave out a peer of the MoE layers: openblas, clblast or torch (repeatable).")
    var skipPeers: [String] = []

    @Option(help: "Timed runs of the CLBlast per-expert loop (slow on CPU OpenCL drivers; its compile is a warm-up run outside the timing).")
    var clblastRuns: Int = 3

    @Option(help: "Threads for the host peers (OpenBLAS, PyTorch); default: the machine's processors.")
    var peerThreads: Int?

    @Flag(help: "Expert parallelism under `mpirun -np P`: the EP layer at the benchmark shapes (compute, staging, exchange; bytes per token). Only --device, --quick, --runs and --json apply.")
    var ep = false

    func validate() throws {
        // Upper bounds too: a count past them would run for ever, a size past them would wrap
        // when shifted to bytes.
        if !(1...100_000).contains(runs) { throw ValidationError("--runs must be in 1...100000") }
        if let m = ceilingMiB, !(1...(1 << 20)).contains(m) { throw ValidationError("--ceiling-mib must be in 1...1048576") }
        if !(1...(1 << 20)).contains(coldMiB) { throw ValidationError("--cold-mib must be in 1...1048576") }
        if !(1...100_000).contains(clblastRuns) { throw ValidationError("--clblast-runs must be in 1...100000") }
        if let t = peerThreads, !(1...4096).contains(t) { throw ValidationError("--peer-threads must be in 1...4096") }
        if !(peerBudget > 0 && peerBudget.isFinite) { throw ValidationError("--peer-budget must be a positive number of seconds") }
        for (flag, path) in [("--json", json), ("--svg", svg)] {
            if let path, let problem = outputPathProblem(path) { throw ValidationError("\(flag) \(path): \(problem)") }
        }
        if let filter, !filter.isEmpty {
            do { _ = try Regex(filter) } catch {
                throw ValidationError("--filter '\(filter)' is not a regular expression: \(error)")
            }
        }
        for p in skipPeers where !["openblas", "clblast", "torch"].contains(p) {
            throw ValidationError("--skip-peer takes openblas, clblast or torch, not \(p)")
        }
    }

    func run() throws {
        if ep {
            // Before OpenBLAS, which may restart the process (not under mpirun).
            try failing { try runExpertParallelBench(device: device, quick: quick, runs: runs, json: json) }
            return
        }
        let started = now()
        // OpenBLAS first: it may restart the process to pick the right core for this CPU.
        let threads = peerThreads ?? ProcessInfo.processInfo.activeProcessorCount
        configureOpenBLAS(threads: threads)
        var peerOptions = LayerPeerOptions(
            threads: threads, skip: Set(skipPeers), clblastRuns: clblastRuns, minRuns: runs)
        let (backend, items) = try failing {
            let device = try Device.select(device)
            // (Asking torch starts python3 and CUDA: only for a GPU run with its layers.)
            peerOptions.torchOnGPU =
                !noLayers && device.kind == .gpu && !skipPeers.contains("torch") && TorchPeer.cudaDevice != nil
            var items = try conformanceItems(filter: filter, quick: quick)
            items += try routingItems(filter: filter, quick: quick)
            items += try loadItems(filter: filter)
            items += try tokenMergeItems(filter: filter, quick: quick)
            items += try softMoEItems(filter: filter, quick: quick)
            items += try exampleOpItems(filter: filter)
            items += try tokenItems(filter: filter, quick: quick)
            items += try exampleItems(filter: filter, quick: quick, device: device)
            items += try depthItems(filter: filter, quick: quick)
            if !noLayers {
                items += try layerItems(
                    filter: filter, quick: quick, coldBytes: coldMiB << 20, peers: peerOptions, modelSizes: modelSizes)
            }
            return (try OpenCLBackend(device: device), items)
        }
        let d = backend.device
        print("device: \(d.name) (\(d.kind.rawValue), \(d.platformName), driver \(d.driverVersion), \(d.computeUnits) compute units)")
        if d.kind == .cpu, let load = loadAverage(), load > 0.5 {
            print(String(format: "note: load average %.2f on %d compute units before starting: other processes compete for the device, figures will be low", load, d.computeUnits))
        }
        let progress = Progress()

        progress.show("measuring ceilings")
        var options = quick ? CeilingOptions.quick : CeilingOptions()
        if let m = ceilingMiB { options.bandwidthBytes = m << 20 }
        let before = try failing { try backend.measureCeilings(options) }
        progress.show("measuring the OpenBLAS SGEMM ceiling")
        let gemm = noGemm ? nil : measureGemmCeiling(quick: quick)
        progress.clear()
        print(ceilingTable(BenchCeilings(device: before, gemm: gemm), hostPeersShareDevice: d.kind == .cpu))
        if items.contains(where: { $0.groupedMatmul != nil }) { print(peerSummary(threads: threads, skip: Set(skipPeers), torchOnGPU: peerOptions.torchOnGPU)) }
        print("")

        var policy = quick ? RunPolicy.quick(runs: runs) : RunPolicy.standard(runs: runs)
        // A device whose kernel events the ceilings found implausible is timed on the host clock.
        policy.wallClock = before.measurements.contains { $0.name.hasPrefix("ceilings_") && $0.clock != "device events" }
        if policy.wallClock {
            print("note: this device's profiling events are implausible (kernel durations under \(Int(ProfilingEvents.minimumShare * 100)) % of the wall clock): "
                + "every case is timed on the host clock (run + synchronize), and the layers' stage times are left out\n")
        }
        var measured: [Measured] = []
        for (i, item) in items.enumerated() {
            progress.show("[\(i + 1)/\(items.count)] \(item.name)")
            let began = now()
            let m = try failing { try measure(item, on: backend, policy: policy, peerBudget: peerBudget) }
            measured.append(m)
            progress.log(String(
                format: "[%d/%d] %@: median %.4f ms, first %.1f ms (%.1f s)", i + 1, items.count, item.name,
                m.device.median * 1e3, m.firstSeconds * 1e3, now() - began))
        }
        var scaling: [ScalingPoint] = []
        if !noLayers && !noScaling && (filter ?? "").isEmpty {
            scaling = try failing {
                try scalingSweeps(backend: backend, quick: quick) { progress.show($0) }
            }
        }
        // The ceilings again at the end: on a shared machine other work can come and go, and a
        // ceiling measured while it ran would put later results above 100 %. Each figure is the
        // best of both.
        progress.show("measuring ceilings again")
        let after = try failing { try backend.measureCeilings(options) }
        progress.clear()
        let ceilings = BenchCeilings(device: before.best(with: after), gemm: gemm)
        let moved = zip(before.measurements, after.measurements).filter { abs($0.best / $1.best - 1) > 0.1 }
        if !moved.isEmpty {
            print("note: ceilings moved over 10 % during the run (" + moved.map {
                "\($0.name) \(rate($0.best)) → \(rate($1.best))"
            }.joined(separator: ", ") + "); percentages use the best of both\n")
        }
        let results = measured.map { $0.result(against: ceilings) }
        print(resultTable(results))
        if let peers = layerPeerTables(results, torchOnGPU: peerOptions.torchOnGPU) { print("\n" + peers) }
        if let stages = stageTable(results) { print("\n" + stages) }
        // A ceiling that a peer (or Switchyard) beats in the same run is a wrong ceiling.
        let excesses = ceilingExcesses(
            ceilings, results: results, hostPeersShareDevice: d.kind == .cpu, torchSharesDevice: peerOptions.torchOnGPU)
        if excesses.isEmpty {
            print("\nceiling check: no rate of this run (peers' or Switchyard's) is above the FMA or read-only ceiling")
        } else {
            print("\n" + excesses.map(\.line).joined(separator: "\n"))
        }
        if !scaling.isEmpty {
            print("\nscaling of the MoE layer (wall clock per forward; E sweep at k·ffn = 2048 and E·ffn = 8192)")
            print(scalingTable(scaling))
        }
        print(String(format: "\n%d cases in %.1f s", results.count, now() - started))

        if let json {
            try failing {
                try jsonReport(
                    device: d, ceilings: ceilings, results: results, quick: quick, scaling: scaling,
                    torchOnGPU: peerOptions.torchOnGPU)
                    .write(to: URL(fileURLWithPath: json))
            }
        }
        if let svg {
            try failing {
                try Data(svgChart(device: d, ceilings: ceilings, results: results, scaling: scaling).utf8)
                    .write(to: URL(fileURLWithPath: svg))
            }
        }
    }
}

/// Prints an error as one paragraph and exits non-zero, without a trace.
func failing<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("switchyard-bench: \(error)\n".utf8))
        throw ExitCode(2)
    }
}

/// Progress on stderr: on a terminal, one line rewritten in place; otherwise (a log file, a
/// remote run cut off by a time limit) a line per case as it finishes, with its median, so a run
/// stopped part-way still says what it measured (the tables come only at the end).
struct Progress {
    let enabled = isatty(STDERR_FILENO) != 0

    func show(_ text: String) {
        guard enabled else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[K\(text)".utf8))
    }

    func log(_ text: String) {
        guard !enabled else { return }
        fflush(nil)  // what stdout holds (the ceilings) first, also when it is a file or pipe
        FileHandle.standardError.write(Data("\(text)\n".utf8))
    }

    func clear() {
        guard enabled else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}

/// The one-minute load average (Linux), for a warning when other work competes with a CPU device.
func loadAverage() -> Double? {
    guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return nil }
    return text.split(separator: " ").first.flatMap { Double($0) }
}
