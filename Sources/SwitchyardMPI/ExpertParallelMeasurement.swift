import Foundation
import Switchyard

/// Timed forwards of an expert-parallel layer, every rank's figures gathered on every rank: what
/// `switchyard run --ep` prints and `switchyard-bench --ep` reports.
public struct ExpertParallelMeasurement: Sendable, Codable {
    /// One rank's figures: medians over the timed forwards (each part's median taken apart).
    public struct Rank: Sendable, Codable {
        public var tokens: Int
        public var experts: Int
        public var rowsIn: Int
        public var kept: Int
        public var computeSeconds: Double
        public var stagingSeconds: Double
        public var exchangeSeconds: Double
        public var forwardSeconds: Double
        public var bytesToOthers: Int
        public var payloadBytesToOthers: Int
        public var minimumBytesToOthers: Int
    }

    public var ranks: [Rank]
    public var globalTokens: Int
    /// Bytes of one activation row.
    public var rowBytes: Int
    /// Timed forwards per rank (0: one forward, program builds included).
    public var iterations: Int

    /// The rank whose median forward is the longest: the layer's time.
    public var slowest: Int { ranks.indices.max { ranks[$0].forwardSeconds < ranks[$1].forwardSeconds } ?? 0 }
    public var layerSeconds: Double { ranks[slowest].forwardSeconds }
    /// Bytes sent between ranks per token (rows, metadata, results), and its parts.
    public var bytesPerToken: Double { Double(ranks.map(\.bytesToOthers).reduce(0, +)) / Double(max(1, globalTokens)) }
    public var payloadBytesPerToken: Double {
        Double(ranks.map(\.payloadBytesToOthers).reduce(0, +)) / Double(max(1, globalTokens))
    }
    /// The least any scheme could send per token (see `ExpertParallelMoELayer.Load`).
    public var leastBytesPerToken: Double {
        Double(ranks.map(\.minimumBytesToOthers).reduce(0, +)) / Double(max(1, globalTokens))
    }
    /// Largest rows received by a rank over the mean.
    public var imbalance: Double {
        let rows = ranks.map { Double($0.rowsIn) }
        let mean = rows.reduce(0, +) / Double(max(1, rows.count))
        return mean > 0 ? (rows.max() ?? 0) / mean : 1
    }
}

extension ExpertParallelMoELayer {
    /// Runs `iterations` timed forwards of this rank's `x` after a warm-up (every rank starting
    /// each one together, `MPI_Barrier`), then one more with the routing statistics, and gathers
    /// every rank's medians (collective). With 0 iterations: the one forward with statistics,
    /// program builds included. Returns the figures and that last forward's output.
    public func measure(_ x: Tensor, iterations: Int) throws -> (ExpertParallelMeasurement, Output) {
        guard iterations >= 0 else {
            throw SwitchyardError.outOfRange(argument: "iterations", value: iterations, range: "0...")
        }
        let comm = communicator
        if iterations > 0 { _ = try forward(x, synchronize: true) }
        var wall: [Double] = []
        var timings: [Timing] = []
        for _ in 0..<iterations {
            try comm.barrier()
            let start = Date()
            let out = try forward(x, synchronize: true)
            wall.append(Date().timeIntervalSince(start))
            timings.append(out.timing)
        }
        try comm.barrier()
        let finalStart = Date()
        let final = try forward(x, synchronize: true, stats: true)
        if iterations == 0 {
            wall = [Date().timeIntervalSince(finalStart)]
            timings = [final.timing]
        }
        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
        let load = final.load
        let mine: [Double] = [
            Double(load.tokens), Double(localExperts.count), Double(load.receivedRows.reduce(0, +)), Double(load.keptRows),
            median(timings.map(\.compute)), median(timings.map(\.staging)), median(timings.map(\.exchange)), median(wall),
            Double(load.bytesToOthers), Double(load.payloadBytesToOthers), Double(load.minimumBytesToOthers),
        ]
        var columns: [[Double]] = []
        for value in mine { columns.append(try comm.allGather(value)) }
        let ranks = (0..<comm.size).map { r in
            ExpertParallelMeasurement.Rank(
                tokens: Int(columns[0][r]), experts: Int(columns[1][r]), rowsIn: Int(columns[2][r]), kept: Int(columns[3][r]),
                computeSeconds: columns[4][r], stagingSeconds: columns[5][r], exchangeSeconds: columns[6][r],
                forwardSeconds: columns[7][r], bytesToOthers: Int(columns[8][r]), payloadBytesToOthers: Int(columns[9][r]),
                minimumBytesToOthers: Int(columns[10][r]))
        }
        let measurement = ExpertParallelMeasurement(
            ranks: ranks, globalTokens: load.globalTokens, rowBytes: config.hidden * x.dtype.size, iterations: iterations)
        return (measurement, final)
    }
}
