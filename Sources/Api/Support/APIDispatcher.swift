import Foundation
import HTTPTypes
import Hummingbird
import Node
import Store

/// Turns the route table into Hummingbird routes: body limits, authentication, request ids, CORS and the
/// error mapping happen here once for every route.
public enum APIDispatcher {
    public static func register(_ routes: [APIRoute], on router: Router<APIRequestContext>, services: APIServices) {
        var optionsPaths = Set<String>()
        for route in routes {
            router.on(RouterPath(route.routerPath), method: route.method) { request, context -> Response in
                await dispatch(route, request: request, context: context, services: services)
            }
            if optionsPaths.insert(route.routerPath).inserted {
                router.on(RouterPath(route.routerPath), method: .options) { _, _ -> Response in
                    var response = Response(status: .ok)
                    response.headers[.accessControlAllowOrigin] = "*"
                    response.headers[.accessControlAllowMethods] = "GET,POST,DELETE,OPTIONS"
                    response.headers[.accessControlAllowHeaders] = "X-uwsgi-it-username,X-uwsgi-it-password,Authorization,Content-Type,X-Request-Id"
                    return response
                }
            }
        }
    }

    static func dispatch(_ route: APIRoute, request: Request, context: APIRequestContext, services: APIServices) async -> Response {
        var request = request
        do throws(APIError) {
            let body = try await readBody(&request, limit: services.maxBody, expected: route.body)
            let client = context.client(request)
            var customer: CustomerIdentity?
            var operatorName: String?
            let credentials = CustomerAuthenticator.credentials(in: request.headers)
            switch route.auth {
            case .none:
                break
            case .customer:
                guard let credentials else { throw .unauthorized }
                customer = try await services.authenticator.authenticate(credentials, client: client)
            case .optionalCustomer:
                if let credentials {
                    customer = try? await services.authenticator.authenticate(credentials, client: client)
                }
            case .operator:
                operatorName = try await services.operators.authenticate(request.headers, client: client)
            case .customerOrAlarmKey:
                // A `?key=` decides alone (clients that always send some credentials still work with a key).
                if request.uri.queryParameters["key"] == nil {
                    guard let credentials else { throw .unauthorized }
                    customer = try await services.authenticator.authenticate(credentials, client: client)
                }
            }
            var query: [String: String] = [:]
            for (key, value) in request.uri.queryParameters { query[String(key)] = String(value) }
            var parameters: [String: String] = [:]
            for name in route.pathParameters { parameters[name] = context.parameters.get(name) }
            let call = APICall(customer: customer, operatorName: operatorName, parameters: parameters, query: query, body: body, headers: request.headers,
                               requestID: requestID(request.headers), services: services)
            return try await route.handler(call)
        } catch {
            if case .unavailable(let why) = error {
                services.logger.warning("api: \(route.method) \(route.path) unavailable: \(why)")
            }
            return error.response
        }
    }

    /// The client's `X-Request-Id` (so a retried write applies once), or a fresh one.
    static func requestID(_ headers: HTTPFields) -> String {
        if let value = headers.value(named: "x-request-id"), value.utf8.count <= 100, (try? StoreClient.validate(requestID: value)) != nil {
            return "api:" + value
        }
        return UUID().uuidString
    }

    /// The body, at most `limit` bytes (413 beyond; a missing Content-Length is fine: uwsgi.it gave 500).
    static func readBody(_ request: inout Request, limit: Int, expected: APIRoute.Body) async throws(APIError) -> [UInt8] {
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit { throw .tooLarge(limit: limit) }
        if case .none = expected {
            // Drain and ignore (a body on a GET is not an error), still bounded.
            _ = try? await request.collectBody(upTo: limit)
            return []
        }
        do {
            let buffer = try await request.collectBody(upTo: limit)
            return Array(buffer.readableBytesView)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw .tooLarge(limit: limit)
        } catch {
            throw .badRequest("the request body could not be read (\(error)); send it with Content-Length or valid chunked encoding")
        }
    }
}
