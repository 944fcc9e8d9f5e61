import OpenCLHost
import Switchyard
import SwitchyardConformance
import Testing

/// Every available OpenCL device, with a conformance runner each.
let runners: [ConformanceRunner] = {
    let devices = (try? Device.all()) ?? []
    return devices.compactMap { try? ConformanceRunner(device: $0) }
}()

@Suite("Conformance: every registered case on every OpenCL device")
struct ConformanceTests {
    @Test func thereIsADeviceAndEnoughCases() {
        #expect(!runners.isEmpty, "no OpenCL device: install pocl-opencl-icd")
        #expect(Conformance.cases.count >= 40)
        #expect(Set(Conformance.cases.map(\.name)).count == Conformance.cases.count, "case names must be unique")
    }

    @Test(arguments: Conformance.cases)
    func matchesTheReference(_ c: ConformanceCase) throws {
        for runner in runners {
            let result = runner.run(c)
            #expect(result.passed, "\(runner.device.name): \(c.name): \(result.detail)")
        }
    }

    /// 150 random valid configurations (`switchyard conformance --fuzz`), a fixed seed so a
    /// failure replays; the long sweep is `make fuzz`.
    @Test(arguments: Fuzz.cases(count: 150, seed: 20_261_128))
    func fuzzedConfigurations(_ c: ConformanceCase) throws {
        for runner in runners {
            let result = runner.run(c)
            #expect(result.passed, "\(runner.device.name): \(c.name): \(result.detail) (replay: --fuzz 1 --seed \(c.seed))")
        }
    }

    /// Top-k rows too wide for the local-memory path sort in global scratch: force that path.
    @Test(arguments: try! Conformance.cases(matching: "^topk"))
    func topKGlobalScratchPath(_ c: ConformanceCase) throws {
        for device in try Device.all() {
            let runner = try ConformanceRunner(device: device, tuning: Tuning(rowGroup: 8, topKLocalKeys: 2))
            let result = runner.run(c)
            #expect(result.passed, "\(device.name): \(c.name): \(result.detail)")
        }
    }

    /// Softmax rows under a 2-work-item rowGroup: a 50,000-column row takes a work-item 75,003
    /// loop steps over its three passes, past llvmpipe's 65,535 (counted over all a work-item's
    /// loops): there the host widens the group until they fit.
    @Test(arguments: try! Conformance.cases(matching: "^softmax .*cols=(50000|5000|4096) "))
    func softmaxSmallGroups(_ c: ConformanceCase) throws {
        for device in try Device.all() {
            let runner = try ConformanceRunner(device: device, tuning: Tuning(rowGroup: 2))
            let result = runner.run(c)
            #expect(result.passed, "\(device.name): \(c.name): \(result.detail)")
        }
    }

    /// Weight-priority capacity with a 16-work-item group: each work-item walks 1/16 of an
    /// expert's rows per radix pass, so the 40,000-assignment hot expert tests that the select's
    /// loops stay inside a lane-style device's loop budget (llvmpipe stops at 65,535).
    @Test(arguments: try! Conformance.cases(matching: "^permute.*weight"))
    func capacityByWeightSmallGroups(_ c: ConformanceCase) throws {
        for device in try Device.all() {
            let runner = try ConformanceRunner(device: device, tuning: Tuning(rowGroup: 16))
            let result = runner.run(c)
            #expect(result.passed, "\(device.name): \(c.name): \(result.detail)")
        }
    }
}

@Suite("Switchyard API errors")
struct APIErrorTests {
    let backend: OpenCLBackend

    init() throws {
        backend = try OpenCLBackend()
    }

    @Test func topKRangeIsChecked() throws {
        let x = try backend.tensor([1, 2, 3, 4, 5, 6], shape: [2, 3], dtype: .f32)
        #expect(throws: SwitchyardError.outOfRange(argument: "topK k", value: 4, range: "1...3 (the row length)")) {
            try backend.topK(x, k: 4)
        }
        #expect(throws: SwitchyardError.self) { try backend.topK(x, k: 0) }
    }

    @Test func shapesAndBackendsAreChecked() throws {
        #expect(throws: SwitchyardError.hostData(argument: "tensor values", expected: 6, actual: 5)) {
            try backend.tensor([1, 2, 3, 4, 5], shape: [2, 3], dtype: .f32)
        }
        let flat = try backend.tensor([1, 2, 3], shape: [3], dtype: .f32)
        #expect(throws: SwitchyardError.self) { try backend.softmax(flat) }
        let onReference = try ReferenceBackend().tensor([1, 2], shape: [1, 2], dtype: .f32)
        #expect(throws: SwitchyardError.self) { try backend.softmax(onReference) }
        let ints = try backend.tensor([1, 2] as [Int32], shape: [1, 2])
        #expect(throws: SwitchyardError.self) { try backend.softmax(ints) }
    }

    @Test func bothBackendsAgreeOnARoundTrip() throws {
        let values: [Float] = [1.5, -2.25, 3.0e-5, 65504, 1e-8]
        for dtype in DType.floatingPoint {
            let reference = try ReferenceBackend().floats(ReferenceBackend().tensor(values, shape: [5], dtype: dtype))
            let device = try backend.floats(backend.tensor(values, shape: [5], dtype: dtype))
            #expect(reference.map(\.bitPattern) == device.map(\.bitPattern), "\(dtype)")
        }
    }
}
