import Foundation
import SwitchyardReference

/// How far a layer load has got: bytes of backend tensors allocated, and written, so far.
public struct LoadProgress: Sendable, Hashable {
    public var allocatedBytes: Int
    public var writtenBytes: Int
}

/// A Hugging Face model folder: `config.json` and `.safetensors` weights (one file, or shards
/// listed by `model.safetensors.index.json`). Reads the MoE blocks of `mixtral`, `qwen2_moe`,
/// `qwen3_moe`, `olmoe`, `deepseek_v3` and `gpt_oss` models (gpt-oss: Checkpoint+GptOss.swift).
public final class HFCheckpoint: @unchecked Sendable {
    /// The model folder (config.json and the .safetensors files).
    public let folder: String
    /// config.json's `model_type` (one of `supportedModelTypes`).
    public let modelType: String
    let config: [String: Any]
    private var files: [String: SafeTensorsFile] = [:]
    private let weightMap: [String: String]

    /// The Hugging Face model types whose MoE layers load: their routing and weight names are known.
    public static let supportedModelTypes = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss"]

    /// Opens a model folder: reads and checks config.json and every .safetensors header (sizes, offsets, duplicates); reads no weights.
    public init(folder: String) throws {
        self.folder = folder
        let url = URL(fileURLWithPath: folder)
        guard let data = try SafeTensorsFile.readSmallFile(url.appendingPathComponent("config.json").path) else {
            throw CheckpointError("\(folder): no config.json")
        }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw CheckpointError("\(folder)/config.json is not a JSON object")
        }
        config = json
        guard let type = json["model_type"] as? String else {
            throw CheckpointError("\(folder)/config.json has no model_type")
        }
        guard Self.supportedModelTypes.contains(type) else {
            throw CheckpointError(
                "model_type '\(type)' is not supported; supported: \(Self.supportedModelTypes.joined(separator: ", "))")
        }
        modelType = type
        let index = url.appendingPathComponent("model.safetensors.index.json")
        if let indexData = try SafeTensorsFile.readSmallFile(index.path) {
            guard let indexJSON = try? JSONSerialization.jsonObject(with: indexData) as? [String: Any],
                let map = indexJSON["weight_map"] as? [String: String]
            else { throw CheckpointError("\(index.path) has no weight_map") }
            weightMap = map
        } else {
            let files = (try? FileManager.default.contentsOfDirectory(atPath: folder))?
                .filter { $0.hasSuffix(".safetensors") }.sorted() ?? []
            guard !files.isEmpty else { throw CheckpointError("\(folder): no .safetensors file") }
            var map: [String: String] = [:]
            for f in files {
                let file = try SafeTensorsFile(path: url.appendingPathComponent(f).path)
                self.files[f] = file
                for name in file.entries.keys.sorted() {
                    if let other = map[name] {
                        throw CheckpointError(
                            "\(folder): tensor '\(name)' is in both \(other) and \(f) (a stale file? without "
                                + "model.safetensors.index.json every .safetensors file of the folder is read)")
                    }
                    map[name] = f
                }
            }
            weightMap = map
        }
    }

    /// The path of the file holding tensor `name`.
    public func path(of name: String) throws -> String {
        guard let fileName = weightMap[name] else { throw CheckpointError("\(folder): tensor '\(name)' is missing") }
        return URL(fileURLWithPath: folder).appendingPathComponent(fileName).path
    }

    func file(for name: String) throws -> SafeTensorsFile {
        guard let fileName = weightMap[name] else {
            throw CheckpointError("\(folder): tensor '\(name)' is missing")
        }
        if let f = files[fileName] { return f }
        let f = try SafeTensorsFile(path: URL(fileURLWithPath: folder).appendingPathComponent(fileName).path)
        files[fileName] = f
        return f
    }

    /// A tensor's values widened to Float, checked against `shape` (small tensors and tests;
    /// layers load without this, see `loadLayer`).
    public func tensor(_ name: String, shape: [Int]) throws -> (values: [Float], dtype: DType) {
        _ = try storedType(name, shape: shape)
        let t = try file(for: name).floats(name)
        return (t.values, t.dtype)
    }

    /// The storage type of tensor `name` after checking its shape is `shape`, without reading it.
    func storedType(_ name: String, shape: [Int]) throws -> DType {
        let f = try file(for: name)
        let e = try f.entry(name)
        guard e.shape == shape else {
            throw CheckpointError("tensor '\(name)' has shape \(e.shape); expected \(shape)")
        }
        return try f.dtype(of: name)
    }

    /// The largest size config.json may give (a hidden size, a width, an expert count, a layer
    /// index): far above any real model, far below what overflows the size arithmetic.
    public static let maxConfigValue = 1 << 24

    func int(_ key: String, default value: Int? = nil) throws -> Int {
        guard let raw = config[key] else {
            if let value { return value }
            throw CheckpointError("config.json: '\(key)' is missing (model_type \(modelType))")
        }
        let parsed: Int?
        if let v = raw as? Int {
            parsed = v
        } else if let v = raw as? Double {
            parsed = Int(exactly: v)
        } else {
            parsed = nil
        }
        guard let v = parsed, (0...Self.maxConfigValue).contains(v) else {
            throw CheckpointError("config.json: '\(key)' is \(raw); expected an integer in 0...\(Self.maxConfigValue)")
        }
        return v
    }

    func double(_ key: String, default value: Double) -> Double {
        (config[key] as? Double) ?? (config[key] as? Int).map(Double.init) ?? value
    }

    func bool(_ key: String, default value: Bool) -> Bool { (config[key] as? Bool) ?? value }

    /// Tensor-name prefix of layer N's MoE block.
    func prefix(_ layer: Int) -> String {
        modelType == "mixtral" ? "model.layers.\(layer).block_sparse_moe." : "model.layers.\(layer).mlp."
    }

    /// The sizes and routing of layer `layer`'s MoE block; a clear error if that layer is dense,
    /// or if config.json's sizes, routing or activation are ones this layer cannot compute as the
    /// model does (checked here, before any weight is read).
    public func moeConfig(layer: Int) throws -> MoEConfig {
        let c = try storedMoEConfig(layer: layer)
        let (ffnKey, expertsKey) = switch modelType {
        case "mixtral": ("intermediate_size", "num_local_experts")
        case "olmoe": ("intermediate_size", "num_experts")
        case "deepseek_v3": ("moe_intermediate_size", "n_routed_experts")
        case "gpt_oss": ("intermediate_size", "num_local_experts")
        default: ("moe_intermediate_size", "num_experts")
        }
        guard c.hidden >= 1, c.ffn >= 1, c.experts >= 1, (1...c.experts).contains(c.router.k) else {
            throw CheckpointError(
                "config.json (\(modelType)): hidden size \(c.hidden), expert width \(c.ffn), \(c.experts) experts, "
                    + "k = \(c.router.k) (hidden_size, \(ffnKey), \(expertsKey), num_experts_per_tok): expected positive sizes "
                    + "and 1 ≤ k ≤ experts")
        }
        do {
            try c.checkSizes()
        } catch {
            throw CheckpointError("config.json (\(modelType)): \(error) (a shared expert's width is \(ffnKey) × n_shared_experts)")
        }
        do {
            try c.router.validate(experts: c.experts)
        } catch {
            throw CheckpointError(
                "config.json (\(modelType)): the routing it gives is invalid (\(expertsKey), num_experts_per_tok, n_group, "
                    + "topk_group, routed_scaling_factor): \(error)")
        }
        if modelType != "gpt_oss", let act = config["hidden_act"] {
            // Every model type but gpt_oss gates its experts with act(gate) · up, act from
            // hidden_act; this layer computes SiLU there ("swish" is SiLU in transformers too).
            guard let name = act as? String, ["silu", "swish"].contains(name) else {
                throw CheckpointError(
                    "config.json: hidden_act '\(act)' is not supported for \(modelType) experts (only silu)")
            }
        }
        return c
    }

    private func storedMoEConfig(layer: Int) throws -> MoEConfig {
        let hidden = try int("hidden_size")
        let layers = try int("num_hidden_layers", default: Self.maxConfigValue)
        guard layer >= 0 && layer < layers else {
            throw CheckpointError("layer \(layer) is out of range: the model has \(layers) layers")
        }
        switch modelType {
        case "mixtral":
            return MoEConfig(
                hidden: hidden, ffn: try int("intermediate_size"),
                router: .mixtral(experts: try int("num_local_experts"), k: try int("num_experts_per_tok")))
        case "qwen2_moe", "qwen3_moe":
            let experts = try int("num_experts")
            let step = try int("decoder_sparse_step", default: 1)
            let mlpOnly = (config["mlp_only_layers"] as? [Int]) ?? []
            if mlpOnly.contains(layer) || experts == 0 || (layer + 1) % max(step, 1) != 0 {
                throw CheckpointError(
                    "layer \(layer) of this \(modelType) model is dense (mlp_only_layers \(mlpOnly), decoder_sparse_step \(step)): it has no MoE block")
            }
            // (transformers' Qwen2MoeConfig defaults the shared expert's width to 5632, and its
            // block always has one)
            let shared = modelType == "qwen2_moe" ? try int("shared_expert_intermediate_size", default: 5632) : 0
            return MoEConfig(
                hidden: hidden, ffn: try int("moe_intermediate_size"),
                router: .qwenMoE(experts: experts, k: try int("num_experts_per_tok"),
                                 renormalize: bool("norm_topk_prob", default: false)),
                sharedFFN: shared, sharedGate: shared > 0)
        case "olmoe":
            return MoEConfig(
                hidden: hidden, ffn: try int("intermediate_size"),
                router: .qwenMoE(experts: try int("num_experts"), k: try int("num_experts_per_tok"),
                                 renormalize: bool("norm_topk_prob", default: false)))
        case "deepseek_v3":
            let firstDense = try int("first_k_dense_replace", default: 3)
            let frequency = try int("moe_layer_freq", default: 1)
            if layer < firstDense || layer % max(frequency, 1) != 0 {
                throw CheckpointError(
                    "layer \(layer) of this deepseek_v3 model is dense (first_k_dense_replace \(firstDense), moe_layer_freq \(frequency)): it has no MoE block")
            }
            let ffn = try int("moe_intermediate_size")
            var router = RouterConfig.deepSeekV3(
                experts: try int("n_routed_experts"), k: try int("num_experts_per_tok"), groups: try int("n_group", default: 8),
                topKGroups: try int("topk_group", default: 4),
                routedScale: Float(double("routed_scaling_factor", default: 2.5)))
            router.renormalize = bool("norm_topk_prob", default: true)
            return MoEConfig(
                hidden: hidden, ffn: ffn, router: router, sharedFFN: ffn * (try int("n_shared_experts", default: 1)),
                routerBias: true)
        case "gpt_oss":
            return try gptOssConfig(hidden: hidden)
        default:
            throw CheckpointError("model_type '\(modelType)' is not supported")
        }
    }

    /// Tensor names of one expert's gate, up and down projections.
    func expertNames(_ layer: Int, _ e: Int) -> (gate: String, up: String, down: String) {
        let p = prefix(layer) + "experts.\(e)."
        if modelType == "mixtral" { return (p + "w1.weight", p + "w3.weight", p + "w2.weight") }
        return (p + "gate_proj.weight", p + "up_proj.weight", p + "down_proj.weight")
    }

    /// The stored size in bytes of every tensor `loadWeights` reads for layer `layer` (checking
    /// each is present with the expected shape and a float type), in load order.
    public func layerTensors(_ layer: Int) throws -> [(name: String, bytes: Int)] {
        if modelType == "gpt_oss" { return try gptOssLayerTensors(layer) }
        let c = try moeConfig(layer: layer)
        let h = c.hidden
        let f = c.ffn
        let p = prefix(layer)
        var list: [(String, [Int])] = [(p + "gate.weight", [c.experts, h])]
        for e in 0..<c.experts {
            let n = expertNames(layer, e)
            list += [(n.gate, [f, h]), (n.up, [f, h]), (n.down, [h, f])]
        }
        if c.routerBias { list.append((p + "gate.e_score_correction_bias", [c.experts])) }
        if c.sharedFFN > 0 {
            let sp = modelType == "deepseek_v3" ? p + "shared_experts." : p + "shared_expert."
            list += [(sp + "gate_proj.weight", [c.sharedFFN, h]), (sp + "up_proj.weight", [c.sharedFFN, h]),
                     (sp + "down_proj.weight", [h, c.sharedFFN])]
            if c.sharedGate { list.append((p + "shared_expert_gate.weight", [1, h])) }
        }
        return try list.flatMap { name, shape in
            // FP8 (F8_E4M3) weights bring their block scales (Checkpoint+FP8.swift).
            let fp8 = try weightStorage(name, shape: shape) == .u8
            return try (fp8 ? [name, Self.scaleName(of: name)] : [name]).map { n in
                let e = try file(for: n).entry(n)
                return (n, e.end - e.begin)
            }
        }
    }

    /// Host bytes a layer streams through by default: each tensor goes from the file to the
    /// device in pieces of this size (with a conversion, a second buffer of at most twice it).
    public static let defaultStagingBytes = 8 << 20

    /// Loads layer `layer`'s MoE block onto `backend` and prepares (packs) it there. See
    /// `loadWeights` for how the weights travel. FP8 experts (unless `weightType` dequantizes
    /// them) are prepared one expert at a time as they load (Checkpoint+FP8.swift).
    public func loadLayer(
        _ layer: Int, backend: any ComputeBackend, pack: Bool = true, weightType: DType? = nil,
        stagingBytes: Int = defaultStagingBytes, progress: ((LoadProgress) -> Void)? = nil
    ) throws -> MoELayer {
        if weightType == nil, try fp8Experts(layer) {
            return try loadByExpert(
                layer, backend: backend, pack: pack, weightType: nil, quantize: .none, stagingBytes: stagingBytes,
                progress: progress)
        }
        let c = try moeConfig(layer: layer)
        let weights = try loadWeights(
            layer, backend: backend, weightType: weightType, stagingBytes: stagingBytes, progress: progress)
        return try MoELayer(backend: backend, config: c, weights: weights, pack: pack)
    }

    /// Loads layer `layer`'s MoE weights onto `backend`, each tensor straight from its file to its
    /// place in the device tensor: the per-expert gate and up `[ffn, hidden]` into the stacked
    /// `[E, 2·ffn, hidden]` (gate rows first) and down `[hidden, ffn]` into `[E, hidden, ffn]`, one
    /// tensor at a time, through one reused staging buffer of `stagingBytes` (`pread`, no mapping,
    /// no whole-tensor host copy). The expert weights keep the storage type of expert 0's gate, or
    /// become `weightType`; the router keeps its own, the DeepSeek-V3 correction bias becomes f32.
    /// A tensor stored in another type is converted piece by piece in a second staging buffer.
    /// FP8 experts (F8_E4M3 with `weight_scale_inv`, DeepSeek-V3) load as their u8 codes with
    /// their block scales in `MoEWeights.fp8` (see Checkpoint+FP8.swift), or dequantized to
    /// `weightType` when given.
    /// Every tensor's presence, shape and type is checked before anything is allocated.
    /// `progress` is called after each allocation and each piece written, with the totals so far.
    ///
    /// With `experts`, only those routed experts' gate|up and down are loaded, in that order
    /// (`[experts.count, 2·ffn, hidden]`, `[experts.count, hidden, ffn]`): what one rank of an
    /// expert-parallel layer holds. The router, its bias and the shared experts load whole.
    public func loadWeights(
        _ layer: Int, backend: any ComputeBackend, experts chosen: [Int]? = nil, weightType: DType? = nil,
        stagingBytes: Int = defaultStagingBytes, progress: ((LoadProgress) -> Void)? = nil
    ) throws -> MoEWeights {
        if modelType == "gpt_oss" {
            return try gptOssLoadWeights(
                layer, backend: backend, experts: chosen, weightType: weightType, stagingBytes: stagingBytes, progress: progress)
        }
        let c = try moeConfig(layer: layer)
        let list = chosen ?? Array(0..<c.experts)
        for e in list where !(0..<c.experts).contains(e) {
            throw CheckpointError("layer \(layer): expert \(e) is out of range 0..<\(c.experts)")
        }
        let h = c.hidden
        let f = c.ffn
        let p = prefix(layer)
        if let weightType, !weightType.isFloatingPoint {
            throw CheckpointError("weight type \(weightType): expected f32, f16 or bf16")
        }
        // Sizes of the stacked tensors with checked arithmetic (config values are at most 2^24).
        let (twoF, overflow) = f.multipliedReportingOverflow(by: 2)
        if overflow { throw CheckpointError("layer \(layer): 2 × ffn overflows") }

        // Every tensor checked (present, shaped, a float type) before any allocation.
        let routerName = p + "gate.weight"
        let routerType = try storedType(routerName, shape: [c.experts, h])
        var experts: [(gate: String, up: String, down: String)] = []
        var types: [DType] = []  // u8: FP8 codes (weightStorage)
        for e in list {
            let n = expertNames(layer, e)
            types += [try weightStorage(n.gate, shape: [f, h]), try weightStorage(n.up, shape: [f, h]),
                      try weightStorage(n.down, shape: [h, f])]
            experts.append(n)
        }
        let wt = try stackedType(types, requested: weightType, label: "layer \(layer) routed experts")
        let biasName = p + "gate.e_score_correction_bias"
        if c.routerBias { _ = try storedType(biasName, shape: [c.experts]) }
        let sp = modelType == "deepseek_v3" ? p + "shared_experts." : p + "shared_expert."
        let shared = (gate: sp + "gate_proj.weight", up: sp + "up_proj.weight", down: sp + "down_proj.weight")
        let sharedGateName = p + "shared_expert_gate.weight"
        var sharedType = wt
        if c.sharedFFN > 0 {
            sharedType = try stackedType(
                [try weightStorage(shared.gate, shape: [c.sharedFFN, h]), try weightStorage(shared.up, shape: [c.sharedFFN, h]),
                 try weightStorage(shared.down, shape: [h, c.sharedFFN])],
                requested: weightType, label: "layer \(layer) shared experts")
            if c.sharedGate { _ = try storedType(sharedGateName, shape: [1, h]) }
        }

        let loader = try Loader(checkpoint: self, backend: backend, stagingBytes: stagingBytes, progress: progress)
        let router = try loader.load([routerName], shape: [c.experts, h], dtype: routerType, label: "router weight")
        let gateUp = try loader.allocate([list.count, twoF, h], wt, "expert gate|up weight")
        let down = try loader.allocate([list.count, h, f], wt, "expert down weight")
        var fp8 = FP8BlockScales()
        if wt == .u8 {
            fp8.gateUp = try loader.allocateScales(experts: list.count, rows: f, k: h, parts: 2, label: "expert gate|up weight_scale_inv")
            fp8.down = try loader.allocateScales(experts: list.count, rows: h, k: f, parts: 1, label: "expert down weight_scale_inv")
        }
        let slice = f * h  // one expert's gate, up or down: ≤ 2^48 / 4 elements, checked by `empty` above
        for (e, n) in experts.enumerated() {
            try loader.copy(n.gate, into: gateUp, atElement: 2 * e * slice)
            try loader.copy(n.up, into: gateUp, atElement: (2 * e + 1) * slice)
            try loader.copy(n.down, into: down, atElement: e * slice)
            if let s = fp8.gateUp { try loader.copyScales([n.gate, n.up], into: s, expert: e) }
            if let s = fp8.down { try loader.copyScales([n.down], into: s, expert: e) }
        }
        var weights = MoEWeights(router: router, gateUp: gateUp, down: down)
        if c.routerBias {
            weights.bias = try loader.load([biasName], shape: [c.experts], dtype: .f32, label: "router correction bias")
        }
        if c.sharedFFN > 0 {
            weights.sharedGateUp = try loader.load(
                [shared.gate, shared.up], shape: [2 * c.sharedFFN, h], dtype: sharedType, label: "shared expert gate|up weight")
            weights.sharedDown = try loader.load(
                [shared.down], shape: [h, c.sharedFFN], dtype: sharedType, label: "shared expert down weight")
            if sharedType == .u8 {
                fp8.sharedGateUp = try loader.allocateScales(
                    experts: 1, rows: c.sharedFFN, k: h, parts: 2, label: "shared expert gate|up weight_scale_inv")
                try loader.copyScales([shared.gate, shared.up], into: fp8.sharedGateUp!, expert: 0)
                fp8.sharedGateUp = try fp8.sharedGateUp!.reshaped(Array(fp8.sharedGateUp!.shape.dropFirst()))
                fp8.sharedDown = try loader.allocateScales(
                    experts: 1, rows: h, k: c.sharedFFN, parts: 1, label: "shared expert down weight_scale_inv")
                try loader.copyScales([shared.down], into: fp8.sharedDown!, expert: 0)
                fp8.sharedDown = try fp8.sharedDown!.reshaped(Array(fp8.sharedDown!.shape.dropFirst()))
            }
            if c.sharedGate {
                let gateType = try storedType(sharedGateName, shape: [1, h])
                weights.sharedGate = try loader.load([sharedGateName], shape: [1, h], dtype: gateType, label: "shared expert gate")
            }
        }
        if wt == .u8 || sharedType == .u8 { weights.fp8 = fp8 }
        return weights
    }

    /// The most regions `verify` compares a tensor in.
    public static let maxVerifyRegions = 1024

    /// Compares loaded weights with the file, bitwise: for every tensor of layer `layer`, up to
    /// `regions` runs of `run` elements (its head, tail and evenly spaced ones between) read back
    /// from `backend` against the stored bytes (converted to the loaded type where it differs).
    /// Returns the number of runs compared; a mismatch is an error naming the tensor and element.
    public func verify(
        _ weights: MoEWeights, layer: Int, backend: any ComputeBackend, regions: Int = 3, run: Int = 4096
    ) throws -> Int {
        guard run >= 1, (1...Self.maxVerifyRegions).contains(regions) else {
            throw CheckpointError("verify: run \(run), regions \(regions): expected run ≥ 1 and 1...\(Self.maxVerifyRegions) regions")
        }
        if modelType == "gpt_oss" { return try gptOssVerify(weights, layer: layer, backend: backend, regions: regions, run: run) }
        let c = try moeConfig(layer: layer)
        let p = prefix(layer)
        let slice = c.ffn * c.hidden
        var places: [(String, Tensor, Int)] = [(p + "gate.weight", weights.router, 0)]
        for e in 0..<c.experts {
            let n = expertNames(layer, e)
            places += [(n.gate, weights.gateUp, 2 * e * slice), (n.up, weights.gateUp, (2 * e + 1) * slice),
                       (n.down, weights.down, e * slice)]
        }
        if c.routerBias, let bias = weights.bias { places.append((p + "gate.e_score_correction_bias", bias, 0)) }
        if c.sharedFFN > 0, let gu = weights.sharedGateUp, let d = weights.sharedDown {
            let sp = modelType == "deepseek_v3" ? p + "shared_experts." : p + "shared_expert."
            places += [(sp + "gate_proj.weight", gu, 0), (sp + "up_proj.weight", gu, c.sharedFFN * c.hidden),
                       (sp + "down_proj.weight", d, 0)]
            if let g = weights.sharedGate { places.append((p + "shared_expert_gate.weight", g, 0)) }
        }
        places += try scalePlaces(weights, layer: layer)
        var compared = 0
        for (name, tensor, base) in places {
            let file = try file(for: name)
            let count = try file.entry(name).shape.reduce(1, *)
            let length = min(run, count)
            let n = max(1, regions)
            var starts = Set<Int>()
            for i in 0..<n { starts.insert(n == 1 ? 0 : (count - length) * i / (n - 1)) }
            for start in starts.sorted() {
                let range = start..<(start + length)
                let want = try loadedBytes(name, elements: range, as: tensor.dtype)
                let got = try backend.bytes(tensor, elements: (base + start)..<(base + start + length))
                if got != want {
                    let size = tensor.dtype.size
                    let first = (0..<length * size).first { (b: Int) -> Bool in got[b] != want[b] } ?? 0
                    let i = first / size
                    throw CheckpointError(
                        "'\(name)' element \(start + i) differs on \(backend.name) from the file (loaded at element \(base + start + i) "
                            + "of \(tensor))")
                }
                compared += 1
            }
        }
        return compared
    }

    /// Streams checkpoint tensors into backend tensors through one staging buffer.
    final class Loader {
        let checkpoint: HFCheckpoint
        let backend: any ComputeBackend
        let staging: StagingBuffer
        /// For pieces converted to another storage type (made on first use).
        var converted: StagingBuffer?
        let progress: ((LoadProgress) -> Void)?
        var state = LoadProgress(allocatedBytes: 0, writtenBytes: 0)

        init(checkpoint: HFCheckpoint, backend: any ComputeBackend, stagingBytes: Int, progress: ((LoadProgress) -> Void)?) throws {
            self.checkpoint = checkpoint
            self.backend = backend
            // A piece converted on the way (FP8 or bf16 to f32) takes up to 4× the staging size.
            guard stagingBytes <= StagingBuffer.maxCapacity / 4 else {
                throw CheckpointError(
                    "staging size \(stagingBytes) bytes: expected at most \(StagingBuffer.maxCapacity / 4) (a piece converted to "
                        + "f32 on the way takes up to 4× as much)")
            }
            self.staging = try StagingBuffer(capacity: stagingBytes)
            self.progress = progress
        }

        /// A backend tensor to load into (announced to `progress` before it is made: a device
        /// that clears new buffers fills their pages during the call).
        func allocate(_ shape: [Int], _ dtype: DType, _ label: String) throws -> Tensor {
            state.allocatedBytes += try Tensor.checkedCount(shape, dtype: dtype, label) * dtype.size
            progress?(state)
            return try backend.empty(shape: shape, dtype: dtype, label: label)
        }

        /// A new tensor of `shape` and `dtype` holding `names` one after the other.
        func load(_ names: [String], shape: [Int], dtype: DType, label: String) throws -> Tensor {
            let t = try allocate(shape, dtype, label)
            var offset = 0
            for name in names {
                try copy(name, into: t, atElement: offset)
                offset += try checkpoint.file(for: name).entry(name).shape.reduce(1, *)
            }
            return t
        }

        /// Writes tensor `name` into `tensor` from element `base`, converted to its type if need be.
        func copy(_ name: String, into tensor: Tensor, atElement base: Int) throws {
            let file = try checkpoint.file(for: name)
            if try file.entry(name).dtype == HFCheckpoint.fp8DType { return try copyFP8(name, into: tensor, atElement: base) }
            let stored = try file.dtype(of: name)
            let target = tensor.dtype
            try file.read(name, through: staging) { piece, first in
                if stored == target {
                    try backend.write(piece, into: tensor, atElement: base + first)
                    state.writtenBytes += piece.count
                } else {
                    let count = piece.count / stored.size
                    let needed = staging.capacity / stored.size * target.size
                    if converted == nil || converted!.capacity < needed { converted = try StagingBuffer(capacity: max(needed, 8)) }
                    let out = UnsafeMutableRawBufferPointer(rebasing: converted!.bytes[0..<count * target.size])
                    Reference.convert(piece, from: stored.floatStorage!, into: out, as: target.floatStorage!, count: count)
                    try backend.write(UnsafeRawBufferPointer(out), into: tensor, atElement: base + first)
                    state.writtenBytes += out.count
                }
                progress?(state)
            }
        }
    }
}
