import Foundation

/// How an alarm reaches a container's channel, and what to do after an attempt — decided here once, for every
/// channel, and unit-tested; `AlarmDeliveryService` only does the I/O.
///
/// Channels are uwsgi.it's (Slack webhook, Pushover, Pushbullet) plus a generic webhook. Every request carries
/// `Idempotency-Key: legion-alarm-<id>-<channel>`: the store records a delivery after the endpoint answered, so a
/// Lord that dies in between makes its successor send it again — at-least-once on the wire, exactly-once for a
/// receiver that honours the key (the generic webhook body carries the alarm id too).
public enum AlarmDelivery {
    public enum Channel: String, Sendable, CaseIterable {
        case webhook, slack, pushover, pushbullet
    }

    /// One alarm and the container's channel settings, as read from the store.
    public struct Alarm: Sendable, Equatable {
        public var id: Int64
        public var uid: Int64
        public var containerName: String
        public var unixMs: Int64
        public var level: Int
        public var color: String
        public var message: String
        public var vassal: String?
        public var webhook: String?
        public var slackWebhook: String?
        public var pushoverUser: String?
        public var pushoverToken: String?
        public var pushoverSound: String?
        public var pushbulletToken: String?

        public init(id: Int64, uid: Int64, containerName: String, unixMs: Int64, level: Int, color: String, message: String, vassal: String? = nil,
                    webhook: String? = nil, slackWebhook: String? = nil, pushoverUser: String? = nil, pushoverToken: String? = nil,
                    pushoverSound: String? = nil, pushbulletToken: String? = nil) {
            self.id = id
            self.uid = uid
            self.containerName = containerName
            self.unixMs = unixMs
            self.level = level
            self.color = color
            self.message = message
            self.vassal = vassal
            self.webhook = webhook
            self.slackWebhook = slackWebhook
            self.pushoverUser = pushoverUser
            self.pushoverToken = pushoverToken
            self.pushoverSound = pushoverSound
            self.pushbulletToken = pushbulletToken
        }
    }

    public struct Request: Sendable, Equatable {
        public var method = "POST"
        public var url: String
        public var headers: [String]
        public var body: String
    }

    public struct Endpoints: Sendable, Equatable {
        public var pushover: String
        public var pushbullet: String

        public init(pushover: String, pushbullet: String) {
            self.pushover = pushover
            self.pushbullet = pushbullet
        }
    }

    /// uwsgi.it's level names (UwsgiItAlarmLevel).
    public static func levelName(_ level: Int) -> String {
        switch level {
        case 0: "system"
        case 1: "user"
        case 2: "exception"
        case 3: "traceback"
        case 4: "log"
        default: "level \(level)"
        }
    }

    /// The request for `channel`, or nil when the container has no complete settings for it (then the delivery
    /// fails for good: the settings were removed after the alarm was stored).
    public static func request(_ alarm: Alarm, channel: Channel, endpoints: Endpoints) -> Request? {
        let title = "\(alarm.containerName) (\(alarm.uid))"
        let text = "[\(title)] \(levelName(alarm.level)): \(alarm.message)"
        let idempotency = "Idempotency-Key: legion-alarm-\(alarm.id)-\(channel.rawValue)"
        func present(_ value: String?) -> String? { value.flatMap { $0.isEmpty ? nil : $0 } }
        switch channel {
        case .webhook:
            guard let url = present(alarm.webhook) else { return nil }
            let body = JSONValue.object([
                ("id", .int(alarm.id)), ("container", .int(alarm.uid)), ("container_name", .string(alarm.containerName)),
                ("unix", .int(alarm.unixMs / 1000)), ("unix_ms", .int(alarm.unixMs)), ("level", .int(Int64(alarm.level))),
                ("level_name", .string(levelName(alarm.level))), ("color", .string(alarm.color)), ("msg", .string(alarm.message)),
                ("vassal", alarm.vassal.map { .string($0) } ?? .null),
            ]).serialized
            return Request(url: url, headers: ["Content-Type: application/json", idempotency, "X-Legion-Alarm: \(alarm.id)"], body: body)
        case .slack:
            guard let url = present(alarm.slackWebhook) else { return nil }
            return Request(url: url, headers: ["Content-Type: application/json", idempotency], body: JSONValue.object([("text", .string(text))]).serialized)
        case .pushover:
            guard let user = present(alarm.pushoverUser), let token = present(alarm.pushoverToken) else { return nil }
            var fields = [("token", token), ("user", user), ("title", title), ("message", "\(levelName(alarm.level)): \(alarm.message)"),
                          ("timestamp", String(alarm.unixMs / 1000))]
            if let sound = present(alarm.pushoverSound) { fields.append(("sound", sound)) }
            let body = fields.map { "\($0.0)=\(formEncode($0.1))" }.joined(separator: "&")
            return Request(url: endpoints.pushover, headers: ["Content-Type: application/x-www-form-urlencoded", idempotency], body: body)
        case .pushbullet:
            guard let token = present(alarm.pushbulletToken) else { return nil }
            let body = JSONValue.object([("type", .string("note")), ("title", .string(title)),
                                         ("body", .string("\(levelName(alarm.level)): \(alarm.message)"))]).serialized
            return Request(url: endpoints.pushbullet, headers: ["Content-Type: application/json", "Access-Token: \(token)", idempotency], body: body)
        }
    }

    /// `application/x-www-form-urlencoded` value encoding.
    static func formEncode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.append(Character(UnicodeScalar(byte)))
            case UInt8(ascii: " "): out.append("+")
            default: out += String(format: "%%%02X", byte)
            }
        }
        return out
    }

    /// What an attempt's outcome means.
    public enum Outcome: Sendable, Equatable {
        case delivered
        /// Try again at `nextMs`.
        case retry(nextMs: Int64, reason: String)
        /// Stop: the endpoint refused for good, or retries ran past the give-up time.
        case failed(reason: String)
    }

    /// After attempt number `attempt` (1-based) of a delivery created at `createdMs`: 2xx → delivered; a 4xx other
    /// than 408/425/429 → failed (the request itself is wrong: a bad token or URL, retrying cannot help); anything
    /// else (no answer, 5xx, 408, 429) → retry after 1 s, 2 s, 4 s … capped at 5 minutes, until `giveUpMs` after
    /// creation. `jitter` in [0, 1) spreads retries of many alarms to one endpoint.
    public static func outcome(status: Int, error: String?, attempt: Int, createdMs: Int64, nowMs: Int64, giveUpMs: Int64,
                               jitter: Double) -> Outcome {
        precondition(attempt >= 1, "attempts are counted from 1")
        precondition((0..<1).contains(jitter), "jitter is a fraction in [0, 1)")
        if (200..<300).contains(status) { return .delivered }
        let reason = status == 0 ? (error ?? "no answer") : "HTTP \(status)" + (error.map { ": \($0)" } ?? "")
        if (400..<500).contains(status), ![408, 425, 429].contains(status) {
            return .failed(reason: reason + " (refused: check the channel's settings)")
        }
        let base = min(Int64(1000) << Int64(min(attempt - 1, 20)), 300_000)
        let next = nowMs + base + Int64(Double(base) * 0.2 * jitter)
        if next - createdMs > giveUpMs { return .failed(reason: reason + " (gave up after \(attempt) attempts)") }
        return .retry(nextMs: next, reason: reason)
    }
}
