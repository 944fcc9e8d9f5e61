import Foundation
import Switchyard
import SwitchyardConformance

/// The sizes of a mixture-of-depths stack: `blocks` residual SwiGLU MLP blocks of width `hidden`
/// and FFN width `ffn`, each running on the top `capacity` fraction of each sequence's tokens.
public struct MixtureOfDepthsConfig: Sendable, Hashable {
    public var blocks: Int
    public var hidden: Int
    public var ffn: Int
    /// The fraction of each sequence's tokens a block computes (C = ⌈capacity · L⌉), in (0, 1].
    public var capacity: Double

    public init(blocks: Int, hidden: Int, ffn: Int, capacity: Double) {
        self.blocks = blocks
        self.hidden = hidden
        self.ffn = ffn
        self.capacity = capacity
    }

    /// `switchyard run --config mod-tiny`: 4 blocks, d 256, ffn 1024, capacity 12.5 %.
    public static let tiny = MixtureOfDepthsConfig(blocks: 4, hidden: 256, ffn: 1024, capacity: 0.125)

    /// FLOPs of one row through one block's MLP: gate|up `[2·ffn, d]` and down `[d, ffn]`.
    public var flopsPerRow: Double { 2 * Double(hidden) * 2 * Double(ffn) + 2 * Double(ffn) * Double(hidden) }

    /// Checks every size; the error names the field.
    public func validate() throws {
        guard blocks >= 1 else { throw SwitchyardError.outOfRange(argument: "mixture-of-depths blocks", value: blocks, range: "1...") }
        guard hidden >= 1 else { throw SwitchyardError.outOfRange(argument: "mixture-of-depths hidden", value: hidden, range: "1...") }
        guard ffn >= 1 else { throw SwitchyardError.outOfRange(argument: "mixture-of-depths ffn", value: ffn, range: "1...") }
        guard capacity.isFinite, capacity > 0, capacity <= 1 else {
            throw SwitchyardError.unsupported("mixture-of-depths capacity \(capacity) is out of range: expected 0 < capacity ≤ 1")
        }
    }
}

/// Mixture-of-depths (Raposo et al. 2024) over residual SwiGLU MLP blocks (Switchyard has no
/// attention): per block a linear router scores every token (`[1, d]`, f32 scores), `tokenTopK`
/// keeps each sequence's top C positions in ascending order with weights σ(score),
/// `gatherTokens` packs those rows, the MLP `W2·SwiGLU(W1·x)` runs on the B·C packed rows only
/// (the grouped matmul with one expert), and `scatterTokens` writes x + σ(score)·f at the chosen
/// positions and x elsewhere. No host read between blocks.
///
/// Dense: every token through every block, `x + W2·SwiGLU(W1·x)` — the residual stack that
/// mixture-of-depths replaces (no router, no gate).
public final class MixtureOfDepthsStack: ConditionalStack {
    public let backend: any ComputeBackend
    public let shape: ExampleShape
    public let config: MixtureOfDepthsConfig
    /// Tokens each block computes per sequence, C.
    public let capacity: Int
    let routers: [ExpertWeights]
    let gateUps: [ExpertWeights]
    let downs: [ExpertWeights]
    /// Positions 0..<L of every sequence: the dense residual add.
    let identity: Tensor

    public init(backend: any ComputeBackend, config c: MixtureOfDepthsConfig, shape: ExampleShape, pack: Bool = true) throws {
        try c.validate()
        try shape.validate(width: c.hidden, perToken: c.ffn, backend: backend)  // the dense MLP's [B·L, ffn]
        self.backend = backend
        self.shape = shape
        self.config = c
        capacity = try TokenCapacity.ratio(c.capacity).resolve(length: shape.length)
        var g = SeededGenerator(seed: shape.seed)
        var routers: [ExpertWeights] = []
        var gateUps: [ExpertWeights] = []
        var downs: [ExpertWeights] = []
        for _ in 0..<c.blocks {
            let router = try seededWeights(&g, backend, [1, 1, c.hidden], fanIn: c.hidden, dtype: shape.dtype)
            let gateUp = try seededWeights(&g, backend, [1, 2 * c.ffn, c.hidden], fanIn: c.hidden, dtype: shape.dtype)
            let down = try seededWeights(&g, backend, [1, c.hidden, c.ffn], fanIn: c.ffn, dtype: shape.dtype)
            routers.append(try backend.prepareWeights(router, swiglu: false, pack: pack))
            gateUps.append(try backend.prepareWeights(gateUp, swiglu: true, pack: pack))
            downs.append(try backend.prepareWeights(down, swiglu: false, pack: pack))
        }
        (self.routers, self.gateUps, self.downs) = (routers, gateUps, downs)
        identity = try identityPositions(backend, batch: shape.batch, length: shape.length)
        try backend.synchronize()
    }

    public var width: Int { config.hidden }

    public var summary: String {
        String(
            format: "%d residual SwiGLU MLP blocks (d %d, ffn %d) with mixture-of-depths: per block a linear router "
                + "scores every token and only each sequence's top %.1f %% (C = %d of %d) run x + σ(score)·W2·SwiGLU(W1·x); "
                + "the rest pass through",
            config.blocks, config.hidden, config.ffn, config.capacity * 100, capacity, shape.length)
    }

    public var denseDefinition: String {
        "every token through every block, x + W2·SwiGLU(W1·x) (the residual stack mixture-of-depths replaces: no router, no gate)"
    }

    public func input() throws -> Tensor {
        var g = SeededGenerator(seed: shape.seed ^ 0x5EED_0F_1A9E)
        return try backend.tensor(
            g.normals(shape.batch * shape.length * config.hidden), shape: [shape.batch, shape.length, config.hidden],
            dtype: shape.dtype)
    }

    func checkInput(_ x: Tensor) throws {
        let want = [shape.batch, shape.length, config.hidden]
        guard x.shape == want else {
            throw SwitchyardError.shape(argument: "mixture-of-depths input x", expected: "\(want)", actual: x.shape)
        }
    }

    public func forwardDense(_ x: Tensor) throws -> Tensor {
        try checkInput(x)
        let (b, l, d) = (shape.batch, shape.length, config.hidden)
        var x = x
        for i in 0..<config.blocks {
            let h = try backend.groupedMatmul(try x.reshaped([b * l, d]), weights: gateUps[i], epilogue: .swiglu)
            let f = try backend.groupedMatmul(h, weights: downs[i], dtype: x.dtype)
            x = try backend.scatterTokens(x, updates: try f.reshaped([b, l, d]), indices: identity, weights: nil, dtype: nil)
        }
        return x
    }

    public func forwardDynamic(_ x: Tensor, clock: StageClock?) throws -> ConditionalForward {
        try checkInput(x)
        let (b, l, d, c) = (shape.batch, shape.length, config.hidden, capacity)
        var x = x
        var chosen: [Tensor] = []
        for i in 0..<config.blocks {
            let scores = try staged(clock, "router") {
                try backend.groupedMatmul(try x.reshaped([b * l, d]), weights: routers[i], dtype: .f32)
            }
            let (indices, weights) = try staged(clock, "tokenTopK") {
                try backend.tokenTopK(try scores.reshaped([b, l]), capacity: .count(c), weighting: .sigmoid)  // [B, C] ascending, σ(score)
            }
            let rows = try staged(clock, "gather") { try backend.gatherTokens(x, indices: indices, rows: nil, dtype: nil) }  // [B, C, d]
            let f = try staged(clock, "MLP") {
                let h = try backend.groupedMatmul(try rows.reshaped([b * c, d]), weights: gateUps[i], epilogue: .swiglu)
                return try backend.groupedMatmul(h, weights: downs[i], dtype: x.dtype)
            }
            x = try staged(clock, "scatter") {
                try backend.scatterTokens(x, updates: try f.reshaped([b, c, d]), indices: indices, weights: weights, dtype: nil)
            }
            chosen.append(indices)
        }
        return ConditionalForward(y: x, records: chosen)
    }

    /// Rows computed per block: the chosen positions read back, counting each valid one
    /// (0 ≤ p < L; an empty slot, −1, computes nothing useful).
    public func account(_ forward: ConditionalForward) throws -> ComputeAccount {
        let computed = try forward.records.map { record in
            try backend.ints(record).filter { $0 >= 0 && Int($0) < shape.length }.count
        }
        let tokens = Double(shape.batch * shape.length)
        return ComputeAccount(
            computedRows: computed, denseRows: Array(repeating: shape.batch * shape.length, count: config.blocks),
            flopsPerRow: Array(repeating: config.flopsPerRow, count: config.blocks),
            dynamicOverheadFLOPs: Double(config.blocks) * 2 * tokens * Double(config.hidden), denseOverheadFLOPs: 0)
    }
}
