/// A value bound to a statement parameter or read from a result row (dqlite wire types).
public enum DqliteValue: Sendable, Equatable, Hashable, CustomStringConvertible {
    case integer(Int64)
    case float(Double)
    case text(String)
    case blob([UInt8])
    case null
    case boolean(Bool)

    /// The wire type code (dqlite protocol v1).
    var typeCode: UInt8 {
        switch self {
        case .integer: 1
        case .float: 2
        case .text: 3
        case .blob: 4
        case .null: 5
        case .boolean: 11
        }
    }

    public var description: String {
        switch self {
        case .integer(let v): String(v)
        case .float(let v): String(v)
        case .text(let v): v
        case .blob(let v): "<\(v.count) bytes>"
        case .null: "NULL"
        case .boolean(let v): v ? "true" : "false"
        }
    }

    public var int: Int64? {
        switch self {
        case .integer(let v): v
        case .boolean(let v): v ? 1 : 0
        case .float(let v): Int64(exactly: v.rounded()) ?? nil
        case .text(let s): Int64(s)
        default: nil
        }
    }

    public var string: String? {
        switch self {
        case .text(let v): v
        case .integer(let v): String(v)
        case .float(let v): String(v)
        case .boolean(let v): v ? "1" : "0"
        case .blob(let b): String(decoding: b, as: UTF8.self)
        case .null: nil
        }
    }

    public var bool: Bool? {
        switch self {
        case .boolean(let v): v
        case .integer(let v): v != 0
        default: nil
        }
    }

    public var isNull: Bool { self == .null }
}

extension DqliteValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByNilLiteral {
    public init(stringLiteral value: String) { self = .text(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(nilLiteral: ()) { self = .null }
}

extension DqliteValue {
    /// `.text(s)` or `.null` for an optional string.
    public static func optional(_ s: String?) -> DqliteValue { s.map { .text($0) } ?? .null }
    public static func int(_ v: Int) -> DqliteValue { .integer(Int64(v)) }
}

/// The rows of a query: column names and one value array per row.
public struct DqliteRows: Sendable, Equatable {
    public var columns: [String]
    public var rows: [[DqliteValue]]

    public init(columns: [String], rows: [[DqliteValue]]) {
        self.columns = columns
        self.rows = rows
    }

    /// Each row as a column-name → value dictionary.
    public var records: [[String: DqliteValue]] {
        rows.map { row in
            var record: [String: DqliteValue] = [:]
            for (index, name) in columns.enumerated() where index < row.count { record[name] = row[index] }
            return record
        }
    }

    /// The first column of the first row, if any.
    public var scalar: DqliteValue? { rows.first?.first }
}

/// last_insert_id / rows_affected of an EXEC.
public struct DqliteResult: Sendable, Equatable {
    public var lastInsertID: Int64
    public var rowsAffected: Int64
}

/// One member of the dqlite cluster as CLUSTER reports it.
public struct DqliteMember: Sendable, Equatable, Codable {
    public enum Role: UInt64, Sendable, Codable, CustomStringConvertible {
        case voter = 0, standby = 1, spare = 2
        public var description: String {
            switch self {
            case .voter: "voter"
            case .standby: "standby"
            case .spare: "spare"
            }
        }
    }
    public var id: UInt64
    public var address: String
    public var role: Role

    public init(id: UInt64, address: String, role: Role) {
        self.id = id
        self.address = address
        self.role = role
    }
}
