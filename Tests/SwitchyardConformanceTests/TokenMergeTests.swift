import OpenCLHost
import Switchyard
import SwitchyardConformance
import Testing

@Suite("Token merging and Soft MoE on every device")
struct TokenMergeTests {
    /// The merge cases with 4 × 4 scalar similarity tiles (a work-group matmul tuning on a CPU
    /// device): the register tile's column ranges are then short, so the wide-key case continues
    /// the best over several launches on every device, not only where work-items are lanes.
    @Test(arguments: try! Conformance.cases(matching: "^token_merge"))
    func smallSimilarityTiles(_ c: ConformanceCase) throws {
        for device in try Device.all() {
            var tuning = Tuning.defaults(for: device)
            tuning.matmulKernel = .workGroup
            tuning.matmulRows = 16
            tuning.matmulPanel = 64
            tuning.matmulRowsPerItem = 4
            let runner = try ConformanceRunner(device: device, tuning: tuning)
            let result = runner.run(c)
            #expect(result.passed, "\(device.name): \(c.name): \(result.detail)")
        }
    }

    /// r = 0 only reorders: unmerging the output through its map gives x back bit for bit.
    @Test func unmergeInvertsAReorder() throws {
        for device in try Device.all() {
            let backend = try OpenCLBackend(device: device)
            var g = SeededGenerator(seed: 11)
            let values = g.normals(3 * 9 * 5)
            let x = try backend.tensor(values, shape: [3, 9, 5], dtype: .f32)
            let merged = try backend.tokenMerge(x, keys: nil, sizes: nil, r: 0, protectFirst: true)
            let back = try backend.floats(backend.tokenUnmerge(merged.x, sourceMap: merged.sourceMap))
            #expect(back.map(\.bitPattern) == values.map(\.bitPattern), "\(device.name)")
            // Unmerged A tokens first, then B tokens: position 0 stays first, position 1 is row 5.
            #expect(try Array(backend.ints(merged.sourceMap)[0..<9]) == [0, 5, 1, 6, 2, 7, 3, 8, 4])
        }
    }

    /// Every sequence group of a Soft MoE block is computed alone: a group's output rows are
    /// bitwise the same in a batch of three groups and on their own.
    @Test func softMoEGroupsAreIndependent() throws {
        let config = SoftMoEConfig(hidden: 32, ffn: 48, experts: 4, slotsPerExpert: 3)
        for device in try Device.all() {
            let backend = try OpenCLBackend(device: device)
            let weights = try SoftMoEWeights.random(config: config, backend: backend, dtype: .f32, seed: 5)
            let layer = try SoftMoELayer(backend: backend, config: config, weights: weights)
            var g = SeededGenerator(seed: 6)
            let values = g.normals(3 * 13 * 32)
            let all = try backend.floats(
                layer.forward(backend.tensor(values, shape: [3, 13, 32], dtype: .f32)).y)
            for b in 0..<3 {
                let part = Array(values[(b * 13 * 32)..<((b + 1) * 13 * 32)])
                let alone = try backend.floats(layer.forward(backend.tensor(part, shape: [1, 13, 32], dtype: .f32)).y)
                #expect(alone.map(\.bitPattern) == all[(b * 13 * 32)..<((b + 1) * 13 * 32)].map(\.bitPattern),
                        "\(device.name): group \(b)")
            }
        }
    }

    @Test func errorsNameTheArgument() throws {
        let backend = ReferenceBackend()
        let x = try backend.tensor([Float](repeating: 1, count: 2 * 6 * 4), shape: [2, 6, 4], dtype: .f32)
        #expect(throws: SwitchyardError.outOfRange(
            argument: "tokenMerge r", value: 3, range: "0...2 (⌊(L − 1) / 2⌋ for L = 6, class token protected)")) {
            try backend.tokenMerge(x, keys: nil, sizes: nil, r: 3, protectFirst: true)
        }
        var nan = [Float](repeating: 1, count: 2 * 6 * 4)
        nan[3] = .nan
        let bad = try backend.tokenMerge(
            backend.tensor(nan, shape: [2, 6, 4], dtype: .f32), keys: nil, sizes: nil, r: 1, protectFirst: false)
        #expect(throws: SwitchyardError.invalidValues(
            argument: "token merge keys", detail: "NaN or infinite values; merge refused")) { try backend.floats(bad.x) }
    }
}
