import Logging

/// The access-log record of one routed request (`legion.access`, debug level): the same fields on every path
/// of the router, so a log reader cannot tell which path served a request.
enum AccessLog {
    static func request(_ logger: Logger, host: String, method: String, uri: String, backend: String?, bytes: Int, startedNs: UInt64) {
        logger.debug("request", metadata: [
            "host": "\(host)", "method": "\(method)", "uri": "\(uri)", "backend": "\(backend ?? "-")", "bytes": "\(bytes)",
            "ms": "\((SystemClock.monotonicNanos() &- startedNs) / 1_000_000)",
        ])
    }
}
