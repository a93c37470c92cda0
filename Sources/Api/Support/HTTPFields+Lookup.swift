import HTTPTypes

extension HTTPFields {
    /// The first value of a header by its lowercased name (for names HTTPTypes has no constant for).
    func value(named lowercasedName: String) -> String? {
        first { $0.name.canonicalName == lowercasedName }?.value
    }
}
