import Foundation

/// A Hugging Face model folder: `config.json` and `.safetensors` weights (one file, or shards
/// listed by `model.safetensors.index.json`). Reads the MoE blocks of `mixtral`, `qwen2_moe`,
/// `qwen3_moe`, `olmoe` and `deepseek_v3` models.
public final class HFCheckpoint: @unchecked Sendable {
    public let folder: String
    public let modelType: String
    let config: [String: Any]
    private var files: [String: SafeTensorsFile] = [:]
    private let weightMap: [String: String]

    public static let supportedModelTypes = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3"]

    public init(folder: String) throws {
        self.folder = folder
        let url = URL(fileURLWithPath: folder)
        guard let data = try? Data(contentsOf: url.appendingPathComponent("config.json")) else {
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
        if let indexData = try? Data(contentsOf: index) {
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

    func file(for name: String) throws -> SafeTensorsFile {
        guard let fileName = weightMap[name] else {
            throw CheckpointError("\(folder): tensor '\(name)' is missing")
        }
        if let f = files[fileName] { return f }
        let f = try SafeTensorsFile(path: URL(fileURLWithPath: folder).appendingPathComponent(fileName).path)
        files[fileName] = f
        return f
    }

    /// A tensor's values, checked against `shape`.
    public func tensor(_ name: String, shape: [Int]) throws -> (values: [Float], dtype: DType) {
        let t = try file(for: name).floats(name)
        guard t.shape == shape else {
            throw CheckpointError("tensor '\(name)' has shape \(t.shape); expected \(shape)")
        }
        return (t.values, t.dtype)
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

    /// The sizes and routing of layer `layer`'s MoE block; a clear error if that layer is dense.
    public func moeConfig(layer: Int) throws -> MoEConfig {
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
            let shared = modelType == "qwen2_moe" ? try int("shared_expert_intermediate_size", default: 0) : 0
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

    /// Loads layer `layer`'s MoE block onto `backend`, weights in their checkpoint storage type
    /// (the router bias in f32).
    public func loadLayer(_ layer: Int, backend: any ComputeBackend, pack: Bool = true) throws -> MoELayer {
        let (c, weights) = try loadWeights(layer, backend: backend)
        return try MoELayer(backend: backend, config: c, weights: weights, pack: pack)
    }

    /// Layer `layer`'s config and weights on `backend`; with `experts`, only those routed experts'
    /// gate|up and down, in that order (`[experts.count, 2·ffn, hidden]`, `[experts.count, hidden,
    /// ffn]`): what one rank of an expert-parallel layer holds. Router, bias and shared experts whole.
    public func loadWeights(_ layer: Int, backend: any ComputeBackend, experts chosen: [Int]? = nil) throws
        -> (config: MoEConfig, weights: MoEWeights)
    {
        let c = try moeConfig(layer: layer)
        let h = c.hidden
        let f = c.ffn
        let p = prefix(layer)
        let list = chosen ?? Array(0..<c.experts)
        for e in list where !(0..<c.experts).contains(e) {
            throw CheckpointError("layer \(layer): expert \(e) is out of range 0..<\(c.experts)")
        }
        // The expert weights pass through host f32 here: refuse before allocating what the host lacks.
        var floats = 1
        for extent in [list.count, 3, f, h] {
            let (product, overflow) = floats.multipliedReportingOverflow(by: extent)
            guard !overflow else { throw CheckpointError("layer \(layer): experts × 3 × ffn × hidden overflows") }
            floats = product
        }
        let memory = Int(clamping: ProcessInfo.processInfo.physicalMemory)
        guard floats <= memory / 2 / MemoryLayout<Float>.size else {
            throw CheckpointError(
                "layer \(layer): \(c.experts) experts × 3 × \(f) × \(h) weights need \(floats / 250_000_000) GB of host f32 "
                    + "to load; this machine has \(memory / 1_000_000_000) GB")
        }
        let router = try tensor(p + "gate.weight", shape: [c.experts, h])
        var gateUp: [Float] = []
        var down: [Float] = []
        gateUp.reserveCapacity(list.count * 2 * f * h)
        down.reserveCapacity(list.count * h * f)
        var expertType: DType?
        for e in list {
            let n = expertNames(layer, e)
            let g = try tensor(n.gate, shape: [f, h])
            let u = try tensor(n.up, shape: [f, h])
            let d = try tensor(n.down, shape: [h, f])
            expertType = expertType ?? g.dtype
            gateUp += g.values
            gateUp += u.values
            down += d.values
        }
        let wt = expertType ?? .f32
        var weights = MoEWeights(
            router: try backend.tensor(router.values, shape: [c.experts, h], dtype: router.dtype),
            gateUp: try backend.tensor(gateUp, shape: [list.count, 2 * f, h], dtype: wt),
            down: try backend.tensor(down, shape: [list.count, h, f], dtype: wt))
        if c.routerBias {
            let b = try tensor(p + "gate.e_score_correction_bias", shape: [c.experts])
            weights.bias = try backend.tensor(b.values, shape: [c.experts], dtype: .f32)
        }
        if c.sharedFFN > 0 {
            let sp = modelType == "deepseek_v3" ? p + "shared_experts." : p + "shared_expert."
            let sg = try tensor(sp + "gate_proj.weight", shape: [c.sharedFFN, h])
            let su = try tensor(sp + "up_proj.weight", shape: [c.sharedFFN, h])
            let sd = try tensor(sp + "down_proj.weight", shape: [h, c.sharedFFN])
            weights.sharedGateUp = try backend.tensor(sg.values + su.values, shape: [2 * c.sharedFFN, h], dtype: sg.dtype)
            weights.sharedDown = try backend.tensor(sd.values, shape: [h, c.sharedFFN], dtype: sd.dtype)
            if c.sharedGate {
                let gate = try tensor(p + "shared_expert_gate.weight", shape: [1, h])
                weights.sharedGate = try backend.tensor(gate.values, shape: [1, h], dtype: gate.dtype)
            }
        }
        return (c, weights)
    }
}
