import Foundation
import SwitchyardReference

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Errors reading or writing checkpoints.
public struct CheckpointError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A `.safetensors` file, memory-mapped: an 8-byte little-endian header length, a JSON header
/// naming each tensor's dtype, shape and byte range, then the data.
public final class SafeTensorsFile: @unchecked Sendable {
    public struct Entry: Sendable {
        public let dtype: String
        public let shape: [Int]
        public let begin: Int
        public let end: Int
    }

    public let path: String
    public let entries: [String: Entry]
    private let base: UnsafeMutableRawPointer
    private let length: Int
    private let dataStart: Int

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw CheckpointError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw CheckpointError("cannot stat \(path)") }
        length = Int(info.st_size)
        guard length >= 8 else { throw CheckpointError("\(path) is not a safetensors file (\(length) bytes)") }
        guard let mapped = mmap(nil, length, PROT_READ, MAP_PRIVATE, fd, 0), mapped != MAP_FAILED else {
            throw CheckpointError("cannot map \(path)")
        }
        base = mapped
        let headerLength = Int(base.loadUnaligned(as: UInt64.self).littleEndian)
        guard headerLength > 0, 8 + headerLength <= length else {
            munmap(base, length)
            throw CheckpointError("\(path): header length \(headerLength) does not fit the file of \(length) bytes")
        }
        dataStart = 8 + headerLength
        let header = Data(bytes: base + 8, count: headerLength)
        guard let json = try? JSONSerialization.jsonObject(with: header) as? [String: Any] else {
            munmap(base, length)
            throw CheckpointError("\(path): the header is not a JSON object")
        }
        var entries: [String: Entry] = [:]
        for (name, value) in json where name != "__metadata__" {
            guard let item = value as? [String: Any], let dtype = item["dtype"] as? String,
                let shape = item["shape"] as? [Int], let offsets = item["data_offsets"] as? [Int], offsets.count == 2
            else {
                munmap(base, length)
                throw CheckpointError("\(path): malformed header entry for '\(name)'")
            }
            guard offsets[0] >= 0, offsets[0] <= offsets[1], dataStart + offsets[1] <= length else {
                munmap(base, length)
                throw CheckpointError("\(path): '\(name)' byte range \(offsets) lies outside the file")
            }
            entries[name] = Entry(dtype: dtype, shape: shape, begin: offsets[0], end: offsets[1])
        }
        self.entries = entries
    }

    deinit {
        munmap(base, length)
    }

    static func elementSize(_ dtype: String) -> Int? {
        switch dtype {
        case "F32": 4
        case "F16", "BF16": 2
        default: nil
        }
    }

    /// The storage type Switchyard keeps the tensor in (F32, F16, BF16).
    public func dtype(of name: String) throws -> DType {
        guard let e = entries[name] else { throw CheckpointError("\(path): no tensor '\(name)'") }
        switch e.dtype {
        case "F32": return .f32
        case "F16": return .f16
        case "BF16": return .bf16
        default: throw CheckpointError("\(path): '\(name)' has dtype \(e.dtype); expected F32, F16 or BF16")
        }
    }

    /// The values of tensor `name`, widened to Float.
    public func floats(_ name: String) throws -> (values: [Float], shape: [Int], dtype: DType) {
        guard let e = entries[name] else { throw CheckpointError("\(path): no tensor '\(name)'") }
        let dtype = try dtype(of: name)
        let count = e.shape.reduce(1, *)
        guard count * dtype.size == e.end - e.begin else {
            throw CheckpointError(
                "\(path): '\(name)' has shape \(e.shape) of \(e.dtype) but \(e.end - e.begin) bytes")
        }
        let p = UnsafeRawPointer(base + dataStart + e.begin)
        var out = [Float](repeating: 0, count: count)
        switch dtype {
        case .f32:
            for i in 0..<count { out[i] = Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .f16:
            for i in 0..<count { out[i] = FloatBits.fromF16(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        case .bf16:
            for i in 0..<count { out[i] = FloatBits.fromBF16(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        case .i32: break
        }
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
            case .i32:
                throw CheckpointError("'\(t.name)': i32 tensors are not written")
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
