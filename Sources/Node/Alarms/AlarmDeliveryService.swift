import CCurl
import Foundation
import Logging
import ServiceLifecycle
import Store
import Synchronization

/// Delivers stored alarms to their containers' channels. Runs on every node, acts only on the Lord (one deliverer
/// per cluster; a new Lord picks up where the old one stopped, from the store's delivery log).
///
/// Each round: the due `pending` rows of `alarm_deliveries` are claimed in one write (attempts + 1, `next_ms` moved
/// past the attempt's timeout, so no other deliverer takes them meanwhile), then each is sent on its own (libcurl on
/// a worker thread, `timeout_ms`) and its outcome written back (`AlarmDelivery.outcome`: delivered, retry with
/// backoff, or failed). An unreachable endpoint only delays its own rows: nothing waits for another delivery.
public final class AlarmDeliveryService: Service, Sendable {
    let settings: NodeConfig.AlarmDeliverySettings
    let options: StoreClient.Options
    let state: NodeState
    let logger: Logger
    private let inFlight = Mutex<Set<Int64>>([])

    private static let curlReady: Bool = {
        ccurl_global_init()
        return true
    }()

    /// The store's changes (a new alarm, a delivery outcome) start a round at once.
    let feed: DesiredStateFeed?

    public init(settings: NodeConfig.AlarmDeliverySettings, options: StoreClient.Options, state: NodeState, feed: DesiredStateFeed? = nil,
                logger: Logger) {
        self.settings = settings
        self.options = options
        self.state = state
        self.feed = feed
        self.logger = logger
    }

    public func run() async throws {
        _ = Self.curlReady
        let client = StoreClient(options: options, logger: logger)
        let endpoints = AlarmDelivery.Endpoints(pushover: settings.pushoverURL, pushbullet: settings.pushbulletURL)
        let wake = WakeSignal()
        let changes = Task { [feed] in
            guard let feed else { return }
            for await _ in feed.subscribe() { wake.notify() }
        }
        await cancelWhenGracefulShutdown {
            var delay = Duration.zero
            while !Task.isCancelled {
                await wake.wait(timeout: delay)
                guard !Task.isCancelled else { break }
                guard self.state.snapshot.legion?.isLord == true else {
                    delay = .seconds(1)   // a new Lord starts delivering within a second
                    continue
                }
                await self.round(client: client, endpoints: endpoints)
                delay = await self.untilNextDue(client: client)
            }
        }
        changes.cancel()
        await client.close()
    }

    /// How long until the earliest pending delivery falls due (a retry, a claim that ran out), at most `poll_ms`.
    func untilNextDue(client: StoreClient) async -> Duration {
        let longest = Int64(settings.pollMs)
        guard let next = try? await client.query("SELECT min(next_ms) FROM alarm_deliveries WHERE state = 'pending'").scalar?.int else {
            return .milliseconds(longest)
        }
        return .milliseconds(Self.delay(untilMs: next, nowMs: Int64(SystemClock.wallMillis()), longestMs: longest))
    }

    /// The wait before the next round: until `untilMs` (at least 100 ms: a row still overdue after a round, its claim
    /// not stored, is not asked about in a busy loop; at most `longestMs`).
    static func delay(untilMs: Int64, nowMs: Int64, longestMs: Int64) -> Int64 {
        precondition(longestMs >= 100, "the longest wait is at least 100 ms")
        return min(max(untilMs - nowMs, 100), longestMs)
    }

    static let dueSQL = """
        SELECT d.id, d.channel, d.attempts, d.ctime_ms, a.id, k.id + 30000, k.name, a.unix_ms, a.level, a.color, a.msg, a.vassal,
               k.alarm_webhook, k.slack_webhook, k.pushover_user, k.pushover_token, k.pushover_sound, k.pushbullet_token
        FROM alarm_deliveries d JOIN alarms a ON a.id = d.alarm_id JOIN containers k ON k.id = d.container_id
        WHERE d.state = 'pending' AND d.next_ms <= ? ORDER BY d.next_ms, d.id LIMIT 64
        """

    func round(client: StoreClient, endpoints: AlarmDelivery.Endpoints) async {
        let now = Int64(SystemClock.wallMillis())
        let rows: DqliteRows
        do {
            rows = try await client.query(Self.dueSQL, [.integer(now)])
        } catch {
            logger.debug("alarm delivery: store not readable; retrying", metadata: ["error": "\(error)"])
            return
        }
        let fresh = rows.rows.filter { row in
            guard let id = row[0].int else { return false }
            return inFlight.withLock { $0.insert(id).inserted }
        }
        guard !fresh.isEmpty else { return }
        let ids = fresh.compactMap { $0[0].int }
        // Claim: nobody (this node after a restart, or the next Lord) sends these again before the attempt is over.
        let claimUntil = now + Int64(settings.timeoutMs) + 5000
        do {
            _ = try await client.write(requestID: "alarm-claim-\(UUID().uuidString)", [
                .init("UPDATE alarm_deliveries SET attempts = attempts + 1, next_ms = ?, mtime_ms = \(StoreSchema.nowMs) "
                      + "WHERE state = 'pending' AND id IN (SELECT value FROM json_each(?))",
                      [.integer(claimUntil), .text("[" + ids.map(String.init).joined(separator: ",") + "]")]),
            ])
        } catch {
            inFlight.withLock { $0.subtract(ids) }
            logger.debug("alarm delivery: claim not stored; retrying", metadata: ["error": "\(error)"])
            return
        }
        for row in fresh {
            guard let id = row[0].int, let channel = row[1].string.flatMap(AlarmDelivery.Channel.init(rawValue:)) else { continue }
            let attempt = Int(row[2].int ?? 0) + 1
            let created = row[3].int ?? now
            let alarm = AlarmDelivery.Alarm(
                id: row[4].int ?? 0, uid: row[5].int ?? 0, containerName: row[6].string ?? "", unixMs: row[7].int ?? 0,
                level: Int(row[8].int ?? 0), color: row[9].string ?? "#ffffff", message: row[10].string ?? "", vassal: row[11].string,
                webhook: row[12].string, slackWebhook: row[13].string, pushoverUser: row[14].string, pushoverToken: row[15].string,
                pushoverSound: row[16].string, pushbulletToken: row[17].string)
            let request = AlarmDelivery.request(alarm, channel: channel, endpoints: endpoints)
            let timeout = settings.timeoutMs, giveUp = settings.giveUpSeconds * 1000
            Task {
                defer { self.inFlight.withLock { _ = $0.remove(id) } }
                let (status, error): (Int, String?)
                if let request {
                    (status, error) = await Self.send(request, timeoutMs: timeout)
                } else {
                    (status, error) = (400, "the container no longer has \(channel.rawValue) settings")
                }
                let outcome = AlarmDelivery.outcome(status: status, error: error, attempt: attempt, createdMs: created,
                                                    nowMs: Int64(SystemClock.wallMillis()), giveUpMs: giveUp, jitter: Double.random(in: 0..<1))
                await self.record(client: client, id: id, outcome: outcome, status: status, alarm: alarm, channel: channel, attempt: attempt)
            }
        }
    }

    func record(client: StoreClient, id: Int64, outcome: AlarmDelivery.Outcome, status: Int, alarm: AlarmDelivery.Alarm,
                channel: AlarmDelivery.Channel, attempt: Int) async {
        let statement: StoreClient.Statement
        var meta: Logger.Metadata = ["alarm": "\(alarm.id)", "container": "\(alarm.uid)", "channel": "\(channel.rawValue)", "attempt": "\(attempt)"]
        switch outcome {
        case .delivered:
            statement = .init("UPDATE alarm_deliveries SET state = 'delivered', delivered_ms = \(StoreSchema.nowMs), last_status = ?, last_error = NULL, "
                              + "mtime_ms = \(StoreSchema.nowMs) WHERE id = ?", [.integer(Int64(status)), .integer(id)])
            logger.info("alarm delivered", metadata: meta)
        case .retry(let next, let reason):
            statement = .init("UPDATE alarm_deliveries SET next_ms = ?, last_status = ?, last_error = ?, mtime_ms = \(StoreSchema.nowMs) WHERE id = ?",
                              [.integer(next), .integer(Int64(status)), .text(reason), .integer(id)])
            meta["retry_in_ms"] = "\(next - Int64(SystemClock.wallMillis()))"
            meta["reason"] = "\(reason)"
            logger.warning("alarm delivery failed; will retry", metadata: meta)
        case .failed(let reason):
            statement = .init("UPDATE alarm_deliveries SET state = 'failed', last_status = ?, last_error = ?, mtime_ms = \(StoreSchema.nowMs) WHERE id = ?",
                              [.integer(Int64(status)), .text(reason), .integer(id)])
            meta["reason"] = "\(reason)"
            logger.error("alarm delivery gave up", metadata: meta)
        }
        // The outcome must reach the store: a delivered alarm left 'pending' would be sent again after the claim.
        for _ in 0..<30 {
            do {
                _ = try await client.write(requestID: "alarm-outcome-\(id)-\(attempt)", [statement])
                return
            } catch {
                try? await Task.sleep(for: .seconds(1))
            }
        }
        logger.error("alarm delivery outcome not stored; the alarm may be sent again", metadata: meta)
    }

    /// One request through libcurl on a worker thread: (HTTP status or 0, curl's error).
    static func send(_ request: AlarmDelivery.Request, timeoutMs: Int) async -> (Int, String?) {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                var status = 0
                var errorBuffer = [CChar](repeating: 0, count: 512)
                var response = [CChar](repeating: 0, count: 2048)
                let headerStrings = request.headers.map { strdup($0) }
                defer { headerStrings.forEach { free($0) } }
                let headerPointers: [UnsafePointer<CChar>?] = headerStrings.map { $0.map { UnsafePointer($0) } }
                let body = Array(request.body.utf8)
                let code = headerPointers.withUnsafeBufferPointer { headers in
                    body.withUnsafeBufferPointer { bodyBytes in
                        bodyBytes.withMemoryRebound(to: CChar.self) { bodyChars in
                            ccurl_request(request.method, request.url, headers.baseAddress, Int32(headers.count), bodyChars.baseAddress, body.count,
                                          timeoutMs, &status, &response, response.count, &errorBuffer, errorBuffer.count)
                        }
                    }
                }
                let error = code == 0 ? nil : String(cString: errorBuffer)
                continuation.resume(returning: (status, error))
            }
        }
    }
}
