import COpenCL
import Foundation

/// Errors of the host layer that are not a single failed OpenCL call.
public enum OpenCLHostError: Error, Sendable, CustomStringConvertible {
    /// No OpenCL platform is installed (the ICD loader found no driver).
    case noPlatform(status: Int32)
    /// `SWITCHYARD_DEVICE` (or a `--device` option) matches no device.
    case noSuchDevice(selector: String, available: [String])
    /// The program failed to build; `log` is the device compiler's full build log.
    case buildFailed(device: String, options: String, log: String, error: CLError)
    /// A transfer or fill does not fit the buffer.
    case sizeMismatch(what: String, expected: Int, actual: Int)
    /// A launch shape the device cannot take.
    case invalidLaunch(String)
    /// A caller's OpenCL object that Switchyard cannot work with (another context, an
    /// out-of-order queue, a misaligned sub-buffer offset).
    case interop(String)

    /// A paragraph saying what went wrong and what to do about it (for `noPlatform`: which
    /// driver packages to install and where the loader looks; for `noSuchDevice`: every device).
    public var description: String {
        switch self {
        case .noPlatform(let status):
            let how = status == 0 ? "found zero OpenCL platforms" : "reported \(CLError.name(of: status)) (\(status))"
            return """
                No OpenCL platform is available: the OpenCL ICD loader \(how). Switchyard needs an OpenCL \
                driver registered under /etc/OpenCL/vendors (or the folder named by OCL_ICD_VENDORS). On \
                Debian or Ubuntu, `apt-get install pocl-opencl-icd` gives a CPU device that runs every \
                kernel; GPU vendors ship their own ICD (nvidia-opencl-icd, mesa-opencl-icd or rocm-opencl, \
                intel-opencl-icd). `clinfo` lists what the loader sees.
                """ + Self.cacheHint
        case .noSuchDevice(let selector, let available):
            let list = available.enumerated().map { "  \($0.offset): \($0.element)" }.joined(separator: "\n")
            return "No OpenCL device matches '\(selector)' (an index or a case-insensitive name substring). Devices:\n\(list)"
        case .buildFailed(let device, let options, let log, let error):
            return "OpenCL program build failed on \(device) with options '\(options)': \(error)\nBuild log:\n\(log)"
        case .sizeMismatch(let what, let expected, let actual):
            return "\(what): expected at most \(expected) bytes, got \(actual)"
        case .invalidLaunch(let message):
            return "invalid kernel launch: \(message)"
        case .interop(let message):
            return "OpenCL interop: \(message)"
        }
    }
}

extension OpenCLHostError {
    /// PoCL (and Mesa) refuse to start without a writable cache folder, and the loader then
    /// reports no platform: say so when that is the likely cause.
    static var cacheHint: String {
        let env = ProcessInfo.processInfo.environment
        if let pocl = env["POCL_CACHE_DIR"], !pocl.isEmpty {
            return FileManager.default.isWritableFile(atPath: pocl)
                ? "" : " POCL_CACHE_DIR=\(pocl) is not writable: PoCL cannot start without its kernel cache."
        }
        let cache = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? ((env["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()) as NSString)
            .appendingPathComponent(".cache")
        var folder = cache
        while !FileManager.default.fileExists(atPath: folder) && folder != "/" {
            folder = (folder as NSString).deletingLastPathComponent
        }
        if FileManager.default.isWritableFile(atPath: folder) { return "" }
        return " The cache folder \(cache) is not writable, and PoCL does not start without its kernel cache: "
            + "set POCL_CACHE_DIR (and XDG_CACHE_HOME) to a writable folder."
    }
}

/// The kind of an OpenCL device.
public enum DeviceKind: String, Sendable, Comparable {
    /// `CL_DEVICE_TYPE_GPU`, `CL_DEVICE_TYPE_ACCELERATOR`, `CL_DEVICE_TYPE_CPU`, or none of these.
    case gpu = "GPU", accelerator = "Accelerator", cpu = "CPU", other = "Other"

    /// Preference order for the default device: GPU, then accelerator, then CPU.
    var rank: Int {
        switch self {
        case .gpu: 0
        case .accelerator: 1
        case .cpu: 2
        case .other: 3
        }
    }

    /// Orders kinds by preference for the default device: GPU, accelerator, CPU, other.
    public static func < (a: DeviceKind, b: DeviceKind) -> Bool { a.rank < b.rank }
}

/// An OpenCL platform (driver). Platform ids are owned by the ICD loader and never released.
public struct Platform: @unchecked Sendable {
    /// The loader's platform id.
    public let id: cl_platform_id
    /// `CL_PLATFORM_NAME`, e.g. "Portable Computing Language" or "rusticl".
    public let name: String
    /// `CL_PLATFORM_VENDOR`.
    public let vendor: String
    /// `CL_PLATFORM_VERSION`, e.g. "OpenCL 3.0 PoCL 3.1 ...".
    public let version: String

    /// Every platform the ICD loader knows. Throws `OpenCLHostError.noPlatform` when there is none.
    public static func all() throws -> [Platform] {
        var count: cl_uint = 0
        let status = clGetPlatformIDs(0, nil, &count)
        if status == CL_PLATFORM_NOT_FOUND_KHR || (status == CL_SUCCESS && count == 0) {
            throw OpenCLHostError.noPlatform(status: status == CL_SUCCESS ? 0 : status)
        }
        try check(status, "clGetPlatformIDs")
        var ids = [cl_platform_id?](repeating: nil, count: Int(count))
        try check(clGetPlatformIDs(count, &ids, nil), "clGetPlatformIDs")
        return try ids.compactMap { $0 }.map { id in
            Platform(
                id: id,
                name: try platformString(id, cl_platform_info(CL_PLATFORM_NAME)),
                vendor: try platformString(id, cl_platform_info(CL_PLATFORM_VENDOR)),
                version: try platformString(id, cl_platform_info(CL_PLATFORM_VERSION)))
        }
    }

    /// The devices of this platform, of every type.
    public func devices() throws -> [Device] {
        var count: cl_uint = 0
        let status = clGetDeviceIDs(id, cl_device_type(CL_DEVICE_TYPE_ALL), 0, nil, &count)
        if status == CL_DEVICE_NOT_FOUND { return [] }
        try check(status, "clGetDeviceIDs")
        var ids = [cl_device_id?](repeating: nil, count: Int(count))
        try check(clGetDeviceIDs(id, cl_device_type(CL_DEVICE_TYPE_ALL), count, &ids, nil), "clGetDeviceIDs")
        return try ids.compactMap { $0 }.map { try Device(id: $0, platform: self) }
    }
}

private func platformString(_ id: cl_platform_id, _ param: cl_platform_info) throws -> String {
    var size = 0
    try check(clGetPlatformInfo(id, param, 0, nil, &size), "clGetPlatformInfo")
    var bytes = [CChar](repeating: 0, count: size + 1)
    try check(clGetPlatformInfo(id, param, size, &bytes, nil), "clGetPlatformInfo")
    return String(decoding: bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        .trimmingCharacters(in: .whitespaces)
}

/// An OpenCL device and the properties Switchyard uses to pick kernels and check sizes.
/// Root device ids are owned by the driver and need no release.
public struct Device: @unchecked Sendable, CustomStringConvertible {
    /// The driver's device id.
    public let id: cl_device_id
    /// The name of the platform (driver) the device belongs to.
    public let platformName: String
    /// `CL_DEVICE_NAME`: what `SWITCHYARD_DEVICE` matches against (a case-insensitive substring).
    public let name: String
    /// `CL_DEVICE_VENDOR`.
    public let vendor: String
    /// `CL_DRIVER_VERSION` (part of `identity`: tuning entries and caches are per driver).
    public let driverVersion: String
    /// `CL_DEVICE_VERSION`, e.g. "OpenCL 3.0 PoCL ...".
    public let deviceVersion: String
    /// `CL_DEVICE_OPENCL_C_VERSION`: the newest OpenCL C the compiler takes (Switchyard's
    /// kernels need 1.2).
    public let openCLCVersion: String
    /// GPU, accelerator, CPU or other.
    public let kind: DeviceKind
    /// `CL_DEVICE_MAX_COMPUTE_UNITS` (cores on a CPU device).
    public let computeUnits: Int
    /// `CL_DEVICE_GLOBAL_MEM_SIZE` in bytes.
    public let globalMemoryBytes: Int
    /// `CL_DEVICE_MAX_MEM_ALLOC_SIZE`: the largest single buffer; `Context.buffer(byteCount:label:)`
    /// refuses larger ones with a clear error instead of a driver failure.
    public let maxAllocationBytes: Int
    /// `CL_DEVICE_LOCAL_MEM_SIZE`: local memory per work-group, in bytes.
    public let localMemoryBytes: Int
    /// `CL_DEVICE_MAX_WORK_GROUP_SIZE`: the most work-items in one work-group.
    public let maxWorkGroupSize: Int
    /// `CL_DEVICE_MEM_BASE_ADDR_ALIGN` in bytes: the alignment a sub-buffer's offset needs
    /// (see `Context.buffer(wrapping:byteOffset:byteCount:label:)`).
    public let memoryBaseAlignBytes: Int
    /// `CL_DEVICE_EXTENSIONS`, split at spaces. Switchyard's kernels need none of them.
    public let extensions: Set<String>
    /// `CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT`: floats per native SIMD register of one
    /// work-item (16 on an AVX-512 CPU under PoCL, 8 on AVX2, 4 on SSE/NEON; 1 where the
    /// implementation maps work-items to SIMD lanes, as GPUs and Mesa's llvmpipe do).
    public let nativeFloatVectorWidth: Int
    /// Whether `CL_DEVICE_SINGLE_FP_CONFIG` has `CL_FP_FMA`: the device fuses a float multiply-add
    /// in hardware. Where it does not, OpenCL C's `fma()` is still correctly rounded, in software
    /// (Mesa's llvmpipe: 1.4 GFLOP/s against 48 with a multiply and an add on 2 Zen 5 cores), so
    /// Switchyard's kernels build their multiply-add chains from a multiply and an add there
    /// (`SY_MAD` in Kernels/common.h).
    public let fusedMultiplyAdd: Bool

    init(id: cl_device_id, platform: Platform) throws {
        self.id = id
        platformName = platform.name
        name = try Device.string(id, CL_DEVICE_NAME)
        vendor = try Device.string(id, CL_DEVICE_VENDOR)
        driverVersion = try Device.string(id, CL_DRIVER_VERSION)
        deviceVersion = try Device.string(id, CL_DEVICE_VERSION)
        openCLCVersion = try Device.string(id, CL_DEVICE_OPENCL_C_VERSION)
        let type: cl_device_type = try Device.scalar(id, CL_DEVICE_TYPE)
        if type & cl_device_type(CL_DEVICE_TYPE_GPU) != 0 {
            kind = .gpu
        } else if type & cl_device_type(CL_DEVICE_TYPE_ACCELERATOR) != 0 {
            kind = .accelerator
        } else if type & cl_device_type(CL_DEVICE_TYPE_CPU) != 0 {
            kind = .cpu
        } else {
            kind = .other
        }
        computeUnits = Int(try Device.scalar(id, CL_DEVICE_MAX_COMPUTE_UNITS) as cl_uint)
        globalMemoryBytes = Int(try Device.scalar(id, CL_DEVICE_GLOBAL_MEM_SIZE) as cl_ulong)
        maxAllocationBytes = Int(try Device.scalar(id, CL_DEVICE_MAX_MEM_ALLOC_SIZE) as cl_ulong)
        localMemoryBytes = Int(try Device.scalar(id, CL_DEVICE_LOCAL_MEM_SIZE) as cl_ulong)
        maxWorkGroupSize = Int(try Device.scalar(id, CL_DEVICE_MAX_WORK_GROUP_SIZE) as Int)
        memoryBaseAlignBytes = Int(try Device.scalar(id, CL_DEVICE_MEM_BASE_ADDR_ALIGN) as cl_uint) / 8
        extensions = Set(try Device.string(id, CL_DEVICE_EXTENSIONS).split(separator: " ").map(String.init))
        nativeFloatVectorWidth = max(1, Int(try Device.scalar(id, CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT) as cl_uint))
        let fp: cl_device_fp_config = try Device.scalar(id, CL_DEVICE_SINGLE_FP_CONFIG)
        fusedMultiplyAdd = fp & cl_device_fp_config(CL_FP_FMA) != 0
    }

    /// Whether work-items run as SIMD lanes (GPUs, and CPU implementations such as llvmpipe that
    /// report a native float vector width of 1): kernels then spread rows and columns over a
    /// work-group instead of giving one work-item a long loop.
    public var workItemsAreLanes: Bool { kind != .cpu || nativeFloatVectorWidth <= 1 }

    /// Loop iterations one work-item may run before the implementation silently stops its loops,
    /// or nil where there is no such limit. Mesa's llvmpipe (rusticl's CPU device; its gallivm
    /// code generator) counts every loop iteration of a work-item, summed over all its loops and
    /// nested ones, and leaves every loop once the sum reaches 65,535: two sequential loops of
    /// 40,000 ran 40,000 and 25,534 times, a 300 × 300 nest about 65,100 inner steps; each loop
    /// test counts, so a loop run n times costs n + 1 (measured, Mesa 22.3). Kernels whose work grows with a size (a matmul's K) split that work over
    /// launches on such devices.
    public var loopIterationLimit: Int? {
        name.lowercased().contains("llvmpipe") ? 65_535 : nil
    }

    /// The native float vector width rounded down to a power of two of at most 16 (an OpenCL
    /// vector type): what tile shapes and ceiling kernels are derived from. On a CPU-class device
    /// (work-items not lanes) a valid `SWITCHYARD_VECTOR_WIDTH` replaces it (see
    /// `vectorWidthOverride`).
    public var floatVectorWidth: Int {
        if !workItemsAreLanes, let width = Device.vectorWidthOverride { return width }
        return [16, 8, 4, 2, 1].first { $0 <= nativeFloatVectorWidth } ?? 1
    }

    /// Whether Switchyard's kernels build their multiply-add chains with `fma()` on this device:
    /// where it has a hardware FMA (`fusedMultiplyAdd`), unless `SWITCHYARD_SOFT_FMA=1` asks for
    /// the multiply-and-add chains of devices without one (testing that path on a device with one).
    public var chainsUseFMA: Bool { fusedMultiplyAdd && !Device.softFMAOverride }

    /// The environment variable that makes every device build its chains as a multiply and an add.
    public static let softFMAVariable = "SWITCHYARD_SOFT_FMA"

    /// `SWITCHYARD_SOFT_FMA` is `1`.
    public static let softFMAOverride: Bool = ProcessInfo.processInfo.environment[softFMAVariable] == "1"

    /// The environment variable that overrides `floatVectorWidth` for testing.
    public static let vectorWidthVariable = "SWITCHYARD_VECTOR_WIDTH"

    /// `SWITCHYARD_VECTOR_WIDTH` as set (nil when unset or empty), valid or not.
    public static let vectorWidthOverrideText: String? = {
        guard let text = ProcessInfo.processInfo.environment[vectorWidthVariable], !text.isEmpty else { return nil }
        return text
    }()

    /// A testing override of the float vector width of CPU-class devices: `SWITCHYARD_VECTOR_WIDTH`
    /// = 1, 2, 4, 8 or 16 makes every geometry derived from `floatVectorWidth` (matmul tiles and
    /// panels, the narrow matmul's and Soft MoE's vectors, the benchmark's ceiling kernels) what an
    /// implementation reporting that width gets. PoCL derives `CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT`
    /// from the host CPU's features, whatever target it compiles for, so with
    /// `POCL_KERNELLIB_NAME=avx2` (AVX2 code, no zmm register) on an AVX-512 host it still reports
    /// 16: `SWITCHYARD_VECTOR_WIDTH=8` beside it is a proxy for an AVX2 CPU. Nil when unset or not
    /// one of those values (`OpenCLBackend` then refuses to start, naming the variable); devices
    /// whose work-items are lanes ignore it. It is part of `identity`, so tuning entries made
    /// under it are kept apart.
    public static let vectorWidthOverride: Int? = vectorWidthOverrideText.flatMap(vectorWidth(overrideText:))

    /// The width `text` names as a `SWITCHYARD_VECTOR_WIDTH` value: 1, 2, 4, 8 or 16, else nil.
    public static func vectorWidth(overrideText text: String) -> Int? {
        guard let width = Int(text), [1, 2, 4, 8, 16].contains(width) else { return nil }
        return width
    }

    /// Whether the device has `cl_khr_fp16` (f16 arithmetic). Switchyard does not need it: its
    /// f16 tensors are a storage format converted with `vload_half`/`vstore_half`.
    public var supportsFP16: Bool { extensions.contains("cl_khr_fp16") }
    /// Whether the device has double-precision arithmetic (`cl_khr_fp64`).
    public var supportsFP64: Bool { extensions.contains("cl_khr_fp64") || openCLCVersion.contains("fp64") }

    /// A key that changes when the device or its driver does (for tuning entries and binary caches).
    /// (With `SWITCHYARD_VECTOR_WIDTH` in effect on a CPU-class device, "| vector width N" follows.)
    public var identity: String {
        let base = "\(name) | \(driverVersion)"
        guard !workItemsAreLanes, let width = Device.vectorWidthOverride else { return base }
        return "\(base) | vector width \(width)"
    }

    /// "name (kind, platform)", as `switchyard devices` lists it.
    public var description: String { "\(name) (\(kind.rawValue), \(platformName))" }

    static func string(_ id: cl_device_id, _ param: Int32) throws -> String {
        var size = 0
        try check(clGetDeviceInfo(id, cl_device_info(param), 0, nil, &size), "clGetDeviceInfo")
        var bytes = [CChar](repeating: 0, count: size + 1)
        try check(clGetDeviceInfo(id, cl_device_info(param), size, &bytes, nil), "clGetDeviceInfo")
        return String(decoding: bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            .trimmingCharacters(in: .whitespaces)
    }

    static func scalar<T: FixedWidthInteger>(_ id: cl_device_id, _ param: Int32) throws -> T {
        var value: T = 0
        try check(clGetDeviceInfo(id, cl_device_info(param), MemoryLayout<T>.size, &value, nil), "clGetDeviceInfo")
        return value
    }

    /// Every device of every platform, in platform order. Discovery runs once per process (the
    /// ICD loader's first initialisation is not safe to race from several threads).
    public static func all() throws -> [Device] {
        try discovered.get()
    }

    private static let discovered: Result<[Device], any Error> = Result {
        try Platform.all().flatMap { try $0.devices() }
    }

    /// The device `selector` names (an index into `all()` or a case-insensitive substring of the
    /// device name), or, when `selector` is nil, `SWITCHYARD_DEVICE`, or else the first GPU, then
    /// accelerator, then CPU.
    public static func select(_ selector: String? = nil) throws -> Device {
        let devices = try all()
        // A selector given but blank (`--device ''`) names no device: refused, not the default.
        // (SWITCHYARD_DEVICE set to nothing is taken as unset.)
        if let selector, selector.trimmingCharacters(in: .whitespaces).isEmpty {
            throw OpenCLHostError.noSuchDevice(selector: selector, available: devices.map(\.description))
        }
        let chosen = selector ?? ProcessInfo.processInfo.environment["SWITCHYARD_DEVICE"]
        if let chosen, !chosen.trimmingCharacters(in: .whitespaces).isEmpty {
            let trimmed = chosen.trimmingCharacters(in: .whitespaces)
            if let index = Int(trimmed), devices.indices.contains(index) {
                return devices[index]
            }
            if Int(trimmed) == nil,
                let match = devices.first(where: { $0.name.lowercased().contains(trimmed.lowercased()) })
            {
                return match
            }
            throw OpenCLHostError.noSuchDevice(selector: trimmed, available: devices.map(\.description))
        }
        guard let best = defaultDevice(among: devices) else {
            throw OpenCLHostError.noPlatform(status: 0)
        }
        return best
    }

    /// The default choice among `devices`: the first GPU, else accelerator, else CPU.
    public static func defaultDevice(among devices: [Device]) -> Device? {
        devices.enumerated().min { ($0.element.kind, $0.offset) < ($1.element.kind, $1.offset) }?.element
    }
}
