import CustosBase
import Logging

extension Logger.MetadataValue {
    /// Text from outside the collector — the network (record headers, request fields), the
    /// database (`pub_datafile`, ids), or an error that may quote either — made safe for a log
    /// line by the one escaper, ``SafeText/escaped(_:)`` (controls, bidi controls and `\`
    /// escaped). Every such value reaches the collector's log through here.
    static func safe(_ value: Any) -> Self { .string(SafeText.escaped(String(describing: value))) }
}
