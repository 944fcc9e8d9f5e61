import Foundation
import OpenCLHost
import Switchyard
import SwitchyardReference
import Testing

/// Hostile and broken inputs get a clear error, never a trap, an abort, a SIGBUS or a hang.
@Suite("Hostile inputs: files, sizes, configs")
struct HostileInputTests {
    static let folder = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-hostile-\(getpid())")

    /// A safetensors file from a raw header (JSON text) and `data` bytes; `declared` overrides the
    /// header length field.
    static func file(_ name: String, header: String, data: [UInt8], declared: UInt64? = nil) throws -> String {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        var json = Array(header.utf8)
        while json.count % 8 != 0 { json.append(0x20) }
        var bytes: [UInt8] = []
        withUnsafeBytes(of: (declared ?? UInt64(json.count)).littleEndian) { bytes += $0 }
        bytes += json + data
        let path = folder.appendingPathComponent(name).path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func expectCheckpointError(_ path: String, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation)
    {
        do {
            let f = try SafeTensorsFile(path: path)
            for name in f.entries.keys { _ = try f.floats(name) }
            Issue.record("\(path) was accepted", sourceLocation: sourceLocation)
        } catch let error as CheckpointError {
            #expect(error.message.contains(fragment), "\(error.message)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func safetensorsHeadersAreCheckedStrictly() throws {
        let eight = [UInt8](repeating: 0x3F, count: 8)
        // A valid file first: two f32 tensors tiling the data.
        let good = try Self.file(
            "good.safetensors",
            header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            data: eight)
        #expect(try SafeTensorsFile(path: good).floats("b").values.count == 1)

        Self.expectCheckpointError(
            try Self.file("huge-header.safetensors", header: "{}", data: [], declared: 1 << 63), "header length")
        // Each over 8 data bytes: (file, header, what the error must say).
        let bad: [(String, String, String)] = [
            ("offsets", #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,9223372036854775807]}}"#, "outside"),
            ("shape", #"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#, "needs more bytes"),
            ("negative", #"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, "negative"),
            ("overlap",
             #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
             "overlaps"),
            ("gap", #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, "gap"),
            ("tail", #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, "cover"),
            ("mismatch", #"{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,8]}}"#, "byte range"),
            ("dtype", #"{"a":{"dtype":"Q4","shape":[8],"data_offsets":[0,8]}}"#, "unknown dtype"),
        ]
        for (name, header, fragment) in bad {
            Self.expectCheckpointError(try Self.file("\(name).safetensors", header: header, data: eight), fragment)
        }
    }

    @Test func aFileTruncatedAfterOpeningIsAnErrorNotSIGBUS() throws {
        let path = try Self.file(
            "shrinks.safetensors", header: #"{"a":{"dtype":"F32","shape":[1024],"data_offsets":[0,4096]}}"#,
            data: [UInt8](repeating: 0x3F, count: 4096))
        let f = try SafeTensorsFile(path: path)
        #expect(truncate(path, 100) == 0)
        #expect(throws: CheckpointError.self) { try f.floats("a") }
    }

    @Test func aFIFOIsRefusedWithoutBlocking() throws {
        try FileManager.default.createDirectory(at: Self.folder, withIntermediateDirectories: true)
        let path = Self.folder.appendingPathComponent("fifo.safetensors").path
        unlink(path)
        #expect(mkfifo(path, 0o600) == 0)
        Self.expectCheckpointError(path, "not a regular file")
    }

    @Test func aTensorInTwoFilesOfAFolderIsAnError() throws {
        let dir = Self.folder.appendingPathComponent("dup")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data(#"{"model_type":"mixtral","hidden_size":1,"intermediate_size":1,"num_local_experts":1,"num_experts_per_tok":1}"#.utf8)
            .write(to: dir.appendingPathComponent("config.json"))
        for name in ["model.safetensors", "stale.safetensors"] {
            let p = try Self.file("x", header: #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])
            try? FileManager.default.removeItem(at: dir.appendingPathComponent(name))
            try FileManager.default.moveItem(atPath: p, toPath: dir.appendingPathComponent(name).path)
        }
        #expect(throws: CheckpointError.self) { try HFCheckpoint(folder: dir.path) }
    }

    @Test func hostileConfigValuesAreErrors() throws {
        let dir = Self.folder.appendingPathComponent("config")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        _ = try Self.file("config/model.safetensors", header: #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                          data: [0, 0, 0, 0])
        for (key, value) in [("hidden_size", "1e300"), ("intermediate_size", "1099511627776"), ("hidden_size", "-4"),
                             ("num_local_experts", "2.5")] {
            var fields = ["hidden_size": "8", "intermediate_size": "8", "num_local_experts": "2", "num_experts_per_tok": "1"]
            fields[key] = value
            let json = "{\"model_type\":\"mixtral\"," + fields.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }
                .joined(separator: ",") + "}"
            try Data(json.utf8).write(to: dir.appendingPathComponent("config.json"))
            let checkpoint = try HFCheckpoint(folder: dir.path)
            #expect(throws: CheckpointError.self, "\(key) = \(value)") { try checkpoint.moeConfig(layer: 0) }
        }
    }

    @Test func tensorSizesUseCheckedArithmetic() throws {
        let backend = try OpenCLBackend()
        #expect(throws: SwitchyardError.self) { try backend.tensor([1], shape: [1 << 32, 1 << 32], dtype: .f32) }
        #expect(throws: SwitchyardError.self) { try backend.empty(shape: [1 << 62], dtype: .f32) }
        #expect(throws: SwitchyardError.self) { try backend.empty(shape: [1 << 40], dtype: .f32) }  // past max alloc
        let t = try backend.tensor([1, 2, 3, 4], shape: [4], dtype: .f32)
        #expect(throws: SwitchyardError.self) { try t.reshaped([1 << 62, 4]) }
        #expect(throws: SwitchyardError.self) { try t.reshaped([-2, -2]) }
        #expect(try t.reshaped([2, 2]).shape == [2, 2])
    }

    @Test func matmulOutputDTypeMustBeFloatingPoint() throws {
        for backend in [try OpenCLBackend() as any ComputeBackend, ReferenceBackend()] {
            let w = try backend.prepareWeights(
                try backend.tensor([Float](repeating: 0.5, count: 8), shape: [1, 2, 4], dtype: .f32), swiglu: false,
                pack: true)
            let a = try backend.tensor([1, 2, 3, 4], shape: [1, 4], dtype: .f32)
            #expect(throws: SwitchyardError.dtype(argument: "matmul output dtype", expected: "f32, f16 or bf16", actual: .i32)) {
                try backend.groupedMatmul(a, weights: w, dtype: .i32)
            }
        }
    }

    /// Routing statistics at extreme logits match the reference: sigmoid scores of logits far
    /// below -88.7 (where σ underflows in f32) and softmax logits near ±1000 (where a rounded
    /// logsumexp would cost 1e-5 of the balance loss).
    @Test(arguments: [
        ([-90, -100, -110, -120] as [Float], RouterConfig.Scoring.sigmoid),
        ([1000, 999.5, 998, 990], .softmax), ([3000, 2999.25, -3000, 0], .softmax), ([-1e4, 5, 80, 89], .sigmoid),
    ])
    func routingStatsAtExtremeLogits(_ row: [Float], _ scoring: RouterConfig.Scoring) throws {
        let config = RouterConfig(experts: 4, k: 2, scoring: scoring, renormalize: true)
        var stats: [RoutingStats] = []
        for backend in [try OpenCLBackend() as any ComputeBackend, ReferenceBackend()] {
            // 3 tokens, the row rotated per token so every expert gets some load.
            let logits = (0..<3).flatMap { t in (0..<4).map { row[($0 + t) % 4] } }
            let routing = try backend.route(
                try backend.tensor(logits, shape: [3, 4], dtype: .f32), bias: nil, config: config, blockSize: 4)
            stats.append(try backend.routingStats(routing))
        }
        let (device, reference) = (stats[0], stats[1])
        #expect(device.tokensPerExpert == reference.tokensPerExpert)
        for (a, b) in zip(device.meanProbability, reference.meanProbability) {
            #expect(a.isFinite && abs(a - b) <= 1e-6 * max(1, abs(b)), "mean probability \(a) vs \(b)")
        }
        #expect(abs(device.balanceLoss - reference.balanceLoss) <= 2e-6 * abs(reference.balanceLoss),
                "balance loss \(device.balanceLoss) vs \(reference.balanceLoss)")
        #expect(abs(device.zLoss - reference.zLoss) <= 1e-5 * abs(reference.zLoss), "z-loss \(device.zLoss) vs \(reference.zLoss)")
    }

    @Test func capacityIsClampedNeverTrapping() {
        let c = RouterConfig(experts: 8, k: 2, capacityFactor: 1e300)
        #expect(c.capacity(tokens: 100) == 200)
        #expect(RouterConfig(experts: 8, k: 2, capacityFactor: .infinity).capacity(tokens: 100) == 200)
        #expect(RouterConfig(experts: 8, k: 2, capacityFactor: .nan).capacity(tokens: 100) == 0)
        #expect(RouterConfig(experts: 8, k: 2, capacityFactor: 1.25).capacity(tokens: 100) == 32)
    }
}
