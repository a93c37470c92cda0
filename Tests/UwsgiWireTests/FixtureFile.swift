import Foundation
import TestSupport

extension FixtureFile {
    init(_ path: String) throws { try self.init(path, bundle: .module) }
    static func names(in folder: String) throws -> [String] { try names(in: folder, bundle: .module) }
    static func text(_ path: String) throws -> String { try text(path, bundle: .module) }
}
