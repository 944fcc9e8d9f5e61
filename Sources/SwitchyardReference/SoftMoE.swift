#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension Reference {
    /// Soft MoE dispatch (Puigcerver et al. 2023), per sequence group b of `x [B, T, d]` with slot
    /// parameters `phiT [n, d]` (Φᵀ: one row of d weights per slot, n = E·S slots, expert e owning
    /// slots e·S ..< (e+1)·S):
    /// - logits `[T, n]` = X · Φ;
    /// - dispatch weights D = softmax over the tokens (each slot's column);
    /// - combine weights C = softmax over the slots (each token's row), returned `[B, T, n]`;
    /// - slots X̃ = Dᵀ · X, returned `[B, n, d]`.
    /// Every softmax subtracts its maximum (NaN-ignoring, as `softmax`). T = 0 gives zero slots.
    public static func softMoEDispatch(
        x: [Float], phiT: [Float], batches: Int, tokens t: Int, d: Int, slots n: Int
    ) -> (slots: [Double], combineWeights: [Double]) {
        precondition(x.count == batches * t * d && phiT.count == n * d)
        var slots = [Double](repeating: 0, count: batches * n * d)
        var combine = [Double](repeating: 0, count: batches * t * n)
        for b in 0..<batches {
            var logits = [Double](repeating: 0, count: t * n)
            for tok in 0..<t {
                for s in 0..<n {
                    var acc = 0.0
                    for c in 0..<d { acc += Double(x[(b * t + tok) * d + c]) * Double(phiT[s * d + c]) }
                    logits[tok * n + s] = acc
                }
            }
            // C: softmax over slots, per token.
            for tok in 0..<t {
                var m = -Double.infinity
                for s in 0..<n where !logits[tok * n + s].isNaN { m = max(m, logits[tok * n + s]) }
                var sum = 0.0
                for s in 0..<n { sum += exp(logits[tok * n + s] - m) }
                for s in 0..<n { combine[(b * t + tok) * n + s] = exp(logits[tok * n + s] - m) / sum }
            }
            // D: softmax over tokens, per slot; X̃ = Dᵀ X.
            for s in 0..<n {
                var m = -Double.infinity
                for tok in 0..<t where !logits[tok * n + s].isNaN { m = max(m, logits[tok * n + s]) }
                var sum = 0.0
                for tok in 0..<t { sum += exp(logits[tok * n + s] - m) }
                for tok in 0..<t {
                    let w = exp(logits[tok * n + s] - m) / sum
                    for c in 0..<d { slots[(b * n + s) * d + c] += w * Double(x[(b * t + tok) * d + c]) }
                }
            }
        }
        return (slots, combine)
    }

    /// Soft MoE combine: `y[b, t, :] = Σ_s C[b, t, s] · Ỹ[b, s, :]` with `C [B, T, n]` and the
    /// expert outputs of slot (b, s) in row `row(b·n + s)` of `ys [*, d]` (the identity when
    /// `rowOf` is nil, else `rowOf[b·n + s]`; a row outside `ys` counts as zero).
    public static func softMoECombine(
        ys: [Float], rows: Int, rowOf: [Int32]?, weights: [Float], batches: Int, tokens t: Int, d: Int, slots n: Int
    ) -> [Double] {
        precondition(ys.count == rows * d && weights.count == batches * t * n)
        var y = [Double](repeating: 0, count: batches * t * d)
        for b in 0..<batches {
            for tok in 0..<t {
                for s in 0..<n {
                    let r = rowOf.map { Int($0[b * n + s]) } ?? (b * n + s)
                    guard r >= 0 && r < rows else { continue }
                    let w = Double(weights[(b * t + tok) * n + s])
                    for c in 0..<d { y[(b * t + tok) * d + c] += w * Double(ys[r * d + c]) }
                }
            }
        }
        return y
    }
}
