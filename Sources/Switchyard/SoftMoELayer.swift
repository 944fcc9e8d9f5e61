import Foundation
import OpenCLHost

/// The sizes of one Soft MoE block.
public struct SoftMoEConfig: Sendable, Hashable {
    public var hidden: Int
    /// Width of each expert's FFN (SwiGLU).
    public var ffn: Int
    public var experts: Int
    /// Slots per expert (S); the block has experts · S slots per sequence group.
    public var slotsPerExpert: Int

    public init(hidden: Int, ffn: Int, experts: Int, slotsPerExpert: Int) {
        self.hidden = hidden
        self.ffn = ffn
        self.experts = experts
        self.slotsPerExpert = slotsPerExpert
    }

    public var slots: Int { experts * slotsPerExpert }

    /// Floating-point operations of one forward over `batches` groups of `tokens` tokens: the
    /// logits, the slot mix, the experts on their slots and the combine (matmuls only).
    public func flops(batches: Int, tokens: Int) -> Double {
        let (b, t, h, n) = (Double(batches), Double(tokens), Double(hidden), Double(slots))
        return b * (3 * 2 * t * n * h + n * (2 * h * 2 * Double(ffn) + 2 * Double(ffn) * h))
    }
}

/// The weights of one Soft MoE block, as tensors on the backend that runs it.
public struct SoftMoEWeights: Sendable {
    /// Slot parameters Φᵀ `[E·S, hidden]` (the paper's Φ is `[hidden, E·S]`).
    public var phi: Tensor
    /// Fused gate|up `[E, 2·ffn, hidden]`, gate rows first.
    public var gateUp: Tensor
    /// Down `[E, hidden, ffn]`.
    public var down: Tensor

    public init(phi: Tensor, gateUp: Tensor, down: Tensor) {
        self.phi = phi
        self.gateUp = gateUp
        self.down = down
    }
}

/// A Soft MoE block (Puigcerver et al. 2023): dispatch (logits X·Φ, softmax over tokens per slot
/// and over slots per token, slots X̃ = Dᵀ·X) → each expert's SwiGLU FFN on its S slots of every
/// sequence group with the grouped matmul (one launch per matmul for all experts, over a fixed
/// routing in which expert e owns slots e·S ..< (e+1)·S) → combine Y = C·Ỹ. No token is dropped.
/// On either backend behind one API; a forward makes no host read until its output.
public final class SoftMoELayer: @unchecked Sendable {
    public let backend: any ComputeBackend
    public let config: SoftMoEConfig
    let phi: ExpertWeights
    let gateUp: ExpertWeights
    let down: ExpertWeights
    /// Rows per block of the fixed routing (the matmul's row tile).
    public let blockSize: Int
    private let lock = NSLock()
    /// The fixed routing per number of sequence groups.
    private var routings: [Int: Routing] = [:]

    public init(backend: any ComputeBackend, config c: SoftMoEConfig, weights w: SoftMoEWeights, pack: Bool = true) throws {
        self.backend = backend
        self.config = c
        guard c.experts >= 1, c.slotsPerExpert >= 1, c.hidden >= 1, c.ffn >= 1 else {
            throw SwitchyardError.unsupported("a Soft MoE block needs at least one expert, slot, hidden and ffn feature")
        }
        func expect(_ t: Tensor, _ shape: [Int], _ name: String) throws {
            guard t.shape == shape else { throw SwitchyardError.shape(argument: name, expected: "\(shape)", actual: t.shape) }
        }
        try expect(w.phi, [c.slots, c.hidden], "soft MoE phi (Φᵀ)")
        try expect(w.gateUp, [c.experts, 2 * c.ffn, c.hidden], "expert gate|up weight")
        try expect(w.down, [c.experts, c.hidden, c.ffn], "expert down weight")
        phi = try backend.prepareWeights(try w.phi.reshaped([1, c.slots, c.hidden]), swiglu: false, pack: pack)
        gateUp = try backend.prepareWeights(w.gateUp, swiglu: true, pack: pack)
        down = try backend.prepareWeights(w.down, swiglu: false, pack: pack)
        blockSize = backend.preferredBlockSize
        try backend.synchronize()
    }

    /// The fixed routing of `batches` sequence groups' slots: slot (b, s) is assignment b·n + s,
    /// routed to expert s / S.
    public func routing(batches: Int) throws -> Routing {
        lock.lock()
        defer { lock.unlock() }
        if let r = routings[batches] { return r }
        let n = config.slots
        let ids = (0..<batches * n).map { Int32(($0 % n) / config.slotsPerExpert) }
        let r = try backend.fixedRouting(ids: ids, experts: config.experts, blockSize: blockSize)
        routings[batches] = r
        return r
    }

    /// The output of a forward.
    public struct Output: Sendable {
        /// `[B, T, hidden]` f32, the block's output.
        public let y: Tensor
        /// The dispatch's slots and combine weights.
        public let dispatch: SoftMoESlots
    }

    /// Runs the block on `x [B, T, hidden]`: enqueues every stage and returns without waiting.
    public func forward(_ x: Tensor) throws -> Output {
        let s = try x.expectRank(3, "Soft MoE input x", "[batches, tokens, \(config.hidden)]")
        guard s[2] == config.hidden else {
            throw SwitchyardError.shape(argument: "Soft MoE input x", expected: "[batches, tokens, \(config.hidden)]", actual: s)
        }
        let dispatch = try backend.softMoEDispatch(x, phi: phi)
        let routing = try routing(batches: s[0])
        let slots = try dispatch.slots.reshaped([s[0] * config.slots, config.hidden])
        let h = try backend.groupedMatmul(gathering: slots, weights: gateUp, routing: routing, epilogue: .swiglu, dtype: x.dtype)
        let ys = try backend.groupedMatmul(h, weights: down, routing: routing, dtype: x.dtype)
        let y = try backend.softMoECombine(ys, weights: dispatch.combineWeights, routing: routing, dtype: .f32)
        return Output(y: y, dispatch: dispatch)
    }
}
