import Foundation

/// Why a report file cannot be written at `path`, or nil when it can: the tools check their
/// output paths (`--json`, `--svg`, `--output`) with this before any work, so that a run of
/// minutes does not end in a write error, and a FIFO or device there cannot block the final write.
public func outputPathProblem(_ path: String) -> String? {
    if path.isEmpty { return "an empty path" }
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
        if isDir.boolValue { return "a folder, not a file" }
        guard let type = try? FileManager.default.attributesOfItem(atPath: path)[.type] as? FileAttributeType,
            type == .typeRegular
        else { return "not a regular file (a FIFO, device or socket)" }
        if !FileManager.default.isWritableFile(atPath: path) { return "a file that is not writable" }
        return nil
    }
    let folder = (path as NSString).deletingLastPathComponent
    let dir = folder.isEmpty ? "." : folder
    guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue,
        FileManager.default.isWritableFile(atPath: dir)
    else { return "the folder \(dir) does not exist or is not writable" }
    return nil
}
