import Foundation
import OpenCLHost
import Switchyard
import SwitchyardReference
import Testing

/// Runs Tests/Fixtures/hf_moe.py for a gpt_oss folder (`variant`: mxfp4, bf16 or f32), optionally
/// with one tensor broken (`hostile`). Each call gets a folder of its own: tests run in parallel
/// and two of them write the same variant.
func makeGptOssFolder(_ variant: String, _ layout: String, hostile: String? = nil) throws -> (folder: String, layer: Int) {
    let folder = FileManager.default.temporaryDirectory
        .appendingPathComponent("switchyard-gptoss-\(variant)-\(layout)-\(hostile ?? "ok")-\(getpid())-\(UUID().uuidString)").path
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../Fixtures/hf_moe.py").standardized.path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", script, "make", folder, "gpt_oss", variant, layout, "11"] + (hostile.map { [$0] } ?? [])
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

/// gpt-oss layers as stored (MXFP4 blocks and scales; the dense bf16/f32 variant is in
/// CheckpointTests' every-model-type sweep) against the fixture's independent float64 numpy
/// forward, and hostile files.
@Suite("gpt-oss checkpoints")
struct GptOssCheckpointTests {
    @Test(arguments: ["single", "sharded"])
    func mxfp4LayerMatchesAnIndependentReference(_ layout: String) throws {
        let (folder, layer) = try makeGptOssFolder("mxfp4", layout)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let checkpoint = try HFCheckpoint(folder: folder)
        #expect(checkpoint.modelType == "gpt_oss")
        let c = try checkpoint.moeConfig(layer: layer)
        #expect(c.glu == .gptOSS(alpha: 1.702, limit: 7) && c.routerLinearBias && c.expertBias && c.router.k == 4)
        let x = try SafeTensorsFile(path: folder + "/x.safetensors").floats("x")
        let want = try SafeTensorsFile(path: folder + "/y_ref.safetensors").floats("y").values
        for backend in try CheckpointTests.backends() {
            // The default staging buffer, and a 42-byte one (every tensor in many pieces).
            for staging in [HFCheckpoint.defaultStagingBytes, 42] {
                let moe = try checkpoint.loadLayer(layer, backend: backend, stagingBytes: staging)
                #expect(moe.weightFormat == .mxfp4)
                let y = try backend.floats(moe.forward(try backend.tensor(x.values, shape: x.shape, dtype: x.dtype)).y)
                let error = ErrorMeasure.nmse(y, want)
                #expect(error < 1e-9, "\(backend.name) mxfp4 \(layout) staging \(staging): nmse \(error)")
            }
            // Blocks and scales hold the file's bytes; biases its values in f32, de-interleaved.
            let weights = try checkpoint.loadWeights(layer, backend: backend, stagingBytes: 8)
            #expect(weights.gateUp.dtype == .u8 && weights.gateUpScales?.dtype == .u8 && weights.gateUpInterleaved)
            let tensors = try checkpoint.layerTensors(layer).count
            #expect(tensors == 8)
            #expect(try checkpoint.verify(weights, layer: layer, backend: backend, regions: 1, run: 1 << 20) == tensors)
            // Expert parallelism's subset: experts 5 and 2 only.
            let part = try checkpoint.loadWeights(layer, backend: backend, experts: [5, 2])
            #expect(part.gateUp.shape == [2, 2 * c.ffn, c.hidden / 32, 16] && part.downBias?.shape == [2, c.hidden])
            let full = try backend.codes(weights.gateUp)
            let slice = 2 * c.ffn * c.hidden / 2
            #expect(try backend.codes(part.gateUp) == Array(full[(5 * slice)..<(6 * slice)] + full[(2 * slice)..<(3 * slice)]))
        }
    }

    /// The dense variant in another storage type (bf16 file → f32): transposed, de-interleaved
    /// and converted, bitwise as the reference conversion, and the layer still matches.
    @Test func denseLayerConvertsAndVerifies() throws {
        let (folder, layer) = try makeGptOssFolder("bf16", "single")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let checkpoint = try HFCheckpoint(folder: folder)
        let x = try SafeTensorsFile(path: folder + "/x.safetensors").floats("x")
        let want = try SafeTensorsFile(path: folder + "/y_ref.safetensors").floats("y").values
        for backend in try CheckpointTests.backends() {
            let weights = try checkpoint.loadWeights(layer, backend: backend, weightType: .f32, stagingBytes: 42)
            #expect(weights.gateUp.dtype == .f32 && weights.gateUpScales == nil)
            #expect(try checkpoint.verify(weights, layer: layer, backend: backend, regions: 3, run: 100) == 16)  // 3 runs per tensor, 1 for the 8-element router bias
            let moe = try MoELayer(backend: backend, config: try checkpoint.moeConfig(layer: layer), weights: weights)
            let y = try backend.floats(moe.forward(try backend.tensor(x.values, shape: x.shape, dtype: x.dtype)).y)
            let error = ErrorMeasure.nmse(y, want)
            #expect(error < 1e-3, "\(backend.name) bf16 → f32: nmse \(error)")
        }
    }

    @Test(arguments: [
        ("mxfp4", "scales-short", "gate_up_proj_scales"), ("mxfp4", "blocks-15", "down_proj_blocks"),
        ("mxfp4", "blocks-f32", "gate_up_proj_blocks"), ("mxfp4", "bias-shape", "gate_up_proj_bias"),
        ("mxfp4", "router-bias-missing", "router.bias"), ("bf16", "untransposed", "gate_up_proj"),
    ])
    func hostileFilesAreClearErrors(_ variant: String, _ hostile: String, _ name: String) throws {
        let (folder, layer) = try makeGptOssFolder(variant, "single", hostile: hostile)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let checkpoint = try HFCheckpoint(folder: folder)
        for backend in [try OpenCLBackend() as any ComputeBackend, ReferenceBackend()] {
            var allocated = 0
            do {
                _ = try checkpoint.loadLayer(layer, backend: backend) { allocated = $0.allocatedBytes }
                Issue.record("\(hostile) loaded")
            } catch let error as CheckpointError {
                #expect(error.message.contains(name), "\(hostile): \(error.message)")
            }
            #expect(allocated == 0, "\(hostile): \(allocated) bytes allocated before the error")
            #expect(throws: CheckpointError.self) { try checkpoint.layerTensors(layer) }
        }
    }

    /// An e8m0 scale byte 0xFF (NaN) in a checkpoint is a corrupt file: refused while loading,
    /// by tensor and position, on both backends (not NaN outputs for every token routed there).
    @Test func nanScaleIsRefusedByPosition() throws {
        let (folder, layer) = try makeGptOssFolder("mxfp4", "single", hostile: "scale-nan")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let checkpoint = try HFCheckpoint(folder: folder)
        for backend in [try OpenCLBackend() as any ComputeBackend, ReferenceBackend()] {
            do {
                _ = try checkpoint.loadLayer(layer, backend: backend)
                Issue.record("\(backend.name): a NaN scale loaded")
            } catch let error as CheckpointError {
                #expect(error.message.contains("gate_up_proj_scales"), "\(error.message)")
                #expect(error.message.contains("expert 5, row 7, block 2"), "\(error.message)")
            }
        }
    }

    /// A file cut short (its last blocks missing) is refused when opened; a config with a NaN-free
    /// but negative swiglu_limit is refused by name.
    @Test func truncatedFileAndBadConfig() throws {
        let (folder, layer) = try makeGptOssFolder("mxfp4", "single")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let config = URL(fileURLWithPath: folder + "/config.json")
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: config)) as! [String: Any]
        json["swiglu_limit"] = -1
        try JSONSerialization.data(withJSONObject: json).write(to: config)
        do {
            _ = try HFCheckpoint(folder: folder).moeConfig(layer: layer)
            Issue.record("a negative swiglu_limit was accepted")
        } catch let error as CheckpointError {
            #expect(error.message.contains("swiglu_limit"))
        }
        let path = folder + "/model.safetensors"
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.dropLast(100).write(to: URL(fileURLWithPath: path))
        #expect(throws: CheckpointError.self) { try HFCheckpoint(folder: folder) }
    }
}
