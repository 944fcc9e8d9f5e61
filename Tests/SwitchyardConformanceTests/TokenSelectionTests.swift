import OpenCLHost
import Switchyard
import SwitchyardConformance
import Testing

/// The token selection and compaction ops beyond the registry's default launch geometry.
@Suite("Token selection and compaction")
struct TokenSelectionTests {
    /// Two work-items per chunk work-group: each walks 2,048 positions and the per-sequence scan
    /// gives each work-item several chunks (the default geometry gives each at most one); rows
    /// copied by 4-work-item groups, 3 rows each (the lane-style layout on a CPU device).
    @Test(arguments: try! Conformance.cases(matching: "^(token_topk|compact|gather_tokens|scatter_tokens|expand_tokens) .*(L=32768|L=40000|L=12289|L=10000|B=8|B=4 L=2000|round trip|pipeline)"))
    func smallGroups(_ c: ConformanceCase) throws {
        for device in try Device.all() {
            let runner = try ConformanceRunner(
                device: device, tuning: Tuning(rowGroup: 2, rowsPerGroup: 3, copyGroup: 4))
            let result = runner.run(c)
            #expect(result.passed, "\(device.name): \(c.name): \(result.detail)")
        }
    }

    /// Row copies on a lanes device with 2-work-item groups: a 20,001-column row (not a multiple
    /// of 16: one column a step) is 10,001 steps per work-item, so the tuning's 3 rows per group
    /// drop to 1 (within llvmpipe's 65,535, counted over all a work-item's loops) and the rows
    /// match the reference; a 70,001-column row (35,004 steps) is refused by name where the
    /// device has that limit rather than copied in part. Devices without a loop limit copy both.
    @Test func wideRowsStayWithinTheLoopBudget() throws {
        for device in try Device.all() {
            let backend = try OpenCLBackend(device: device, tuning: Tuning(rowGroup: 2, rowsPerGroup: 3, copyGroup: 2))
            for width in [20_001, 70_001] {
                try checkRotatedGather(
                    backend, width: width, dtype: .f32,
                    refused: device.loopIterationLimit != nil && width > 16_384 * 2)
            }
        }
    }

    /// f16 rows copied bit for bit move as 32-bit words, 16 a step only when the word count is
    /// a multiple of 16: a width of 16 × an odd number (112,016 = 16 · 7,001) is 56,008 scalar
    /// word steps, not 7,001 vector steps. Under 2-work-item groups and 3 rows per group that
    /// was 84,012 loop steps per work-item, past llvmpipe's 65,535, and the rows came back
    /// partly unwritten; the host now counts the word steps (one row a group: 28,004) and
    /// refuses a 262,160-wide row (65,540 steps) by name where the device has the limit.
    @Test func rawHalfRowsCountTheirWordSteps() throws {
        for device in try Device.all() {
            let backend = try OpenCLBackend(device: device, tuning: Tuning(rowGroup: 2, rowsPerGroup: 3, copyGroup: 2))
            for width in [112_016, 262_160] {
                try checkRotatedGather(
                    backend, width: width, dtype: .f16, refused: device.loopIterationLimit != nil && width > 200_000)
            }
        }
    }

    /// Gathers the 3 rows of a `width`-wide sequence in the order 2, 0, 1 and checks them bit for
    /// bit, or, where `refused`, that the backend refuses the row width by name.
    func checkRotatedGather(_ backend: OpenCLBackend, width: Int, dtype: DType, refused: Bool) throws {
        let name = backend.device.name
        var g = SeededGenerator(seed: UInt64(width))
        let x = try backend.tensor(g.normals(3 * width), shape: [1, 3, width], dtype: dtype)
        let indices = try backend.tensor([2, 0, 1] as [Int32], shape: [1, 3])
        do {
            let y = try backend.floats(backend.gatherTokens(x, indices: indices, rows: nil, dtype: nil))
            let xs = try backend.floats(x)
            #expect(!refused, "\(name): width \(width) was not refused")
            let want = Array(xs[(2 * width)...] + xs[..<(2 * width)])
            let wrong = zip(y, want).filter { $0.0.bitPattern != $0.1.bitPattern }.count
            #expect(y.count == want.count && wrong == 0, "\(name): width \(width): \(wrong) elements differ")
        } catch let error as SwitchyardError {
            #expect(refused && "\(error)".contains("gatherTokens row width"), "\(name): \(error)")
        }
    }

    @Test func capacityFromARatio() throws {
        #expect(try TokenCapacity.ratio(0.125).resolve(length: 4096) == 512)
        #expect(try TokenCapacity.ratio(0.3).resolve(length: 10) == 3)
        #expect(try TokenCapacity.ratio(0.001).resolve(length: 10) == 1)
        #expect(try TokenCapacity.ratio(0).resolve(length: 10) == 0)
        #expect(try TokenCapacity.ratio(1).resolve(length: 10) == 10)
        #expect(try TokenCapacity.count(0).resolve(length: 0) == 0)
        #expect(throws: SwitchyardError.self) { try TokenCapacity.ratio(.infinity).resolve(length: 10) }
    }

    /// Index spaces past the kernels' 32 bits (zero-element tensors of large extents exist) and
    /// a `length` whose product with the batch overflows are refused with an error, never a trap.
    @Test func hostileSizesAreRefused() throws {
        var backends: [any ComputeBackend] = [ReferenceBackend()]
        for device in try Device.all() { backends.append(try OpenCLBackend(device: device)) }
        for backend in backends {
            let huge = try backend.tensor([Float](), shape: [1 << 20, 1 << 20, 0], dtype: .f32)
            let ids = try backend.tensor([Int32](), shape: [1 << 20, 0])
            #expect(throws: SwitchyardError.self) { try backend.gatherTokens(huge, indices: ids, rows: nil, dtype: nil) }
            #expect(throws: SwitchyardError.self) {
                try backend.scatterTokens(huge, updates: huge, indices: ids, weights: nil, dtype: nil)
            }
            let packed = try backend.tensor([Float](), shape: [2, 0, 4], dtype: .f32)
            let positions = try backend.tensor([Int32](), shape: [2, 0])
            #expect(throws: SwitchyardError.self) {
                try backend.expandTokens(packed, positions: positions, length: .max, base: nil, fill: 0, dtype: nil)
            }
        }
    }

    /// Hand-checked selection: ties to the lower position, NaN first, −0 equal to +0, positions
    /// returned ascending; on the reference and every device.
    @Test func handCheckedSelection() throws {
        let scores: [Float] = [1, 3, .nan, 3, -.infinity, 0, -0.0, 2, .infinity]
        var backends: [any ComputeBackend] = [ReferenceBackend()]
        for device in try Device.all() { backends.append(try OpenCLBackend(device: device)) }
        for backend in backends {
            let x = try backend.tensor(scores, shape: [1, 9], dtype: .f32)
            // NaN (2), +inf (8), 3 (1), 3 (3), 2 (7): ascending 1 2 3 7 8.
            let (i, w) = try backend.tokenTopK(x, capacity: .count(5), weighting: .score)
            #expect(try backend.ints(i) == [1, 2, 3, 7, 8], "\(backend.name)")
            let weights = try backend.floats(w)
            #expect(weights[0] == 3 && weights[1].isNaN && weights[4] == .infinity, "\(backend.name)")
            // The 7th: after 1 (0), the tie 0 (5) and −0 (6) go by position: 5 before 6.
            let (i7, _) = try backend.tokenTopK(x, capacity: .count(7), weighting: .score)
            #expect(try backend.ints(i7) == [0, 1, 2, 3, 5, 7, 8], "\(backend.name)")
        }
    }
}
