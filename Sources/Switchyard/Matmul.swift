import OpenCLHost
import SwitchyardReference

/// Expert (or dense) weights in the checkpoint layout `[E, N_w, K]` (PyTorch `nn.Linear`:
/// out × in), on a backend, optionally also repacked once into the layout the device kernel
/// reads fastest (panels of the backend's panel width, k-major), or quantized (`quantized`:
/// int8, int4, MXFP4 or FP8 codes and scales, see `QuantizedWeights`).
public struct ExpertWeights: Sendable {
    /// The float weights `[E, N_w, K]`; for SwiGLU `N_w = 2·ffn` with the gate rows first. Nil
    /// for quantized weights (not kept: the quantized form is all the matmul reads).
    public let weight: Tensor?
    /// The panel layout `[E, panels, K, panelWidth]`, same storage type, when packed.
    public let packed: Tensor?
    /// The quantized form the matmul reads instead of `weight` and `packed`, when quantized.
    public let quantized: QuantizedWeights?
    /// Whether the rows are a fused gate|up pair (SwiGLU epilogue).
    public let swiglu: Bool
    public let experts: Int
    /// Weight rows per expert, `N_w` (2·ffn for SwiGLU).
    public let weightRows: Int
    public let inFeatures: Int

    init(weight: Tensor, packed: Tensor?, swiglu: Bool) {
        self.weight = weight
        self.packed = packed
        self.quantized = nil
        self.swiglu = swiglu
        self.experts = weight.shape[0]
        self.weightRows = weight.shape[1]
        self.inFeatures = weight.shape[2]
    }

    init(quantized: QuantizedWeights, weight: Tensor?, experts: Int, weightRows: Int, inFeatures: Int, swiglu: Bool) {
        self.weight = weight
        self.packed = nil
        self.quantized = quantized
        self.swiglu = swiglu
        self.experts = experts
        self.weightRows = weightRows
        self.inFeatures = inFeatures
    }

    /// The storage format the matmul reads.
    public var format: WeightFormat { quantized?.format ?? .float(weight!.dtype) }
    public var shape: [Int] { [experts, weightRows, inFeatures] }
    public var outFeatures: Int { swiglu ? weightRows / 2 : weightRows }
    /// Output columns of one packed panel (the backend's `Tuning.matmulPanel` when packed);
    /// for SwiGLU a panel holds half as many gate and as many up columns.
    public var panelWidth: Int { quantized?.panelWidth ?? packed?.shape[3] ?? 64 }
    /// Number of panels per expert in the packed layout.
    public var panels: Int { Self.panels(outFeatures: outFeatures, width: panelWidth, swiglu: swiglu) }

    static func panels(outFeatures: Int, width: Int, swiglu: Bool) -> Int {
        let perPanel = swiglu ? width / 2 : width
        return (outFeatures + perPanel - 1) / perPanel
    }
    /// Bytes of weight storage one full pass reads (codes, scales and zeros when quantized).
    public var bytes: Int { Int(format.bytes(rows: experts * weightRows, k: inFeatures)) }
}

/// What each output row of a matmul is multiplied by.
public enum RowScale: Sendable {
    case none
    /// One f32 factor per output row `[rows]`.
    case perRow(Tensor)
    /// The routing weight of the row's assignment (routed experts that apply the weight before
    /// the combine).
    case routingWeights
}

/// What the grouped matmul reads as its activations.
public enum MatmulInput: Sendable {
    /// Rows already in expert order, `[maxRows, K]` (a `gather`'s or a previous grouped
    /// matmul's output), or, without a routing, the rows of a dense layer `[T, K]`.
    case rows(Tensor)
    /// Tokens `[T, K]` read through the routing's permutation: the gather fused into the
    /// matmul's loads (no expert-ordered copy is made).
    case gathered(Tensor)

    /// The tensor read.
    public var tensor: Tensor {
        switch self {
        case .rows(let t), .gathered(let t): t
        }
    }

    /// Whether the rows are read through the routing's permutation.
    public var isGathered: Bool {
        if case .gathered = self { return true }
        return false
    }
}

/// Preparing expert weights `[E, N_w, K]` for `groupedMatmul` (optionally repacked into panels).
public struct PrepareWeights: OpDescriptor, Hashable {
    public var experts: Int
    public var weightRows: Int
    public var inFeatures: Int
    public var swiglu: Bool
    public var dtype: DType

    public init(experts: Int, weightRows: Int, inFeatures: Int, swiglu: Bool, dtype: DType) {
        self.experts = experts
        self.weightRows = weightRows
        self.inFeatures = inFeatures
        self.swiglu = swiglu
        self.dtype = dtype
    }

    /// Checks `w` (rank 3, non-empty, floating point; an even row count for fused gate|up).
    public init(validating w: Tensor, swiglu: Bool) throws {
        let s = try w.expectRank(3, "expert weights", "[experts, out, in]")
        try w.expectDType(DType.floatingPoint, "expert weights")
        if swiglu && s[1] % 2 != 0 {
            throw SwitchyardError.shape(argument: "gate|up weights", expected: "[experts, 2·ffn, in]", actual: s)
        }
        if s[0] < 1 || s[1] < 1 || s[2] < 1 {
            throw SwitchyardError.shape(argument: "expert weights", expected: "non-empty [experts, out, in]", actual: s)
        }
        try checkKernelSizes(rows: s[1], k: s[2], "expert weights")
        self.init(experts: s[0], weightRows: s[1], inFeatures: s[2], swiglu: swiglu, dtype: w.dtype)
    }

    public var outputs: [TensorSpec] { [TensorSpec([experts, weightRows, inFeatures], dtype)] }
    public var flops: Double { 0 }
    public var bytes: Double { 2 * Double(experts * weightRows * inFeatures * dtype.size) }
}

/// The grouped expert matmul: for every expert e, `Y_e = act(X_e · W_eᵀ) · scale` over the
/// expert's rows, one launch for all experts; without a routing, a dense linear layer.
public struct GroupedMatmul: OpDescriptor, Hashable {
    /// Output rows: the routing's `maxRows` (block-padded worst case), or T for a dense layer.
    public var rows: Int
    /// Rows that carry work: the routed assignments T·k (at most), or T for a dense layer.
    public var activeRows: Int
    public var experts: Int
    public var inFeatures: Int
    /// Output columns (for SwiGLU, half the weight rows).
    public var outFeatures: Int
    public var epilogue: Epilogue
    public var gathered: Bool
    public var activationType: DType
    public var weightType: DType
    public var outputType: DType
    /// How the weights are stored (`.float(weightType)` unless quantized).
    public var weightFormat: WeightFormat
    /// The gated epilogue's parameters (`.swiglu` unless set; only the SwiGLU epilogue takes others).
    public var glu: GLUParameters
    /// Whether a per-expert output bias `[E, N_w]` (f32) is added before the activation.
    public var biased: Bool

    public init(
        rows: Int, activeRows: Int, experts: Int, inFeatures: Int, outFeatures: Int, epilogue: Epilogue,
        gathered: Bool = false, activationType: DType, weightType: DType? = nil, outputType: DType? = nil,
        weightFormat: WeightFormat? = nil, glu: GLUParameters = .swiglu, biased: Bool = false
    ) {
        self.rows = rows
        self.activeRows = activeRows
        self.experts = experts
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.epilogue = epilogue
        self.gathered = gathered
        self.activationType = activationType
        self.weightFormat = weightFormat ?? .float(weightType ?? activationType)
        if case .float(let d) = self.weightFormat { self.weightType = d } else { self.weightType = .u8 }
        self.outputType = outputType ?? activationType
        self.glu = glu
        self.biased = biased
    }

    /// Checks a call: the epilogue against the weights (SwiGLU takes fused gate|up weights and
    /// only it does), the activations' shape against the routing (`[maxRows, K]` expert-ordered,
    /// `[T, K]` gathered, `[T, K]` dense with one expert), the row scale, and the output dtype
    /// (floating point; the activations' when nil). `glu`: parameters other than `.swiglu` only
    /// with the SwiGLU epilogue, and valid (`GLUParameters.validate`); `bias`: f32 `[E, N_w]`.
    public init(
        validating input: MatmulInput, weights: ExpertWeights, routing: Routing?, epilogue: Epilogue, scale: RowScale,
        dtype: DType?, glu: GLUParameters = .swiglu, bias: Tensor? = nil
    ) throws {
        if (epilogue == .swiglu) != weights.swiglu {
            throw SwitchyardError.unsupported(
                "the SwiGLU epilogue needs fused gate|up weights (prepared with swiglu: true), and only it takes them")
        }
        if glu != .swiglu && epilogue != .swiglu {
            throw SwitchyardError.unsupported("GLU parameters (\(glu)) apply to the gated (SwiGLU) epilogue only, not \(epilogue.rawValue)")
        }
        try glu.validate()
        try Self.validateBias(bias, weights: weights)
        let a = input.tensor
        let argument = input.isGathered ? "matmul x (gathered)" : routing == nil ? "matmul x" : "matmul xs (expert-ordered)"
        let s = try a.expectRank(2, argument, "[rows, \(weights.inFeatures)]")
        try a.expectDType(DType.floatingPoint, argument)
        guard s[1] == weights.inFeatures else {
            throw SwitchyardError.shape(argument: argument, expected: "[rows, \(weights.inFeatures)]", actual: s)
        }
        let rows: Int
        let active: Int
        if let routing {
            guard weights.experts == routing.config.experts else {
                throw SwitchyardError.shape(
                    argument: "expert weights", expected: "[\(routing.config.experts), out, in]",
                    actual: weights.shape)
            }
            let expectedRows = input.isGathered ? routing.tokens : routing.maxRows
            guard s[0] == expectedRows else {
                throw SwitchyardError.shape(
                    argument: argument, expected: "[\(expectedRows), \(weights.inFeatures)]", actual: s)
            }
            rows = routing.maxRows
            active = routing.tokens * routing.config.k
        } else {
            guard weights.experts == 1 else {
                throw SwitchyardError.shape(argument: "dense weights", expected: "[1, out, in]", actual: weights.shape)
            }
            if input.isGathered { throw SwitchyardError.unsupported("a gathered matmul input needs a routing") }
            rows = s[0]
            active = s[0]
        }
        switch scale {
        case .none: break
        case .perRow(let t):
            guard t.shape == [rows], t.dtype == .f32 else {
                throw SwitchyardError.shape(argument: "row scale", expected: "[\(rows)] f32", actual: t.shape)
            }
        case .routingWeights:
            if routing == nil { throw SwitchyardError.unsupported("routing-weight scaling needs a routing") }
        }
        let out = dtype ?? a.dtype
        guard out.isFloatingPoint else {
            throw SwitchyardError.dtype(argument: "matmul output dtype", expected: "f32, f16 or bf16", actual: out)
        }
        self.init(
            rows: rows, activeRows: active, experts: weights.experts, inFeatures: weights.inFeatures,
            outFeatures: weights.outFeatures, epilogue: epilogue, gathered: input.isGathered, activationType: a.dtype,
            outputType: out, weightFormat: weights.format, glu: glu, biased: bias != nil)
    }

    /// Weight rows per expert (`2 · outFeatures` for SwiGLU).
    public var weightRows: Int { epilogue == .swiglu ? 2 * outFeatures : outFeatures }
    public var outputs: [TensorSpec] { [TensorSpec([rows, outFeatures], outputType)] }
    public var flops: Double { 2 * Double(activeRows) * Double(inFeatures) * Double(weightRows) }
    /// Every expert's weights once (and its bias), the active rows' activations in and results out.
    public var bytes: Double {
        weightFormat.bytes(rows: experts * weightRows, k: inFeatures) + (biased ? Double(experts * weightRows * 4) : 0)
            + Double(activeRows) * Double(inFeatures * activationType.size + outFeatures * outputType.size)
    }
}

extension ComputeBackend {
    /// `groupedMatmul` over rows `a`: expert-ordered `[maxRows, K]` with a routing, or a dense
    /// layer's `[T, K]` without one (weights with one expert).
    public func groupedMatmul(
        _ a: Tensor, weights: ExpertWeights, routing: Routing? = nil, epilogue: Epilogue = .none,
        scale: RowScale = .none, dtype: DType? = nil
    ) throws -> Tensor {
        try groupedMatmul(.rows(a), weights: weights, routing: routing, epilogue: epilogue, scale: scale, dtype: dtype)
    }

    /// `groupedMatmul` reading tokens `x [T, K]` through the routing's permutation (the gather
    /// fused into the loads); the output is expert-ordered `[maxRows, N]`.
    public func groupedMatmul(
        gathering x: Tensor, weights: ExpertWeights, routing: Routing, epilogue: Epilogue = .none,
        scale: RowScale = .none, dtype: DType? = nil
    ) throws -> Tensor {
        try groupedMatmul(.gathered(x), weights: weights, routing: routing, epilogue: epilogue, scale: scale, dtype: dtype)
    }
}

extension OpenCLBackend {
    /// Rows per tile of the matmul: at most `limit`, and the largest divisor of the routing's
    /// block size not above it (a tile never spans two experts).
    func matmulRows(block: Int?, limit: Int) -> Int {
        guard let block else { return limit }
        return (1...max(1, min(limit, block))).last { block % $0 == 0 } ?? 1
    }

    /// Row tiles one register-kernel work-item walks down one panel (`tile_step`): a row block
    /// whose activations (`tileRows` rows × K) stay in the core's cache while the work-groups
    /// after it take the same block through the other panels, so each activation row is read
    /// from memory once per block rather than once per panel (an 8-wide device has 16-column
    /// panels: deepseek-like's down stage re-read its 50 MB input 64 times per layer).
    /// CPU-class drivers report a core's cache as local memory (PoCL: the L2, 1 MiB on Zen 4,
    /// 512 KiB on Zen 3); the block and one panel take at most half of it, leaving room for the
    /// next panel and the outputs. Capped by `tuning.matmulTileStep`, and kept small enough that
    /// there are at least 4 work-groups per compute unit. (Decode launches, where experts average
    /// at most a tile of rows, take one tile per work-item: `groupedMatmul`.) Lane-style devices take the tuning's
    /// step as it is (their local memory is not a cache; llvmpipe's loop limit counts the steps).
    func packedTileStep(tiles: Int, tileRows: Int, inFeatures k: Int, activationBytes: Int, panelBytes: Int, panels: Int)
        -> Int
    {
        let cap = max(1, tuning.matmulTileStep)
        if device.workItemsAreLanes { return cap }
        let budget = device.localMemoryBytes / 2 - panelBytes
        let tileBytes = max(1, tileRows * k * activationBytes)
        let fit = max(1, budget / tileBytes)
        let blocks = max(1, (4 * max(1, device.computeUnits) + panels - 1) / max(1, panels))
        let spread = max(1, tiles / blocks)
        let step = max(1, min(cap, fit, spread))
        // The same number of work-items, with shares as even as one step for all allows (the last
        // is short by fewer tiles than there are work-items): 86 tiles in steps of 64 were
        // work-items of 64 and 22 tiles, which finished far apart; now two of 43.
        let items = (tiles + step - 1) / step
        return (tiles + items - 1) / items
    }

    /// The k steps of one multiply-add chain (`SY_KCHAIN` in matmul.cl): every packed, split-k and
    /// narrow kernel sums an output as chains of this many k from k = 0, each from 0, added in
    /// order to a total from 0. Fixed by K alone, so the order never depends on the row count or
    /// the device.
    static let chainLength = 256

    /// Loop steps one `grouped_matmul_narrow` lane may run (K × (2 + accumulators)): well
    /// below llvmpipe's 65,535 per work-item.
    static let narrowLaneBudget = 32768

    /// Panels one register-kernel work-item takes (`PANEL_GROUP`) when tiles are expected to hold
    /// `expectedRows` rows: enough that one row has 8 independent multiply-add chains (two FMA
    /// units of latency 4), at most 4 (AVX-512, 4 vectors a panel: 2; AVX2 or 4-wide, 2 vectors:
    /// 4), at most 2 for the 4-bit formats (int4, MXFP4: their scale and offset vectors take
    /// registers too; measured on AVX2 at one row, hot weights, 2048 × 4096: 2 panels against 4
    /// int4 28 against 28 G weights/s, MXFP4 10.1 against 9.3) and 1 for FP8 (bound by its
    /// decode: 6.7 G weights/s with 1, 2 or 4; the decode layers at T = 16 measured 3.9 against
    /// 4.3–4.6 GB/s with 2), and 1 unless two panels of the expected rows fit
    /// `jointAccumulators` vectors (decode; the kernel picks per tile how many panels run
    /// together, `SY_JOINT`).
    func panelGroupSize(vectors: Int, expectedRows: Int, jointAccumulators: Int, format: WeightFormat?) -> Int {
        let most: Int
        switch format {
        case .int4, .mxfp4: most = 2
        case .fp8: most = 1
        default: most = 4
        }
        let g = min(most, max(1, 8 / max(1, vectors)))
        return max(1, expectedRows) * 2 * vectors <= jointAccumulators ? g : 1
    }

    /// The k ranges the panel and plain matmul kernels run in, one launch each. One range [0, K)
    /// on devices without a loop limit. On a device with one, K is cut into slices whose loop
    /// steps stay within `loopStepBudget` (half the limit: the rest is the work-item's other
    /// loops and steps the count leaves out; a quantized tile at 49,152 still ran out on
    /// llvmpipe), counting `stepsPerK` steps per k (the kernel's inner loops over rows and
    /// vectors as if none were unrolled: a compiler may not unroll them);
    /// each slice after the first goes on from the f32 accumulators the previous one stored,
    /// so every output is summed in the same order, bit for bit, as in one launch. Slices are
    /// multiples of `chainLength` (and of the quantization group where it is a power of two up to
    /// K), so a chain, a vector step or a group never straddles two slices.
    func kSlices(inFeatures k: Int, stepsPerK: Int, group: Int = 1) -> [Range<Int>] {
        guard let budget = loopStepBudget, k > 0 else { return [0..<k] }
        var align = Self.chainLength
        if group > align && group < k && group & (group - 1) == 0 { align = group }
        let length = max(align, budget / max(1, stepsPerK) / align * align)
        if length >= k { return [0..<k] }
        return stride(from: 0, to: k, by: length).map { $0..<min(k, $0 + length) }
    }

    /// Launches one matmul kernel per k slice (`kSlices`), with the slice's bounds and the carry
    /// buffer (`carryFloats` f32 per call, `carryWidth` per row) appended to `args`.
    func launchSliced(
        _ kernel: String, defines: [String: String], args: [Arg], global: [Int], local: [Int], slices: [Range<Int>],
        carryFloats: (rows: Int, width: Int), carryWidthArg: Bool, spare: Buffer
    ) throws {
        var carry = spare
        if slices.count > 1 {
            let (floats, o1) = carryFloats.rows.multipliedReportingOverflow(by: carryFloats.width)
            let (bytes, o2) = floats.multipliedReportingOverflow(by: 4)
            guard !o1, !o2, bytes <= device.maxAllocationBytes else {
                throw SwitchyardError.shape(
                    argument: "matmul k-slice accumulators",
                    expected: "at most \(device.maxAllocationBytes) bytes (the device's largest allocation)",
                    actual: [carryFloats.rows, carryFloats.width])
            }
            carry = try scratch(byteCount: max(4, bytes), label: "matmul k-slice accumulators")
        }
        var last: Event?
        for slice in slices {
            var sliceArgs = args + [.int(slice.lowerBound), .int(slice.upperBound), .buffer(carry)]
            if carryWidthArg { sliceArgs.append(.int(carryFloats.width)) }
            last = try launchMatmul(kernel, defines: defines, args: sliceArgs, global: global, local: local)
        }
        if slices.count > 1, let last { holdScratch([carry], until: last) }
    }

    /// Split-k for decode on lane-style devices (`grouped_matmul_splitk`, then
    /// `grouped_matmul_fold`): each work-item runs one `chainLength`-step chain of 4 columns (8
    /// for 4-bit codes: one 4-byte load a k step) for a tile's real rows and stores its sums; the
    /// fold adds each output's chains in order and applies the epilogue. The work-group kernel
    /// gives each output to one work-item running all of K, so at decode (a row or few an expert)
    /// a GPU has a few thousand long chains and too few loads in flight for its bandwidth; here
    /// K / 256 times as many, each a 256-step loop. The chains and their order are every packed
    /// kernel's, so the output is bit for bit the work-group kernel's: the choice by row count
    /// changes speed only. Tiles of up to 8 rows dividing the routing block, 4 rows a pass over a
    /// chain's weights (a tile's rows past its last real one cost nothing). False (nothing
    /// launched) where the chains' sums, rows × chains × packed columns of f32, would not fit one
    /// allocation: the work-group kernel then runs.
    func splitKMatmul(
        defines base: [String: String], common: [Arg], packed wb: Buffer, weights: ExpertWeights, tileMap: Buffer,
        y: Tensor, rows: Int, routing: Routing?, tokensK: Int, scaleMode: Int, scaleBuffer: Buffer, bias: Buffer,
        quantArgs: [Arg]
    ) throws -> Bool {
        let width = tuning.matmulPanel
        let k = weights.inFeatures
        let n = weights.outFeatures
        let panels = weights.panels
        let chains = (k + Self.chainLength - 1) / Self.chainLength
        // The chains' sums: one row per routed assignment (or dense row), chains × packed columns.
        let partRows = routing == nil ? rows : tokensK
        let (columns, o1) = panels.multipliedReportingOverflow(by: width)
        let (perRow, o2) = columns.multipliedReportingOverflow(by: chains)
        let (floats, o3) = perRow.multipliedReportingOverflow(by: max(1, partRows))
        let (bytes, o4) = floats.multipliedReportingOverflow(by: 4)
        guard !o1, !o2, !o3, !o4, bytes <= device.maxAllocationBytes, k > 0 else { return false }
        // Tile rows: a power of two ≤ 8 dividing the block.
        var tileRows = Tuning.floorPowerOfTwo(min(8, tuning.matmulRows))
        if let block = routing?.blockSize {
            while tileRows > 1 && block % tileRows != 0 { tileRows /= 2 }
        }
        let tiles = (rows + tileRows - 1) / tileRows
        let block = routing?.blockSize ?? tileRows
        // Each kernel gets only the -D values it reads, so that its programs are shared: the
        // chains' kernel by every epilogue and output type, the fold by every activation type,
        // weight type and format (int8 apart: its fold applies the row scale). Every distinct
        // option string is a driver compile.
        var defines = base.filter { key, _ in
            key.hasPrefix("A_") || ["W_DT", "QFMT", "ZP", "PANEL"].contains(key)
        }
        defines["ROWS"] = "\(tileRows)"
        var foldDefines = base.filter { key, _ in
            key.hasPrefix("Y_") || key.hasPrefix("GLU_")
                || ["EPILOGUE", "GATE_LIMIT", "UP_LIMIT", "UP_OFFSET", "HAS_BIAS", "PANEL"].contains(key)
        }
        if base["QFMT"] == "1" { foldDefines["QFMT"] = "1" }
        let fourBit: Bool
        switch weights.quantized?.format {
        case .int4, .mxfp4: fourBit = true
        default: fourBit = false
        }
        let items = panels * (width / (fourBit ? 8 : 4))
        let group = min(64, Tuning.floorPowerOfTwo(max(1, device.maxWorkGroupSize)))
        let part = try scratch(byteCount: max(4, bytes), label: "split-k chain sums")
        let denseRows = routing == nil ? rows : 0
        let gatherK: Arg = common[2]
        let first = try launchMatmul(
            "grouped_matmul_splitk", defines: defines,
            args: [common[0], common[1], gatherK, .buffer(wb), .buffer(tileMap), .buffer(part), .int(k), .int(panels),
                   .int(denseRows), .int(tokensK), .int(tiles), .int(block), .int(rows), .int(weights.experts)]
                + quantArgs,
            global: [roundUp(items, group), chains, tiles], local: [group, 1, 1])
        holdScratch([part], until: first)  // (held from here: the fold's launch may throw)
        let last = try launchMatmul(
            "grouped_matmul_fold", defines: foldDefines,
            args: [.buffer(part), common[1], gatherK, .buffer(tileMap), .buffer(y.buffer!), .buffer(scaleBuffer),
                   .int(scaleMode), .int(k), .int(n), .int(panels), .int(denseRows), .int(tokensK), .int(block), .int(rows),
                   .int(weights.experts), quantArgs[0], quantArgs[3], .buffer(bias)],
            global: [roundUp(n, group), rows], local: [group, 1])
        holdScratch([part], until: last)
        return true
    }

    /// Launches a kernel of matmul.cl with `MATMUL_ONLY` naming it, so that its program builds
    /// that kernel alone. Each program of matmul.cl serves one kernel already (their defines
    /// differ), so this adds no program; a driver that compiles every kernel at build time is
    /// spared the others (the register kernel unrolled for a work-group program's 32-row tile,
    /// above all).
    @discardableResult
    func launchMatmul(_ kernel: String, defines: [String: String], args: [Arg], global: [Int], local: [Int])
        throws -> Event
    {
        var d = defines
        d["MATMUL_ONLY"] = Self.matmulKernelCodes[kernel]
        return try launch("matmul.cl", kernel, defines: d, args: args, global: global, local: local)
    }

    /// `MATMUL_ONLY` of each matmul.cl kernel.
    static let matmulKernelCodes = [
        "grouped_matmul_packed": "1", "grouped_matmul_tiled": "2", "grouped_matmul_plain": "3",
        "grouped_matmul_narrow": "4", "pack_weights": "5", "grouped_matmul_splitk": "6", "grouped_matmul_fold": "7",
    ]

    /// Weight rows the narrow matmul holds accumulators for (`NW_MAX` in matmul.cl).
    static let narrowWeightRows = 8

    /// Rows per work-item of the narrow matmul (`grouped_matmul_narrow`: unpacked weight rows,
    /// the rows of a tile as the lanes of one vector), when it is the better tool: at most
    /// `narrowWeightRows` weight rows and N at most a quarter of the device's panel on CPU-class
    /// devices (AVX-512 64: N ≤ 8; AVX2 16: N ≤ 4), where a panel of N columns would be mostly
    /// padding, or a sixteenth where work-items are lanes (64: N ≤ 4), a lane per row whose loops
    /// stay within `narrowLaneBudget` (a router's K ≤ 10,922). Its results are bit for bit the panel
    /// kernels' (the same chains over k, `chainLength`), so the choice changes speed only. Nil: the
    /// panel kernels.
    func narrowMatmulRows(outFeatures n: Int, weightRows: Int, inFeatures k: Int, block: Int?) -> Int? {
        let lanes = device.workItemsAreLanes
        guard weightRows <= Self.narrowWeightRows, n * (lanes ? 16 : 4) <= tuning.matmulPanel else { return nil }
        if lanes {
            // llvmpipe counts the inner loops' steps too: per k, the row gather and the weight rows.
            let (work, overflow) = (2 + narrowAccumulators(weightRows: weightRows)).multipliedReportingOverflow(by: k)
            return !overflow && work <= Self.narrowLaneBudget ? 1 : nil
        }
        // The rows of a tile fill the vector's lanes; a tile never spans two experts' blocks.
        return matmulRows(block: block, limit: device.floatVectorWidth)
    }

    /// Accumulators of the narrow matmul (`NW_MAX`): `narrowWeightRows` on CPU-class devices;
    /// where work-items are lanes the power of two ≥ the weight rows (a lane's loop runs no
    /// step for accumulators it does not use).
    func narrowAccumulators(weightRows: Int) -> Int {
        guard device.workItemsAreLanes else { return Self.narrowWeightRows }
        var m = 1
        while m < weightRows { m *= 2 }
        return m
    }

    /// The routing block size the MoE layer pads each expert's rows to: the matmul's rows per tile.
    public var preferredBlockSize: Int { tuning.matmulRows }

    public func timed<T>(_ body: () throws -> T) throws -> (value: T, seconds: () throws -> Double?) {
        let (value, launches) = try recordingLaunches(body)
        guard context.queue.profiling else { return (value, { nil }) }
        return (value, { try launches.reduce(0) { $0 + (try $1.event.seconds()) } })
    }

    public func prepareWeights(_ w: Tensor, swiglu: Bool, pack: Bool) throws -> ExpertWeights {
        _ = try PrepareWeights(validating: w, swiglu: swiglu)
        let plain = ExpertWeights(weight: w, packed: nil, swiglu: swiglu)
        guard pack else { return plain }
        let e = plain.experts
        let k = plain.inFeatures
        let width = tuning.matmulPanel
        let panels = ExpertWeights.panels(outFeatures: plain.outFeatures, width: width, swiglu: swiglu)
        let packed = try empty(shape: [e, panels, k, width], dtype: w.dtype, label: "packed weights")
        try launchMatmul(
            "pack_weights", defines: ["W_DT": "\(w.dtype.kernelCode)", "PANEL": "\(width)"],
            args: [.buffer(try deviceBuffer(w, "expert weights")), .buffer(packed.buffer!), .int(k),
                   .int(plain.outFeatures), .int(panels), .int(swiglu ? 1 : 0)],
            global: [k, panels, e], local: [1, 1, 1])
        return ExpertWeights(weight: w, packed: packed, swiglu: swiglu)
    }

    public func groupedMatmul(
        _ input: MatmulInput, weights: ExpertWeights, routing: Routing?, epilogue: Epilogue, scale: RowScale,
        dtype: DType?
    ) throws -> Tensor {
        try groupedMatmul(
            input, weights: weights, routing: routing, epilogue: epilogue, glu: .swiglu, bias: nil, scale: scale, dtype: dtype)
    }

    public func groupedMatmul(
        _ input: MatmulInput, weights: ExpertWeights, routing: Routing?, epilogue: Epilogue, glu: GLUParameters,
        bias: Tensor?, scale: RowScale, dtype: DType?
    ) throws -> Tensor {
        let op = try GroupedMatmul(
            validating: input, weights: weights, routing: routing, epilogue: epilogue, scale: scale, dtype: dtype, glu: glu,
            bias: bias)
        let a = input.tensor
        let fusedGather = op.gathered
        let rows = op.rows
        let out = op.outputType
        let n = weights.outFeatures
        let y = try empty(shape: [rows, n], dtype: out, label: "matmul output")
        if rows == 0 { return y.guarded(by: routing.map { [$0.flags] } ?? []) }
        let tokensK = routing.map { $0.tokens * $0.config.k } ?? 0
        // Rows a tile is expected to hold: an expert's average share of the routed rows, or a
        // dense matmul's rows (decode: one or two).
        let expectedRows = routing.map { r in
            (r.tokens * r.config.k + r.config.experts - 1) / max(1, r.config.experts)
        } ?? rows
        let ab = try deviceBuffer(a, "matmul activations")
        let assignment = try routing.map { try deviceBuffer($0.assignmentOf, "routing") } ?? y.buffer!
        let tileMap = try routing.map { try deviceBuffer($0.tileExpert, "routing") } ?? y.buffer!
        let (scaleMode, scaleBuffer): (Int, Buffer) =
            switch scale {
            case .none: (0, y.buffer!)
            case .perRow(let t): (1, try deviceBuffer(t, "row scale"))
            case .routingWeights: (2, try deviceBuffer(routing!.weights, "routing"))
            }
        var defines = a.dtype.defines("A").merging(out.defines("Y")) { x, _ in x }.merging([
            "W_DT": "\((weights.weight?.dtype ?? .f32).kernelCode)", "EPILOGUE": "\(epilogue.code)",
        ]) { x, _ in x }.merging(glu.kernelDefines) { x, _ in x }
        if bias != nil { defines["HAS_BIAS"] = "1" }
        let biasBuffer = try bias.map { try deviceBuffer($0, "matmul bias") } ?? y.buffer!
        let common: [Arg] = [.buffer(ab), .buffer(assignment), .int(fusedGather ? routing!.config.k : 0)]
        let experts = weights.experts
        // Quantized weights: the packed kernels with QFMT, reading codes, scales (and zeros).
        var quantArgs: [Arg] = [.buffer(y.buffer!), .buffer(y.buffer!), .int(1), .int(1)]
        var quantRows = tuning.matmulRows
        if let q = weights.quantized {
            guard q.panelWidth != nil else {
                throw SwitchyardError.backendMismatch(
                    argument: "quantized weights", expected: name, actual: "the reference backend (unpacked)")
            }
            defines["QFMT"] = "\(q.format.kernelCode)"
            if case .int4(_, true) = q.format { defines["ZP"] = "1" }
            quantArgs = [
                .buffer(try deviceBuffer(q.scales, "quantized weight scales")),
                .buffer(try q.zeros.map { try deviceBuffer($0, "quantized weight zeros") } ?? y.buffer!),
                .int(q.group), .int(q.groups),
            ]
            quantRows = tuning.quantizedTileRows(format: q.format)
            // Decode (experts get on average no more rows than the quantized tile holds): the
            // tile is the whole routing block, so each expert's codes are read and decoded once
            // (tiles smaller than the block decoded an expert with more rows than the tile two
            // or three times: MXFP4 gpt-oss-small at T = 16 ran at a tenth of the copy ceiling).
            // The kernel computes only the rows up to a tile's last real one (`accumulate`'s NR),
            // so the padding rows cost nothing and a decode tile of a row or two keeps its
            // registers; the rare full block may spill its scale vectors (L1 reloads), not a
            // pass over the weights. Prefill keeps the register-sized tile. (A row's sum is the
            // same chain whatever its tile: batch invariant.)
            if routing != nil && expectedRows <= quantRows { quantRows = tuning.matmulRows }
        }
        if let w = weights.weight, weights.quantized == nil,
            let rowsPerItem = narrowMatmulRows(
                outFeatures: n, weightRows: weights.weightRows, inFeatures: weights.inFeatures, block: routing?.blockSize)
        {
            // Few output columns (a router's score): unpacked weight rows, a tile's rows as vector lanes.
            let tiles = (rows + rowsPerItem - 1) / rowsPerItem
            let group = device.workItemsAreLanes ? lanesGroup(32) : 1
            defines["ROWS"] = "\(rowsPerItem)"
            defines["VW"] = "\(device.workItemsAreLanes ? 1 : device.floatVectorWidth)"
            defines["NW_MAX"] = "\(narrowAccumulators(weightRows: weights.weightRows))"
            try launchMatmul(
                "grouped_matmul_narrow", defines: defines,
                args: common + [
                    .buffer(try deviceBuffer(w, "expert weights")), .buffer(tileMap), .buffer(y.buffer!),
                    .buffer(scaleBuffer), .int(scaleMode), .int(weights.inFeatures), .int(n),
                    .int(routing == nil ? rows : 0), .int(tokensK), .int(tiles), .int(routing?.blockSize ?? rowsPerItem),
                    .int(rows), .int(experts), .buffer(biasBuffer),
                ],
                global: [roundUp(tiles, group)], local: [group])
        } else if let packed = weights.packed ?? weights.quantized?.codes {
            let width = weights.panelWidth
            guard width == tuning.matmulPanel else {
                throw SwitchyardError.unsupported(
                    "expert weights packed in \(width)-column panels; this backend's kernel reads \(tuning.matmulPanel)-column "
                        + "panels: prepare the weights on the backend that runs them")
            }
            let panels = weights.panels
            let wb = try deviceBuffer(packed, weights.quantized == nil ? "packed weights" : "quantized weight codes")
            defines["PANEL"] = "\(width)"
            if expectedRows <= tuning.splitKRows,
                try splitKMatmul(
                    defines: defines, common: common, packed: wb, weights: weights, tileMap: tileMap, y: y, rows: rows,
                    routing: routing, tokensK: tokensK, scaleMode: scaleMode, scaleBuffer: scaleBuffer, bias: biasBuffer,
                    quantArgs: quantArgs)
            {
                return y.guarded(by: routing.map { [$0.flags] } ?? [])
            }
            // Per kernel: its tile rows, its -D values and its grid; the arguments are shared.
            let tileRows: Int
            let tiles: Int
            let kernel: String
            let global: [Int]
            let local: [Int]
            let stepsPerK: Int
            let tileArgs: [Arg]  // the register kernel's tile count and step, the work-group kernel's count
            switch tuning.matmulKernel {
            case .registers:
                tileRows = matmulRows(block: routing?.blockSize, limit: quantRows)
                tiles = (rows + tileRows - 1) / tileRows
                // Decode (experts average at most a tile of rows): one tile per work-item, as many
                // work-items as tiles × panels; a row block has nothing to reuse there.
                let decode = routing != nil && expectedRows <= tileRows
                var step = decode ? 1 : packedTileStep(
                    tiles: tiles, tileRows: tileRows, inFeatures: weights.inFeatures, activationBytes: a.dtype.size,
                    panelBytes: weights.inFeatures * width * packed.dtype.size, panels: panels)
                let group = device.workItemsAreLanes ? 16 : 1
                let vectors = max(1, width / max(1, tuning.matmulVectorWidth))
                // Few rows per tile (decode, or a dense matmul of a few rows): a work-item takes a
                // group of panels and runs them in one k loop where the rows allow, so that a row
                // or two has enough independent multiply-add chains (`panel_run`).
                let jointAccumulators = Tuning.cpuRegisters(vectorWidth: tuning.matmulVectorWidth) / 2
                var panelGroup = panelGroupSize(
                    vectors: vectors, expectedRows: expectedRows, jointAccumulators: jointAccumulators,
                    format: weights.quantized?.format)
                // per k (a loop of n counts n + 1 checks): the k loop, the weight vectors' load and
                // dequantizing loops, the rows loop and each row's vectors; the group's panels one
                // after the other at worst
                let perK = 4 + (weights.quantized == nil ? 2 : 4) * (vectors + 1) + tileRows * (vectors + 2)
                if let budget = loopStepBudget {
                    // K slices are whole chains (`chainLength` k): on a device with a loop limit a
                    // chain's steps, for every tile and panel of a work-item, must fit one slice
                    let fit = max(1, budget / max(1, Self.chainLength * perK))
                    panelGroup = Tuning.floorPowerOfTwo(min(panelGroup, fit))
                    step = max(1, min(step, fit / panelGroup))
                }
                let items = (tiles + step - 1) / step
                let groups = (panels + panelGroup - 1) / panelGroup
                defines["VW"] = "\(tuning.matmulVectorWidth)"
                defines["PANEL_GROUP"] = "\(panelGroup)"
                defines["JOINT_ACC"] = "\(jointAccumulators)"
                // Panel groups in dimension 0: consecutive work-groups take one row block through every panel.
                (kernel, global, local) = ("grouped_matmul_packed", [groups, (items + group - 1) / group * group], [1, group])
                tileArgs = [.int(tiles), .int(step)]
                stepsPerK = step * panelGroup * perK
            case .workGroup:
                // Rows per work-group: a power of two dividing the block (and the tuning's).
                var r = tuning.matmulRows
                if let block = routing?.blockSize {
                    while r > 1 && block % r != 0 { r /= 2 }
                }
                tileRows = r
                let perItem = min(tuning.matmulRowsPerItem, tileRows)
                defines["TRM"] = "\(perItem)"
                defines["TBK"] = "\(tuning.matmulTileK)"
                let groupCols = width / 4
                let groupRows = tileRows / perItem
                tiles = (rows + tileRows - 1) / tileRows
                (kernel, global, local) = ("grouped_matmul_tiled", [panels * groupCols, tiles * groupRows], [groupCols, groupRows])
                tileArgs = [.int(tiles)]
                let items = max(1, groupCols * groupRows)
                let staging = (tuning.matmulTileK * (tileRows + width) + items - 1) / items + 2
                // per k: the staging loops' share, the k step loop, the 4 weights, the rows loop and
                // each row's 4 columns (a loop of n counts n + 1 checks)
                stepsPerK = (staging + tuning.matmulTileK - 1) / tuning.matmulTileK + 7 + 6 * perItem
            }
            defines["ROWS"] = "\(tileRows)"
            try launchSliced(
                kernel, defines: defines,
                args: common + [
                    .buffer(wb), .buffer(tileMap), .buffer(y.buffer!), .buffer(scaleBuffer), .int(scaleMode),
                    .int(weights.inFeatures), .int(n), .int(panels), .int(routing == nil ? rows : 0), .int(tokensK),
                ] + tileArgs + [.int(routing?.blockSize ?? tileRows), .int(rows), .int(experts)] + quantArgs
                    + [.buffer(biasBuffer)],
                global: global, local: local,
                slices: kSlices(inFeatures: weights.inFeatures, stepsPerK: stepsPerK, group: weights.quantized?.group ?? 1),
                carryFloats: (rows, panels * width), carryWidthArg: true, spare: y.buffer!)
        } else {
            // Short per-work-item loops on lane-style devices: at most 4 rows × 8 columns each.
            let rowsPerItem = matmulRows(
                block: routing?.blockSize, limit: device.workItemsAreLanes ? min(4, tuning.matmulRows) : tuning.matmulRows)
            let block = routing?.blockSize ?? rowsPerItem
            let tiles = (rows + rowsPerItem - 1) / rowsPerItem
            let local = device.workItemsAreLanes ? 16 : 1
            let groups = (n + 7) / 8
            defines["ROWS"] = "\(rowsPerItem)"
            // Per 8 k, one vector step per row, column and (SwiGLU) gate or up row.
            try launchSliced(
                "grouped_matmul_plain", defines: defines,
                args: common + [
                    .buffer(try deviceBuffer(weights.weight!, "expert weights")), .buffer(tileMap), .buffer(y.buffer!),
                    .buffer(scaleBuffer), .int(scaleMode), .int(weights.inFeatures), .int(n), .int(groups),
                    .int(routing == nil ? rows : 0), .int(tokensK), .int(tiles), .int(block), .int(rows), .int(experts),
                    .buffer(biasBuffer),
                ],
                global: [(tiles + local - 1) / local * local, groups], local: [local, 1],
                slices: kSlices(inFeatures: weights.inFeatures, stepsPerK: 2 * rowsPerItem + 1),
                carryFloats: (rows, 16 * n), carryWidthArg: false, spare: y.buffer!)
        }
        return y.guarded(by: routing.map { [$0.flags] } ?? [])
    }
}

extension ReferenceBackend {
    public func prepareWeights(_ w: Tensor, swiglu: Bool, pack: Bool) throws -> ExpertWeights {
        _ = try PrepareWeights(validating: w, swiglu: swiglu)
        return ExpertWeights(weight: w, packed: nil, swiglu: swiglu)
    }

    public func groupedMatmul(
        _ input: MatmulInput, weights: ExpertWeights, routing: Routing?, epilogue: Epilogue, scale: RowScale,
        dtype: DType?
    ) throws -> Tensor {
        try groupedMatmul(
            input, weights: weights, routing: routing, epilogue: epilogue, glu: .swiglu, bias: nil, scale: scale, dtype: dtype)
    }

    public func groupedMatmul(
        _ input: MatmulInput, weights: ExpertWeights, routing: Routing?, epilogue: Epilogue, glu: GLUParameters,
        bias: Tensor?, scale: RowScale, dtype: DType?
    ) throws -> Tensor {
        let op = try GroupedMatmul(
            validating: input, weights: weights, routing: routing, epilogue: epilogue, scale: scale, dtype: dtype, glu: glu,
            bias: bias)
        let a = input.tensor
        let fusedGather = op.gathered
        let rows = op.rows
        let out = op.outputType
        let biasValues = try bias.map { try hostFloats($0, "matmul bias") }
        var source = Array(0..<rows)
        var expert = [Int](repeating: 0, count: rows)
        var factor = [Double](repeating: 1, count: rows)
        if let routing {
            let assignment = try hostInts(routing.assignmentOf, "routing")
            let tiles = try hostInts(routing.tileExpert, "routing")
            let n = routing.tokens * routing.config.k
            let w = try hostFloats(routing.weights, "routing")
            for r in 0..<rows {
                let a = Int(assignment[r])
                guard a < n else {
                    source[r] = -1
                    continue
                }
                source[r] = fusedGather ? a / routing.config.k : r
                expert[r] = Int(tiles[r / routing.blockSize])
                if case .routingWeights = scale { factor[r] = Double(w[a]) }
            }
        }
        if case .perRow(let t) = scale { factor = try hostFloats(t, "row scale").map(Double.init) }
        let y = Reference.groupedMatmul(
            a: try hostFloats(a, "matmul activations"), k: weights.inFeatures, sourceRow: source, rowExpert: expert,
            w: try referenceWeights(weights), n: weights.outFeatures, epilogue: epilogue,
            scale: factor, glu: glu, bias: biasValues)
        return output(y, shape: [rows, weights.outFeatures], dtype: out).guarded(by: routing.map { [$0.flags] } ?? [])
    }
}
