import Foundation
import Switchyard

/// An MoE block with its routed experts sharded over MPI ranks (expert parallelism). Every rank
/// holds the router and the shared experts whole and `placement.experts(onRank:)` of the routed
/// experts, and runs `forward` on its own tokens; the ranks' forwards are collective (each rank
/// calls it once per step, with any number of tokens, zero included).
///
/// A forward, on each rank:
/// 1. router, gating (as `MoELayer`), then a stable counting sort of the (token, slot)
///    assignments by destination rank (the `permute` op, no capacity, block size 1, experts
///    renumbered rank-major), which counts the rows for each rank on the device, and the
///    gather of those rows;
/// 2. `MPI_Alltoall` of the row counts, `MPI_Alltoallv` of the rows (payload in the activations'
///    dtype, f32/f16/bf16 bits unchanged) and of their metadata (local expert, routing weight,
///    origin: the global assignment index); a rank's rows for its own experts stay on the device;
/// 3. on the rows received, in global token order, the local experts' routing (capacity per
///    expert computed from the global token count, the same drop priority), grouped gate|up
///    with SwiGLU and grouped down: the same kernels as `MoELayer`, whose per-row results do not
///    depend on the other rows of a tile (batch invariance), then an un-permute back to the
///    received order (`combine` with unit weights, exact);
/// 4. `MPI_Alltoallv` of the results back to their origins, then the same weighted `combine`
///    in k-slot order as `MoELayer` (dropped assignments come back as zero rows, which add
///    nothing), plus the shared experts.
/// So each rank's output rows are bitwise equal to those of a single-process `MoELayer` over
/// all ranks' tokens concatenated in rank order.
///
/// Errors: a rank whose local work throws does not leave the others waiting in a collective:
/// each phase ends with an agreement (`MPI_Allgather` of a status), after which every rank
/// throws: the failing rank its own error, the others `ExpertParallelError.peerFailed`.
public final class ExpertParallelMoELayer: @unchecked Sendable {
    public let backend: OpenCLBackend
    public let config: MoEConfig
    public let communicator: Communicator
    public let placement: ExpertPlacement
    /// Global ids of this rank's experts, in local order.
    public let localExperts: [Int]
    /// Rows per block of the local experts' permutation (the matmul's row tile), as `MoELayer`.
    public let blockSize: Int
    public let packSeconds: Double
    let router: ExpertWeights
    let bias: Tensor?
    let gateUp: ExpertWeights?
    let down: ExpertWeights?
    let sharedGateUp: ExpertWeights?
    let sharedDown: ExpertWeights?
    let sharedGate: ExpertWeights?
    /// Renumbered (rank-major) id of each expert, and each rank's first renumbered id.
    let renumbered: [Int32]
    let rankStart: [Int]
    let identityRenumbering: Bool

    /// `weights` holds the router, bias and shared experts whole, and the routed experts of this
    /// rank only: gate|up `[localExperts, 2·ffn, hidden]` and down `[localExperts, hidden, ffn]`
    /// in local index order (see `localWeights(from:)` to cut them from whole weights).
    /// `expertMap` is this rank's vLLM `expert_map` (`[E]`, local index or −1); nil on every
    /// rank: contiguous blocks. Collective: every rank constructs its layer together.
    public init(
        backend: OpenCLBackend, config c: MoEConfig, communicator: Communicator, weights w: MoEWeights,
        expertMap: [Int]? = nil, pack: Bool = true
    ) throws {
        self.backend = backend
        self.config = c
        self.communicator = communicator
        let e = c.experts
        // Every rank's config, then its map (or its contiguous block), gathered so that all ranks
        // see the same placement and refuse the same way. The first gather has a fixed size, so
        // ranks with different configs meet in it and all refuse.
        let summary: [Int32] = [c.experts, c.router.k, c.hidden, c.ffn, c.sharedFFN].map { Int32(clamping: $0) }
        var mine = [Int32]()
        let _ = try Self.status(communicator, "layer config", extras: { summary }) {
            try c.router.validate(experts: e)
            if let expertMap {
                guard expertMap.count == e else {
                    throw SwitchyardError.shape(argument: "expertMap", expected: "[\(e)]", actual: [expertMap.count])
                }
                for (expert, index) in expertMap.enumerated() where index < -1 || index > e {
                    throw SwitchyardError.outOfRange(argument: "expertMap[\(expert)]", value: index, range: "-1 or 0..<\(e)")
                }
                mine = expertMap.map { Int32($0) }
            } else {
                mine = try ExpertPlacement.contiguous(experts: e, ranks: communicator.size)
                    .expertMap(rank: communicator.rank).map { Int32($0) }
            }
        }.extras.enumerated().map { r, theirs in
            guard theirs == summary else {
                throw SwitchyardError.unsupported(
                    "rank \(r) has another layer config (experts, k, hidden, ffn, shared ffn) = \(theirs) than rank "
                        + "\(communicator.rank) \(summary)")
            }
        }
        let gathered = try communicator.allGather(mine)
        let maps = (0..<communicator.size).map { r in gathered[(r * e)..<((r + 1) * e)].map { Int($0) } }
        let placement = try ExpertPlacement(expertMaps: maps)
        self.placement = placement
        localExperts = placement.experts(onRank: communicator.rank)
        renumbered = placement.renumbered.map { Int32($0) }
        rankStart = placement.rankStart
        identityRenumbering = placement.renumbered == Array(0..<e)
        blockSize = backend.preferredBlockSize

        // Weights: checked and prepared on each rank, then agreed on.
        let local = localExperts.count
        var prepared: (ExpertWeights, Tensor?, ExpertWeights?, ExpertWeights?, ExpertWeights?, ExpertWeights?,
                       ExpertWeights?)?
        let start = Date()
        try Self.agree(communicator, "layer weights") {
            let h = c.hidden
            func expect(_ t: Tensor?, _ shape: [Int], _ name: String) throws {
                guard let t else { throw SwitchyardError.unsupported("\(name) is required by this config") }
                guard t.shape == shape else { throw SwitchyardError.shape(argument: name, expected: "\(shape)", actual: t.shape) }
            }
            if c.routerLinearBias || c.expertBias || c.glu != .swiglu || w.gateUpScales != nil {
                throw SwitchyardError.unsupported(
                    "expert-parallel layers run SwiGLU experts without biases (not gpt-oss's biased, clamped experts or MXFP4 "
                        + "as stored): use MoELayer")
            }
            try expect(w.router, [e, h], "router weight")
            try expect(w.gateUp, [local, 2 * c.ffn, h], "expert gate|up weight (this rank's \(local) experts)")
            try expect(w.down, [local, h, c.ffn], "expert down weight (this rank's \(local) experts)")
            if c.routerBias { try expect(w.bias, [e], "router correction bias") }
            if c.sharedFFN > 0 {
                try expect(w.sharedGateUp, [2 * c.sharedFFN, h], "shared expert gate|up weight")
                try expect(w.sharedDown, [h, c.sharedFFN], "shared expert down weight")
                if c.sharedGate { try expect(w.sharedGate, [1, h], "shared expert gate") }
            }
            let router = try backend.prepareWeights(try w.router.reshaped([1, e, h]), swiglu: false, pack: pack)
            let gateUp = local > 0 ? try backend.prepareWeights(w.gateUp, swiglu: true, pack: pack) : nil
            let down = local > 0 ? try backend.prepareWeights(w.down, swiglu: false, pack: pack) : nil
            var sgu: ExpertWeights?
            var sd: ExpertWeights?
            var sg: ExpertWeights?
            if c.sharedFFN > 0 {
                sgu = try backend.prepareWeights(try w.sharedGateUp!.reshaped([1, 2 * c.sharedFFN, h]), swiglu: true, pack: pack)
                sd = try backend.prepareWeights(try w.sharedDown!.reshaped([1, h, c.sharedFFN]), swiglu: false, pack: pack)
                if c.sharedGate {
                    sg = try backend.prepareWeights(try w.sharedGate!.reshaped([1, 1, h]), swiglu: false, pack: pack)
                }
            }
            try backend.synchronize()
            prepared = (router, c.routerBias ? w.bias : nil, gateUp, down, sgu, sd, sg)
        }
        guard let prepared else { throw SwitchyardError.unsupported("layer weights were not prepared") }
        (router, bias, gateUp, down, sharedGateUp, sharedDown, sharedGate) = prepared
        packSeconds = Date().timeIntervalSince(start)
    }

    /// This rank's routed experts cut from whole weights (`gateUp [E, 2·ffn, hidden]`,
    /// `down [E, hidden, ffn]`), in local order; router, bias and shared experts kept. Reads the
    /// expert weights to the host once (16-bit types round-trip exactly).
    public static func localWeights(
        from w: MoEWeights, experts: [Int], backend: OpenCLBackend
    ) throws -> MoEWeights {
        func cut(_ t: Tensor, _ name: String) throws -> Tensor {
            guard t.shape.count == 3 else {
                throw SwitchyardError.shape(argument: name, expected: "[experts, rows, cols]", actual: t.shape)
            }
            let per = t.shape[1] * t.shape[2]
            for e in experts where !(0..<t.shape[0]).contains(e) {
                throw SwitchyardError.outOfRange(argument: "\(name) expert", value: e, range: "0..<\(t.shape[0])")
            }
            let all = try backend.floats(t)
            var out = [Float]()
            out.reserveCapacity(experts.count * per)
            for e in experts { out += all[(e * per)..<((e + 1) * per)] }
            return try backend.tensor(out, shape: [experts.count, t.shape[1], t.shape[2]], dtype: t.dtype)
        }
        var local = w
        local.gateUp = try cut(w.gateUp, "expert gate|up weight")
        local.down = try cut(w.down, "expert down weight")
        return local
    }

    /// Where one rank's time went in a forward (wall clock, seconds).
    public struct Timing: Sendable {
        /// Device work: router, gating, dispatch sort and gather; the local experts; the
        /// combine and shared experts (waited for only when `forward(_:synchronize:)` asks).
        public var compute: Double = 0
        /// Device↔host copies of the rows and their packing on the host.
        public var staging: Double = 0
        /// MPI calls (counts, rows out, rows back, agreements), including waiting for slower ranks.
        public var exchange: Double = 0
    }

    /// What this rank did in a forward.
    public struct Load: Sendable {
        /// This rank's tokens.
        public var tokens: Int
        /// All ranks' tokens.
        public var globalTokens: Int
        /// Assignments sent to each rank (this one included).
        public var sentRows: [Int]
        /// Assignments received from each rank, for this rank's experts.
        public var receivedRows: [Int]
        /// Of those, kept within capacity and run.
        public var keptRows: Int
        /// Bytes this rank sent to other ranks (rows, metadata and results; not to itself).
        public var bytesToOthers: Int
        /// Of those, the payload rows (out and back) alone.
        public var payloadBytesToOthers: Int
        /// The least a scheme could move for this rank's tokens: each token's row once to every
        /// other rank holding one of its experts, and one row (its experts' results summed
        /// there) back. (That sum on the remote rank changes the order of the combine, so it
        /// would not be bitwise equal to `MoELayer`; this layer sends one row per assignment.)
        public var minimumBytesToOthers: Int
    }

    public struct Output: Sendable {
        /// `[T, hidden]` f32, this rank's tokens: the block's output without the residual.
        public let y: Tensor
        public let load: Load
        public let timing: Timing
        /// Routing statistics over all ranks' tokens (when asked): global load per expert,
        /// drops, mean probabilities, auxiliary losses.
        public let stats: RoutingStats?
    }

    /// Runs the block on this rank's tokens `x [T, hidden]` (collective: every rank calls it,
    /// with the same dtype). With `synchronize`, waits for the final combine so `timing.compute`
    /// holds all of the device work; with `stats`, reduces the routing statistics over ranks.
    public func forward(_ x: Tensor, synchronize: Bool = false, stats wantStats: Bool = false) throws -> Output {
        let comm = communicator
        let p = comm.size
        let c = config
        let k = c.router.k
        let h = c.hidden
        var timing = Timing()
        let clock = ContinuousClock()
        // Exclusive times: a timed block nested in another is subtracted from the outer one.
        var open: [Double] = []
        func timed<T>(_ field: WritableKeyPath<Timing, Double>, _ body: () throws -> T) rethrows -> T {
            let start = clock.now
            open.append(0)
            defer {
                let d = clock.now - start
                let seconds = Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
                timing[keyPath: field] += seconds - open.removeLast()
                if !open.isEmpty { open[open.count - 1] += seconds }
            }
            return try body()
        }

        // 1. Route this rank's tokens and sort their assignments by destination rank.
        var t = 0
        var dtype = DType.f32
        var dispatch: Routing?
        var gating: Gating?
        var sendBytes: [UInt8] = []
        // The rows in destination order, on the device: this rank's own block stays there.
        var dispatched: Tensor?
        var sendRows = [Int](repeating: 0, count: p)
        var assignmentOf: [Int32] = []
        var renumberedIds: [Int32] = []
        var weightBits: [UInt32] = []
        var meta = [Int32]()
        var minimum = 0
        var status = try timed(\.exchange) {
            try Self.status(comm, "routing", extras: { [Int32(clamping: t), Int32(DType.allCases.firstIndex(of: dtype) ?? 0)] }) {
                try timed(\.compute) {
                    let s = try x.shapeRank2("expert-parallel MoE input x", hidden: h)
                    t = s
                    dtype = x.dtype
                    guard dtype.isFloatingPoint else {
                        throw SwitchyardError.dtype(argument: "expert-parallel MoE input x", expected: "f32, f16 or bf16", actual: dtype)
                    }
                    let logits = try backend.groupedMatmul(x, weights: router, dtype: .f32)
                    let g = try backend.gating(logits, bias: bias, config: c.router)
                    gating = g
                    var ids = g.ids
                    if !identityRenumbering {
                        renumberedIds = try backend.ints(g.ids).map { $0 >= 0 && Int($0) < c.experts ? renumbered[Int($0)] : $0 }
                        ids = try backend.tensor(renumberedIds, shape: [t, k])
                    }
                    var noCapacity = c.router
                    noCapacity.capacityFactor = nil
                    let byRank = try Gating(
                        config: noCapacity, tokens: t, logits: logits, ids: ids, weights: g.weights, flags: g.flags)
                    let r = try backend.permute(byRank, blockSize: 1)
                    dispatch = r
                    let rows = try backend.gather(x, routing: r, dtype: dtype)
                    dispatched = rows
                    try backend.synchronize()
                    try timed(\.staging) {
                        let offsets = try backend.ints(r.offsets)
                        for q in 0..<p { sendRows[q] = Int(offsets[rankStart[q + 1]] - offsets[rankStart[q]]) }
                        guard sendRows.reduce(0, +) == t * k else {
                            throw SwitchyardError.invalidValues(
                                argument: "expert ids", detail: "\(t * k - sendRows.reduce(0, +)) assignments have no rank")
                        }
                        // Only the rows for other ranks go to the host.
                        let own = Self.block(sendRows, comm.rank)
                        sendBytes = try backend.bytes(rows, rows: 0..<own.lowerBound)
                            + backend.bytes(rows, rows: own.upperBound..<(t * k))
                        assignmentOf = try backend.ints(r.assignmentOf)
                        if identityRenumbering { renumberedIds = try backend.ints(g.ids) }
                        weightBits = try backend.floats(g.weights).map(\.bitPattern)
                    }
                    // Metadata of each sent row: local expert at the destination, routing weight
                    // bits, assignment index here (t·k + j; the destination adds this rank's
                    // token offset). And the least bytes any scheme could send for these tokens.
                    try timed(\.staging) {
                        let rowBytes = h * dtype.size
                        var rankOfId = [Int](repeating: 0, count: c.experts)
                        for q in 0..<p { for id in rankStart[q]..<rankStart[q + 1] { rankOfId[id] = q } }
                        var seen = [Int](repeating: -1, count: p)
                        for token in 0..<t {
                            for j in 0..<k {
                                let id = Int(renumberedIds[token * k + j])
                                guard id >= 0 && id < c.experts else { continue }
                                let q = rankOfId[id]
                                if q != comm.rank && seen[q] != token {
                                    seen[q] = token
                                    minimum += 2 * rowBytes
                                }
                            }
                        }
                        meta.reserveCapacity(3 * t * k)
                        var q = 0
                        var end = sendRows[0]
                        for i in 0..<(t * k) {
                            while i >= end { q += 1; end += sendRows[q] }
                            let a = Int(assignmentOf[i])
                            guard a >= 0 && a < t * k else {
                                throw SwitchyardError.invalidValues(argument: "dispatch assignment", detail: "row \(i) holds \(a)")
                            }
                            meta.append(renumberedIds[a] - Int32(rankStart[q]))
                            meta.append(Int32(bitPattern: weightBits[a]))
                            meta.append(Int32(a))
                        }
                    }
                }
            }
        }
        // The agreement carried each rank's token count and dtype: the global token order.
        let tokenCounts = status.extras.map { Int($0[0]) }
        let globalTokens = tokenCounts.reduce(0, +)
        guard status.extras.allSatisfy({ $0[1] == status.extras[0][1] }) else {
            throw SwitchyardError.unsupported("the ranks' inputs have different dtypes; expert parallelism needs one")
        }
        guard globalTokens.multipliedReportingOverflow(by: k).partialValue < Int(Int32.max),
              !globalTokens.multipliedReportingOverflow(by: k).overflow else {
            throw SwitchyardError.outOfRange(
                argument: "tokens over all ranks × k", value: globalTokens, range: "below \(Int(Int32.max) / k) tokens")
        }
        let rowBytes = h * dtype.size
        // 2. Counts, rows and metadata to their ranks.
        let (received, receivedMeta, receivedRows) = try timed(\.exchange) {
            let counts = try comm.allToAll(sendRows.map { Int32($0) })
            let recvRows = counts.map { Int($0) }
            // The rows of this rank's own block stay on the device: none to itself through MPI.
            let rows = try comm.allToAllv(
                sendBytes, rowBytes: rowBytes, sendRows: Self.excluding(sendRows, comm.rank),
                recvRows: Self.excluding(recvRows, comm.rank))
            let metaBytes = meta.withUnsafeBytes { Array($0) }
            let m = try comm.allToAllv(metaBytes, rowBytes: 12, sendRows: sendRows, recvRows: recvRows)
            return (rows, m, recvRows)
        }
        sendBytes = []

        // 3. The local experts on the rows received.
        let totalReceived = receivedRows.reduce(0, +)
        var backBytes: [UInt8] = []
        var back: Tensor?
        var localRouting: Routing?
        status = try timed(\.exchange) {
            try Self.status(comm, "local experts") {
                guard totalReceived > 0 else { return }
                guard let gateUp, let down else {
                    throw SwitchyardError.invalidValues(
                        argument: "received rows", detail: "\(totalReceived) rows for a rank that holds no experts")
                }
                let el = localExperts.count
                var ids = [Int32]()
                var weights = [Float]()
                try timed(\.staging) {
                    ids.reserveCapacity(totalReceived)
                    weights.reserveCapacity(totalReceived)
                    try receivedMeta.withUnsafeBytes { raw in
                        let m = raw.bindMemory(to: Int32.self)
                        // Each expert's rows arrive in global token order (sources in rank
                        // order, each sorted stably by expert): what capacity and ties rely on.
                        var previous = [Int](repeating: -1, count: el)
                        var firstToken = [0]
                        for n in tokenCounts { firstToken.append(firstToken[firstToken.count - 1] + n) }
                        var source = 0
                        var sourceEnd = receivedRows[0]
                        for i in 0..<totalReceived {
                            while i >= sourceEnd { source += 1; sourceEnd += receivedRows[source] }
                            let local = Int(m[3 * i + 2])
                            guard local >= 0 && local < tokenCounts[source] * k else {
                                throw SwitchyardError.invalidValues(
                                    argument: "received row origin",
                                    detail: "row \(i) from rank \(source): assignment \(local) of \(tokenCounts[source] * k)")
                            }
                            let (expert, bits) = (m[3 * i], m[3 * i + 1])
                            let origin = firstToken[source] * k + local
                            guard expert >= 0 && Int(expert) < el else {
                                throw SwitchyardError.invalidValues(
                                    argument: "received expert id", detail: "row \(i): \(expert), this rank holds \(el)")
                            }
                            guard origin > previous[Int(expert)] else {
                                throw SwitchyardError.invalidValues(
                                    argument: "received row origin",
                                    detail: "row \(i) (local expert \(expert)): \(origin) after \(previous[Int(expert)])")
                            }
                            previous[Int(expert)] = origin
                            ids.append(expert)
                            weights.append(Float(bitPattern: UInt32(bitPattern: bits)))
                        }
                    }
                }
                try timed(\.compute) {
                    let xr = try timed(\.staging) {
                        // Received rows in rank order, this rank's own block copied on the device.
                        let own = Self.block(receivedRows, comm.rank)
                        let before = own.lowerBound * rowBytes
                        return try backend.tensor(
                            concatenating: [.bytes(Array(received[..<before]), rows: own.lowerBound),
                                            .rows(dispatched!, Self.block(sendRows, comm.rank)),
                                            .bytes(Array(received[before...]), rows: totalReceived - own.upperBound)],
                            rowShape: [h], dtype: dtype)
                    }
                    // The local routing: one slot per received row, the global capacity.
                    let localConfig = try Self.localRouter(
                        config: c.router, experts: el, rows: totalReceived, globalTokens: globalTokens)
                    let g = try Gating(
                        config: localConfig, tokens: totalReceived,
                        logits: try backend.tensor([Float](repeating: 0, count: totalReceived * el),
                                                   shape: [totalReceived, el], dtype: .f32),
                        ids: try backend.tensor(ids, shape: [totalReceived, 1]),
                        weights: try backend.tensor(weights, shape: [totalReceived, 1], dtype: .f32),
                        flags: try backend.tensor([Int32](repeating: 0, count: 2), shape: [2]))
                    let routing = try backend.permute(g, blockSize: blockSize)
                    localRouting = routing
                    let hidden = try backend.groupedMatmul(gathering: xr, weights: gateUp, routing: routing, epilogue: .swiglu)
                    let ys = try backend.groupedMatmul(hidden, weights: down, routing: routing, dtype: dtype)
                    // Back to the received order: combine with unit weights copies each row exactly
                    // (dropped rows come out zero).
                    let ones = try backend.tensor([Float](repeating: 1, count: totalReceived), shape: [totalReceived, 1], dtype: .f32)
                    let results = try backend.combine(ys, routing: try routing.replacingWeights(ones), residual: nil, dtype: dtype)
                    back = results
                    try backend.synchronize()
                    // Only the results for other ranks go to the host.
                    let own = Self.block(receivedRows, comm.rank)
                    backBytes = try timed(\.staging) {
                        try backend.bytes(results, rows: 0..<own.lowerBound)
                            + backend.bytes(results, rows: own.upperBound..<totalReceived)
                    }
                }
            }
        }

        // 4. Results home, combined in slot order with the shared experts.
        let home = try timed(\.exchange) {
            try comm.allToAllv(
                backBytes, rowBytes: rowBytes, sendRows: Self.excluding(receivedRows, comm.rank),
                recvRows: Self.excluding(sendRows, comm.rank))
        }
        backBytes = []
        var y: Tensor?
        var localStats: [Double] = []
        var kept = 0
        status = try timed(\.exchange) {
            try Self.status(comm, "combine") {
                guard let dispatch, let gating else { throw SwitchyardError.unsupported("no routing") }
                try timed(\.compute) {
                    let ys = try timed(\.staging) {
                        // Results in this rank's dispatch order, its own block copied on the device.
                        let own = Self.block(sendRows, comm.rank)
                        let before = own.lowerBound * rowBytes
                        var blocks: [OpenCLBackend.RowBlock] = [.bytes(Array(home[..<before]), rows: own.lowerBound)]
                        if let back, !own.isEmpty { blocks.append(.rows(back, Self.block(receivedRows, comm.rank))) }
                        blocks.append(.bytes(Array(home[before...]), rows: t * k - own.upperBound))
                        return try backend.tensor(concatenating: blocks, rowShape: [h], dtype: dtype)
                    }
                    var shared: Tensor?
                    if let sharedGateUp, let sharedDown {
                        let hs = try backend.groupedMatmul(x, weights: sharedGateUp, epilogue: .swiglu)
                        var scale = RowScale.none
                        if let sharedGate {
                            let gt = try backend.groupedMatmul(x, weights: sharedGate, epilogue: .sigmoid, dtype: .f32)
                            scale = .perRow(try gt.reshaped([t]))
                        }
                        shared = try backend.groupedMatmul(hs, weights: sharedDown, scale: scale, dtype: .f32)
                    }
                    y = try backend.combine(ys, routing: dispatch, residual: shared, dtype: .f32)
                    if synchronize { try backend.synchronize() }
                }
                if wantStats {
                    localStats = try localStatistics(dispatch: dispatch, gating: gating, local: localRouting, tokens: t)
                }
                kept = try localRouting.map { try backend.ints($0.counts).reduce(0) { $0 + Int($1) } } ?? 0
            }
        }
        var stats: RoutingStats?
        if wantStats {
            let sums = try timed(\.exchange) { try comm.allReduceSum(localStats) }
            stats = Self.globalStatistics(sums, experts: c.experts, tokens: globalTokens, k: k)
        }
        guard let y else { throw SwitchyardError.unsupported("no output") }
        var toOthers = 0
        var payload = 0
        for q in 0..<p where q != comm.rank {
            payload += sendRows[q] * rowBytes + receivedRows[q] * rowBytes
            toOthers += sendRows[q] * (rowBytes + 12) + receivedRows[q] * rowBytes
        }
        return Output(
            y: y,
            load: Load(
                tokens: t, globalTokens: globalTokens, sentRows: sendRows, receivedRows: receivedRows, keptRows: kept,
                bytesToOthers: toOthers, payloadBytesToOthers: payload, minimumBytesToOthers: minimum),
            timing: timing, stats: stats)
    }

    /// Rows of rank `q`'s block among blocks of `counts` rows in rank order.
    static func block(_ counts: [Int], _ q: Int) -> Range<Int> {
        let start = counts.prefix(q).reduce(0, +)
        return start..<(start + counts[q])
    }

    /// `counts` with rank `q`'s entry 0 (its block does not go through MPI).
    static func excluding(_ counts: [Int], _ q: Int) -> [Int] {
        var c = counts
        c[q] = 0
        return c
    }

    /// The router config of a rank's local routing: one slot per received row over its `experts`
    /// local experts, the same drop priority, and a capacity factor chosen so that the capacity
    /// is exactly that of the whole layer over `globalTokens` tokens (ceil(factor · T · k / E)).
    static func localRouter(config c: RouterConfig, experts: Int, rows: Int, globalTokens: Int) throws -> RouterConfig {
        var local = RouterConfig(
            experts: experts, k: 1, scoring: .softmax, renormalize: false, dropPriority: c.dropPriority)
        guard let capacity = c.capacity(tokens: globalTokens), capacity < rows else { return local }
        guard capacity >= 1 else {
            throw SwitchyardError.unsupported("a capacity of 0 rows per expert (capacityFactor \(c.capacityFactor ?? 0))")
        }
        // ceil(f · rows / experts) == capacity for f = (capacity − ½) · experts / rows, up to
        // rounding: checked exactly, with the neighbours tried.
        let base = (Double(capacity) - 0.5) * Double(experts) / Double(rows)
        for f in [base, base.nextUp, base.nextDown, (Double(capacity) - 0.25) * Double(experts) / Double(rows)] {
            local.capacityFactor = f
            if local.capacity(tokens: rows) == capacity { return local }
        }
        throw SwitchyardError.unsupported("no capacity factor gives \(capacity) rows per expert over \(rows) rows")
    }

    /// This rank's contribution to the global statistics: routed and kept counts per global
    /// expert, the sums over its tokens of each expert's probability and of the z-loss term,
    /// and its experts' drops: `[routed E, kept E, probability sums E, z sum, dropped]`.
    func localStatistics(dispatch: Routing, gating: Gating, local: Routing?, tokens: Int) throws -> [Double] {
        let e = config.experts
        var routed = [Double](repeating: 0, count: e)
        var kept = [Double](repeating: 0, count: e)
        var probability = [Double](repeating: 0, count: e)
        var z = 0.0
        var dropped = 0.0
        if tokens > 0 {
            let s = try backend.routingStats(dispatch)
            let counts = try backend.ints(dispatch.routedCounts)
            for expert in 0..<e {
                routed[expert] = Double(counts[Int(renumbered[expert])])
                probability[expert] = Double(s.meanProbability[expert]) * Double(tokens)
            }
            z = Double(s.zLoss) * Double(tokens)
        }
        if let local {
            let counts = try backend.ints(local.counts)
            for (i, expert) in localExperts.enumerated() { kept[expert] = Double(counts[i]) }
            dropped = Double(try backend.ints(local.dropped)[0])
        }
        return routed + kept + probability + [z, dropped]
    }

    /// The statistics of the whole layer from the ranks' summed contributions (the definitions
    /// of `Reference.routingStats`).
    static func globalStatistics(_ sums: [Double], experts e: Int, tokens: Int, k: Int) -> RoutingStats {
        let routed = Array(sums[0..<e])
        let kept = Array(sums[e..<(2 * e)])
        let mean = sums[(2 * e)..<(3 * e)].map { tokens > 0 ? $0 / Double(tokens) : 0 }
        let n = Double(max(tokens * k, 1))
        let loss = Double(e) * zip(routed, mean).reduce(0) { $0 + $1.0 / n * $1.1 }
        return RoutingStats(
            tokensPerExpert: kept.map { Int($0) }, dropped: Int(sums[3 * e + 1]), meanProbability: mean.map { Float($0) },
            balanceLoss: Float(loss), zLoss: Float(tokens > 0 ? sums[3 * e] / Double(tokens) : 0))
    }

    /// A rank's local work that failed, seen by the others.
    public enum ExpertParallelError: Error, Sendable, Equatable, CustomStringConvertible {
        case peerFailed(rank: Int, phase: String)
        public var description: String {
            switch self {
            case .peerFailed(let rank, let phase): "rank \(rank) failed in the \(phase) phase (see its error)"
            }
        }
    }

    /// Runs `body`, then agrees with every rank (`MPI_Allgather` of a status and `extras`, read
    /// after `body`) so that no rank waits in a later collective for one that threw. Rethrows
    /// this rank's error, or throws `peerFailed` for the lowest failing rank; else returns every
    /// rank's extras.
    static func status(
        _ comm: Communicator, _ phase: String, extras: () -> [Int32] = { [] }, _ body: () throws -> Void
    ) throws -> (extras: [[Int32]], Void) {
        var failure: (any Error)?
        do { try body() } catch { failure = error }
        let mine: [Int32] = [failure == nil ? 0 : 1] + extras()
        let all = try comm.allGather(mine)
        let width = mine.count
        if let failure { throw failure }
        for r in 0..<comm.size where all[r * width] != 0 {
            throw ExpertParallelError.peerFailed(rank: r, phase: phase)
        }
        return ((0..<comm.size).map { Array(all[($0 * width + 1)..<(($0 + 1) * width)]) }, ())
    }

    /// `status` without extras (construction).
    static func agree(_ comm: Communicator, _ phase: String, _ body: () throws -> Void) throws {
        _ = try status(comm, phase, body)
    }
}

extension Tensor {
    /// The token count of `[T, hidden]`, or an error naming `argument`.
    fileprivate func shapeRank2(_ argument: String, hidden: Int) throws -> Int {
        guard shape.count == 2, shape[1] == hidden else {
            throw SwitchyardError.shape(argument: argument, expected: "[tokens, \(hidden)]", actual: shape)
        }
        return shape[0]
    }
}
