import CustosBase
import Synchronization

/// A top-level window as the rules see it: `WM_CLASS` instance and class (ICCCM §4.1.2.5) and
/// the title (`_NET_WM_NAME`, else `WM_NAME`); "" where the window has none.
public struct WindowIdentity: Sendable, Hashable {
    public var instance: String
    public var windowClass: String
    public var title: String

    public init(instance: String, windowClass: String, title: String) {
        self.instance = instance
        self.windowClass = windowClass
        self.title = title
    }

    /// `instance.class`, as keystroke chunks name it; "" for a window without `WM_CLASS`.
    public var wmClass: String { instance.isEmpty && windowClass.isEmpty ? "" : instance + "." + windowClass }

    /// A window without `WM_CLASS` and title (the root, PointerRoot focus).
    public static let none = WindowIdentity(instance: "", windowClass: "", title: "")
}

/// What is left out of the recording, by window (config keys of the same names).
///
/// A class pattern matches a window when it matches its `WM_CLASS` class or its instance
/// (`WindowPattern`: exact, or a `/regular expression/` found in it).
public struct WindowRules: Sendable, Equatable {
    /// `sensitive-window-class=`: while such a window has the focus, keystrokes are not
    /// recorded (the chunk shows `[suppressed]` with the time span); its pixels are recorded.
    public var sensitiveClasses: [WindowPattern]
    /// `exclude-window-class=`: such windows' visible pixels are painted over with
    /// ``maskColor`` before a frame is encoded, and keys typed into them are dropped (counted,
    /// an `[excluded]` marker).
    public var excludedClasses: [WindowPattern]
    /// `exclude-window-title=`: as `excludedClasses`, matched against the window's title.
    public var excludedTitles: [WindowPattern]

    /// The colour excluded windows are painted with (8-bit R, G, B): magenta, which screen
    /// content rarely is, so a reviewer sees at once that something was left out.
    public static let maskColor: (red: UInt8, green: UInt8, blue: UInt8) = (0xFF, 0x00, 0xFF)

    public init(sensitiveClasses: [WindowPattern] = [], excludedClasses: [WindowPattern] = [],
                excludedTitles: [WindowPattern] = []) {
        self.sensitiveClasses = sensitiveClasses
        self.excludedClasses = excludedClasses
        self.excludedTitles = excludedTitles
    }

    /// Whether any window can be excluded (frame sources track windows only then).
    public var hasExclusions: Bool { !excludedClasses.isEmpty || !excludedTitles.isEmpty }

    /// Whether keys typed into `window` are suppressed.
    public func isSensitive(_ window: WindowIdentity) -> Bool {
        sensitiveClasses.contains { $0.matches(window.windowClass) || $0.matches(window.instance) }
    }

    /// Whether `window` is excluded: its class or instance matches an `exclude-window-class`
    /// pattern, or its title an `exclude-window-title` pattern.
    public func isExcluded(_ window: WindowIdentity) -> Bool {
        excludedClasses.contains { $0.matches(window.windowClass) || $0.matches(window.instance) }
            || excludedTitles.contains { $0.matches(window.title) }
    }
}

/// The rules in force, shared by every source of the process and replaced on SIGHUP.
/// Thread-safe; sources read it at each use, so a change applies from the next key or frame.
public final class CapturePolicy: Sendable {
    private let state: Mutex<(rules: WindowRules, generation: Int)>

    public init(_ rules: WindowRules = WindowRules()) {
        state = Mutex((rules, 0))
    }

    /// The rules now.
    public var rules: WindowRules { state.withLock { $0.rules } }

    /// The rules now and a number that grows with every change (sources cache what they
    /// derive from the rules and recompute when it moves).
    public var current: (rules: WindowRules, generation: Int) { state.withLock { $0 } }

    /// Replaces the rules (a no-op when they are equal).
    public func update(_ rules: WindowRules) {
        state.withLock { s in
            guard s.rules != rules else { return }
            s = (rules, s.generation + 1)
        }
    }
}
