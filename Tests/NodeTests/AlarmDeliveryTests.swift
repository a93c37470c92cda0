import Foundation
import Testing
@testable import Node

@Suite struct AlarmDeliveryTests {
    let endpoints = AlarmDelivery.Endpoints(pushover: "https://push.example/1/messages.json", pushbullet: "https://pb.example/v2/pushes")
    var alarm: AlarmDelivery.Alarm {
        AlarmDelivery.Alarm(id: 42, uid: 30001, containerName: "web \"prod\"", unixMs: 1_796_000_000_123, level: 0, color: "#ff0000",
                            message: "disk 95% full & rising", vassal: "app.ini", webhook: "http://hooks.example/a",
                            slackWebhook: "https://hooks.slack.example/T/B/x", pushoverUser: "u1", pushoverToken: "t1", pushoverSound: "",
                            pushbulletToken: "pb1")
    }

    @Test func eachChannelGetsItsOwnFormatAndAnIdempotencyKey() throws {
        let hook = try #require(AlarmDelivery.request(alarm, channel: .webhook, endpoints: endpoints))
        #expect(hook.url == "http://hooks.example/a")
        #expect(hook.headers.contains("Idempotency-Key: legion-alarm-42-webhook"))
        let body = try #require(try JSONSerialization.jsonObject(with: Data(hook.body.utf8)) as? [String: Any])
        #expect(body["id"] as? Int == 42 && body["container"] as? Int == 30001 && body["unix"] as? Int == 1_796_000_000)
        #expect(body["msg"] as? String == "disk 95% full & rising" && body["level_name"] as? String == "system")
        #expect(body["container_name"] as? String == "web \"prod\"", "quotes escaped in JSON")

        let slack = try #require(AlarmDelivery.request(alarm, channel: .slack, endpoints: endpoints))
        let text = try #require(try JSONSerialization.jsonObject(with: Data(slack.body.utf8)) as? [String: String])["text"]
        #expect(text == "[web \"prod\" (30001)] system: disk 95% full & rising")

        let pushover = try #require(AlarmDelivery.request(alarm, channel: .pushover, endpoints: endpoints))
        #expect(pushover.url == endpoints.pushover)
        #expect(pushover.body.contains("token=t1&user=u1") && pushover.body.contains("message=system%3A+disk+95%25+full+%26+rising"))
        #expect(!pushover.body.contains("sound="), "an empty sound is not sent")

        let pushbullet = try #require(AlarmDelivery.request(alarm, channel: .pushbullet, endpoints: endpoints))
        #expect(pushbullet.url == endpoints.pushbullet && pushbullet.headers.contains("Access-Token: pb1"))
    }

    @Test func aChannelWithoutCompleteSettingsHasNoRequest() {
        var partial = alarm
        partial.pushoverToken = nil
        partial.webhook = ""
        #expect(AlarmDelivery.request(partial, channel: .pushover, endpoints: endpoints) == nil)
        #expect(AlarmDelivery.request(partial, channel: .webhook, endpoints: endpoints) == nil)
    }

    @Test func outcomesRetryWithBackoffUntilTheGiveUpTimeAndStopOnARefusal() {
        let created: Int64 = 1_000_000
        #expect(AlarmDelivery.outcome(status: 204, error: nil, attempt: 1, createdMs: created, nowMs: created, giveUpMs: 86_400_000, jitter: 0) == .delivered)
        #expect(AlarmDelivery.outcome(status: 0, error: "refused", attempt: 1, createdMs: created, nowMs: created, giveUpMs: 86_400_000, jitter: 0)
                == .retry(nextMs: created + 1000, reason: "refused"))
        #expect(AlarmDelivery.outcome(status: 503, error: nil, attempt: 4, createdMs: created, nowMs: created, giveUpMs: 86_400_000, jitter: 0)
                == .retry(nextMs: created + 8000, reason: "HTTP 503"))
        #expect(AlarmDelivery.outcome(status: 429, error: nil, attempt: 30, createdMs: created, nowMs: created, giveUpMs: 86_400_000, jitter: 0.5)
                == .retry(nextMs: created + 300_000 + 30_000, reason: "HTTP 429"), "capped at 5 minutes, plus jitter")
        guard case .failed(let why) = AlarmDelivery.outcome(status: 401, error: nil, attempt: 1, createdMs: created, nowMs: created,
                                                            giveUpMs: 86_400_000, jitter: 0) else {
            Issue.record("a 401 is not worth retrying")
            return
        }
        #expect(why.contains("HTTP 401") && why.contains("settings"))
        guard case .failed(let late) = AlarmDelivery.outcome(status: 500, error: nil, attempt: 9, createdMs: created, nowMs: created + 86_399_000,
                                                             giveUpMs: 86_400_000, jitter: 0) else {
            Issue.record("past the give-up time a delivery fails")
            return
        }
        #expect(late.contains("gave up after 9 attempts"))
    }

    @Test func theLordWaitsUntilTheNextDeliveryFallsDueWithinBounds() {
        #expect(AlarmDeliveryService.delay(untilMs: 5_000, nowMs: 1_000, longestMs: 30_000) == 4_000)
        #expect(AlarmDeliveryService.delay(untilMs: 900, nowMs: 1_000, longestMs: 30_000) == 100, "overdue: soon, not in a busy loop")
        #expect(AlarmDeliveryService.delay(untilMs: 90_000, nowMs: 1_000, longestMs: 30_000) == 30_000, "never longer than poll_ms")
    }
}
