import Foundation
import SwitchyardReference

// The grouped matmul's parameterized gated epilogue and per-expert output bias (gpt-oss, issue
// 17): `GLUParameters` (defined in SwitchyardReference) checked here and turned into the
// kernels' -D defines; the bias `[E, N_w]` f32 checked against the weights. The op stays
// `GroupedMatmul` (Matmul.swift), which carries both in its descriptor.

extension GLUParameters {
    /// Checks the parameters: a gate activation the epilogue has (none, SiLU, GELU tanh/erf,
    /// sigmoid), a finite α (other than 1 only for SiLU and sigmoid, which scale the sigmoid's
    /// argument by it), finite limits (the up limit ≥ 0) and a finite up offset.
    public func validate() throws {
        let allowed: [Epilogue] = [.none, .silu, .geluTanh, .geluErf, .sigmoid]
        guard allowed.contains(activation) else {
            throw SwitchyardError.unsupported(
                "GLU activation \(activation.rawValue): expected one of \(allowed.map(\.rawValue).joined(separator: ", "))")
        }
        guard alpha.isFinite else { throw SwitchyardError.invalidValues(argument: "GLU alpha", detail: "\(alpha) is not finite") }
        if alpha != 1 && activation != .silu && activation != .sigmoid {
            throw SwitchyardError.invalidValues(
                argument: "GLU alpha", detail: "\(alpha) with activation \(activation.rawValue): α applies to silu and sigmoid only")
        }
        if let gateLimit, !gateLimit.isFinite {
            throw SwitchyardError.invalidValues(argument: "GLU gate limit", detail: "\(gateLimit) is not finite")
        }
        if let upLimit, !(upLimit.isFinite && upLimit >= 0) {
            throw SwitchyardError.invalidValues(argument: "GLU up limit", detail: "\(upLimit): expected a finite value ≥ 0")
        }
        guard upOffset.isFinite else {
            throw SwitchyardError.invalidValues(argument: "GLU up offset", detail: "\(upOffset) is not finite")
        }
    }

    /// The -D defines of Kernels/matmul.cl for these parameters (none for `.swiglu`, whose code is
    /// the kernels' default): `GLU_ACT` (the gate activation's epilogue code), `GLU_ALPHA`,
    /// `GATE_LIMIT`, `UP_LIMIT`, `UP_OFFSET`, each value an exact f32 hex literal.
    var kernelDefines: [String: String] {
        guard self != .swiglu else { return [:] }
        var d = ["GLU_ACT": "\(activation.code)"]
        if alpha != 1 { d["GLU_ALPHA"] = Self.literal(alpha) }
        if let gateLimit { d["GATE_LIMIT"] = Self.literal(gateLimit) }
        if let upLimit { d["UP_LIMIT"] = Self.literal(upLimit) }
        if upOffset != 0 { d["UP_OFFSET"] = Self.literal(upOffset) }
        return d
    }

    /// `v` as an OpenCL C f32 literal that denotes it exactly (C99 hex float).
    static func literal(_ v: Float) -> String { "(" + String(format: "%a", Double(v)) + "f)" }
}

extension GroupedMatmul {
    /// Checks an output bias for `weights`: f32 `[E, N_w]` (N_w the weight rows: 2·ffn, gate
    /// columns first, for the gated epilogue).
    static func validateBias(_ bias: Tensor?, weights: ExpertWeights) throws {
        guard let bias else { return }
        let want = [weights.experts, weights.weightRows]
        guard bias.shape == want else {
            throw SwitchyardError.shape(argument: "matmul bias", expected: "\(want) (experts, weight rows)", actual: bias.shape)
        }
        try bias.expectDType([.f32], "matmul bias")
    }
}
