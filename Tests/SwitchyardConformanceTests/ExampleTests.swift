import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance
import SwitchyardExamples
import SwitchyardReference
import Testing

/// The conditional-computation example stacks (`switchyard run --config mod-tiny|soft-moe-tiny`):
/// on every OpenCL device at small sizes, the compute fraction they report against the rows the
/// device actually computed (counted here from the device's own records and the reference's
/// selection), the `--check` agreement, an independent plain-loop mixture-of-depths, and the
/// command line as a user runs it.
@Suite("Conditional-computation examples", .serialized)
struct ExampleTests {
    static let modConfig = MixtureOfDepthsConfig(blocks: 3, hidden: 32, ffn: 48, capacity: 0.25)
    static let softConfig = SoftMoEStackConfig(
        blocks: 2, layer: SoftMoEConfig(hidden: 32, ffn: 40, experts: 3, slotsPerExpert: 5))
    static let mod = ConditionalExample(name: "mod-small", defaultBatch: 3, defaultLength: 37) {
        try MixtureOfDepthsStack(backend: $0, config: modConfig, shape: $1)
    }
    static let soft = ConditionalExample(name: "soft-moe-small", defaultBatch: 2, defaultLength: 23) {
        try SoftMoEStack(backend: $0, config: softConfig, shape: $1)
    }

    static let exitConfig = EarlyExitConfig(
        blocks: 3, hidden: 32, ffn: 48, classes: 10, headScale: 1.5, criterion: .maxProbability(0.6))
    static let exit = ConditionalExample(name: "early-exit-small", defaultBatch: 3, defaultLength: 37) {
        try EarlyExitStack(backend: $0, config: exitConfig, shape: $1)
    }

    /// One backend per device for the whole suite: its programs are built once (rusticl takes
    /// seconds per program).
    static let backends: [OpenCLBackend] = (try? Device.all().map { try OpenCLBackend(device: $0) }) ?? []

    static func devices() throws -> [OpenCLBackend] {
        let all = try Device.all()
        try #require(backends.count == all.count, "a backend on every device")
        return backends
    }

    /// Mixture-of-depths: the reported fraction is the count of valid chosen positions the device
    /// returned over B·L per block, those positions are the reference's own selection (C distinct
    /// ascending positions per sequence, C = ⌈0.25 · L⌉), and the output agrees with the reference.
    @Test(arguments: [DType.f32, .bf16])
    func mixtureOfDepthsAccountsTheRowsItComputed(_ dtype: DType) throws {
        let shape = ExampleShape(batch: 3, length: 37, dtype: dtype, seed: 11)
        let c = 10  // ⌈0.25 · 37⌉
        let flopsPerRow = Double(2 * 32 * 2 * 48 + 2 * 48 * 32)
        let reference = ReferenceBackend()
        let rstack = try Self.mod.make(reference, shape)
        let rforward = try rstack.forwardDynamic(try rstack.input())
        let want = try rforward.records.map { try reference.ints($0) }
        for backend in try Self.devices() {
            let report = try ExampleReport.run(
                Self.mod, backend: backend, shape: shape, iterations: dtype == .f32 ? 1 : 0, check: true)
            let check = try #require(report.check)
            #expect(check.passed, "\(backend.name) \(dtype): \(report.lines.joined(separator: "\n"))")
            #expect(check.recordsDiffering == 0 && check.blocks == 3)
            // The device's records, read here, against the reference's selection.
            let stack = try Self.mod.make(backend, shape)
            let forward = try stack.forwardDynamic(try stack.input())
            #expect(forward.records.count == 3)
            var rows: [Int] = []
            for (block, record) in forward.records.enumerated() {
                let got = try backend.ints(record)
                #expect(got == want[block], "\(backend.name) block \(block)")
                for b in 0..<3 {
                    let positions = got[b * c..<(b + 1) * c]
                    #expect(positions.allSatisfy { (0..<37).contains($0) }, "\(backend.name)")
                    #expect(zip(positions, positions.dropFirst()).allSatisfy { $0 < $1 }, "ascending, distinct")
                }
                rows.append(Set(got.enumerated().map { ($0.offset / c) * 37 + Int($0.element) }).count)
            }
            #expect(rows == [30, 30, 30])
            #expect(report.account.computedRows == rows, "\(backend.name)")
            #expect(report.account.denseRows == [111, 111, 111])
            let fraction = Double(rows.reduce(0, +)) * flopsPerRow / (3 * 111 * flopsPerRow)
            #expect(abs(report.account.blockFraction - fraction) < 1e-12)
            #expect(report.lines.contains { $0.hasPrefix(String(format: "compute fraction %.4f", fraction)) })
            if dtype == .f32 {
                #expect(report.denseWallSeconds.count == 1 && report.dynamicWallSeconds.count == 1)
                #expect(report.speedup.isFinite && report.speedup > 0)
            }
        }
    }

    /// Soft MoE: the rows computed are the slot routing's counts read back from the device
    /// (B · E · S per block, the reference's too), against B · L · E for the dense mixture.
    @Test(arguments: [DType.f32, .f16])
    func softMoEAccountsTheRowsItComputed(_ dtype: DType) throws {
        let shape = ExampleShape(batch: 2, length: 23, dtype: dtype, seed: 12)
        let reference = ReferenceBackend()
        let rstack = try Self.soft.make(reference, shape)
        let rforward = try rstack.forwardDynamic(try rstack.input())
        let want = try rforward.records.map { try reference.ints($0) }
        #expect(want == [[10, 10, 10], [10, 10, 10]])
        for backend in try Self.devices() {
            let report = try ExampleReport.run(
                Self.soft, backend: backend, shape: shape, iterations: dtype == .f32 ? 1 : 0, check: true)
            let check = try #require(report.check)
            #expect(check.passed, "\(backend.name) \(dtype): \(report.lines.joined(separator: "\n"))")
            let stack = try Self.soft.make(backend, shape)
            let forward = try stack.forwardDynamic(try stack.input())
            let rows = try forward.records.map { try backend.ints($0).reduce(0) { $0 + Int($1) } }
            #expect(try forward.records.map { try backend.ints($0) } == want)
            #expect(report.account.computedRows == rows && rows == [30, 30])
            #expect(report.account.denseRows == [2 * 23 * 3, 2 * 23 * 3])
            #expect(abs(report.account.blockFraction - 60.0 / 276.0) < 1e-12)
        }
    }

    /// Early exit: the reported rows are the active counts the device's routings held, and they
    /// equal the rows counted here from the device's own exit heads (block k ran on the samples
    /// that left at head k or later); predictions and exit heads are the reference's, and
    /// samples leave at every head.
    @Test(arguments: [DType.f32, .f16])
    func earlyExitAccountsTheRowsItComputed(_ dtype: DType) throws {
        let shape = ExampleShape(batch: 3, length: 37, dtype: dtype, seed: 13)
        let n = 3 * 37
        let flopsPerRow = Double(2 * 32 * 2 * 48 + 2 * 48 * 32)
        let reference = ReferenceBackend()
        let rstack = try Self.exit.make(reference, shape)
        let rforward = try rstack.forwardDynamic(try rstack.input())
        let wantExits = try reference.ints(rforward.outcomes[1].tensor)
        let perHead = (0..<3).map { k in wantExits.filter { $0 == Int32(k) }.count }
        #expect(perHead.reduce(0, +) == n && perHead.allSatisfy { $0 > 0 }, "samples leaving per head: \(perHead)")
        for backend in try Self.devices() {
            let report = try ExampleReport.run(
                Self.exit, backend: backend, shape: shape, iterations: dtype == .f32 ? 1 : 0, check: true)
            let check = try #require(report.check)
            #expect(check.passed, "\(backend.name) \(dtype): \(report.lines.joined(separator: "\n"))")
            #expect(check.outcomes == ["predictions", "exit heads"] && check.outcomesDiffering.isEmpty)
            let stack = try Self.exit.make(backend, shape)
            let forward = try stack.forwardDynamic(try stack.input())
            let exits = try backend.ints(forward.outcomes[1].tensor)
            #expect(exits == wantExits, "\(backend.name)")
            #expect(try backend.ints(forward.outcomes[0].tensor) == reference.ints(rforward.outcomes[0].tensor))
            let rows = (0..<3).map { k in exits.filter { $0 >= Int32(k) }.count }
            #expect(rows[0] == n && rows[1] < n && rows[2] < rows[1], "\(rows)")
            #expect(report.account.computedRows == rows, "\(backend.name): \(report.account.computedRows) vs \(rows)")
            #expect(report.account.denseRows == [n, n, n])
            let fraction = Double(rows.reduce(0, +)) * flopsPerRow / (3 * Double(n) * flopsPerRow)
            #expect(abs(report.account.blockFraction - fraction) < 1e-12)
            #expect(report.account.dynamicOverheadFLOPs == Double(rows.reduce(0, +)) * 2 * 32 * 10)
            #expect(report.lines.contains { $0.hasPrefix(String(format: "compute fraction %.4f", fraction)) })
            #expect(report.lines.contains { $0.contains("predictions and exit heads identical") }, "\(report.lines)")
        }
    }

    /// The dense forwards (the baselines timed against) agree with the reference too.
    @Test func denseForwardsMatchTheReference() throws {
        let reference = ReferenceBackend()
        for (example, shape) in [(Self.mod, ExampleShape(batch: 2, length: 19, seed: 3)),
                                 (Self.soft, ExampleShape(batch: 2, length: 9, seed: 4)),
                                 (Self.exit, ExampleShape(batch: 2, length: 11, seed: 5))] {
            let rstack = try example.make(reference, shape)
            let want = try reference.floats(try rstack.forwardDense(try rstack.input()))
            for backend in try Self.devices() {
                let stack = try example.make(backend, shape)
                let got = try backend.floats(try stack.forwardDense(try stack.input()))
                #expect(ErrorMeasure.nmse(got, want) < 1e-10, "\(backend.name) \(example.name)")
            }
        }
    }

    /// Mixture-of-depths written out in plain loops (Double), from the same seeded draws: the
    /// stack composes the ops as documented (router, top C ascending, σ(score) · MLP, residual).
    @Test func mixtureOfDepthsMatchesPlainLoops() throws {
        let (b, l, d, f, blocks, c) = (2, 13, 32, 48, 3, 4)  // C = ⌈0.25 · 13⌉
        let shape = ExampleShape(batch: b, length: l, dtype: .f32, seed: 99)
        var g = SeededGenerator(seed: 99)
        var weights: [(r: [Float], gu: [Float], dn: [Float])] = []
        for _ in 0..<blocks {
            let r = g.normals(d, scale: 1 / Float(d).squareRoot())
            let gu = g.normals(2 * f * d, scale: 1 / Float(d).squareRoot())
            let dn = g.normals(d * f, scale: 1 / Float(f).squareRoot())
            weights.append((r, gu, dn))
        }
        var gx = SeededGenerator(seed: 99 ^ 0x5EED_0F_1A9E)
        var x = gx.normals(b * l * d).map(Double.init)
        for w in weights {
            var next = x
            for s in 0..<b {
                let scores = (0..<l).map { t in (0..<d).reduce(0.0) { $0 + x[(s * l + t) * d + $1] * Double(w.r[$1]) } }
                let chosen = (0..<l).sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }.prefix(c)
                for t in chosen {
                    let row = Array(x[(s * l + t) * d..<(s * l + t + 1) * d])
                    let h = (0..<f).map { j -> Double in
                        let gate = (0..<d).reduce(0.0) { $0 + row[$1] * Double(w.gu[j * d + $1]) }
                        let up = (0..<d).reduce(0.0) { $0 + row[$1] * Double(w.gu[(f + j) * d + $1]) }
                        return gate / (1 + exp(-gate)) * up
                    }
                    let weight = 1 / (1 + exp(-scores[t]))
                    for o in 0..<d {
                        next[(s * l + t) * d + o] += weight * (0..<f).reduce(0.0) { $0 + h[$1] * Double(w.dn[o * f + $1]) }
                    }
                }
            }
            x = next
        }
        let want = x.map(Float.init)
        var backends: [any ComputeBackend] = [ReferenceBackend()]
        backends += try Self.devices() as [any ComputeBackend]
        for backend in backends {
            let stack = try Self.mod.make(backend, shape)
            let got = try backend.floats(try stack.forwardDynamic(try stack.input()).y)
            #expect(ErrorMeasure.nmse(got, want) < 1e-11, "\(backend.name)")
        }
    }

    /// Sizes the stacks cannot run are refused with an error naming them.
    @Test func badSizesAreRefused() throws {
        let backend = ReferenceBackend()
        let shape = ExampleShape(batch: 1, length: 8)
        for config in [MixtureOfDepthsConfig(blocks: 0, hidden: 8, ffn: 8, capacity: 0.5),
                       MixtureOfDepthsConfig(blocks: 1, hidden: 8, ffn: 8, capacity: 0),
                       MixtureOfDepthsConfig(blocks: 1, hidden: 8, ffn: 8, capacity: .nan),
                       MixtureOfDepthsConfig(blocks: 1, hidden: 0, ffn: 8, capacity: 0.5)] {
            #expect(throws: SwitchyardError.self) { try MixtureOfDepthsStack(backend: backend, config: config, shape: shape) }
        }
        for config in [EarlyExitConfig(blocks: 0, hidden: 8, ffn: 8, classes: 4, headScale: 1, criterion: .maxProbability(0.5)),
                       EarlyExitConfig(blocks: 1, hidden: 8, ffn: 8, classes: 0, headScale: 1, criterion: .maxProbability(0.5)),
                       EarlyExitConfig(blocks: 1, hidden: 8, ffn: 8, classes: 4, headScale: .nan, criterion: .maxProbability(0.5)),
                       EarlyExitConfig(blocks: 1, hidden: 8, ffn: 8, classes: 4, headScale: 1, criterion: .maxProbability(.nan)),
                       EarlyExitConfig(blocks: 1, hidden: 8, ffn: 8, classes: 4, headScale: 1, criterion: .patience(0))] {
            #expect(throws: SwitchyardError.self) { try EarlyExitStack(backend: backend, config: config, shape: shape) }
        }
        #expect(throws: SwitchyardError.self) {
            try SoftMoEStack(
                backend: backend,
                config: SoftMoEStackConfig(blocks: 1, layer: SoftMoEConfig(hidden: 8, ffn: 8, experts: 2, slotsPerExpert: 0)),
                shape: shape)
        }
        for bad in [ExampleShape(batch: 0, length: 8), ExampleShape(batch: 1, length: 0),
                    ExampleShape(batch: 1, length: 8, dtype: .i32), ExampleShape(batch: 1 << 40, length: 1 << 30)] {
            #expect(throws: SwitchyardError.self) { try Self.mod.make(backend, bad) }
        }
        let stack = try Self.mod.make(backend, shape)
        let wrong = try backend.tensor([Float](repeating: 1, count: 2 * 8 * 32), shape: [2, 8, 32], dtype: .f32)
        #expect(throws: SwitchyardError.self) { try stack.forwardDynamic(wrong) }
        #expect(throws: SwitchyardError.self) { try stack.forwardDense(wrong) }
        #expect(throws: SwitchyardError.self) { try ExampleReport.run(Self.mod, backend: backend, shape: shape, iterations: -1, check: false) }
    }
}

/// `switchyard run --config mod-tiny|soft-moe-tiny|early-exit-tiny --check` as a user runs it, small batches: exit 0, the check passes, and the printed fraction is the printed rows computed
/// over the dense rows (for mixture-of-depths: 4 blocks × B × ⌈L/8⌉ rows).
/// (PoCL, device 0, only: rusticl over llvmpipe takes seconds per launch here, and the suite
/// above runs the same code on every device.)
@Test func exampleCommands() throws {
    let device = 0
    try #require(!(try Device.all()).isEmpty)
    let binary = LoadMemoryTests.tool
    try #require(FileManager.default.isExecutableFile(atPath: binary), "build the switchyard tool first (swift build)")
    func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }
    for (config, batch, length, dense) in [("mod-tiny", 2, 20, 4 * 2 * 20), ("soft-moe-tiny", 1, 12, 4 * 12 * 8),
                                           ("early-exit-tiny", 2, 40, 4 * 2 * 40)] {
        let (status, output) = try run(
            ["run", "--config", config, "--batch", "\(batch)", "--tokens", "\(length)", "--iterations", "1", "--check",
             "--device", "\(device)"])
        #expect(status == 0, "\(output)")
        let lines = output.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("check ") && $0.hasSuffix(": pass") }, "\(output)")
        #expect(lines.contains { $0.hasPrefix("speedup ") }, "\(output)")
        let line = try #require(lines.first { $0.hasPrefix("compute fraction ") }, "\(output)")
        let numbers = line.split(whereSeparator: { $0 == " " || $0 == "(" }).compactMap { Double($0) }
        try #require(numbers.count >= 3, "\(line)")
        let (fraction, rows, denseRows) = (numbers[0], numbers[1], numbers[2])
        #expect(denseRows == Double(dense), "\(line)")
        #expect(abs(fraction - rows / denseRows) < 1e-4, "\(line)")
        // mod-tiny: ⌈0.125 · 20⌉ = 3 per sequence and block; soft-moe-tiny: its 128 slots per block;
        // early-exit-tiny: every sample through the first block, fewer through the later ones.
        switch config {
        case "mod-tiny": #expect(rows == Double(4 * batch * 3), "\(line)")
        case "soft-moe-tiny": #expect(rows == Double(4 * 128), "\(line)")
        default:
            let perBlock = line.split(separator: ";").last!.split(separator: " ").compactMap { Int($0.trimmingCharacters(in: .punctuationCharacters)) }
            #expect(perBlock.count == 4 && perBlock[0] == batch * length && perBlock[3] < perBlock[0], "\(line)")
            #expect(Double(perBlock.reduce(0, +)) == rows, "\(line)")
            #expect(lines.contains { $0.hasPrefix("check ") && $0.contains("predictions and exit heads identical") }, "\(output)")
        }
    }
    // Options of the MoE layer are refused for a stack, not ignored.
    let refused = try run(["run", "--config", "mod-tiny", "--quantize", "int8", "--device", "\(device)"])
    #expect(refused.status != 0 && refused.output.contains("--quantize"), "\(refused.output)")
    // The expert-parallel layer runs float weights: a quantization is refused there, not ignored.
    let epRefused = try run(["run", "--config", "mixtral-tiny", "--ep", "--quantize", "int4", "--device", "\(device)"])
    #expect(epRefused.status != 0 && epRefused.output.contains("--quantize int4") && epRefused.output.contains("--ep"),
            "\(epRefused.output)")
    // Hostile or inapplicable flag values: refused by name before any work (they trapped, hung,
    // allocated without bound, or were ignored).
    let folder = FileManager.default.temporaryDirectory.path
    for (arguments, words) in [
        (["run", "--device", ""], "No OpenCL device matches ''"),
        (["run", "--layer", "1"], "--layer and --input need --model"),
        (["run", "--iterations", "0"], "--iterations must be in 1...100000"),
        (["run", "--iterations", "9223372036854775807"], "--iterations must be in 1...100000"),
        (["run", "--drop-priority", "bogus"], "--drop-priority"),
        (["run", "--output", folder], "a folder, not a file"),
        (["conformance", "--json", folder, "--filter", "^$"], "a folder, not a file"),
        (["conformance", "--fuzz", "9223372036854775807"], "--fuzz must be in 1...1000000"),
        (["conformance", "--filter", "("], "--filter '(' is not a regular expression"),
        (["tune", "--dry-run", "--tokens", "9223372036854775807"], "--tokens must be in 1...65536"),
    ] {
        let (status, output) = try run(arguments)
        #expect(status != 0 && output.contains(words), "\(arguments): \(output)")
    }
}
