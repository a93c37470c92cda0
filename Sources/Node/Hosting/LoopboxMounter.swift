import CMount
import Foundation
import Logging
import Store
import Synchronization

/// The shell of `LoopboxPlanner`: reads the loop mounts under each home (mountinfo, /sys/block/loopN), carries out
/// the plan with `CMount` (no path the customer controls is ever followed), and tells the customer in the
/// container's `logs/emperor.log` (as uwsgi.it did) and the operator in the node's log. Mounts are made on the host
/// under the home, which is a shared mount: they appear in the running container through its slave bind.
final class LoopboxMounter: Sendable {
    private let logger: Logger
    /// The last message per loopbox id, so a refusal is said once, not every pass.
    private let lastMessage = Mutex<[Int64: String]>([:])

    init(logger: Logger) {
        self.logger = logger
    }

    func sync(homes: [Int64: String], loopboxes: [DesiredState.Loopbox]) {
        let mountinfo = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        let byUID = Dictionary(grouping: loopboxes, by: \.uid)
        for (uid, home) in homes {
            let mounted = LoopboxPlanner.mountedUnder(home: home, mountinfo: mountinfo).map { m in
                let sys = "/sys/block/loop\(m.device)"
                let backing = (try? String(contentsOfFile: sys + "/loop/backing_file", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
                let sectors = Int64((try? String(contentsOfFile: sys + "/size", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
                let deleted = backing?.hasSuffix(" (deleted)") ?? false
                return LoopboxPlanner.Mounted(mountpoint: m.mountpoint, device: m.device,
                                              backingFile: deleted ? nil : backing, imageDeleted: deleted, deviceBytes: sectors * 512, readOnly: m.readOnly)
            }
            let wanted = byUID[uid] ?? []
            guard !wanted.isEmpty || !mounted.isEmpty else { continue }
            let actions = LoopboxPlanner.plan(wanted: wanted, mounted: mounted, home: home) { image in
                let size = cmount_image_size(home, image)
                return size >= 0 ? size : nil
            }
            for action in actions {
                var error = [CChar](repeating: 0, count: 512)
                switch action {
                case .unmount(let mountpoint, let reason):
                    if cmount_loopbox_umount(home, mountpoint, &error, error.count) == 0 {
                        tell(uid: uid, home: home, "loopbox on \(mountpoint) unmounted: \(reason)")
                    } else {
                        tell(uid: uid, home: home, "loopbox on \(mountpoint): \(Self.text(error))", warning: true)
                    }
                case .wait(let box, let reason):
                    sayOnce(uid: uid, home: home, id: box.id, "loopbox \(box.id): \(reason)")
                case .mount(let box):
                    let device = cmount_loopbox_mount(home, box.filename, box.mountpoint, box.readOnly ? 1 : 0, LoopboxPlanner.minimumImageBytes,
                                                      &error, error.count)
                    if device >= 0 {
                        lastMessage.withLock { _ = $0.removeValue(forKey: box.id) }
                        if !box.readOnly { _ = chown(home + "/" + box.mountpoint, uid_t(uid), gid_t(uid)) }
                        tell(uid: uid, home: home, "loopbox \(box.id): \(box.filename) mounted on \(box.mountpoint)\(box.readOnly ? " (read-only)" : "") (/dev/loop\(device))")
                    } else {
                        sayOnce(uid: uid, home: home, id: box.id, "loopbox \(box.id): \(Self.text(error))")
                    }
                }
            }
        }
    }

    /// Unmounts every loopbox under `home` (before the home itself goes).
    func unmountAll(home: String) {
        let mountinfo = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        for m in LoopboxPlanner.mountedUnder(home: home, mountinfo: mountinfo).sorted(by: { $0.mountpoint.count > $1.mountpoint.count }) {
            var error = [CChar](repeating: 0, count: 512)
            if cmount_loopbox_umount(home, m.mountpoint, &error, error.count) != 0 {
                logger.warning("hosting: \(home): \(Self.text(error))")
            }
        }
    }

    private func sayOnce(uid: Int64, home: String, id: Int64, _ message: String) {
        let repeated = lastMessage.withLock { state -> Bool in
            defer { state[id] = message }
            return state[id] == message
        }
        if !repeated { tell(uid: uid, home: home, message, warning: true) }
    }

    private static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private func tell(uid: Int64, home: String, _ message: String, warning: Bool = false) {
        if warning {
            logger.warning("hosting: container \(uid): \(message)")
        } else {
            logger.notice("hosting: container \(uid): \(message)")
        }
        let stamp = ISO8601DateFormatter().string(from: Date())
        let line = "\(stamp) legion: \(message)\n"
        let fd = open(home + "/logs/emperor.log", O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = line.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }
}
