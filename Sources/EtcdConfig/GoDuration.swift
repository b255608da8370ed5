/// Durations written the way etcd's flags and config files write them (Go's `time.ParseDuration`
/// syntax): a sequence of decimal numbers with units, e.g. `300ms`, `1.5h`, `2h45m`, `-5s`.
/// Units: ns, us (or µs, μs), ms, s, m, h. A bare `0` is allowed.
public enum GoDuration {
    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let input: String
        public var description: String { "time: invalid duration \"\(input)\"" }
    }

    private static let units: [(String, Double)] = [
        ("ns", 1), ("us", 1e3), ("µs", 1e3), ("μs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9),
    ]

    /// Parses `text` into a `Duration`.
    public static func parse(_ text: String) throws -> Duration {
        var s = Substring(text)
        var negative = false
        if let first = s.first, first == "-" || first == "+" {
            negative = first == "-"
            s = s.dropFirst()
        }
        if s == "0" { return .zero }
        guard !s.isEmpty else { throw ParseError(input: text) }
        var totalNanos = 0.0
        while !s.isEmpty {
            let number = s.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
            guard !number.isEmpty, number != ".", number.filter({ $0 == "." }).count <= 1,
                  let value = Double(number.hasPrefix(".") ? "0" + number : String(number)) else {
                throw ParseError(input: text)
            }
            s = s.dropFirst(number.count)
            let unitText = s.prefix { !($0.isASCII && ($0.isNumber || $0 == ".")) }
            guard let unit = units.first(where: { $0.0 == unitText }) else { throw ParseError(input: text) }
            s = s.dropFirst(unitText.count)
            totalNanos += value * unit.1
        }
        guard totalNanos <= 9.2e18 else { throw ParseError(input: text) }
        let nanos = Int64(totalNanos.rounded())
        return .nanoseconds(negative ? -nanos : nanos)
    }

    /// Formats a duration compactly in Go's style (`1h0m0s`, `1.5s`, `300ms`).
    public static func format(_ d: Duration) -> String {
        let (seconds, attos) = d.components
        var nanos = seconds * 1_000_000_000 + attos / 1_000_000_000
        if nanos == 0 { return "0s" }
        let sign = nanos < 0 ? "-" : ""
        nanos = abs(nanos)
        if nanos < 1_000 { return "\(sign)\(nanos)ns" }
        if nanos < 1_000_000 { return sign + trimmed(Double(nanos) / 1e3) + "µs" }
        if nanos < 1_000_000_000 { return sign + trimmed(Double(nanos) / 1e6) + "ms" }
        let h = nanos / 3_600_000_000_000
        let m = (nanos / 60_000_000_000) % 60
        let secs = Double(nanos % 60_000_000_000) / 1e9
        var out = sign
        if h > 0 { out += "\(h)h" }
        if h > 0 || m > 0 { out += "\(m)m" }
        return out + trimmed(secs) + "s"
    }

    private static func trimmed(_ v: Double) -> String {
        var s = String(format: v)
        if s.contains(".") {
            while s.hasSuffix("0") { s.removeLast() }
            if s.hasSuffix(".") { s.removeLast() }
        }
        return s
    }
}

private extension String {
    init(format value: Double) {
        // Nine decimals is enough for nanosecond precision in every unit used above.
        let scaled = (value * 1e9).rounded()
        let whole = Int64(scaled / 1e9)
        let frac = Int64(scaled) - whole * 1_000_000_000
        if frac == 0 {
            self = "\(whole)"
        } else {
            let digits = String(frac)
            self = "\(whole)." + String(repeating: "0", count: 9 - digits.count) + digits
        }
    }
}
