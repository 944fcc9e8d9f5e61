import Foundation

/// The OpenCL C sources of Switchyard: embedded into the library at build time from `Kernels/`,
/// or read from the folder `SWITCHYARD_KERNEL_DIR` names (for kernel work without a rebuild).
/// `#include "x.h"` lines are expanded here, so a program's source (and its cache key) covers
/// its headers.
public enum KernelLibrary {
    /// A kernel file that is neither embedded nor in the `SWITCHYARD_KERNEL_DIR` folder.
    public struct MissingKernelFile: Error, CustomStringConvertible {
        /// The file asked for, e.g. `routing.cl`.
        public let name: String
        /// The `SWITCHYARD_KERNEL_DIR` folder searched, or nil when the embedded copies were.
        public let folder: String?
        /// Which file is missing, and where it was looked for.
        public var description: String {
            if let folder { return "kernel file '\(name)' not found in SWITCHYARD_KERNEL_DIR=\(folder)" }
            return "kernel file '\(name)' is not embedded in this build"
        }
    }

    /// The folder kernels are read from instead of the embedded copies, if set.
    public static var overrideFolder: String? {
        guard let folder = ProcessInfo.processInfo.environment["SWITCHYARD_KERNEL_DIR"], !folder.isEmpty else {
            return nil
        }
        return folder
    }

    /// Names of the embedded kernel files.
    public static var embeddedFiles: [String] { EmbeddedKernels.files.keys.sorted() }

    /// The raw text of a kernel file.
    public static func text(of name: String) throws -> String {
        if let folder = overrideFolder {
            let url = URL(fileURLWithPath: folder).appendingPathComponent(name)
            guard let text = try? String(contentsOf: url, encoding: .utf8) else {
                throw MissingKernelFile(name: name, folder: folder)
            }
            return text
        }
        guard let text = EmbeddedKernels.files[name] else { throw MissingKernelFile(name: name, folder: nil) }
        return text
    }

    /// The source of `name` with its `#include "..."` lines replaced by the included files.
    public static func source(of name: String) throws -> String {
        var seen: Set<String> = []
        return try expand(name, seen: &seen)
    }

    private static func expand(_ name: String, seen: inout Set<String>) throws -> String {
        if seen.contains(name) { return "" }
        seen.insert(name)
        var out = ""
        for line in try text(of: name).split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("#include \""), let end = trimmed.dropFirst(10).firstIndex(of: "\"") {
                let included = String(trimmed.dropFirst(10)[..<end])
                out += try expand(included, seen: &seen)
                out += "\n"
            } else {
                out += line
                out += "\n"
            }
        }
        return out
    }
}
