import Foundation
import OpenCLHost
import SwitchyardReference

// FP8 checkpoints (DeepSeek-V3) and quantizing float checkpoints at load.
//
// What DeepSeek-V3 stores (github:deepseek-ai/DeepSeek-V3 README_WEIGHTS.md "FP8 Weight
// Documentation", inference/model.py `Linear`, inference/kernel.py `weight_dequant`,
// inference/fp8_cast_bf16.py; transformers src/transformers/integrations/finegrained_fp8.py
// `FP8Linear`): every `Linear` weight whose element size is one byte is `float8_e4m3fn`
// (safetensors dtype string "F8_E4M3", as the `safetensors` writer names torch.float8_e4m3fn),
// with an f32 `<name>_scale_inv` of shape `[ceil(out/128), ceil(in/128)]` next to it; element
// (r, c) dequantizes to w · scale_inv[r / 128, c / 128] (a block at the edge is partial).
// config.json says so in `quantization_config`: `quant_method "fp8"`, `fmt "e4m3"`,
// `weight_block_size [128, 128]`, `activation_scheme "dynamic"`. The MoE router `gate.weight`
// is a plain parameter, not a `Linear` (bf16 in the checkpoint), and
// `gate.e_score_correction_bias` is f32: neither is quantized.
//
// Switchyard keeps FP8 weights as FP8 on the device (their codes and block scales, the layout
// `prepareFP8` takes) or, with a `weightType`, dequantizes them piece by piece at load
// (`Quantization.dequantizeFP8(codes:first:count:k:scales:into:as:)`). Activations are not
// quantized: "dynamic" activation scaling is the checkpoint's runtime choice, and Switchyard
// computes in f32 instead (more precise than the checkpoint's own runtime).

/// The 128 × 128 block scales (`weight_scale_inv`, f32) of expert weights loaded as FP8 codes:
/// `MoEWeights.fp8`, one tensor per stacked weight that holds u8 e4m3 codes, in `PrepareFP8`'s
/// layout (a fused gate|up's scales are the gate's blocks then the up's, per expert).
public struct FP8BlockScales: Sendable {
    /// `[E, 2·ceil(ffn/128), ceil(hidden/128)]` for `MoEWeights.gateUp`.
    public var gateUp: Tensor?
    /// `[E, ceil(hidden/128), ceil(ffn/128)]` for `MoEWeights.down`.
    public var down: Tensor?
    /// `[2·ceil(sharedFFN/128), ceil(hidden/128)]` for `MoEWeights.sharedGateUp`.
    public var sharedGateUp: Tensor?
    /// `[ceil(hidden/128), ceil(sharedFFN/128)]` for `MoEWeights.sharedDown`.
    public var sharedDown: Tensor?

    /// Scales for the given stacked weights (nil: that weight is float).
    public init(gateUp: Tensor? = nil, down: Tensor? = nil, sharedGateUp: Tensor? = nil, sharedDown: Tensor? = nil) {
        self.gateUp = gateUp
        self.down = down
        self.sharedGateUp = sharedGateUp
        self.sharedDown = sharedDown
    }
}

extension MoEWeights {
    /// Bytes of every tensor held (router and its biases, experts and their biases, shared
    /// experts, MXFP4 and FP8 scales).
    public var byteCount: Int {
        let tensors: [Tensor?] = [
            router, bias, gateUp, down, sharedGateUp, sharedDown, sharedGate, routerLinearBias, gateUpBias, downBias,
            gateUpScales, downScales, fp8?.gateUp, fp8?.down, fp8?.sharedGateUp, fp8?.sharedDown,
        ]
        return tensors.reduce(0) { $0 + ($1?.byteCount ?? 0) }
    }
}

extension HFCheckpoint {
    /// The safetensors dtype of FP8 e4m3fn weights.
    public static let fp8DType = "F8_E4M3"
    /// The FP8 block edge Switchyard reads (DeepSeek-V3's `weight_block_size` [128, 128]).
    public static let fp8Block = 128

    /// The tensor holding the block scales of FP8 weight `weight` ("….weight" → "….weight_scale_inv").
    public static func scaleName(of weight: String) -> String { weight + "_scale_inv" }

    static func blocks(_ n: Int) -> Int { (n + fp8Block - 1) / fp8Block }

    /// Checks config.json's `quantization_config` for FP8 weights: quant_method "fp8", fmt
    /// "e4m3" (when given), weight_block_size [128, 128], activation_scheme "dynamic" (when given).
    func checkFP8Config() throws {
        let at = "\(folder)/config.json"
        func json(_ v: Any?) -> String {
            guard let v, let d = try? JSONSerialization.data(withJSONObject: v, options: [.fragmentsAllowed]) else { return "missing" }
            return String(decoding: d, as: UTF8.self)
        }
        guard let q = config["quantization_config"] as? [String: Any] else {
            throw CheckpointError(
                "\(at) has no quantization_config, but the layer's weights are \(Self.fp8DType): their block size is unknown "
                    + "(expected quant_method \"fp8\", weight_block_size [128, 128])")
        }
        guard let method = q["quant_method"] as? String, method == "fp8" else {
            throw CheckpointError("\(at): quantization_config.quant_method is \(json(q["quant_method"])); expected \"fp8\" for \(Self.fp8DType) weights")
        }
        if let fmt = q["fmt"], (fmt as? String) != "e4m3" {
            throw CheckpointError("\(at): quantization_config.fmt is \(json(fmt)); only \"e4m3\" (float8_e4m3fn) is supported")
        }
        // (map, not compactMap: an entry that is not an integer is refused, not dropped)
        let block = (q["weight_block_size"] as? [Any])?.map { ($0 as? Int) ?? ($0 as? Double).flatMap { Int(exactly: $0) } }
        guard let block, block == [Self.fp8Block, Self.fp8Block] else {
            throw CheckpointError(
                "\(at): quantization_config.weight_block_size is \(json(q["weight_block_size"])); Switchyard's FP8 path "
                    + "reads 128 × 128 blocks (DeepSeek-V3's [128, 128])")
        }
        if let scheme = q["activation_scheme"], (scheme as? String) != "dynamic" {
            throw CheckpointError(
                "\(at): quantization_config.activation_scheme is \(json(scheme)); only \"dynamic\" is supported (no stored activation "
                    + "scales: activations stay unquantized)")
        }
    }

    /// The storage type weight `name` loads in after checking its shape is `shape`: its float
    /// type (F32, F16, BF16), or u8 for F8_E4M3 codes, after checking the config's
    /// quantization_config and its `_scale_inv` (present, a float type, one scale per 128 × 128
    /// block). Any other dtype (F8_E5M2, ...) is refused, named.
    func weightStorage(_ name: String, shape: [Int]) throws -> DType {
        let f = try file(for: name)
        let e = try f.entry(name)
        guard e.shape == shape else {
            throw CheckpointError("tensor '\(name)' has shape \(e.shape); expected \(shape)")
        }
        switch e.dtype {
        case Self.fp8DType:
            try checkFP8Config()
            let s = Self.scaleName(of: name)
            let sf: SafeTensorsFile
            do { sf = try file(for: s) } catch {
                throw CheckpointError(
                    "\(folder): FP8 weight '\(name)' (\(Self.fp8DType)) has no block scales '\(s)' (weight_scale_inv)")
            }
            let want = [Self.blocks(shape[0]), Self.blocks(shape[1])]
            guard try sf.entry(s).shape == want else {
                throw CheckpointError(
                    "'\(s)' has shape \(try sf.entry(s).shape); expected \(want): one scale per 128 × 128 block "
                        + "(weight_block_size [128, 128]) of '\(name)' \(shape)")
            }
            _ = try sf.dtype(of: s)
            // One scale per block (a 1/16384 of the weight's elements): a non-finite one would
            // turn a whole block into NaN or infinity.
            if let bad = try sf.floats(s).values.firstIndex(where: { !$0.isFinite }) {
                throw CheckpointError(
                    "'\(s)' holds a non-finite scale at block (\(bad / want[1]), \(bad % want[1])) of '\(name)'")
            }
            return .u8
        case "F32", "F16", "BF16":
            return try f.dtype(of: name)
        default:
            throw CheckpointError(
                "\(f.path): '\(name)' has dtype \(e.dtype); expected F32, F16, BF16 or \(Self.fp8DType) (float8_e4m3fn with a "
                    + "weight_scale_inv per 128 × 128 block, as DeepSeek-V3 stores it)\(e.dtype.hasPrefix("F8") ? ": \(e.dtype) is not supported" : "")")
        }
    }

    /// The type a stacked weight gets from its tensors' load types `types`: `requested`, else
    /// the first one's. FP8 codes (u8) cannot share a tensor with float weights: a mix is refused
    /// unless `requested` dequantizes them.
    func stackedType(_ types: [DType], requested: DType?, label: String) throws -> DType {
        if let requested { return requested }
        guard let first = types.first else { return .f32 }
        if types.contains(.u8) && types.contains(where: { $0 != .u8 }) {
            throw CheckpointError(
                "\(label): some tensors are \(Self.fp8DType) and some float; FP8 codes and float weights cannot share a tensor: "
                    + "load with a weightType (f32, f16, bf16) to dequantize the FP8 ones")
        }
        return first
    }

    /// The file's bytes of elements `elements` of tensor `name` as a tensor of `target` holds
    /// them: the stored bytes (FP8 codes as u8), converted to another float type, or FP8
    /// dequantized to a float type (for `verify`).
    func loadedBytes(_ name: String, elements: Range<Int>, as target: DType) throws -> [UInt8] {
        let file = try file(for: name)
        let e = try file.entry(name)
        let stored = file.entries[name]!.dtype == Self.fp8DType ? DType.u8 : try file.dtype(of: name)
        let raw = try file.bytes(name, elements: elements)
        if stored == target || elements.isEmpty { return raw }
        guard let to = target.floatStorage else {
            throw CheckpointError("'\(name)' (\(e.dtype)) does not load as \(target)")
        }
        var out = [UInt8](repeating: 0, count: elements.count * target.size)
        if stored == .u8 {
            let scaleName = Self.scaleName(of: name)
            let scales = try self.file(for: scaleName).floats(scaleName).values
            raw.withUnsafeBytes { src in
                out.withUnsafeMutableBytes { dst in
                    Quantization.dequantizeFP8(
                        codes: src, first: elements.lowerBound, count: elements.count, k: e.shape.last ?? 1, scales: scales,
                        into: dst, as: to)
                }
            }
        } else {
            raw.withUnsafeBytes { src in
                out.withUnsafeMutableBytes { dst in
                    Reference.convert(src, from: stored.floatStorage!, into: dst, as: to, count: elements.count)
                }
            }
        }
        return out
    }

    /// The block-scale tensors `verify` compares for weights loaded as FP8 codes: (scale tensor
    /// name, loaded tensor, first element).
    func scalePlaces(_ weights: MoEWeights, layer: Int) throws -> [(String, Tensor, Int)] {
        guard let fp8 = weights.fp8 else { return [] }
        let c = try moeConfig(layer: layer)
        var places: [(String, Tensor, Int)] = []
        func add(_ names: [String], _ t: Tensor?, expert: Int) {
            guard let t else { return }
            var at = expert * (t.count / max(1, t.shape[0]))
            for n in names {
                let s = Self.scaleName(of: n)
                places.append((s, t, at))
                at += (try? file(for: s).entry(s).shape.reduce(1, *)) ?? 0
            }
        }
        for e in 0..<c.experts {
            let n = expertNames(layer, e)
            add([n.gate, n.up], fp8.gateUp, expert: e)
            add([n.down], fp8.down, expert: e)
        }
        let sp = prefix(layer) + "shared_experts."
        add([sp + "gate_proj.weight", sp + "up_proj.weight"], fp8.sharedGateUp, expert: 0)
        add([sp + "down_proj.weight"], fp8.sharedDown, expert: 0)
        return places
    }

    // MARK: Loading expert by expert

    /// Loads layer `layer` with its routed and shared experts' weights quantized on `backend`
    /// (`quantize`: int8, int4, mxfp4; `.none` is `loadLayer` without it), one expert at a time
    /// as the streaming loader goes: each expert's gate|up (and then down) is written into a
    /// one-expert float tensor (`weightType`, else the stored type; FP8 experts are dequantized,
    /// to f32 unless `weightType` says otherwise), quantized and packed there
    /// (`prepareWeights(quantize:)`) and copied into its place in the stacked quantized tensors.
    /// The backend never holds the float weights of more than one expert, the host no more than
    /// the staging buffer (MXFP4 excepted: it converts one expert's floats on the host). Each
    /// expert is quantized exactly as the whole stacked tensor would be (rows are independent).
    /// The router and the shared-expert gate stay float. (gpt-oss stores its experts fused, not
    /// one tensor per expert: its float layers load whole and are quantized whole.)
    public func loadLayer(
        _ layer: Int, backend: any ComputeBackend, pack: Bool = true, weightType: DType? = nil, quantize: WeightQuantization,
        stagingBytes: Int = defaultStagingBytes, progress: ((LoadProgress) -> Void)? = nil
    ) throws -> MoELayer {
        if quantize == .none {
            return try loadLayer(
                layer, backend: backend, pack: pack, weightType: weightType, stagingBytes: stagingBytes, progress: progress)
        }
        // The quantization against the layer's row lengths, before anything is read or allocated.
        let c = try moeConfig(layer: layer)
        for k in [c.hidden, c.ffn] + (c.sharedFFN > 0 ? [c.sharedFFN] : []) {
            do {
                try quantize.check(rowLength: k)
            } catch {
                throw CheckpointError("layer \(layer) cannot be quantized to \(quantize): \(error)")
            }
        }
        if modelType == "gpt_oss" {
            // Fused expert tensors (not one per expert): loaded whole, then quantized whole (MXFP4 as stored is refused).
            let weights = try loadWeights(
                layer, backend: backend, weightType: weightType, stagingBytes: stagingBytes, progress: progress)
            return try MoELayer(backend: backend, config: try moeConfig(layer: layer), weights: weights, pack: pack, quantize: quantize)
        }
        return try loadByExpert(
            layer, backend: backend, pack: pack, weightType: weightType, quantize: quantize, stagingBytes: stagingBytes,
            progress: progress)
    }

    /// Whether layer `layer`'s routed experts are stored as FP8 (expert 0's gate is F8_E4M3).
    func fp8Experts(_ layer: Int) throws -> Bool {
        _ = try moeConfig(layer: layer)  // a dense or missing layer says so first
        if modelType == "gpt_oss" { return false }  // fused MXFP4 or float experts (Checkpoint+GptOss.swift)
        let name = expertNames(layer, 0).gate
        return try file(for: name).entry(name).dtype == Self.fp8DType
    }

    /// Loads layer `layer` one expert at a time, each prepared on the backend in a one-expert
    /// tensor and copied into its place of the stacked prepared weights: quantized from floats
    /// (`quantize` other than `.none`, see `loadLayer(quantize:)`), or, with `.none`, FP8 experts
    /// kept as FP8 (each expert's codes and block scales repacked by `prepareFP8`), so the
    /// backend never holds a second copy of every expert's codes. Float shared experts (with
    /// `.none`) load whole and are prepared as `MoELayer` does.
    func loadByExpert(
        _ layer: Int, backend: any ComputeBackend, pack: Bool, weightType: DType?, quantize: WeightQuantization,
        stagingBytes: Int, progress: ((LoadProgress) -> Void)?
    ) throws -> MoELayer {
        let c = try moeConfig(layer: layer)
        if let weightType, !weightType.isFloatingPoint {
            throw CheckpointError("weight type \(weightType): expected f32, f16 or bf16")
        }
        let h = c.hidden
        let f = c.ffn
        let p = prefix(layer)
        // Every tensor checked (present, shaped, a float or FP8 type) before any allocation.
        let routerName = p + "gate.weight"
        let routerType = try storedType(routerName, shape: [c.experts, h])
        var experts: [(gate: String, up: String, down: String)] = []
        var types: [DType] = []
        for e in 0..<c.experts {
            let n = expertNames(layer, e)
            types += [try weightStorage(n.gate, shape: [f, h]), try weightStorage(n.up, shape: [f, h]),
                      try weightStorage(n.down, shape: [h, f])]
            experts.append(n)
        }
        /// The type one expert is written in: float to quantize from (FP8 dequantized, to f32
        /// unless asked otherwise), or, unquantized, u8 FP8 codes.
        func scratchType(_ types: [DType], _ label: String) throws -> DType {
            if quantize != .none { return weightType ?? types.first(where: { $0 != .u8 }) ?? .f32 }
            return try stackedType(types, requested: weightType, label: label)
        }
        let routedType = try scratchType(types, "layer \(layer) routed experts")
        guard quantize != .none || routedType == .u8 else {
            throw CheckpointError("layer \(layer): loading expert by expert needs FP8 experts or a quantization")
        }
        let biasName = p + "gate.e_score_correction_bias"
        if c.routerBias { _ = try storedType(biasName, shape: [c.experts]) }
        let sp = modelType == "deepseek_v3" ? p + "shared_experts." : p + "shared_expert."
        let shared = (gate: sp + "gate_proj.weight", up: sp + "up_proj.weight", down: sp + "down_proj.weight")
        let sharedGateName = p + "shared_expert_gate.weight"
        var sharedType = routedType
        if c.sharedFFN > 0 {
            sharedType = try scratchType(
                [try weightStorage(shared.gate, shape: [c.sharedFFN, h]), try weightStorage(shared.up, shape: [c.sharedFFN, h]),
                 try weightStorage(shared.down, shape: [h, c.sharedFFN])], "layer \(layer) shared experts")
            if c.sharedGate { _ = try storedType(sharedGateName, shape: [1, h]) }
        }
        let (twoF, overflow) = f.multipliedReportingOverflow(by: 2)
        if overflow { throw CheckpointError("layer \(layer): 2 × ffn overflows") }

        let loader = try Loader(checkpoint: self, backend: backend, stagingBytes: stagingBytes, progress: progress)
        let start = Date()
        let routerWeight = try loader.load([routerName], shape: [c.experts, h], dtype: routerType, label: "router weight")
        let router = try backend.prepareWeights(try routerWeight.reshaped([1, c.experts, h]), swiglu: false, pack: pack)
        let bias = c.routerBias
            ? try loader.load([biasName], shape: [c.experts], dtype: .f32, label: "router correction bias") : nil
        let gateUp = try loader.prepareByExpert(
            count: c.experts, names: { [experts[$0].gate, experts[$0].up] }, rows: twoF, k: h, swiglu: true, type: routedType,
            quantize, label: "expert gate|up weight")
        let down = try loader.prepareByExpert(
            count: c.experts, names: { [experts[$0].down] }, rows: h, k: f, swiglu: false, type: routedType, quantize,
            label: "expert down weight")
        var sharedGateUp: ExpertWeights?
        var sharedDown: ExpertWeights?
        var sharedGate: ExpertWeights?
        if c.sharedFFN > 0 {
            if quantize == .none && sharedType != .u8 {  // float shared experts beside FP8 routed ones
                let gu = try loader.load(
                    [shared.gate, shared.up], shape: [1, 2 * c.sharedFFN, h], dtype: sharedType,
                    label: "shared expert gate|up weight")
                let d = try loader.load([shared.down], shape: [1, h, c.sharedFFN], dtype: sharedType, label: "shared expert down weight")
                sharedGateUp = try backend.prepareWeights(gu, swiglu: true, pack: pack)
                sharedDown = try backend.prepareWeights(d, swiglu: false, pack: pack)
            } else {
                sharedGateUp = try loader.prepareByExpert(
                    count: 1, names: { _ in [shared.gate, shared.up] }, rows: 2 * c.sharedFFN, k: h, swiglu: true,
                    type: sharedType, quantize, label: "shared expert gate|up weight")
                sharedDown = try loader.prepareByExpert(
                    count: 1, names: { _ in [shared.down] }, rows: h, k: c.sharedFFN, swiglu: false, type: sharedType,
                    quantize, label: "shared expert down weight")
            }
            if c.sharedGate {
                let gateType = try storedType(sharedGateName, shape: [1, h])
                let g = try loader.load([sharedGateName], shape: [1, h], dtype: gateType, label: "shared expert gate")
                sharedGate = try backend.prepareWeights(try g.reshaped([1, 1, h]), swiglu: false, pack: pack)
            }
        }
        try backend.synchronize()
        return try MoELayer(
            backend: backend, config: c, router: router, bias: bias, gateUp: gateUp, down: down, sharedGateUp: sharedGateUp,
            sharedDown: sharedDown, sharedGate: sharedGate, packSeconds: Date().timeIntervalSince(start))
    }
}

extension HFCheckpoint.Loader {
    /// A new `[experts, parts·ceil(rows/128), ceil(k/128)]` f32 tensor for the block scales of
    /// stacked FP8 weights (`parts` 2 for a fused gate|up).
    func allocateScales(experts: Int, rows: Int, k: Int, parts: Int, label: String) throws -> Tensor {
        try allocate([experts, parts * HFCheckpoint.blocks(rows), HFCheckpoint.blocks(k)], .f32, label)
    }

    /// Writes the block scales of FP8 weights `weights` one after the other into expert
    /// `expert`'s slice of `scales`.
    func copyScales(_ weights: [String], into scales: Tensor, expert: Int) throws {
        var at = expert * (scales.count / max(1, scales.shape[0]))
        for w in weights {
            let s = HFCheckpoint.scaleName(of: w)
            try copy(s, into: scales, atElement: at)
            at += try checkpoint.file(for: s).entry(s).shape.reduce(1, *)
        }
    }

    /// Writes F8_E4M3 weight `name` into `tensor` from element `base`: its codes as they are
    /// (a u8 tensor), or dequantized with its block scales (a float tensor), piece by piece
    /// through the staging buffers.
    func copyFP8(_ name: String, into tensor: Tensor, atElement base: Int) throws {
        let file = try checkpoint.file(for: name)
        let shape = try file.entry(name).shape
        guard shape.count == 2 else {
            throw CheckpointError("FP8 weight '\(name)' has shape \(shape); expected [out, in]")
        }
        _ = try checkpoint.weightStorage(name, shape: shape)  // config and scales checked
        /// A NaN code (S.1111.111: e4m3fn has no infinities) is corrupt data, refused by element.
        func checkCodes(_ piece: UnsafeRawBufferPointer, _ first: Int) throws {
            if let i = piece.firstIndex(where: { $0 & 0x7F == 0x7F }) {
                throw CheckpointError(
                    "FP8 weight '\(name)' element \(first + i) (row \((first + i) / shape[1]), column \((first + i) % shape[1])) "
                        + "is the e4m3fn NaN code 0x\(String(piece[i], radix: 16))")
            }
        }
        if tensor.dtype == .u8 {
            try file.read(name, through: staging) { piece, first in
                try checkCodes(piece, first)
                try backend.write(piece, into: tensor, atElement: base + first)
                state.writtenBytes += piece.count
                progress?(state)
            }
            return
        }
        guard let storage = tensor.dtype.floatStorage else {
            throw CheckpointError("FP8 weight '\(name)' cannot load into a \(tensor.dtype) tensor")
        }
        let scaleName = HFCheckpoint.scaleName(of: name)
        let scales = try checkpoint.file(for: scaleName).floats(scaleName).values  // ceil(out/128)·ceil(in/128): small
        let needed = staging.capacity * tensor.dtype.size
        if converted == nil || converted!.capacity < needed { converted = try StagingBuffer(capacity: max(needed, 8)) }
        try file.read(name, through: staging) { piece, first in
            try checkCodes(piece, first)
            let out = UnsafeMutableRawBufferPointer(rebasing: converted!.bytes[0..<piece.count * tensor.dtype.size])
            Quantization.dequantizeFP8(
                codes: piece, first: first, count: piece.count, k: shape[1], scales: scales, into: out, as: storage)
            try backend.write(UnsafeRawBufferPointer(out), into: tensor, atElement: base + first)
            state.writtenBytes += out.count
            progress?(state)
        }
    }

    /// Stacked weights `[count, rows, k]` prepared one expert at a time: expert e's tensors
    /// `names(e)` (one after the other: gate then up for a fused gate|up) are written into a
    /// one-expert tensor of `type`, prepared there (u8: FP8 codes with their block scales,
    /// `prepareFP8`; a float type: `prepareWeights(quantize:)`), and the prepared codes, scales
    /// and zeros copied into expert e's place of stacked tensors allocated for all experts
    /// (prepared layouts are expert-major, so a slice is one expert's).
    func prepareByExpert(
        count: Int, names: (Int) -> [String], rows: Int, k: Int, swiglu: Bool, type: DType, _ q: WeightQuantization,
        label: String
    ) throws -> ExpertWeights {
        let scratch = try allocate([1, rows, k], type, label + " (one expert)")
        let tensorRows = swiglu ? rows / 2 : rows
        let scales = type == .u8
            ? try allocateScales(experts: 1, rows: tensorRows, k: k, parts: swiglu ? 2 : 1, label: label + " scale_inv (one expert)")
            : nil
        var stacked: (codes: Tensor, scales: Tensor, zeros: Tensor?, first: QuantizedWeights)?
        for e in 0..<count {
            for (i, name) in names(e).enumerated() { try copy(name, into: scratch, atElement: i * tensorRows * k) }
            let piece: ExpertWeights
            if let scales {
                try copyScales(names(e), into: scales, expert: 0)
                piece = try backend.prepareFP8(codes: scratch, scaleInv: scales, swiglu: swiglu)
            } else {
                do {
                    piece = try backend.prepareWeights(scratch, swiglu: swiglu, pack: true, quantize: q)
                } catch SwitchyardError.invalidValues(_, let detail) {
                    // (the scratch holds this one expert: its "expert 0" is expert e, and its rows
                    // are the tensors' rows in order)
                    throw CheckpointError(
                        "\(label) of expert \(e) (\(names(e).joined(separator: ", "))) cannot be quantized to \(q): \(detail)")
                }
            }
            guard let pq = piece.quantized else {
                throw SwitchyardError.unsupported("\(label): quantization \(q) gave float weights")
            }
            if stacked == nil {
                func whole(_ t: Tensor, _ what: String) throws -> Tensor {
                    try allocate([count] + t.shape.dropFirst(), t.dtype, "\(label) \(what)")
                }
                stacked = (try whole(pq.codes, "codes"), try whole(pq.scales, "scales"),
                           try pq.zeros.map { try whole($0, "zeros") }, pq)
            }
            try backend.copyExpert(pq.codes, into: stacked!.codes, expert: e)
            try backend.copyExpert(pq.scales, into: stacked!.scales, expert: e)
            if let z = pq.zeros, let all = stacked!.zeros { try backend.copyExpert(z, into: all, expert: e) }
        }
        let s = stacked!
        let quantized = QuantizedWeights(
            format: s.first.format, codes: s.codes, scales: s.scales, zeros: s.zeros, group: s.first.group,
            groups: s.first.groups, panelWidth: s.first.panelWidth, interleaved: s.first.interleaved)
        return ExpertWeights(
            quantized: quantized, weight: nil, experts: count, weightRows: rows, inFeatures: k, swiglu: swiglu)
    }

}

extension ComputeBackend {
    /// Expert weights prepared for the grouped matmul: FP8 codes with their block scales
    /// (`prepareFP8`), or float weights (`prepareWeights(quantize:)`). FP8 weights are not
    /// quantized again: load them with a `weightType` to dequantize them first.
    func prepareExperts(_ w: Tensor, scaleInv: Tensor?, swiglu: Bool, pack: Bool, quantize: WeightQuantization, label: String)
        throws -> ExpertWeights
    {
        guard let scaleInv else { return try prepareWeights(w, swiglu: swiglu, pack: pack, quantize: quantize) }
        if quantize != .none {
            throw SwitchyardError.unsupported(
                "\(label) are FP8 (e4m3 with 128 × 128 block scales) already: quantizing them to \(quantize) is refused; load "
                    + "the checkpoint with a weightType (f32, f16, bf16) to dequantize them first")
        }
        return try prepareFP8(codes: w, scaleInv: scaleInv, swiglu: swiglu)
    }

    /// Copies one expert's `[1, ...]` tensor into expert `expert`'s slice of `[E, ...]` `whole`
    /// (on the device for an OpenCL backend).
    func copyExpert(_ piece: Tensor, into whole: Tensor, expert: Int) throws {
        guard piece.dtype == whole.dtype, piece.shape.first == 1, !whole.shape.isEmpty,
            Array(piece.shape.dropFirst()) == Array(whole.shape.dropFirst()), (0..<whole.shape[0]).contains(expert)
        else {
            throw SwitchyardError.shape(
                argument: "one expert's tensor", expected: "[1] + \(Array(whole.shape.dropFirst())) \(whole.dtype)",
                actual: piece.shape)
        }
        if let cl = self as? OpenCLBackend {
            try cl.deviceBuffer(whole, "stacked expert tensor").copy(
                from: try cl.deviceBuffer(piece, "one expert's tensor"), bytes: piece.byteCount,
                destinationOffset: expert * piece.byteCount)
        } else {
            let bytes = try self.bytes(piece)
            try bytes.withUnsafeBytes { try write($0, into: whole, atElement: expert * piece.count) }
        }
    }
}

extension MoELayer {
    /// The routed experts' weights as prepared on the backend (gate|up, down): their format,
    /// and their codes and scales when quantized.
    public var expertWeights: (gateUp: ExpertWeights, down: ExpertWeights) { (gateUp, down) }
}

extension SafeTensorsFile {
    /// Writes tensors given as stored bytes (`dtype` a safetensors dtype string: "F8_E4M3",
    /// "F32", "BF16", ...) as a safetensors file; the byte counts are checked against the shapes.
    public static func write(raw tensors: [(name: String, dtype: String, shape: [Int], bytes: [UInt8])], to path: String)
        throws
    {
        var header: [String: Any] = ["__metadata__": ["format": "pt"]]
        var data = Data()
        for t in tensors {
            guard let size = elementSizes[t.dtype], t.shape.allSatisfy({ $0 >= 0 }),
                t.bytes.count == t.shape.reduce(size, *)
            else {
                throw CheckpointError("'\(t.name)': \(t.bytes.count) bytes for shape \(t.shape) of \(t.dtype)")
            }
            header[t.name] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [data.count, data.count + t.bytes.count]]
            data.append(contentsOf: t.bytes)
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        var file = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(json)
        file.append(data)
        try file.write(to: URL(fileURLWithPath: path))
    }
}
