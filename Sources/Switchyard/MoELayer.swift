import Foundation
import OpenCLHost
import SwitchyardReference

/// The sizes and routing of one MoE block.
public struct MoEConfig: Sendable, Hashable {
    /// Model width: the input and output rows are `[T, hidden]`.
    public var hidden: Int
    /// Width of each routed expert's FFN.
    public var ffn: Int
    /// How tokens pick experts (E, k, scoring, capacity, ...).
    public var router: RouterConfig
    /// Width of the shared expert FFN added for every token (0: none).
    public var sharedFFN: Int
    /// Whether the shared expert's output is multiplied by sigmoid(x · w_gate) (Qwen2-MoE).
    public var sharedGate: Bool
    /// Whether the router has a score-correction bias (DeepSeek-V3).
    public var routerBias: Bool
    /// Whether the router linear has a bias added to its logits before the top-k (gpt-oss;
    /// unlike `routerBias`, it changes the weights as well as the choice).
    public var routerLinearBias: Bool = false
    /// Whether the routed experts' gate|up and down have output biases (gpt-oss).
    public var expertBias: Bool = false
    /// The routed experts' gated epilogue (`.swiglu`, or gpt-oss's clamped `.gptOSS()`).
    public var glu: GLUParameters = .swiglu

    /// A block of the given sizes and routing, with an optional shared expert (gated as in Qwen2-MoE).
    public init(hidden: Int, ffn: Int, router: RouterConfig, sharedFFN: Int = 0, sharedGate: Bool = false,
                routerBias: Bool = false) {
        self.hidden = hidden
        self.ffn = ffn
        self.router = router
        self.sharedFFN = sharedFFN
        self.sharedGate = sharedGate
        self.routerBias = routerBias
    }

    /// Routed experts E.
    public var experts: Int { router.experts }

    /// Tiny configs with the routing of real models, for the main job and tests.
    public static let mixtralTiny = MoEConfig(hidden: 128, ffn: 256, router: .mixtral(experts: 8, k: 2))
    /// Qwen-MoE routing (softmax top-4 of 16, no renormalization) with a gated shared expert, tiny sizes.
    public static let qwenMoETiny = MoEConfig(
        hidden: 128, ffn: 64, router: .qwenMoE(experts: 16, k: 4, renormalize: false), sharedFFN: 256,
        sharedGate: true)
    /// DeepSeek-V3 routing (sigmoid, correction bias, grouped top-k, scale 2.5) with a shared expert, tiny sizes.
    public static let deepSeekTiny = MoEConfig(
        hidden: 128, ffn: 64, router: .deepSeekV3(experts: 32, k: 4, groups: 8, topKGroups: 4, routedScale: 2.5),
        sharedFFN: 128, routerBias: true)
    /// gpt-oss routing (top-4 of 16 by biased logits, softmax over the four) and experts (clamped
    /// SwiGLU α 1.702, limit 7, biases), tiny sizes (hidden a multiple of 32 for MXFP4).
    public static let gptOssTiny = MoEConfig.gptOss(hidden: 128, ffn: 64, experts: 16, k: 4)
    /// gpt-oss's routing and experts at a benchmark shape: hidden 1024, ffn 1024, 32 experts, top-4
    /// (gpt-oss-20b: hidden and ffn 2880, 32 experts, top-4).
    public static let gptOssSmall = MoEConfig.gptOss(hidden: 1024, ffn: 1024, experts: 32, k: 4)
    /// The sizes in range before any shape is computed from them: hidden and ffn in
    /// 1...Int32.max, sharedFFN in 0...Int32.max (the kernels take them as 32-bit ints; 2·ffn
    /// then cannot overflow). Routing is checked by `RouterConfig.validate`.
    func checkSizes() throws {
        let most = Int(Int32.max)
        for (name, value, least) in [("hidden", hidden, 1), ("ffn", ffn, 1), ("sharedFFN", sharedFFN, 0)] {
            guard (least...most).contains(value) else {
                throw SwitchyardError.outOfRange(argument: "MoEConfig.\(name)", value: value, range: "\(least)...\(most)")
            }
        }
    }

    /// A gpt-oss block: router linear with bias, top-k over the logits and softmax over the k
    /// chosen (= softmax, top-k, renormalize), experts with biases and the clamped SwiGLU.
    public static func gptOss(hidden: Int, ffn: Int, experts: Int, k: Int, alpha: Float = 1.702, limit: Float = 7)
        -> MoEConfig
    {
        var c = MoEConfig(hidden: hidden, ffn: ffn, router: .mixtral(experts: experts, k: k))
        c.routerLinearBias = true
        c.expertBias = true
        c.glu = .gptOSS(alpha: alpha, limit: limit)
        return c
    }
    /// The benchmark shapes: Mixtral-like small and DeepSeek-like.
    public static let mixtralSmall = MoEConfig(hidden: 512, ffn: 1024, router: .mixtral(experts: 8, k: 2))
    /// DeepSeek-like benchmark shape: hidden 1024, ffn 512, 64 experts, top-6.
    public static let deepSeekLike = MoEConfig(
        hidden: 1024, ffn: 512, router: RouterConfig(experts: 64, k: 6, renormalize: true))

    /// The built-in configs by the names `switchyard run --config` takes.
    public static let named: [String: MoEConfig] = [
        "mixtral-tiny": .mixtralTiny, "qwen-moe-tiny": .qwenMoETiny, "deepseek-tiny": .deepSeekTiny,
        "gpt-oss-tiny": .gptOssTiny,
        "mixtral-small": .mixtralSmall, "deepseek-like": .deepSeekLike,
    ]

    /// Floating-point operations of one forward over `tokens` tokens (matmuls only).
    public func flops(tokens: Int) -> Double {
        let t = Double(tokens)
        let h = Double(hidden)
        let routed = t * Double(router.k) * (2 * h * 2 * Double(ffn) + 2 * Double(ffn) * h)
        let shared = t * (2 * h * 2 * Double(sharedFFN) + 2 * Double(sharedFFN) * h)
        return 2 * t * h * Double(experts) + routed + shared
    }
}

/// The weights of one MoE block, as tensors on the backend that runs it (checkpoint layouts).
public struct MoEWeights: Sendable {
    /// Router `[E, hidden]`.
    public var router: Tensor
    /// Score-correction bias `[E]` (f32), DeepSeek-V3.
    public var bias: Tensor?
    /// Fused gate|up `[E, 2·ffn, hidden]`, gate rows first.
    public var gateUp: Tensor
    /// Down `[E, hidden, ffn]`.
    public var down: Tensor
    /// Shared expert gate|up `[2·sharedFFN, hidden]` and down `[hidden, sharedFFN]`.
    public var sharedGateUp: Tensor?
    /// Shared expert down `[hidden, sharedFFN]`.
    public var sharedDown: Tensor?
    /// Shared expert gate `[1, hidden]` (Qwen2-MoE).
    public var sharedGate: Tensor?
    /// Router linear bias `[E]` (f32), added to the logits (gpt-oss).
    public var routerLinearBias: Tensor?
    /// Routed experts' gate|up output bias `[E, 2·ffn]` (f32, gate columns first) (gpt-oss).
    public var gateUpBias: Tensor?
    /// Routed experts' down output bias `[E, hidden]` (f32) (gpt-oss).
    public var downBias: Tensor?
    /// With MXFP4 experts (gpt-oss as stored): the e8m0 scales `[E, 2·ffn, hidden/32]` u8 of
    /// `gateUp`, which then holds the blocks `[E, 2·ffn, hidden/32, 16]` u8.
    public var gateUpScales: Tensor?
    /// With MXFP4 experts: the scales `[E, hidden, ffn/32]` of `down`, then blocks `[E, hidden, ffn/32, 16]`.
    public var downScales: Tensor?
    /// Whether MXFP4 gate|up blocks alternate gate and up rows (gpt-oss) instead of gate rows first.
    public var gateUpInterleaved: Bool = false
    /// Block scales of the expert weights that hold FP8 e4m3 codes (u8) instead of floats
    /// (DeepSeek-V3 FP8 checkpoints; see `FP8BlockScales`).
    public var fp8: FP8BlockScales?

    /// The weights of a block, in checkpoint layouts (see each property); checked by `MoELayer`.
    public init(router: Tensor, bias: Tensor? = nil, gateUp: Tensor, down: Tensor, sharedGateUp: Tensor? = nil,
                sharedDown: Tensor? = nil, sharedGate: Tensor? = nil) {
        self.router = router
        self.bias = bias
        self.gateUp = gateUp
        self.down = down
        self.sharedGateUp = sharedGateUp
        self.sharedDown = sharedDown
        self.sharedGate = sharedGate
    }
}

/// Device time of one stage of a forward.
public struct StageTime: Sendable {
    /// The stage's name ("router", "routing", "gate|up+SwiGLU", "down", "shared expert", "combine").
    public var stage: String
    /// Device time of the stage's kernels, in seconds.
    public var seconds: Double

    /// A stage's device time.
    public init(stage: String, seconds: Double) {
        self.stage = stage
        self.seconds = seconds
    }
}

/// Whether a device's kernel profiling events measure its time. Events that together cover under
/// `minimumShare` of the wall clock around them do not: rusticl over llvmpipe reports kernels
/// that take seconds as taking microseconds, and a comparison on such figures picks noise. On a
/// real device the kernels of even a small launch sequence cover far more (the launch gaps of a
/// GPU decode forward are a few microseconds each). One rule for every timer: the benchmark's
/// ceilings and rows, `switchyard tune`, and the example stacks' speedups.
public enum ProfilingEvents {
    /// The least share of the wall clock plausible events cover.
    public static let minimumShare = 0.01

    /// Whether `eventSeconds` of kernel events within `wallSeconds` of host time are plausible.
    public static func plausible(eventSeconds: Double, wallSeconds: Double) -> Bool {
        eventSeconds >= minimumShare * wallSeconds
    }
}

/// A Mixture-of-Experts block: router linear → gating → permute → grouped gate|up with SwiGLU
/// (gather fused into its loads) → grouped down → weighted combine, plus optional shared
/// experts; on either backend behind one API. A forward makes no host read until its output.
public final class MoELayer: @unchecked Sendable {
    /// The backend the layer runs on (its weights live there).
    public let backend: any ComputeBackend
    /// The block's sizes and routing.
    public let config: MoEConfig
    let router: ExpertWeights
    let bias: Tensor?
    let gateUp: ExpertWeights
    let down: ExpertWeights
    let sharedGateUp: ExpertWeights?
    let sharedDown: ExpertWeights?
    let sharedGate: ExpertWeights?
    let routerLinearBias: Tensor?
    let gateUpBias: Tensor?
    let downBias: Tensor?
    /// Rows per block of the permutation (the matmul's row tile).
    public let blockSize: Int
    /// Seconds spent preparing (packing) the weights, reported apart from the forward.
    public let packSeconds: Double

    /// A layer over `weights` (checked against `config`), the expert weights prepared once for the
    /// grouped matmul (packed into panels unless `pack` is false). `quantize`: the routed and
    /// shared experts' weights quantized once on the backend (the router and the shared-expert
    /// gate stay in their float type).
    public init(
        backend: any ComputeBackend, config c: MoEConfig, weights w: MoEWeights, pack: Bool = true,
        quantize: WeightQuantization = .none
    ) throws {
        self.backend = backend
        self.config = c
        try c.checkSizes()
        let h = c.hidden
        func expect(_ t: Tensor?, _ shape: [Int], _ name: String) throws {
            guard let t else { throw SwitchyardError.unsupported("\(name) is required by this config") }
            guard t.shape == shape else { throw SwitchyardError.shape(argument: name, expected: "\(shape)", actual: t.shape) }
        }
        try expect(w.router, [c.experts, h], "router weight")
        let mxfp4 = w.gateUpScales != nil || w.downScales != nil
        if mxfp4 {
            guard let gs = w.gateUpScales, let ds = w.downScales else {
                throw SwitchyardError.unsupported("MXFP4 experts need both gateUpScales and downScales")
            }
            guard w.fp8 == nil else {
                throw SwitchyardError.unsupported("expert weights with both MXFP4 scales and FP8 block scales: one format only")
            }
            guard h % 32 == 0, c.ffn % 32 == 0 else {
                throw SwitchyardError.shape(
                    argument: "MXFP4 expert weights", expected: "hidden and ffn multiples of 32", actual: [h, c.ffn])
            }
            guard quantize == .none else {
                throw SwitchyardError.unsupported("quantize: \(quantize) for experts already stored in MXFP4")
            }
            try expect(w.gateUp, [c.experts, 2 * c.ffn, h / 32, 16], "expert gate|up MXFP4 blocks")
            try expect(gs, [c.experts, 2 * c.ffn, h / 32], "expert gate|up MXFP4 scales")
            try expect(w.down, [c.experts, h, c.ffn / 32, 16], "expert down MXFP4 blocks")
            try expect(ds, [c.experts, h, c.ffn / 32], "expert down MXFP4 scales")
        } else {
            try expect(w.gateUp, [c.experts, 2 * c.ffn, h], "expert gate|up weight")
            try expect(w.down, [c.experts, h, c.ffn], "expert down weight")
        }
        if c.routerBias { try expect(w.bias, [c.experts], "router correction bias") }
        if c.routerLinearBias { try expect(w.routerLinearBias, [c.experts], "router linear bias") }
        if c.expertBias {
            try expect(w.gateUpBias, [c.experts, 2 * c.ffn], "expert gate|up bias")
            try expect(w.downBias, [c.experts, h], "expert down bias")
        }
        if c.sharedFFN > 0 {
            try expect(w.sharedGateUp, [2 * c.sharedFFN, h], "shared expert gate|up weight")
            try expect(w.sharedDown, [h, c.sharedFFN], "shared expert down weight")
            if c.sharedGate { try expect(w.sharedGate, [1, h], "shared expert gate") }
        }
        let start = Date()
        router = try backend.prepareWeights(try w.router.reshaped([1, c.experts, h]), swiglu: false, pack: pack)
        bias = c.routerBias ? w.bias : nil
        routerLinearBias = c.routerLinearBias ? try w.routerLinearBias!.reshaped([1, c.experts]) : nil
        gateUpBias = c.expertBias ? w.gateUpBias : nil
        downBias = c.expertBias ? w.downBias : nil
        if let gs = w.gateUpScales, let ds = w.downScales {
            gateUp = try backend.prepareMXFP4(blocks: w.gateUp, scales: gs, swiglu: true, interleavedGateUp: w.gateUpInterleaved)
            down = try backend.prepareMXFP4(blocks: w.down, scales: ds, swiglu: false, interleavedGateUp: false)
        } else {
            // FP8 weights (with block scales in `w.fp8`) are prepared as FP8 (Checkpoint+FP8.swift).
            gateUp = try backend.prepareExperts(
                w.gateUp, scaleInv: w.fp8?.gateUp, swiglu: true, pack: pack, quantize: quantize, label: "expert gate|up weights")
            down = try backend.prepareExperts(
                w.down, scaleInv: w.fp8?.down, swiglu: false, pack: pack, quantize: quantize, label: "expert down weights")
        }
        if c.sharedFFN > 0 {
            sharedGateUp = try backend.prepareExperts(
                try w.sharedGateUp!.reshaped([1, 2 * c.sharedFFN, h]),
                scaleInv: try w.fp8?.sharedGateUp.map { try $0.reshaped([1] + $0.shape) }, swiglu: true, pack: pack,
                quantize: quantize, label: "shared expert gate|up weights")
            sharedDown = try backend.prepareExperts(
                try w.sharedDown!.reshaped([1, h, c.sharedFFN]),
                scaleInv: try w.fp8?.sharedDown.map { try $0.reshaped([1] + $0.shape) }, swiglu: false, pack: pack,
                quantize: quantize, label: "shared expert down weights")
            sharedGate = c.sharedGate
                ? try backend.prepareWeights(try w.sharedGate!.reshaped([1, 1, h]), swiglu: false, pack: pack) : nil
        } else {
            sharedGateUp = nil
            sharedDown = nil
            sharedGate = nil
        }
        try backend.synchronize()
        packSeconds = Date().timeIntervalSince(start)
        blockSize = backend.preferredBlockSize
    }

    /// A layer over expert weights already prepared on `backend` (the checkpoint loader's
    /// quantize-per-expert path), checked against `config`.
    init(
        backend: any ComputeBackend, config c: MoEConfig, router: ExpertWeights, bias: Tensor?, gateUp: ExpertWeights,
        down: ExpertWeights, sharedGateUp: ExpertWeights?, sharedDown: ExpertWeights?, sharedGate: ExpertWeights?,
        packSeconds: Double
    ) throws {
        try c.checkSizes()
        let h = c.hidden
        func expect(_ w: ExpertWeights?, _ shape: [Int], _ name: String) throws {
            guard let w else { throw SwitchyardError.unsupported("\(name) is required by this config") }
            guard w.shape == shape else { throw SwitchyardError.shape(argument: name, expected: "\(shape)", actual: w.shape) }
        }
        try expect(router, [1, c.experts, h], "router weight")
        try expect(gateUp, [c.experts, 2 * c.ffn, h], "expert gate|up weight")
        try expect(down, [c.experts, h, c.ffn], "expert down weight")
        if c.routerLinearBias || c.expertBias {
            throw SwitchyardError.unsupported("prepared expert weights without the router's or the experts' linear biases")
        }
        if c.routerBias && bias?.shape != [c.experts] {
            throw SwitchyardError.shape(argument: "router correction bias", expected: "[\(c.experts)]", actual: bias?.shape ?? [])
        }
        if c.sharedFFN > 0 {
            try expect(sharedGateUp, [1, 2 * c.sharedFFN, h], "shared expert gate|up weight")
            try expect(sharedDown, [1, h, c.sharedFFN], "shared expert down weight")
            if c.sharedGate { try expect(sharedGate, [1, 1, h], "shared expert gate") }
        }
        self.backend = backend
        self.config = c
        self.router = router
        self.bias = c.routerBias ? bias : nil
        self.gateUp = gateUp
        self.down = down
        self.sharedGateUp = c.sharedFFN > 0 ? sharedGateUp : nil
        self.sharedDown = c.sharedFFN > 0 ? sharedDown : nil
        self.sharedGate = c.sharedFFN > 0 && c.sharedGate ? sharedGate : nil
        self.routerLinearBias = nil
        self.gateUpBias = nil
        self.downBias = nil
        self.packSeconds = packSeconds
        blockSize = backend.preferredBlockSize
    }

    /// Bytes of routed-expert weights (gate|up and down), in their storage format.
    public var weightBytes: Int { gateUp.bytes + down.bytes }
    /// Storage type of the routed-expert weights (u8 when quantized).
    public var weightType: DType { gateUp.quantized == nil ? gateUp.weight!.dtype : .u8 }
    /// Storage format of the routed-expert weights.
    public var weightFormat: WeightFormat { gateUp.format }

    /// The output of a forward.
    public struct Output: Sendable {
        /// `[T, hidden]`, the block's output without the residual.
        public let y: Tensor
        /// The routing of each chunk of tokens, in token order: one, the whole batch, unless the
        /// batch was too large for one pass (see `chunkTokens`).
        public let routings: [Routing]
        /// Device time per stage (OpenCL backend with profiling requested), in order, summed over chunks.
        public let stages: [StageTime]

        /// The routing of the first chunk: the whole batch's unless it was split (see `routings`).
        public var routing: Routing { routings[0] }
    }

    /// The most tokens one pass of `forward` takes on this backend: its largest intermediate (the
    /// expert-ordered SwiGLU or down output, `maxRows` rows of `k·ffn` or `k·hidden` f32 per
    /// token, block padding included) stays within half the backend's largest tensor.
    public var chunkTokens: Int {
        let k = config.router.k
        let widest = max(k * config.ffn, k * config.hidden, config.sharedFFN, config.experts)
        let perToken = max(1, widest * 4)
        // Block padding adds at most E·(block − 1) rows to the k·T routed ones.
        let padding = config.experts * max(0, blockSize - 1) * max(config.ffn, config.hidden) * 4
        return max(1, (backend.maxTensorBytes / 2 - padding) / perToken)
    }

    /// Runs the block on `x [T, hidden]`: enqueues every stage on the device's in-order queue and
    /// returns without waiting (with `profile`, the stage times need the work done, so that waits).
    /// The routing flags guard the output: reading `y` (`floats`, `bytes`) throws if a router
    /// logit was NaN or infinite.
    ///
    /// A batch of more than `chunkTokens` tokens (`chunk`, when given) runs in chunks of that
    /// many, each routed on its own, and the chunks' outputs are stacked: each token's output is
    /// bitwise what one pass gives (rows never depend on what else shares their batch). Routing
    /// with a capacity cannot be split (capacity depends on the whole batch) and is refused with
    /// the limit named.
    public func forward(_ x: Tensor, profile: Bool = false, chunk: Int? = nil) throws -> Output {
        let s = try x.expectRank(2, "MoE input x", "[tokens, \(config.hidden)]")
        guard s[1] == config.hidden else {
            throw SwitchyardError.shape(argument: "MoE input x", expected: "[tokens, \(config.hidden)]", actual: s)
        }
        try x.expectDType(DType.floatingPoint, "MoE input x")
        let limit = chunk ?? chunkTokens
        guard limit >= 1 else { throw SwitchyardError.outOfRange(argument: "chunk", value: limit, range: "1...") }
        if s[0] <= limit { return try forwardPass(x, profile: profile) }
        if config.router.capacityFactor != nil {
            throw SwitchyardError.outOfRange(
                argument: "MoE tokens", value: s[0],
                range: "1...\(limit) with capacity-limited routing (capacity depends on the whole batch, so it is not split; "
                    + "the largest intermediate must fit \(backend.maxTensorBytes) bytes)")
        }
        let outCount = try Tensor.checkedCount([s[0], config.hidden], dtype: .f32, "MoE output")
        guard outCount * 4 <= backend.maxTensorBytes else {
            throw SwitchyardError.shape(
                argument: "MoE output", expected: "at most \(backend.maxTensorBytes) bytes (the backend's largest tensor)",
                actual: [s[0], config.hidden])
        }
        var parts: [Tensor] = []
        var routings: [Routing] = []
        var seconds: [String: Double] = [:]
        var order: [String] = []
        var start = 0
        while start < s[0] {
            let end = min(s[0], start + limit)
            let out = try forwardPass(try backend.copyRows(x, start..<end), profile: profile)
            parts.append(out.y)
            routings.append(out.routing)
            for stage in out.stages {
                if seconds[stage.stage] == nil { order.append(stage.stage) }
                seconds[stage.stage, default: 0] += stage.seconds
            }
            start = end
        }
        return Output(
            y: try backend.concatenateRows(parts), routings: routings,
            stages: order.map { StageTime(stage: $0, seconds: seconds[$0]!) })
    }

    /// One pass over the whole batch `x` (validated by `forward`).
    func forwardPass(_ x: Tensor, profile: Bool) throws -> Output {
        let s = x.shape
        var recorded: [(String, () throws -> Double?)] = []
        func stage<T>(_ name: String, _ body: () throws -> T) throws -> T {
            guard profile else { return try body() }
            let (value, seconds) = try backend.timed(body)
            recorded.append((name, seconds))
            return value
        }
        let logits = try stage("router") {
            try backend.groupedMatmul(
                .rows(x), weights: router, routing: nil, epilogue: .none, glu: .swiglu, bias: routerLinearBias, scale: .none,
                dtype: .f32)
        }
        let routing = try stage("routing") {
            try backend.route(logits, bias: bias, config: config.router, blockSize: blockSize)
        }
        let h = try stage("gate|up+SwiGLU") {
            try backend.groupedMatmul(
                .gathered(x), weights: gateUp, routing: routing, epilogue: .swiglu, glu: config.glu, bias: gateUpBias,
                scale: .none, dtype: nil)
        }
        let ys = try stage("down") {
            try backend.groupedMatmul(
                .rows(h), weights: down, routing: routing, epilogue: .none, glu: .swiglu, bias: downBias, scale: .none,
                dtype: x.dtype)
        }
        var shared: Tensor?
        if let sharedGateUp, let sharedDown {
            shared = try stage("shared expert") {
                let hs = try backend.groupedMatmul(x, weights: sharedGateUp, epilogue: .swiglu)
                var scale = RowScale.none
                if let sharedGate {
                    let g = try backend.groupedMatmul(x, weights: sharedGate, epilogue: .sigmoid, dtype: .f32)
                    scale = .perRow(try g.reshaped([s[0]]))
                }
                return try backend.groupedMatmul(hs, weights: sharedDown, scale: scale, dtype: .f32)
            }
        }
        let y = try stage("combine") {
            try backend.combine(ys, routing: routing, residual: shared, dtype: .f32)
        }
        var stages: [StageTime] = []
        for (name, seconds) in recorded {
            if let s = try seconds() { stages.append(StageTime(stage: name, seconds: s)) }
        }
        return Output(y: y, routings: [routing], stages: stages)
    }
}
