import Foundation
import OpenCLHost
import Testing

@Suite("OpenCL host layer")
struct HostTests {
    let context: Context

    init() throws {
        context = try Context(device: Device.select())
    }

    @Test func discoveryFindsADefaultDevice() throws {
        let devices = try Device.all()
        #expect(!devices.isEmpty)
        let chosen = try #require(Device.defaultDevice(among: devices))
        #expect(devices.allSatisfy { $0.kind >= chosen.kind })
        #expect(chosen.maxAllocationBytes > 0 && chosen.globalMemoryBytes >= chosen.maxAllocationBytes)
    }

    @Test func selectorByIndexAndName() throws {
        let devices = try Device.all()
        #expect(try Device.select("0").id == devices[0].id)
        let fragment = String(devices[0].name.prefix(6)).uppercased()
        #expect(try Device.select(fragment).id == devices.first { $0.name.uppercased().contains(fragment) }!.id)
    }

    @Test func badSelectorIsAClearError() throws {
        do {
            _ = try Device.select("no-such-device-xyz")
            Issue.record("selector matched nothing but did not throw")
        } catch let error as OpenCLHostError {
            let text = "\(error)"
            #expect(text.contains("no-such-device-xyz"))
            #expect(text.contains("0: "))
        }
        #expect(throws: OpenCLHostError.self) { try Device.select("\(try Device.all().count + 3)") }
    }

    @Test(arguments: [1, 7, 4096, 100_003])
    func bufferRoundTrip(count: Int) throws {
        var g = SystemRandomNumberGenerator()
        let values = (0..<count).map { _ in Float.random(in: -1000...1000, using: &g) }
        let buffer = try context.buffer(byteCount: count * 4)
        try buffer.upload(values)
        #expect(try buffer.download(Float.self, count: count) == values)
        // A partial read at an offset.
        if count > 3 {
            #expect(try buffer.download(Float.self, count: 2, byteOffset: 8) == Array(values[2..<4]))
        }
    }

    @Test func fillWritesThePattern() throws {
        let buffer = try context.buffer(byteCount: 64)
        try buffer.upload((0..<16).map { Int32($0 * 3 + 1) })
        try buffer.fill(pattern: [0x01, 0x02, 0x03, 0x04], byteOffset: 16, byteCount: 32)
        let words = try buffer.download(UInt32.self, count: 16)
        #expect(words[0..<4] == [1, 4, 7, 10])
        #expect(words[4..<12].allSatisfy { $0 == 0x0403_0201 })
        #expect(words[12..<16] == [37, 40, 43, 46])
    }

    @Test func transfersThatDoNotFitThrow() throws {
        let buffer = try context.buffer(byteCount: 16)
        #expect(throws: OpenCLHostError.self) { try buffer.upload([Float](repeating: 1, count: 5)) }
        #expect(throws: OpenCLHostError.self) { try buffer.download(Float.self, count: 2, byteOffset: 12) }
        #expect(throws: OpenCLHostError.self) { try buffer.fill(pattern: [1, 2, 3]) }
        #expect(throws: OpenCLHostError.self) {
            try context.buffer(byteCount: context.device.maxAllocationBytes + 1)
        }
    }

    @Test func deviceCopyAndKernelLaunch() throws {
        let source = """
            __kernel void axpb(__global const float* x, __global float* y, float a, float b, int n) {
                int i = get_global_id(0);
                if (i < n) y[i] = a * x[i] + b;
            }
            """
        let kernel = try context.program(source: source).kernel("axpb")
        let n = 1000
        let x = (0..<n).map { Float($0) * 0.5 - 7 }
        let xb = try context.buffer(byteCount: n * 4)
        let yb = try context.buffer(byteCount: n * 4)
        try xb.upload(x)
        try kernel.set(0, xb)
        try kernel.set(1, yb)
        try kernel.set(2, value: Float(3))
        try kernel.set(3, value: Float(-1))
        try kernel.set(4, value: Int32(n))
        let event = try context.queue.enqueue(kernel, global: [1024], local: [64])
        #expect(try event.seconds() >= 0)
        #expect(try event.endNanoseconds() >= event.startNanoseconds())
        #expect(try yb.download(Float.self, count: n) == x.map { 3 * $0 - 1 })
        let zb = try context.buffer(byteCount: n * 4)
        try zb.copy(from: yb, bytes: n * 4).wait()
        #expect(try zb.download(Float.self, count: n) == x.map { 3 * $0 - 1 })
        #expect(throws: OpenCLHostError.self) { try context.queue.enqueue(kernel, global: [1000], local: [64]) }
    }

    @Test func buildErrorsCarryTheLog() throws {
        do {
            _ = try context.program(source: "__kernel void broken(__global float* x) { x[0] = undefined_name; }")
            Issue.record("a broken program built")
        } catch let OpenCLHostError.buildFailed(_, _, log, error) {
            #expect(log.contains("undefined_name"))
            #expect(error.name == "CL_BUILD_PROGRAM_FAILURE")
        }
    }

    @Test func programsAreCachedBySourceAndOptions() throws {
        let source = "__kernel void k(__global int* x) { x[0] = VALUE; }"
        let a = try context.program(source: source, options: "-DVALUE=1")
        let b = try context.program(source: source, options: "-DVALUE=1")
        let c = try context.program(source: source, options: "-DVALUE=2")
        #expect(a === b)
        #expect(a !== c)
    }

    @Test func errorNamesComeFromClH() {
        #expect(CLError(code: -5, call: "clFinish").name == "CL_OUT_OF_RESOURCES")
        #expect(CLError(code: -1001, call: "clGetPlatformIDs").name == "CL_PLATFORM_NOT_FOUND_KHR")
        #expect("\(CLError(code: -54, call: "clEnqueueNDRangeKernel"))".contains("CL_INVALID_WORK_GROUP_SIZE"))
    }
}
