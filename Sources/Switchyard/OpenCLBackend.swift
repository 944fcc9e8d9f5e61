import Foundation
import OpenCLHost
import SwitchyardReference

/// Which grouped-matmul kernel reads packed weights.
public enum MatmulKernel: String, Sendable, Hashable, Codable, CaseIterable {
    /// One work-item per row tile × panel, its accumulators in registers (CPU-class devices,
    /// where a work-item runs on one SIMD core).
    case registers
    /// One work-group per row tile × panel, staged through local memory (GPUs, and
    /// implementations that run work-items as SIMD lanes).
    case workGroup
}

/// Launch parameters Switchyard picks per device. Sizes are kernel arguments; these are the
/// `-D` and local-size choices, fixed per device so results are reproducible. The defaults are
/// derived from what the device reports (`Tuning.defaults(for:)`); `switchyard tune` searches
/// around them and stores a faster entry per device and driver.
public struct Tuning: Sendable, Hashable, Codable {
    /// Work-group size of the row-wise kernels (softmax, top-k): one work-group per row.
    public var rowGroup: Int
    /// Largest row (rounded up to a power of two) whose top-k sort keys are kept in local
    /// memory; wider rows sort in a global scratch buffer with the same network.
    public var topKLocalKeys: Int
    /// Rows of one matmul tile (the MoE layer pads each expert's rows to a multiple of it):
    /// a work-item's rows in the register kernel, a work-group's in the work-group kernel.
    public var matmulRows: Int
    /// Most row tiles a register-kernel work-item walks down one panel (its panel stays in
    /// cache); on CPU-class devices a launch takes fewer where its row block would not fit the
    /// cache (`OpenCLBackend.packedTileStep`).
    public var matmulTileStep: Int
    /// Rows (or tokens) each work-group of the gather and combine handles.
    public var rowsPerGroup: Int
    /// Work-group size of the gather and combine (work-items stride over a row's columns).
    public var copyGroup: Int
    /// The packed-weight kernel.
    public var matmulKernel: MatmulKernel
    /// Output columns of one packed weight panel (the packed layout is `[E, panels, K, panel]`).
    public var matmulPanel: Int
    /// Float vector width of the register kernel's loads and accumulators (the panel holds
    /// `matmulPanel / matmulVectorWidth` vectors per row).
    public var matmulVectorWidth: Int
    /// Rows per work-item in the work-group kernel (its work-group is panel/4 × rows/this).
    public var matmulRowsPerItem: Int
    /// k step staged in local memory by the work-group kernel.
    public var matmulTileK: Int
    /// With the work-group kernel: the most rows an expert is expected to get (decode) for which
    /// the packed matmul runs split-k instead (`grouped_matmul_splitk`: a work-item per
    /// 256-step chain of a few columns, then a fold), which gives the same bits. 0: never; nil
    /// (also in a tuning file written before this field): `splitKRows`' default, 8 with the
    /// work-group kernel. The register kernel never runs split-k.
    public var matmulSplitRows: Int?

    /// The rows at or below which packed matmuls run split-k (`matmulSplitRows`, or its default).
    public var splitKRows: Int {
        guard matmulKernel == .workGroup else { return 0 }
        return matmulSplitRows ?? 8
    }

    public init(
        rowGroup: Int, topKLocalKeys: Int = 4096, matmulRows: Int = 4, matmulTileStep: Int = 1, rowsPerGroup: Int = 1,
        copyGroup: Int? = nil, matmulKernel: MatmulKernel = .registers, matmulPanel: Int = 64,
        matmulVectorWidth: Int = 16, matmulRowsPerItem: Int = 4, matmulTileK: Int = 16, matmulSplitRows: Int? = nil
    ) {
        self.matmulSplitRows = matmulSplitRows
        self.copyGroup = copyGroup ?? rowGroup
        self.matmulTileStep = matmulTileStep
        self.rowsPerGroup = rowsPerGroup
        self.rowGroup = rowGroup
        self.topKLocalKeys = topKLocalKeys
        self.matmulRows = matmulRows
        self.matmulKernel = matmulKernel
        self.matmulPanel = matmulPanel
        self.matmulVectorWidth = matmulVectorWidth
        self.matmulRowsPerItem = matmulRowsPerItem
        self.matmulTileK = matmulTileK
    }

    /// A register kernel's tile for a device with `vectorWidth`-float SIMD registers, `registers`
    /// of them: `vectors` accumulator vectors per row (a power of two) and `rows` rows,
    /// the most accumulators that leave room for the row's weight vectors, one broadcast and one
    /// spare (AVX-512, 32 registers of 16 floats: 6 rows × 4 vectors = a 6 × 64 tile;
    /// AVX2 or SSE, 16 registers: 6 rows × 2 vectors, 6 × 16 or 6 × 8).
    public static func registerTile(vectorWidth: Int, registers: Int) -> (rows: Int, vectors: Int) {
        var best = (rows: 1, vectors: 1)
        for vectors in [1, 2, 4] {
            let rows = min(8, (registers - 2 - vectors) / vectors)
            if rows >= 1 && rows * vectors > best.rows * best.vectors { best = (rows, vectors) }
        }
        return best
    }

    /// Rows of the register kernel's tile for quantized weights of `format`: dequantizing holds
    /// a scale vector per accumulator column (and int4 a zero offset vector) beside the weight
    /// vectors, so the rows shrink to what the register file still holds (AVX-512, 4 × float16
    /// per row: 5 rows, int4 4; AVX2, 2 × float8: 5, int4 4), never above `matmulRows`.
    /// The work-group kernel stages dequantized weights in local memory and keeps its rows.
    public func quantizedTileRows(format: WeightFormat) -> Int {
        guard matmulKernel == .registers, format.kernelCode != 0 else { return matmulRows }
        let vectors = max(1, matmulPanel / max(1, matmulVectorWidth))
        let extra = if case .int4 = format { 2 } else { 1 }
        let registers = Tuning.cpuRegisters(vectorWidth: matmulVectorWidth)
        return max(1, min(matmulRows, (registers - 2 - vectors * (1 + extra)) / vectors))
    }

    /// SIMD registers of a CPU whose native float vector holds `width` floats: 32 with
    /// AVX-512's 16-wide vectors, 16 for AVX/AVX2 (8) and SSE (4). (NEON has 32 registers of 4
    /// floats; OpenCL reports no register count, so 4-wide devices get the smaller budget.)
    public static func cpuRegisters(vectorWidth width: Int) -> Int { width >= 16 ? 32 : 16 }

    /// The register-kernel vector widths `switchyard tune` tries on `device`: its float vector
    /// width and the neighbours max(4, half) and min(16, twice) (only the first with `quick`).
    /// A device where work-items are SIMD lanes (native width 1) gets 1, 2 and 4; an AVX2 CPU 4,
    /// 8 and 16.
    public static func registerVectorWidths(for device: Device, quick: Bool = false) -> [Int] {
        let native = device.floatVectorWidth
        if quick { return [native] }
        return Array(Set([native, max(4, native / 2), min(16, native * 2)])).sorted(by: >)
    }

    /// Refuses a `SWITCHYARD_VECTOR_WIDTH` that is set but not 1, 2, 4, 8 or 16 (the testing
    /// override of `Device.floatVectorWidth`, e.g. 8 with PoCL's `POCL_KERNELLIB_NAME=avx2` as an
    /// AVX2 proxy on an AVX-512 host), naming it, rather than deriving a geometry it did not ask for.
    /// (`text`: the variable's value, by default as this process was started with it.)
    public static func checkVectorWidthOverride(_ text: String? = Device.vectorWidthOverrideText) throws {
        guard let text, Device.vectorWidth(overrideText: text) == nil else { return }
        throw SwitchyardError.unsupported(
            "environment variable \(Device.vectorWidthVariable) = '\(text)': expected a power of two 1, 2, 4, 8 or 16 "
                + "(the float vector width CPU-class devices derive their geometry from), or unset")
    }

    /// The largest power of two ≤ `n` (1 for `n` < 2). Device limits need not be powers of two
    /// (NVIDIA reports 48 KiB of local memory, and nothing in OpenCL makes the maximum work-group
    /// size one), where the fields derived from them must be.
    public static func floorPowerOfTwo(_ n: Int) -> Int {
        n < 2 ? 1 : 1 << (Int.bitWidth - 1 - n.leadingZeroBitCount)
    }

    /// The keys top-k sorts in local memory: a power of two, at most 16384, whose 8-byte keys
    /// take at most half of `localMemoryBytes` (at least 2). 48 KiB (NVIDIA) gives 2048, where
    /// bytes / 16 = 3072 would not be a power of two; 64 KiB gives 4096, 32 KiB 2048.
    public static func topKLocalKeys(localMemoryBytes: Int) -> Int {
        max(2, min(16384, floorPowerOfTwo(localMemoryBytes / 16)))
    }

    /// Defaults derived from the device: CPU-class devices (one work-item per core, several
    /// floats per register) run the register kernel with a tile sized to the native vector width
    /// and register file; GPUs and lane-style implementations run the work-group kernel.
    public static func defaults(for device: Device) -> Tuning {
        if device.workItemsAreLanes {
            let group = floorPowerOfTwo(min(256, device.maxWorkGroupSize))
            // 32-row × 64-column tiles, 4 × 4 outputs per work-item: 128 work-items.
            let rows = device.maxWorkGroupSize >= 128 ? 32 : 16
            return Tuning(
                rowGroup: group, topKLocalKeys: topKLocalKeys(localMemoryBytes: device.localMemoryBytes), matmulRows: rows,
                matmulKernel: .workGroup, matmulPanel: 64, matmulVectorWidth: 1, matmulRowsPerItem: 4, matmulTileK: 16)
        }
        let width = device.floatVectorWidth
        let tile = registerTile(vectorWidth: width, registers: cpuRegisters(vectorWidth: width))
        return Tuning(
            rowGroup: 16, topKLocalKeys: topKLocalKeys(localMemoryBytes: device.localMemoryBytes), matmulRows: tile.rows,
            matmulTileStep: 64, rowsPerGroup: 16, copyGroup: 1, matmulKernel: .registers, matmulPanel: tile.vectors * width,
            matmulVectorWidth: width, matmulRowsPerItem: 1, matmulTileK: 16)
    }

    /// Checks every field against what the kernels and `device` accept; the error names the field.
    public func validate(for device: Device) throws {
        func fail(_ field: String, _ value: Int, _ range: String) throws -> Never {
            throw SwitchyardError.outOfRange(argument: "tuning \(field)", value: value, range: range)
        }
        func powerOfTwo(_ v: Int) -> Bool { v > 0 && v & (v - 1) == 0 }
        let maxGroup = max(1, device.maxWorkGroupSize)
        if !powerOfTwo(rowGroup) || rowGroup > maxGroup {
            try fail("rowGroup", rowGroup, "a power of two in 1...\(maxGroup)")
        }
        if !powerOfTwo(copyGroup) || copyGroup > maxGroup {
            try fail("copyGroup", copyGroup, "a power of two in 1...\(maxGroup)")
        }
        if !powerOfTwo(topKLocalKeys) || topKLocalKeys < 2 || topKLocalKeys > max(16, device.localMemoryBytes) / 8 {
            try fail("topKLocalKeys", topKLocalKeys, "a power of two ≥ 2 whose 8-byte keys fit local memory")
        }
        if !(1...4096).contains(rowsPerGroup) { try fail("rowsPerGroup", rowsPerGroup, "1...4096") }
        if !(1...64).contains(matmulTileStep) { try fail("matmulTileStep", matmulTileStep, "1...64") }
        if !(1...16).contains(matmulTileK) { try fail("matmulTileK", matmulTileK, "1...16") }
        // (at most 64: split-k's grids keep their rows and tiles below 65,536, which some drivers
        // cap a grid's second and third dimensions at)
        if let v = matmulSplitRows, !(0...64).contains(v) { try fail("matmulSplitRows", v, "0...64") }
        switch matmulKernel {
        case .registers:
            if ![1, 2, 4, 8, 16].contains(matmulVectorWidth) {
                try fail("matmulVectorWidth", matmulVectorWidth, "1, 2, 4, 8 or 16")
            }
            if !(1...8).contains(matmulRows) { try fail("matmulRows", matmulRows, "1...8 for the register kernel") }
            let vectors = matmulPanel / max(1, matmulVectorWidth)
            if matmulPanel < 2 || matmulPanel % matmulVectorWidth != 0 || !powerOfTwo(vectors) || vectors > 8 {
                try fail("matmulPanel", matmulPanel, "1, 2, 4 or 8 vectors of matmulVectorWidth floats, at least 2")
            }
        case .workGroup:
            if !powerOfTwo(matmulPanel) || !(8...128).contains(matmulPanel) {
                try fail("matmulPanel", matmulPanel, "a power of two in 8...128 for the work-group kernel")
            }
            if !powerOfTwo(matmulRows) || !(1...128).contains(matmulRows) {
                try fail("matmulRows", matmulRows, "a power of two in 1...128 for the work-group kernel")
            }
            if !powerOfTwo(matmulRowsPerItem) || matmulRowsPerItem > matmulRows {
                try fail("matmulRowsPerItem", matmulRowsPerItem, "a power of two dividing matmulRows = \(matmulRows)")
            }
            let items = matmulPanel / 4 * (matmulRows / matmulRowsPerItem)
            if items > maxGroup {
                try fail("matmulRows", matmulRows, "panel/4 × rows/rowsPerItem ≤ \(maxGroup) work-items")
            }
            let local = 4 * matmulTileK * (matmulRows + matmulPanel) + 4 * matmulRows
            if local > device.localMemoryBytes {
                try fail("matmulTileK", matmulTileK, "local memory \(local) B ≤ \(device.localMemoryBytes) B")
            }
        }
    }

    /// The file tuning entries are stored in: `SWITCHYARD_TUNING_FILE`, else
    /// `$XDG_CACHE_HOME/switchyard/tuning.json` (or `~/.cache/switchyard/tuning.json`).
    public static var storePath: String {
        let env = ProcessInfo.processInfo.environment
        if let path = env["SWITCHYARD_TUNING_FILE"], !path.isEmpty { return path }
        let cache = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache")
        return (cache as NSString).appendingPathComponent("switchyard/tuning.json")
    }

    /// All stored entries, keyed by device identity (name and driver version); none when the file
    /// does not exist. A file that exists but cannot be read as entries is an error naming it.
    public static func storedEntries() throws -> [String: Tuning] {
        let path = storePath
        guard FileManager.default.fileExists(atPath: path) else { return [:] }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SwitchyardError.unsupported("tuning file \(path) cannot be read")
        }
        do {
            return try JSONDecoder().decode([String: Tuning].self, from: data)
        } catch let DecodingError.keyNotFound(key, context) {
            throw SwitchyardError.unsupported(
                "tuning file \(path): entry \(context.codingPath.first?.stringValue ?? "?") has no field '\(key.stringValue)' "
                    + "(written by an older switchyard?): run `switchyard tune` again or delete the file")
        } catch {
            throw SwitchyardError.unsupported("tuning file \(path) is not a valid tuning store: \(error)")
        }
    }

    /// The stored entry for `device`, if `switchyard tune` made one (and SWITCHYARD_NO_TUNING is
    /// unset), validated for the device.
    public static func stored(for device: Device) throws -> Tuning? {
        if ProcessInfo.processInfo.environment["SWITCHYARD_NO_TUNING"] != nil { return nil }
        guard let entry = try storedEntries()[device.identity] else { return nil }
        do {
            try entry.validate(for: device)
        } catch {
            throw SwitchyardError.unsupported("tuning file \(storePath), entry for \(device.identity): \(error)")
        }
        return entry
    }

    /// Stores `self` as the entry for `device`.
    public func store(for device: Device) throws {
        var entries = (try? Tuning.storedEntries()) ?? [:]
        entries[device.identity] = self
        let url = URL(fileURLWithPath: Tuning.storePath)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(entries).write(to: url)
    }

    /// A one-line description of the matmul geometry.
    public var matmulSummary: String {
        switch matmulKernel {
        case .registers:
            "register kernel, \(matmulRows) × \(matmulPanel) tile (\(matmulRows) rows × \(matmulPanel / matmulVectorWidth)"
                + " float\(matmulVectorWidth == 1 ? "" : String(matmulVectorWidth))), tile step \(matmulTileStep)"
        case .workGroup:
            "work-group kernel, \(matmulRows) × \(matmulPanel) tile, \(matmulPanel / 4) × \(matmulRows / matmulRowsPerItem)"
                + " work-items of \(matmulRowsPerItem) × 4, k step \(matmulTileK)"
                + (splitKRows > 0 ? "; split-k up to \(splitKRows) rows an expert" : "")
        }
    }
}

/// Runs Switchyard's ops on one OpenCL device through one in-order queue.
public final class OpenCLBackend: ComputeBackend, @unchecked Sendable {
    /// The OpenCL context and in-order queue ops run on.
    public let context: Context
    /// The launch geometry in use (stored by `switchyard tune`, else derived from the device).
    public let tuning: Tuning
    /// Bytes of poisoned sentinel placed after every op output (0: outputs are exact-size and
    /// not poisoned). Conformance runs with sentinels so unwritten elements and writes past the
    /// end are caught.
    @_spi(Testing) public let sentinelBytes: Int

    private let lock = NSLock()
    let pool: BufferPool
    private var kernels: [KernelKey: Kernel] = [:]
    private var sources: [String: String] = [:]
    /// Launches being recorded, per recording thread (two threads profiling on one backend each
    /// see only their own launches).
    private var recorders: [UInt: [(String, Event)]] = [:]

    /// An identifier of the calling thread.
    private static var threadKey: UInt {
        #if canImport(Darwin)
        UInt(bitPattern: pthread_self())
        #else
        UInt(pthread_self())
        #endif
    }

    struct KernelKey: Hashable {
        let file: String
        let name: String
        let options: String
    }

    /// The pattern outputs are poisoned with: a NaN in f32, f16 and bf16, and 0x7FBF7FBF in i32.
    public static let poison: [UInt8] = [0xBF, 0x7F]

    /// The device of the context.
    public var device: Device { context.device }
    public var name: String { device.name }

    /// A backend on `device`, or on the default device (`SWITCHYARD_DEVICE`, else first GPU,
    /// accelerator, CPU), with its own context and in-order queue.
    public convenience init(device: Device? = nil, tuning: Tuning? = nil) throws {
        try self.init(context: Context(device: device ?? Device.select()), tuning: tuning, sentinelBytes: 0)
    }

    /// A backend on an existing `Context` (for instance one wrapping an engine's `cl_context` and
    /// queue: `Context(wrapping:queue:)`). Ops enqueue on its queue in order with whatever else
    /// the engine enqueues there.
    public convenience init(context: Context, tuning: Tuning? = nil) throws {
        try self.init(context: context, tuning: tuning, sentinelBytes: 0)
    }

    /// A backend on an engine's own OpenCL context and in-order command queue (`cl_context` and
    /// `cl_command_queue` handles, both retained for the backend's lifetime): Switchyard's
    /// kernels run on the engine's queue, in order with its own work, and its buffers can be
    /// wrapped as tensors without copying (`tensor(wrapping:...)`).
    public convenience init(clContext: OpaquePointer, queue: OpaquePointer, tuning: Tuning? = nil) throws {
        try self.init(context: Context(wrapping: clContext, queue: queue), tuning: tuning, sentinelBytes: 0)
    }

    /// A backend whose every output is poisoned and followed by `sentinelBytes` of poisoned tail
    /// (conformance: unwritten elements and writes past the end are caught).
    @_spi(Testing)
    public convenience init(device: Device? = nil, tuning: Tuning? = nil, sentinelBytes: Int) throws {
        try self.init(context: Context(device: device ?? Device.select()), tuning: tuning, sentinelBytes: sentinelBytes)
    }

    init(context: Context, tuning: Tuning?, sentinelBytes: Int) throws {
        let device = context.device
        self.context = context
        try Tuning.checkVectorWidthOverride()
        let chosen = try tuning ?? Tuning.stored(for: device) ?? Tuning.defaults(for: device)
        try chosen.validate(for: device)
        self.tuning = chosen
        self.sentinelBytes = max(0, sentinelBytes + (sentinelBytes & 1))
        self.pool = BufferPool(limit: min(device.globalMemoryBytes / 4, 2 << 30))
    }

    // MARK: tensors

    /// A new device tensor; with sentinels enabled it is poisoned and followed by a sentinel tail.
    public func empty(shape: [Int], dtype: DType, label: String = "output") throws -> Tensor {
        let bytes = try Tensor.checkedCount(shape, dtype: dtype, label) * dtype.size
        guard bytes <= device.maxAllocationBytes else {
            throw SwitchyardError.shape(
                argument: label, expected: "at most \(device.maxAllocationBytes) bytes (the device's largest allocation)",
                actual: shape)
        }
        if sentinelBytes == 0 {
            // Reuse a freed buffer of the same size: a fresh one costs its first-touch page faults
            // inside the next kernel (seconds per GB on a CPU device). On one in-order queue a
            // reused buffer is only written after every earlier command on it has run.
            let buffer = try pool.take(bytes) ?? context.buffer(byteCount: bytes, label: label)
            return Tensor(shape: shape, dtype: dtype, storage: .device(buffer), lease: BufferLease(buffer, self, pooled: true))
        }
        // (u8 tensors can have an odd size: the poison pattern is 2 bytes, so the sentinel tail
        // starts at an odd byte then, and `sentinelViolation` follows the pattern's phase.)
        let buffer = try context.buffer(byteCount: bytes + (bytes & 1) + sentinelBytes, label: label)
        try buffer.fill(pattern: Self.poison)
        return Tensor(shape: shape, dtype: dtype, storage: .device(buffer), lease: BufferLease(buffer, self, pooled: false))
    }

    public func copyRows(_ t: Tensor, _ range: Range<Int>) throws -> Tensor {
        let rowBytes = try validateRowRange(t, range)
        let source = try deviceBuffer(t, "copyRows tensor")
        let out = try empty(shape: [range.count] + t.shape.dropFirst(), dtype: t.dtype, label: "rows")
        try out.buffer!.copy(from: source, bytes: range.count * rowBytes, sourceOffset: range.lowerBound * rowBytes)
        return out.guarded(by: t.guards)
    }

    public func concatenateRows(_ parts: [Tensor]) throws -> Tensor {
        let (shape, dtype) = try validateConcatenation(parts)
        let out = try empty(shape: shape, dtype: dtype, label: "concatenated rows")
        var offset = 0
        var guards: [Tensor] = []
        for p in parts {
            try out.buffer!.copy(from: try deviceBuffer(p, "concatenateRows part"), bytes: p.byteCount, destinationOffset: offset)
            offset += p.byteCount
            guards += p.guards
        }
        return out.guarded(by: guards)
    }

    public var maxTensorBytes: Int { min(device.maxAllocationBytes, Tensor.maxBytes) }

    /// A copy of `tensor` in new device memory of this backend (enqueued; same shape and dtype).
    public func copy(_ tensor: Tensor) throws -> Tensor {
        let source = try deviceBuffer(tensor, "copy source")
        let out = try empty(shape: tensor.shape, dtype: tensor.dtype, label: "copy")
        try out.buffer!.copy(from: source, bytes: tensor.byteCount)
        return out.guarded(by: tensor.guards)
    }

    /// A scratch buffer for an op's intermediate values (released by the op; keep it alive past
    /// its kernels with `holdScratch`). Poisoned like outputs when sentinels are on, so a kernel
    /// that reads scratch it never wrote fails conformance.
    func scratch(byteCount: Int, label: String) throws -> Buffer {
        let buffer = try context.buffer(byteCount: byteCount, label: label)
        if sentinelBytes > 0 && byteCount > 0 && byteCount % Self.poison.count == 0 {
            try buffer.fill(pattern: Self.poison)
        }
        return buffer
    }

    /// Describes how the sentinel tail after `tensor` was overwritten, or nil if it is intact.
    @_spi(Testing) public func sentinelViolation(_ tensor: Tensor) throws -> String? {
        guard sentinelBytes > 0, let buffer = tensor.buffer else { return nil }
        let tail = try buffer.download(UInt8.self, count: sentinelBytes, byteOffset: tensor.byteCount)
        for (i, byte) in tail.enumerated() where byte != Self.poison[(tensor.byteCount + i) % 2] {
            return "write past the end of \(tensor): byte \(i) after the last element was overwritten"
        }
        return nil
    }

    public func tensor(_ values: [Float], shape: [Int], dtype: DType) throws -> Tensor {
        try checkHostCount(values.count, shape, "tensor values")
        let t = try empty(shape: shape, dtype: dtype, label: "input")
        switch dtype {
        case .f32: try t.buffer!.upload(values)
        case .f16: try t.buffer!.upload(values.map(FloatBits.f16))
        case .bf16: try t.buffer!.upload(values.map(FloatBits.bf16))
        case .i32, .u8:
            throw SwitchyardError.dtype(argument: "tensor dtype", expected: "f32, f16 or bf16", actual: dtype)
        }
        return t
    }

    public func tensor(_ values: [Int32], shape: [Int]) throws -> Tensor {
        try checkHostCount(values.count, shape, "tensor values")
        let t = try empty(shape: shape, dtype: .i32, label: "input")
        try t.buffer!.upload(values)
        return t
    }

    /// A tensor holding `bytes`, the raw elements of `shape` in `dtype` (as `bytes(_:)` returns
    /// them): rows received from another process keep their exact bits, no conversion.
    public func tensor(bytes: [UInt8], shape: [Int], dtype: DType) throws -> Tensor {
        let expected = try Tensor.checkedCount(shape, dtype: dtype, "tensor bytes") * dtype.size
        if bytes.count != expected {
            throw SwitchyardError.hostData(argument: "tensor bytes", expected: expected, actual: bytes.count)
        }
        let t = try empty(shape: shape, dtype: dtype, label: "input")
        try t.buffer!.upload(bytes)
        return t
    }

    /// A block of rows for `tensor(concatenating:rowShape:dtype:)`: raw host bytes (`rows` rows),
    /// or a range of rows of a device tensor of this backend.
    public enum RowBlock: Sendable {
        case bytes([UInt8], rows: Int)
        case rows(Tensor, Range<Int>)
    }

    /// A new tensor `[Σ rows] + rowShape` of `dtype` made of `blocks` in order: host bytes are
    /// uploaded, device rows copied on the device (enqueued; no host round trip). Each block must
    /// hold whole rows of `rowShape` in `dtype`.
    public func tensor(concatenating blocks: [RowBlock], rowShape: [Int], dtype: DType) throws -> Tensor {
        let rowBytes = try Tensor.checkedCount(rowShape, dtype: dtype, "row shape") * dtype.size
        var total = 0
        for (i, block) in blocks.enumerated() {
            switch block {
            case .bytes(let bytes, let rows):
                guard rows >= 0, bytes.count == rows * rowBytes else {
                    throw SwitchyardError.hostData(argument: "row block \(i) bytes", expected: max(0, rows) * rowBytes, actual: bytes.count)
                }
                total += rows
            case .rows(let t, let range):
                guard t.dtype == dtype else { throw SwitchyardError.dtype(argument: "row block \(i)", expected: "\(dtype)", actual: t.dtype) }
                guard t.shape.count == rowShape.count + 1, Array(t.shape.dropFirst()) == rowShape else {
                    throw SwitchyardError.shape(argument: "row block \(i)", expected: "[rows] + \(rowShape)", actual: t.shape)
                }
                guard range.lowerBound >= 0, range.upperBound <= t.shape[0] else {
                    throw SwitchyardError.outOfRange(argument: "row block \(i) rows end", value: range.upperBound, range: "0...\(t.shape[0])")
                }
                _ = try deviceBuffer(t, "row block \(i)")
                total += range.count
            }
        }
        let out = try empty(shape: [total] + rowShape, dtype: dtype, label: "concatenated rows")
        var row = 0
        var guards: [Tensor] = []
        for block in blocks {
            switch block {
            case .bytes(let bytes, let rows):
                try out.buffer!.upload(bytes, byteOffset: row * rowBytes)
                row += rows
            case .rows(let t, let range):
                try out.buffer!.copy(
                    from: try deviceBuffer(t, "row block"), bytes: range.count * rowBytes,
                    sourceOffset: range.lowerBound * rowBytes, destinationOffset: row * rowBytes)
                guards += t.guards
                row += range.count
            }
        }
        return out.guarded(by: guards)
    }

    /// The raw bytes of rows `rows` of `tensor` (rank ≥ 1).
    public func bytes(_ tensor: Tensor, rows: Range<Int>) throws -> [UInt8] {
        guard let first = tensor.shape.first, rows.lowerBound >= 0, rows.upperBound <= first else {
            throw SwitchyardError.outOfRange(
                argument: "rows end of \(tensor)", value: rows.upperBound, range: "0...\(tensor.shape.first ?? 0)")
        }
        let rowBytes = first == 0 ? 0 : tensor.byteCount / first
        let values = try deviceBuffer(tensor, "tensor").download(
            UInt8.self, count: rows.count * rowBytes, byteOffset: rows.lowerBound * rowBytes)
        try checkGuards(tensor)
        return values
    }

    func deviceBuffer(_ tensor: Tensor, _ argument: String) throws -> Buffer {
        guard let buffer = tensor.buffer else {
            throw SwitchyardError.backendMismatch(argument: argument, expected: name, actual: "the reference backend")
        }
        guard buffer.context === context else {
            throw SwitchyardError.backendMismatch(argument: argument, expected: name, actual: "another OpenCL context")
        }
        return buffer
    }

    public func floats(_ tensor: Tensor) throws -> [Float] {
        let buffer = try deviceBuffer(tensor, "tensor")
        let values: [Float]
        switch tensor.dtype {
        case .f32: values = try buffer.download(Float.self, count: tensor.count)
        case .f16: values = FloatBits.fromF16(try buffer.download(UInt16.self, count: tensor.count))
        case .bf16: values = FloatBits.fromBF16(try buffer.download(UInt16.self, count: tensor.count))
        case .i32, .u8: throw SwitchyardError.dtype(argument: "tensor", expected: "f32, f16 or bf16", actual: tensor.dtype)
        }
        try checkGuards(tensor)
        return values
    }

    public func ints(_ tensor: Tensor) throws -> [Int32] {
        guard tensor.dtype == .i32 else {
            throw SwitchyardError.dtype(argument: "tensor", expected: "i32", actual: tensor.dtype)
        }
        let values = try deviceBuffer(tensor, "tensor").download(Int32.self, count: tensor.count)
        try checkGuards(tensor)
        return values
    }

    public func synchronize() throws {
        try context.queue.finish()
        lock.lock()
        scratchInFlight.removeAll()
        lock.unlock()
    }

    /// Suspends until every op issued so far has finished, blocking no thread.
    public func synchronize() async throws {
        try await context.queue.finished()
    }

    /// An event that completes when every op issued so far (on this backend's queue) has: a
    /// completion handle for engines that schedule themselves (`Event.handle` is the `cl_event`
    /// for their own wait lists; `await event.completed()` suspends without blocking).
    public func completionEvent() throws -> Event {
        let event = try context.queue.marker()
        try context.queue.flush()
        return event
    }

    /// The values of a floating-point tensor, read without blocking a thread.
    public func floats(_ tensor: Tensor) async throws -> [Float] {
        guard tensor.dtype.isFloatingPoint else {
            throw SwitchyardError.dtype(argument: "tensor", expected: "f32, f16 or bf16", actual: tensor.dtype)
        }
        let raw = try await deviceBuffer(tensor, "tensor").downloadBytes(count: tensor.byteCount)
        try await checkGuards(tensor)
        return Self.decodeFloats(raw, tensor.dtype)
    }

    /// The values of an Int32 tensor, read without blocking a thread.
    public func ints(_ tensor: Tensor) async throws -> [Int32] {
        guard tensor.dtype == .i32 else {
            throw SwitchyardError.dtype(argument: "tensor", expected: "i32", actual: tensor.dtype)
        }
        let raw = try await deviceBuffer(tensor, "tensor").downloadBytes(count: tensor.byteCount)
        try await checkGuards(tensor)
        return raw.withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }
    }

    /// The raw bytes of a tensor, read without blocking a thread.
    public func bytes(_ tensor: Tensor) async throws -> [UInt8] {
        let raw = try await deviceBuffer(tensor, "tensor").downloadBytes(count: tensor.byteCount)
        try await checkGuards(tensor)
        return raw
    }

    static func decodeFloats(_ raw: [UInt8], _ dtype: DType) -> [Float] {
        raw.withUnsafeBytes { bytes in
            switch dtype {
            case .f32, .i32: Array(bytes.bindMemory(to: Float.self))
            case .u8: []  // (never called for u8: `floats` refuses it first)
            case .f16: bytes.bindMemory(to: UInt16.self).map(FloatBits.fromF16)
            case .bf16: bytes.bindMemory(to: UInt16.self).map(FloatBits.fromBF16)
            }
        }
    }

    /// A tensor over an engine's own device memory, without copying: `mem` (a `cl_mem` buffer of
    /// this backend's context) from byte `byteOffset`, holding `shape` elements of `dtype`.
    /// The buffer is retained while the tensor (or any op output that depends on it) is alive;
    /// Switchyard never returns it to its pool. An offset other than 0 must be a multiple of the
    /// device's base address alignment (an OpenCL sub-buffer).
    public func tensor(wrapping mem: OpaquePointer, byteOffset: Int = 0, shape: [Int], dtype: DType) throws -> Tensor {
        let bytes = try Tensor.checkedCount(shape, dtype: dtype, "wrapped tensor") * dtype.size
        let buffer = try context.buffer(wrapping: mem, byteOffset: byteOffset, byteCount: bytes, label: "wrapped tensor")
        return Tensor(shape: shape, dtype: dtype, storage: .device(buffer))
    }

    /// The OpenCL buffer (`cl_mem`) holding `tensor`'s elements from byte 0, for an engine's
    /// own kernels. It stays valid while `tensor` is alive; do not write it while Switchyard ops
    /// that read the tensor may still run.
    public func clBuffer(of tensor: Tensor) throws -> OpaquePointer {
        try deviceBuffer(tensor, "tensor").handle
    }

    /// Scratch buffers an op made and dropped while kernels that use them may not have run yet,
    /// each with the event of its last use. They are kept here until that event is done: the
    /// OpenCL spec lets a released buffer live until its commands finish, but under concurrent
    /// enqueues from several threads rusticl was seen reusing such memory early (another case's
    /// flags and outputs were overwritten by a pending permute's chunk counts).
    private var scratchInFlight: [(Buffer, Event)] = []

    /// Keeps `buffers` alive until `event` (their last use on the in-order queue) is done.
    func holdScratch(_ buffers: [Buffer], until event: Event) {
        lock.lock()
        defer { lock.unlock() }
        scratchInFlight.removeAll { $0.1.isDone }
        for b in buffers { scratchInFlight.append((b, event)) }
    }

    // MARK: launching

    typealias Arg = KernelArgument

    /// The `-D` option string for `defines`, in a stable order so equal sets share one program.
    static func options(_ defines: [String: String]) -> String {
        (["-cl-std=CL1.2"] + defines.sorted { $0.key < $1.key }.map { "-D\($0.key)=\($0.value)" })
            .joined(separator: " ")
    }

    /// Builds (once) the program of `file` (an embedded kernel file, or with `source` a
    /// caller's program text) with `defines` and returns its kernel `name`. Call with `lock` held.
    private func kernelLocked(_ file: String, _ name: String, _ defines: [String: String], source given: String? = nil)
        throws -> Kernel
    {
        // A device without a hardware FMA builds its multiply-add chains as a multiply and an add
        // (`SY_MAD`, Kernels/common.h); elsewhere the options stay as they were (no new programs).
        let options = Self.options(device.chainsUseFMA ? defines : defines.merging(["SY_SOFT_FMA": "1"]) { x, _ in x })
        let key = KernelKey(file: given ?? file, name: name, options: options)
        if let kernel = kernels[key] { return kernel }
        let source: String
        if let given {
            source = given
        } else if let cached = sources[file] {
            source = cached
        } else {
            source = try KernelLibrary.source(of: file)
            sources[file] = source
        }
        let kernel = try context.program(source: source, options: options).kernel(name)
        kernels[key] = kernel
        return kernel
    }

    /// Builds the program of `file` with `defines` ahead of its first launch.
    public func prepare(_ file: String, _ name: String, defines: [String: String] = [:]) throws {
        lock.lock()
        defer { lock.unlock() }
        _ = try kernelLocked(file, name, defines)
    }

    /// Builds (once per source and defines) a caller's OpenCL C program ahead of its first launch.
    public func prepare(program source: String, kernel name: String, defines: [String: String] = [:]) throws {
        lock.lock()
        defer { lock.unlock() }
        _ = try kernelLocked("", name, defines, source: source)
    }

    /// Enqueues kernel `name` of a caller's OpenCL C program (`source`, built once per source
    /// and `defines`, each `-DKEY=VALUE`, with `-cl-std=CL1.2`) on this backend's queue, in order
    /// with Switchyard's own ops: for an engine's own kernels beside Switchyard's, and for the
    /// benchmark's ceiling kernels. `global` must be a multiple of `local` in each dimension.
    /// Integer arguments are passed as 32-bit `int` (an error if one does not fit).
    @discardableResult
    public func launch(
        program source: String, kernel name: String, defines: [String: String] = [:], arguments: [KernelArgument],
        global: [Int], local: [Int]
    ) throws -> Event {
        try launch("", name, defines: defines, args: arguments, global: global, local: local, source: source)
    }

    /// Sets the arguments of kernel `name` from `file` and enqueues it. Local sizes are always
    /// explicit (a driver's own choice was measured slower, and each new local size is a compile).
    @discardableResult
    func launch(
        _ file: String, _ name: String, defines: [String: String] = [:], args: [Arg], global: [Int], local: [Int],
        source: String? = nil
    ) throws -> Event {
        lock.lock()
        defer { lock.unlock() }
        let kernel = try kernelLocked(file, name, defines, source: source)
        for (i, arg) in args.enumerated() {
            switch arg {
            case .buffer(let buffer): try kernel.set(i, buffer)
            case .int(let value):
                guard let v = Int32(exactly: value) else {
                    throw SwitchyardError.outOfRange(argument: "\(name) argument \(i)", value: value, range: "Int32")
                }
                try kernel.set(i, value: v)
            case .float(let value): try kernel.set(i, value: value)
            case .local(let bytes): try kernel.setLocal(i, bytes: max(bytes, 4))
            }
        }
        let event = try context.queue.enqueue(kernel, global: global, local: local)
        if !recorders.isEmpty, recorders[Self.threadKey] != nil { recorders[Self.threadKey]!.append((name, event)) }
        return event
    }

    /// Records a host↔device transfer's event like a launch (for device-side timing).
    func recordTransfer(_ name: String, _ event: Event) {
        lock.lock()
        defer { lock.unlock() }
        if !recorders.isEmpty, recorders[Self.threadKey] != nil { recorders[Self.threadKey]!.append((name, event)) }
    }

    /// Runs `body` and returns, with its result, every kernel launch it made and its event
    /// (for device-side timing of each stage).
    @_spi(Profiling) public func recordingLaunches<T>(_ body: () throws -> T) throws -> (T, [(kernel: String, event: Event)]) {
        let key = Self.threadKey
        lock.lock()
        let outer = recorders[key]  // a recording nested in another on this thread
        recorders[key] = []
        lock.unlock()
        var events: [(String, Event)] = []
        defer {
            lock.lock()
            recorders[key] = outer.map { $0 + events }
            lock.unlock()
        }
        let result = try body()
        lock.lock()
        events = recorders[key] ?? []
        lock.unlock()
        return (result, events.map { (kernel: $0.0, event: $0.1) })
    }

}

/// An argument of a kernel launched with `OpenCLBackend.launch(program:kernel:...)`.
public enum KernelArgument: Sendable {
    /// A device buffer (`Context.buffer(byteCount:)`, or a tensor's via `.tensor`).
    case buffer(Buffer)
    /// A 32-bit `int` argument.
    case int(Int)
    /// A `float` argument.
    case float(Float)
    /// `bytes` of local memory.
    case local(bytes: Int)

    /// A tensor's device buffer (the tensor must live on the backend that launches).
    public static func tensor(_ t: Tensor) throws -> KernelArgument {
        guard let buffer = t.buffer else {
            throw SwitchyardError.backendMismatch(argument: "kernel argument", expected: "an OpenCL device", actual: "the reference backend")
        }
        return .buffer(buffer)
    }
}

/// Freed device buffers kept for reuse, by exact size, up to `limit` bytes in all.
final class BufferPool: @unchecked Sendable {
    private let lock = NSLock()
    private var free: [Int: [Buffer]] = [:]
    private var cached = 0
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    func take(_ bytes: Int) -> Buffer? {
        lock.lock()
        defer { lock.unlock() }
        guard var list = free[bytes], let buffer = list.popLast() else { return nil }
        free[bytes] = list.isEmpty ? nil : list
        cached -= max(bytes, 1)
        return buffer
    }

    func put(_ buffer: Buffer) {
        lock.lock()
        defer { lock.unlock() }
        let size = max(buffer.byteCount, 1)
        guard size <= limit else { return }
        // Make room by dropping the largest cached buffers first.
        while cached + size > limit, let largest = free.keys.max() {
            free[largest]!.removeLast()
            if free[largest]!.isEmpty { free[largest] = nil }
            cached -= max(largest, 1)
        }
        free[buffer.byteCount, default: []].append(buffer)
        cached += size
    }
}

/// What happens to a tensor's buffer when the last tensor viewing it goes away: it goes back to
/// the backend's pool (reused on the same in-order queue), or, unpooled, it is kept alive until
/// every command enqueued so far has run (see `OpenCLBackend.holdScratch`).
final class BufferLease: @unchecked Sendable {
    let buffer: Buffer
    weak var backend: OpenCLBackend?
    let pooled: Bool

    init(_ buffer: Buffer, _ backend: OpenCLBackend, pooled: Bool) {
        self.buffer = buffer
        self.backend = backend
        self.pooled = pooled
    }

    deinit {
        guard let backend else { return }
        if pooled {
            backend.pool.put(buffer)
        } else if let marker = try? backend.context.queue.marker() {
            backend.holdScratch([buffer], until: marker)
        }
    }
}
