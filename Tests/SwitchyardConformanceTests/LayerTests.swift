import OpenCLHost
import Switchyard
import SwitchyardConformance
import Testing

@Suite("MoE layer: batch invariance and errors")
struct LayerTests {
    /// A batch split into chunks (as a batch over `chunkTokens` is) gives bitwise the output of
    /// one pass, on every device and the reference; capacity-limited routing is not split.
    @Test func chunkedForwardIsBitwiseOnePass() throws {
        let backends: [any ComputeBackend] = try Device.all().map { try OpenCLBackend(device: $0) } + [ReferenceBackend()]
        for backend in backends {
            for config in [MoEConfig.mixtralTiny, .qwenMoETiny, .deepSeekTiny] {
                let layer = try MoELayer(
                    backend: backend, config: config,
                    weights: try MoEWeights.random(config: config, backend: backend, dtype: .bf16, seed: 5))
                var g = SeededGenerator(seed: 17)
                let x = try backend.tensor(g.normals(60 * config.hidden), shape: [60, config.hidden], dtype: .bf16)
                let whole = try layer.forward(x)
                #expect(whole.routings.count == 1)
                let one = try backend.floats(whole.y).map(\.bitPattern)
                for chunk in [13, 59] {
                    let split = try layer.forward(x, chunk: chunk)
                    #expect(split.routings.count == (60 + chunk - 1) / chunk)
                    #expect(try backend.floats(split.y).map(\.bitPattern) == one, "\(backend.name) chunk \(chunk)")
                }
            }
            var capped = MoEConfig.mixtralTiny
            capped.router = .switchTransformer(experts: 8, capacityFactor: 1.25)
            let layer = try MoELayer(
                backend: backend, config: capped,
                weights: try MoEWeights.random(config: capped, backend: backend, dtype: .f32, seed: 5))
            let x = try backend.tensor([Float](repeating: 0.5, count: 10 * capped.hidden), shape: [10, capped.hidden], dtype: .f32)
            #expect(throws: SwitchyardError.self) { try layer.forward(x, chunk: 4) }
            _ = try layer.forward(x, chunk: 10)
        }
    }

    /// A token's output row is bitwise the same whatever else shares its batch: a prefix, one
    /// token, a shuffled half; for both weight layouts and several row-tile sizes.
    @Test(arguments: [(4, true), (6, true), (1, true), (4, false)])
    func batchInvariance(rows: Int, pack: Bool) throws {
        let device = try Device.select()
        let backend = try OpenCLBackend(
            device: device, tuning: Tuning(rowGroup: 16, topKLocalKeys: 4096, matmulRows: rows))
        for (name, config) in [("mixtral", MoEConfig.mixtralTiny), ("qwen", .qwenMoETiny), ("deepseek", .deepSeekTiny)] {
            let weights = try MoEWeights.random(config: config, backend: backend, dtype: .f32, seed: 11)
            let layer = try MoELayer(backend: backend, config: config, weights: weights, pack: pack)
            var g = SeededGenerator(seed: 99)
            let t = 50
            let h = config.hidden
            let x = g.normals(t * h)
            func run(_ tokens: [Int]) throws -> [[UInt32]] {
                let input = tokens.flatMap { x[($0 * h)..<(($0 + 1) * h)] }
                let y = try backend.floats(
                    layer.forward(try backend.tensor(input, shape: [tokens.count, h], dtype: .f32)).y)
                return tokens.indices.map { i in y[(i * h)..<((i + 1) * h)].map(\.bitPattern) }
            }
            let full = try run(Array(0..<t))
            let prefix = try run(Array(0..<20))
            for i in 0..<20 { #expect(prefix[i] == full[i], "\(name): prefix row \(i) differs") }
            let one = try run([7])
            #expect(one[0] == full[7], "\(name): token 7 alone differs")
            var order = Array(0..<t).shuffled(using: &g).prefix(t / 2).map { $0 }
            order.reverse()
            let half = try run(order)
            for (i, token) in order.enumerated() {
                #expect(half[i] == full[token], "\(name): token \(token) in a shuffled half differs")
            }
        }
    }

    @Test func nanLogitsAreAnError() throws {
        let backend = try OpenCLBackend()
        let config = MoEConfig.mixtralTiny
        let layer = try MoELayer(
            backend: backend, config: config,
            weights: MoEWeights.random(config: config, backend: backend, dtype: .f32, seed: 1))
        var values = [Float](repeating: 0.5, count: 4 * config.hidden)
        values[130] = .nan
        let x = try backend.tensor(values, shape: [4, config.hidden], dtype: .f32)
        // The forward enqueues without waiting; reading its output raises.
        let y = try layer.forward(x).y
        #expect(throws: SwitchyardError.invalidValues(argument: "router logits", detail: "NaN or infinite values; routing refused")) {
            try backend.floats(y)
        }
        #expect(throws: SwitchyardError.self) { try backend.bytes(y) }
        // The same through the ops one by one: route, grouped matmul, read.
        let logits = try backend.groupedMatmul(
            x, weights: try backend.prepareWeights(
                try backend.tensor([Float](repeating: 0.1, count: 8 * config.hidden), shape: [1, 8, config.hidden],
                                   dtype: .f32), swiglu: false, pack: true),
            dtype: .f32)
        let routing = try backend.route(logits, bias: nil, config: config.router, blockSize: 4)
        let h = try backend.groupedMatmul(
            gathering: x, weights: try backend.prepareWeights(
                try backend.tensor([Float](repeating: 0.1, count: 8 * 4 * config.hidden), shape: [8, 4, config.hidden],
                                   dtype: .f32), swiglu: false, pack: true),
            routing: routing, dtype: .f32)
        #expect(throws: SwitchyardError.self) { try backend.floats(h) }
    }

    /// Every tensor of a gating, a routing and an expert choice carries the flags: with a NaN or
    /// infinite logit each read throws (nothing waited for the flags when routing), with finite
    /// logits none does. On the device and on the reference.
    @Test(arguments: [Float.nan, .infinity, -.infinity, 0.25])
    func routedTensorsCarryTheFlags(_ bad: Float) throws {
        for backend in [try OpenCLBackend() as any ComputeBackend, ReferenceBackend()] {
            var g = SeededGenerator(seed: 21)
            var values = g.normals(40 * 8)
            values[77] = bad
            let logits = try backend.tensor(values, shape: [40, 8], dtype: .f32)
            let routing = try backend.route(
                logits, config: RouterConfig(experts: 8, k: 2, capacityFactor: 1.0, dropPriority: .weight),
                blockSize: 4)
            let choice = try backend.expertChoice(logits, config: RouterConfig(experts: 8, k: 2))
            let ints = [routing.ids, routing.counts, routing.routedCounts, routing.offsets, routing.tileExpert,
                        routing.rowOf, routing.assignmentOf, routing.dropped, choice.tokens]
            let floats = [routing.gating.weights, routing.weights, choice.weights]
            if bad.isFinite {
                for t in ints { _ = try backend.ints(t) }
                for t in floats { _ = try backend.floats(t) }
                try backend.check(flags: routing.flags)
            } else {
                let error = SwitchyardError.invalidValues(
                    argument: "router logits", detail: "NaN or infinite values; routing refused")
                for t in ints { #expect(throws: error, "\(backend.name) \(t)") { try backend.ints(t) } }
                for t in floats { #expect(throws: error, "\(backend.name) \(t)") { try backend.floats(t) } }
                #expect(throws: error) { try backend.check(flags: choice.flags) }
            }
        }
    }

    @Test func misShapedWeightsAndInputsAreErrors() throws {
        let backend = try OpenCLBackend()
        let config = MoEConfig.mixtralTiny
        var weights = try MoEWeights.random(config: config, backend: backend, dtype: .f32, seed: 1)
        let good = weights.down
        weights.down = try backend.tensor([Float](repeating: 1, count: 8 * 3), shape: [8, 3], dtype: .f32)
        #expect(throws: SwitchyardError.self) { try MoELayer(backend: backend, config: config, weights: weights) }
        weights.down = good
        let layer = try MoELayer(backend: backend, config: config, weights: weights)
        let x = try backend.tensor([Float](repeating: 1, count: 2 * 64), shape: [2, 64], dtype: .f32)
        #expect(throws: SwitchyardError.shape(argument: "MoE input x", expected: "[tokens, 128]", actual: [2, 64])) {
            try layer.forward(x)
        }
    }

    @Test func routerOptionsAreValidated() throws {
        let backend = try OpenCLBackend()
        let logits = try backend.tensor((0..<(3 * 64)).map { Float($0 % 13) }, shape: [3, 64], dtype: .f32)
        #expect(throws: SwitchyardError.self) { try backend.gating(logits, bias: nil, config: RouterConfig(experts: 64, k: 65)) }
        #expect(throws: SwitchyardError.self) { try backend.gating(logits, bias: nil, config: RouterConfig(experts: 8)) }
        #expect(throws: SwitchyardError.self) {
            try backend.gating(logits, bias: nil, config: RouterConfig(experts: 64, k: 8, expertGroups: 7))
        }
        #expect(throws: SwitchyardError.self) {
            try backend.gating(logits, bias: nil, config: RouterConfig(experts: 64, k: 20, expertGroups: 8, topKGroups: 2))
        }
        let badBias = try backend.tensor([Float](repeating: 0, count: 8), shape: [8], dtype: .f32)
        #expect(throws: SwitchyardError.self) { try backend.gating(logits, bias: badBias, config: .deepSeekV3(experts: 64)) }
        #expect(throws: SwitchyardError.self) {
            try backend.route(logits, config: RouterConfig(experts: 64, k: 2), blockSize: 0)
        }
    }

    @Test func routingStatsAreReadOnDemand() throws {
        let backend = try OpenCLBackend()
        var g = SeededGenerator(seed: 5)
        let logits = try backend.tensor(g.normals(1000 * 8), shape: [1000, 8], dtype: .f32)
        let routing = try backend.route(logits, config: .switchTransformer(experts: 8, capacityFactor: 1.0), blockSize: 4)
        let stats = try backend.routingStats(routing)
        #expect(stats.tokensPerExpert.reduce(0, +) + stats.dropped == 1000)
        #expect(stats.tokensPerExpert.allSatisfy { $0 <= 125 })
        #expect(abs(stats.meanProbability.reduce(0, +) - 1) < 1e-4)
        #expect(stats.balanceLoss >= 0.99)
    }
}
