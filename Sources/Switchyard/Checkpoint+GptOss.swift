import Foundation
import SwitchyardReference

// gpt-oss (Hugging Face `model_type: "gpt_oss"`, `GptOssForCausalLM`) MoE layers, as stored:
//
//   model.layers.N.mlp.router.weight [E, hidden], router.bias [E]
//   MXFP4:  experts.gate_up_proj_blocks [E, 2·ffn, hidden/32, 16] u8, gate_up_proj_scales [E, 2·ffn, hidden/32] u8,
//           experts.down_proj_blocks [E, hidden, ffn/32, 16] u8, down_proj_scales [E, hidden, ffn/32] u8
//           (two e2m1 values per byte, low nibble first; e8m0 scales: 2^(s − 127); rows = outputs)
//   dense:  experts.gate_up_proj [E, hidden, 2·ffn], experts.down_proj [E, ffn, hidden] (in × out,
//           transposed against the other model types and the MXFP4 blocks)
//   experts.gate_up_proj_bias [E, 2·ffn], experts.down_proj_bias [E, hidden]
//
// with gate and up interleaved along 2·ffn (gate = 0, 2, 4, ...; up = 1, 3, 5, ...). The layer is
// logits = x·Wᵀ + b, top-k over the logits, softmax over the k chosen; per expert
// g = min(gate, limit), u = clamp(up, ±limit), h = (u + 1)·g·σ(α·g), y = h·W_down + b_down
// (`swiglu_alpha` 1.702 and `swiglu_limit` 7 by default). See transformers'
// models/gpt_oss/modeling_gpt_oss.py and integrations/mxfp4.py.
//
// How they load: the MXFP4 blocks and scales stream byte for byte into u8 tensors (the gate|up
// rows stay interleaved: `prepareMXFP4(interleavedGateUp:)` de-interleaves them once when it
// repacks); the dense [E, in, out] experts are transposed and de-interleaved on the host one
// expert at a time (one expert's slice of host memory) into [E, out, in] gate rows first; the
// biases (f32 on the device) de-interleaved the same way; the router bias becomes the router
// matmul's bias.

extension HFCheckpoint {
    /// Whether layer `layer`'s experts are stored in MXFP4 (`*_blocks`/`*_scales`) or dense.
    enum GptOssStorage { case mxfp4, dense }

    /// config.json's gpt-oss sizes and activation parameters.
    func gptOssConfig(hidden: Int) throws -> MoEConfig {
        let experts = try int("num_local_experts")
        let k = try int("num_experts_per_tok")
        let ffn = try int("intermediate_size")
        guard experts >= 1, (1...experts).contains(k), ffn >= 1, hidden >= 1 else {
            throw CheckpointError(
                "config.json: gpt_oss sizes num_local_experts \(experts), num_experts_per_tok \(k), intermediate_size \(ffn), "
                    + "hidden_size \(hidden): expected positive sizes and 1 ≤ k ≤ experts")
        }
        let alpha = double("swiglu_alpha", default: 1.702)
        let limit = double("swiglu_limit", default: 7.0)
        guard Float(alpha).isFinite, Float(limit).isFinite, limit >= 0 else {
            throw CheckpointError("config.json: swiglu_alpha \(alpha), swiglu_limit \(limit): expected finite values, the limit ≥ 0")
        }
        return .gptOss(hidden: hidden, ffn: ffn, experts: experts, k: k, alpha: Float(alpha), limit: Float(limit))
    }

    func gptOssNames(_ layer: Int) -> (router: String, routerBias: String, experts: String) {
        let p = prefix(layer)
        return (p + "router.weight", p + "router.bias", p + "experts.")
    }

    /// The storage of layer `layer`'s experts: MXFP4 when its `gate_up_proj_blocks` is present,
    /// dense when `gate_up_proj` is, else an error naming both.
    func gptOssStorage(_ layer: Int) throws -> GptOssStorage {
        let e = gptOssNames(layer).experts
        if (try? path(of: e + "gate_up_proj_blocks")) != nil { return .mxfp4 }
        if (try? path(of: e + "gate_up_proj")) != nil { return .dense }
        throw CheckpointError(
            "\(folder): layer \(layer) has neither '\(e)gate_up_proj_blocks' (MXFP4) nor '\(e)gate_up_proj' (dense) experts")
    }

    /// Checks an MXFP4 tensor (U8, exactly `shape`) without reading it.
    func checkBytes(_ name: String, shape: [Int]) throws {
        let e = try file(for: name).entry(name)
        guard e.dtype == "U8" else { throw CheckpointError("tensor '\(name)' has dtype \(e.dtype); expected U8 (MXFP4)") }
        guard e.shape == shape else { throw CheckpointError("tensor '\(name)' has shape \(e.shape); expected \(shape)") }
        guard e.end - e.begin == (try Tensor.checkedCount(shape, dtype: .u8, name)) else {
            throw CheckpointError("tensor '\(name)' holds \(e.end - e.begin) bytes; expected \(shape.reduce(1, *))")
        }
    }

    /// Every tensor of a gpt-oss layer with its expected shape and whether it is MXFP4 bytes, in load order.
    func gptOssTensorList(_ layer: Int) throws -> [(name: String, shape: [Int], bytes: Bool)] {
        let c = try moeConfig(layer: layer)
        let (h, f, e) = (c.hidden, c.ffn, c.experts)
        let (twoF, overflow) = f.multipliedReportingOverflow(by: 2)
        if overflow { throw CheckpointError("layer \(layer): 2 × ffn overflows") }
        let n = gptOssNames(layer)
        var list: [(String, [Int], Bool)] = [(n.router, [e, h], false), (n.routerBias, [e], false)]
        switch try gptOssStorage(layer) {
        case .mxfp4:
            guard h % 32 == 0, f % 32 == 0 else {
                throw CheckpointError("layer \(layer): MXFP4 experts need hidden_size (\(h)) and intermediate_size (\(f)) multiples of 32")
            }
            list += [(n.experts + "gate_up_proj_blocks", [e, twoF, h / 32, 16], true),
                     (n.experts + "gate_up_proj_scales", [e, twoF, h / 32], true),
                     (n.experts + "down_proj_blocks", [e, h, f / 32, 16], true),
                     (n.experts + "down_proj_scales", [e, h, f / 32], true)]
        case .dense:
            list += [(n.experts + "gate_up_proj", [e, h, twoF], false), (n.experts + "down_proj", [e, f, h], false)]
        }
        list += [(n.experts + "gate_up_proj_bias", [e, twoF], false), (n.experts + "down_proj_bias", [e, h], false)]
        return list
    }

    /// `layerTensors` for gpt_oss: every tensor checked (present, shaped, typed) with its stored size.
    func gptOssLayerTensors(_ layer: Int) throws -> [(name: String, bytes: Int)] {
        try gptOssTensorList(layer).map { name, shape, bytes in
            if bytes { try checkBytes(name, shape: shape) } else { _ = try storedType(name, shape: shape) }
            let e = try file(for: name).entry(name)
            return (name, e.end - e.begin)
        }
    }

    /// Row `j` of an interleaved gate|up axis of width 2·ffn, gate rows first.
    static func deinterleaved(_ j: Int, ffn: Int) -> Int { j % 2 == 0 ? j / 2 : ffn + j / 2 }

    /// `loadWeights` for gpt_oss (see the file comment for the layouts).
    func gptOssLoadWeights(
        _ layer: Int, backend: any ComputeBackend, experts chosen: [Int]?, weightType: DType?, stagingBytes: Int,
        progress: ((LoadProgress) -> Void)?
    ) throws -> MoEWeights {
        let c = try moeConfig(layer: layer)
        let list = chosen ?? Array(0..<c.experts)
        for e in list where !(0..<c.experts).contains(e) {
            throw CheckpointError("layer \(layer): expert \(e) is out of range 0..<\(c.experts)")
        }
        if let weightType, !weightType.isFloatingPoint {
            throw CheckpointError("weight type \(weightType): expected f32, f16 or bf16")
        }
        let (h, f) = (c.hidden, c.ffn)
        // Every tensor checked before anything is allocated.
        let tensors = try gptOssTensorList(layer)
        var types: [String: DType] = [:]
        for (name, shape, bytes) in tensors {
            if bytes { try checkBytes(name, shape: shape) } else { types[name] = try storedType(name, shape: shape) }
        }
        let storage = try gptOssStorage(layer)
        let n = gptOssNames(layer)
        let loader = try Loader(checkpoint: self, backend: backend, stagingBytes: stagingBytes, progress: progress)
        let router = try loader.load([n.router], shape: [c.experts, h], dtype: types[n.router]!, label: "router weight")
        var weights = MoEWeights(router: router, gateUp: router, down: router)
        weights.routerLinearBias = try loader.load([n.routerBias], shape: [c.experts], dtype: .f32, label: "router bias")

        switch storage {
        case .mxfp4:
            func load(_ name: String, _ shape: [Int], _ label: String, scales: Bool = false) throws -> Tensor {
                let perExpert = shape.dropFirst().reduce(1, *)
                let t = try loader.allocate([list.count] + Array(shape.dropFirst()), .u8, label)
                for (i, e) in list.enumerated() {
                    try copyElements(
                        name, e * perExpert..<(e + 1) * perExpert, into: t, at: i * perExpert, loader,
                        refusingNaNScales: scales ? shape : nil)
                }
                return t
            }
            weights.gateUp = try load(n.experts + "gate_up_proj_blocks", [c.experts, 2 * f, h / 32, 16], "expert gate|up MXFP4 blocks")
            weights.gateUpScales = try load(
                n.experts + "gate_up_proj_scales", [c.experts, 2 * f, h / 32], "expert gate|up MXFP4 scales", scales: true)
            weights.down = try load(n.experts + "down_proj_blocks", [c.experts, h, f / 32, 16], "expert down MXFP4 blocks")
            weights.downScales = try load(
                n.experts + "down_proj_scales", [c.experts, h, f / 32], "expert down MXFP4 scales", scales: true)
            weights.gateUpInterleaved = true
        case .dense:
            let gu = n.experts + "gate_up_proj"
            let dn = n.experts + "down_proj"
            let wt = weightType ?? types[gu]!
            weights.gateUp = try loader.allocate([list.count, 2 * f, h], wt, "expert gate|up weight")
            weights.down = try loader.allocate([list.count, h, f], wt, "expert down weight")
            for (i, e) in list.enumerated() {
                // [h, 2f] (in × out, interleaved) → [2f, h] gate rows first; [f, h] → [h, f].
                try transposeExpert(gu, expert: e, rows: h, cols: 2 * f, into: weights.gateUp, at: i, loader) {
                    Self.deinterleaved($0, ffn: f)
                }
                try transposeExpert(dn, expert: e, rows: f, cols: h, into: weights.down, at: i, loader) { $0 }
            }
        }
        // Biases in f32 (exact from bf16), the gate|up one de-interleaved; small ([E, 2·ffn], [E, hidden]).
        func bias(_ name: String, width: Int, row: (Int) -> Int) throws -> Tensor {
            let stored = try file(for: name).floats(name).values
            var values = [Float](repeating: 0, count: list.count * width)
            for (i, e) in list.enumerated() {
                for j in 0..<width { values[i * width + row(j)] = stored[e * width + j] }
            }
            loader.state.allocatedBytes += values.count * 4
            let t = try backend.tensor(values, shape: [list.count, width], dtype: .f32)
            loader.state.writtenBytes += values.count * 4
            progress?(loader.state)
            return t
        }
        weights.gateUpBias = try bias(n.experts + "gate_up_proj_bias", width: 2 * f) { Self.deinterleaved($0, ffn: f) }
        weights.downBias = try bias(n.experts + "down_proj_bias", width: h) { $0 }
        return weights
    }

    /// Copies elements `range` of tensor `name` (stored type = the tensor's, MXFP4 bytes) into
    /// `tensor` from element `offset`, in pieces of the loader's staging size.
    /// `refusingNaNScales`: the tensor is e8m0 scales of this shape `[E, rows, blocks]`, and a
    /// byte 0xFF (e8m0's NaN: its whole block of 32 weights NaN, every token routed to the expert
    /// NaN) is a corrupt file, refused by position, as the FP8 path refuses NaN codes.
    func copyElements(
        _ name: String, _ range: Range<Int>, into tensor: Tensor, at offset: Int, _ loader: Loader,
        refusingNaNScales shape: [Int]? = nil
    ) throws {
        let size = tensor.dtype.size
        let step = max(1, loader.staging.capacity / size)
        var start = range.lowerBound
        while start < range.upperBound {
            let end = min(range.upperBound, start + step)
            let bytes = try file(for: name).bytes(name, elements: start..<end)
            if let shape, shape.count == 3, let i = bytes.firstIndex(of: 0xFF) {
                let at = start + i
                let (blocks, rows) = (max(shape[2], 1), max(shape[1], 1))
                throw CheckpointError(
                    "'\(name)': the scale of expert \(at / blocks / rows), row \(at / blocks % rows), block \(at % blocks) "
                        + "is 0xFF, e8m0's NaN (a corrupt file: its 32 weights would be NaN)")
            }
            try bytes.withUnsafeBytes { try loader.backend.write($0, into: tensor, atElement: offset + start - range.lowerBound) }
            loader.state.writtenBytes += bytes.count
            loader.progress?(loader.state)
            start = end
        }
    }

    /// Expert `e` of a stored `[E, rows, cols]` tensor written transposed into slot `slot` of
    /// `tensor [*, cols, rows]`, stored column j going to row `row(j)`; converted to the tensor's
    /// type. Host memory: one expert's slice (and the staging pieces it is read in).
    func transposeExpert(
        _ name: String, expert e: Int, rows: Int, cols: Int, into tensor: Tensor, at slot: Int, _ loader: Loader,
        row: (Int) -> Int
    ) throws {
        let stored = try file(for: name).dtype(of: name)
        let size = stored.size
        let count = rows * cols
        var out = [UInt8](repeating: 0, count: count * size)
        let step = max(1, loader.staging.capacity / size)
        var start = 0
        while start < count {
            let end = min(count, start + step)
            let piece = try file(for: name).bytes(name, elements: (e * count + start)..<(e * count + end))
            for i in start..<end {
                let (r, j) = (i / cols, i % cols)
                let to = (row(j) * rows + r) * size
                let from = (i - start) * size
                for b in 0..<size { out[to + b] = piece[from + b] }
            }
            start = end
        }
        let target = tensor.dtype
        if target != stored {
            var converted = [UInt8](repeating: 0, count: count * target.size)
            out.withUnsafeBytes { src in
                converted.withUnsafeMutableBytes { dst in
                    Reference.convert(src, from: stored.floatStorage!, into: dst, as: target.floatStorage!, count: count)
                }
            }
            out = converted
        }
        try out.withUnsafeBytes { try loader.backend.write($0, into: tensor, atElement: slot * count) }
        loader.state.writtenBytes += out.count
        loader.progress?(loader.state)
    }

    /// `verify` for gpt_oss: runs of every tensor's stored elements against where the load put
    /// them (MXFP4 bytes in place; dense experts transposed and de-interleaved; biases in f32).
    func gptOssVerify(_ w: MoEWeights, layer: Int, backend: any ComputeBackend, regions: Int, run: Int) throws -> Int {
        let c = try moeConfig(layer: layer)
        let (h, f) = (c.hidden, c.ffn)
        let n = gptOssNames(layer)
        let x = n.experts
        var places: [(String, Tensor?, (Int) -> Int)] = [(n.router, w.router, { $0 }), (n.routerBias, w.routerLinearBias, { $0 })]
        if w.gateUpScales != nil {
            places += [(x + "gate_up_proj_blocks", w.gateUp, { $0 }), (x + "gate_up_proj_scales", w.gateUpScales, { $0 }),
                       (x + "down_proj_blocks", w.down, { $0 }), (x + "down_proj_scales", w.downScales, { $0 })]
        } else {
            places += [
                (x + "gate_up_proj", w.gateUp, { i in
                    let (e, r) = (i / (h * 2 * f), i % (h * 2 * f))
                    return e * 2 * f * h + Self.deinterleaved(r % (2 * f), ffn: f) * h + r / (2 * f)
                }),
                (x + "down_proj", w.down, { i in
                    let (e, r) = (i / (f * h), i % (f * h))
                    return e * h * f + (r % h) * f + r / h
                }),
            ]
        }
        places += [(x + "gate_up_proj_bias", w.gateUpBias, { i in (i / (2 * f)) * 2 * f + Self.deinterleaved(i % (2 * f), ffn: f) }),
                   (x + "down_proj_bias", w.downBias, { $0 })]
        var compared = 0
        for (name, loaded, map) in places {
            guard let tensor = loaded else { throw CheckpointError("'\(name)' was not loaded") }
            let file = try file(for: name)
            let entry = try file.entry(name)
            let count = entry.shape.reduce(1, *)
            let stored: DType = entry.dtype == "U8" ? .u8 : try file.dtype(of: name)
            let length = min(run, count)
            let k = max(1, regions)
            var starts = Set<Int>()
            for i in 0..<k { starts.insert(k == 1 ? 0 : (count - length) * i / (k - 1)) }
            for start in starts.sorted() {
                var want = try file.bytes(name, elements: start..<(start + length))
                let size = tensor.dtype.size
                if stored != tensor.dtype {
                    var out = [UInt8](repeating: 0, count: length * size)
                    want.withUnsafeBytes { src in
                        out.withUnsafeMutableBytes { dst in
                            Reference.convert(src, from: stored.floatStorage!, into: dst, as: tensor.dtype.floatStorage!, count: length)
                        }
                    }
                    want = out
                }
                let targets = (start..<(start + length)).map(map)
                let lo = targets.min()!
                let got = try backend.bytes(tensor, elements: lo..<(targets.max()! + 1))
                for (i, t) in targets.enumerated() where got[((t - lo) * size)..<((t - lo + 1) * size)] != want[(i * size)..<((i + 1) * size)] {
                    throw CheckpointError(
                        "'\(name)' element \(start + i) differs on \(backend.name) from the file (loaded at element \(t) of \(tensor))")
                }
                compared += 1
            }
        }
        return compared
    }
}
