import Foundation
import Logging
import ServiceLifecycle
import Store
import Synchronization

/// Where this node's container alarms go (OOM kills, storage over the threshold, crash loops): first to a local
/// spool — one file per alarm, written and fsynced before `raise` returns, named by time — then into the store's
/// alarms table by one drainer, oldest first, each with its own request id (a retry after a crash between the
/// store write and the file's removal stores it once). While the store has no quorum, or the node restarts, the
/// spool keeps them: an alarm is never lost, and it keeps the time it happened. An alarm the store refuses for
/// good (its container was deleted meanwhile) is dropped with a log line; an unreadable spool file is moved aside.
///
/// A record is written to a temporary name (`.TOKEN-NAME`, the token drawn per process), fsynced, then renamed: a
/// node killed between the two leaves a complete record under the temporary name, which the next start takes in (a
/// cut-short one, which cannot decode, is moved aside).
public final class AlarmSpool: AlarmSink, Service, Sendable {
    struct Record: Codable, Equatable {
        var requestID: String
        var uid: Int64
        var level: Int
        var message: String
        var atMs: Int64
    }

    private let dir: String
    private let options: StoreClient.Options
    private let logger: Logger
    private let wake = WakeSignal()
    /// Why the store was last unreachable (for the waiting log line).
    private let lastUnreachable = Mutex<String>("")
    private static let sequence = Atomic<Int>(0)

    public init(dir: String, options: StoreClient.Options, logger: Logger) {
        self.dir = dir
        self.options = options
        self.logger = logger
    }

    public func raise(uid: Int64, level: Int, message: String) async {
        let record = Record(requestID: "alarm-" + UUID().uuidString.lowercased(), uid: uid, level: level, message: message,
                            atMs: Int64(Date().timeIntervalSince1970 * 1000))
        do {
            try spool(record)
        } catch {
            logger.error("alarm spool: cannot write to \(dir) (\(error)); the alarm goes to the store directly and is lost if that fails",
                         metadata: ["container": "\(uid)", "message": "\(message)"])
            _ = await deliver(record)
            return
        }
        wake.notify()
    }

    /// Alarms waiting in the spool (for status and tests).
    public var pending: Int { files().count }

    public func run() async throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        recoverTemporaries()
        let waiting = files().count
        if waiting > 0 { logger.notice("alarm spool: \(waiting) alarm(s) from before the restart to store") }
        let wake = self.wake
        await withGracefulShutdownHandler {
            var delay = Duration.milliseconds(500)
            var waiting = WaitReport()
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                if await drain() {
                    if let waited = waiting.reset() {
                        logger.notice("alarm spool: the store is reachable again; the waiting alarms are stored", metadata: ["waited_s": "\(waited)"])
                    }
                    delay = .milliseconds(500)
                    await wake.wait(timeout: .seconds(60))   // a new alarm, or a file dropped in by hand
                } else {
                    // Said when it starts and every 30 s while it lasts: an alarm that waits is never silent.
                    if waiting.due() {
                        logger.warning("alarm spool: \(pending) alarm(s) wait for the store (\(lastUnreachable.withLock { $0 })); kept in \(dir), retried every \(min(delay * 2, .seconds(8)))")
                    }
                    await wake.wait(timeout: delay)
                    delay = min(delay * 2, .seconds(8))
                }
            }
        } onGracefulShutdown: {
            wake.notify()
        }
        let left = files().count
        if left > 0 { logger.notice("alarm spool: \(left) alarm(s) kept in \(dir) for the next start") }
    }

    /// Stores every spooled alarm, oldest first; false when the store could not be reached (try again later).
    func drain() async -> Bool {
        for name in files() {
            let path = dir + "/" + name
            guard let data = FileManager.default.contents(atPath: path) else { continue }
            guard let record = try? JSONDecoder().decode(Record.self, from: data) else {
                let aside = dir + "/unreadable-" + name
                _ = rename(path, aside)
                logger.error("alarm spool: \(path) is not an alarm record; moved to \(aside)")
                continue
            }
            switch await deliver(record) {
            case .stored, .refused:
                _ = unlink(path)
            case .unreachable:
                return false
            }
        }
        return true
    }

    enum Outcome { case stored, refused, unreachable }

    private func deliver(_ record: Record) async -> Outcome {
        let client = StoreClient(options: options, logger: logger)
        defer { Task { await client.close() } }
        do {
            _ = try await AdminStore(client: client).raiseAlarm(containerUID: record.uid, level: record.level, message: record.message,
                                                                requestID: record.requestID, atMs: record.atMs)
            logger.notice("alarm stored", metadata: ["container": "\(record.uid)", "message": "\(record.message)"])
            return .stored
        } catch .invalidInput(let why), .rejected(let why) {
            logger.warning("alarm dropped: the store refuses it (\(why))", metadata: ["container": "\(record.uid)", "message": "\(record.message)"])
            return .refused
        } catch {
            lastUnreachable.withLock { $0 = "\(error)" }
            return .unreachable
        }
    }

    /// When the spool started waiting for the store and when it last said so.
    struct WaitReport {
        var since: ContinuousClock.Instant?
        var said: ContinuousClock.Instant?

        /// True at the first failed round and then every 30 s.
        mutating func due(now: ContinuousClock.Instant = .now) -> Bool {
            if since == nil { since = now }
            guard said.map({ now - $0 >= .seconds(30) }) ?? true else { return false }
            said = now
            return true
        }

        /// Seconds waited, when the spool was waiting.
        mutating func reset(now: ContinuousClock.Instant = .now) -> Int64? {
            defer { (since, said) = (nil, nil) }
            return since.map { (now - $0).components.seconds }
        }
    }

    /// Records left under their temporary name by an earlier process killed between fsync and rename: a complete
    /// one is taken in under its final name, a cut-short one moved aside. This process's own are left alone (a
    /// `raise` may be writing one now).
    func recoverTemporaries() {
        let own = Self.temporaryPrefix
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter {
            $0.hasPrefix(".") && $0.hasSuffix(".json") && !$0.hasPrefix(own)
        }
        for name in names.sorted() {
            let path = dir + "/" + name
            // ".TOKEN-FINAL": the final name follows the first "-".
            guard let dash = name.firstIndex(of: "-") else { continue }
            let final = String(name[name.index(after: dash)...])
            if let data = FileManager.default.contents(atPath: path), (try? JSONDecoder().decode(Record.self, from: data)) != nil,
               !final.isEmpty, rename(path, dir + "/" + final) == 0 {
                logger.notice("alarm spool: took in \(final), written by a process that stopped before it was filed")
            } else {
                let aside = dir + "/unreadable-" + name.dropFirst()
                _ = rename(path, aside)
                logger.error("alarm spool: \(path) is a cut-short alarm record (its process stopped while writing it); moved to \(aside)")
            }
        }
    }

    /// This process's temporary names start with it: `.TOKEN-`, a token drawn at start (not the pid, which a
    /// node started after a reboot may share with the one that died).
    static let temporaryPrefix = "." + String(UInt64.random(in: 1...UInt64.max), radix: 16) + "-"

    private func spool(_ record: Record) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        // Millisecond, then a per-process sequence: alarms raised in the same millisecond drain in the order raised.
        let sequence = AlarmSpool.sequence.wrappingAdd(1, ordering: .relaxed).oldValue
        let name = String(format: "%013lld-%010ld-", record.atMs, sequence % 1_000_000_000) + record.requestID + ".json"
        let temporary = dir + "/" + Self.temporaryPrefix + name
        let data = try JSONEncoder().encode(record)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: temporary]) }
        let written = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == data.count, synced, rename(temporary, dir + "/" + name) == 0 else {
            _ = unlink(temporary)
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: temporary])
        }
        let dirFD = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            _ = fsync(dirFD)
            close(dirFD)
        }
    }

    private func files() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") && !$0.hasPrefix("unreadable-") }.sorted()
    }
}

