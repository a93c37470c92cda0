import Foundation
import HTTPTypes
import Node
import Testing
@testable import Api

@Suite struct CustomerAPITests {
    @Test func throttleRefusesAfterTheLimitAndForgetsAfterTheWindow() {
        var throttle = LoginThrottle(windowMs: 60_000, maxFailuresPerClient: 5, maxFailuresPerUser: 3)
        #expect(throttle.retryAfter(client: "1.2.3.4", user: "alice", nowMs: 0) == nil)
        for t in 0..<3 { throttle.recordFailure(client: "1.2.3.4", user: "alice", nowMs: Int64(t) * 1000) }
        // The user is locked until the first failure leaves the window (60 s after t = 0).
        #expect(throttle.retryAfter(client: "5.6.7.8", user: "alice", nowMs: 10_000) == 50)
        #expect(throttle.retryAfter(client: "1.2.3.4", user: "bob", nowMs: 10_000) == nil)  // 3 client failures < 5
        #expect(throttle.retryAfter(client: "5.6.7.8", user: "alice", nowMs: 60_001) == nil)
        // The client limit across usernames (a spray).
        for (t, user) in ["u1", "u2", "u3", "u4", "u5"].enumerated() { throttle.recordFailure(client: "9.9.9.9", user: user, nowMs: 100_000 + Int64(t)) }
        #expect(throttle.retryAfter(client: "9.9.9.9", user: "fresh", nowMs: 100_010) != nil)
        throttle.prune(nowMs: 1_000_000)
        #expect(throttle.retryAfter(client: "9.9.9.9", user: "fresh", nowMs: 1_000_000) == nil)
    }

    @Test func credentialsParseBasicWithColonsAndHexHeaders() {
        var headers = HTTPFields()
        headers[.authorization] = "Basic " + Data("alice:pa:ss:word".utf8).base64EncodedString()
        #expect(CustomerAuthenticator.credentials(in: headers) == .init(username: "alice", password: "pa:ss:word"))
        headers[.authorization] = "Basic !!!not-base64"
        #expect(CustomerAuthenticator.credentials(in: headers) == nil)
        headers[.authorization] = "Basic " + Data("no-colon".utf8).base64EncodedString()
        #expect(CustomerAuthenticator.credentials(in: headers) == nil)
        var hex = HTTPFields()
        hex.append(HTTPField(name: HTTPField.Name("X-uwsgi-it-username") ?? .authorization, value: Data("bob".utf8).map { String(format: "%02x", $0) }.joined()))
        hex.append(HTTPField(name: HTTPField.Name("X-uwsgi-it-password") ?? .authorization, value: "7365637265743a31"))
        #expect(CustomerAuthenticator.credentials(in: hex) == .init(username: "bob", password: "secret:1"))
        #expect(CustomerAuthenticator.hexDecode("zz") == nil)
        #expect(CustomerAuthenticator.hexDecode("abc") == nil)
    }

    @Test func alarmRangesAreNumericAndStrict() throws {
        #expect(try AlarmRoutes.parseRange("5") == (0, 5, false))
        #expect(try AlarmRoutes.parseRange("9-10") == (9, 1, false))  // uwsgi.it compared "9" > "10" as strings
        #expect(try AlarmRoutes.parseRange("10-9") == (9, 1, true))
        for bad in ["6-a", "6-", "-a", "a", "", "1-2-3", "-1", "1e3", "٣"] {
            #expect(throws: APIError.rangeNotSatisfiable) { try AlarmRoutes.parseRange(bad) }
        }
    }

    @Test func bodiesAreTypedAndUnknownFieldsNamed() throws {
        let body = try BodyReader(JSONInput.parse(Array(#"{"a": 1, "b": "x", "c": true, "d": ["p", "q"], "e": null, "f": "12"}"#.utf8)),
                                  allowed: ["a", "b", "c", "d", "e", "f", "g"])
        #expect(try body.int("a") == 1)
        #expect(try body.int("f") == 12)
        #expect(try body.string("b") == "x")
        #expect(try body.bool("c") == true)
        #expect(try body.stringList("d") == ["p", "q"])
        #expect(try body.nullableString("e") == .some(nil))
        #expect(try body.string("g") == nil)
        #expect(throws: APIError.self) { try body.string("a") }
        #expect(throws: APIError.self) { try body.int("b") }
        #expect(throws: APIError.self) { try body.bool("b") }
        #expect(throws: APIError.self) { try body.int("a", range: 2...3) }
        do {
            _ = try BodyReader(JSONInput.parse(Array(#"{"memroy": 1}"#.utf8)), allowed: ["memory"])
            Issue.record("an unknown field was accepted")
        } catch {
            guard case .badRequest(let why) = error else { Issue.record("\(error)"); return }
            #expect(why.contains("memroy") && why.contains("memory"))
        }
        for bad in ["", "{", "[1]", "\"x\"", "{\"a\":}"] {
            #expect(throws: APIError.self) { _ = try BodyReader(JSONInput.parse(Array(bad.utf8)), allowed: ["a"]) }
        }
    }

    @Test func dnsQueryAndTXTAnswerRoundTrip() throws {
        let query = try #require(DNSMessage.query(id: 0x1234, name: "www.example.com"))
        #expect(Array(query[0..<2]) == [0x12, 0x34])
        #expect(Array(query[12...]) == [3] + Array("www".utf8) + [7] + Array("example".utf8) + [3] + Array("com".utf8) + [0, 0, 16, 0, 1])
        // An answer: the question echoed, one TXT record (two character-strings) with a compressed owner name.
        var answer: [UInt8] = [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]
        answer += Array(query[12...])
        let rdata: [UInt8] = [6] + Array("uwsgi:".utf8) + [4] + Array("abcd".utf8)
        answer += [0xc0, 0x0c, 0, 16, 0, 1, 0, 0, 0, 60, 0, UInt8(rdata.count)] + rdata
        #expect(try DNSMessage.txtStrings(answer: answer, id: 0x1234) == ["uwsgi:abcd"])
        #expect(throws: DNSMessage.ParseError.mismatchedID) { try DNSMessage.txtStrings(answer: answer, id: 1) }
        #expect(throws: DNSMessage.ParseError.truncated) { try DNSMessage.txtStrings(answer: Array(answer.dropLast(3)), id: 0x1234) }
        var nxdomain = Array(answer[0..<12])
        nxdomain[3] = 0x83
        #expect(try DNSMessage.txtStrings(answer: nxdomain, id: 0x1234) == [])
        var servfail = nxdomain
        servfail[3] = 0x82
        #expect(throws: DNSMessage.ParseError.serverFailure(rcode: 2)) { try DNSMessage.txtStrings(answer: servfail, id: 0x1234) }
        #expect(DNSMessage.query(id: 1, name: String(repeating: "a", count: 64) + ".com") == nil)
        #expect(DomainOwnershipCheck.candidates(for: "a.b.example.com") == ["a.b.example.com", "b.example.com", "example.com"])
    }

    @Test func theOpenAPIDocumentHasEveryRouteOnce() throws {
        let routes = NodeAPI.allRoutes
        let document = OpenAPIDocument.build(routes)
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(document.serialized.utf8)) as? [String: Any])
        let paths = try #require(parsed["paths"] as? [String: [String: Any]])
        var operationIDs = Set<String>()
        for route in routes {
            let operation = try #require(paths[route.path]?[route.method.rawValue.lowercased()] as? [String: Any], "\(route.method) \(route.path) undocumented")
            let id = try #require(operation["operationId"] as? String)
            #expect(operationIDs.insert(id).inserted, "operationId \(id) twice")
            let responses = try #require(operation["responses"] as? [String: Any])
            #expect(responses["503"] != nil && responses["400"] != nil)
            if route.auth != .none { #expect(responses["401"] != nil && responses["429"] != nil) }
            #expect(route.path.hasPrefix("/api/") == (route.auth != .operator), "\(route.path): customer routes under /api, operator routes under /admin")
            let parameters = (operation["parameters"] as? [[String: Any]] ?? []).filter { $0["in"] as? String == "path" }.compactMap { $0["name"] as? String }
            #expect(parameters == route.pathParameters)
        }
        #expect(paths.values.map(\.count).reduce(0, +) == routes.count, "the document has operations no route serves")
        // Every uwsgi.it customer route of the spec's table is served.
        for path in ["/api/me", "/api/me/containers", "/api/containers", "/api/containers/{uid}", "/api/containers/{uid}/domains",
                     "/api/regenerate_secret_uuid/{uid}", "/api/portmappings/{ip}", "/api/distros", "/api/custom_distros",
                     "/api/custom_distros/{uid}", "/api/custom_distro/{id}", "/api/domains", "/api/domains/{id}",
                     "/api/domains/{id}/containers", "/api/tags", "/api/tags/{id}", "/api/news", "/api/loopboxes", "/api/loopboxes/{id}",
                     "/api/alarms", "/api/alarms/{id}", "/api/alarms/raise/{uid}", "/api/alarms/trigger/{uid}", "/api/alarm_key/{uid}",
                     "/api/metrics/container.io.write/{uid}", "/api/metrics/domain.hits/{id}",
                     "/admin/customers", "/admin/servers", "/admin/legions", "/admin/distros", "/admin/containers", "/admin/domains", "/admin/news"] {
            #expect(paths[path] != nil, "\(path) is not served")
        }
    }

    @Test func errorsDecideStatusAndBodyInOnePlace() {
        #expect(APIError.unauthorized.response.headers[.wwwAuthenticate] == "Basic realm=\"uwsgi.it api\"")
        #expect(APIError.tooManyRequests(retryAfterSeconds: 7).response.headers[.retryAfter] == "7")
        #expect(APIError.forbidden(nil).body.serialized == #"{"error":"Forbidden"}"#)
        #expect(APIError.from(.noQuorum("x")).status == .serviceUnavailable)
        #expect(APIError.from(.rejected("UNIQUE constraint failed: tags.name"), conflict: "taken") == .conflict("taken"))
        #expect(CustomerSQL.hostname("my app_1.x") == "my-app-1-x")
    }
}
