import Foundation
import OpenCLHost
import Switchyard
import SwitchyardReference
import Testing

/// DeepSeek-V3 FP8 checkpoints (Tests/Fixtures/hf_moe.py `make DIR deepseek_v3 fp8`: numpy
/// encodes the e4m3fn codes and 128 × 128 block scales itself, at sizes off the block, and
/// computes the float64 forward of the dequantized weights) and float checkpoints quantized at
/// load, on every OpenCL device and the reference backend.
@Suite("FP8 and quantized checkpoints")
struct FP8CheckpointTests {
    static func backends() throws -> [any ComputeBackend] { try CheckpointTests.backends() }

    /// Every tensor of a safetensors file as stored bytes (to write altered copies).
    static func rawTensors(_ path: String) throws -> [(name: String, dtype: String, shape: [Int], bytes: [UInt8])] {
        let file = try SafeTensorsFile(path: path)
        return try file.entries.keys.sorted().map { name in
            let e = try file.entry(name)
            let count = e.shape.reduce(1, *)
            return (name, e.dtype, e.shape, try file.bytes(name, elements: 0..<count))
        }
    }

    @Test(arguments: ["single", "sharded"])
    func fp8LayerMatchesNumpy(_ layout: String) throws {
        let (folder, layer) = try makeFolder("deepseek_v3", "fp8", layout)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let checkpoint = try HFCheckpoint(folder: folder)
        let c = try checkpoint.moeConfig(layer: layer)
        #expect(c.hidden == 200 && c.ffn == 136 && c.sharedFFN == 136)
        let x = try SafeTensorsFile(path: folder + "/x.safetensors").floats("x")
        let want = try SafeTensorsFile(path: folder + "/y_ref.safetensors").floats("y").values
        // Every weight, scale, the router and its bias: 3 × (16 + 1) weights with their scales + 2.
        #expect(try checkpoint.layerTensors(layer).count == 2 * 3 * 17 + 2)
        var outputs: [[Float]] = []
        for backend in try Self.backends() {
            // As FP8 on the backend: u8 codes and f32 block scales, prepared as the FP8 format.
            let weights = try checkpoint.loadWeights(layer, backend: backend, stagingBytes: 1000)
            #expect(weights.gateUp.dtype == .u8 && weights.down.dtype == .u8 && weights.sharedGateUp?.dtype == .u8)
            #expect(weights.fp8?.gateUp?.shape == [16, 4, 2] && weights.fp8?.down?.shape == [16, 2, 2])
            #expect(weights.fp8?.sharedGateUp?.shape == [4, 2] && weights.fp8?.sharedDown?.shape == [2, 2])
            #expect(weights.router.dtype == .bf16 && weights.bias?.dtype == .f32)
            // The loaded codes and scales are the file's bytes, every tensor whole.
            let tensors = try checkpoint.layerTensors(layer).count
            #expect(try checkpoint.verify(weights, layer: layer, backend: backend, regions: 1, run: 1 << 20) == tensors)
            let moe = try MoELayer(backend: backend, config: c, weights: weights)
            #expect(moe.weightFormat == .fp8)
            let input = try backend.tensor(x.values, shape: x.shape, dtype: x.dtype)
            let y = try backend.floats(moe.forward(input).y)
            // The FP8 weights are exact f32 values (e4m3 · scale) and x is bf16 in both: what is
            // left is f32 accumulation and three bf16 intermediates (the routed SwiGLU output, the
            // routed down output, the shared SwiGLU output), each rounded within 2^-9 relative
            // (nmse ~2^-18/3 = 1.3e-6 each; 3.7e-6 measured, the reference's the same).
            let error = ErrorMeasure.nmse(y, want)
            #expect(error < 2e-5, "\(backend.name) \(layout) FP8: nmse \(error)")
            outputs.append(y)
            // loadLayer prepares one expert at a time as it loads: the same prepared codes and
            // scales, bitwise, and the same output. Quantizing FP8 weights again is refused.
            let viaLayer = try checkpoint.loadLayer(layer, backend: backend, stagingBytes: 64)
            #expect(viaLayer.weightFormat == .fp8)
            for (a, b) in [(viaLayer.expertWeights.gateUp, moe.expertWeights.gateUp),
                           (viaLayer.expertWeights.down, moe.expertWeights.down)] {
                #expect(try backend.bytes(a.quantized!.codes) == backend.bytes(b.quantized!.codes))
                #expect(try backend.bytes(a.quantized!.scales) == backend.bytes(b.quantized!.scales))
            }
            #expect(try backend.floats(viaLayer.forward(input).y) == y)
            #expect(throws: SwitchyardError.self) {
                try MoELayer(backend: backend, config: c, weights: weights, quantize: .int8)
            }
            // Dequantized at load: bf16 and f32 weights (bitwise the reference dequantization, see verify).
            for target in [DType.bf16, .f32] {
                let w = try checkpoint.loadWeights(layer, backend: backend, weightType: target, stagingBytes: 100)
                #expect(w.gateUp.dtype == target && w.fp8 == nil)
                #expect(try checkpoint.verify(w, layer: layer, backend: backend, regions: 1, run: 1 << 20) == 3 * 17 + 2)
                let m = try MoELayer(backend: backend, config: c, weights: w)
                #expect(m.weightType == target)
                let e = ErrorMeasure.nmse(try backend.floats(m.forward(input).y), want)
                // f32: as exact as FP8 (the same products); bf16 also rounds each weight within
                // 2^-9 relative, in gate, up and down: ~3 × 1.3e-6 more (1.3e-5 measured).
                #expect(e < (target == .f32 ? 2e-5 : 5e-5), "\(backend.name) FP8 → \(target): nmse \(e)")
            }
        }
        // Every device against the reference (same FP8 weights).
        for y in outputs.dropLast() { #expect(ErrorMeasure.nmse(y, outputs.last!) < 1e-5) }
    }

    @Test func fp8RefusalsNameTheTensor() throws {
        let (folder, layer) = try makeFolder("deepseek_v3", "fp8", "single")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let backend = ReferenceBackend()
        let path = folder + "/model.safetensors"
        let original = try Self.rawTensors(path)
        let configURL = URL(fileURLWithPath: folder + "/config.json")
        let originalConfig = try Data(contentsOf: configURL)
        let w = "model.layers.\(layer).mlp.experts.5.up_proj.weight"
        let s = w + "_scale_inv"
        func refused(_ what: String, _ expected: [String], _ body: () throws -> Void) {
            do {
                try body()
                Issue.record("\(what): loaded")
            } catch let error as CheckpointError {
                for part in expected {
                    #expect(error.message.contains(part), "\(what): \(error.message)")
                }
            } catch {
                Issue.record("\(what): \(error)")
            }
        }
        func load() throws { _ = try HFCheckpoint(folder: folder).loadWeights(layer, backend: backend) }

        // A missing scale tensor.
        try SafeTensorsFile.write(raw: original.filter { $0.name != s }, to: path)
        refused("missing scale", [w, "_scale_inv"]) { try load() }
        // Scales of another block size (64 × 64: [3, 4] for a [136, 200] weight).
        try SafeTensorsFile.write(
            raw: original.map { $0.name == s ? ($0.name, "F32", [3, 4], [UInt8](repeating: 0, count: 48)) : $0 }, to: path)
        refused("64 × 64 scales", [s, "[3, 4]", "[2, 2]", "128 × 128"]) { try load() }
        // A NaN scale, a NaN code (e4m3fn 0x7F at element 1000 = row 5, column 0 of [136, 200]).
        var nanScale = original.first { $0.name == s }!.bytes
        nanScale.replaceSubrange(4..<8, with: [0, 0, 0xC0, 0x7F])
        try SafeTensorsFile.write(raw: original.map { $0.name == s ? ($0.name, $0.dtype, $0.shape, nanScale) : $0 }, to: path)
        refused("nan scale", [s, "non-finite", "block (0, 1)"]) { try load() }
        var nanCode = original.first { $0.name == w }!.bytes
        nanCode[1000] = 0xFF
        try SafeTensorsFile.write(raw: original.map { $0.name == w ? ($0.name, $0.dtype, $0.shape, nanCode) : $0 }, to: path)
        refused("nan code", [w, "element 1000", "row 5, column 0", "NaN"]) { try load() }
        refused("nan code, dequantized", [w, "element 1000"]) {
            _ = try HFCheckpoint(folder: folder).loadWeights(layer, backend: backend, weightType: .f32)
        }
        // An F8_E5M2 weight.
        try SafeTensorsFile.write(raw: original.map { $0.name == w ? ($0.name, "F8_E5M2", $0.shape, $0.bytes) : $0 }, to: path)
        refused("e5m2", [w, "F8_E5M2", "not supported"]) { try load() }
        // One expert float among FP8 ones: refused without a weightType, dequantized with one.
        let floatUp = [UInt8](repeating: 0, count: 136 * 200 * 2)
        try SafeTensorsFile.write(
            raw: original.filter { $0.name != s }.map { $0.name == w ? ($0.name, "BF16", $0.shape, floatUp) : $0 }, to: path)
        refused("mixed", ["F8_E4M3", "some float", "weightType"]) { try load() }
        #expect(try HFCheckpoint(folder: folder).loadWeights(layer, backend: backend, weightType: .bf16).gateUp.dtype == .bf16)
        try SafeTensorsFile.write(raw: original, to: path)
        try load()

        // config.json: a block size other than 128 × 128, no quantization_config, another format.
        var config = try JSONSerialization.jsonObject(with: originalConfig) as! [String: Any]
        let q = config["quantization_config"] as! [String: Any]
        for (key, value, expected) in [("weight_block_size", [64, 64] as Any, "[128, 128]"), ("fmt", "e5m2", "e4m3"),
                                       ("quant_method", "mxfp4", "fp8"), ("activation_scheme", "static", "dynamic")] {
            var changed = q
            changed[key] = value
            config["quantization_config"] = changed
            try JSONSerialization.data(withJSONObject: config).write(to: configURL)
            refused("config \(key)", [key, expected]) { try load() }
        }
        config["quantization_config"] = nil
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        refused("no quantization_config", ["quantization_config", "F8_E4M3"]) { try load() }
        try originalConfig.write(to: configURL)

        // The router stays float: an FP8 router is refused by name.
        let router = "model.layers.\(layer).mlp.gate.weight"
        try SafeTensorsFile.write(
            raw: original.map { $0.name == router ? ($0.name, "F8_E4M3", $0.shape, Array($0.bytes.prefix($0.bytes.count / 2))) : $0 },
            to: path)
        refused("fp8 router", [router, "F8_E4M3"]) { try load() }
    }

    /// `quantize:` on a bf16 checkpoint: each expert quantized on the backend as it loads. The
    /// codes are bitwise those of quantizing the whole stacked tensor (on the device and on the
    /// reference, and the device's canonical codes equal the reference's), and the output is
    /// within the format's error of the float64 forward of the float weights.
    @Test(arguments: [WeightQuantization.int4(group: 128, zeroPoint: false), .int8])
    func quantizedAtLoadMatchesReferenceQuantization(_ q: WeightQuantization) throws {
        let (folder, layer) = try makeFolder("deepseek_v3", "bf16", "single")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let checkpoint = try HFCheckpoint(folder: folder)
        let x = try SafeTensorsFile(path: folder + "/x.safetensors").floats("x")
        let want = try SafeTensorsFile(path: folder + "/y_ref.safetensors").floats("y").values
        let reference = ReferenceBackend()
        let floats = try checkpoint.loadWeights(layer, backend: reference)
        let referenceCodes = try reference.codes(try reference.quantizeWeights(floats.gateUp, q).codes)
        var outputs: [[Float]] = []
        for backend in try Self.backends() {
            let moe = try checkpoint.loadLayer(layer, backend: backend, quantize: q, stagingBytes: 256)
            #expect(moe.weightFormat == q.format(for: .bf16))
            // Streamed per expert = the whole stacked tensor quantized at once, bitwise.
            let whole = try checkpoint.loadWeights(layer, backend: backend)
            let packed = try backend.prepareWeights(whole.gateUp, swiglu: true, pack: true, quantize: q)
            let streamed = moe.expertWeights.gateUp.quantized!
            #expect(try backend.bytes(streamed.codes) == backend.bytes(packed.quantized!.codes))
            #expect(try backend.bytes(streamed.scales) == backend.bytes(packed.quantized!.scales))
            let packedDown = try backend.prepareWeights(whole.down, swiglu: false, pack: true, quantize: q)
            #expect(try backend.bytes(moe.expertWeights.down.quantized!.codes) == backend.bytes(packedDown.quantized!.codes))
            // The backend's quantization of the loaded weights is the reference's, code for code.
            #expect(try backend.codes(try backend.quantizeWeights(whole.gateUp, q).codes) == referenceCodes)
            let y = try backend.floats(moe.forward(try backend.tensor(x.values, shape: x.shape, dtype: x.dtype)).y)
            outputs.append(y)
            // Format bound: an error within ±s/2 per weight, s = max|w|/7 (int4) or /127 (int8)
            // over a group of at most 128 Gaussian weights (max|w|² ≤ 9σ² but rarely): weight
            // nmse ≤ 9/(12·49) = 0.015 (int4), 9/(12·127²) = 4.6e-5 (int8); gate, up and down each
            // add theirs to the output: 3× that.
            let levels: Double = q == .int8 ? 127 : 7
            let bound: Double = 3 * 9 / (12 * levels * levels)
            let error = ErrorMeasure.nmse(y, want)
            #expect(error < bound, "\(backend.name) \(q): nmse \(error) vs the float forward (bound \(bound))")
            #expect(error > 1e-7, "\(backend.name) \(q): nmse \(error): not quantized?")
        }
        for y in outputs.dropLast() { #expect(ErrorMeasure.nmse(y, outputs.last!) < 1e-5) }
    }

    /// A float checkpoint quantized at load whose expert 2 holds a weight no int4 f16 scale can
    /// cover (1e6: 1e6 / 7 is past f16's largest finite): refused on every backend, naming the
    /// expert and its tensors (each expert is quantized alone, in a one-expert scratch tensor).
    @Test func unquantizableExpertIsNamed() throws {
        let (folder, layer) = try makeFolder("mixtral", "f32", "single")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/model.safetensors"
        let file = try SafeTensorsFile(path: path)
        let broken = "model.layers.\(layer).block_sparse_moe.experts.2.w3.weight"
        let tensors = try file.entries.keys.sorted().map { name -> (name: String, values: [Float], shape: [Int], dtype: DType) in
            let t = try file.floats(name)
            var values = t.values
            if name == broken { values[5] = 1e6 }
            return (name, values, t.shape, t.dtype)
        }
        try SafeTensorsFile.write(tensors, to: path)
        let checkpoint = try HFCheckpoint(folder: folder)
        for backend in try Self.backends() {
            do {
                _ = try checkpoint.loadLayer(layer, backend: backend, quantize: .int4(group: 32, zeroPoint: false))
                Issue.record("\(backend.name): an unquantizable expert loaded")
            } catch let error as CheckpointError {
                #expect(error.message.contains("of expert 2 (") && error.message.contains(broken), "\(error.message)")
            }
        }
    }

    /// FP8 experts quantized at load: dequantized one expert at a time, then quantized.
    @Test func fp8CheckpointQuantizedToInt4() throws {
        let (folder, layer) = try makeFolder("deepseek_v3", "fp8", "single")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let checkpoint = try HFCheckpoint(folder: folder)
        let x = try SafeTensorsFile(path: folder + "/x.safetensors").floats("x")
        let want = try SafeTensorsFile(path: folder + "/y_ref.safetensors").floats("y").values
        for backend in try Self.backends() {
            let moe = try checkpoint.loadLayer(layer, backend: backend, quantize: .int4(group: 32, zeroPoint: true))
            #expect(moe.weightFormat == .int4(group: 32, zeroPoint: true))
            let y = try backend.floats(moe.forward(try backend.tensor(x.values, shape: x.shape, dtype: x.dtype)).y)
            // int4 with a zero point: s = range/15, error ≤ s/2; range ≤ 2·max|w|: ≤ 3 × 4·9/(12·225).
            let error = ErrorMeasure.nmse(y, want)
            let bound: Double = 3.0 * 36.0 / (12.0 * 225.0)
            #expect(error < bound && error > 1e-7, "\(backend.name): nmse \(error)")
        }
    }
}
