import OpenCLHost
import SwitchyardReference

extension OpenCLBackend {
    public func tensor(codes: [UInt8], shape: [Int]) throws -> Tensor {
        try checkHostCount(codes.count, shape, "tensor codes")
        let t = try empty(shape: shape, dtype: .u8, label: "input")
        if !codes.isEmpty { try t.buffer!.upload(codes) }
        return t
    }

    public func codes(_ tensor: Tensor) throws -> [UInt8] {
        guard tensor.dtype == .u8 else {
            throw SwitchyardError.dtype(argument: "tensor", expected: "u8", actual: tensor.dtype)
        }
        return try bytes(tensor)
    }

    /// A grid of `global` rounded up to `local` in each dimension (the kernels check bounds).
    private func rounded(_ global: [Int], _ local: [Int]) -> [Int] {
        zip(global, local).map { g, l in (g + l - 1) / l * l }
    }

    public func quantizeWeights(_ w: Tensor, _ q: WeightQuantization) throws -> QuantizedCodes {
        let op = try QuantizeWeights(validating: w, q)
        let wb = try deviceBuffer(w, "expert weights")
        let scaleShape = [op.experts, op.weightRows, op.groups]
        let codes = try empty(shape: w.shape, dtype: .u8, label: "quantized codes")
        let scales = try empty(shape: scaleShape, dtype: q == .int8 ? .f32 : .f16, label: "quantized scales")
        let zeros = op.zeroPoint ? try empty(shape: scaleShape, dtype: .u8, label: "quantized zeros") : nil
        let mode = q == .int8 ? 0 : op.zeroPoint ? 2 : 1
        let defines = ["W_DT": "\(w.dtype.kernelCode)"]
        let sb = scales.buffer!
        let zb = zeros?.buffer ?? codes.buffer!
        let common: [Arg] = [.int(op.rows), .int(op.inFeatures), .int(op.group), .int(op.groups), .int(mode)]
        // Lowered by quantize_scales from Int32.max to the first row with a group of finite
        // weights and no finite f16 scale.
        let flag = try tensor(codes: [0xFF, 0xFF, 0xFF, 0x7F], shape: [4])
        // Rows are strided over the grids' second dimension (a whole stacked layer can have more
        // rows than `stridedGridGroups`).
        let rowGroups = Self.stridedGridGroups
        try launch(
            "quantized_weights.cl", "quantize_scales", defines: defines,
            args: [.buffer(wb), .buffer(sb), .buffer(sb), .buffer(zb), .buffer(flag.buffer!)] + common,
            global: [op.groups, min(rounded([op.rows], [16])[0], 16 * rowGroups)], local: [1, 16])
        try launch(
            "quantized_weights.cl", "quantize_codes", defines: defines,
            args: [.buffer(wb), .buffer(sb), .buffer(sb), .buffer(zb), .buffer(codes.buffer!)] + common,
            global: [rounded([op.inFeatures], [16])[0], min(op.rows, rowGroups)], local: [16, 1])
        let status = try self.codes(flag)
        let row = Int(status[0]) | Int(status[1]) << 8 | Int(status[2]) << 16 | Int(status[3]) << 24
        if row != Int(Int32.max) {
            throw SwitchyardError.invalidValues(
                argument: "expert weights",
                detail: "expert \(row / op.weightRows) row \(row % op.weightRows): finite weights too large for \(q)'s f16 "
                    + "scale (its largest |w| from about 7 × 65520 on, or with a zero point its range from about 15 × 65520 "
                    + "on): the group cannot be quantized")
        }
        return QuantizedCodes(codes: codes, scales: scales, zeros: zeros)
    }

    public func prepareWeights(_ w: Tensor, swiglu: Bool, pack: Bool, quantize q: WeightQuantization) throws
        -> ExpertWeights
    {
        if q == .none { return try prepareWeights(w, swiglu: swiglu, pack: pack) }
        if q == .mxfp4 { return try convertedToMXFP4(w, swiglu: swiglu) }
        let op = try QuantizeWeights(validating: w, q, swiglu: swiglu)
        let c = try quantizeWeights(w, q)
        let packed = try packQuantized(
            format: q.format(for: w.dtype), codes: c.codes, sourceNibbles: false, scales: c.scales, zeros: c.zeros,
            experts: op.experts, weightRows: op.weightRows, k: op.inFeatures, group: op.group, groups: op.groups,
            swiglu: swiglu, interleaved: false, scaleRows: op.weightRows, rowDivisor: 1)
        return ExpertWeights(
            quantized: packed, weight: nil, experts: op.experts, weightRows: op.weightRows, inFeatures: op.inFeatures,
            swiglu: swiglu)
    }

    public func prepareMXFP4(blocks: Tensor, scales: Tensor, swiglu: Bool, interleavedGateUp: Bool) throws
        -> ExpertWeights
    {
        let op = try PrepareMXFP4(validating: blocks, scales: scales, swiglu: swiglu)
        let packed = try packQuantized(
            format: .mxfp4, codes: blocks, sourceNibbles: true, scales: scales, zeros: nil, experts: op.experts,
            weightRows: op.weightRows, k: op.inFeatures, group: 32, groups: op.inFeatures / 32, swiglu: swiglu,
            interleaved: swiglu && interleavedGateUp, scaleRows: op.weightRows, rowDivisor: 1)
        return ExpertWeights(
            quantized: packed, weight: nil, experts: op.experts, weightRows: op.weightRows, inFeatures: op.inFeatures,
            swiglu: swiglu)
    }

    public func prepareFP8(codes: Tensor, scaleInv: Tensor, swiglu: Bool) throws -> ExpertWeights {
        let op = try PrepareFP8(validating: codes, scaleInv: scaleInv, swiglu: swiglu)
        let packed = try packQuantized(
            format: .fp8, codes: codes, sourceNibbles: false, scales: scaleInv, zeros: nil, experts: op.experts,
            weightRows: op.weightRows, k: op.inFeatures, group: 128, groups: scaleInv.shape[2], swiglu: swiglu,
            interleaved: false, scaleRows: scaleInv.shape[1], rowDivisor: 128)
        return ExpertWeights(
            quantized: packed, weight: nil, experts: op.experts, weightRows: op.weightRows, inFeatures: op.inFeatures,
            swiglu: swiglu)
    }

    /// Canonical codes (one per byte, or two per byte with `sourceNibbles`) and per-row group
    /// scales and zeros (`[E, scaleRows, groups]`, weight row r reading row r / rowDivisor) in the
    /// panel layout of this backend's matmul.
    func packQuantized(
        format: WeightFormat, codes: Tensor, sourceNibbles: Bool, scales: Tensor, zeros: Tensor?, experts: Int,
        weightRows: Int, k: Int, group: Int, groups: Int, swiglu: Bool, interleaved: Bool, scaleRows: Int,
        rowDivisor: Int
    ) throws -> QuantizedWeights {
        let width = tuning.matmulPanel
        let n = swiglu ? weightRows / 2 : weightRows
        let panels = ExpertWeights.panels(outFeatures: n, width: width, swiglu: swiglu)
        let rowBytes = format.nibbles ? width / 2 : width
        let packedCodes = try empty(shape: [experts, panels, k, rowBytes], dtype: .u8, label: "quantized weight codes")
        try launch(
            "quantized_weights.cl", "pack_codes",
            defines: ["PANEL": "\(width)", "SRC_NIBBLES": sourceNibbles ? "1" : "0", "DST_NIBBLES": format.nibbles ? "1" : "0"],
            args: [.buffer(try deviceBuffer(codes, "quantized weight codes")), .buffer(packedCodes.buffer!), .int(k), .int(n),
                   .int(panels), .int(swiglu ? 1 : 0), .int(interleaved ? 1 : 0)],
            global: rounded([k, panels, experts], [16, 1, 1]), local: [16, 1, 1])
        func packGroups(_ t: Tensor, _ label: String) throws -> Tensor {
            let out = try empty(shape: [experts, panels, groups, width], dtype: t.dtype, label: label)
            let raw = switch t.dtype.size {
            case 1: "uchar"
            case 2: "ushort"
            default: "uint"
            }
            try launch(
                "quantized_weights.cl", "pack_scales", defines: ["PANEL": "\(width)", "SCALE_T": raw],
                args: [.buffer(try deviceBuffer(t, label)), .buffer(out.buffer!), .int(groups), .int(n), .int(panels),
                       .int(swiglu ? 1 : 0), .int(interleaved ? 1 : 0), .int(scaleRows), .int(rowDivisor),
                       .int(rowDivisor > 1 && swiglu ? n : 0)],
                global: [groups, panels, experts], local: [1, 1, 1])
            return out
        }
        return QuantizedWeights(
            format: format, codes: packedCodes, scales: try packGroups(scales, "quantized weight scales"),
            zeros: try zeros.map { try packGroups($0, "quantized weight zeros") }, group: group, groups: groups,
            panelWidth: width, interleaved: false)
    }
}
