import ArgumentParser
import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance
import SwitchyardExamples
import SwitchyardReference

@main
struct SwitchyardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard",
        abstract: "Switchyard: OpenCL kernels for conditional-computation networks (MoE routing and experts).",
        subcommands: [Devices.self, Conformance.self, Run.self, Tune.self, Load.self, FaultWalkCommand.self])
    // `switchyard run` is the main job; `conformance` checks every op against the reference.
}

/// Prints a host-layer or Switchyard error as one paragraph and exits non-zero, without a trace.
func failing<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("switchyard: \(error)\n".utf8))
        throw ExitCode(2)
    }
}

func gib(_ bytes: Int) -> String { String(format: "%.1f GiB", Double(bytes) / 1_073_741_824) }

struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List every OpenCL device and the default choice.")

    func run() throws {
        let devices = try failing { () throws -> [Device] in
            let all = try Device.all()
            // Platforms without devices (a driver that could not start) are no device at all.
            if all.isEmpty { throw OpenCLHostError.noPlatform(status: 0) }
            return all
        }
        let chosen = try? Device.select()
        var rows: [[String]] = [["#", "name", "type", "platform", "CUs", "global mem", "max alloc", "OpenCL C", "fp16", "fp64", "default"]]
        for (i, d) in devices.enumerated() {
            rows.append([
                "\(i)", d.name, d.kind.rawValue, d.platformName, "\(d.computeUnits)", gib(d.globalMemoryBytes),
                gib(d.maxAllocationBytes), d.openCLCVersion.replacingOccurrences(of: "OpenCL C ", with: ""),
                d.supportsFP16 ? "yes" : "no", d.supportsFP64 ? "yes" : "no",
                chosen.map { $0.id == d.id ? "*" : "" } ?? "",
            ])
        }
        print(table(rows))
        if ProcessInfo.processInfo.environment["SWITCHYARD_DEVICE"] != nil && chosen == nil {
            _ = try failing { try Device.select() }
        }
    }
}

func table(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    var widths = [Int](repeating: 0, count: first.count)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
            .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
    }.joined(separator: "\n")
}

struct Conformance: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run every registered case on a device against the CPU reference.")

    @Option(help: "Device index or case-insensitive name substring (default: SWITCHYARD_DEVICE, else GPU > accelerator > CPU).")
    var device: String?

    @Option(help: "Only the cases whose name matches this regular expression.")
    var filter: String?

    @Option(help: "Write every case's result to this JSON file.")
    var json: String?

    @Option(help: "Instead of the registered cases, N random valid configurations (skewed to small and awkward sizes).")
    var fuzz: Int?

    @Option(help: "The first seed of --fuzz (case i uses seed + i; --fuzz 1 --seed S replays one).")
    var seed: UInt64 = 1

    func run() throws {
        if let fuzz, !(1...1_000_000).contains(fuzz) { throw ValidationError("--fuzz must be in 1...1000000") }
        if let json, let problem = outputPathProblem(json) { throw ValidationError("--json \(json): \(problem)") }
        let passed = try runConformance(
            device: device, filter: filter, json: json, fuzz: fuzz.map { (count: $0, seed: seed) })
        if !passed { throw ExitCode(1) }
    }
}

/// Runs the cases and prints a line per case and the summary; true when all passed.
func runConformance(device selector: String?, filter: String?, json: String?, fuzz: (count: Int, seed: UInt64)? = nil)
    throws -> Bool
{
    let (runner, cases, tuned) = try failing {
        let device = try Device.select(selector)
        // The user's stored tuning, when there is one, is what their runs use: check that.
        let tuning = try Tuning.stored(for: device)
        let regex: Regex<AnyRegexOutput>?
        do {
            regex = try filter.flatMap { $0.isEmpty ? nil : try Regex($0) }
        } catch {
            throw ValidationError("--filter '\(filter ?? "")' is not a regular expression: \(error)")
        }
        var cases = try SwitchyardConformance.Conformance.cases(matching: filter)
        if let fuzz {
            cases = Fuzz.cases(count: fuzz.count, seed: fuzz.seed).filter { c in regex.map { c.name.contains($0) } ?? true }
        }
        return (try ConformanceRunner(device: device, tuning: tuning), cases, tuning != nil)
    }
    print("device: \(runner.device.device.name) (\(runner.device.device.kind.rawValue), \(runner.device.device.platformName), driver \(runner.device.device.driverVersion))")
    print("matmul: \(runner.device.tuning.matmulSummary)\(tuned ? " (stored by switchyard tune)" : " (defaults)")")
    print(
        "multiply-add chains: "
            + (runner.device.device.chainsUseFMA
                ? "fma (hardware FMA)"
                : runner.device.device.fusedMultiplyAdd
                    ? "a multiply and an add (\(Device.softFMAVariable)=1)"
                    : "a multiply and an add (no hardware FMA: fma() would run in software)"))
    let terminal = isatty(STDERR_FILENO) != 0
    let watchdog = CaseWatchdog(terminal: terminal)
    var results: [CaseResult] = []
    for (i, c) in cases.enumerated() {
        if terminal {
            FileHandle.standardError.write(Data("\r\u{1B}[K[\(i + 1)/\(cases.count)] \(c.name)".utf8))
        }
        watchdog.begin(c.name)
        let r = runner.run(c)
        watchdog.end()
        results.append(r)
        if terminal { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        let error = r.error.isNaN ? "-" : String(format: "%.2e", r.error)
        // A case's time (program builds included) where it is long: on a GPU driver that
        // compiles each program cold, this tells a slow compile from a slow kernel.
        let status = (r.passed ? "pass" : "FAIL") + (r.seconds >= 2 ? String(format: "  (%.1f s)", r.seconds) : "")
        let line = [c.op, c.shape, c.dtype.rawValue, c.options, "err=\(error)", status]
            .filter { !$0.isEmpty }.joined(separator: "  ")
        print(r.passed ? line : "\(line)  \(r.detail)")
        if !r.passed, fuzz != nil { print("  replay: switchyard conformance --fuzz 1 --seed \(c.seed)") }
        fflush(nil)
    }
    let failed = results.filter { !$0.passed }.count
    if let json {
        let items: [[String: Any]] = results.map {
            [
                "name": $0.name, "op": $0.op, "shape": $0.shape, "dtype": $0.dtype.rawValue, "passed": $0.passed,
                "error": $0.error.isFinite ? $0.error : NSNull(), "detail": $0.detail, "seconds": $0.seconds,
            ]
        }
        let document: [String: Any] = [
            "device": runner.device.device.name, "driver": runner.device.device.driverVersion,
            "passed": results.count - failed, "failed": failed, "cases": items,
        ]
        let data = try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: json))
    }
    print("\(results.count - failed) passed, \(failed) failed")
    return failed == 0
}

/// Says on stderr which case is still running, once a minute after its first minute: a kernel
/// that never returns (or a driver compile that takes minutes) then names itself in a log that a
/// time limit cuts off, where the per-case lines stop without saying why.
final class CaseWatchdog: @unchecked Sendable {
    private let lock = NSLock()
    private var current: (name: String, began: Double, said: Int)?

    /// On a terminal, the note replaces the progress line (which the next case writes again).
    private let terminal: Bool

    init(terminal: Bool) {
        self.terminal = terminal
        let thread = Thread { [weak self] in
            while true {
                Thread.sleep(forTimeInterval: 5)
                guard let self else { return }
                self.check()
            }
        }
        thread.start()
    }

    func begin(_ name: String) { lock.withLock { current = (name, now(), 0) } }
    func end() { lock.withLock { current = nil } }

    private func check() {
        let line: String? = lock.withLock {
            guard let c = current else { return nil }
            let minutes = Int((now() - c.began) / 60)
            guard minutes > c.said else { return nil }
            current!.said = minutes
            return (terminal ? "\r\u{1B}[K" : "") + "note: \(c.name) still running after \(minutes) min\n"
        }
        if let line { FileHandle.standardError.write(Data(line.utf8)) }
    }

    private func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The main job: an MoE layer end to end on a device, with stage timings and routing statistics.")

    @Option(help: """
        Layer config: \(MoEConfig.named.keys.sorted().joined(separator: ", ")); or a conditional-computation \
        example stack, dynamic against dense: \(ConditionalExample.named.keys.sorted().joined(separator: ", ")).
        """)
    var config = "mixtral-tiny"

    @Option(
        name: .customLong("tokens"),
        help: """
            Tokens in the batch (default 512); for an example stack, tokens per sequence \
            (\(ConditionalExample.named.values.sorted { $0.name < $1.name }.map { "\($0.name) \($0.defaultLength)" }.joined(separator: ", "))).
            """)
    var tokensOption: Int?

    /// Tokens of an MoE layer's batch.
    var tokens: Int { tokensOption ?? 512 }

    @Option(help: "Sequences in the batch of an example stack (default 4).")
    var batch: Int?

    @Option(help: "Storage type of activations and weights: f32, f16 or bf16.")
    var dtype = "f32"

    @Option(help: "Device index or case-insensitive name substring.")
    var device: String?

    @Option(help: "Timed forwards after the warm-up (the median is reported).")
    var iterations = 10

    @Flag(help: "Use the weights in checkpoint layout instead of packing them once.")
    var noPack = false

    @Option(help: "Quantize the experts' weights once: none, int8, int4 (groups of 128), int4-g32, int4-g128-zp (zero point), ..., or mxfp4 (converted on the host). With --model, each expert is quantized on the device as it loads (FP8 experts are dequantized first). Also reports the output's error against the unquantized layer.")
    var quantize = "none"

    @Flag(help: "Also run the CPU reference and fail if the normalized error is over the tolerance.")
    var check = false

    @Option(help: "A Hugging Face model folder (config.json + .safetensors) to take the layer from.")
    var model: String?

    @Option(help: "The layer of --model to run.")
    var layer: Int?

    @Option(help: "A .safetensors file whose tensor 'x' [T, hidden] is the input (with --model).")
    var input: String?

    @Option(help: "Write the output as tensor 'y' (f32, [T, hidden]) to this .safetensors file.")
    var output: String?

    @Flag(help: "Expert parallelism: run under `mpirun -np P`, experts split over the ranks, tokens split too.")
    var ep = false

    @Option(help: "With --ep: the rank of each expert, comma-separated (default: contiguous blocks).")
    var placement: String?

    @Option(help: "With --ep: tokens of each rank, comma-separated, summing to --tokens (default: an even split).")
    var tokenSplit: String?

    @Option(help: "With --ep: a capacity factor for the router (capacity ceil(factor·T·k/E) per expert).")
    var capacityFactor: Double?

    @Option(help: "With --ep and --capacity-factor: which assignments an expert over capacity keeps: token or weight.")
    var dropPriority = "token"

    func run() throws {
        // (with --ep, 0: the one checked forward only, no timed ones)
        guard ((ep ? 0 : 1)...100_000).contains(iterations) else {
            throw ValidationError("--iterations must be in \(ep ? 0 : 1)...100000")
        }
        if let example = ConditionalExample.named[config] {
            try runExample(example)
            return
        }
        if batch != nil { throw ValidationError("--batch applies to the example stacks (\(ConditionalExample.named.keys.sorted()))") }
        guard ["token", "weight"].contains(dropPriority) else {
            throw ValidationError("--drop-priority takes token or weight, not \(dropPriority)")
        }
        // Options that do not apply are refused, not ignored: with --model the input file gives
        // the tokens, the checkpoint the sizes and storage; without it there is no layer to read.
        if model != nil, !ep, tokensOption != nil || config != "mixtral-tiny" || dtype != "f32" {
            throw ValidationError("--tokens, --config and --dtype do not apply with --model (the input and the checkpoint decide them)")
        }
        if model == nil, !ep, layer != nil || input != nil {
            throw ValidationError("--layer and --input need --model")
        }
        if ep, output != nil || (model == nil && layer != nil) {
            throw ValidationError("--output, and --layer without --model, do not apply with --ep")
        }
        if ep {
            // (the expert-parallel layer runs the float weights: a quantization asked for would
            // otherwise be silently ignored)
            guard quantize == "none" else {
                throw ValidationError("--quantize \(quantize) does not apply with --ep: expert-parallel layers run float weights")
            }
            try failing { try runExpertParallel() }
            return
        }
        if placement != nil || tokenSplit != nil || capacityFactor != nil {
            throw ValidationError("--placement, --token-split and --capacity-factor need --ep")
        }
        try failing {
            // Refuse an output path that cannot be written before computing anything.
            if let output, let problem = outputPathProblem(output) { throw ValidationError("--output \(output): \(problem)") }
            let backend = try OpenCLBackend(device: try Device.select(device))
            let dev = backend.device
            print("device  \(dev.name) (\(dev.kind.rawValue), \(dev.platformName), driver \(dev.driverVersion))")
            print("matmul  \(backend.tuning.matmulSummary)")
            // The layer and input on the device, and how to build the same on the reference.
            let layer: MoELayer
            let xHost: [Float]
            let xType: DType
            let makeReference: () throws -> (MoELayer, Tensor)
            var makeUnquantized: (() throws -> MoELayer)?
            let name: String
            guard let quantization = WeightQuantization(quantize) else {
                throw ValidationError("--quantize \(quantize): expected none, int8, int4, int4-gN, int4-gN-zp (N in 1...32768) or mxfp4")
            }
            if let model {
                guard let index = self.layer else { throw ValidationError("--model needs --layer N") }
                guard let input else { throw ValidationError("--model needs --input X.safetensors (tensor 'x')") }
                let checkpoint = try HFCheckpoint(folder: model)
                let x = try SafeTensorsFile(path: input).floats("x")
                let c = try checkpoint.moeConfig(layer: index)
                guard x.shape.count == 2, x.shape[1] == c.hidden else {
                    throw ValidationError("\(input): tensor 'x' has shape \(x.shape); expected [T, \(c.hidden)]")
                }
                // With --quantize, each expert is quantized on the device as it loads.
                layer = try checkpoint.loadLayer(index, backend: backend, pack: !noPack, quantize: quantization)
                if quantization != .none {
                    makeUnquantized = { try checkpoint.loadLayer(index, backend: backend, pack: !noPack) }
                }
                (xHost, xType) = (x.values, x.dtype)
                name = "\(checkpoint.modelType) layer \(index) of \(model)"
                makeReference = {
                    let reference = ReferenceBackend()
                    return (try checkpoint.loadLayer(index, backend: reference, pack: false, quantize: quantization),
                            try reference.tensor(x.values, shape: x.shape, dtype: x.dtype))
                }
            } else {
                guard let c = MoEConfig.named[config] else {
                    throw ValidationError(
                        "unknown config '\(config)'; one of \((MoEConfig.named.keys.sorted() + ConditionalExample.named.keys.sorted()))")
                }
                guard let d = DType(rawValue: dtype), d.isFloatingPoint else {
                    throw ValidationError("dtype must be f32, f16 or bf16")
                }
                guard tokens >= 0 else { throw ValidationError("--tokens must be at least 0") }
                // Sizes checked before any allocation: x and y [T, hidden] (f32 at most) must each
                // fit one device allocation (a batch whose intermediates do not fit one runs in
                // chunks: MoELayer.chunkTokens), and x must fit host memory.
                let limit = backend.maxTensorBytes
                let (n, overflow) = tokens.multipliedReportingOverflow(by: c.hidden * 4)
                guard !overflow, n <= limit else {
                    throw ValidationError(
                        "--tokens \(tokens) is too many for \(config): x and y [T, hidden] would exceed the device's largest "
                            + "allocation (\(limit) bytes); at most \(limit / (4 * c.hidden)) tokens")
                }
                let host = ProcessInfo.processInfo.physicalMemory
                guard UInt64(n) <= host / 4 else {
                    throw ValidationError(
                        "--tokens \(tokens): the input [T, hidden] alone would take \(n) bytes of host memory, over a quarter of "
                            + "the machine's \(host) bytes")
                }
                let seed: UInt64 = 20_261_124
                let weights = try MoEWeights.random(config: c, backend: backend, dtype: d, seed: seed)
                layer = try MoELayer(backend: backend, config: c, weights: weights, pack: !noPack, quantize: quantization)
                if quantization != .none {
                    makeUnquantized = { try MoELayer(backend: backend, config: c, weights: weights, pack: !noPack) }
                }
                var g = SeededGenerator(seed: seed ^ 0xABCD)
                (xHost, xType) = (g.normals(tokens * c.hidden), d)
                name = "\(config) (seeded random weights)"
                let count = tokens
                makeReference = {
                    let reference = ReferenceBackend()
                    return (try MoELayer(
                                backend: reference, config: c,
                                weights: try MoEWeights.random(config: c, backend: reference, dtype: d, seed: seed),
                                pack: false, quantize: quantization),
                            try reference.tensor(xHost, shape: [count, c.hidden], dtype: d))
                }
            }
            let c = layer.config
            let t = xHost.count / max(c.hidden, 1)
            print("layer   \(name): hidden \(c.hidden), ffn \(c.ffn), \(c.experts) experts, k \(c.router.k), "
                + "\(c.router.scoring.rawValue)\(c.router.expertGroups > 1 ? ", \(c.router.expertGroups) groups keep \(c.router.topKGroups)" : "")"
                + "\(c.sharedFFN > 0 ? ", shared ffn \(c.sharedFFN)" : ""), input \(xType), T = \(t)")
            let x = try backend.tensor(xHost, shape: [t, c.hidden], dtype: xType)
            if case .float = layer.weightFormat {} else { print("weights \(layer.weightFormat) (routed and shared experts)") }
            try report(backend: backend, layer: layer, x: x, makeReference: makeReference)
            if let makeUnquantized {
                let base = try makeUnquantized()
                let float = try backend.floats(try base.forward(x).y)
                let quantized = try backend.floats(try layer.forward(x).y)
                print(String(format: "quantization  normalized error of the output vs the unquantized %@ layer (%@ weights): %.3e",
                             xType.rawValue, base.weightFormat.description, ErrorMeasure.nmse(quantized, float)))
            }
        }
    }

    func report(backend: OpenCLBackend, layer: MoELayer, x: Tensor, makeReference: () throws -> (MoELayer, Tensor))
        throws
    {
        let c = layer.config
        let tokens = x.shape[0]
        let firstStart = Date()
        _ = try backend.floats(try layer.forward(x).y)
        let first = Date().timeIntervalSince(firstStart)
        var walls: [Double] = []
        var profiles: [[StageTime]] = []
        var result: MoELayer.Output?
        for _ in 0..<iterations {
            let start = Date()
            let out = try layer.forward(x)
            try backend.synchronize()
            walls.append(Date().timeIntervalSince(start))
            result = out
        }
        for _ in 0..<max(1, iterations / 2) { profiles.append(try layer.forward(x, profile: true).stages) }
        let wall = median(walls)
        let weightBytes = layer.weightBytes
        print(String(format: "weights %.1f MB, %@ in %.1f ms; first forward (builds programs) %.1f ms",
                     Double(weightBytes) / 1e6, noPack ? "checkpoint layout" : "packed once", layer.packSeconds * 1e3,
                     first * 1e3))
        print("")
        print("stage             device ms")
        var sum = 0.0
        for (i, stage) in profiles[0].enumerated() {
            let t = median(profiles.map { $0[i].seconds })
            sum += t
            print(stage.stage.padding(toLength: 16, withPad: " ", startingAt: 0) + String(format: " %10.3f", t * 1e3))
        }
        print("sum of stages   " + String(format: " %10.3f", sum * 1e3))
        print("layer (wall)    " + String(format: " %10.3f   (launch and sync overhead %.3f ms, median of %d)",
                                          wall * 1e3, (wall - sum) * 1e3, walls.count))
        print(String(format: "throughput       %10.1f GFLOP/s over the layer's %.3f GFLOP", c.flops(tokens: tokens) / wall / 1e9,
                     c.flops(tokens: tokens) / 1e9))
        let out = result!
        let stats = out.routings.count == 1
            ? try backend.routingStats(out.routing)
            : try RoutingStats.merging(
                out.routings.map { (try backend.routingStats($0), $0.tokens) }, experts: c.experts, k: c.router.k)
        if out.routings.count > 1 {
            print("")
            print("the batch ran in \(out.routings.count) chunks of at most \(layer.chunkTokens) tokens (the statistics cover them all)")
        }
        print("")
        print("tokens per expert (kept assignments)")
        let most = max(1, stats.tokensPerExpert.max() ?? 1)
        for (e, n) in stats.tokensPerExpert.enumerated() {
            let bar = String(repeating: "█", count: Int((Double(n) / Double(most) * 40).rounded()))
            print(String(format: "  %3d %6d ", e, n) + bar)
        }
        print(String(format: "dropped %d   balance loss %.4f (1.0 = uniform)   z-loss %.4f", stats.dropped,
                     stats.balanceLoss, stats.zLoss))
        let got = try backend.floats(result!.y)
        if let output {
            try SafeTensorsFile.write([("y", got, [tokens, c.hidden], .f32)], to: output)
            print("wrote y [\(tokens), \(c.hidden)] f32 to \(output)")
        }
        if check {
            let reference = ReferenceBackend()
            let (rl, rx) = try makeReference()
            let want = try reference.floats(try rl.forward(rx).y)
            let error = ErrorMeasure.nmse(got, want)
            let tolerance = x.dtype == .f32 && layer.weightType == .f32 ? 1e-6 : 1e-3
            // An output that is not finite fails, even where the reference is not finite either.
            let nonFinite = got.filter { !$0.isFinite }.count
            let verdict = error <= tolerance && nonFinite == 0 ? "pass" : "FAIL"
            print(String(format: "check   normalized error vs the CPU reference %.3e (tolerance %.0e): %@",
                         error, tolerance, verdict))
            if nonFinite > 0 {
                print("check   \(nonFinite) of \(got.count) output values are not finite (the reference has "
                    + "\(want.filter { !$0.isFinite }.count))")
            }
            if verdict != "pass" { throw ExitCode(1) }
        }
    }
}

func median(_ values: [Double]) -> Double {
    let s = values.sorted()
    guard !s.isEmpty else { return 0 }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

struct Tune: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Search the matmul geometry on a device for the built-in layer shapes and store the best.",
        discussion: """
            Candidates: the device's defaults, register-kernel tiles (vector width, vectors per row, rows) \
            around the device's native vector width, tile steps for the best of them, and work-group-kernel \
            tiles (panel, rows, rows per work-item). Each candidate's MoE layer output is first checked \
            against the CPU reference (f32 and bf16, a batch off the tile); a candidate that differs is \
            dropped. The timed objective is the device time of the gate|up and down grouped matmuls of \
            mixtral-small and deepseek-like, f32 and bf16 (median of 5 forwards each). With the work-group \
            kernel, the split-k threshold (rows an expert at or below which decode runs split-k) is then \
            chosen on decode forwards (T = 1 and 16, bf16 and int4-g128). An entry is stored only when it \
            beats the defaults by 3 % or more.
            """)

    @Option(help: "Device index or case-insensitive name substring.")
    var device: String?

    @Option(help: "Tokens per shape (smaller is quicker, larger is more representative).")
    var tokens = 1024

    @Flag(help: "Print the results without storing them.")
    var dryRun = false

    @Flag(help: "Fewer candidates (the defaults, the native-width tiles and two work-group tiles).")
    var quick = false

    func run() throws {
        guard (1...65536).contains(tokens) else { throw ValidationError("--tokens must be in 1...65536") }
        try failing {
            let dev = try Device.select(device)
            try Tuning.checkVectorWidthOverride()
            let base = Tuning.defaults(for: dev)
            say("device  \(dev.identity)")
            say("native float vector width \(dev.nativeFloatVectorWidth)\(dev.workItemsAreLanes ? " (work-items are SIMD lanes)" : "")")
            if dev.floatVectorWidth != dev.nativeFloatVectorWidth && !dev.workItemsAreLanes {
                say("float vector width \(dev.floatVectorWidth) (\(Device.vectorWidthVariable))")
            }
            say("defaults  \(base.matmulSummary)")
            say("shapes  gate|up (SwiGLU) and down of mixtral-small and deepseek-like, T = \(tokens), f32 and bf16")
            let checks = try referenceChecks()
            var results: [(Tuning, Double)] = []
            func attempt(_ t: Tuning) throws {
                if results.contains(where: { $0.0 == t }) { return }
                let label = t == base ? "\(t.matmulSummary)  (defaults)" : t.matmulSummary
                if let bad = try check(t, on: dev, against: checks) {
                    say("  dropped  \(label): \(bad)")
                    return
                }
                let seconds = try measure(t, on: dev)
                results.append((t, seconds))
                say(String(format: "  %9.2f ms  %@", seconds * 1e3, label))
            }
            try attempt(base)
            for t in candidates(base: base, device: dev) { try attempt(t) }
            // Tile steps for the two best register tiles.
            let bestRegisters = results.filter { $0.0.matmulKernel == .registers }.sorted { $0.1 < $1.1 }.prefix(2)
            for (t, _) in bestRegisters {
                for step in quick ? [4] : [2, 4, 8] where step != t.matmulTileStep {
                    var s = t
                    s.matmulTileStep = step
                    try attempt(s)
                }
            }
            guard results.contains(where: { $0.0 == base }), let best = results.min(by: { $0.1 < $1.1 }) else {
                throw SwitchyardError.unsupported("the defaults failed the reference check on \(dev.identity)")
            }
            var chosen = base
            if best.0 == base {
                say("best    the defaults")
            } else {
                // Confirm: the best and the defaults measured again, alternately, three times each
                // (a one-off timing is noisy), the best of each kept.
                let gain = try confirmedGain(of: best.0, over: base) { try measure($0, on: dev) }
                if gain < 1.03 {
                    say("the best measured \(String(format: "%.2f", gain))× the defaults when timed again (under 1.03×): "
                        + "the defaults' geometry kept")
                } else {
                    chosen = best.0
                }
            }
            if chosen.matmulKernel == .workGroup { chosen = try tuneSplitRows(chosen, on: dev) }
            if chosen == base {
                say("nothing stored (the defaults)")
            } else if !dryRun {
                try chosen.store(for: dev)
                say("stored in \(Tuning.storePath): \(chosen.matmulSummary)")
            }
        }
    }

    /// `candidate`'s speed-up over `current` under `objective`: both measured again, alternately,
    /// three times each, the best of each kept (a one-off timing is noisy).
    func confirmedGain(of candidate: Tuning, over current: Tuning, _ objective: (Tuning) throws -> Double) throws
        -> Double
    {
        var again = (candidate: Double.infinity, current: Double.infinity)
        for _ in 0..<3 {
            again.candidate = min(again.candidate, try objective(candidate))
            again.current = min(again.current, try objective(current))
        }
        let gain = again.current / again.candidate
        say(String(format: "best    %@: %.2f ms, %.2f× the current (%.2f ms), confirmed over 3 alternating runs",
                   candidate.matmulSummary, again.candidate * 1e3, gain, again.current * 1e3))
        return gain
    }

    /// The work-group geometry's split-k threshold (`matmulSplitRows`), chosen on a decode
    /// objective (`measureDecode`): never, and up to 1, 2 and 8 rows an expert (the objective's
    /// launches expect 1 row an expert at T = 1 and 2 or 4 at T = 16, rounded up as the matmul
    /// does, so larger thresholds time the same). Split-k gives the same bits, so no reference
    /// check. Kept as `tuning` has it unless another is at least 3 % faster.
    func tuneSplitRows(_ tuning: Tuning, on dev: Device) throws -> Tuning {
        func label(_ rows: Int) -> String { rows == 0 ? "never" : "up to \(rows) rows an expert" }
        say("split-k threshold  decode forwards (T = 1 and 16, wall clock) of mixtral-small and deepseek-like, bf16 and int4-g128")
        var timed: [(Tuning, Double)] = []
        for rows in [tuning.splitKRows, 0, 1, 2, 8] where !timed.contains(where: { $0.0.splitKRows == rows }) {
            var t = tuning
            if rows != tuning.splitKRows { t.matmulSplitRows = rows }
            let seconds = try measureDecode(t, on: dev)
            timed.append((t, seconds))
            say(String(format: "  %9.2f ms  split-k %@%@", seconds * 1e3,
                       label(rows), rows == tuning.splitKRows ? "  (current)" : ""))
        }
        guard let best = timed.min(by: { $0.1 < $1.1 }), best.0 != tuning else {
            say("split-k threshold  kept: \(label(tuning.splitKRows))")
            return tuning
        }
        let gain = try confirmedGain(of: best.0, over: tuning) { try measureDecode($0, on: dev) }
        if gain < 1.03 {
            say("split-k threshold  kept: \(label(tuning.splitKRows)) (the best measured \(String(format: "%.2f", gain))× it "
                + "when timed again: under 1.03×)")
            return tuning
        }
        return best.0
    }

    /// One forward's time: the device time of its `stages`, or its wall clock where the device's
    /// kernel events are implausible (`ProfilingEvents.plausible` of all stages together: rusticl
    /// on llvmpipe reports near-zero durations, and a search on them picks noise), as
    /// switchyard-bench falls back to the host clock. `wallClock` nil: decided by this forward
    /// (the caller decides once, on a warm-up, so that a search never mixes the two clocks).
    func forwardSeconds(_ layer: MoELayer, _ x: Tensor, stages: Set<String>, wallClock: Bool?) throws
        -> (seconds: Double, wallClock: Bool)
    {
        let (out, wall) = try wallSeconds { try layer.forward(x, profile: true) }  // (waits for each stage)
        let useWall = wallClock
            ?? !ProfilingEvents.plausible(eventSeconds: out.stages.reduce(0) { $0 + $1.seconds }, wallSeconds: wall)
        if useWall { return (wall, true) }
        return (out.stages.filter { stages.contains($0.stage) }.reduce(0) { $0 + $1.seconds }, false)
    }

    /// The sum of median wall clocks of decode forwards (T = 1 and 16) of mixtral-small and
    /// deepseek-like in bf16 and int4-g128 under `tuning`, each forward waited for by reading its
    /// output back. The wall clock, not kernel events: split-k adds a launch (its fold) to every
    /// matmul, and the launches and gaps between kernels are a real share of a decode matmul's few
    /// microseconds on a GPU; kernel durations alone would favour it.
    func measureDecode(_ tuning: Tuning, on device: Device) throws -> Double {
        let backend = try OpenCLBackend(device: device, tuning: tuning)
        var total = 0.0
        for config in [MoEConfig.mixtralSmall, .deepSeekLike] {
            let weights = try MoEWeights.random(config: config, backend: backend, dtype: .bf16, seed: 3)
            for quantize in [WeightQuantization.none, .int4(group: 128, zeroPoint: false)] {
                let layer = try MoELayer(backend: backend, config: config, weights: weights, quantize: quantize)
                for tokens in [1, 16] {
                    var g = SeededGenerator(seed: 5)
                    let x = try backend.tensor(
                        g.normals(tokens * config.hidden), shape: [tokens, config.hidden], dtype: .bf16)
                    _ = try backend.floats(try layer.forward(x).y)
                    // At least 5 forwards, more (up to 100) until 50 ms are spent: a GPU's decode
                    // forward takes tens of microseconds, where 5 wall-clock runs are thin.
                    var runs: [Double] = []
                    var spent = 0.0
                    while runs.count < 5 || (spent < 0.05 && runs.count < 100) {
                        let seconds = try wallSeconds { try backend.floats(try layer.forward(x).y) }.seconds
                        runs.append(seconds)
                        spent += seconds
                    }
                    total += median(runs)
                }
            }
        }
        return total
    }

    /// The candidates after the defaults: register tiles that fit the register file of each
    /// vector width around the native one (with some spill allowed), and work-group tiles.
    func candidates(base: Tuning, device: Device) -> [Tuning] {
        var out: [Tuning] = []
        for width in Tuning.registerVectorWidths(for: device, quick: quick) {
            let registers = Tuning.cpuRegisters(vectorWidth: width)
            for vectors in [1, 2, 4] {
                for rows in [2, 4, 6, 8] where rows * vectors + vectors + 2 <= registers + (quick ? 0 : 4) {
                    if width * vectors < 2 { continue }
                    var t = base
                    t.matmulKernel = .registers
                    t.matmulVectorWidth = width
                    t.matmulPanel = width * vectors
                    t.matmulRows = rows
                    out.append(t)
                }
            }
        }
        let groups: [(panel: Int, rows: Int, perItem: Int)] =
            quick || !device.workItemsAreLanes
            ? [(64, 32, 4), (64, 16, 2)]
            : [(64, 32, 4), (64, 16, 2), (64, 16, 4), (64, 64, 8), (32, 32, 4), (32, 16, 2), (128, 32, 8), (64, 32, 2)]
        for g in groups {
            var t = base
            t.matmulKernel = .workGroup
            t.matmulPanel = g.panel
            t.matmulRows = g.rows
            t.matmulRowsPerItem = g.perItem
            t.matmulTileK = 16
            t.matmulVectorWidth = 1
            t.matmulTileStep = 1
            if (try? t.validate(for: device)) != nil { out.append(t) }
        }
        return out.filter { (try? $0.validate(for: device)) != nil }
    }

    /// The reference outputs the candidates are checked against: mixtral-tiny and deepseek-tiny
    /// on 77 tokens (off every tile), f32 and bf16.
    struct Check {
        let config: MoEConfig
        let dtype: DType
        let seed: UInt64
        let want: [Float]
    }

    func referenceChecks() throws -> [Check] {
        let reference = ReferenceBackend()
        var out: [Check] = []
        for (config, dtype, seed) in [(MoEConfig.mixtralTiny, DType.f32, UInt64(11)), (.deepSeekTiny, .bf16, 12)] {
            let (layer, x) = try checkLayer(config, dtype, seed, on: reference)
            out.append(Check(config: config, dtype: dtype, seed: seed, want: try reference.floats(try layer.forward(x).y)))
        }
        return out
    }

    func checkLayer(_ config: MoEConfig, _ dtype: DType, _ seed: UInt64, on backend: any ComputeBackend) throws
        -> (MoELayer, Tensor)
    {
        let layer = try MoELayer(
            backend: backend, config: config,
            weights: try MoEWeights.random(config: config, backend: backend, dtype: dtype, seed: seed))
        var g = SeededGenerator(seed: seed + 100)
        let x = try backend.tensor(g.normals(77 * config.hidden), shape: [77, config.hidden], dtype: dtype)
        return (layer, x)
    }

    /// Nil when `tuning`'s layer outputs match the reference, else what differed.
    func check(_ tuning: Tuning, on device: Device, against checks: [Check]) throws -> String? {
        let backend = try OpenCLBackend(device: device, tuning: tuning)
        for c in checks {
            let (layer, x) = try checkLayer(c.config, c.dtype, c.seed, on: backend)
            let got = try backend.floats(try layer.forward(x).y)
            let error = ErrorMeasure.nmse(got, c.want)
            let tolerance = c.dtype == .f32 ? 1e-9 : 1e-6
            if !(error <= tolerance) {
                return String(format: "normalized error %.2e > %.0e on %@ %@", error, tolerance, "\(c.config.hidden)", "\(c.dtype)")
            }
        }
        return nil
    }

    /// Median device time of the grouped matmuls of the built-in shapes under `tuning`
    /// (`forwardSeconds`: forwards' wall clock on a device with implausible events).
    func measure(_ tuning: Tuning, on device: Device) throws -> Double {
        let backend = try OpenCLBackend(device: device, tuning: tuning)
        var total = 0.0
        for config in [MoEConfig.mixtralSmall, .deepSeekLike] {
            for dtype in [DType.f32, .bf16] {
                let layer = try MoELayer(
                    backend: backend, config: config,
                    weights: try MoEWeights.random(config: config, backend: backend, dtype: dtype, seed: 3))
                var g = SeededGenerator(seed: 4)
                let x = try backend.tensor(g.normals(tokens * config.hidden), shape: [tokens, config.hidden], dtype: dtype)
                let wallClock = try forwardSeconds(layer, x, stages: [], wallClock: nil).wallClock  // (warm-up)
                var runs: [Double] = []
                for _ in 0..<5 {
                    runs.append(try forwardSeconds(layer, x, stages: ["gate|up+SwiGLU", "down"], wallClock: wallClock).seconds)
                }
                total += median(runs)
            }
        }
        return total
    }
}

/// `body`'s value and the seconds it took on the host's monotonic clock.
func wallSeconds<T>(_ body: () throws -> T) rethrows -> (value: T, seconds: Double) {
    let start = DispatchTime.now().uptimeNanoseconds
    let value = try body()
    return (value, Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
}

/// Writes a line to standard output at once (unbuffered even into a pipe or file), so a long
/// search shows each candidate as it is measured.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
