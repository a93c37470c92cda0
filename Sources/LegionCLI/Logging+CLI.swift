import ArgumentParser
import Logging

extension Logger.Level: @retroactive ExpressibleByArgument {}

enum CLILogging {
    static func bootstrap(level: Logger.Level) {
        LoggingSystem.bootstrap { label in LegionLogHandler(label: label, logLevel: level) }
    }
}

/// Prints an error the way users read it (`error: …`) and exits with a status.
struct UserFacingError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
