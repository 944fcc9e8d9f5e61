extension Reference {
    /// Scatters a block's output back into the residual stream (mixture-of-depths):
    /// `out = x` everywhere, and `out[b, i] = x[b, i] + g · f[b, j]` where `i = indices[b, j]`,
    /// with `g = weights[b, j]` (1 without weights). `x [batch, length, width]`,
    /// `f [batch, slots, width]`, indices and weights `[batch, slots]`; empty slots (−1) and
    /// invalid indices add nothing.
    public static func scatterTokens(
        x: [Float], f: [Float], indices: [Int32], weights: [Float]?, batch: Int, length: Int, slots: Int, width: Int
    ) -> [Double] {
        precondition(x.count == batch * length * width && f.count == batch * slots * width)
        var out = x.map(Double.init)
        for b in 0..<batch {
            for j in 0..<slots {
                guard let p = tokenPosition(indices, b, j, slots: slots, length: length, rows: slots) else { continue }
                let g = weights.map { Double($0[b * slots + j]) } ?? 1
                for c in 0..<width {
                    out[(b * length + p) * width + c] =
                        Double(x[(b * length + p) * width + c]) + g * Double(f[(b * slots + j) * width + c])
                }
            }
        }
        return out
    }
}
