import SwitchyardReference

/// How `prepareWeights` quantizes float expert weights (once, on the backend).
public enum WeightQuantization: Sendable, Hashable, CustomStringConvertible {
    /// Keep the float weights.
    case none
    /// int8, one f32 scale per output row (symmetric).
    case int8
    /// int4 in groups of `group` values along K (32 or 128 usually; any group in 1...32768 works; a group of K or more is one group a row), one
    /// f16 scale per group, and with `zeroPoint` a 4-bit zero per group (asymmetric).
    case int4(group: Int, zeroPoint: Bool)
    /// MXFP4 (K a multiple of 32), converted on the host by `Quantization.quantizeMXFP4` (the
    /// OCP conversion) and repacked on the backend like a checkpoint's (`prepareMXFP4`): for
    /// measuring what the format costs in accuracy and speed when no MXFP4 checkpoint is at hand.
    case mxfp4

    public var description: String {
        switch self {
        case .none: "none"
        case .int8: "int8"
        case .int4(let g, let z): "int4-g\(g)\(z ? "-zp" : "")"
        case .mxfp4: "mxfp4"
        }
    }

    /// Parses "none", "int8", "int4" (group 128, symmetric), "int4-g32", "int4-g128-zp", ...
    /// (a group in 1...32768, each part at most once).
    public init?(_ text: String) {
        let parts = text.lowercased().split(separator: "-").map(String.init)
        switch parts.first {
        case "none" where parts.count == 1: self = .none
        case "int8" where parts.count == 1: self = .int8
        case "mxfp4" where parts.count == 1: self = .mxfp4
        case "int4":
            var group: Int?
            var zero = false
            for p in parts.dropFirst() {
                if p == "zp", !zero {
                    zero = true
                } else if p.hasPrefix("g"), group == nil, let g = Int(p.dropFirst()), (1...QuantizeWeights.maxGroup).contains(g) {
                    group = g
                } else {
                    return nil
                }
            }
            self = .int4(group: group ?? 128, zeroPoint: zero)
        default: return nil
        }
    }

    /// Whether it can quantize weight rows of `k` values: int8's row (its one group) and int4's
    /// group in 1...`QuantizeWeights.maxGroup` (a group need not divide K), MXFP4's rows a multiple
    /// of 32. The one check for `quantizeWeights`, the MXFP4 conversion and checkpoints (before
    /// they load anything).
    public func check(rowLength k: Int) throws {
        let most = QuantizeWeights.maxGroup
        switch self {
        case .none: return
        case .int8:
            if k > most {
                throw SwitchyardError.outOfRange(argument: "int8 quantization K (weight row length)", value: k, range: "1...\(most)")
            }
        case .int4(let g, _):
            if !(1...most).contains(g) { throw SwitchyardError.outOfRange(argument: "int4 group", value: g, range: "1...\(most)") }
        case .mxfp4:
            if k % 32 != 0 {
                throw SwitchyardError.outOfRange(
                    argument: "MXFP4 quantization K (weight row length)", value: k, range: "multiples of 32 (its block)")
            }
        }
    }

    /// The stored format it produces.
    public func format(for dtype: DType) -> WeightFormat {
        switch self {
        case .none: .float(dtype)
        case .int8: .int8
        case .int4(let g, let z): .int4(group: g, zeroPoint: z)
        case .mxfp4: .mxfp4
        }
    }
}

/// The storage format of expert weights, as the grouped matmul reads them (definitions in
/// `SwitchyardReference.Quantization`).
public enum WeightFormat: Sendable, Hashable, CustomStringConvertible {
    case float(DType)
    case int8
    case int4(group: Int, zeroPoint: Bool)
    /// OCP MXFP4: e2m1 values, an e8m0 scale per 32 along K.
    case mxfp4
    /// OCP FP8 e4m3fn with f32 scales per 128 × 128 block.
    case fp8

    public var description: String {
        switch self {
        case .float(let d): d.rawValue
        case .int8: "int8"
        case .int4(let g, let z): "int4-g\(g)\(z ? "-zp" : "")"
        case .mxfp4: "mxfp4"
        case .fp8: "fp8-e4m3"
        }
    }

    /// Values per scale along K (nil for float weights; K for int8's per-row scale).
    public func group(k: Int) -> Int? {
        switch self {
        case .float: nil
        case .int8: max(1, k)
        case .int4(let g, _): g
        case .mxfp4: 32
        case .fp8: 128
        }
    }

    /// Bytes of `rows` weight rows of `k` values: codes, scales and zeros.
    public func bytes(rows: Int, k: Int) -> Double {
        let r = Double(rows)
        // (a group below 1, which validation refuses, counts as one group a row: no division by 0)
        let groups = Double(group(k: k).map { $0 >= 1 && k >= 1 ? (k - 1) / $0 + 1 : 1 } ?? 0)
        switch self {
        case .float(let d): return r * Double(k * d.size)
        case .int8: return r * Double(k) + r * 4
        case .int4(_, let z): return r * Double(k) / 2 + r * groups * (z ? 3 : 2)
        case .mxfp4: return r * Double(k) / 2 + r * groups
        case .fp8: return r * Double(k) + r / 128 * groups * 4
        }
    }

    /// `QFMT` of Kernels/matmul.cl.
    var kernelCode: Int {
        switch self {
        case .float: 0
        case .int8: 1
        case .int4: 2
        case .mxfp4: 3
        case .fp8: 4
        }
    }

    /// Whether two codes share a byte.
    var nibbles: Bool {
        switch self {
        case .int4, .mxfp4: true
        default: false
        }
    }
}

/// Quantized expert weights as the grouped matmul reads them. On an OpenCL backend in the
/// panel layout of its matmul (`panelWidth` set; see Kernels/quantized_weights.cl): codes
/// `[E, panels, K, panelWidth]` (one byte each) or `[E, panels, K, panelWidth/2]` (4-bit pairs),
/// scales and zeros `[E, panels, groups, panelWidth]`. On the reference backend in the canonical
/// layout of `SwitchyardReference.Quantization` (`panelWidth` nil).
public struct QuantizedWeights: Sendable {
    public let format: WeightFormat
    public let codes: Tensor
    /// f32 (int8, FP8), f16 (int4) or u8 e8m0 (MXFP4).
    public let scales: Tensor
    /// int4 with a zero point: u8 zeros 0...15.
    public let zeros: Tensor?
    /// Values per scale along K, and scales per row.
    public let group: Int
    public let groups: Int
    public let panelWidth: Int?
    /// Canonical MXFP4 whose gate|up rows are interleaved (gpt-oss); packed weights never are.
    public let interleaved: Bool
}

/// Canonical quantized codes and scales (`quantizeWeights`' result), in the layouts of
/// `SwitchyardReference.Quantization`: codes `[E, N_w, K]` u8 (int4: one value 0...15 per
/// byte), scales `[E, N_w, groups]` (int8: f32, groups 1; int4: f16), zeros `[E, N_w, groups]`
/// u8 for int4 with a zero point.
public struct QuantizedCodes: Sendable {
    public let codes: Tensor
    public let scales: Tensor
    public let zeros: Tensor?
}

/// Quantizing float expert weights `[E, N_w, K]` (int8 or int4) on the backend.
public struct QuantizeWeights: OpDescriptor, Hashable {
    public var experts: Int
    public var weightRows: Int
    public var inFeatures: Int
    public var dtype: DType
    public var quantization: WeightQuantization

    /// The longest group (int8: the row) one work-item scans: a lane-style device stops a loop
    /// after 65,535 iterations, so K stays well below.
    public static let maxGroup = 32768

    public init(experts: Int, weightRows: Int, inFeatures: Int, dtype: DType, quantization: WeightQuantization) {
        self.experts = experts
        self.weightRows = weightRows
        self.inFeatures = inFeatures
        self.dtype = dtype
        self.quantization = quantization
    }

    /// Checks `w` (rank 3, non-empty, floating point) and the quantization: int8 (K ≤ 32768) or
    /// int4 with a group in 1...32768 (K need not be a multiple: the last group is shorter).
    public init(validating w: Tensor, _ q: WeightQuantization, swiglu: Bool = false) throws {
        let p = try PrepareWeights(validating: w, swiglu: swiglu)
        if q == .none || q == .mxfp4 {
            throw SwitchyardError.unsupported(
                "quantizeWeights needs .int8 or .int4(group:zeroPoint:), not .\(q) (MXFP4 converts on the host: "
                    + "prepareWeights(quantize: .mxfp4))")
        }
        try q.check(rowLength: p.inFeatures)
        try checkKernelSizes(rows: p.experts * p.weightRows, k: p.inFeatures, "expert weights")
        self.init(experts: p.experts, weightRows: p.weightRows, inFeatures: p.inFeatures, dtype: w.dtype, quantization: q)
    }

    public var rows: Int { experts * weightRows }
    public var group: Int { quantization.format(for: dtype).group(k: inFeatures) ?? inFeatures }
    public var groups: Int { group >= 1 && inFeatures >= 1 ? (inFeatures - 1) / group + 1 : 1 }  // (refused by validation otherwise)
    public var zeroPoint: Bool {
        if case .int4(_, true) = quantization { return true }
        return false
    }

    public var outputs: [TensorSpec] {
        let scaleType: DType = quantization == .int8 ? .f32 : .f16
        var out = [TensorSpec([experts, weightRows, inFeatures], .u8), TensorSpec([experts, weightRows, groups], scaleType)]
        if zeroPoint { out.append(TensorSpec([experts, weightRows, groups], .u8)) }
        return out
    }
    public var flops: Double { 0 }
    public var bytes: Double {
        Double(rows * inFeatures * (dtype.size + 1)) + Double(rows * groups) * (quantization == .int8 ? 4 : zeroPoint ? 3 : 2)
    }
}

/// MXFP4 expert weights as checkpoints store them (gpt-oss): `blocks [E, N_w, K/32, 16]` u8 (two
/// e2m1 values per byte, low nibble first) and `scales [E, N_w, K/32]` u8 (e8m0).
public struct PrepareMXFP4: OpDescriptor, Hashable {
    public var experts: Int
    public var weightRows: Int
    public var inFeatures: Int
    public var swiglu: Bool

    public init(validating blocks: Tensor, scales: Tensor, swiglu: Bool) throws {
        let b = try blocks.expectRank(4, "MXFP4 blocks", "[experts, out, in/32, 16]")
        try blocks.expectDType([.u8], "MXFP4 blocks")
        try scales.expectDType([.u8], "MXFP4 scales")
        guard b[3] == 16, b[0] >= 1, b[1] >= 1, b[2] >= 1 else {
            throw SwitchyardError.shape(argument: "MXFP4 blocks", expected: "non-empty [experts, out, in/32, 16]", actual: b)
        }
        guard scales.shape == [b[0], b[1], b[2]] else {
            throw SwitchyardError.shape(argument: "MXFP4 scales", expected: "[\(b[0]), \(b[1]), \(b[2])]", actual: scales.shape)
        }
        if swiglu && b[1] % 2 != 0 {
            throw SwitchyardError.shape(argument: "MXFP4 gate|up blocks", expected: "[experts, 2·ffn, in/32, 16]", actual: b)
        }
        experts = b[0]
        weightRows = b[1]
        inFeatures = try Tensor.checkedCount([b[2], 32], dtype: .u8, "MXFP4 blocks")
        self.swiglu = swiglu
        try checkKernelSizes(rows: weightRows, k: inFeatures, "MXFP4 blocks")
    }

    public var outputs: [TensorSpec] { [] }
    public var flops: Double { 0 }
    public var bytes: Double { 2 * WeightFormat.mxfp4.bytes(rows: experts * weightRows, k: inFeatures) }
}

/// FP8 e4m3fn expert weights as DeepSeek-V3 stores them: codes `[E, N_w, K]` u8 and
/// `weight_scale_inv [E, ceil(N_w/128), ceil(K/128)]` f32 (one scale per 128 × 128 block). For
/// fused gate|up weights (`N_w = 2·ffn`, gate rows first) the gate and up tensors keep their own
/// blocks: the scales are theirs concatenated, `[E, 2·ceil(ffn/128), ceil(K/128)]`.
public struct PrepareFP8: OpDescriptor, Hashable {
    public var experts: Int
    public var weightRows: Int
    public var inFeatures: Int
    public var swiglu: Bool

    public init(validating codes: Tensor, scaleInv: Tensor, swiglu: Bool) throws {
        let s = try codes.expectRank(3, "FP8 weights", "[experts, out, in]")
        try codes.expectDType([.u8], "FP8 weights")
        try scaleInv.expectDType([.f32], "FP8 weight_scale_inv")
        guard s[0] >= 1, s[1] >= 1, s[2] >= 1 else {
            throw SwitchyardError.shape(argument: "FP8 weights", expected: "non-empty [experts, out, in]", actual: s)
        }
        if swiglu && s[1] % 2 != 0 {
            throw SwitchyardError.shape(argument: "FP8 gate|up weights", expected: "[experts, 2·ffn, in]", actual: s)
        }
        let blockRows = swiglu ? 2 * ((s[1] / 2 + 127) / 128) : (s[1] + 127) / 128
        let want = [s[0], blockRows, (s[2] + 127) / 128]
        guard scaleInv.shape == want else {
            throw SwitchyardError.shape(argument: "FP8 weight_scale_inv", expected: "\(want)", actual: scaleInv.shape)
        }
        experts = s[0]
        weightRows = s[1]
        inFeatures = s[2]
        self.swiglu = swiglu
        try checkKernelSizes(rows: weightRows, k: inFeatures, "FP8 weights")
    }

    public var outputs: [TensorSpec] { [] }
    public var flops: Double { 0 }
    public var bytes: Double { 2 * WeightFormat.fp8.bytes(rows: experts * weightRows, k: inFeatures) }
}

extension ComputeBackend {
    /// Float weights converted to MXFP4 on the host (`Quantization.quantizeMXFP4`) and prepared
    /// as a checkpoint's MXFP4 tensors.
    func convertedToMXFP4(_ w: Tensor, swiglu: Bool) throws -> ExpertWeights {
        let p = try PrepareWeights(validating: w, swiglu: swiglu)
        try WeightQuantization.mxfp4.check(rowLength: p.inFeatures)
        let rows = p.experts * p.weightRows
        let r = Quantization.quantizeMXFP4(try floats(w), rows: rows, k: p.inFeatures)
        return try prepareMXFP4(
            blocks: try tensor(codes: r.blocks, shape: [p.experts, p.weightRows, p.inFeatures / 32, 16]),
            scales: try tensor(codes: r.scales, shape: [p.experts, p.weightRows, p.inFeatures / 32]), swiglu: swiglu,
            interleavedGateUp: false)
    }
}

extension ReferenceBackend {
    public func tensor(codes: [UInt8], shape: [Int]) throws -> Tensor {
        try checkHostCount(codes.count, shape, "tensor codes")
        return Tensor(shape: shape, dtype: .u8, storage: .host(.bytes(codes)))
    }

    func hostBytes(_ tensor: Tensor, _ argument: String) throws -> [UInt8] {
        guard case .bytes(let values) = try host(tensor, argument) else {
            throw SwitchyardError.dtype(argument: argument, expected: "u8", actual: tensor.dtype)
        }
        return values
    }

    public func codes(_ tensor: Tensor) throws -> [UInt8] {
        let values = try hostBytes(tensor, "tensor")
        try checkGuards(tensor)
        return values
    }

    public func quantizeWeights(_ w: Tensor, _ q: WeightQuantization) throws -> QuantizedCodes {
        let op = try QuantizeWeights(validating: w, q)
        let values = try hostFloats(w, "expert weights")
        let scaleShape = [op.experts, op.weightRows, op.groups]
        switch q {
        case .int8:
            let r = Quantization.quantizeInt8(values, rows: op.rows, k: op.inFeatures)
            return QuantizedCodes(
                codes: try tensor(codes: r.codes, shape: w.shape),
                scales: Tensor(shape: scaleShape, dtype: .f32, storage: .host(.floats(r.scales))), zeros: nil)
        case .int4(let g, let z):
            let r = Quantization.quantizeInt4(values, rows: op.rows, k: op.inFeatures, group: g, zeroPoint: z)
            // A group of finite weights whose scale rounded to f16's infinity (non-finite groups
            // get NaN, 0x7E00): refused, as the OpenCL backend refuses it.
            if let i = r.scales.firstIndex(of: 0x7C00) {
                let (row, group) = (i / op.groups, i % op.groups)
                throw SwitchyardError.invalidValues(
                    argument: "expert weights",
                    detail: "expert \(row / op.weightRows) row \(row % op.weightRows) (group \(group)): finite weights too large "
                        + "for \(q)'s f16 scale (its largest |w| from about 7 × 65520 on, or with a zero point its range from "
                        + "about 15 × 65520 on): the group cannot be quantized")
            }
            return QuantizedCodes(
                codes: try tensor(codes: r.codes, shape: w.shape),
                scales: Tensor(shape: scaleShape, dtype: .f16, storage: .host(.floats(r.scales.map(FloatBits.fromF16)))),
                zeros: z ? try tensor(codes: r.zeros, shape: scaleShape) : nil)
        case .none, .mxfp4:
            throw SwitchyardError.unsupported("quantizeWeights needs .int8 or .int4(group:zeroPoint:), not .\(q)")
        }
    }

    public func prepareWeights(_ w: Tensor, swiglu: Bool, pack: Bool, quantize q: WeightQuantization) throws
        -> ExpertWeights
    {
        if q == .none { return try prepareWeights(w, swiglu: swiglu, pack: pack) }
        if q == .mxfp4 { return try convertedToMXFP4(w, swiglu: swiglu) }
        let op = try QuantizeWeights(validating: w, q, swiglu: swiglu)
        let c = try quantizeWeights(w, q)
        let quantized = QuantizedWeights(
            format: q.format(for: w.dtype), codes: c.codes, scales: c.scales, zeros: c.zeros, group: op.group,
            groups: op.groups, panelWidth: nil, interleaved: false)
        return ExpertWeights(
            quantized: quantized, weight: nil, experts: op.experts, weightRows: op.weightRows, inFeatures: op.inFeatures,
            swiglu: swiglu)
    }

    public func prepareMXFP4(blocks: Tensor, scales: Tensor, swiglu: Bool, interleavedGateUp: Bool) throws
        -> ExpertWeights
    {
        let op = try PrepareMXFP4(validating: blocks, scales: scales, swiglu: swiglu)
        _ = try hostBytes(blocks, "MXFP4 blocks")
        _ = try hostBytes(scales, "MXFP4 scales")
        let quantized = QuantizedWeights(
            format: .mxfp4, codes: blocks, scales: scales, zeros: nil, group: 32, groups: op.inFeatures / 32,
            panelWidth: nil, interleaved: swiglu && interleavedGateUp)
        return ExpertWeights(
            quantized: quantized, weight: nil, experts: op.experts, weightRows: op.weightRows, inFeatures: op.inFeatures,
            swiglu: swiglu)
    }

    public func prepareFP8(codes: Tensor, scaleInv: Tensor, swiglu: Bool) throws -> ExpertWeights {
        let op = try PrepareFP8(validating: codes, scaleInv: scaleInv, swiglu: swiglu)
        _ = try hostBytes(codes, "FP8 weights")
        _ = try hostFloats(scaleInv, "FP8 weight_scale_inv")
        let quantized = QuantizedWeights(
            format: .fp8, codes: codes, scales: scaleInv, zeros: nil, group: 128, groups: (op.inFeatures + 127) / 128,
            panelWidth: nil, interleaved: false)
        return ExpertWeights(
            quantized: quantized, weight: nil, experts: op.experts, weightRows: op.weightRows, inFeatures: op.inFeatures,
            swiglu: swiglu)
    }

    /// The f32 weights `[E, N_w, K]` (gate rows first) the reference matmul multiplies: the float
    /// weights, or the quantized ones dequantized by `Quantization`'s definitions.
    func referenceWeights(_ weights: ExpertWeights) throws -> [Float] {
        guard let q = weights.quantized else { return try hostFloats(weights.weight!, "expert weights") }
        guard q.panelWidth == nil else {
            throw SwitchyardError.backendMismatch(argument: "quantized weights", expected: name, actual: "an OpenCL device")
        }
        let rows = weights.experts * weights.weightRows
        let k = weights.inFeatures
        switch q.format {
        case .float:
            return try hostFloats(weights.weight!, "expert weights")
        case .int8:
            return Quantization.dequantizeInt8(
                codes: try hostBytes(q.codes, "int8 codes"), scales: try hostFloats(q.scales, "int8 scales"), rows: rows, k: k)
        case .int4(let g, let z):
            let zeros = try q.zeros.map { try hostBytes($0, "int4 zeros") }
                ?? [UInt8](repeating: 8, count: rows * q.groups)
            return Quantization.dequantizeInt4(
                codes: try hostBytes(q.codes, "int4 codes"), scales: try hostFloats(q.scales, "int4 scales").map(FloatBits.f16),
                zeros: z ? zeros : [UInt8](repeating: 8, count: rows * q.groups), rows: rows, k: k, group: g)
        case .mxfp4:
            let w = Quantization.dequantizeMXFP4(
                blocks: try hostBytes(q.codes, "MXFP4 blocks"), scales: try hostBytes(q.scales, "MXFP4 scales"), rows: rows,
                k: k)
            return q.interleaved
                ? Quantization.deinterleaveGateUp(w, experts: weights.experts, ffn: weights.weightRows / 2, k: k) : w
        case .fp8:
            return Quantization.dequantizeFP8(
                codes: try hostBytes(q.codes, "FP8 codes"), scales: try hostFloats(q.scales, "FP8 scales"),
                experts: weights.experts, n: weights.weightRows, k: k, gateRows: weights.swiglu ? weights.outFeatures : nil)
        }
    }
}

/// The quantization and matmul kernels index a weight row's values, a group's end and a chain's
/// end with 32-bit ints (k + group, k + 256 past K): K stays `maxKernelK` or below, and a
/// tensor's rows (fused gate|up rows, all experts' rows) within Int32.
let maxKernelK = Int(Int32.max) - (1 << 20)

func checkKernelSizes(rows: Int, k: Int, _ argument: String) throws {
    guard k <= maxKernelK else {
        throw SwitchyardError.outOfRange(argument: "\(argument) row length (K)", value: k, range: "1...\(maxKernelK)")
    }
    guard rows <= Int(Int32.max) else {
        throw SwitchyardError.outOfRange(argument: "\(argument) rows", value: rows, range: "1...\(Int32.max)")
    }
}
