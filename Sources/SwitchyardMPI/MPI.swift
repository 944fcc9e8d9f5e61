import CMPI

/// A failed MPI call: the call's name, its error code and MPI's message for it.
public struct MPIError: Error, Sendable, Equatable, CustomStringConvertible {
    public let call: String
    public let code: Int32
    public let message: String

    public init(call: String, code: Int32, message: String) {
        self.call = call
        self.code = code
        self.message = message
    }

    public var description: String { "\(call) failed (MPI error \(code)): \(message)" }

    static func check(_ code: Int32, _ call: String) throws {
        guard code != cmpi_success() else { return }
        var buffer = [CChar](repeating: 0, count: Int(cmpi_max_error_string()) + 1)
        var length: Int32 = 0
        let message: String
        if MPI_Error_string(code, &buffer, &length) == cmpi_success() {
            message = String(decoding: buffer.prefix(Int(max(0, length))).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        } else {
            message = "unknown error"
        }
        throw MPIError(call: call, code: code, message: message)
    }
}

/// `MPI_COMM_WORLD` with the calls expert parallelism uses: rank and size, all-to-all of counts,
/// all-to-all-v of rows, all-gather and sum all-reduce, barrier. Errors come back as `MPIError`
/// naming the call (the communicator's error handler is set to `MPI_ERRORS_RETURN`), never as
/// an abort. Every call is collective: each rank must make the same calls in the same order.
public final class Communicator: @unchecked Sendable {
    public let rank: Int
    public let size: Int
    let comm: MPI_Comm

    private init(comm: MPI_Comm) throws {
        self.comm = comm
        try MPIError.check(MPI_Comm_set_errhandler(comm, cmpi_errors_return()), "MPI_Comm_set_errhandler")
        var r: Int32 = 0
        var s: Int32 = 0
        try MPIError.check(MPI_Comm_rank(comm, &r), "MPI_Comm_rank")
        try MPIError.check(MPI_Comm_size(comm, &s), "MPI_Comm_size")
        rank = Int(r)
        size = Int(s)
    }

    /// Whether `MPI_Init` has run in this process (and `MPI_Finalize` has not).
    public static var isInitialized: Bool {
        var initialized: Int32 = 0
        var finalized: Int32 = 0
        MPI_Initialized(&initialized)
        MPI_Finalized(&finalized)
        return initialized != 0 && finalized == 0
    }

    /// `MPI_COMM_WORLD`, initializing MPI (`MPI_Init_thread`, funneled: MPI calls from the thread
    /// that made them) on first use; without `mpirun`, a world of one rank. Throws after
    /// `finalize()`.
    public static func world() throws -> Communicator {
        var finalized: Int32 = 0
        try MPIError.check(MPI_Finalized(&finalized), "MPI_Finalized")
        if finalized != 0 { throw MPIError(call: "MPI_Init_thread", code: -1, message: "MPI was already finalized") }
        var initialized: Int32 = 0
        try MPIError.check(MPI_Initialized(&initialized), "MPI_Initialized")
        if initialized == 0 {
            var provided: Int32 = 0
            try MPIError.check(MPI_Init_thread(nil, nil, cmpi_thread_funneled(), &provided), "MPI_Init_thread")
        }
        return try Communicator(comm: cmpi_comm_world())
    }

    /// `MPI_Finalize`, once, after every rank's last collective call; a no-op when MPI never
    /// started or already finished.
    public static func finalize() throws {
        guard isInitialized else { return }
        try MPIError.check(MPI_Finalize(), "MPI_Finalize")
    }

    /// `MPI_Barrier`.
    public func barrier() throws {
        try MPIError.check(MPI_Barrier(comm), "MPI_Barrier")
    }

    /// `MPI_Alltoall` of `perRank` Int32 values per rank: `values` holds `size · perRank`
    /// values, block q going to rank q; the result's block q came from rank q.
    public func allToAll(_ values: [Int32], perRank: Int = 1) throws -> [Int32] {
        guard perRank >= 1, values.count == size * perRank else {
            throw MPIError(call: "MPI_Alltoall", code: -1,
                           message: "expected \(size) × \(perRank) values, got \(values.count)")
        }
        var out = [Int32](repeating: 0, count: values.count)
        let code = values.withUnsafeBytes { send in
            out.withUnsafeMutableBytes { recv in
                MPI_Alltoall(send.baseAddress, Int32(perRank), cmpi_int32(), recv.baseAddress, Int32(perRank),
                             cmpi_int32(), comm)
            }
        }
        try MPIError.check(code, "MPI_Alltoall")
        return out
    }

    /// `MPI_Alltoallv` of rows of `rowBytes` bytes: rank q gets `sendRows[q]` rows of `send`
    /// (consecutive blocks, rank 0's first) and this rank gets `recvRows[q]` rows from rank q,
    /// in rank order. Counts are in rows (a contiguous MPI datatype of one row), so a block may
    /// exceed 2 GiB; each count and the row totals must fit Int32.
    public func allToAllv(_ send: [UInt8], rowBytes: Int, sendRows: [Int], recvRows: [Int]) throws -> [UInt8] {
        let call = "MPI_Alltoallv"
        guard sendRows.count == size, recvRows.count == size else {
            throw MPIError(call: call, code: -1, message: "expected \(size) send and receive counts")
        }
        guard rowBytes >= 1, rowBytes <= Int(Int32.max) else {
            throw MPIError(call: call, code: -1, message: "row size \(rowBytes) bytes is out of range 1...\(Int32.max)")
        }
        func displacements(_ counts: [Int], _ what: String) throws -> (counts: [Int32], displs: [Int32], total: Int) {
            var displs = [Int32]()
            var total = 0
            for c in counts {
                guard c >= 0, total <= Int(Int32.max) else {
                    throw MPIError(call: call, code: -1, message: "\(what) row counts \(counts) are out of range")
                }
                displs.append(Int32(total))
                total += c
            }
            guard total <= Int(Int32.max) else {
                throw MPIError(call: call, code: -1, message: "\(total) \(what) rows exceed \(Int32.max)")
            }
            return (counts.map { Int32($0) }, displs, total)
        }
        let s = try displacements(sendRows, "send")
        let r = try displacements(recvRows, "receive")
        let (sendBytes, o1) = s.total.multipliedReportingOverflow(by: rowBytes)
        let (recvBytes, o2) = r.total.multipliedReportingOverflow(by: rowBytes)
        guard !o1, !o2, send.count == sendBytes else {
            throw MPIError(call: call, code: -1,
                           message: "send buffer holds \(send.count) bytes, expected \(s.total) rows × \(rowBytes)")
        }
        var rowType: MPI_Datatype?
        try MPIError.check(MPI_Type_contiguous(Int32(rowBytes), cmpi_byte(), &rowType), "MPI_Type_contiguous")
        defer { MPI_Type_free(&rowType) }
        try MPIError.check(MPI_Type_commit(&rowType), "MPI_Type_commit")
        // At least one byte on each side: an empty Swift array may have no base address.
        // Uninitialized: MPI writes every byte (zero-filling 100 MB costs tens of milliseconds).
        var out = [UInt8](unsafeUninitializedCapacity: max(1, recvBytes)) { _, count in count = max(1, recvBytes) }
        let source = send.isEmpty ? [0] : send
        let code = source.withUnsafeBytes { sp in
            out.withUnsafeMutableBytes { rp in
                s.counts.withUnsafeBufferPointer { sc in
                    s.displs.withUnsafeBufferPointer { sd in
                        r.counts.withUnsafeBufferPointer { rc in
                            r.displs.withUnsafeBufferPointer { rd in
                                MPI_Alltoallv(sp.baseAddress, sc.baseAddress, sd.baseAddress, rowType, rp.baseAddress,
                                              rc.baseAddress, rd.baseAddress, rowType, comm)
                            }
                        }
                    }
                }
            }
        }
        try MPIError.check(code, call)
        if recvBytes == 0 { out.removeAll() }
        return out
    }

    /// `MPI_Allgather` of `values` (the same count on every rank): rank q's block at q·count.
    public func allGather(_ values: [Int32]) throws -> [Int32] {
        var out = [Int32](repeating: 0, count: max(1, values.count * size))
        let source = values.isEmpty ? [0] : values
        let code = source.withUnsafeBytes { sp in
            out.withUnsafeMutableBytes { rp in
                MPI_Allgather(sp.baseAddress, Int32(values.count), cmpi_int32(), rp.baseAddress, Int32(values.count),
                              cmpi_int32(), comm)
            }
        }
        try MPIError.check(code, "MPI_Allgather")
        return Array(out.prefix(values.count * size))
    }

    /// `MPI_Allgather` of one Double per rank.
    public func allGather(_ value: Double) throws -> [Double] {
        var v = value
        var out = [Double](repeating: 0, count: size)
        let code = out.withUnsafeMutableBytes { rp in
            MPI_Allgather(&v, 1, cmpi_double(), rp.baseAddress, 1, cmpi_double(), comm)
        }
        try MPIError.check(code, "MPI_Allgather")
        return out
    }

    /// `MPI_Allreduce` with `MPI_SUM` of Doubles: every rank gets the element-wise sum.
    public func allReduceSum(_ values: [Double]) throws -> [Double] {
        guard !values.isEmpty else { return [] }
        var out = [Double](repeating: 0, count: values.count)
        let code = values.withUnsafeBytes { sp in
            out.withUnsafeMutableBytes { rp in
                MPI_Allreduce(sp.baseAddress, rp.baseAddress, Int32(values.count), cmpi_double(), cmpi_op_sum(), comm)
            }
        }
        try MPIError.check(code, "MPI_Allreduce")
        return out
    }

    /// `MPI_Allreduce` with `MPI_SUM` of Int64s (exact counts).
    public func allReduceSum(_ values: [Int64]) throws -> [Int64] {
        guard !values.isEmpty else { return [] }
        var out = [Int64](repeating: 0, count: values.count)
        let code = values.withUnsafeBytes { sp in
            out.withUnsafeMutableBytes { rp in
                MPI_Allreduce(sp.baseAddress, rp.baseAddress, Int32(values.count), cmpi_int64(), cmpi_op_sum(), comm)
            }
        }
        try MPIError.check(code, "MPI_Allreduce")
        return out
    }

    /// `MPI_Allreduce` with `MPI_MAX` of Doubles.
    public func allReduceMax(_ values: [Double]) throws -> [Double] {
        guard !values.isEmpty else { return [] }
        var out = [Double](repeating: 0, count: values.count)
        let code = values.withUnsafeBytes { sp in
            out.withUnsafeMutableBytes { rp in
                MPI_Allreduce(sp.baseAddress, rp.baseAddress, Int32(values.count), cmpi_double(), cmpi_op_max(), comm)
            }
        }
        try MPIError.check(code, "MPI_Allreduce")
        return out
    }
}
