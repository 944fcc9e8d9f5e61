import SwitchyardReference

/// The output of one token-merging step (see `TokenMerge`). Every tensor is guarded by `flags`:
/// reading one throws `SwitchyardError.invalidValues` if a key was NaN or infinite or a size not
/// positive and finite.
public struct MergedTokens: Sendable {
    /// `[B, L − r, d]` (x's dtype): per batch, the unmerged A tokens in position order, then
    /// every B token in position order.
    public let x: Tensor
    /// `[B, L − r]` f32: how many original tokens (summed sizes) each output token stands for.
    /// Pass it to the next layer's merge so merges compose.
    public let sizes: Tensor
    /// `[B, L]` i32: for every input token, the output row (within its batch) it went to.
    public let sourceMap: Tensor
    /// Device flags in the shared layout (`ComputeBackend.check(flags:)`).
    public let flags: Tensor

    init(x: Tensor, sizes: Tensor, sourceMap: Tensor, flags: Tensor) {
        self.x = x.guarded(by: [flags])
        self.sizes = sizes.guarded(by: [flags])
        self.sourceMap = sourceMap.guarded(by: [flags])
        self.flags = flags
    }
}

/// Token merging by bipartite soft matching (ToMe, Bolya et al. 2023) of `x [B, L, d]`, matched
/// on `keys [B, L, dk]` (x itself when nil), with token sizes `[B, L]` (f32, ones when nil).
/// The tokens at even positions form set A, those at odd positions set B; each A token's
/// partner is its most cosine-similar B token (ties to the lower index); the `r` A tokens with
/// the most similar partners (ties to the lower index; with `protectFirst` the class token at
/// position 0 scores −∞ and never merges) merge into their partners by size-weighted average,
/// summed in a fixed order (the partner first, then its A tokens in ascending position), and
/// the sizes add. Output, per batch: the unmerged A tokens in position order, then all B tokens
/// in position order (`[B, L − r, d]`), their sizes, and the source map `[B, L]` (the output row
/// each input token went to; `tokenUnmerge` copies rows back through it). Merges compose: feed
/// the output and its sizes to the next merge, then unmerge layer by layer in reverse order, or
/// once through the composed map (`TokenUnmerge`). `Reference.tokenMerge` is the definition.
///
/// r = 0 only reorders (the keys are not read). Limits: L ≤ 65,536, r ≤ ⌊(L − p)/2⌋ (p = 1
/// when the class token is protected), dk ≤ 4096 when r > 0 (ToMe matches on the attention
/// keys' head mean; pass such a key for wider tokens).
public struct TokenMerge: Hashable, Sendable {
    public var batches: Int
    public var tokens: Int
    public var dim: Int
    public var keyDim: Int
    public var r: Int
    public var protectFirst: Bool
    public var dtype: DType
    /// The keys' storage type, nil when the keys are x.
    public var keyDType: DType?
    public var hasSizes: Bool

    public static let maxTokens = 65536
    public static let maxKeyDim = 4096

    public init(
        batches: Int, tokens: Int, dim: Int, keyDim: Int? = nil, r: Int, protectFirst: Bool, dtype: DType,
        keyDType: DType? = nil, hasSizes: Bool = false
    ) {
        self.batches = batches
        self.tokens = tokens
        self.dim = dim
        self.keyDim = keyDim ?? dim
        self.r = r
        self.protectFirst = protectFirst
        self.dtype = dtype
        self.keyDType = keyDType
        self.hasSizes = hasSizes
    }

    init(validating x: Tensor, keys: Tensor?, sizes: Tensor?, r: Int, protectFirst: Bool) throws {
        let s = try x.expectRank(3, "tokenMerge x", "[batches, tokens, d]")
        try x.expectDType(DType.floatingPoint, "tokenMerge x")
        _ = try Tensor.checkedCount(s, dtype: x.dtype, "tokenMerge x")
        let (b, l, d) = (s[0], s[1], s[2])
        guard l <= Self.maxTokens else {
            throw SwitchyardError.shape(
                argument: "tokenMerge x", expected: "[batches, tokens ≤ \(Self.maxTokens), d]", actual: s)
        }
        let (rows, overflow) = b.multipliedReportingOverflow(by: l)
        guard !overflow, rows < Int(Int32.max) else {
            throw SwitchyardError.shape(argument: "tokenMerge x", expected: "batches × tokens below 2³¹", actual: s)
        }
        var dk = d
        if let keys {
            let ks = try keys.expectRank(3, "tokenMerge keys", "[\(b), \(l), dk]")
            try keys.expectDType(DType.floatingPoint, "tokenMerge keys")
            guard ks[0] == b, ks[1] == l else {
                throw SwitchyardError.shape(argument: "tokenMerge keys", expected: "[\(b), \(l), dk]", actual: ks)
            }
            _ = try Tensor.checkedCount(ks, dtype: keys.dtype, "tokenMerge keys")
            dk = ks[2]
        }
        if let sizes {
            guard sizes.shape == [b, l] else {
                throw SwitchyardError.shape(argument: "tokenMerge sizes", expected: "[\(b), \(l)] f32", actual: sizes.shape)
            }
            try sizes.expectDType([.f32], "tokenMerge sizes")
        }
        let most = Reference.maxMerges(tokens: l, protectFirst: protectFirst)
        guard (0...most).contains(r) else {
            throw SwitchyardError.outOfRange(
                argument: "tokenMerge r", value: r,
                range: "0...\(most) (⌊(L − \(protectFirst ? 1 : 0)) / 2⌋ for L = \(l)\(protectFirst ? ", class token protected" : ""))")
        }
        if r > 0 && dk > Self.maxKeyDim {
            throw SwitchyardError.shape(
                argument: keys == nil ? "tokenMerge keys (x itself)" : "tokenMerge keys",
                expected: "[\(b), \(l), dk ≤ \(Self.maxKeyDim)] (pass narrower keys, e.g. the attention keys' head mean)",
                actual: keys?.shape ?? s)
        }
        self.init(
            batches: b, tokens: l, dim: d, keyDim: dk, r: r, protectFirst: protectFirst, dtype: x.dtype,
            keyDType: keys?.dtype, hasSizes: sizes != nil)
    }

    /// Tokens in set A (even positions) and set B (odd positions).
    public var setA: Int { (tokens + 1) / 2 }
    public var setB: Int { tokens / 2 }
    /// Output tokens per batch.
    public var outputTokens: Int { tokens - r }

    /// Key normalization and the A × B similarities (when r > 0), and the merged averages.
    public var flops: Double {
        let b = Double(batches)
        let match = r > 0 ? b * (3 * Double(tokens * keyDim) + 2 * Double(setA) * Double(setB) * Double(keyDim)) : 0
        return match + 3 * b * Double(r * dim)
    }

    /// x, the keys when separate and read (r > 0) and the sizes read once; the merged tokens,
    /// their sizes and the source map written.
    public var bytes: Double {
        let b = Double(batches)
        var read = b * Double(tokens * dim * dtype.size)
        if r > 0, let keyDType { read += b * Double(tokens * keyDim * keyDType.size) }
        if hasSizes { read += b * Double(tokens * 4) }
        let written = b * Double(outputTokens * (dim * dtype.size + 4) + tokens * 4)
        return read + written
    }
}

/// Token unmerging: `out[b, p, :] = y[b, sourceMap[b, p], :]` for `y [B, M, d]` (any dtype,
/// i32 included) and a source map `[B, L]` (i32) from `tokenMerge`: every input token of the
/// merge gets a copy of the row it went into (`[B, L, d]`, y's dtype). An entry outside
/// `0..<M` is flagged on the device (reading the output throws) and gives a zero row. Maps
/// compose: unmerging `map2` (as `[B, M1, 1]` i32) through `map1` gives the map from the first
/// layer's input to the second layer's output.
public struct TokenUnmerge: Hashable, Sendable {
    public var batches: Int
    /// Rows per batch of y (the merged tokens).
    public var rows: Int
    /// Tokens per batch of the output (the source map's width).
    public var tokens: Int
    public var dim: Int
    public var dtype: DType

    public init(batches: Int, rows: Int, tokens: Int, dim: Int, dtype: DType) {
        self.batches = batches
        self.rows = rows
        self.tokens = tokens
        self.dim = dim
        self.dtype = dtype
    }

    init(validating y: Tensor, sourceMap: Tensor) throws {
        let s = try y.expectRank(3, "tokenUnmerge y", "[batches, rows, d]")
        _ = try Tensor.checkedCount(s, dtype: y.dtype, "tokenUnmerge y")
        let ms = try sourceMap.expectRank(2, "tokenUnmerge sourceMap", "[\(s[0]), tokens] i32")
        try sourceMap.expectDType([.i32], "tokenUnmerge sourceMap")
        guard ms[0] == s[0] else {
            throw SwitchyardError.shape(argument: "tokenUnmerge sourceMap", expected: "[\(s[0]), tokens] i32", actual: ms)
        }
        _ = try Tensor.checkedCount([ms[0], ms[1], s[2]], dtype: y.dtype, "tokenUnmerge output")
        let (rows, overflow) = ms[0].multipliedReportingOverflow(by: max(ms[1], s[1]))
        guard !overflow, rows < Int(Int32.max) else {
            throw SwitchyardError.shape(
                argument: "tokenUnmerge sourceMap", expected: "batches × tokens below 2³¹", actual: ms)
        }
        self.init(batches: s[0], rows: s[1], tokens: ms[1], dim: s[2], dtype: y.dtype)
    }

    public var flops: Double { 0 }
    /// The map read, and every output row read from y and written.
    public var bytes: Double { Double(batches * tokens) * Double(4 + 2 * dim * dtype.size) }
}

extension ReferenceBackend {
    public func tokenMerge(_ x: Tensor, keys: Tensor?, sizes: Tensor?, r: Int, protectFirst: Bool) throws -> MergedTokens {
        let op = try TokenMerge(validating: x, keys: keys, sizes: sizes, r: r, protectFirst: protectFirst)
        let xv = try hostFloats(x, "tokenMerge x")
        let kv = r == 0 ? [] : try keys.map { try hostFloats($0, "tokenMerge keys") } ?? xv
        let result = Reference.tokenMerge(
            x: xv, keys: kv, sizes: try sizes.map { try hostFloats($0, "tokenMerge sizes") }, batches: op.batches,
            tokens: op.tokens, d: op.dim, dk: op.keyDim, r: r, protectFirst: protectFirst)
        let m = op.outputTokens
        let inputGuards = x.guards + (keys?.guards ?? []) + (sizes?.guards ?? [])
        return MergedTokens(
            x: output(result.merged, shape: [op.batches, m, op.dim], dtype: x.dtype).guarded(by: inputGuards),
            sizes: output(result.sizes, shape: [op.batches, m], dtype: .f32).guarded(by: inputGuards),
            sourceMap: Tensor(shape: [op.batches, op.tokens], dtype: .i32, storage: .host(.ints(result.sourceMap)))
                .guarded(by: inputGuards),
            flags: Tensor(
                shape: [5], dtype: .i32,
                storage: .host(.ints([0, 0, result.invalidKeys ? 1 : 0, result.invalidSizes ? 1 : 0, 0]))))
    }

    public func tokenUnmerge(_ y: Tensor, sourceMap: Tensor) throws -> Tensor {
        let op = try TokenUnmerge(validating: y, sourceMap: sourceMap)
        let map = try hostInts(sourceMap, "tokenUnmerge sourceMap")
        let shape = [op.batches, op.tokens, op.dim]
        let values: Tensor.HostValues
        let invalid: Bool
        switch try host(y, "tokenUnmerge y") {
        case .floats(let v):
            let r = Reference.tokenUnmerge(
                y: v, sourceMap: map, batches: op.batches, rows: op.rows, tokens: op.tokens, d: op.dim)
            (values, invalid) = (.floats(r.values), r.invalid)
        case .ints(let v):
            let r = Reference.tokenUnmerge(
                y: v, sourceMap: map, batches: op.batches, rows: op.rows, tokens: op.tokens, d: op.dim)
            (values, invalid) = (.ints(r.values), r.invalid)
        case .bytes:
            throw SwitchyardError.dtype(argument: "tokenUnmerge y", expected: "f32, f16, bf16 or i32", actual: y.dtype)
        }
        let flags = Tensor(shape: [5], dtype: .i32, storage: .host(.ints([0, 0, 0, 0, invalid ? 1 : 0])))
        return Tensor(shape: shape, dtype: y.dtype, storage: .host(values)).guarded(by: [flags] + y.guards + sourceMap.guards)
    }
}
