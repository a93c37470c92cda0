import Hummingbird
import Node
import Store

/// Every error the customer API answers, and the one place that decides its status and body.
///
/// uwsgi.it's bodies are kept (`{"error": "Forbidden"}` …) and a `reason` is added wherever we know what the
/// caller should change: clients that read only `error` keep working, people get a message they can act on.
public enum APIError: Error, Sendable, Equatable {
    /// Malformed JSON, a wrong type, an unknown field (uwsgi.it answered 500 or ignored them).
    case badRequest(String)
    case unauthorized
    /// The admin API without a valid operator token.
    case unauthorizedOperator
    /// Not yours, or input uwsgi.it rejects with 403 (missing required keys, failed checks).
    case forbidden(String?)
    case notFound(String?)
    case methodNotAllowed
    case conflict(String?)
    case tooLarge(limit: Int)
    case rangeNotSatisfiable
    case tooManyRequests(retryAfterSeconds: Int)
    /// The store has no quorum or stayed busy: retry later (never a 500).
    case unavailable(String)

    public var status: HTTPResponse.Status {
        switch self {
        case .badRequest: .badRequest
        case .unauthorized, .unauthorizedOperator: .unauthorized
        case .forbidden: .forbidden
        case .notFound: .notFound
        case .methodNotAllowed: .methodNotAllowed
        case .conflict: .conflict
        case .tooLarge: .contentTooLarge
        case .rangeNotSatisfiable: .rangeNotSatisfiable
        case .tooManyRequests: .tooManyRequests
        case .unavailable: .serviceUnavailable
        }
    }

    public var body: JSONValue {
        func error(_ text: String, _ reason: String?) -> JSONValue {
            .object([("error", .string(text))] + (reason.map { [("reason", .string($0))] } ?? []))
        }
        switch self {
        case .badRequest(let why): return error("Bad Request", why)
        case .unauthorized: return error("Unauthorized", nil)
        case .unauthorizedOperator: return error("Unauthorized", "send Authorization: Bearer TOKEN (legion admin token add NAME makes one)")
        case .forbidden(let why): return error("Forbidden", why)
        case .notFound(let why): return error("Not found", why)
        case .methodNotAllowed: return error("Method not allowed", nil)
        case .conflict(let why): return error("Conflict", why)
        case .tooLarge(let limit): return error("Request entity too large", "the body must be at most \(limit) bytes")
        case .rangeNotSatisfiable: return error("Requested Range Not Satisfiable", "range must be N or A-B with non-negative integers")
        case .tooManyRequests(let seconds): return error("Too Many Requests", "too many failed logins; retry in \(seconds) s")
        case .unavailable(let why): return error("Service Unavailable", why)
        }
    }

    public var response: Response {
        var response = APIResponse.json(body, status: status)
        switch self {
        case .unauthorized:
            response.headers[.wwwAuthenticate] = "Basic realm=\"uwsgi.it api\""
        case .unauthorizedOperator:
            response.headers[.wwwAuthenticate] = "Bearer realm=\"legion admin\""
        case .tooManyRequests(let seconds):
            response.headers[.retryAfter] = String(seconds)
        case .unavailable:
            response.headers[.retryAfter] = "1"
        default: break
        }
        return response
    }

    /// A store failure as the API reports it: constraint and check failures are the caller's (409/403), quorum
    /// loss is temporary (503). Never a 500.
    public static func from(_ error: StoreError, conflict: String? = nil) -> APIError {
        switch error {
        case .noQuorum(let detail): return .unavailable("the store has no quorum right now (\(detail)); retry")
        case .unconfirmed(let id, _): return .unavailable("write \(id) was not confirmed; retry with the same X-Request-Id header, it applies at most once")
        case .rejected(let why):
            if why.contains("UNIQUE") || why.contains("constraint") { return .conflict(conflict ?? why) }
            return .conflict(why)
        case .invalidInput(let why): return .badRequest(why)
        case .configuration(let why): return .unavailable(why)
        case .schemaTooNew: return .unavailable(error.description)
        }
    }
}

/// Response helpers shared by every route (content type, CORS, no caching).
public enum APIResponse {
    public static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status,
                 headers: [.contentType: "application/json", .cacheControl: "no-store", .accessControlAllowOrigin: "*"],
                 body: .init(byteBuffer: ByteBuffer(string: value.serialized + "\n")))
    }

    public static func created() -> Response { json(.object([("message", .string("Created"))]), status: .created) }
    public static func ok() -> Response { json(.object([("message", .string("Ok"))])) }
}
