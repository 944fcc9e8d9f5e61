import OpenCLHost
import Switchyard
import SwitchyardConformance
import SwitchyardReference
import Testing

/// The depth-sparsity ops (`halting`, `earlyExit`) beyond the registry's default geometry, and
/// the loops their doc comments sketch, run end to end with real blocks.
@Suite("Depth sparsity")
struct DepthSparsityTests {
    /// Two work-items per exit row (widened for the 262,144-class row), two per halting column
    /// block (blocks of 2,048 columns: d = 2,100 spans two) and 3 rows per work-group. (Not the
    /// 70,001-class case: the cases pack logits with `gatherTokens`, whose row copy under this
    /// tuning would walk 35,001 columns per work-item: refused on a lanes device, see
    /// TokenSelectionTests.wideRowsStayWithinTheLoopBudget.)
    @Test(arguments: try! Conformance.cases(matching: "^(halting|early_exit) .*(d=2100|d=33 |d=0|classes=262144|patience=2|probabilities|NaN p|rows)"))
    func smallGroups(_ c: ConformanceCase) throws {
        for device in try Device.all() {
            let runner = try ConformanceRunner(
                device: device, tuning: Tuning(rowGroup: 2, rowsPerGroup: 3, copyGroup: 2))
            let result = runner.run(c)
            #expect(result.passed, "\(device.name): \(c.name): \(result.detail)")
        }
    }

    /// Hand-checked ACT: one token, p = 0.5, 0.3, 0.4 with ε = 0.01: c = 0.5, 0.8, then 1.2 ≥
    /// 0.99 halts at step 3 with R = 0.2 (weights 0.5, 0.3, 0.2, summing to 1), ponder 3.2.
    @Test func handCheckedHalting() throws {
        var backends: [any ComputeBackend] = [ReferenceBackend()]
        for device in try Device.all() { backends.append(try OpenCLBackend(device: device)) }
        for backend in backends {
            var state = try backend.haltingState(tokens: 1, width: 2, dtype: .f32)
            let hs: [[Float]] = [[1, 10], [2, 20], [4, 40]]
            for (p, h) in zip([Float(0.5), 0.3, 0.4], hs) {
                state = try backend.halting(
                    try backend.tensor([p], shape: [1], dtype: .f32), h: try backend.tensor(h, shape: [1, 2], dtype: .f32),
                    state: state, config: HaltingConfig(maxSteps: 5))
            }
            let acc = try backend.floats(state.accumulated)
            #expect(abs(acc[0] - (0.5 + 0.6 + 0.8)) < 1e-5 && abs(acc[1] - 19) < 1e-4, "\(backend.name): \(acc)")
            #expect(try backend.ints(state.running) == [0] && backend.ints(state.count) == [0], "\(backend.name)")
            #expect(try backend.ints(state.steps) == [3] && backend.ints(state.positions) == [-1], "\(backend.name)")
            let ponder = try backend.floats(state.ponder)[0]
            #expect(abs(ponder - 3.2) < 1e-6, "\(backend.name): ponder \(ponder)")
        }
    }

    /// The `halting` doc comment's loop with real blocks (a dense SiLU layer, a linear halting
    /// head on logits), no host read inside: the device's final state equals the reference's.
    @Test func haltingLoop() throws {
        let (n, d, maxSteps) = (300, 64, 6)
        func run(_ backend: any ComputeBackend) throws -> (acc: [Float], ponder: [Float], steps: [Int32], count: [Int32]) {
            var g = SeededGenerator(seed: 0xAC7)
            let w = try backend.prepareWeights(
                try backend.tensor(g.normals(d * d, scale: 0.15), shape: [1, d, d], dtype: .f32), swiglu: false, pack: true)
            let head = try backend.prepareWeights(
                try backend.tensor(g.normals(d, scale: 0.3), shape: [1, 1, d], dtype: .f32), swiglu: false, pack: true)
            var x = try backend.tensor(g.normals(n * d), shape: [1, n, d], dtype: .f32)
            var state = try backend.haltingState(tokens: n, width: d, dtype: .f32)
            for _ in 0..<maxSteps {
                let positions = try state.positions.reshaped([1, n])
                let rows = try backend.gatherTokens(x, indices: positions, rows: nil, dtype: nil)
                let h = try backend.groupedMatmul(try rows.reshaped([n, d]), weights: w, epilogue: .silu)
                let p = try backend.groupedMatmul(h, weights: head).reshaped([n])
                x = try backend.expandTokens(
                    try h.reshaped([1, n, d]), positions: positions, length: n, base: x, fill: 0, dtype: nil)
                state = try backend.halting(p, h: h, state: state, config: HaltingConfig(maxSteps: maxSteps, input: .logit))
            }
            return (try backend.floats(state.accumulated), try backend.floats(state.ponder), try backend.ints(state.steps),
                    try backend.ints(state.count))
        }
        let want = try run(ReferenceBackend())
        #expect(Set(want.steps).count > 2, "the loop should halt tokens at several steps: \(Set(want.steps))")
        for device in try Device.all() {
            let got = try run(try OpenCLBackend(device: device))
            #expect(got.steps == want.steps && got.count == [0], "\(device.name)")
            #expect(ErrorMeasure.nmse(got.acc, want.acc) < 1e-9, "\(device.name)")
            #expect(ErrorMeasure.nmse(got.ponder, want.ponder) < 1e-9, "\(device.name)")
        }
    }

    /// The `earlyExit` doc comment's loop: 4 blocks (dense SiLU layers) with a linear exit head
    /// each, max probability ≥ 0.6; predictions and the per-exit histogram equal the reference's.
    @Test func earlyExitLoop() throws {
        let (n, d, classes, blocks) = (300, 64, 10, 4)
        func run(_ backend: any ComputeBackend) throws -> (predictions: [Int32], exits: [Int32], histogram: [Int32]) {
            var g = SeededGenerator(seed: 0xE817)
            var x = try backend.tensor(g.normals(n * d), shape: [1, n, d], dtype: .f32)
            var state = try backend.exitState(samples: n, classes: classes, heads: blocks, probabilities: nil)
            for k in 0..<blocks {
                let w = try backend.prepareWeights(
                    try backend.tensor(g.normals(d * d, scale: 0.15), shape: [1, d, d], dtype: .f32), swiglu: false, pack: true)
                let head = try backend.prepareWeights(
                    try backend.tensor(g.normals(classes * d, scale: 0.4 * Float(k + 1)), shape: [1, classes, d], dtype: .f32),
                    swiglu: false, pack: true)
                let positions = try state.positions.reshaped([1, n])
                let rows = try backend.gatherTokens(x, indices: positions, rows: nil, dtype: nil)
                let h = try backend.groupedMatmul(try rows.reshaped([n, d]), weights: w, epilogue: .silu)
                x = try backend.expandTokens(
                    try h.reshaped([1, n, d]), positions: positions, length: n, base: x, fill: 0, dtype: nil)
                state = try backend.earlyExit(
                    try backend.groupedMatmul(h, weights: head), state: state, criterion: .maxProbability(0.6),
                    last: k == blocks - 1)
            }
            return (try backend.ints(state.predictions), try backend.ints(state.exitHead), try backend.ints(state.histogram))
        }
        let want = try run(ReferenceBackend())
        #expect(want.histogram.reduce(0, +) == Int32(n) && want.histogram.filter { $0 > 0 }.count > 2, "\(want.histogram)")
        for device in try Device.all() {
            let got = try run(try OpenCLBackend(device: device))
            #expect(got.predictions == want.predictions, "\(device.name)")
            #expect(got.exits == want.exits && got.histogram == want.histogram, "\(device.name): \(got.histogram) vs \(want.histogram)")
        }
    }
}
