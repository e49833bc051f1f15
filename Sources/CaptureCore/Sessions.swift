import CustosBase
import Foundation
import Logging

/// One graphical session on this machine: a display, the user it belongs to and how to
/// authorise to it (docs/CAPTURE.md "Every graphical session").
public struct GraphicalSession: Sendable, Hashable, CustomStringConvertible {
    /// Where the session was found.
    public enum Origin: Sendable, Hashable, CustomStringConvertible {
        /// A systemd-logind session (its id).
        case logind(String)
        /// A display server's socket (X11: `/tmp/.X11-unix/XN`).
        case socket
        /// Named in the config (`display=:0,:1`).
        case configured

        public var description: String {
            switch self {
            case .logind(let id): "logind session \(id)"
            case .socket: "socket"
            case .configured: "display="
            }
        }
    }

    /// The display (X11: `:N`).
    public var display: String
    /// The user's login name; nil when no user could be found for the display.
    public var user: String?
    public var uid: UInt32?
    /// The credentials to connect with (X11: the cookie file); nil: the process's own defaults.
    public var credentials: String?
    /// Where `credentials` came from (X11: "XAUTHORITY of the session leader", "~/.Xauthority
    /// of user bob"), or, when nil, which files were tried; nil: the configured ones (`xauthority=`).
    public var credentialsSource: String?
    public var origin: Origin

    public init(display: String, user: String?, uid: UInt32?, credentials: String?, origin: Origin) {
        self.display = display
        self.user = user
        self.uid = uid
        self.credentials = credentials
        self.origin = origin
    }

    /// What the sources connect to.
    public var target: CaptureTarget { CaptureTarget(display: display, credentials: credentials, credentialsSource: credentialsSource) }

    /// The user as captures name it: the login name when it is a valid ``UserName``, else
    /// `uid-N`, else `?` (no user found; never someone's login name).
    public var userName: UserName {
        if let user, let name = try? UserName(user) { return name }
        return uid.map(UserName.uid) ?? .unknown
    }

    public var description: String { "display \(SafeText.escaped(display)) of user \(SafeText.escaped(userName.rawValue)) (\(origin))" }
}

/// The graphical sessions of the machine, looked up on demand (blocking file reads: call it
/// off the Swift cooperative pool). Sessions that appear later are in a later answer, ended
/// ones are not.
public protocol SessionSource: AnyObject, Sendable {
    /// The sessions now, in a stable order (by display).
    func sessions() -> [GraphicalSession]
    /// The displays the last ``sessions()`` call found but does not record, with why (e.g. "its
    /// socket belongs to root and no process uses it (a login screen)"), by display; already
    /// escaped. `--check-config` lists them with the reason the daemon logs.
    func notRecorded() -> [(display: String, reason: String)]
}

extension SessionSource {
    public func notRecorded() -> [(display: String, reason: String)] { [] }
}
