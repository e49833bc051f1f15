import CX11
import Foundation

/// Whether another X client holds an active keyboard grab, followed in the RECORD stream
/// (docs/CAPTURE.md "Password prompts").
///
/// A password prompt (pinentry, polkit and sudo dialogs, ssh-askpass) and a screen locker grab
/// the keyboard so that no other client sees the keys. The X server does not tell a client who
/// holds a grab, but the record context sees, in the one order the server processed them, the
/// grab requests of every client, their replies, and the key events. So:
///
/// - a `GrabKeyboard` (X11 protocol, request 31) or XI 2 `XIGrabDevice` (XI2proto, minor 51) on
///   a keyboard whose reply says Success makes its client the holder of that keyboard's grab
///   (a success also means nobody else held it: the server refuses a grab another client holds,
///   AlreadyGrabbed);
/// - `UngrabKeyboard` (32) / `XIUngrabDevice` (52) from the holder, and the holder's
///   disconnection (`XRecordClientDied`), end it;
/// - every key event between is suppressed, from the very first (no poll interval to leak it).
///
/// What the stream cannot show: a grab already held when recording starts, and a grab the
/// server ends by itself (the grab window became unviewable). For those the session probes
/// with its own `XGrabKeyboard` on the control connection: once at start (until the probe's
/// reply is seen in the stream every key is suppressed), and every ``probeInterval`` while a
/// grab is believed held. While it is held the probe fails with AlreadyGrabbed and changes
/// nothing for anyone; a probe that succeeds is seen in the stream as a grab that clears every
/// other holder, and is released at once (`XUngrabKeyboard`). Only that case — at start and
/// after a grab ended unseen — holds the keyboard for one round trip (a key typed in that
/// instant goes to the probe, and the focused window sees a FocusOut/FocusIn pair with mode
/// NotifyGrab/NotifyUngrab).
///
/// Not covered: XI 1 `GrabDevice` (no current toolkit uses it for prompts) and passive grabs
/// (`XGrabKey` hot keys, active only while their key is down).
struct KeyboardGrabs {
    /// Who holds a grab: the client (`XRecordInterceptData.id_base`; 0 for one found by the
    /// probe, whose client is unknown) and the keyboard (0: the core keyboard, which is every
    /// master keyboard's grab; else an XI slave keyboard's device id).
    struct Holder: Hashable {
        var client: UInt
        var device: Int
    }

    enum Request: Equatable {
        case core
        case xi(device: Int)
    }

    /// How often a believed grab is probed for an end the stream cannot show.
    static let probeInterval: TimeInterval = 0.5
    /// Pending grab requests kept per client at most (a request answered by an error has no reply).
    static let pendingLimit = 16

    private(set) var holders: Set<Holder> = [Holder(client: 0, device: 0)]
    /// Per client: grab requests whose reply has not come, by the low 16 bits of their sequence number.
    private var pending: [UInt: [UInt16: Request]] = [:]
    private var lastProbe: Date = .distantPast

    /// Whether keys are suppressed now.
    var isGrabbed: Bool { !holders.isEmpty }

    /// Whether to probe now: a grab is believed held and the last probe is `probeInterval` old.
    mutating func shouldProbe(now: Date) -> Bool {
        guard isGrabbed, now.timeIntervalSince(lastProbe) >= Self.probeInterval else { return false }
        lastProbe = now
        return true
    }

    /// A grab request seen in the stream (`sequence`: `client_seq`).
    mutating func requested(_ request: Request, client: UInt, sequence: UInt) {
        var mine = pending[client] ?? [:]
        if mine.count >= Self.pendingLimit { mine.removeAll() }
        mine[UInt16(truncatingIfNeeded: sequence)] = request
        pending[client] = mine
    }

    /// A reply seen in the stream: when it answers a pending grab request of `client`, a
    /// `status` of 0 (GrabSuccess) makes `client` the holder of that keyboard. `slot` maps an XI
    /// device to its grab (0: core/master, device id: slave keyboard; nil: not a keyboard).
    mutating func replied(client: UInt, sequence: UInt16, status: (Request) -> UInt8, slot: (Int) -> Int?) {
        guard let request = pending[client]?.removeValue(forKey: sequence), status(request) == 0 else { return }
        let device: Int
        switch request {
        case .core: device = 0
        case .xi(let id):
            guard let s = slot(id) else { return }
            device = s
        }
        holders = holders.filter { $0.device != device }
        holders.insert(Holder(client: client, device: device))
    }

    /// An ungrab request seen in the stream.
    mutating func ungrabbed(_ request: Request, client: UInt, slot: (Int) -> Int?) {
        switch request {
        case .core: holders.remove(Holder(client: client, device: 0))
        case .xi(let id):
            guard let s = slot(id) else { return }
            holders.remove(Holder(client: client, device: s))
        }
    }

    /// A client disconnected: its grabs end.
    mutating func died(client: UInt) {
        holders = holders.filter { $0.client != client }
        pending[client] = nil
    }
}
