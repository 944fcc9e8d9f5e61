import Foundation
import SwitchyardReference

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Errors reading or writing checkpoints.
public struct CheckpointError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong, naming the file and the tensor or field.
    public let message: String
    /// An error with `message`.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A `.safetensors` file: an 8-byte little-endian header length, a JSON header naming each
/// tensor's dtype, shape and byte range, then the data. Checked as strictly as the reference
/// implementation when opened (header size, known dtypes, non-negative shapes whose byte count
/// matches the range, ranges contiguous and non-overlapping and covering the data exactly), and read
/// with `pread`, so a file that shrinks after it was opened is an error, never a SIGBUS.
public final class SafeTensorsFile: @unchecked Sendable {
    /// One tensor of the file's header: its stored dtype, shape and byte range.
    public struct Entry: Sendable {
        /// The stored dtype as the header names it ("F32", "F16", "BF16", ...).
        public let dtype: String
        /// The shape, outermost first.
        public let shape: [Int]
        /// First byte, relative to the data section's start.
        public let begin: Int
        /// One past the last byte, relative to the data section.
        public let end: Int
    }

    /// The largest header read (the reference implementation's limit).
    public static let maxHeaderBytes = 100_000_000

    /// The file path.
    public let path: String
    /// Every tensor of the header, by name.
    public let entries: [String: Entry]
    private let fd: Int32
    private let dataStart: Int

    /// Bytes per element of every safetensors dtype.
    static let elementSizes: [String: Int] = [
        "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
        "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
    ]

    /// Opens a .safetensors file and checks its header strictly (size, JSON, dtypes, shapes against byte ranges, ranges inside the file, contiguous and non-overlapping); reads no tensor data.
    public init(path: String) throws {
        self.path = path
        guard let (fd, length) = try Self.openRegularFile(path) else {
            throw CheckpointError("cannot open \(path): \(String(cString: strerror(ENOENT)))")
        }
        var ok = false
        defer { if !ok { close(fd) } }
        guard length >= 8 else { throw CheckpointError("\(path) is not a safetensors file (\(length) bytes)") }
        let prefix = try Self.read(fd, path, offset: 0, count: 8)
        let declared = prefix.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard declared > 0, declared <= UInt64(Self.maxHeaderBytes), Int(declared) <= length - 8 else {
            throw CheckpointError(
                "\(path): header length \(declared) does not fit the file of \(length) bytes "
                    + "(limit \(Self.maxHeaderBytes))")
        }
        let headerLength = Int(declared)
        let dataStart = 8 + headerLength
        let header = Data(try Self.read(fd, path, offset: 8, count: headerLength))
        guard let json = try? JSONSerialization.jsonObject(with: header) as? [String: Any] else {
            throw CheckpointError("\(path): the header is not a JSON object")
        }
        let dataBytes = length - dataStart
        var entries: [String: Entry] = [:]
        for (name, value) in json where name != "__metadata__" {
            guard let item = value as? [String: Any], let dtype = item["dtype"] as? String,
                let shape = item["shape"] as? [Int], let offsets = item["data_offsets"] as? [Int], offsets.count == 2
            else {
                throw CheckpointError("\(path): malformed header entry for '\(name)'")
            }
            guard let size = Self.elementSizes[dtype] else {
                throw CheckpointError("\(path): '\(name)' has unknown dtype '\(dtype)'")
            }
            guard shape.allSatisfy({ $0 >= 0 }) else {
                throw CheckpointError("\(path): '\(name)' has a negative extent in shape \(shape)")
            }
            var bytes = size
            for extent in shape {
                let (product, overflow) = bytes.multipliedReportingOverflow(by: extent)
                guard !overflow, product <= dataBytes else {
                    throw CheckpointError(
                        "\(path): '\(name)' of shape \(shape) \(dtype) needs more bytes than the file's \(dataBytes) bytes of data")
                }
                bytes = product
            }
            guard offsets[0] >= 0, offsets[0] <= offsets[1], offsets[1] <= dataBytes else {
                throw CheckpointError("\(path): '\(name)' byte range \(offsets) lies outside the \(dataBytes) bytes of data")
            }
            guard offsets[1] - offsets[0] == bytes else {
                throw CheckpointError(
                    "\(path): '\(name)' has shape \(shape) of \(dtype) (\(bytes) bytes) but byte range \(offsets)")
            }
            entries[name] = Entry(dtype: dtype, shape: shape, begin: offsets[0], end: offsets[1])
        }
        // The ranges tile the data: contiguous from 0, no overlap, no gap, nothing after the last.
        var next = 0
        for (name, e) in entries.sorted(by: { ($0.value.begin, $0.value.end, $0.key) < ($1.value.begin, $1.value.end, $1.key) }) {
            guard e.begin == next else {
                throw CheckpointError(
                    e.begin < next
                        ? "\(path): '\(name)' byte range [\(e.begin), \(e.end)] overlaps the tensor before it"
                        : "\(path): a gap of \(e.begin - next) bytes before '\(name)'")
            }
            next = e.end
        }
        guard next == dataBytes else {
            throw CheckpointError("\(path): the tensors cover \(next) of the \(dataBytes) bytes of data")
        }
        self.entries = entries
        self.fd = fd
        self.dataStart = dataStart
        ok = true
    }

    deinit {
        close(fd)
    }

    /// The bytes of a small JSON file beside the weights (config.json, the shard index): nil when
    /// it does not exist; an error when it is not a regular file (a FIFO would block the open, a
    /// link to /dev/zero would never end) or is larger than `limit` bytes.
    static func readSmallFile(_ path: String, limit: Int = maxHeaderBytes) throws -> Data? {
        guard let (fd, length) = try openRegularFile(path) else { return nil }
        defer { close(fd) }
        guard length <= limit else { throw CheckpointError("\(path) has \(length) bytes; the limit is \(limit)") }
        return Data(try read(fd, path, offset: 0, count: length))
    }

    /// `path` opened for reading and its length; nil when it does not exist; an error when it
    /// is not a regular file. O_NONBLOCK: opening a FIFO must not wait for a writer (it is then
    /// refused). The caller closes the descriptor.
    static func openRegularFile(_ path: String) throws -> (fd: Int32, length: Int)? {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw CheckpointError("cannot open \(path): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size >= 0 else {
            close(fd)
            throw CheckpointError("\(path) is not a regular file (a FIFO, device or folder cannot be read as one)")
        }
        return (fd, Int(info.st_size))
    }

    /// `count` bytes at `offset`, or an error when the file is shorter (it may have shrunk since
    /// it was opened).
    static func read(_ fd: Int32, _ path: String, offset: Int, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(fd, path, offset: offset, into: $0) }
        return out
    }

    /// Fills `destination` with the bytes at `offset` (`pread`, no mapping: file pages never
    /// count as the process's memory), or an error when the file is shorter.
    static func read(_ fd: Int32, _ path: String, offset: Int, into destination: UnsafeMutableRawBufferPointer) throws {
        let count = destination.count
        var done = 0
        while done < count {
            let n = pread(fd, destination.baseAddress! + done, count - done, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw CheckpointError(
                    n == 0
                        ? "\(path): the file ends before byte \(offset + count) (truncated after it was opened?)"
                        : "\(path): read failed: \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }

    /// The entry of tensor `name`, or an error naming it.
    public func entry(_ name: String) throws -> Entry {
        guard let e = entries[name] else { throw CheckpointError("\(path): no tensor '\(name)'") }
        return e
    }

    /// Streams tensor `name`'s stored bytes through `staging`, in order, in pieces of at most its
    /// capacity and a whole number of elements: `body(piece, firstElement)` for each (the piece
    /// is only valid during the call). Host memory: the staging buffer, whatever the tensor's size.
    public func read(
        _ name: String, through staging: StagingBuffer,
        _ body: (_ piece: UnsafeRawBufferPointer, _ firstElement: Int) throws -> Void
    ) throws {
        let e = try entry(name)
        let size = Self.elementSizes[e.dtype]!  // known dtypes only were accepted when opened
        let step = staging.capacity / size * size
        guard step > 0 else {
            throw CheckpointError("a staging buffer of \(staging.capacity) bytes holds no \(e.dtype) element")
        }
        let total = e.end - e.begin
        var done = 0
        while done < total {
            let n = min(step, total - done)
            let piece = UnsafeMutableRawBufferPointer(rebasing: staging.bytes[0..<n])
            try Self.read(fd, path, offset: dataStart + e.begin + done, into: piece)
            try body(UnsafeRawBufferPointer(piece), done / size)
            done += n
        }
    }

    /// The storage type Switchyard keeps the tensor in (F32, F16, BF16).
    public func dtype(of name: String) throws -> DType {
        guard let e = entries[name] else { throw CheckpointError("\(path): no tensor '\(name)'") }
        switch e.dtype {
        case "F32": return .f32
        case "F16": return .f16
        case "BF16": return .bf16
        default:
            throw CheckpointError(
                "\(path): '\(name)' has dtype \(e.dtype); expected F32, F16 or BF16"
                    + (e.dtype == "F8_E4M3" ? " (F8_E4M3 loads only as expert weights with a weight_scale_inv)" : ""))
        }
    }

    /// The stored bytes of elements `elements` of tensor `name` (a region, for checks).
    public func bytes(_ name: String, elements: Range<Int>) throws -> [UInt8] {
        let e = try entry(name)
        let size = Self.elementSizes[e.dtype]!
        guard elements.lowerBound >= 0, elements.upperBound <= (e.end - e.begin) / size else {
            throw CheckpointError("\(path): elements \(elements) of '\(name)' (\((e.end - e.begin) / size) elements)")
        }
        return try Self.read(fd, path, offset: dataStart + e.begin + elements.lowerBound * size, count: elements.count * size)
    }

    /// The values of tensor `name`, widened to Float (for inputs and tests: a layer's weights
    /// load through `HFCheckpoint.loadLayer`, in their storage type, without this).
    public func floats(_ name: String) throws -> (values: [Float], shape: [Int], dtype: DType) {
        let e = try entry(name)
        let dtype = try dtype(of: name)
        var out = [Float]()
        out.reserveCapacity((e.end - e.begin) / dtype.size)  // checked against the shape when opened
        let staging = try StagingBuffer(capacity: min(max(e.end - e.begin, 8), 1 << 20))
        try read(name, through: staging) { piece, _ in out += Reference.decodeFloats(piece, as: dtype.floatStorage!) }
        return (out, e.shape, dtype)
    }

    /// Writes `tensors` (name → values, shape, storage type) as a safetensors file.
    public static func write(_ tensors: [(name: String, values: [Float], shape: [Int], dtype: DType)], to path: String)
        throws
    {
        var header: [String: Any] = ["__metadata__": ["format": "pt"]]
        var data = Data()
        for t in tensors {
            guard t.values.count == t.shape.reduce(1, *) else {
                throw CheckpointError("'\(t.name)': \(t.values.count) values for shape \(t.shape)")
            }
            let begin = data.count
            switch t.dtype {
            case .f32:
                for v in t.values { withUnsafeBytes(of: v.bitPattern.littleEndian) { data.append(contentsOf: $0) } }
            case .f16:
                for v in t.values { withUnsafeBytes(of: FloatBits.f16(v).littleEndian) { data.append(contentsOf: $0) } }
            case .bf16:
                for v in t.values { withUnsafeBytes(of: FloatBits.bf16(v).littleEndian) { data.append(contentsOf: $0) } }
            case .i32, .u8:
                throw CheckpointError("'\(t.name)': \(t.dtype) tensors are not written")
            }
            let name = ["f32": "F32", "f16": "F16", "bf16": "BF16"][t.dtype.rawValue]!
            header[t.name] = ["dtype": name, "shape": t.shape, "data_offsets": [begin, data.count]]
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        var file = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(json)
        file.append(data)
        try file.write(to: URL(fileURLWithPath: path))
    }
}

/// A reused host buffer that tensors stream through on their way from a file to a device
/// (`SafeTensorsFile.read(_:through:_:)`): the host memory a load holds, whatever the tensors'
/// sizes.
public final class StagingBuffer: @unchecked Sendable {
    /// The largest staging buffer (far above what a load needs).
    public static let maxCapacity = 1 << 32

    public let capacity: Int
    let bytes: UnsafeMutableRawBufferPointer

    /// A buffer of `capacity` bytes (8 up to `maxCapacity`: room for an element of any type).
    public init(capacity: Int) throws {
        guard capacity >= 8 && capacity <= Self.maxCapacity else {
            throw CheckpointError("staging buffer of \(capacity) bytes: expected 8...\(Self.maxCapacity)")
        }
        self.capacity = capacity
        bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 64)
    }

    deinit {
        bytes.deallocate()
    }
}
