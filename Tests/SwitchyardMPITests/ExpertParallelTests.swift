import Foundation
import OpenCLHost
import Switchyard
import SwitchyardMPI
import Testing

/// Expert parallelism end to end: `mpirun --oversubscribe -np 2` and `-np 4` on this machine
/// start `switchyard run --ep --check`, in which every rank runs its share of the tokens through
/// `ExpertParallelMoELayer` (experts split over the ranks, rows exchanged with MPI) and compares
/// its output rows bitwise, and the global routing statistics, with a single-process `MoELayer`
/// over all the tokens on the same device. Scenarios: contiguous and scattered placements, a
/// rank that receives no rows (it holds no experts) and one that receives all of them, ranks
/// with no tokens, capacity with both drop priorities, f32/f16/bf16, and the second OpenCL
/// driver.
@Suite("Expert parallelism over MPI", .serialized)
struct ExpertParallelTests {
    struct Scenario: CustomTestStringConvertible, Sendable {
        let name: String
        let ranks: Int
        let arguments: [String]
        var testDescription: String { "\(name) (-np \(ranks))" }
    }

    static let scenarios: [Scenario] = [
        Scenario(name: "mixtral-tiny f32, contiguous blocks, uneven token split", ranks: 2,
                 arguments: ["--config", "mixtral-tiny", "--tokens", "37"]),
        Scenario(name: "rank 0 receives no rows and has every token, rank 1 receives them all", ranks: 2,
                 arguments: ["--config", "mixtral-tiny", "--tokens", "20", "--placement", "1,1,1,1,1,1,1,1",
                             "--token-split", "20,0"]),
        Scenario(name: "deepseek-tiny bf16, capacity 0.6 by weight (drops)", ranks: 2,
                 arguments: ["--config", "deepseek-tiny", "--dtype", "bf16", "--tokens", "50", "--capacity-factor", "0.6",
                             "--drop-priority", "weight"]),
        Scenario(name: "qwen-moe-tiny f32, scattered placement (uneven), capacity 0.8 in token order", ranks: 4,
                 arguments: ["--config", "qwen-moe-tiny", "--tokens", "41", "--capacity-factor", "0.8",
                             "--placement", "3,0,2,2,1,0,3,3,0,1,2,0,3,0,0,0"]),
        Scenario(name: "mixtral-tiny f16, every expert on rank 0 which has no tokens, ranks 1-3 receive nothing", ranks: 4,
                 arguments: ["--config", "mixtral-tiny", "--dtype", "f16", "--tokens", "30", "--placement",
                             "0,0,0,0,0,0,0,0", "--token-split", "0,10,0,20"]),
        Scenario(name: "deepseek-tiny f32, 0 tokens on every rank", ranks: 2,
                 arguments: ["--config", "deepseek-tiny", "--tokens", "0"]),
    ]

    @Test(.serialized, arguments: scenarios)
    func bitwiseEqualToSingleProcess(_ s: Scenario) throws {
        let (status, output) = try Self.mpirun(ranks: s.ranks, s.arguments + ["--device", "0"])
        #expect(status == 0, "mpirun exited with \(status):\n\(output)")
        #expect(output.contains("check   bitwise equal to the single-process MoELayer on all \(s.ranks) ranks"), "\(output)")
    }

    /// The second driver (Mesa rusticl over llvmpipe), one scenario with a rank receiving every
    /// row and one receiving none (its first forwards are slow there: kept to one).
    @Test func bitwiseEqualOnRusticl() throws {
        guard ProcessInfo.processInfo.environment["RUSTICL_ENABLE"] != nil else {
            Issue.record("RUSTICL_ENABLE is not set: `make test` sets it so that rusticl (device 1) is tested too")
            return
        }
        let (status, output) = try Self.mpirun(
            ranks: 2, ["--config", "mixtral-tiny", "--tokens", "24", "--placement", "0,0,0,0,0,0,0,0", "--token-split",
                       "0,24", "--device", "1"])
        #expect(status == 0, "mpirun exited with \(status):\n\(output)")
        #expect(output.contains("llvmpipe"), "not run on rusticl:\n\(output)")
        #expect(output.contains("check   bitwise equal to the single-process MoELayer on all 2 ranks"), "\(output)")
    }

    /// A rank whose router input holds NaN fails with the routing error; the other rank, which
    /// had nothing wrong, does not hang in the exchange: it throws `peerFailed` naming the rank.
    @Test func aFailingRankStopsEveryRankWithoutAHang() throws {
        let h = MoEConfig.mixtralTiny.hidden
        var x = (0..<(8 * h)).map { Float(($0 % 13) - 6) / 7 }
        x[6 * h + 3] = .nan  // token 6: rank 1's share (tokens 4..<8)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("ep-nan-\(getpid()).safetensors").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try SafeTensorsFile.write([("x", x, [8, h], .f32)], to: path)
        let (status, output) = try Self.mpirun(
            ranks: 2, ["--config", "mixtral-tiny", "--input", path, "--device", "0"], check: false)
        #expect(status != 0)
        #expect(output.contains("router logits: NaN or infinite values"), "\(output)")
        #expect(output.contains("rank 1 failed in the routing phase"), "\(output)")
    }

    /// A real checkpoint layout (Hugging Face DeepSeek-V3, bf16, sharded; written by
    /// Tests/Fixtures/hf_moe.py): each rank reads only its experts; scattered placement.
    @Test func checkpointSplitAcrossRanks() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ep-checkpoint-\(getpid())")
        try? FileManager.default.removeItem(at: folder)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../Fixtures/hf_moe.py").standardized.path
        let python = Process()
        python.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        python.arguments = ["python3", script, "make", folder.path, "deepseek_v3", "bf16", "sharded", "7"]
        let pipe = Pipe()
        let errors = Pipe()
        python.standardOutput = pipe
        python.standardError = errors
        try python.run()
        let printed = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let complaints = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        python.waitUntilExit()
        let layer = printed.trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(
            python.terminationStatus == 0 && Int(layer) != nil,
            "hf_moe.py failed (python3 with numpy and safetensors is needed): \(printed)\(complaints)")
        let (status, output) = try Self.mpirun(
            ranks: 2, ["--model", folder.path, "--layer", layer, "--input", folder.appendingPathComponent("x.safetensors").path,
                       "--placement", "1,0,0,1,1,0,0,1,1,0,0,1,1,1,1,1", "--device", "0"])
        #expect(status == 0, "mpirun exited with \(status):\n\(output)")
        #expect(output.contains("deepseek_v3 layer"), "\(output)")
        #expect(output.contains("check   bitwise equal to the single-process MoELayer on all 2 ranks"), "\(output)")
    }

    /// Ranks built with different layer configs (an MPMD launch: rank 0 mixtral-tiny, rank 1
    /// qwen-moe-tiny) all refuse at construction, naming the other rank's config; none hangs.
    @Test func ranksWithDifferentConfigsAllRefuse() throws {
        let common = ["--ep", "--iterations", "0", "--tokens", "8", "--device", "0"]
        let (status, output) = try Self.mpirunRaw(
            ["-np", "1", "BINARY", "run", "--config", "mixtral-tiny"] + common
                + [":", "-np", "1", "BINARY", "run", "--config", "qwen-moe-tiny"] + common)
        #expect(status != 0)
        #expect(output.contains("rank 1 has another layer config"), "\(output)")
        #expect(output.contains("rank 0 has another layer config"), "\(output)")
    }

    @Test func placementsAreChecked() throws {
        let p = try ExpertPlacement.contiguous(experts: 10, ranks: 4)
        #expect(p.rankOf == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
        #expect(p.expertMap(rank: 1) == [-1, -1, 0, 1, 2, -1, -1, -1, -1, -1])
        #expect(try ExpertPlacement.contiguous(experts: 2, ranks: 4).experts(onRank: 0) == [])
        let maps = [[1, -1, 0, -1], [-1, 0, -1, 1]]
        let q = try ExpertPlacement(expertMaps: maps)
        #expect(q.experts(onRank: 0) == [2, 0] && q.experts(onRank: 1) == [1, 3])
        #expect(q.expertMap(rank: 0) == maps[0])
        func refused(_ maps: [[Int]], _ fragment: String) {
            do {
                _ = try ExpertPlacement(expertMaps: maps)
                Issue.record("accepted \(maps)")
            } catch {
                #expect("\(error)".contains(fragment), "\(error)")
            }
        }
        refused([[0, -1], [0, -1]], "expert 0 is held by ranks 0 and 1")
        refused([[0, -1], [-1, -1]], "expert 1 is on no rank")
        refused([[0, 2, -1], [-1, -1, 0]], "not 0..<2")
        refused([[0, 0], [-1, -1]], "expertMap of rank 0, expert 1")
        refused([[0, -2], [-1, 0]], "expertMap of rank 0, expert 1")
        refused([[0, -1], [-1]], "expertMap of rank 1")
    }

    /// The Switchyard calls the exchange is built on: raw bytes in and out by row ranges, row
    /// blocks concatenated from host bytes and device rows, routing weights replaced; each
    /// refuses bad input with an error naming the argument.
    @Test func rowBlocksBytesAndReplacedWeights() throws {
        let backend = try OpenCLBackend(device: try Device.select("0"))
        let values = (0..<15).map { Float($0) - 7.25 }
        for dtype in [DType.f32, .f16, .bf16] {
            let a = try backend.tensor(values, shape: [5, 3], dtype: dtype)
            let raw = try backend.bytes(a)
            let row = 3 * dtype.size
            #expect(try backend.bytes(a, rows: 1..<4) == Array(raw[row..<(4 * row)]))
            #expect(try backend.bytes(a, rows: 2..<2).isEmpty)
            #expect(try backend.bytes(try backend.tensor(bytes: raw, shape: [5, 3], dtype: dtype)) == raw)
            let c = try backend.tensor(
                concatenating: [.bytes(Array(raw[(4 * row)...]), rows: 1), .rows(a, 0..<2), .bytes([], rows: 0), .rows(a, 3..<3)],
                rowShape: [3], dtype: dtype)
            #expect(c.shape == [3, 3])
            #expect(try backend.bytes(c) == Array(raw[(4 * row)...]) + Array(raw[..<(2 * row)]))
            #expect(throws: SwitchyardError.self) { try backend.tensor(bytes: Array(raw.dropLast()), shape: [5, 3], dtype: dtype) }
            #expect(throws: SwitchyardError.self) { try backend.bytes(a, rows: 4..<6) }
            #expect(throws: SwitchyardError.self) {
                try backend.tensor(concatenating: [.bytes(Array(raw[..<row]), rows: 2)], rowShape: [3], dtype: dtype)
            }
            #expect(throws: SwitchyardError.self) {
                try backend.tensor(concatenating: [.rows(a, 0..<6)], rowShape: [3], dtype: dtype)
            }
            #expect(throws: SwitchyardError.self) {
                try backend.tensor(concatenating: [.rows(a, 0..<1)], rowShape: [4], dtype: dtype)
            }
        }
        let other = try backend.tensor(values, shape: [5, 3], dtype: .f32)
        #expect(throws: SwitchyardError.self) {
            try backend.tensor(concatenating: [.rows(other, 0..<1)], rowShape: [3], dtype: .bf16)
        }
        let routing = try backend.route(
            try backend.tensor((0..<12).map { Float($0 % 5) }, shape: [3, 4], dtype: .f32), config: .mixtral(experts: 4, k: 2))
        let ones = try backend.tensor([Float](repeating: 1, count: 6), shape: [3, 2], dtype: .f32)
        let replaced = try routing.replacingWeights(ones)
        #expect(try backend.floats(replaced.weights) == [Float](repeating: 1, count: 6))
        #expect(try backend.ints(replaced.rowOf) == backend.ints(routing.rowOf))
        #expect(throws: SwitchyardError.self) { try routing.replacingWeights(try backend.tensor([1, 1], shape: [2, 1], dtype: .f32)) }
        #expect(throws: SwitchyardError.self) { try routing.replacingWeights(try backend.tensor([Int32](repeating: 1, count: 6), shape: [3, 2])) }
        #expect(throws: SwitchyardError.self) {
            try routing.replacingWeights(try ReferenceBackend().tensor([Float](repeating: 1, count: 6), shape: [3, 2], dtype: .f32))
        }
    }

    // MARK: - Running mpirun

    /// The folder of the built products (the test bundle's own folder).
    static var products: URL {
        let runner = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var folder = runner.deletingLastPathComponent()
        // The runner may sit inside a bundle (…/X.xctest/Contents/MacOS): walk up to the products.
        while !FileManager.default.isExecutableFile(atPath: folder.appendingPathComponent("switchyard").path),
              folder.pathComponents.count > 2 {
            folder.deleteLastPathComponent()
        }
        return folder
    }

    static func executable(_ name: String) -> String? {
        let env = ProcessInfo.processInfo.environment
        for dir in (env["PATH"] ?? "").split(separator: ":") + ["/usr/bin", "/usr/local/bin"] {
            let path = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    /// Runs `mpirun [--oversubscribe --allow-run-as-root] arguments` with BINARY standing for the
    /// switchyard command.
    static func mpirunRaw(_ arguments: [String], deadline: Double = 90) throws -> (Int32, String) {
        let binary = products.appendingPathComponent("switchyard").path
        return try launch(arguments.map { $0 == "BINARY" ? binary : $0 }, deadline: deadline)
    }

    /// Runs `mpirun -np ranks switchyard run --ep --iterations 0 [--check] arguments` (one forward) with a
    /// deadline (a hang fails the test instead of stalling the suite).
    static func mpirun(ranks: Int, _ arguments: [String], check: Bool = true, deadline: Double = 90) throws
        -> (Int32, String)
    {
        let binary = products.appendingPathComponent("switchyard").path
        return try launch(
            ["-np", "\(ranks)", binary, "run", "--ep", "--iterations", "0"] + (check ? ["--check"] : []) + arguments,
            deadline: deadline)
    }

    static func launch(_ arguments: [String], deadline: Double) throws -> (Int32, String) {
        guard let mpirun = executable("mpirun") else {
            Issue.record("mpirun not found: install openmpi-bin (make deps does)")
            return (-1, "")
        }
        let binary = products.appendingPathComponent("switchyard").path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            Issue.record("the switchyard command is not built at \(binary)")
            return (-1, "")
        }
        var launcher = ["--oversubscribe"]
        if getuid() == 0 { launcher.append("--allow-run-as-root") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: mpirun)
        process.arguments = launcher + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        final class Output: @unchecked Sendable { var data = Data() }
        let output = Output()
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            output.data = pipe.fileHandleForReading.readDataToEndOfFile()
            done.signal()
        }
        let finished = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            process.waitUntilExit()
            finished.signal()
        }
        if finished.wait(timeout: .now() + deadline) == .timedOut {
            process.terminate()
            _ = finished.wait(timeout: .now() + 10)
            Issue.record("mpirun \(arguments) did not finish within \(Int(deadline)) s (a hang?)")
        }
        _ = done.wait(timeout: .now() + 10)
        return (process.terminationStatus, String(decoding: output.data, as: UTF8.self))
    }
}
