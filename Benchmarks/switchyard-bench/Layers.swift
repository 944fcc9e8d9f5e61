import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance

/// Whole-MoE-layer items at the benchmark shapes (the conformance registry has the tiny
/// configs, which check correctness but fit in any cache):
///
/// - prefill: mixtral-small at T 2048 and deepseek-like at T 4096 (compute-bound, GFLOP/s
///   against the FMA ceiling);
/// - decode: T 1 and 16, bound by reading the chosen experts' weights, so reported in GB/s of
///   weight bytes against the copy ceiling. One layer's weights would stay in the last-level
///   cache between runs and time the cache, so decode runs rotate over copies of the layer and
///   over inputs (`decodeInputs`): run n uses copy n mod C and input (n div C) mod m, the inputs
///   chosen so that together they route to every expert. So an expert's weights in one copy are
///   read again only after about `coldBytes` of other weights: C copies of the layer span
///   `coldBytes` (T 1: one input touches k experts and the m inputs cover them all, so a copy's
///   expert is read once per C·m runs), or C runs' weight reads do (T > 1, where one input
///   already touches most experts). (A fixed input at T 1 read the same k experts of each copy
///   every time: a k/E fraction of the rotation, which stayed in the cache.)
///
/// Peers: the reference backend running the same `MoELayer` where it is fast enough (decode);
/// for the f32 layers, OpenBLAS and CLBlast SGEMM once per expert over the same per-expert row
/// counts (set against the grouped matmul stages, which each run also reports), and PyTorch
/// eager running the whole layer in its own process (when `python3` can import torch).
func layerItems(
    filter: String?, quick: Bool, coldBytes: Int, peers peerOptions: LayerPeerOptions = LayerPeerOptions(),
    modelSizes: Bool = false
) throws -> [BenchItem] {
    struct Spec {
        let name: String
        let config: MoEConfig
        let tokens: Int
        let dtype: DType
        let decode: Bool
        /// Experts' weights quantized once on the device (activations stay `dtype`).
        var quantize: WeightQuantization = .none
        /// Experts' weights as a DeepSeek-V3 FP8 checkpoint holds them (e4m3 codes, 128 × 128
        /// block scales), prepared by `MoELayer` from `MoEWeights.fp8`.
        var fp8 = false
        /// A layer at full model size (`--model-sizes`): no reference peer (GB of f32 weights on
        /// the host), and its weights drawn once for all its formats (`ModelSizeWeights`).
        var modelSize = false
    }
    var specs = [
        Spec(name: "mixtral-small", config: .mixtralSmall, tokens: 2048, dtype: .f32, decode: false),
        Spec(name: "mixtral-small", config: .mixtralSmall, tokens: 16, dtype: .f32, decode: true),
    ]
    if !quick {
        specs += [
            Spec(name: "mixtral-small", config: .mixtralSmall, tokens: 2048, dtype: .bf16, decode: false),
            Spec(name: "deepseek-like", config: .deepSeekLike, tokens: 4096, dtype: .f32, decode: false),
            Spec(name: "mixtral-small", config: .mixtralSmall, tokens: 16, dtype: .bf16, decode: true),
            Spec(name: "deepseek-like", config: .deepSeekLike, tokens: 16, dtype: .f32, decode: true),
            Spec(name: "mixtral-small", config: .mixtralSmall, tokens: 1, dtype: .f32, decode: true),
            Spec(name: "deepseek-like", config: .deepSeekLike, tokens: 1, dtype: .f32, decode: true),
        ]
        // Quantized experts (issue 17): decode at T 1 and 16 for int8, int4 (groups of 128 and 32)
        // and MXFP4 at both shapes, beside the bf16 layer they replace, and one prefill row.
        for (name, config) in [("mixtral-small", MoEConfig.mixtralSmall), ("deepseek-like", .deepSeekLike)] {
            for tokens in [1, 16] {
                if !(name == "mixtral-small" && tokens == 16) {
                    specs.append(Spec(name: name, config: config, tokens: tokens, dtype: .bf16, decode: true))
                }
                for q in [WeightQuantization.int8, .int4(group: 128, zeroPoint: false), .int4(group: 32, zeroPoint: false), .mxfp4] {
                    specs.append(Spec(name: name, config: config, tokens: tokens, dtype: .bf16, decode: true, quantize: q))
                }
                specs.append(Spec(name: name, config: config, tokens: tokens, dtype: .bf16, decode: true, fp8: true))
            }
        }
        specs.append(Spec(
            name: "mixtral-small", config: .mixtralSmall, tokens: 2048, dtype: .bf16, decode: false,
            quantize: .int4(group: 128, zeroPoint: false)))
        // gpt-oss layers (issue 17): router bias, clamped SwiGLU with biases, MXFP4 experts (the
        // format gpt-oss ships; bf16 beside it), decode at T 1 and 16 and a prefill row.
        for tokens in [1, 16] {
            for q in [WeightQuantization.none, .mxfp4] {
                specs.append(Spec(name: "gpt-oss-small", config: .gptOssSmall, tokens: tokens, dtype: .bf16, decode: true,
                                  quantize: q))
            }
        }
        specs.append(Spec(name: "gpt-oss-small", config: .gptOssSmall, tokens: 512, dtype: .bf16, decode: false,
                          quantize: .mxfp4))
    }
    if modelSizes {
        // One layer of the models people run (`--model-sizes`): a T 1 decode reads 0.2-0.7 GB of
        // expert weights, against 1-25 MB at the benchmark shapes, where a GPU's launches
        // (microseconds each) would be most of the time.
        // In this order, the formats of one shape and T follow each other and share their weights.
        let mixtral = MoEConfig(hidden: 4096, ffn: 14336, router: .mixtral(experts: 8, k: 2))
        let gptOss = MoEConfig.gptOss(hidden: 2880, ffn: 2880, experts: 32, k: 4)
        for tokens in [1, 16] {
            for q in [WeightQuantization.none, .int8, .int4(group: 128, zeroPoint: false), .mxfp4] {
                specs.append(Spec(
                    name: "mixtral-8x7b", config: mixtral, tokens: tokens, dtype: .bf16, decode: true, quantize: q,
                    modelSize: true))
            }
        }
        for tokens in [1, 16] {
            for q in [WeightQuantization.none, .mxfp4] {
                specs.append(Spec(
                    name: "gpt-oss-20b", config: gptOss, tokens: tokens, dtype: .bf16, decode: true, quantize: q,
                    modelSize: true))
            }
        }
    }
    let regex = try filter.flatMap { $0.isEmpty ? nil : try Regex($0) }
    let modelSizeWeights = ModelSizeWeights()
    return specs.compactMap { s in
        let c = s.config
        let format = s.fp8 ? WeightFormat.fp8 : s.quantize.format(for: s.dtype)
        let expertBytes = format.bytes(rows: 2 * c.ffn, k: c.hidden) + format.bytes(rows: c.hidden, k: c.ffn)
        let sharedBytes = format.bytes(rows: 2 * c.sharedFFN, k: c.hidden) + format.bytes(rows: c.hidden, k: c.sharedFFN)
        let routerBytes = Double(c.experts * c.hidden * s.dtype.size)
        let layerBytes = Double(c.experts) * expertBytes + sharedBytes + routerBytes
        // Decode: the weight bytes a forward reads, with the expected number of distinct experts
        // T tokens choose under uniform routing, E·(1 − ((E − k)/E)^T). Prefill: every weight
        // once plus the activations in and out.
        let bytes: Double
        if s.decode {
            let e = Double(c.experts)
            let touched = e * (1 - pow((e - Double(c.router.k)) / e, Double(s.tokens)))
            bytes = touched * expertBytes + sharedBytes + routerBytes
        } else {
            bytes = layerBytes + Double(2 * s.tokens * c.hidden * s.dtype.size)
        }
        // Bytes read between two reads of one expert's weights in one copy: the copy's experts
        // at T 1 (the inputs cover them), a run's reads times the copies at T > 1.
        let reuseBytes = s.tokens == 1 ? layerBytes : bytes
        let copies = s.decode ? max(1, min(64, Int((Double(coldBytes) / reuseBytes).rounded(.up)))) : 1
        let flops = c.flops(tokens: s.tokens)
        let shape = "\(s.name) T=\(s.tokens)"
        // Decode rotates over `copies` layers: say how many bytes of weights that spans.
        let weights = s.fp8 ? "\(WeightFormat.fp8)" : s.quantize == .none ? "packed" : "\(s.quantize)"
        let options = s.decode
            ? "\(weights) decode cold=\(copies) (rotation spans \(Int((Double(copies) * layerBytes / 1e6).rounded())) MB)"
            : weights
        let name = "moe_layer \(shape) \(s.dtype.rawValue) \(options)"
        if let regex, !name.contains(regex) { return nil }
        let seed = stableSeed("moe_layer \(shape) \(s.dtype.rawValue)")

        let reference = ClosurePeer(name: "reference", estimate: flops / 3e8) {
            let backend = ReferenceBackend()
            let weights = try MoEWeights.random(config: c, backend: backend, dtype: s.dtype, seed: seed)
            let layer = try MoELayer(backend: backend, config: c, weights: weights, pack: false)
            let x = try input(backend, s.tokens, c.hidden, s.dtype, seed)
            return { _ = try layer.forward(x) }
        }
        let info = LayerRunInfo()
        // (The reference dequantizes every forward: no peer for quantized layers.)
        var peers: [any Peer] = s.quantize == .none && !s.fp8 && !s.modelSize ? [reference] : []
        // The per-expert GEMM peers run f32, so they stand beside the f32 layers.
        if s.dtype == .f32 {
            let loop = ExpertLoopShape(hidden: c.hidden, ffn: c.ffn, experts: c.experts, copies: copies, seed: seed)
            if !peerOptions.skip.contains("openblas") {
                peers.append(OpenBLASExpertLoop(shape: loop, info: info, policy: PeerPolicy(
                    warmups: 2, minRuns: peerOptions.minRuns, maxRuns: 500, seconds: quick ? 0.3 : 1, followsBudget: false)))
            }
            if !peerOptions.skip.contains("clblast") {
                peers.append(CLBlastExpertLoop(shape: loop, info: info, policy: PeerPolicy(
                    warmups: 1, minRuns: 1, maxRuns: quick ? 1 : peerOptions.clblastRuns, seconds: 30, followsBudget: false)))
            }
        }
        // PyTorch: on the host in f32 beside the f32 layers; on a GPU, there, in the layer's dtype,
        // beside every unquantized layer whose block torch_moe.py computes (not gpt-oss's).
        let gpu = peerOptions.torchOnGPU
        if !peerOptions.skip.contains("torch")
            && (gpu ? s.quantize == .none && !s.fp8 && torchRunsTheSameBlock(c) : s.dtype == .f32)
        {
            peers.append(TorchPeer(
                tokens: s.tokens, hidden: c.hidden, ffn: c.ffn, experts: c.experts, k: c.router.k, copies: copies,
                threads: peerOptions.threads, runs: quick ? 5 : peerOptions.minRuns, seconds: quick ? 0.5 : 2,
                gpu: gpu, dtype: gpu ? s.dtype : .f32))
        }
        var item = BenchItem(
            name: name, op: "moe_layer", shape: shape, dtype: s.dtype.rawValue, options: options, flops: flops,
            bytes: bytes, bound: s.decode ? .copy : nil, peers: peers
        ) { backend in
            var weights = s.modelSize
                ? try modelSizeWeights.weights(seed: seed) {
                    try MoEWeights.random(config: c, backend: backend, dtype: s.dtype, seed: seed)
                }
                : try MoEWeights.random(config: c, backend: backend, dtype: s.dtype, seed: seed)
            if s.fp8 { weights = try fp8Experts(weights, config: c, backend: backend, seed: seed) }
            var layers = [try MoELayer(backend: backend, config: c, weights: weights, pack: true, quantize: s.quantize)]
            for _ in 1..<copies {
                layers.append(try MoELayer(
                    backend: backend, config: c, weights: try duplicate(weights, backend), pack: true, quantize: s.quantize))
            }
            let xs = s.decode
                ? try decodeInputs(layers[0], backend, s.tokens, c, s.dtype, seed)
                : [try input(backend, s.tokens, c.hidden, s.dtype, seed)]
            // The routing the layer computes for the first input, read once: its per-expert row
            // counts are the work of the per-expert GEMM peers.
            let first = try layers[0].forward(xs[0])
            info.counts = try backend.ints(first.routing.counts).map(Int.init)
            info.device = backend.device
            // Run n: copy n mod C, input (n div C) mod m.
            let cycle = layers.count * xs.count
            var profiled = 0
            info.profiledRun = {
                let out = try layers[profiled % layers.count].forward(xs[profiled / layers.count], profile: true)
                profiled = (profiled + 1) % cycle
                return out.stages
            }
            var next = 0
            return {
                _ = try layers[next % layers.count].forward(xs[next / layers.count])
                next = (next + 1) % cycle
            }
        }
        item.finished = { info.profiledRun = nil }
        item.profiledRun = {
            guard let run = info.profiledRun else { throw BenchError("\(name): profiled run before the device run") }
            return try run()
        }
        let routedFlops = Double(s.tokens * c.router.k) * (2 * Double(c.hidden) * 2 * Double(c.ffn) + 2 * Double(c.ffn) * Double(c.hidden))
        item.groupedMatmul = GroupedMatmulPart(stages: ["gate|up+SwiGLU", "down"], flops: routedFlops, info: info)
        return item
    }
}

/// The full-size layers' weights (`--model-sizes`), kept from one item to the next while the seed
/// (shape, T and dtype) is the same: drawing 1.4 G values on the host takes far longer than the
/// item's timing, and the formats of one shape read the same weights. One set at a time: a new
/// seed releases the last before drawing. (A run's items all run on its one backend.)
final class ModelSizeWeights: @unchecked Sendable {
    private var kept: (seed: UInt64, weights: MoEWeights)?

    func weights(seed: UInt64, draw: () throws -> MoEWeights) throws -> MoEWeights {
        if let kept, kept.seed == seed { return kept.weights }
        kept = nil
        let w = try draw()
        kept = (seed, w)
        return w
    }
}

/// Whether `Benchmarks/peers/torch_moe.py` computes `c`'s block: softmax router without bias,
/// top-k renormalized and unscaled, no expert groups or capacity, plain SwiGLU experts without
/// biases, no shared expert.
func torchRunsTheSameBlock(_ c: MoEConfig) -> Bool {
    let r = c.router
    return c.sharedFFN == 0 && !c.routerLinearBias && !c.expertBias && c.glu == .swiglu && r.scoring == .softmax
        && r.renormalize && r.routedScale == 1 && r.expertGroups == 1 && r.capacityFactor == nil
}

/// Which MoE-layer peers run, and how.
struct LayerPeerOptions {
    /// Threads for OpenBLAS (set by the caller) and PyTorch.
    var threads = ProcessInfo.processInfo.activeProcessorCount
    /// Peers to leave out: "openblas", "clblast", "torch".
    var skip: Set<String> = []
    /// Timed runs of the CLBlast loop (it is slow on CPU OpenCL drivers).
    var clblastRuns = 3
    /// Timed runs, at least, of the OpenBLAS loop and PyTorch.
    var minRuns = 10
    /// PyTorch runs on the GPU it sees, in each layer's dtype (the benchmark's device is a GPU
    /// and `TorchPeer.cudaDevice` names one), rather than on the host in f32.
    var torchOnGPU = false
}

/// FNV-1a of `text`: the same seed on every run and machine.
func stableSeed(_ text: String) -> UInt64 {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    for byte in text.utf8 {
        hash ^= UInt64(byte)
        hash &*= 0x100_0000_01B3
    }
    return hash
}

private func input(_ backend: any ComputeBackend, _ tokens: Int, _ hidden: Int, _ dtype: DType, _ seed: UInt64) throws
    -> Tensor
{
    var g = SeededGenerator(seed: seed ^ 0xF00D)
    return try backend.tensor(g.normals(tokens * hidden), shape: [tokens, hidden], dtype: dtype)
}

/// The decode inputs of a layer (`tokens` rows each), from a seeded pool of random tokens routed
/// once by `layer`: at T 1, tokens picked greedily (each the pool's first with the most experts
/// not yet chosen) until the inputs route to every expert; at T > 1, consecutive runs of the pool
/// until every expert is chosen (at most 8 inputs). Pure functions of the seed and the layer.
private func decodeInputs(
    _ layer: MoELayer, _ backend: OpenCLBackend, _ tokens: Int, _ c: MoEConfig, _ dtype: DType, _ seed: UInt64
) throws -> [Tensor] {
    let e = c.router.experts
    let k = c.router.k
    let pool = max(256, 8 * tokens)
    var g = SeededGenerator(seed: seed ^ 0xF00D)
    let values = g.normals(pool * c.hidden)
    let out = try layer.forward(try backend.tensor(values, shape: [pool, c.hidden], dtype: dtype))
    let ids = try backend.ints(out.routing.ids).map(Int.init)
    func experts(_ t: Int) -> [Int] { ids[(t * k)..<((t + 1) * k)].filter { (0..<e).contains($0) } }
    var covered = [Bool](repeating: false, count: e)
    var chosen: [[Int]] = []  // pool tokens of each input
    if tokens == 1 {
        var used = [Bool](repeating: false, count: pool)
        while covered.contains(false) {
            var best = -1
            var gain = 0
            for t in 0..<pool where !used[t] {
                let n = Set(experts(t)).filter { !covered[$0] }.count
                if n > gain { (best, gain) = (t, n) }
            }
            guard best >= 0 else { break }  // no token reaches the rest
            used[best] = true
            for x in experts(best) { covered[x] = true }
            chosen.append([best])
        }
    } else {
        var next = 0
        while covered.contains(false) && chosen.count < 8 && next + tokens <= pool {
            let input = Array(next..<(next + tokens))
            for t in input { for x in experts(t) { covered[x] = true } }
            chosen.append(input)
            next += tokens
        }
    }
    if chosen.isEmpty { chosen = [Array(0..<tokens)] }
    return try chosen.map { input in
        let rows = input.flatMap { values[($0 * c.hidden)..<(($0 + 1) * c.hidden)] }
        return try backend.tensor(Array(rows), shape: [tokens, c.hidden], dtype: dtype)
    }
}

/// Device copies of every weight tensor (same values, distinct memory).
private func duplicate(_ w: MoEWeights, _ backend: OpenCLBackend) throws -> MoEWeights {
    func copy(_ t: Tensor) throws -> Tensor { try backend.copy(t) }
    var result = MoEWeights(
        router: try copy(w.router), bias: try w.bias.map(copy), gateUp: try copy(w.gateUp), down: try copy(w.down),
        sharedGateUp: try w.sharedGateUp.map(copy), sharedDown: try w.sharedDown.map(copy),
        sharedGate: try w.sharedGate.map(copy))
    result.routerLinearBias = try w.routerLinearBias.map(copy)
    result.gateUpBias = try w.gateUpBias.map(copy)
    result.downBias = try w.downBias.map(copy)
    if let f = w.fp8 {
        result.fp8 = FP8BlockScales(
            gateUp: try f.gateUp.map(copy), down: try f.down.map(copy), sharedGateUp: try f.sharedGateUp.map(copy),
            sharedDown: try f.sharedDown.map(copy))
    }
    try backend.synchronize()
    return result
}

/// `w` with its routed experts as FP8 checkpoint tensors: seeded e4m3 codes (the two NaN codes
/// avoided) and block scales of about 1/(448·sqrt(K)) (f32, `[E, 2·ceil(ffn/128), ceil(hidden/128)]`
/// for gate|up, `[E, ceil(hidden/128), ceil(ffn/128)]` for down), in place of its float experts.
private func fp8Experts(_ w: MoEWeights, config c: MoEConfig, backend: OpenCLBackend, seed: UInt64) throws -> MoEWeights {
    var g = SeededGenerator(seed: seed ^ 0xF8)
    func codes(_ shape: [Int]) throws -> Tensor {
        let bytes = (0..<shape.reduce(1, *)).map { _ -> UInt8 in
            let b = UInt8(truncatingIfNeeded: g.next())
            return b & 0x7F == 0x7F ? b ^ 1 : b
        }
        return try backend.tensor(codes: bytes, shape: shape)
    }
    func scales(_ shape: [Int], k: Int) throws -> Tensor {
        let base = 1 / (448 * Float(k).squareRoot())
        return try backend.tensor(
            (0..<shape.reduce(1, *)).map { _ in base * Float(1 + g.next() % 4) }, shape: shape, dtype: .f32)
    }
    func blocks(_ n: Int) -> Int { (n + 127) / 128 }
    var out = w
    out.gateUp = try codes([c.experts, 2 * c.ffn, c.hidden])
    out.down = try codes([c.experts, c.hidden, c.ffn])
    out.fp8 = FP8BlockScales(
        gateUp: try scales([c.experts, 2 * blocks(c.ffn), blocks(c.hidden)], k: c.hidden),
        down: try scales([c.experts, blocks(c.hidden), blocks(c.ffn)], k: c.ffn))
    return out
}
