import COpenCL
import Foundation

/// An OpenCL context on one device, with its in-order profiling queue and its program cache.
/// Thread-safe: programs are cached under a lock; enqueues on the queue are OpenCL thread-safe.
public final class Context: @unchecked Sendable {
    /// The device the context was created for (Switchyard uses one device per context).
    public let device: Device
    /// The OpenCL context, released when this object goes away (for a wrapped context: the
    /// reference taken when it was wrapped).
    public let handle: cl_context
    /// The one in-order queue every op of this context is enqueued on.
    public let queue: CommandQueue
    private let lock = NSLock()
    private var programs: [ProgramKey: Program] = [:]

    struct ProgramKey: Hashable {
        let source: String
        let options: String
    }

    /// A new context and in-order profiling queue on `device`.
    public convenience init(device: Device) throws {
        try FaultInjection.point("clCreateContext")
        var status: cl_int = 0
        var deviceID: cl_device_id? = device.id
        guard let context = clCreateContext(nil, 1, &deviceID, nil, nil, &status) else {
            throw CLError(code: status == 0 ? CL_INVALID_VALUE : status, call: "clCreateContext")
        }
        do {
            try check(status, "clCreateContext")
            let queue = try CommandQueue(context: context, device: device)
            self.init(adopting: context, device: device, queue: queue)
        } catch {
            clReleaseContext(context)
            throw error
        }
    }

    /// Takes ownership of one reference to `context`.
    init(adopting context: cl_context, device: Device, queue: CommandQueue) {
        self.device = device
        self.handle = context
        self.queue = queue
        LiveObjects.created("context")
    }

    deinit {
        clReleaseContext(handle)
        LiveObjects.released("context")
    }

    /// Allocates a device buffer of `byteCount` bytes (at least one byte is allocated, so an
    /// empty tensor still has a valid handle).
    public func buffer(byteCount: Int, label: String = "buffer") throws -> Buffer {
        guard byteCount >= 0 else {
            throw OpenCLHostError.sizeMismatch(what: "\(label) size", expected: 0, actual: byteCount)
        }
        if byteCount > device.maxAllocationBytes {
            throw OpenCLHostError.sizeMismatch(
                what: "\(label): allocation over the device's CL_DEVICE_MAX_MEM_ALLOC_SIZE",
                expected: device.maxAllocationBytes, actual: byteCount)
        }
        return try Buffer(context: self, byteCount: byteCount, label: label)
    }

    /// Builds `source` with `options` for this device, or returns the cached program built from
    /// the same source and options. A failure throws with the full build log.
    public func program(source: String, options: String = "") throws -> Program {
        let key = ProgramKey(source: source, options: options)
        lock.lock()
        defer { lock.unlock() }
        if let cached = programs[key] { return cached }
        let program = try Program(context: self, source: source, options: options)
        programs[key] = program
        return program
    }

    /// How many programs this context has built (each distinct source and option string is one).
    public var cachedProgramCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return programs.count
    }
}

/// An in-order command queue with profiling enabled.
public final class CommandQueue: @unchecked Sendable {
    /// The OpenCL queue, released when this object goes away.
    public let handle: cl_command_queue
    /// Whether events of this queue carry device timestamps (`CL_QUEUE_PROFILING_ENABLE`).
    public let profiling: Bool

    init(context: cl_context, device: Device) throws {
        try FaultInjection.point("clCreateCommandQueue")
        var status: cl_int = 0
        let properties = cl_command_queue_properties(CL_QUEUE_PROFILING_ENABLE)
        guard let queue = clCreateCommandQueue(context, device.id, properties, &status) else {
            throw CLError(code: status == 0 ? CL_INVALID_VALUE : status, call: "clCreateCommandQueue")
        }
        try check(status, "clCreateCommandQueue")
        handle = queue
        profiling = true
        LiveObjects.created("queue")
    }

    /// Wraps a caller's queue, retaining it.
    init(retaining queue: cl_command_queue, profiling: Bool) throws {
        try check(clRetainCommandQueue(queue), "clRetainCommandQueue")
        handle = queue
        self.profiling = profiling
        LiveObjects.created("queue")
    }

    deinit {
        clReleaseCommandQueue(handle)
        LiveObjects.released("queue")
    }

    /// Blocks until every enqueued command has finished.
    public func finish() throws {
        try FaultInjection.point("clFinish")
        try check(clFinish(handle), "clFinish")
    }

    /// Submits the queued commands without waiting.
    public func flush() throws {
        try FaultInjection.point("clFlush")
        try check(clFlush(handle), "clFlush")
    }

    /// Enqueues `kernel` over `global` work-items in work-groups of `local` (both 1 to 3
    /// dimensions of the same rank; each global size a multiple of its local size).
    @discardableResult
    public func enqueue(_ kernel: Kernel, global: [Int], local: [Int]?) throws -> Event {
        guard (1...3).contains(global.count), local == nil || local!.count == global.count else {
            throw OpenCLHostError.invalidLaunch("\(kernel.name): global \(global), local \(local ?? [])")
        }
        if let local {
            for (g, l) in zip(global, local) where l <= 0 || g % l != 0 {
                throw OpenCLHostError.invalidLaunch(
                    "\(kernel.name): global size \(global) is not a multiple of local size \(local)")
            }
        }
        if global.contains(0) { return try marker() }
        try FaultInjection.point("clEnqueueNDRangeKernel(\(kernel.name))")
        var event: cl_event?
        let g = global.map { Int($0) }
        let status: cl_int
        if let local {
            let l = local.map { Int($0) }
            status = clEnqueueNDRangeKernel(handle, kernel.handle, cl_uint(g.count), nil, g, l, 0, nil, &event)
        } else {
            status = clEnqueueNDRangeKernel(handle, kernel.handle, cl_uint(g.count), nil, g, nil, 0, nil, &event)
        }
        try check(status, "clEnqueueNDRangeKernel(\(kernel.name), global \(global), local \(local ?? []))")
        return Event(adopting: event!)
    }

    /// An event that completes when everything enqueued before it has.
    public func marker() throws -> Event {
        try FaultInjection.point("clEnqueueMarker")
        var event: cl_event?
        try check(clEnqueueMarker(handle, &event), "clEnqueueMarker")
        return Event(adopting: event!)
    }
}

/// A device buffer of a fixed byte size. Transfers are blocking and their sizes checked.
public final class Buffer: @unchecked Sendable {
    /// The OpenCL buffer, released when this object goes away.
    public let handle: cl_mem
    /// The usable size in bytes (the allocation is at least one byte, even for 0).
    public let byteCount: Int
    /// A name for error messages ("router logits", "output", ...).
    public let label: String
    /// The context the buffer lives in (kept alive by the buffer).
    public let context: Context

    init(context: Context, byteCount: Int, label: String) throws {
        try FaultInjection.point("clCreateBuffer(\(label))")
        var status: cl_int = 0
        guard
            let mem = clCreateBuffer(
                context.handle, cl_mem_flags(CL_MEM_READ_WRITE), max(byteCount, 1), nil, &status)
        else {
            throw CLError(code: status == 0 ? CL_MEM_OBJECT_ALLOCATION_FAILURE : status,
                          call: "clCreateBuffer(\(label), \(byteCount) bytes)")
        }
        try check(status, "clCreateBuffer")
        self.handle = mem
        self.byteCount = byteCount
        self.label = label
        self.context = context
        LiveObjects.created("buffer")
    }

    /// Takes ownership of one reference to `mem`.
    init(adopting mem: cl_mem, byteCount: Int, label: String, context: Context) {
        self.handle = mem
        self.byteCount = byteCount
        self.label = label
        self.context = context
        LiveObjects.created("buffer")
    }

    deinit {
        clReleaseMemObject(handle)
        LiveObjects.released("buffer")
    }

    func checkRange(_ what: String, offset: Int, bytes: Int) throws {
        if offset < 0 || bytes < 0 || offset > byteCount || bytes > byteCount - offset {
            throw OpenCLHostError.sizeMismatch(
                what: "\(what) \(label) at byte offset \(offset)", expected: byteCount - max(offset, 0),
                actual: bytes)
        }
    }

    /// Copies `values` into the buffer starting at byte `offset`.
    public func upload<T: BitwiseCopyable>(_ values: [T], byteOffset offset: Int = 0) throws {
        let bytes = values.count * MemoryLayout<T>.stride
        try checkRange("upload into", offset: offset, bytes: bytes)
        if bytes == 0 { return }
        try FaultInjection.point("clEnqueueWriteBuffer(\(label))")
        try values.withUnsafeBytes { raw in
            try check(
                clEnqueueWriteBuffer(
                    context.queue.handle, handle, cl_bool(CL_TRUE), offset, bytes, raw.baseAddress, 0, nil, nil),
                "clEnqueueWriteBuffer(\(label))")
        }
    }

    /// Copies the bytes of `source` into the buffer starting at byte `offset` (a blocking write:
    /// `source` may be reused when this returns). The returned event carries the transfer's
    /// device timing.
    @discardableResult
    public func upload(bytes source: UnsafeRawBufferPointer, byteOffset offset: Int = 0) throws -> Event {
        try checkRange("upload into", offset: offset, bytes: source.count)
        if source.isEmpty { return try context.queue.marker() }
        var event: cl_event?
        try check(
            clEnqueueWriteBuffer(
                context.queue.handle, handle, cl_bool(CL_TRUE), offset, source.count, source.baseAddress, 0, nil, &event),
            "clEnqueueWriteBuffer(\(label), \(source.count) bytes at \(offset))")
        return Event(adopting: event!)
    }

    /// Reads `destination.count` bytes starting at byte `offset` into `destination` (blocking);
    /// the returned event carries the transfer's device timing.
    @discardableResult
    public func download(into destination: UnsafeMutableRawBufferPointer, byteOffset offset: Int = 0) throws -> Event {
        try checkRange("download from", offset: offset, bytes: destination.count)
        if destination.isEmpty { return try context.queue.marker() }
        var event: cl_event?
        try check(
            clEnqueueReadBuffer(
                context.queue.handle, handle, cl_bool(CL_TRUE), offset, destination.count, destination.baseAddress, 0, nil,
                &event),
            "clEnqueueReadBuffer(\(label), \(destination.count) bytes at \(offset))")
        return Event(adopting: event!)
    }

    /// Reads `count` elements of type `T` starting at byte `offset`.
    public func download<T: BitwiseCopyable>(_ type: T.Type, count: Int, byteOffset offset: Int = 0) throws -> [T] {
        let bytes = count * MemoryLayout<T>.stride
        try checkRange("download from", offset: offset, bytes: bytes)
        if count == 0 { return [] }
        try FaultInjection.point("clEnqueueReadBuffer(\(label))")
        return try [T](unsafeUninitializedCapacity: count) { storage, initialized in
            try check(
                clEnqueueReadBuffer(
                    context.queue.handle, handle, cl_bool(CL_TRUE), offset, bytes,
                    UnsafeMutableRawPointer(storage.baseAddress!), 0, nil, nil),
                "clEnqueueReadBuffer(\(label))")
            initialized = count
        }
    }

    /// Fills `byteCount` bytes from byte `offset` with repetitions of `pattern` (1, 2, 4, 8, 16,
    /// 32, 64 or 128 bytes; offset and size multiples of the pattern size).
    public func fill(pattern: [UInt8], byteOffset offset: Int = 0, byteCount count: Int? = nil) throws {
        let bytes = count ?? (byteCount - offset)
        try checkRange("fill of", offset: offset, bytes: bytes)
        guard [1, 2, 4, 8, 16, 32, 64, 128].contains(pattern.count), offset % pattern.count == 0,
            bytes % pattern.count == 0
        else {
            throw OpenCLHostError.sizeMismatch(
                what: "fill of \(label): pattern size must divide offset and size", expected: pattern.count,
                actual: bytes)
        }
        if bytes == 0 { return }
        var event: cl_event?
        try FaultInjection.point("clEnqueueFillBuffer(\(label))")
        try pattern.withUnsafeBytes { raw in
            try check(
                clEnqueueFillBuffer(
                    context.queue.handle, handle, raw.baseAddress, pattern.count, offset, bytes, 0, nil, &event),
                "clEnqueueFillBuffer(\(label))")
        }
        try Event(adopting: event!).wait()
    }

    /// Enqueues a device-side copy of `bytes` bytes from `source` into this buffer.
    @discardableResult
    public func copy(from source: Buffer, bytes: Int, sourceOffset: Int = 0, destinationOffset: Int = 0) throws
        -> Event
    {
        try source.checkRange("copy from", offset: sourceOffset, bytes: bytes)
        try checkRange("copy into", offset: destinationOffset, bytes: bytes)
        if bytes == 0 { return try context.queue.marker() }
        try FaultInjection.point("clEnqueueCopyBuffer(\(source.label) -> \(label))")
        var event: cl_event?
        try check(
            clEnqueueCopyBuffer(
                context.queue.handle, source.handle, handle, sourceOffset, destinationOffset, bytes, 0, nil, &event),
            "clEnqueueCopyBuffer(\(source.label) -> \(label))")
        return Event(adopting: event!)
    }
}

/// A built OpenCL program.
public final class Program: @unchecked Sendable {
    /// The OpenCL program, released when this object goes away.
    public let handle: cl_program
    /// The build options it was built with (`-D` defines).
    public let options: String
    /// The compiler's build log (warnings; empty on most drivers when there are none).
    public let buildLog: String

    init(context: Context, source: String, options: String) throws {
        try FaultInjection.point("clCreateProgramWithSource")
        var status: cl_int = 0
        let program: cl_program? = source.withCString { text in
            var pointer: UnsafePointer<CChar>? = text
            return clCreateProgramWithSource(context.handle, 1, &pointer, nil, &status)
        }
        guard let program else {
            throw CLError(code: status == 0 ? CL_INVALID_VALUE : status, call: "clCreateProgramWithSource")
        }
        var deviceID: cl_device_id? = context.device.id
        let start = DispatchTime.now().uptimeNanoseconds
        let buildStatus = clBuildProgram(program, 1, &deviceID, options, nil, nil)
        Program.logBuild(
            device: context.device.name, source: source, options: options,
            seconds: Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        let log = Program.log(program, context.device.id)
        if buildStatus != CL_SUCCESS {
            clReleaseProgram(program)
            throw OpenCLHostError.buildFailed(
                device: context.device.name, options: options, log: log,
                error: CLError(code: buildStatus, call: "clBuildProgram"))
        }
        self.handle = program
        self.options = options
        self.buildLog = log
        LiveObjects.created("program")
    }

    deinit {
        clReleaseProgram(handle)
        LiveObjects.released("program")
    }

    /// `SWITCHYARD_BUILD_LOG`: a file that gets one line per program build (device, a hash of
    /// the source, its bytes, the options, the seconds `clBuildProgram` took), appended with one
    /// `write` each, so concurrent builds and processes do not interleave lines. What a new
    /// shape, dtype or geometry costs in driver compiles (PoCL compiles each kernel again at its
    /// first launch, which this does not count).
    public static let buildLogPath: String? = {
        guard let path = ProcessInfo.processInfo.environment["SWITCHYARD_BUILD_LOG"], !path.isEmpty else { return nil }
        return path
    }()

    static func logBuild(device: String, source: String, options: String, seconds: Double) {
        guard let path = buildLogPath else { return }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
        for byte in source.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let line = "\(device)\t\(String(hash, radix: 16))\t\(source.utf8.count)\t\(options)\t\(seconds)\n"
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0o644)
        guard fd >= 0 else { return }
        _ = line.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    static func log(_ program: cl_program, _ device: cl_device_id) -> String {
        var size = 0
        guard clGetProgramBuildInfo(program, device, cl_program_build_info(CL_PROGRAM_BUILD_LOG), 0, nil, &size)
            == CL_SUCCESS, size > 0
        else { return "" }
        var bytes = [CChar](repeating: 0, count: size + 1)
        guard clGetProgramBuildInfo(program, device, cl_program_build_info(CL_PROGRAM_BUILD_LOG), size, &bytes, nil)
            == CL_SUCCESS
        else { return "" }
        return String(decoding: bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Creates a kernel object for the `__kernel` function `name`.
    public func kernel(_ name: String) throws -> Kernel {
        try Kernel(program: self, name: name)
    }
}

/// An OpenCL kernel. `clSetKernelArg` is not thread-safe: use one kernel object per thread, or
/// set arguments and enqueue under a lock.
public final class Kernel: @unchecked Sendable {
    /// The OpenCL kernel, released when this object goes away.
    public let handle: cl_kernel
    /// The `__kernel` function's name.
    public let name: String
    let program: Program  // keeps the program alive as long as the kernel

    init(program: Program, name: String) throws {
        try FaultInjection.point("clCreateKernel(\(name))")
        var status: cl_int = 0
        guard let kernel = clCreateKernel(program.handle, name, &status) else {
            throw CLError(code: status == 0 ? CL_INVALID_KERNEL_NAME : status, call: "clCreateKernel(\(name))")
        }
        try check(status, "clCreateKernel(\(name))")
        self.handle = kernel
        self.name = name
        self.program = program
        LiveObjects.created("kernel")
    }

    deinit {
        clReleaseKernel(handle)
        LiveObjects.released("kernel")
    }

    /// Sets argument `index` to a buffer.
    public func set(_ index: Int, _ buffer: Buffer) throws {
        try FaultInjection.point("clSetKernelArg(\(name), \(index))")
        var mem: cl_mem? = buffer.handle
        try check(
            clSetKernelArg(handle, cl_uint(index), MemoryLayout<cl_mem>.size, &mem),
            "clSetKernelArg(\(name), \(index), \(buffer.label))")
    }

    /// Sets argument `index` to a scalar (an `Int32`, `UInt32`, `Float`, ...).
    public func set<T: BitwiseCopyable>(_ index: Int, value: T) throws {
        try FaultInjection.point("clSetKernelArg(\(name), \(index))")
        var copy = value
        try check(
            clSetKernelArg(handle, cl_uint(index), MemoryLayout<T>.size, &copy),
            "clSetKernelArg(\(name), \(index))")
    }

    /// Sets argument `index` to `bytes` of local memory.
    public func setLocal(_ index: Int, bytes: Int) throws {
        try FaultInjection.point("clSetKernelArg(\(name), \(index), local)")
        try check(clSetKernelArg(handle, cl_uint(index), bytes, nil), "clSetKernelArg(\(name), \(index), local)")
    }
}

/// An OpenCL event with its profiling times.
public final class Event: @unchecked Sendable {
    /// The OpenCL event, released when this object goes away.
    public let handle: cl_event

    init(adopting handle: cl_event) {
        self.handle = handle
        LiveObjects.created("event")
    }

    deinit {
        clReleaseEvent(handle)
        LiveObjects.released("event")
    }

    /// Blocks until the command has finished.
    public func wait() throws {
        try FaultInjection.point("clWaitForEvents")
        var event: cl_event? = handle
        try check(clWaitForEvents(1, &event), "clWaitForEvents")
    }

    /// Whether the command has finished (or failed), without waiting.
    public var isDone: Bool {
        var status: cl_int = 0
        let rc = clGetEventInfo(
            handle, cl_event_info(CL_EVENT_COMMAND_EXECUTION_STATUS), MemoryLayout<cl_int>.size, &status, nil)
        return rc != CL_SUCCESS || status <= CL_COMPLETE
    }

    private func time(_ param: Int32) throws -> UInt64 {
        var value: cl_ulong = 0
        try check(
            clGetEventProfilingInfo(handle, cl_profiling_info(param), MemoryLayout<cl_ulong>.size, &value, nil),
            "clGetEventProfilingInfo")
        return value
    }

    /// Device time at which the command started, in nanoseconds (waits for completion first).
    public func startNanoseconds() throws -> UInt64 {
        try wait()
        return try time(CL_PROFILING_COMMAND_START)
    }

    /// Device time at which the command ended, in nanoseconds (waits for completion first).
    public func endNanoseconds() throws -> UInt64 {
        try wait()
        return try time(CL_PROFILING_COMMAND_END)
    }

    /// Device-side duration of the command in seconds.
    public func seconds() throws -> Double {
        let start = try startNanoseconds()
        let end = try endNanoseconds()
        guard end >= start else {
            throw CLError(code: CL_PROFILING_INFO_NOT_AVAILABLE, call: "clGetEventProfilingInfo (end \(end) before start \(start))")
        }
        return Double(end - start) * 1e-9
    }
}
