import ArgumentParser
import Foundation
import OpenCLHost
import Switchyard
import SwitchyardConformance
import SwitchyardMPI

/// `switchyard run --ep` under `mpirun -np P`: the layer's routed experts split over the ranks,
/// the tokens split too; rank 0 prints each rank's load and where its time went, the bytes
/// exchanged per token against the least possible, the global routing statistics and, with
/// `--check`, whether every rank's output is bitwise equal to the single-process `MoELayer`.
extension Run {
    func runExpertParallel() throws {
        let comm = try Communicator.world()
        let p = comm.size
        let me = comm.rank
        func say(_ line: String) { if me == 0 { print(line) } }
        let backend = try OpenCLBackend(device: try Device.select(device))
        let dev = backend.device

        // The layer config (a built-in one, or a checkpoint's layer) and the capacity options.
        var checkpoint: HFCheckpoint?
        var c: MoEConfig
        let d: DType
        var globalX: [Float]
        let seed: UInt64 = 20_261_124
        if let model {
            guard let index = self.layer else { throw ValidationError("--model needs --layer N") }
            guard let input else { throw ValidationError("--model needs --input X.safetensors (tensor 'x')") }
            let cp = try HFCheckpoint(folder: model)
            checkpoint = cp
            c = try cp.moeConfig(layer: index)
            let x = try SafeTensorsFile(path: input).floats("x")
            guard x.shape.count == 2, x.shape[1] == c.hidden else {
                throw ValidationError("\(input): tensor 'x' has shape \(x.shape); expected [T, \(c.hidden)]")
            }
            globalX = x.values
            d = x.dtype
        } else {
            guard let named = MoEConfig.named[config] else {
                throw ValidationError("unknown config '\(config)'; one of \(MoEConfig.named.keys.sorted())")
            }
            guard let dt = DType(rawValue: dtype), dt.isFloatingPoint else {
                throw ValidationError("dtype must be f32, f16 or bf16")
            }
            // (the whole batch is drawn on the host, f32: bounded by its hidden size, as without --ep)
            let most = min(1 << 22, (1 << 32) / (4 * named.hidden))
            guard tokens >= 0, tokens <= most else {
                throw ValidationError("--tokens must be in 0...\(most) for \(config) (hidden \(named.hidden))")
            }
            c = named
            d = dt
            if let input {
                // The input from a file (tensor 'x' [T, hidden]) instead of seeded random tokens.
                let x = try SafeTensorsFile(path: input).floats("x")
                guard x.shape.count == 2, x.shape[1] == c.hidden else {
                    throw ValidationError("\(input): tensor 'x' has shape \(x.shape); expected [T, \(c.hidden)]")
                }
                globalX = x.values
            } else {
                var g = SeededGenerator(seed: seed ^ 0xABCD)
                globalX = g.normals(tokens * c.hidden)
            }
        }
        if let capacityFactor {
            c.router.capacityFactor = capacityFactor
            switch dropPriority {
            case "token": c.router.dropPriority = .tokenOrder
            case "weight": c.router.dropPriority = .weight
            default: throw ValidationError("--drop-priority must be token or weight")
            }
            try c.router.validate(experts: c.experts)
        }
        let h = c.hidden
        let globalTokens = globalX.count / max(h, 1)

        // Placement: contiguous blocks, or --placement (the rank of each expert).
        var expertMap: [Int]?
        let placement: ExpertPlacement
        if let text = self.placement {
            let ranks = try text.split(separator: ",").map { part -> Int in
                guard let r = Int(part.trimmingCharacters(in: .whitespaces)) else {
                    throw ValidationError("--placement: '\(part)' is not a rank")
                }
                return r
            }
            guard ranks.count == c.experts else {
                throw ValidationError("--placement lists \(ranks.count) ranks; the layer has \(c.experts) experts")
            }
            var next = [Int](repeating: 0, count: p)
            var local = [Int]()
            for r in ranks {
                guard (0..<p).contains(r) else { throw ValidationError("--placement: rank \(r) is not in 0..<\(p)") }
                local.append(next[r])
                next[r] += 1
            }
            placement = try ExpertPlacement(rankOf: ranks, localIndex: local, ranks: p)
            expertMap = placement.expertMap(rank: me)
        } else {
            placement = try ExpertPlacement.contiguous(experts: c.experts, ranks: p)
        }
        let mine = placement.experts(onRank: me)

        // Tokens: an even split, or --token-split.
        var split = (0..<p).map { r in (r + 1) * globalTokens / p - r * globalTokens / p }
        if let tokenSplit {
            split = try tokenSplit.split(separator: ",").map { part -> Int in
                guard let n = Int(part.trimmingCharacters(in: .whitespaces)), (0...globalTokens).contains(n) else {
                    throw ValidationError("--token-split: '\(part)' is not a token count")
                }
                return n
            }
            guard split.count == p, split.reduce(0, +) == globalTokens else {
                throw ValidationError("--token-split must give \(p) counts summing to \(globalTokens)")
            }
        }
        let first = split.prefix(me).reduce(0, +)
        let localX = Array(globalX[(first * h)..<((first + split[me]) * h)])

        // Weights: this rank's experts only (a checkpoint reads just those); the check also
        // builds the whole layer.
        let weights: MoEWeights
        var whole: MoEWeights?
        if let checkpoint, let index = self.layer {
            weights = try checkpoint.loadWeights(index, backend: backend, experts: mine)
        } else {
            let all = try MoEWeights.random(config: c, backend: backend, dtype: d, seed: seed)
            weights = try ExpertParallelMoELayer.localWeights(from: all, experts: mine, backend: backend)
            whole = all
        }
        let layer = try ExpertParallelMoELayer(
            backend: backend, config: c, communicator: comm, weights: weights, expertMap: expertMap, pack: !noPack)
        say("device  \(dev.name) (\(dev.kind.rawValue), \(dev.platformName), driver \(dev.driverVersion)), one context per rank")
        say("ep      \(p) ranks (mpirun), experts \(self.placement == nil ? "in contiguous blocks" : "placed by --placement"), "
            + "tokens split \(split)")
        say("layer   \(model.map { "\(checkpoint?.modelType ?? "") layer \(self.layer ?? 0) of \($0)" } ?? "\(config) (seeded random weights)"): "
            + "hidden \(h), ffn \(c.ffn), \(c.experts) experts, k \(c.router.k), \(c.router.scoring.rawValue)"
            + "\(c.sharedFFN > 0 ? ", shared ffn \(c.sharedFFN)" : "")"
            + "\(c.router.capacityFactor.map { ", capacity factor \($0) (\(c.router.dropPriority.rawValue))" } ?? ""), "
            + "input \(d), T = \(globalTokens)")

        let x = try backend.tensor(localX, shape: [split[me], h], dtype: d)
        // Warm-up (kernel builds), then timed forwards; every rank starts each one together.
        // With --iterations 0 (the tests), one forward only: its times include the builds.
        guard iterations >= 0 else { throw ValidationError("--iterations must be at least 0") }
        let (m, final) = try layer.measure(x, iterations: iterations)
        say("rank  tokens  experts  rows in  kept   compute ms  staging ms  exchange ms  forward ms  sent to others")
        for (r, v) in m.ranks.enumerated() {
            say(String(format: "%4d  %6d  %7d  %7d  %5d  %10.2f  %10.2f  %11.2f  %10.2f  %9.2f MB", r, v.tokens, v.experts,
                       v.rowsIn, v.kept, v.computeSeconds * 1e3, v.stagingSeconds * 1e3, v.exchangeSeconds * 1e3,
                       v.forwardSeconds * 1e3, Double(v.bytesToOthers) / 1e6))
        }
        let slow = m.ranks[m.slowest]
        let how = iterations == 0 ? "one forward with the program builds" : "median of \(iterations)"
        say(String(format: "layer   %.2f ms (slowest rank %d, ", m.layerSeconds * 1e3, m.slowest) + how
            + String(format: "): compute %.2f ms, staging %.2f ms, exchange %.2f ms", slow.computeSeconds * 1e3,
                     slow.stagingSeconds * 1e3, slow.exchangeSeconds * 1e3))
        let rowBytes = Double(m.rowBytes)
        say(String(format: "bytes   per token to other ranks: %.0f B (payload %.0f B = %.2f rows of %.0f B, metadata %.0f B); "
                   + "least possible %.0f B (one row to each other rank holding an expert, one back)",
                   m.bytesPerToken, m.payloadBytesPerToken, m.payloadBytesPerToken / rowBytes, rowBytes,
                   m.bytesPerToken - m.payloadBytesPerToken, m.leastBytesPerToken))
        if let stats = final.stats {
            say("load    per expert \(stats.tokensPerExpert), dropped \(stats.dropped)")
            say(String(format: "loss    balance %.4f, z %.4f", stats.balanceLoss, stats.zLoss))
        }

        if check {
            // The single-process layer over every rank's tokens, on the same device: each rank
            // compares its slice of the output bitwise, and the statistics.
            // Local work only (a rank that fails here still meets the others in the gather below).
            var mismatches = 0
            var statsProblems: [String] = []
            do {
                let fullWeights: MoEWeights
                if let checkpoint, let index = self.layer {
                    fullWeights = try checkpoint.loadWeights(index, backend: backend)
                } else if let whole {
                    fullWeights = whole
                } else {
                    throw ValidationError("no whole-layer weights to check against")
                }
                // The layer's config as run (capacity options included).
                let full = try MoELayer(backend: backend, config: c, weights: fullWeights, pack: !noPack)
                let reference = try full.forward(try backend.tensor(globalX, shape: [globalTokens, h], dtype: d))
                let expected = Array(try backend.bytes(reference.y)[(first * h * 4)..<((first + split[me]) * h * 4)])
                let got = try backend.bytes(final.y)
                for i in stride(from: 0, to: got.count, by: 4) where got[i..<(i + 4)] != expected[i..<(i + 4)] { mismatches += 1 }
                if let s = final.stats {
                    let r = try backend.routingStats(reference.routing)
                    if s.tokensPerExpert != r.tokensPerExpert { statsProblems.append("load \(s.tokensPerExpert) vs \(r.tokensPerExpert)") }
                    if s.dropped != r.dropped { statsProblems.append("dropped \(s.dropped) vs \(r.dropped)") }
                    func close(_ a: Float, _ b: Float) -> Bool { abs(a - b) <= 1e-4 * max(1, abs(b)) }
                    if !zip(s.meanProbability, r.meanProbability).allSatisfy({ close($0, $1) }) {
                        statsProblems.append("mean probabilities differ")
                    }
                    if !close(s.balanceLoss, r.balanceLoss) { statsProblems.append("balance loss \(s.balanceLoss) vs \(r.balanceLoss)") }
                    if !close(s.zLoss, r.zLoss) { statsProblems.append("z loss \(s.zLoss) vs \(r.zLoss)") }
                } else {
                    statsProblems.append("no statistics")
                }
            } catch {
                statsProblems.append("the single-process check failed: \(error)")
            }
            let counts = try comm.allGather([Int32(mismatches), Int32(statsProblems.count)])
            for problem in statsProblems { print("check   rank \(me): statistics: \(problem)") }
            let bad = (0..<p).filter { counts[2 * $0] != 0 || counts[2 * $0 + 1] != 0 }
            if bad.isEmpty {
                say("check   bitwise equal to the single-process MoELayer on all \(p) ranks (\(globalTokens) tokens), "
                    + "statistics equal (counts exactly)")
            } else {
                say("check   FAILED on ranks \(bad): output values differing \((0..<p).map { counts[2 * $0] })")
            }
            try comm.barrier()
            try Communicator.finalize()
            if !bad.isEmpty { throw ExitCode(1) }
            return
        }
        try comm.barrier()
        try Communicator.finalize()
    }
}
