#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The parameters of the gated (GLU) epilogue of a fused gate|up matmul (`Epilogue.swiglu`):
///
///     g = gate + b_gate, u = up + b_up           (the optional per-expert output bias)
///     g = min(g, gateLimit)                      (when gateLimit is set; NaN stays NaN)
///     u = clamp(u, −upLimit, upLimit)            (when upLimit is set)
///     out = act_α(g) · (u + upOffset) · scale
///
/// with `act_α(v) = v · σ(α·v)` for `.silu` (SiLU at α = 1), `σ(α·v)` for `.sigmoid` (the
/// original GLU), the GELUs (α must be 1) or the identity (`.none`, a bilinear GLU). The default
/// `.swiglu` is Mixtral/Qwen/DeepSeek's `silu(gate) · up`; `.gptOSS()` is gpt-oss's clamped
/// SwiGLU (α 1.702, limit 7, `(up + 1)`). The values are f32 (as the kernels get them).
public struct GLUParameters: Sendable, Hashable, CustomStringConvertible {
    /// The activation of the gate (`.none`, `.silu`, `.geluTanh`, `.geluErf` or `.sigmoid`).
    public var activation: Epilogue
    /// The gain α inside the sigmoid of `.silu` and `.sigmoid` (1 for the others).
    public var alpha: Float
    /// Upper clamp of the gate pre-activation (nil: none).
    public var gateLimit: Float?
    /// Symmetric clamp of the up pre-activation (nil: none).
    public var upLimit: Float?
    /// Added to the (clamped) up value before the product.
    public var upOffset: Float

    /// A gated epilogue `act(α·g)·g`-style product of the (clamped) gate and the (clamped,
    /// offset) up half; the defaults are plain SwiGLU.
    public init(activation: Epilogue = .silu, alpha: Float = 1, gateLimit: Float? = nil, upLimit: Float? = nil,
                upOffset: Float = 0) {
        self.activation = activation
        self.alpha = alpha
        self.gateLimit = gateLimit
        self.upLimit = upLimit
        self.upOffset = upOffset
    }

    /// `silu(gate) · up`.
    public static let swiglu = GLUParameters()

    /// gpt-oss: `(clamp(up, ±limit) + 1) · g · σ(α·g)` with `g = min(gate, limit)`.
    public static func gptOSS(alpha: Float = 1.702, limit: Float = 7) -> GLUParameters {
        GLUParameters(activation: .silu, alpha: alpha, gateLimit: limit, upLimit: limit, upOffset: 1)
    }

    /// A short label (`swiglu`, or the activation with the parameters that differ from it).
    public var description: String {
        if self == .swiglu { return "swiglu" }
        var parts = ["\(activation.rawValue)"]
        if alpha != 1 { parts.append("a=\(alpha)") }
        if let gateLimit { parts.append("gate<=\(gateLimit)") }
        if let upLimit { parts.append("|up|<=\(upLimit)") }
        if upOffset != 0 { parts.append("up+\(upOffset)") }
        return parts.joined(separator: ",")
    }
}

extension Reference {
    /// The gated epilogue on one gate/up pair of pre-activations (bias already added).
    public static func glu(_ gate: Double, _ up: Double, _ p: GLUParameters) -> Double {
        var g = gate
        var u = up
        if let l = p.gateLimit.map(Double.init), g > l { g = l }
        if let l = p.upLimit.map(Double.init) {
            if u > l { u = l } else if u < -l { u = -l }
        }
        let a = Double(p.alpha)
        let act: Double
        switch p.activation {
        case .silu: act = g / (1 + exp(-a * g))
        case .sigmoid: act = 1 / (1 + exp(-a * g))
        default: act = activate(g, p.activation)
        }
        return act * (u + Double(p.upOffset))
    }
}
