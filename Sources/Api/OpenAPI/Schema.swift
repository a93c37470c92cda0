import Node

/// JSON Schema fragments for the OpenAPI document (3.1: nullable is a type list).
enum Schema {
    static let string: JSONValue = .object([("type", .string("string"))])
    static let integer: JSONValue = .object([("type", .string("integer"))])
    static let boolean: JSONValue = .object([("type", .string("boolean"))])
    static let nullableString: JSONValue = .object([("type", .array([.string("string"), .string("null")]))])
    static let nullableInteger: JSONValue = .object([("type", .array([.string("integer"), .string("null")]))])
    static let anyValue: JSONValue = .object([])

    static func ref(_ name: String) -> JSONValue { .object([("$ref", .string("#/components/schemas/\(name)"))]) }
    static func array(_ items: JSONValue) -> JSONValue { .object([("type", .string("array")), ("items", items)]) }
    static func enumeration(_ values: [String]) -> JSONValue {
        .object([("type", .string("string")), ("enum", .array(values.map { .string($0) }))])
    }
    static func integer(minimum: Int64, maximum: Int64? = nil) -> JSONValue {
        .object([("type", .string("integer")), ("minimum", .int(minimum))] + (maximum.map { [("maximum", JSONValue.int($0))] } ?? []))
    }

    /// An object; `required` defaults to every property (responses always carry every key).
    static func object(_ properties: [(String, JSONValue)], required: [String]? = nil, additional: Bool = false) -> JSONValue {
        .object([
            ("type", .string("object")),
            ("properties", .object(properties)),
            ("required", .array((required ?? properties.map(\.0)).map { .string($0) })),
            ("additionalProperties", .bool(additional)),
        ])
    }

    /// The response schemas shared by the routes (components).
    static let components: [(String, JSONValue)] = [
        ("Error", object([("error", string), ("reason", string)], required: ["error"])),
        ("Message", object([("message", string)])),
        ("Created", object([("message", string), ("uid", integer), ("id", integer)], required: ["message"])),
        ("Me", object([("email", nullableString), ("vat", nullableString), ("company", nullableString), ("uuid", string),
                       ("containers", array(integer)), ("servers", array(string))])),
        ("Container", object(containerSummary)),
        ("ContainerDetail", object(containerSummary + [
            ("jid", nullableString), ("jid_destinations", nullableString), ("pushover_user", nullableString),
            ("pushover_token", nullableString), ("pushover_sound", nullableString), ("pushbullet_token", nullableString),
            ("slack_webhook", nullableString), ("alarm_webhook", nullableString), ("alarm_freq", integer), ("quota_threshold", integer), ("nofollow", boolean),
            ("note", nullableString), ("linked_to", array(integer)), ("custom_distros_storage", boolean),
            ("secret_uuid", nullableString), ("ssh_keys", array(string)), ("legion_address", array(string)),
            ("last_reboot", integer),
        ])),
        ("Distro", object([("id", integer), ("name", string)])),
        ("CustomDistroOfContainer", object([("id", integer), ("name", string), ("container", integer)])),
        ("CustomDistro", object([("id", integer), ("container", integer), ("name", string), ("path", string),
                                 ("note", nullableString), ("uuid", string)])),
        ("Domain", object([("id", integer), ("name", string), ("uuid", string), ("tags", array(string)), ("note", nullableString)])),
        ("DomainCreated", object([("message", string), ("id", integer), ("name", string), ("uuid", string),
                                  ("tags", array(string)), ("note", nullableString)])),
        ("DomainRef", object([("id", integer), ("uuid", string), ("name", string)])),
        ("ContainerRef", object([("id", integer), ("uuid", string), ("name", string), ("uid", integer)])),
        ("Tag", object([("id", integer), ("name", string), ("note", nullableString)])),
        ("News", object([("content", string), ("date", integer)])),
        ("Loopbox", object([("id", integer), ("container", integer), ("filename", string), ("mountpoint", string),
                            ("ro", boolean), ("tags", array(string))])),
        ("Alarm", object([("id", integer), ("container", integer), ("level", integer), ("color", string), ("class", nullableString),
                          ("vassal", nullableString), ("line", nullableInteger), ("filename", nullableString), ("func", nullableString),
                          ("unix", integer), ("msg", string)])),
        ("AlarmPage", object([("total", integer), ("alarms", array(ref("Alarm")))])),
        ("AlarmKey", object([("message", string), ("alarm_key", string)])),
        ("Sample", .object([("type", .string("array")), ("prefixItems", .array([integer, .object([("type", .string("number"))])])),
                            ("minItems", .int(2)), ("maxItems", .int(2))])),
        ("DomainSamples", object([("container", nullableInteger), ("node", string), ("metrics", array(ref("Sample")))])),
        ("Portmap", object([("id", integer), ("proto", enumeration(["tcp", "udp"])), ("public_port", integer), ("container", integer),
                            ("container_ip", string), ("private_port", integer)])),
    ]

    static let containerSummary: [(String, JSONValue)] = [
        ("uid", integer), ("name", string), ("hostname", string), ("ip", string), ("memory", integer), ("storage", integer),
        ("uuid", string), ("distro", nullableInteger), ("distro_name", nullableString), ("custom_distro", nullableInteger),
        ("custom_distro_name", nullableString), ("server", string), ("server_address", string), ("tags", array(string)),
    ]
}
