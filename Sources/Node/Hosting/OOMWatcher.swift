import CRouterIO
import Foundation
import Logging
import Store
import Supervisor
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where container alarms go: the store's alarms table (uwsgi.it's system alarms, level 0), so the API and the
/// alarm delivery see them wherever they run — through the node's `AlarmSpool`.
public protocol AlarmSink: Sendable {
    func raise(uid: Int64, level: Int, message: String) async
}

/// Out-of-memory events of containers' memory cgroups (v1: an eventfd registered on `memory.oom_control`
/// through `cgroup.event_control`, what uwsgi.it's `alarm-eventfd` used), on one thread with an epoll loop.
/// The eventfd also fires when the cgroup is removed: that one is not an OOM and is ignored.
public final class OOMWatcher: @unchecked Sendable {
    // @unchecked: `watches` is behind `lock`; the epoll fd is used from the loop thread and, for add/del
    // (thread-safe in the kernel), from callers.
    private struct Watch {
        var uid: Int64
        var eventFD: Int32
        var controlFD: Int32
        var cgroup: String
        /// `oom_kill` when last seen: an event that does not raise it was the cgroup's removal, not an OOM.
        var kills: Int
    }

    private let lock = NSLock()
    private var watches: [Int64: Watch] = [:]
    private let epollFD: Int32
    private let onOOM: @Sendable (Int64, Int) -> Void
    private let logger: Logger
    private var started = false

    /// `onOOM(uid, oomKills)` runs on the watcher's thread.
    public init(logger: Logger, onOOM: @escaping @Sendable (Int64, Int) -> Void) {
        self.logger = logger
        self.onOOM = onOOM
        epollFD = crio_epoll_create()
    }

    public var watched: Set<Int64> { lock.withLock { Set(watches.keys) } }

    /// Starts watching a container's memory cgroup directory; false when it cannot (no such cgroup, no v1 memory
    /// controller).
    @discardableResult
    public func watch(uid: Int64, cgroup: String) -> Bool {
        guard epollFD >= 0, lock.withLock({ watches[uid] == nil }) else { return false }
        let control = open(cgroup + "/memory.oom_control", O_RDONLY | O_CLOEXEC)
        guard control >= 0 else { return false }
        let efd = crio_eventfd()
        guard efd >= 0 else { close(control); return false }
        let line = "\(efd) \(control)"
        let fd = open(cgroup + "/cgroup.event_control", O_WRONLY | O_CLOEXEC)
        guard fd >= 0, line.withCString({ write(fd, $0, strlen($0)) }) > 0 else {
            if fd >= 0 { close(fd) }
            close(efd)
            close(control)
            return false
        }
        close(fd)
        let kills = Self.oomKills(cgroup)
        lock.withLock { watches[uid] = Watch(uid: uid, eventFD: efd, controlFD: control, cgroup: cgroup, kills: kills) }
        _ = crio_epoll_add(epollFD, efd, UInt64(uid), 0, 0, 0)
        startIfNeeded()
        return true
    }

    public func unwatch(uid: Int64) {
        guard let w = lock.withLock({ watches.removeValue(forKey: uid) }) else { return }
        _ = crio_epoll_del(epollFD, w.eventFD)
        close(w.eventFD)
        close(w.controlFD)
    }

    private func startIfNeeded() {
        let start = lock.withLock { () -> Bool in
            defer { started = true }
            return !started
        }
        guard start else { return }
        let thread = Thread { [self] in
            ThreadName.set("legion-oom")
            loop()
        }
        thread.start()
    }

    private func loop() {
        var tokens = [UInt64](repeating: 0, count: 16)
        var events = [UInt32](repeating: 0, count: 16)
        while true {
            let n = crio_epoll_wait(epollFD, &tokens, &events, 16, -1)
            for i in 0..<Int(max(0, n)) {
                let uid = Int64(tokens[i])
                guard let w = lock.withLock({ watches[uid] }) else { continue }
                crio_eventfd_drain(w.eventFD)
                // Removal of the cgroup fires the eventfd too (and a restarted container has a new cgroup at the
                // same path): an OOM is an event after which oom_kill grows. It is updated a moment after the event.
                var kills = w.kills
                for _ in 0..<10 where kills <= w.kills {
                    usleep(20_000)
                    kills = Self.oomKills(w.cgroup)
                }
                if kills > w.kills {
                    lock.withLock { watches[uid]?.kills = kills }
                    onOOM(uid, kills)
                } else {
                    unwatch(uid: uid)   // gone or replaced: the next sync watches the new cgroup
                }
            }
        }
    }

    static func oomKills(_ cgroup: String) -> Int {
        guard let text = try? String(contentsOfFile: cgroup + "/memory.oom_control", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("oom_kill ") {
            return Int(line.split(separator: " ").last ?? "") ?? 0
        }
        return 0
    }
}
