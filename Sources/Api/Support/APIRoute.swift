import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Node

/// One operation of the HTTP API: its method, path, auth, documentation and handler, in one value.
///
/// The route table is the single source: the router is built from it and so is the OpenAPI document
/// (`OpenAPIDocument`), so the two cannot drift; schemathesis then checks the answers against the document.
public struct APIRoute: Sendable {
    public enum Auth: Sendable, Equatable {
        /// Anyone.
        case none
        /// A customer's credentials (401 without).
        case customer
        /// Credentials used when present and valid (news: public items only otherwise).
        case optionalCustomer
        /// A customer's credentials or the container's `?key=` alarm key.
        case customerOrAlarmKey
        /// An operator token (`Authorization: Bearer lgn_…`, made with `legion admin token add`).
        case `operator`
    }

    public enum Body: Sendable {
        case none
        /// A JSON body, documented with this schema.
        case json(JSONValue)
        /// The raw body is the value (alarm messages).
        case text
    }

    public struct QueryParameter: Sendable {
        public var name: String
        public var schema: JSONValue
        public var description: String
    }

    public struct Outcome: Sendable {
        public var status: Int
        public var description: String
        /// nil: no body documented.
        public var schema: JSONValue?
    }

    public var method: HTTPRequest.Method
    /// OpenAPI form: `/api/containers/{uid}`.
    public var path: String
    public var summary: String
    public var tag: String
    public var auth: Auth
    public var query: [QueryParameter]
    public var body: Body
    public var outcomes: [Outcome]
    public var handler: @Sendable (APICall) async throws(APIError) -> Response

    /// Path parameter names, in order.
    public var pathParameters: [String] {
        path.split(separator: "/").compactMap { part in
            part.hasPrefix("{") && part.hasSuffix("}") ? String(part.dropFirst().dropLast()) : nil
        }
    }

    /// Hummingbird form: `/api/containers/:uid`.
    var routerPath: String {
        "/" + path.split(separator: "/").map { part in
            part.hasPrefix("{") && part.hasSuffix("}") ? ":" + part.dropFirst().dropLast() : String(part)
        }.joined(separator: "/")
    }
}

/// What a handler gets: who calls, the parameters, the body.
public struct APICall: Sendable {
    public var customer: CustomerIdentity?
    /// The operator token's name (admin routes).
    public var operatorName: String?
    public var parameters: [String: String]
    public var query: [String: String]
    public var body: [UInt8]
    public var headers: HTTPFields
    /// The idempotency key of writes: the `X-Request-Id` header when valid, else a new id.
    public var requestID: String
    public var services: APIServices

    /// The authenticated customer (routes with `.customer` auth always have one).
    public var me: CustomerIdentity {
        get throws(APIError) {
            guard let customer else { throw .unauthorized }
            return customer
        }
    }

    public func json(allowed: Set<String>) throws(APIError) -> BodyReader {
        try BodyReader(JSONInput.parse(body), allowed: allowed)
    }

    /// A numeric path parameter; anything else is "not found" (uwsgi.it's routes only matched digits).
    public func number(_ name: String) throws(APIError) -> Int64 {
        guard let text = parameters[name], !text.isEmpty, text.count <= 18, text.allSatisfy(\.isASCII), let value = Int64(text), value >= 0 else {
            throw .notFound("\(name) must be a number")
        }
        return value
    }

    /// A container uid path parameter as the row id (uid - 30000); 403 for ids that cannot be containers.
    public func containerID(_ name: String = "uid") throws(APIError) -> Int64 {
        let uid = try number(name)
        guard uid > 30000 else { throw .forbidden("container uids start at 30001") }
        return uid - 30000
    }
}
