#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How a token-choice router turns logits into expert choices and weights: the options real
/// models use (those of vLLM's fused MoE), so a model's routing ports line by line.
public struct RouterConfig: Hashable, Sendable {
    /// How router logits become scores.
    public enum Scoring: String, Sendable, Hashable {
        /// Softmax over the experts (Mixtral, Qwen-MoE, Switch).
        case softmax
        /// Element-wise sigmoid (DeepSeek-V3).
        case sigmoid
    }

    /// Which assignments an expert over capacity keeps.
    public enum DropPriority: String, Sendable, Hashable {
        /// Earlier tokens first (GShard, Switch).
        case tokenOrder
        /// Larger router weight first; equal weights by token order.
        case weight
    }

    /// Number of routed experts E (1...1024, `RouterConfig.maxExperts`).
    public var experts: Int
    /// Experts per token (1...E).
    public var k: Int
    /// Softmax over the experts, or an element-wise sigmoid.
    public var scoring: Scoring
    /// Divide the chosen k weights by their sum (+1e-20).
    public var renormalize: Bool
    /// Multiplies the final weights (DeepSeek-V3's routed_scaling_factor).
    public var routedScale: Float
    /// Experts are split into this many equal groups (1: no grouping). At most 64.
    public var expertGroups: Int
    /// Groups kept per token before the top-k inside them.
    public var topKGroups: Int
    /// When set, each expert keeps at most ceil(capacityFactor · T · k / E) assignments.
    public var capacityFactor: Double?
    /// Which assignments an expert over capacity keeps (used only with `capacityFactor`).
    public var dropPriority: DropPriority

    /// A router configuration; the defaults are a softmax top-2, renormalized, unscaled, one
    /// group, no capacity. `RouterConfig.validate(experts:)` (in Switchyard) checks the options
    /// against each other; the presets (`.mixtral()`, `.qwenMoE()`, `.deepSeekV3()`,
    /// `.switchTransformer()`) give real models' settings.
    public init(
        experts: Int, k: Int = 2, scoring: Scoring = .softmax, renormalize: Bool = true, routedScale: Float = 1,
        expertGroups: Int = 1, topKGroups: Int = 1, capacityFactor: Double? = nil,
        dropPriority: DropPriority = .tokenOrder
    ) {
        self.experts = experts
        self.k = k
        self.scoring = scoring
        self.renormalize = renormalize
        self.routedScale = routedScale
        self.expertGroups = expertGroups
        self.topKGroups = topKGroups
        self.capacityFactor = capacityFactor
        self.dropPriority = dropPriority
    }

    /// The per-expert capacity for `tokens` tokens, or nil without a capacity factor.
    /// An expert never holds more than the T·k assignments there are, so the capacity is clamped
    /// to T·k (a huge or infinite factor means no dropping; a NaN or negative one keeps nothing).
    public func capacity(tokens: Int) -> Int? {
        capacityFactor.map { factor in
            let (n, overflow) = max(0, tokens).multipliedReportingOverflow(by: max(0, k))
            let total = overflow ? Int.max : n
            let c = ((factor * Double(total)) / Double(max(1, experts))).rounded(.up)
            guard c > 0 else { return 0 }  // also NaN
            return c >= Double(total) ? total : Int(c)
        }
    }
}

/// The result of the stable counting sort by expert (see `Reference.permute`).
public struct PermutationResult: Sendable, Equatable {
    /// Kept assignments per expert [E].
    public var counts: [Int32]
    /// Block-padded exclusive scan of the counts [E + 1]; offsets[E] is the padded row total.
    public var offsets: [Int32]
    /// Expert of each block of `blockSize` rows [maxTiles]; -1 past the padded total.
    public var tileExpert: [Int32]
    /// Row of assignment (t, j) in expert order [T·k]; -1 if dropped.
    public var rowOf: [Int32]
    /// Assignment t·k + j of each row [maxRows]; T·k for padding rows.
    public var assignmentOf: [Int32]
    /// The weights with dropped assignments set to 0 [T·k].
    public var weights: [Float]
    /// Number of dropped assignments.
    public var dropped: Int32
}

/// Routing statistics (see `Reference.routingStats`).
public struct RoutingStatsResult: Sendable, Equatable {
    /// Kept assignments per expert `[E]` (after capacity dropping).
    public var tokensPerExpert: [Int32]
    /// Assignments dropped by capacity (or with an expert id out of range).
    public var dropped: Int32
    /// Mean router probability per expert P_e `[E]` (sigmoid scores normalized per token).
    public var meanProbability: [Double]
    /// Switch-Transformer load-balancing loss E · Σ_e f_e · P_e, f_e the fraction of the T·k
    /// assignments routed to e before dropping.
    public var balanceLoss: Double
    /// Router z-loss mean_t(logsumexp(logits_t)²).
    public var zLoss: Double
}

extension Reference {
    /// Worst-case padded rows: every expert's run padded up to a multiple of `blockSize`.
    public static func maxRows(assignments: Int, experts: Int, blockSize: Int) -> Int {
        // At most min(E, T·k) experts receive rows, and each pads at most blockSize − 1: at decode
        // (T·k below E) the grid, sized for this worst case, stays small.
        assignments + min(experts, assignments) * (blockSize - 1)
    }

    /// Worst-case number of row blocks.
    public static func maxTiles(assignments: Int, experts: Int, blockSize: Int) -> Int {
        (maxRows(assignments: assignments, experts: experts, blockSize: blockSize) + blockSize - 1) / blockSize
    }

    /// Router scores of one token: softmax over its logits, or the sigmoid of each.
    public static func scores(_ logits: ArraySlice<Float>, _ scoring: RouterConfig.Scoring) -> [Double] {
        let l = logits.map(Double.init)
        switch scoring {
        case .sigmoid:
            return l.map { 1 / (1 + exp(-$0)) }
        case .softmax:
            let m = l.max() ?? 0
            let e = l.map { exp($0 - m) }
            let s = e.reduce(0, +)
            return e.map { $0 / s }
        }
    }

    /// The values a token's experts are chosen by: the logits themselves without a bias (both
    /// scorings are monotonic, so the choice never depends on how exp rounds), else score + bias.
    public static func choiceValues(_ logits: ArraySlice<Float>, bias: [Float]?, scoring: RouterConfig.Scoring)
        -> [Double]
    {
        guard let bias else { return logits.map(Double.init) }
        return zip(scores(logits, scoring), bias).map { $0 + Double($1) }
    }

    /// Indices of the `n` largest of `values` (descending, ties to the lower index), skipping
    /// those `allowed` excludes.
    static func top(_ n: Int, _ values: [Double], allowed: (Int) -> Bool = { _ in true }) -> [Int] {
        let candidates = values.indices.filter(allowed)
        return Array(candidates.sorted { values[$0] > values[$1] || (values[$0] == values[$1] && $0 < $1) }.prefix(n))
    }

    /// Token-choice top-k gating of `logits [T, E]`. Returns the chosen experts `[T, k]` in
    /// descending choice order, their weights `[T, k]`, and whether any logit was NaN or infinite.
    ///
    /// Definition: scores = softmax or sigmoid of the logits; choice = scores + bias when a bias
    /// is given (DeepSeek-V3), else the logits. With groups, a group's value is its best choice
    /// value (or, with a bias, the sum of its best two); the best `topKGroups` groups stay, the
    /// others are masked to −inf; the top k of what stays are chosen, ties to the lower index.
    /// Weights are the unbiased scores of the chosen experts, divided by (sum + 1e-20) when
    /// `renormalize`, then multiplied by `routedScale`.
    public static func gating(logits: [Float], tokens: Int, bias: [Float]?, config c: RouterConfig)
        -> (ids: [Int32], weights: [Double], invalid: Bool)
    {
        let e = c.experts
        precondition(logits.count == tokens * e)
        var ids = [Int32]()
        var weights = [Double]()
        ids.reserveCapacity(tokens * c.k)
        weights.reserveCapacity(tokens * c.k)
        let invalid = logits.contains { !$0.isFinite }
        let groupSize = e / c.expertGroups
        for t in 0..<tokens {
            let row = logits[(t * e)..<((t + 1) * e)]
            let s = scores(row, c.scoring)
            let choice = choiceValues(row, bias: bias, scoring: c.scoring)
            var keepGroup = [Bool](repeating: true, count: c.expertGroups)
            if c.expertGroups > 1 {
                let groupValues = (0..<c.expertGroups).map { g -> Double in
                    let members = Array(choice[(g * groupSize)..<((g + 1) * groupSize)])
                    let best = top(bias == nil ? 1 : min(2, groupSize), members)
                    return best.reduce(0) { $0 + members[$1] }
                }
                let kept = Set(top(c.topKGroups, groupValues))
                keepGroup = (0..<c.expertGroups).map { kept.contains($0) }
            }
            let chosen = top(c.k, choice) { keepGroup[$0 / groupSize] }
            var w = chosen.map { s[$0] }
            if c.renormalize {
                let sum = w.reduce(0, +) + 1e-20
                w = w.map { $0 / sum }
            }
            for (expert, weight) in zip(chosen, w) {
                ids.append(Int32(expert))
                weights.append(weight * Double(c.routedScale))
            }
        }
        return (ids, weights, invalid)
    }

    /// Stable counting sort of the assignments `ids [T, k]` by expert, with capacity dropping.
    ///
    /// Each expert's kept assignments get consecutive rows in token order (then slot order);
    /// each expert's run starts at a multiple of `blockSize` (its padding rows hold the sentinel
    /// T·k). With a capacity C, an expert keeps its first C assignments in token order, or its C
    /// of largest weight (ties by token order) under `.weight` priority; the others are dropped:
    /// no row, weight 0. An id outside 0..<E takes no row either and counts as dropped.
    public static func permute(
        ids: [Int32], weights: [Float], tokens: Int, k: Int, experts: Int, blockSize: Int, capacity: Int?,
        priority: RouterConfig.DropPriority
    ) -> PermutationResult {
        let n = tokens * k
        precondition(ids.count == n && weights.count == n)
        var members = [[Int]](repeating: [], count: experts)
        var kept = [Bool](repeating: true, count: n)
        for a in 0..<n {
            if ids[a] >= 0 && Int(ids[a]) < experts { members[Int(ids[a])].append(a) } else { kept[a] = false }
        }
        if let capacity {
            for e in 0..<experts where members[e].count > capacity {
                let order: [Int]
                switch priority {
                case .tokenOrder:
                    order = members[e]
                case .weight:
                    order = members[e].sorted { weights[$0] > weights[$1] || (weights[$0] == weights[$1] && $0 < $1) }
                }
                for a in order.dropFirst(capacity) { kept[a] = false }
                members[e] = members[e].filter { kept[$0] }
            }
        }
        let maxRows = maxRows(assignments: n, experts: experts, blockSize: blockSize)
        var counts = [Int32](repeating: 0, count: experts)
        var offsets = [Int32](repeating: 0, count: experts + 1)
        var rowOf = [Int32](repeating: -1, count: n)
        var assignmentOf = [Int32](repeating: Int32(n), count: maxRows)
        for e in 0..<experts {
            counts[e] = Int32(members[e].count)
            for (rank, a) in members[e].enumerated() {
                let row = Int(offsets[e]) + rank
                rowOf[a] = Int32(row)
                assignmentOf[row] = Int32(a)
            }
            let padded = (members[e].count + blockSize - 1) / blockSize * blockSize
            offsets[e + 1] = offsets[e] + Int32(padded)
        }
        let tiles = maxTiles(assignments: n, experts: experts, blockSize: blockSize)
        var tileExpert = [Int32](repeating: -1, count: tiles)
        for e in 0..<experts {
            for tile in (Int(offsets[e]) / blockSize)..<(Int(offsets[e + 1]) / blockSize) { tileExpert[tile] = Int32(e) }
        }
        let dropped = kept.filter { !$0 }.count
        let keptWeights = (0..<n).map { kept[$0] ? weights[$0] : 0 }
        return PermutationResult(
            counts: counts, offsets: offsets, tileExpert: tileExpert, rowOf: rowOf, assignmentOf: assignmentOf,
            weights: keptWeights, dropped: Int32(dropped))
    }

    /// Dispatch: row r of the result is row `assignmentOf[r] / k` of `x [T, d]`, or zeros for
    /// padding rows (assignment T·k).
    public static func gather(x: [Float], tokens: Int, d: Int, k: Int, assignmentOf: [Int32]) -> [Float] {
        var out = [Float](repeating: 0, count: assignmentOf.count * d)
        for (r, a) in assignmentOf.enumerated() where Int(a) < tokens * k {
            let t = Int(a) / k
            for c in 0..<d { out[r * d + c] = x[t * d + c] }
        }
        return out
    }

    /// Combine: `y[t] = Σ_j weight[t, j] · ys[rowOf[t, j]] (+ residual[t])`, slots in order,
    /// dropped assignments (row −1) contributing nothing.
    public static func combine(
        ys: [Float], d: Int, rowOf: [Int32], weights: [Float], tokens: Int, k: Int, residual: [Float]?
    ) -> [Double] {
        var y = [Double](repeating: 0, count: tokens * d)
        for t in 0..<tokens {
            for c in 0..<d {
                var acc = 0.0
                for j in 0..<k where rowOf[t * k + j] >= 0 {
                    acc += Double(weights[t * k + j]) * Double(ys[Int(rowOf[t * k + j]) * d + c])
                }
                if let residual { acc += Double(residual[t * d + c]) }
                y[t * d + c] = acc
            }
        }
        return y
    }

    /// Expert-choice routing: scores `[T, E]` as in gating; each expert takes its `capacity`
    /// tokens of highest score (descending, ties to the lower token). Returns tokens `[E, C]` and
    /// their scores as weights `[E, C]`.
    public static func expertChoice(
        logits: [Float], tokens: Int, experts: Int, capacity: Int, scoring: RouterConfig.Scoring
    ) -> (tokens: [Int32], weights: [Double]) {
        var s = [Double](repeating: 0, count: tokens * experts)
        for t in 0..<tokens {
            let row = scores(logits[(t * experts)..<((t + 1) * experts)], scoring)
            for e in 0..<experts { s[t * experts + e] = row[e] }
        }
        var chosen = [Int32]()
        var weights = [Double]()
        for e in 0..<experts {
            let column = (0..<tokens).map { s[$0 * experts + e] }
            for t in top(capacity, column) {
                chosen.append(Int32(t))
                weights.append(column[t])
            }
        }
        return (chosen, weights)
    }

    /// Routing statistics: kept tokens per expert, dropped count, the mean router probability
    /// per expert P_e (softmax probabilities; sigmoid scores normalized per token), the
    /// Switch-Transformer balancing loss E · Σ_e f_e · P_e with f_e = assignments routed to e
    /// (before dropping) / (T · k), and the router z-loss mean_t(logsumexp(logits_t)²).
    public static func routingStats(
        logits: [Float], tokens: Int, experts: Int, k: Int, scoring: RouterConfig.Scoring, ids: [Int32],
        keptCounts: [Int32], dropped: Int32
    ) -> RoutingStatsResult {
        var p = [Double](repeating: 0, count: experts)
        var z = 0.0
        var routed = [Double](repeating: 0, count: experts)
        for id in ids { routed[Int(id)] += 1 }
        for t in 0..<tokens {
            let row = logits[(t * experts)..<((t + 1) * experts)]
            var s = scores(row, scoring)
            if scoring == .sigmoid {
                let sum = s.reduce(0, +)
                s = s.map { $0 / sum }
            }
            for e in 0..<experts { p[e] += s[e] }
            let m = Double(row.max() ?? 0)
            let lse = m + log(row.reduce(0.0) { $0 + exp(Double($1) - m) })
            z += lse * lse
        }
        let mean = tokens > 0 ? p.map { $0 / Double(tokens) } : p
        let n = Double(max(tokens * k, 1))
        let loss = Double(experts) * zip(routed, mean).reduce(0) { $0 + $1.0 / n * $1.1 }
        return RoutingStatsResult(
            tokensPerExpert: keptCounts, dropped: dropped, meanProbability: mean, balanceLoss: loss,
            zLoss: tokens > 0 ? z / Double(tokens) : 0)
    }
}
