import ArgumentParser
import Logging

extension Logger.Level: @retroactive ExpressibleByArgument {}

enum CLILogging {
    static func bootstrap(level: Logger.Level) {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

/// Prints an error the way users read it (`error: …`) and exits with a status.
struct UserFacingError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
