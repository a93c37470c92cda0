import Foundation
import Store

/// Loopboxes (uwsgi.it §2.7/§3.6), decided purely: which of a container's ext4 images to mount in its home and
/// which mounts to take down, from the store's rows and what is mounted now. The rules customers were promised:
/// paths relative to the home (no symlinks: `CMount` resolves beneath the home), ext4 only, images under 1 MiB are
/// not mounted, a deleted image is unmounted, a resized image is unmounted and mounted again at its new size (the
/// next pass), a removed loopbox is unmounted (its image is kept), a changed read-only flag remounts.
public enum LoopboxPlanner {
    public static let minimumImageBytes: Int64 = 1 << 20

    /// A loop mount found under a home.
    public struct Mounted: Sendable, Equatable {
        /// Relative to the home.
        public var mountpoint: String
        public var device: Int
        /// The image the loop device reads, as the kernel reports it (absolute; nil if unknown).
        public var backingFile: String?
        /// The kernel says the backing file was deleted.
        public var imageDeleted: Bool
        public var deviceBytes: Int64
        public var readOnly: Bool

        public init(mountpoint: String, device: Int, backingFile: String?, imageDeleted: Bool, deviceBytes: Int64, readOnly: Bool) {
            self.mountpoint = mountpoint
            self.device = device
            self.backingFile = backingFile
            self.imageDeleted = imageDeleted
            self.deviceBytes = deviceBytes
            self.readOnly = readOnly
        }
    }

    public enum Action: Sendable, Equatable {
        case mount(DesiredState.Loopbox)
        case unmount(mountpoint: String, reason: String)
        /// Wanted but not mountable now (said once to the customer; retried every pass).
        case wait(DesiredState.Loopbox, reason: String)
    }

    /// - Parameter imageBytes: the current size of an image (relative path), nil if it does not exist.
    public static func plan(wanted: [DesiredState.Loopbox], mounted: [Mounted], home: String, imageBytes: (String) -> Int64?) -> [Action] {
        var actions: [Action] = []
        var keep = Set<String>()
        let byMountpoint = Dictionary(wanted.map { ($0.mountpoint, $0) }, uniquingKeysWith: { a, _ in a })
        for m in mounted.sorted(by: { $0.mountpoint.count > $1.mountpoint.count }) {   // deepest first
            guard let box = byMountpoint[m.mountpoint] else {
                actions.append(.unmount(mountpoint: m.mountpoint, reason: "the loopbox was removed (its image is kept)"))
                continue
            }
            let size = imageBytes(box.filename)
            if m.imageDeleted || size == nil {
                actions.append(.unmount(mountpoint: m.mountpoint, reason: "its image \(box.filename) was deleted"))
            } else if let backing = m.backingFile, backing != home + "/" + box.filename {
                actions.append(.unmount(mountpoint: m.mountpoint, reason: "the loopbox now names another image (\(box.filename))"))
            } else if let size, size != m.deviceBytes {
                actions.append(.unmount(mountpoint: m.mountpoint, reason: "its image was resized (\(m.deviceBytes) → \(size) bytes); mounted again at the new size"))
            } else if m.readOnly != box.readOnly {
                actions.append(.unmount(mountpoint: m.mountpoint, reason: "its read-only flag changed; mounted again"))
            } else {
                keep.insert(m.mountpoint)
            }
        }
        for box in wanted.sorted(by: { $0.mountpoint.count < $1.mountpoint.count }) where !keep.contains(box.mountpoint) {   // parents first
            guard let size = imageBytes(box.filename) else {
                actions.append(.wait(box, reason: "image \(box.filename) is not a regular file beneath the home (missing, or a symlink): not mounted"))
                continue
            }
            guard size >= minimumImageBytes else {
                actions.append(.wait(box, reason: "image \(box.filename) is \(size) bytes; images under 1 MiB are not mounted"))
                continue
            }
            actions.append(.mount(box))
        }
        return actions
    }

    /// Loop mounts under `home` from /proc/self/mountinfo text (octal escapes decoded), with their devices.
    public static func mountedUnder(home: String, mountinfo: String) -> [(mountpoint: String, device: Int, readOnly: Bool)] {
        var out: [(String, Int, Bool)] = []
        let prefix = home + "/"
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 9, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
            let point = unescape(String(fields[4]))
            let source = String(fields[dash + 2])
            guard point.hasPrefix(prefix), source.hasPrefix("/dev/loop"), let device = Int(source.dropFirst("/dev/loop".count)) else { continue }
            let readOnly = fields[5].split(separator: ",").contains("ro")
            out.append((String(point.dropFirst(prefix.count)), device, readOnly))
        }
        return out
    }

    static func unescape(_ text: String) -> String {
        guard text.contains("\\") else { return text }
        var bytes: [UInt8] = []
        let utf8 = Array(text.utf8)
        var i = 0
        while i < utf8.count {
            if utf8[i] == UInt8(ascii: "\\"), i + 3 < utf8.count,
               let v = UInt8(String(decoding: utf8[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                bytes.append(v)
                i += 4
            } else {
                bytes.append(utf8[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
