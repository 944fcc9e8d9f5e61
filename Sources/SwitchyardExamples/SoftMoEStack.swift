import Foundation
import Switchyard
import SwitchyardConformance

/// The sizes of a Soft MoE stack: `blocks` residual Soft MoE blocks of `layer`'s sizes.
public struct SoftMoEStackConfig: Sendable, Hashable {
    public var blocks: Int
    public var layer: SoftMoEConfig

    public init(blocks: Int, layer: SoftMoEConfig) {
        self.blocks = blocks
        self.layer = layer
    }

    /// `switchyard run --config soft-moe-tiny`: 4 blocks, d 256, 8 SwiGLU experts of width 512,
    /// 16 slots each (128 slots per sequence).
    public static let tiny = SoftMoEStackConfig(
        blocks: 4, layer: SoftMoEConfig(hidden: 256, ffn: 512, experts: 8, slotsPerExpert: 16))

    /// FLOPs of one row (a slot, or a token in the dense mixture) through one expert's SwiGLU FFN.
    public var flopsPerRow: Double {
        2 * Double(layer.hidden) * 2 * Double(layer.ffn) + 2 * Double(layer.ffn) * Double(layer.hidden)
    }

    /// Checks every size; the error names the field.
    public func validate() throws {
        guard blocks >= 1 else { throw SwitchyardError.outOfRange(argument: "soft MoE stack blocks", value: blocks, range: "1...") }
        for (name, v) in [("hidden", layer.hidden), ("ffn", layer.ffn), ("experts", layer.experts),
                          ("slotsPerExpert", layer.slotsPerExpert)] where v < 1 {
            throw SwitchyardError.outOfRange(argument: "soft MoE stack \(name)", value: v, range: "1...")
        }
    }
}

/// A stack of residual Soft MoE blocks (`SoftMoELayer`, Puigcerver et al. 2023): each sequence's
/// tokens are mixed into E·S slots, each expert's SwiGLU FFN runs on its S slots only (the grouped
/// matmul over the fixed slot routing), and the slot outputs are mixed back and added to x.
///
/// Dense: every token through every expert — the same E experts' FFNs (the same weights) on all
/// B·L tokens each (the grouped matmul over a routing with k = E), mixed per token by a softmax
/// router whose row for expert e is the mean of e's slot parameters Φ, and added to x. It is what
/// running every expert on every token costs; its output is a different function, so only its
/// time is compared (the dynamic stack is checked against the reference).
public final class SoftMoEStack: ConditionalStack {
    public let backend: any ComputeBackend
    public let shape: ExampleShape
    public let config: SoftMoEStackConfig
    let layers: [SoftMoELayer]
    let dense: [MoELayer]
    let identity: Tensor

    public init(backend: any ComputeBackend, config c: SoftMoEStackConfig, shape: ExampleShape, pack: Bool = true) throws {
        try c.validate()
        // The dense mixture's expert-ordered rows: E per token, [B·L·E, max(ffn, d)].
        let (perToken, overflow) = c.layer.experts.multipliedReportingOverflow(by: max(c.layer.ffn, c.layer.hidden))
        guard !overflow else {
            throw SwitchyardError.outOfRange(argument: "soft MoE stack experts", value: c.layer.experts, range: "E · ffn below 2⁶³")
        }
        try shape.validate(width: c.layer.hidden, perToken: perToken, backend: backend)
        self.backend = backend
        self.shape = shape
        self.config = c
        let (h, f, e, s) = (c.layer.hidden, c.layer.ffn, c.layer.experts, c.layer.slotsPerExpert)
        let denseConfig = MoEConfig(
            hidden: h, ffn: f, router: RouterConfig(experts: e, k: e, scoring: .softmax, renormalize: false))
        var g = SeededGenerator(seed: shape.seed)
        var layers: [SoftMoELayer] = []
        var dense: [MoELayer] = []
        for _ in 0..<c.blocks {
            let phiValues = g.normals(try Tensor.checkedCount([c.layer.slots, h], dtype: .f32, "soft MoE phi"),
                                      scale: 1 / Float(h).squareRoot())
            let phi = try backend.tensor(phiValues, shape: [c.layer.slots, h], dtype: shape.dtype)
            let gateUp = try seededWeights(&g, backend, [e, 2 * f, h], fanIn: h, dtype: shape.dtype)
            let down = try seededWeights(&g, backend, [e, h, f], fanIn: f, dtype: shape.dtype)
            layers.append(
                try SoftMoELayer(
                    backend: backend, config: c.layer, weights: SoftMoEWeights(phi: phi, gateUp: gateUp, down: down),
                    pack: pack))
            // The dense mixture's router: expert e's row is the mean of its S slot parameters.
            var router = [Float](repeating: 0, count: e * h)
            for slot in 0..<c.layer.slots {
                for j in 0..<h { router[(slot / s) * h + j] += phiValues[slot * h + j] / Float(s) }
            }
            dense.append(
                try MoELayer(
                    backend: backend, config: denseConfig,
                    weights: MoEWeights(
                        router: try backend.tensor(router, shape: [e, h], dtype: shape.dtype), gateUp: gateUp, down: down),
                    pack: pack))
        }
        (self.layers, self.dense) = (layers, dense)
        identity = try identityPositions(backend, batch: shape.batch, length: shape.length)
        for layer in layers { _ = try layer.routing(batches: shape.batch) }
        try backend.synchronize()
    }

    public var width: Int { config.layer.hidden }

    public var summary: String {
        let l = config.layer
        return "\(config.blocks) residual Soft MoE blocks (d \(l.hidden), \(l.experts) SwiGLU experts of width \(l.ffn), "
            + "\(l.slotsPerExpert) slots each: \(l.slots) slots per sequence): each expert runs on its slots only, "
            + "x + combine(experts(dispatch(x)))"
    }

    public var denseDefinition: String {
        "every token through every expert (the same weights; k = E = \(config.layer.experts)), mixed by a softmax router "
            + "over each expert's mean slot parameters, x + Σ_e p_e·expert_e(x) (a cost baseline: another function)"
    }

    public func input() throws -> Tensor {
        var g = SeededGenerator(seed: shape.seed ^ 0x5EED_0F_1A9E)
        let d = config.layer.hidden
        return try backend.tensor(
            g.normals(shape.batch * shape.length * d), shape: [shape.batch, shape.length, d], dtype: shape.dtype)
    }

    func checkInput(_ x: Tensor) throws {
        let want = [shape.batch, shape.length, config.layer.hidden]
        guard x.shape == want else {
            throw SwitchyardError.shape(argument: "soft MoE stack input x", expected: "\(want)", actual: x.shape)
        }
    }

    public func forwardDense(_ x: Tensor) throws -> Tensor {
        try checkInput(x)
        let (b, l, d) = (shape.batch, shape.length, config.layer.hidden)
        var x = x
        for layer in dense {
            let y = try layer.forward(try x.reshaped([b * l, d])).y  // [B·L, d] f32
            x = try backend.scatterTokens(x, updates: try y.reshaped([b, l, d]), indices: identity, weights: nil, dtype: nil)
        }
        return x
    }

    public func forwardDynamic(_ x: Tensor, clock: StageClock?) throws -> ConditionalForward {
        try checkInput(x)
        var x = x
        var records: [Tensor] = []
        for layer in layers {
            let y = try staged(clock, "Soft MoE block") { try layer.forward(x).y }  // [B, L, d] f32
            x = try staged(clock, "residual add") {
                try backend.scatterTokens(x, updates: y, indices: identity, weights: nil, dtype: nil)
            }
            records.append(try layer.routing(batches: shape.batch).counts)
        }
        return ConditionalForward(y: x, records: records)
    }

    /// Rows computed per block: the slot routing's kept rows per expert `[E]`, read back and summed
    /// (B · E · S when every slot runs; padding rows to the matmul's tile are not counted).
    public func account(_ forward: ConditionalForward) throws -> ComputeAccount {
        let computed = try forward.records.map { try backend.ints($0).reduce(0) { $0 + Int($1) } }
        let c = config.layer
        let (b, l) = (Double(shape.batch), Double(shape.length))
        let perBlockOverhead = b * 3 * 2 * l * Double(c.slots) * Double(c.hidden)  // dispatch logits, slot mix, combine
        return ComputeAccount(
            computedRows: computed,
            denseRows: Array(repeating: shape.batch * shape.length * c.experts, count: config.blocks),
            flopsPerRow: Array(repeating: config.flopsPerRow, count: config.blocks),
            dynamicOverheadFLOPs: Double(config.blocks) * perBlockOverhead,
            denseOverheadFLOPs: Double(config.blocks) * 2 * b * l * Double(c.hidden) * Double(c.experts))
    }
}
