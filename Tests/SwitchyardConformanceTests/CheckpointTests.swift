import Foundation
import OpenCLHost
import Switchyard
import SwitchyardReference
import Testing

/// Runs Tests/Fixtures/hf_moe.py (Python `safetensors` + numpy): it writes a tiny model folder
/// and the MoE block's output computed independently in float64 numpy.
func makeFolder(_ type: String, _ dtype: String, _ layout: String) throws -> (folder: String, layer: Int) {
    let folder = FileManager.default.temporaryDirectory
        .appendingPathComponent("switchyard-hf-\(type)-\(dtype)-\(layout)-\(getpid())-\(UUID().uuidString)").path
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../Fixtures/hf_moe.py").standardized.path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", script, "make", folder, type, dtype, layout]
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    process.waitUntilExit()
    let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    guard process.terminationStatus == 0, let layer = Int(out.trimmingCharacters(in: .whitespacesAndNewlines)) else {
        throw CheckpointError("hf_moe.py failed (python3 with numpy and safetensors is needed): \(out)")
    }
    return (folder, layer)
}

@Suite("Hugging Face checkpoints")
struct CheckpointTests {
    static let variants: [(String, String, String)] = HFCheckpoint.supportedModelTypes.flatMap { t in
        [("f32", "single"), ("bf16", "sharded"), ("f32", "sharded"), ("bf16", "single")].map { (t, $0.0, $0.1) }
    }

    /// Every OpenCL device, then the reference.
    static func backends() throws -> [any ComputeBackend] {
        try Device.all().map { try OpenCLBackend(device: $0) as any ComputeBackend } + [ReferenceBackend()]
    }

    @Test(arguments: variants)
    func layerMatchesAnIndependentReference(_ variant: (String, String, String)) throws {
        let (type, dtype, layout) = variant
        let (folder, layer) = try makeFolder(type, dtype, layout)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let checkpoint = try HFCheckpoint(folder: folder)
        #expect(checkpoint.modelType == type)
        let x = try SafeTensorsFile(path: folder + "/x.safetensors").floats("x")
        let want = try SafeTensorsFile(path: folder + "/y_ref.safetensors").floats("y").values
        for backend in try Self.backends() {
            // Packed with the default staging buffer; in checkpoint layout through a 42-byte one
            // (every tensor in many pieces, an f32 piece 40 bytes).
            for pack in [true, false] {
                let moe = try checkpoint.loadLayer(
                    layer, backend: backend, pack: pack, stagingBytes: pack ? HFCheckpoint.defaultStagingBytes : 42)
                #expect(moe.weightType == (dtype == "f32" ? .f32 : .bf16))
                let y = try backend.floats(moe.forward(try backend.tensor(x.values, shape: x.shape, dtype: x.dtype)).y)
                let error = ErrorMeasure.nmse(y, want)
                #expect(error < (dtype == "f32" ? 1e-6 : 1e-3), "\(backend.name) \(type) \(dtype) \(layout) pack=\(pack): nmse \(error)")
            }
            // The loaded tensors hold the file's bytes: every tensor whole (they are small), bitwise.
            let weights = try checkpoint.loadWeights(layer, backend: backend, stagingBytes: 8)
            let tensors = try checkpoint.layerTensors(layer).count
            #expect(try checkpoint.verify(weights, layer: layer, backend: backend, regions: 1, run: 1 << 20) == tensors)
        }
    }

    /// Weights loaded in another storage type than the file's: converted piece by piece (bf16 →
    /// f16, f32 → bf16, bf16 → f32), bitwise equal to the reference conversion of the file's
    /// bytes, and the layer still matches the float64 reference.
    @Test(arguments: [("mixtral", "bf16", "single", DType.f16), ("qwen2_moe", "f32", "sharded", .bf16),
                      ("deepseek_v3", "bf16", "single", .f32)])
    func weightsConvertToAnotherStorageType(_ type: String, _ dtype: String, _ layout: String, _ target: DType) throws {
        let (folder, layer) = try makeFolder(type, dtype, layout)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let checkpoint = try HFCheckpoint(folder: folder)
        let x = try SafeTensorsFile(path: folder + "/x.safetensors").floats("x")
        let want = try SafeTensorsFile(path: folder + "/y_ref.safetensors").floats("y").values
        for backend in try Self.backends() {
            let weights = try checkpoint.loadWeights(layer, backend: backend, weightType: target, stagingBytes: 42)
            #expect(weights.gateUp.dtype == target && weights.down.dtype == target)
            #expect(weights.sharedGateUp.map { $0.dtype == target } ?? true)
            #expect(weights.bias.map { $0.dtype == .f32 } ?? true)
            let tensors = try checkpoint.layerTensors(layer).count
            #expect(try checkpoint.verify(weights, layer: layer, backend: backend, regions: 1, run: 1 << 20) == tensors)
            let moe = try MoELayer(backend: backend, config: try checkpoint.moeConfig(layer: layer), weights: weights)
            let y = try backend.floats(moe.forward(try backend.tensor(x.values, shape: x.shape, dtype: x.dtype)).y)
            let error = ErrorMeasure.nmse(y, want)
            #expect(error < 1e-3, "\(backend.name) \(type) \(dtype) → \(target): nmse \(error)")
        }
        #expect(throws: CheckpointError.self) {
            try checkpoint.loadWeights(layer, backend: ReferenceBackend(), weightType: .i32)
        }
        #expect(throws: CheckpointError.self) {
            try checkpoint.loadWeights(layer, backend: ReferenceBackend(), stagingBytes: 4)
        }
    }

    @Test func denseLayersMissingTensorsAndBadTypesAreClearErrors() throws {
        let (folder, layer) = try makeFolder("deepseek_v3", "f32", "single")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let backend = try OpenCLBackend()
        let checkpoint = try HFCheckpoint(folder: folder)
        #expect(layer == 1)
        do {
            _ = try checkpoint.loadLayer(0, backend: backend)
            Issue.record("a dense layer loaded")
        } catch let error as CheckpointError {
            #expect(error.message.contains("dense") && error.message.contains("first_k_dense_replace"))
        }
        #expect(throws: CheckpointError.self) { try checkpoint.loadLayer(7, backend: backend) }

        // A mis-shaped tensor and a missing one name the tensor.
        let (qwen, qlayer) = try makeFolder("qwen2_moe", "f32", "single")
        defer { try? FileManager.default.removeItem(atPath: qwen) }
        let file = try SafeTensorsFile(path: qwen + "/model.safetensors")
        var tensors = try file.entries.keys.sorted().map { name -> (name: String, values: [Float], shape: [Int], dtype: DType) in
            let t = try file.floats(name)
            return (name, t.values, t.shape, t.dtype)
        }
        let original = tensors
        let broken = "model.layers.\(qlayer).mlp.experts.3.up_proj.weight"
        tensors = tensors.map { $0.name == broken ? ($0.name, Array($0.values.dropLast(32)), [15, 32], $0.dtype) : $0 }
        try SafeTensorsFile.write(tensors, to: qwen + "/model.safetensors")
        do {
            _ = try HFCheckpoint(folder: qwen).loadLayer(qlayer, backend: backend)
            Issue.record("a mis-shaped tensor loaded")
        } catch let error as CheckpointError {
            #expect(error.message.contains(broken) && error.message.contains("[16, 32]"))
        }
        tensors = original.filter { !$0.name.hasSuffix("shared_expert_gate.weight") }
        try SafeTensorsFile.write(tensors, to: qwen + "/model.safetensors")
        do {
            _ = try HFCheckpoint(folder: qwen).loadLayer(qlayer, backend: backend)
            Issue.record("a missing tensor loaded")
        } catch let error as CheckpointError {
            #expect(error.message.contains("is missing") && error.message.contains("shared_expert_gate"))
        }
        // Dense Qwen layer, unsupported model type.
        #expect(throws: CheckpointError.self) { try HFCheckpoint(folder: qwen).moeConfig(layer: 0) }
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: qwen + "/config.json")))
            as! [String: Any]
        config["model_type"] = "llama"
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: qwen + "/config.json"))
        do {
            _ = try HFCheckpoint(folder: qwen)
            Issue.record("an unsupported model type opened")
        } catch let error as CheckpointError {
            #expect(error.message.contains("llama"))
        }
    }

    /// config.json values this layer cannot compute as the model does are refused by
    /// `moeConfig`, naming them, before any weight is read: zero sizes, k of 0 or above the
    /// experts, a routing `RouterConfig.validate` refuses, an activation other than SiLU. A
    /// config.json or index that is a FIFO is refused (not waited on). A qwen2_moe config without
    /// the shared expert's width takes transformers' default, 5632.
    @Test func configsTheLayerCannotComputeAreRefused() throws {
        let (qwen, layer) = try makeFolder("qwen2_moe", "f32", "single")
        defer { try? FileManager.default.removeItem(atPath: qwen) }
        let configURL = URL(fileURLWithPath: qwen + "/config.json")
        let original = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as! [String: Any]
        func config(_ change: ([String: Any]) -> [String: Any]) throws -> HFCheckpoint {
            try JSONSerialization.data(withJSONObject: change(original)).write(to: configURL)
            return try HFCheckpoint(folder: qwen)
        }
        let experts = original["num_experts"] as! Int
        let refused: [(String, Any?, String)] = [
            ("moe_intermediate_size", 0, "expert width 0"), ("num_experts_per_tok", 0, "k = 0"),
            ("num_experts_per_tok", experts + 1, "k = \(experts + 1)"), ("hidden_act", "gelu", "hidden_act 'gelu'"),
            ("hidden_size", 0, "hidden size 0"),
        ]
        for (key, value, words) in refused {
            let checkpoint = try config { var c = $0; c[key] = value; return c }
            do {
                _ = try checkpoint.moeConfig(layer: layer)
                Issue.record("\(key) = \(String(describing: value)) was accepted")
            } catch let error as CheckpointError {
                #expect(error.message.contains(words), "\(key): \(error.message)")
            }
        }
        #expect(try config { var c = $0; c["hidden_act"] = "silu"; return c }.moeConfig(layer: layer).ffn > 0)
        let defaulted = try config { var c = $0; c["shared_expert_intermediate_size"] = nil; return c }.moeConfig(layer: layer)
        #expect(defaulted.sharedFFN == 5632 && defaulted.sharedGate)
        try JSONSerialization.data(withJSONObject: original).write(to: configURL)
        // A FIFO where a JSON file belongs: an error, at once.
        for name in ["model.safetensors.index.json", "config.json"] {
            let path = qwen + "/" + name
            try? FileManager.default.removeItem(atPath: path)
            #expect(mkfifo(path, 0o600) == 0)
            do {
                _ = try HFCheckpoint(folder: qwen)
                Issue.record("\(name) as a FIFO opened")
            } catch let error as CheckpointError {
                #expect(error.message.contains("not a regular file"), "\(error.message)")
            }
            try FileManager.default.removeItem(atPath: path)
        }
    }

    @Test func safetensorsRoundTrip() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rt-\(getpid()).safetensors").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let values: [Float] = [1.5, -2, 0.333, 65504, 1e-3, -0.0]
        try SafeTensorsFile.write(
            [("a", values, [2, 3], .f32), ("b", values, [6], .bf16), ("c", values, [3, 2], .f16)], to: path)
        let file = try SafeTensorsFile(path: path)
        #expect(try file.floats("a").values == values)
        #expect(try file.floats("b").values == values.map(DType.bf16.round))
        #expect(try file.floats("c").shape == [3, 2])
        #expect(throws: CheckpointError.self) { try file.floats("missing") }
    }
}
