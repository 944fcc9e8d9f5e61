// An engine's use of Switchyard through its public API only: it sets up OpenCL itself (its own
// context, an in-order queue without profiling, its own buffers), hands them to Switchyard, runs
// routing, a grouped matmul and an MoE layer with async reads, and checks that every byte equals
// what Switchyard's own synchronous path gives on the same device.
import CClientOpenCL
import Foundation
import Switchyard

@main
struct Client {
    static func main() async {

        func fail(_ message: String) -> Never {
            print("client: FAIL: \(message)")
            exit(1)
        }

        func ok(_ status: cl_int, _ call: String) {
            if status != CL_SUCCESS { fail("\(call) returned \(status)") }
        }

        // The device: number N in platform order, as `switchyard devices` lists them.
        let index = Int(CommandLine.arguments.dropFirst().first ?? "0") ?? 0
        setenv("SWITCHYARD_DEVICE", "\(index)", 1)
        var platformCount: cl_uint = 0
        ok(clGetPlatformIDs(0, nil, &platformCount), "clGetPlatformIDs")
        var platforms = [cl_platform_id?](repeating: nil, count: Int(platformCount))
        ok(clGetPlatformIDs(platformCount, &platforms, nil), "clGetPlatformIDs")
        var devices: [cl_device_id] = []
        for platform in platforms {
            var n: cl_uint = 0
            guard clGetDeviceIDs(platform, cl_device_type(CL_DEVICE_TYPE_ALL), 0, nil, &n) == CL_SUCCESS, n > 0 else { continue }
            var ids = [cl_device_id?](repeating: nil, count: Int(n))
            ok(clGetDeviceIDs(platform, cl_device_type(CL_DEVICE_TYPE_ALL), n, &ids, nil), "clGetDeviceIDs")
            devices += ids.compactMap { $0 }
        }
        guard devices.indices.contains(index) else { fail("no OpenCL device \(index) (found \(devices.count))") }
        var deviceID: cl_device_id? = devices[index]
        var status: cl_int = 0
        guard let clContext = clCreateContext(nil, 1, &deviceID, nil, nil, &status) else { fail("clCreateContext: \(status)") }
        guard let clQueue = clCreateCommandQueue(clContext, deviceID, 0, &status) else { fail("clCreateCommandQueue: \(status)") }
        var alignBits: cl_uint = 0
        ok(clGetDeviceInfo(deviceID, cl_device_info(CL_DEVICE_MEM_BASE_ADDR_ALIGN), 4, &alignBits, nil), "clGetDeviceInfo")
        let align = max(4, Int(alignBits) / 8)

        // Seeded inputs.
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func random() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(Int64(bitPattern: state >> 11) % 2001 - 1000) / 1000
        }
        let config = MoEConfig.mixtralTiny
        let (tokens, hidden, experts, ffn) = (37, config.hidden, config.experts, config.ffn)
        let xValues = (0..<tokens * hidden).map { _ in random() }
        let logitValues = (0..<tokens * experts).map { _ in random() * 3 }
        let routerValues = (0..<experts * hidden).map { _ in random() * 0.1 }
        let gateUpValues = (0..<experts * 2 * ffn * hidden).map { _ in random() * 0.05 }
        let downValues = (0..<experts * hidden * ffn).map { _ in random() * 0.05 }

        /// One engine buffer holding `values` at byte offset `offset` (the rest unused).
        func engineBuffer(_ values: [Float], offset: Int) -> cl_mem {
            let bytes = offset + values.count * 4
            guard let mem = clCreateBuffer(clContext, cl_mem_flags(CL_MEM_READ_WRITE), bytes, nil, &status) else {
                fail("clCreateBuffer: \(status)")
            }
            values.withUnsafeBytes { raw in
                ok(clEnqueueWriteBuffer(clQueue, mem, cl_bool(CL_TRUE), offset, raw.count, raw.baseAddress, 0, nil, nil),
                   "clEnqueueWriteBuffer")
            }
            return mem
        }
        let xMem = engineBuffer(xValues, offset: align)  // x sits after `align` bytes of the engine's own data
        let logitMem = engineBuffer(logitValues, offset: 0)

        // Switchyard's blocking reads (in an async context the async overloads would be chosen).
        func syncFloats(_ b: OpenCLBackend, _ t: Tensor) throws -> [Float] { try b.floats(t) }
        func syncInts(_ b: OpenCLBackend, _ t: Tensor) throws -> [Int32] { try b.ints(t) }
        func syncBytes(_ b: OpenCLBackend, _ t: Tensor) throws -> [UInt8] { try b.bytes(t) }

        func bits(_ values: [Float]) -> [UInt32] { values.map(\.bitPattern) }
        var checks = 0
        func same(_ a: [UInt32], _ b: [UInt32], _ what: String) {
            if a != b { fail("\(what): the engine path differs from the synchronous path") }
            checks += 1
        }
        func same(_ a: [Int32], _ b: [Int32], _ what: String) {
            if a != b { fail("\(what): the engine path differs from the synchronous path") }
            checks += 1
        }

        do {
            // The engine's context and queue, its buffers wrapped without a copy.
            let engine = try OpenCLBackend(clContext: clContext, queue: clQueue)
            let x = try engine.tensor(wrapping: xMem, byteOffset: align, shape: [tokens, hidden], dtype: .f32)
            let logits = try engine.tensor(wrapping: logitMem, shape: [tokens, experts], dtype: .f32)
            // Switchyard's own synchronous path on the same device.
            let plain = try OpenCLBackend()
            let px = try plain.tensor(xValues, shape: [tokens, hidden], dtype: .f32)
            let plogits = try plain.tensor(logitValues, shape: [tokens, experts], dtype: .f32)

            // Routing and a grouped matmul reading x through the permutation.
            let routing = try engine.route(logits, config: config.router, blockSize: 4)
            let prouting = try plain.route(plogits, config: config.router, blockSize: 4)
            let w = try engine.prepareWeights(
                engine.tensor(gateUpValues, shape: [experts, 2 * ffn, hidden], dtype: .f32), swiglu: true, pack: true)
            let pw = try plain.prepareWeights(
                plain.tensor(gateUpValues, shape: [experts, 2 * ffn, hidden], dtype: .f32), swiglu: true, pack: true)
            let h = try engine.groupedMatmul(gathering: x, weights: w, routing: routing, epilogue: .swiglu)
            let ph = try plain.groupedMatmul(gathering: px, weights: pw, routing: prouting, epilogue: .swiglu)
            let done = try engine.completionEvent()
            try await done.completed()
            same(try await engine.ints(routing.ids), try syncInts(plain, prouting.ids), "expert ids")
            same(try await engine.ints(routing.rowOf), try syncInts(plain, prouting.rowOf), "rowOf")
            same(bits(try await engine.floats(h)), bits(try syncFloats(plain, ph)), "grouped matmul")

            // The engine reads a Switchyard output with its own OpenCL call.
            let hMem = try engine.clBuffer(of: h)
            var direct = [Float](repeating: 0, count: h.count)
            direct.withUnsafeMutableBytes { raw in
                ok(clEnqueueReadBuffer(clQueue, hMem, cl_bool(CL_TRUE), 0, raw.count, raw.baseAddress, 0, nil, nil),
                   "clEnqueueReadBuffer")
            }
            same(bits(direct), bits(try syncFloats(plain, ph)), "grouped matmul read by the engine")

            // The whole layer.
            func weights(_ b: OpenCLBackend) throws -> MoEWeights {
                MoEWeights(
                    router: try b.tensor(routerValues, shape: [experts, hidden], dtype: .f32),
                    gateUp: try b.tensor(gateUpValues, shape: [experts, 2 * ffn, hidden], dtype: .f32),
                    down: try b.tensor(downValues, shape: [experts, hidden, ffn], dtype: .f32))
            }
            let layer = try MoELayer(backend: engine, config: config, weights: weights(engine))
            let player = try MoELayer(backend: plain, config: config, weights: weights(plain))
            let y = try layer.forward(x).y
            let py = try player.forward(px).y
            try await engine.synchronize()
            same(bits(try await engine.floats(y)), bits(try syncFloats(plain, py)), "MoE layer")
            same(try await engine.bytes(y).map(UInt32.init), try syncBytes(plain, py).map(UInt32.init), "MoE layer bytes")
        } catch {
            fail("\(error)")
        }
        clReleaseMemObject(xMem)
        clReleaseMemObject(logitMem)
        clReleaseCommandQueue(clQueue)
        clReleaseContext(clContext)
        print("client: \(checks) checks, the engine's context, queue and buffers give the same bytes as the synchronous path")
    }
}
