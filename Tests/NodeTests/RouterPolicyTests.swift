import Testing
@testable import Node

@Suite struct RouterPolicyTests {
    @Test func noPickIs404ThenTheStatusSaysWhyNoBackend() {
        #expect(RouterPolicy.noPick(host: "a.test", attempts: 0, hostHasKey: false) == .noApplication(host: "a.test"))
        #expect(RouterPolicy.noPick(host: "a.test", attempts: 0, hostHasKey: true) == .noLiveBackend(host: "a.test"))
        #expect(RouterPolicy.noPick(host: "a.test", attempts: 2, hostHasKey: true) == .noBackendAccepted(host: "a.test", attempts: 2))
        #expect(RouterPolicy.answer(.noApplication(host: "a.test")).status == 404)
        #expect(RouterPolicy.answer(.noLiveBackend(host: "a.test")).status == 503)
        #expect(RouterPolicy.answer(.noBackendAccepted(host: "a.test", attempts: 2)).status == 502)
        #expect(RouterPolicy.noLocalPick(host: "a.test", attempts: 0) == .noLocalBackend(host: "a.test"))
        #expect(RouterPolicy.noLocalPick(host: "a.test", attempts: 1) == .localBackendsUnreachable)
    }

    @Test func everyErrorPageHasOneShapeAndRelayHopsClose() {
        let refusals: [RouterPolicy.Refusal] = [
            .hostTooLong, .malformed("x"), .headersTooLarge, .headerTimeout, .chunkedBodyTooLarge(limitBytes: 8 << 20), .noApplication(host: "h"),
            .noLiveBackend(host: "h"), .noBackendAccepted(host: "h", attempts: 1), .backendUnreachable(host: "h", attempts: 3, timedOut: false),
            .backendUnreachable(host: "h", attempts: 3, timedOut: true), .invalidResponse("bad"), .closedWithoutResponse(nil),
            .applicationTimeout(seconds: 60), .badBackendAddress("x"), .noLocalBackend(host: "h"), .localBackendsUnreachable,
            .relayRequestRefused("no HTTP_HOST"),
        ]
        for refusal in refusals {
            let answer = RouterPolicy.answer(refusal)
            #expect(answer.body.hasPrefix("\(answer.status) \(answer.reason): ") && answer.body.hasSuffix("\n"), "\(refusal)")
            #expect(answer.contentType == "text/plain; charset=utf-8" && answer.extraHeaders.map(\.0) == ["Server"], "\(refusal)")
            #expect((400..<600).contains(answer.status))
        }
        #expect(RouterPolicy.answer(.backendUnreachable(host: "h", attempts: 3, timedOut: true)).status == 504)
        #expect(RouterPolicy.answer(.chunkedBodyTooLarge(limitBytes: 8 << 20)).body == "413 Payload Too Large: chunked request body over 8 MiB; send Content-Length to stream larger uploads\n")
        #expect(RouterPolicy.answer(.localBackendsUnreachable).close && RouterPolicy.answer(.relayRequestRefused("x")).close)
        #expect(!RouterPolicy.answer(.noLiveBackend(host: "h")).close, "a 503 keeps the client's connection")
        #expect(RouterPolicy.answer(.hostTooLong).close && RouterPolicy.answer(.headersTooLarge).close, "an undelimited request closes")
    }

    @Test func aStalledRequestHeadGets408AndTheConnectionCloses() {
        let answer = RouterPolicy.answer(.headerTimeout)
        #expect(answer.status == 408 && answer.close)
        #expect(answer.body == "408 Request Timeout: request headers not received in time\n")
        let raw = RouterPolicy.raw(answer, minor: 1, keepAlive: false)
        #expect(raw.hasPrefix("HTTP/1.1 408 Request Timeout\r\n") && raw.contains("Connection: close\r\n") && raw.hasSuffix("\r\n\r\n" + answer.body))
    }

    @Test func modifier123IsSentAs0() {
        #expect(RouterPolicy.requestModifier1(123) == 0)
        #expect(RouterPolicy.requestModifier1(0) == 0 && RouterPolicy.requestModifier1(5) == 5 && RouterPolicy.requestModifier1(255) == 255)
    }

    @Test func rawAnswersFollowTheClientsVersionAndMethod() {
        let answer = RouterPolicy.answer(.noLiveBackend(host: "h"))
        let keep10 = RouterPolicy.raw(answer, minor: 0, keepAlive: true)
        #expect(keep10.hasPrefix("HTTP/1.0 503 Service Unavailable\r\n") && keep10.contains("Connection: keep-alive\r\n"))
        let close11 = RouterPolicy.raw(answer, minor: 1, keepAlive: false, head: true)
        #expect(close11.contains("Connection: close\r\n") && close11.hasSuffix("\r\n\r\n"), "HEAD: headers only")
        #expect(close11.contains("Content-Length: \(answer.body.utf8.count)\r\n"))
        let lord = RouterPolicy.raw(RouterPolicy.lord("{\"name\":\"n1\"}"), minor: 1, keepAlive: true)
        #expect(lord.hasPrefix("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n") && lord.contains("Cache-Control: no-store\r\n"))
        #expect(lord.hasSuffix("\r\n\r\n{\"name\":\"n1\"}\n"))
        #expect(RouterPolicy.isLordRequest(method: "GET", uri: "/.legion/lord") && !RouterPolicy.isLordRequest(method: "POST", uri: "/.legion/lord"))
    }

    @Test func retriesOnlyReplayableUnansweredRequestsUpToTheSetting() {
        #expect(RouterPolicy.retry(attempts: 1, maxRetries: 3, replayable: true, answerStarted: false))
        #expect(!RouterPolicy.retry(attempts: 3, maxRetries: 3, replayable: true, answerStarted: false))
        #expect(!RouterPolicy.retry(attempts: 1, maxRetries: 3, replayable: false, answerStarted: false), "a streamed body cannot be sent again")
        #expect(!RouterPolicy.retry(attempts: 1, maxRetries: 3, replayable: true, answerStarted: true), "half an answer cannot be taken back")
    }
}
