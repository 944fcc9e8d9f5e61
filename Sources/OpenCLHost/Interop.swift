import COpenCL
import Foundation

// Interop: Switchyard over OpenCL objects an engine already owns. Every handle here is an
// OpenCL object pointer (`cl_context`, `cl_command_queue`, `cl_mem`, `cl_event`) as the C API
// returns it; in Swift each is an `OpaquePointer`, so an engine with its own OpenCL binding
// passes its handles straight in. Wrapping retains the object (`clRetain*`) and the wrapper
// releases it when it goes away: the caller keeps its own reference and releases it as usual.

extension Device {
    /// The device behind an OpenCL device id (a root device the caller got from
    /// `clGetDeviceIDs`, or one its queue runs on).
    public init(wrapping id: cl_device_id) throws {
        var platformID: cl_platform_id?
        try check(
            clGetDeviceInfo(id, cl_device_info(CL_DEVICE_PLATFORM), MemoryLayout<cl_platform_id?>.size, &platformID, nil),
            "clGetDeviceInfo(CL_DEVICE_PLATFORM)")
        guard let platformID, let platform = try Platform.all().first(where: { $0.id == platformID }) else {
            throw CLError(code: CL_INVALID_PLATFORM, call: "clGetDeviceInfo(CL_DEVICE_PLATFORM)")
        }
        try self.init(id: id, platform: platform)
    }
}

extension Context {
    /// Switchyard on a caller's context and command queue: ops enqueue on `queue`, in order with
    /// the caller's own work on it, and buffers are allocated in `context`. The queue must belong
    /// to the context and be in-order (Switchyard's ops rely on the order of one queue);
    /// without `CL_QUEUE_PROFILING_ENABLE` everything works except device timing of events.
    public convenience init(wrapping context: cl_context, queue: cl_command_queue) throws {
        var queueContext: cl_context?
        try check(
            clGetCommandQueueInfo(
                queue, cl_command_queue_info(CL_QUEUE_CONTEXT), MemoryLayout<cl_context?>.size, &queueContext, nil),
            "clGetCommandQueueInfo(CL_QUEUE_CONTEXT)")
        guard queueContext == context else {
            throw OpenCLHostError.interop("the command queue belongs to another cl_context than the one given")
        }
        var deviceID: cl_device_id?
        try check(
            clGetCommandQueueInfo(
                queue, cl_command_queue_info(CL_QUEUE_DEVICE), MemoryLayout<cl_device_id?>.size, &deviceID, nil),
            "clGetCommandQueueInfo(CL_QUEUE_DEVICE)")
        var properties: cl_command_queue_properties = 0
        try check(
            clGetCommandQueueInfo(
                queue, cl_command_queue_info(CL_QUEUE_PROPERTIES), MemoryLayout<cl_command_queue_properties>.size,
                &properties, nil),
            "clGetCommandQueueInfo(CL_QUEUE_PROPERTIES)")
        if properties & cl_command_queue_properties(CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE) != 0 {
            throw OpenCLHostError.interop(
                "the command queue is out-of-order: Switchyard needs an in-order queue (ops read what the ops before them wrote)")
        }
        guard let deviceID else { throw CLError(code: CL_INVALID_DEVICE, call: "clGetCommandQueueInfo(CL_QUEUE_DEVICE)") }
        let device = try Device(wrapping: deviceID)
        try check(clRetainContext(context), "clRetainContext")
        let wrappedQueue: CommandQueue
        do {
            wrappedQueue = try CommandQueue(retaining: queue, profiling: properties & cl_command_queue_properties(CL_QUEUE_PROFILING_ENABLE) != 0)
        } catch {
            clReleaseContext(context)
            throw error
        }
        self.init(adopting: context, device: device, queue: wrappedQueue)
    }

    /// A device buffer wrapping the caller's `mem` (a buffer of this context), from byte
    /// `offset`, `byteCount` bytes long (the rest of the buffer when nil), without copying. An
    /// offset other than 0 becomes an OpenCL sub-buffer, which needs the offset to be a multiple
    /// of the device's base address alignment (`Device.memoryBaseAlignBytes`).
    public func buffer(wrapping mem: cl_mem, byteOffset offset: Int = 0, byteCount: Int? = nil, label: String = "wrapped")
        throws -> Buffer
    {
        var memContext: cl_context?
        try check(
            clGetMemObjectInfo(mem, cl_mem_info(CL_MEM_CONTEXT), MemoryLayout<cl_context?>.size, &memContext, nil),
            "clGetMemObjectInfo(CL_MEM_CONTEXT)")
        guard memContext == handle else {
            throw OpenCLHostError.interop("\(label): the cl_mem belongs to another cl_context than this backend's")
        }
        var type: cl_mem_object_type = 0
        try check(
            clGetMemObjectInfo(mem, cl_mem_info(CL_MEM_TYPE), MemoryLayout<cl_mem_object_type>.size, &type, nil),
            "clGetMemObjectInfo(CL_MEM_TYPE)")
        guard type == cl_mem_object_type(CL_MEM_OBJECT_BUFFER) else {
            throw OpenCLHostError.interop("\(label): the cl_mem is an image, not a buffer")
        }
        var size = 0
        try check(clGetMemObjectInfo(mem, cl_mem_info(CL_MEM_SIZE), MemoryLayout<Int>.size, &size, nil), "clGetMemObjectInfo(CL_MEM_SIZE)")
        let count = byteCount ?? (size - offset)
        guard offset >= 0, count >= 0, offset <= size, count <= size - offset else {
            throw OpenCLHostError.sizeMismatch(
                what: "\(label): region at byte offset \(offset) of a \(size)-byte cl_mem", expected: max(0, size - max(0, offset)),
                actual: count)
        }
        if offset == 0 && count == size {
            try check(clRetainMemObject(mem), "clRetainMemObject")
            return Buffer(adopting: mem, byteCount: count, label: label, context: self)
        }
        var parent: cl_mem?
        try check(
            clGetMemObjectInfo(mem, cl_mem_info(CL_MEM_ASSOCIATED_MEMOBJECT), MemoryLayout<cl_mem?>.size, &parent, nil),
            "clGetMemObjectInfo(CL_MEM_ASSOCIATED_MEMOBJECT)")
        var base = mem
        var start = offset
        if let parent {
            // A sub-buffer of a sub-buffer is not allowed: take the region of the parent.
            var parentOffset = 0
            try check(
                clGetMemObjectInfo(mem, cl_mem_info(CL_MEM_OFFSET), MemoryLayout<Int>.size, &parentOffset, nil),
                "clGetMemObjectInfo(CL_MEM_OFFSET)")
            base = parent
            start += parentOffset
        }
        let align = max(1, device.memoryBaseAlignBytes)
        guard start % align == 0 else {
            throw OpenCLHostError.interop(
                "\(label): byte offset \(start) is not a multiple of the device's base address alignment (\(align) bytes), "
                    + "which OpenCL sub-buffers need")
        }
        var region = cl_buffer_region(origin: start, size: max(count, 1))
        try FaultInjection.point("clCreateSubBuffer(\(label))")
        var status: cl_int = 0
        guard
            let sub = clCreateSubBuffer(
                base, cl_mem_flags(0), cl_buffer_create_type(CL_BUFFER_CREATE_TYPE_REGION), &region, &status),
            status == CL_SUCCESS
        else {
            throw CLError(code: status == CL_SUCCESS ? CL_INVALID_VALUE : status, call: "clCreateSubBuffer(\(label))")
        }
        return Buffer(adopting: sub, byteCount: count, label: label, context: self)
    }
}

extension Event {
    /// An event wrapping the caller's `cl_event` (retained), e.g. to wait for it asynchronously.
    public convenience init(retaining event: cl_event) throws {
        try check(clRetainEvent(event), "clRetainEvent")
        self.init(adopting: event)
    }

    /// Suspends until the command has finished, without blocking a thread: an OpenCL completion
    /// callback resumes the task (or, where the driver refuses callbacks, a dedicated thread
    /// waits). Throws when the command ended with an error status.
    public func completed() async throws {
        if isDone {
            try wait()
            return
        }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let box = Unmanaged.passRetained(EventWaiter(continuation)).toOpaque()
            let status = clSetEventCallback(handle, CL_COMPLETE, eventCallback, box)
            if status != CL_SUCCESS {
                Unmanaged<EventWaiter>.fromOpaque(box).release()
                let event = self
                Thread.detachNewThread {
                    do {
                        try event.wait()
                        continuation.resume()
                    } catch {
                        continuation.resume(throwing: error)
                    }
                }
            }
        }
    }
}

private final class EventWaiter: @unchecked Sendable {
    let continuation: CheckedContinuation<Void, any Error>
    init(_ continuation: CheckedContinuation<Void, any Error>) { self.continuation = continuation }
}

private let eventCallback: @convention(c) (cl_event?, cl_int, UnsafeMutableRawPointer?) -> Void = { _, status, data in
    guard let data else { return }
    let waiter = Unmanaged<EventWaiter>.fromOpaque(data).takeRetainedValue()
    if status < 0 {
        waiter.continuation.resume(throwing: CLError(code: status, call: "the command behind an awaited event"))
    } else {
        waiter.continuation.resume()
    }
}

extension CommandQueue {
    /// Flushes, then suspends until every command enqueued so far has finished (an awaited
    /// marker: no thread blocks).
    public func finished() async throws {
        let event = try marker()
        try flush()
        try await event.completed()
    }
}

extension Buffer {
    /// Reads `count` bytes from byte `offset` without blocking a thread: a non-blocking read
    /// whose completion resumes the task.
    public func downloadBytes(count: Int, byteOffset offset: Int = 0) async throws -> [UInt8] {
        try checkRange("download from", offset: offset, bytes: count)
        if count == 0 { return [] }
        try FaultInjection.point("clEnqueueReadBuffer(\(label))")
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 64)
        defer { storage.deallocate() }
        var event: cl_event?
        try check(
            clEnqueueReadBuffer(
                context.queue.handle, handle, cl_bool(CL_FALSE), offset, count, storage.baseAddress, 0, nil, &event),
            "clEnqueueReadBuffer(\(label))")
        let done = Event(adopting: event!)
        try context.queue.flush()
        try await done.completed()
        return [UInt8](storage)
    }

    /// Copies `bytes` into the buffer at byte `offset` (a blocking write: the host memory is
    /// free to reuse when this returns).
    public func upload(bytes: UnsafeRawBufferPointer, byteOffset offset: Int = 0) throws {
        try checkRange("upload into", offset: offset, bytes: bytes.count)
        if bytes.isEmpty { return }
        try FaultInjection.point("clEnqueueWriteBuffer(\(label))")
        try check(
            clEnqueueWriteBuffer(
                context.queue.handle, handle, cl_bool(CL_TRUE), offset, bytes.count, bytes.baseAddress, 0, nil, nil),
            "clEnqueueWriteBuffer(\(label))")
    }
}
