import Switchyard

/// Which rank holds each routed expert, and at which local index: contiguous blocks by default,
/// or gathered from every rank's vLLM-style `expert_map` (`[E]`, the local index of each expert
/// held here, −1 for the others).
public struct ExpertPlacement: Sendable, Hashable {
    public let experts: Int
    public let ranks: Int
    /// Rank holding each expert `[E]`.
    public let rankOf: [Int]
    /// Index of each expert among its rank's local experts `[E]`.
    public let localIndex: [Int]

    /// Checks that every expert is on exactly one rank and each rank's local indices are
    /// 0..<n without gaps.
    public init(rankOf: [Int], localIndex: [Int], ranks: Int) throws {
        guard ranks >= 1 else { throw SwitchyardError.outOfRange(argument: "ranks", value: ranks, range: "1...") }
        guard rankOf.count == localIndex.count, !rankOf.isEmpty else {
            throw SwitchyardError.shape(
                argument: "expert placement", expected: "[\(rankOf.count)] ranks and local indices", actual: [localIndex.count])
        }
        var seen = [Set<Int>](repeating: [], count: ranks)
        for (e, r) in rankOf.enumerated() {
            guard (0..<ranks).contains(r) else {
                throw SwitchyardError.outOfRange(argument: "rank of expert \(e)", value: r, range: "0..<\(ranks)")
            }
            guard localIndex[e] >= 0, seen[r].insert(localIndex[e]).inserted else {
                throw SwitchyardError.outOfRange(
                    argument: "expertMap of rank \(r), expert \(e)", value: localIndex[e],
                    range: "0..<(experts on rank \(r)), each local index once")
            }
        }
        for r in 0..<ranks where seen[r] != Set(0..<seen[r].count) {
            throw SwitchyardError.unsupported(
                "expertMap of rank \(r): local indices \(seen[r].sorted()) are not 0..<\(seen[r].count)")
        }
        experts = rankOf.count
        self.ranks = ranks
        self.rankOf = rankOf
        self.localIndex = localIndex
    }

    /// Contiguous blocks: rank r holds experts ⌊r·E/P⌋ ..< ⌊(r+1)·E/P⌋ (sizes differ by one at
    /// most; a rank holds none when P > E).
    public static func contiguous(experts: Int, ranks: Int) throws -> ExpertPlacement {
        guard experts >= 1 else { throw SwitchyardError.outOfRange(argument: "experts", value: experts, range: "1...") }
        guard ranks >= 1 else { throw SwitchyardError.outOfRange(argument: "ranks", value: ranks, range: "1...") }
        var rankOf = [Int]()
        var local = [Int]()
        for r in 0..<ranks {
            let lo = r * experts / ranks
            let hi = (r + 1) * experts / ranks
            for (i, _) in (lo..<hi).enumerated() {
                rankOf.append(r)
                local.append(i)
            }
        }
        return try ExpertPlacement(rankOf: rankOf, localIndex: local, ranks: ranks)
    }

    /// The placement described by every rank's `expert_map` (`maps[r][e]`: local index of
    /// expert e on rank r, or −1), as vLLM keeps it per rank.
    public init(expertMaps maps: [[Int]]) throws {
        guard let first = maps.first, !first.isEmpty else {
            throw SwitchyardError.shape(argument: "expertMap", expected: "[experts] on each rank", actual: [])
        }
        let e = first.count
        var rankOf = [Int](repeating: -1, count: e)
        var local = [Int](repeating: -1, count: e)
        for (r, map) in maps.enumerated() {
            guard map.count == e else {
                throw SwitchyardError.shape(argument: "expertMap of rank \(r)", expected: "[\(e)]", actual: [map.count])
            }
            for (expert, index) in map.enumerated() where index != -1 {
                guard index >= 0 else {
                    throw SwitchyardError.outOfRange(
                        argument: "expertMap of rank \(r), expert \(expert)", value: index, range: "-1 or 0...")
                }
                guard rankOf[expert] == -1 else {
                    throw SwitchyardError.unsupported(
                        "expertMap: expert \(expert) is held by ranks \(rankOf[expert]) and \(r); each expert must be on one rank")
                }
                rankOf[expert] = r
                local[expert] = index
            }
        }
        if let missing = rankOf.firstIndex(of: -1) {
            throw SwitchyardError.unsupported("expertMap: expert \(missing) is on no rank (−1 in every rank's map)")
        }
        try self.init(rankOf: rankOf, localIndex: local, ranks: maps.count)
    }

    /// Global ids of rank r's experts, in local index order.
    public func experts(onRank r: Int) -> [Int] {
        (0..<experts).filter { rankOf[$0] == r }.sorted { localIndex[$0] < localIndex[$1] }
    }

    /// Rank r's vLLM `expert_map`: `[E]`, local index or −1.
    public func expertMap(rank r: Int) -> [Int] {
        (0..<experts).map { rankOf[$0] == r ? localIndex[$0] : -1 }
    }

    /// First renumbered id of each rank `[P + 1]`: experts renumbered rank-major (rank 0's in
    /// local order, then rank 1's...), so sorting by the new id sorts by destination rank.
    var rankStart: [Int] {
        var start = [0]
        for r in 0..<ranks { start.append(start[r] + rankOf.filter { $0 == r }.count) }
        return start
    }

    /// Renumbered id of each expert `[E]` (see `rankStart`).
    var renumbered: [Int] {
        let start = rankStart
        return (0..<experts).map { start[rankOf[$0]] + localIndex[$0] }
    }
}
