#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The result of token merging (see `Reference.tokenMerge`).
public struct TokenMergeResult: Sendable, Equatable {
    /// `[B, L − r, d]`: each batch's unmerged A tokens in position order, then its B tokens in
    /// position order (a B token that received merges holds the size-weighted average).
    public var merged: [Double]
    /// `[B, L − r]`: the sizes of the output tokens (sums of the sizes merged into them).
    public var sizes: [Double]
    /// `[B, L]`: the output row (within its batch) that each input token went to.
    public var sourceMap: [Int32]
    /// A key value that is NaN or infinite (only checked when r > 0: keys are read only then).
    public var invalidKeys: Bool
    /// A size that is not positive and finite.
    public var invalidSizes: Bool
}

extension Reference {
    /// The most tokens a ToMe step may merge: ⌊(L − p) / 2⌋ with p = 1 when the class token is
    /// protected (ToMe's bound: every merged A token needs a B partner, and the class token in A
    /// never merges), 0 when that is negative.
    public static func maxMerges(tokens: Int, protectFirst: Bool) -> Int {
        max(0, (tokens - (protectFirst ? 1 : 0)) / 2)
    }

    /// Token merging by bipartite soft matching (ToMe, Bolya et al. 2023), per batch:
    /// - set A holds the tokens at even positions (A index i at position 2i), set B those at odd
    ///   positions (B index j at position 2j + 1);
    /// - each key is normalized (k / ‖k‖, a zero key stays zero) and the similarity of A token i
    ///   and B token j is the dot product of their normalized keys (cosine similarity);
    /// - each A token's partner is its most similar B token (ties to the lower j), its score that
    ///   similarity; with `protectFirst` the class token (A index 0) scores −∞;
    /// - the r A tokens with the highest scores merge (ties to the lower i) into their partners:
    ///   x_B ← (s_B·x_B + Σ s_i·x_i) / (s_B + Σ s_i) over the A tokens i merging into B (summed B
    ///   first, then in ascending i), and the sizes add (s_B + Σ s_i); a B token nothing merges
    ///   into is copied unchanged;
    /// - output order: the unmerged A tokens in position order, then every B token in position
    ///   order; `sourceMap` gives, for every input token, the output row it went to.
    /// `keys [B, L, dk]` are read only when r > 0; `sizes [B, L]` default to ones.
    public static func tokenMerge(
        x: [Float], keys: [Float], sizes: [Float]?, batches: Int, tokens l: Int, d: Int, dk: Int, r: Int,
        protectFirst: Bool
    ) -> TokenMergeResult {
        precondition(x.count == batches * l * d && (r == 0 || keys.count == batches * l * dk))
        precondition(r >= 0 && r <= maxMerges(tokens: l, protectFirst: protectFirst))
        let nA = (l + 1) / 2
        let nB = l / 2
        let m = l - r
        var result = TokenMergeResult(
            merged: [Double](repeating: 0, count: batches * m * d), sizes: [Double](repeating: 0, count: batches * m),
            sourceMap: [Int32](repeating: 0, count: batches * l), invalidKeys: false, invalidSizes: false)
        if let sizes, sizes.contains(where: { !($0 > 0 && $0.isFinite) }) { result.invalidSizes = true }
        if r > 0, keys.contains(where: { !$0.isFinite }) { result.invalidKeys = true }
        for b in 0..<batches {
            func size(_ p: Int) -> Double { sizes.map { Double($0[b * l + p]) } ?? 1 }
            // dst[i]: the B partner of A token i when it merges, else −1.
            var dst = [Int](repeating: -1, count: nA)
            if r > 0 {
                let normalized = (0..<l).map { p in normalize(keys[((b * l + p) * dk)..<((b * l + p + 1) * dk)]) }
                var score = [Double](repeating: -.infinity, count: nA)
                var partner = [Int](repeating: 0, count: nA)
                for i in 0..<nA {
                    for j in 0..<nB {
                        let s = dot(normalized[2 * i], normalized[2 * j + 1])
                        if s > score[i] || j == 0 {
                            score[i] = s
                            partner[i] = j
                        }
                    }
                    if protectFirst && i == 0 { score[i] = -.infinity }
                }
                let order = (0..<nA).sorted { score[$0] > score[$1] || (score[$0] == score[$1] && $0 < $1) }
                for i in order.prefix(r) { dst[i] = partner[i] }
            }
            let firstB = nA - r
            var next = 0
            for i in 0..<nA {
                let out = b * m + (dst[i] < 0 ? next : firstB + dst[i])
                result.sourceMap[b * l + 2 * i] = Int32(dst[i] < 0 ? next : firstB + dst[i])
                if dst[i] < 0 {
                    for c in 0..<d { result.merged[out * d + c] = Double(x[(b * l + 2 * i) * d + c]) }
                    result.sizes[out] = size(2 * i)
                    next += 1
                }
            }
            for j in 0..<nB {
                let p = 2 * j + 1
                let out = b * m + firstB + j
                result.sourceMap[b * l + p] = Int32(firstB + j)
                let sources = (0..<nA).filter { dst[$0] == j }
                var total = size(p)
                for i in sources { total += size(2 * i) }
                result.sizes[out] = total
                for c in 0..<d {
                    let own = Double(x[(b * l + p) * d + c])
                    if sources.isEmpty {
                        result.merged[out * d + c] = own
                        continue
                    }
                    var acc = size(p) * own
                    for i in sources { acc += size(2 * i) * Double(x[(b * l + 2 * i) * d + c]) }
                    result.merged[out * d + c] = acc / total
                }
            }
        }
        return result
    }

    /// `k / ‖k‖` in Double; a zero key stays zero.
    static func normalize(_ k: ArraySlice<Float>) -> [Double] {
        var sum = 0.0
        for v in k { sum += Double(v) * Double(v) }
        let norm = sum.squareRoot()
        return k.map { norm > 0 ? Double($0) / norm : 0 }
    }

    static func dot(_ a: [Double], _ b: [Double]) -> Double {
        var acc = 0.0
        for i in a.indices { acc += a[i] * b[i] }
        return acc
    }

    /// The cosine similarity of every A token with every B token of one batch (`[nA, nB]`, the
    /// matrix `tokenMerge` matches on), for generators that keep inputs clear of near ties.
    public static func mergeSimilarities(keys: [Float], batch b: Int, tokens l: Int, dk: Int) -> [[Double]] {
        let normalized = (0..<l).map { p in normalize(keys[((b * l + p) * dk)..<((b * l + p + 1) * dk)]) }
        return (0..<(l + 1) / 2).map { i in (0..<l / 2).map { j in dot(normalized[2 * i], normalized[2 * j + 1]) } }
    }

    /// Token unmerging: `out[b, p, :] = y[b, sourceMap[b, p], :]` for `y [B, M, d]`, so every
    /// input token of a merge gets the row it went into. An entry outside `0..<M` gives a zero
    /// row and sets `invalid`. Stacked merges unmerge layer by layer in reverse order, or through
    /// the composed map `map1∘map2[b, p] = map2[b, map1[b, p]]` (itself an unmerge of `map2`).
    /// (Any element type: floats, or Int32 source maps being composed.)
    public static func tokenUnmerge<T: Numeric>(y: [T], sourceMap: [Int32], batches: Int, rows m: Int, tokens l: Int, d: Int)
        -> (values: [T], invalid: Bool)
    {
        precondition(y.count == batches * m * d && sourceMap.count == batches * l)
        var out = [T](repeating: 0, count: batches * l * d)
        var invalid = false
        for b in 0..<batches {
            for p in 0..<l {
                let s = Int(sourceMap[b * l + p])
                guard s >= 0 && s < m else {
                    invalid = true
                    continue
                }
                for c in 0..<d { out[(b * l + p) * d + c] = y[(b * m + s) * d + c] }
            }
        }
        return (out, invalid)
    }
}
