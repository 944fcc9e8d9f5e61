#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The activation applied to a matmul's output.
public enum Epilogue: String, Sendable, Hashable, CaseIterable {
    /// The plain product.
    case none
    /// SiLU (swish): v · sigmoid(v).
    case silu
    /// GELU, tanh approximation.
    case geluTanh
    /// GELU, exact (erf).
    case geluErf
    /// `silu(gate) · up` on a fused `[E, 2·ffn, in]` weight (gate rows first): output width ffn.
    case swiglu
    /// Logistic sigmoid (Qwen2-MoE's shared-expert gate).
    case sigmoid

    /// Code passed to the kernels as `-DEPILOGUE`.
    public var code: Int {
        switch self {
        case .none: 0
        case .silu: 1
        case .geluTanh: 2
        case .geluErf: 3
        case .swiglu: 4
        case .sigmoid: 5
        }
    }
}

extension Reference {
    /// SiLU: v / (1 + e^−v).
    public static func silu(_ v: Double) -> Double { v / (1 + exp(-v)) }

    /// Epilogue `e` applied to one pre-activation `v` (SwiGLU's pairing of gate and up happens in
    /// `linearRow`; here it is the identity, as `.none`).
    public static func activate(_ v: Double, _ e: Epilogue) -> Double {
        switch e {
        case .none, .swiglu: v
        case .silu: silu(v)
        case .geluTanh: 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))
        case .geluErf: 0.5 * v * (1 + erf(v / 2.0.squareRoot()))
        case .sigmoid: 1 / (1 + exp(-v))
        }
    }

    /// One row of a (grouped) linear layer: `act(a · W_eᵀ + b_e) · scale` with `w [E, N_w, K]`
    /// (N_w = N, or 2N for SwiGLU: `Reference.glu(a·gateᵀ + b_gate, a·upᵀ + b_up, glu)`, `.swiglu`
    /// parameters giving `silu(a·gateᵀ) · (a·upᵀ)`), `bias` the optional per-expert output bias
    /// `[E, N_w]` (gate columns first).
    public static func linearRow(
        _ a: ArraySlice<Float>, w: [Float], expert e: Int, n: Int, k: Int, epilogue: Epilogue, scale: Double,
        glu: GLUParameters = .swiglu, bias: [Float]? = nil
    ) -> [Double] {
        let wrows = epilogue == .swiglu ? 2 * n : n
        let base = e * wrows * k
        func dot(_ col: Int) -> Double {
            var acc = 0.0
            var i = a.startIndex
            for kk in 0..<k {
                acc += Double(a[i]) * Double(w[base + col * k + kk])
                i += 1
            }
            return acc + (bias.map { Double($0[e * wrows + col]) } ?? 0)
        }
        return (0..<n).map { col in
            if epilogue == .swiglu { return Reference.glu(dot(col), dot(n + col), glu) * scale }
            return activate(dot(col), epilogue) * scale
        }
    }

    /// Grouped matmul over expert-ordered rows: row r belongs to expert `rowExpert[r]`, reads
    /// row `sourceRow[r]` of `a [*, K]` (−1: a padding row, output zeros), and is scaled by
    /// `scale[r]`. Returns `[rows, N]`.
    public static func groupedMatmul(
        a: [Float], k: Int, sourceRow: [Int], rowExpert: [Int], w: [Float], n: Int, epilogue: Epilogue,
        scale: [Double], glu: GLUParameters = .swiglu, bias: [Float]? = nil
    ) -> [Double] {
        var out = [Double](repeating: 0, count: sourceRow.count * n)
        for (r, src) in sourceRow.enumerated() where src >= 0 {
            let row = linearRow(
                a[(src * k)..<((src + 1) * k)], w: w, expert: rowExpert[r], n: n, k: k, epilogue: epilogue,
                scale: scale[r], glu: glu, bias: bias)
            for c in 0..<n { out[r * n + c] = row[c] }
        }
        return out
    }
}
