import CX11
import CaptureCore
import Foundation

/// Reads what the window context and the rules need about X windows on one connection: the
/// `WM_CLASS` (ICCCM §4.1.2.5), the title (`_NET_WM_NAME` UTF-8 per EWMH, else ICCCM `WM_NAME`
/// as STRING or COMPOUND_TEXT), and which window of a top-level is the client's (ICCCM
/// §4.1.3.1 `WM_STATE`, as `XmuClientWindow` finds it). Used by the thread that owns the
/// connection only. X errors (a window destroyed meanwhile) are left for the owner to take.
final class WindowReader {
    let display: X11Display
    private let atomNetWMName: Atom
    private let atomUTF8: Atom
    private let atomCompoundText: Atom
    private let atomWMState: Atom

    init(_ display: X11Display) {
        self.display = display
        atomNetWMName = XInternAtom(display.dpy, "_NET_WM_NAME", 0)
        atomUTF8 = XInternAtom(display.dpy, "UTF8_STRING", 0)
        atomCompoundText = XInternAtom(display.dpy, "COMPOUND_TEXT", 0)
        atomWMState = XInternAtom(display.dpy, "WM_STATE", 0)
    }

    /// `WM_CLASS` instance and class of `w`, or nil when it has none.
    func classHint(_ w: Window) -> (instance: String, windowClass: String)? {
        var hint = XClassHint()
        guard XGetClassHint(display.dpy, w, &hint) != 0 else { return nil }
        defer {
            if let n = hint.res_name { XFree(n) }
            if let c = hint.res_class { XFree(c) }
        }
        return (hint.res_name.map { String(cString: $0) } ?? "", hint.res_class.map { String(cString: $0) } ?? "")
    }

    /// The title of `w`, or nil when it has none.
    func title(_ w: Window) -> String? {
        if let utf8 = property(w, atomNetWMName, type: atomUTF8) { return String(decoding: utf8, as: UTF8.self) }
        if let latin1 = property(w, Atom(XA_WM_NAME), type: Atom(XA_STRING)) {
            return String(latin1.map { Character(Unicode.Scalar($0)) })
        }
        if let compound = property(w, Atom(XA_WM_NAME), type: atomCompoundText) {
            return Self.decodeCompoundText(compound)
        }
        return nil
    }

    /// Class and title of `w` when it carries `WM_CLASS`; nil otherwise.
    func identity(_ w: Window) -> WindowIdentity? {
        guard let cls = classHint(w) else { return nil }
        return WindowIdentity(instance: cls.instance, windowClass: cls.windowClass, title: title(w) ?? "")
    }

    /// The nearest of `w` and its ancestors (below the root) that carries `WM_CLASS`, with its
    /// identity: the client's top-level for a focus window inside it. Nil when none does.
    func ancestorWithClass(_ w: Window) -> (window: Window, identity: WindowIdentity)? {
        var w = w
        for _ in 0..<32 where w > 1 && w != display.root {
            if let identity = identity(w) { return (w, identity) }
            var rootReturn: Window = 0, parent: Window = 0
            var children: UnsafeMutablePointer<Window>?
            var count: UInt32 = 0
            guard XQueryTree(display.dpy, w, &rootReturn, &parent, &children, &count) != 0 else { return nil }
            if let children { XFree(children) }
            w = parent
        }
        return nil
    }

    /// The client window of the top-level `w` (a window manager's frame holds it): `w` itself
    /// when it has `WM_STATE` or `WM_CLASS`, else the first descendant with `WM_STATE`
    /// (breadth first, at most `depth` levels); nil when there is none (a frame-less override
    /// window without `WM_CLASS`, or a frame whose client is not managed yet). `visited` gets
    /// the descendants looked at.
    func clientWindow(_ w: Window, depth: Int = 3, visited: inout [Window]) -> Window? {
        if hasProperty(w, atomWMState) || classHint(w) != nil { return w }
        var level = [w]
        for _ in 0..<depth {
            var next: [Window] = []
            for parent in level {
                for child in children(parent) {
                    visited.append(child)
                    if hasProperty(child, atomWMState) { return child }
                    next.append(child)
                }
            }
            if next.isEmpty { break }
            level = next
        }
        return nil
    }

    /// The children of `w`, bottom to top in stacking order (`XQueryTree`); empty on error.
    func children(_ w: Window) -> [Window] {
        var rootReturn: Window = 0, parent: Window = 0
        var list: UnsafeMutablePointer<Window>?
        var count: UInt32 = 0
        guard XQueryTree(display.dpy, w, &rootReturn, &parent, &list, &count) != 0 else { return [] }
        defer { if let list { XFree(list) } }
        guard let list else { return [] }
        return Array(UnsafeBufferPointer(start: list, count: Int(count)))
    }

    private func hasProperty(_ w: Window, _ atom: Atom) -> Bool {
        var actualType: Atom = 0
        var format: Int32 = 0
        var count: UInt = 0, after: UInt = 0
        var value: UnsafeMutablePointer<UInt8>?
        let status = XGetWindowProperty(display.dpy, w, atom, 0, 0, 0, Atom(AnyPropertyType), &actualType, &format,
                                        &count, &after, &value)
        if let value { XFree(value) }
        return status == Success && actualType != 0
    }

    /// Decodes COMPOUND_TEXT (X Consortium "Compound Text Encoding" v1.1) as far as titles
    /// need: ASCII/Latin-1 (the initial state), `ESC ( B`, `ESC - A`, and UTF-8 segments
    /// (`ESC % G` … `ESC % @`). Characters in other charsets become U+FFFD. Independent of
    /// the process locale, unlike Xlib's converters.
    static func decodeCompoundText(_ bytes: [UInt8]) -> String {
        var out = ""
        var i = 0
        var utf8: [UInt8]? = nil
        var grLatin1 = true
        while i < bytes.count {
            let b = bytes[i]
            if b == 0x1b {
                let rest = bytes[(i + 1)...].prefix(2)
                if rest.elementsEqual([0x25, 0x47]) { utf8 = []; i += 3; continue }          // ESC % G
                if rest.elementsEqual([0x25, 0x40]) {                                         // ESC % @
                    if let u = utf8 { out += String(decoding: u, as: UTF8.self) }
                    utf8 = nil; i += 3; continue
                }
                if rest.elementsEqual([0x2d, 0x41]) { grLatin1 = true; i += 3; continue }    // ESC - A
                if rest.elementsEqual([0x28, 0x42]) { i += 3; continue }                     // ESC ( B
                // Another charset designation: skip the sequence (ESC, intermediates, final).
                i += 1
                while i < bytes.count && (0x20...0x2f).contains(bytes[i]) { i += 1 }
                i += 1
                if rest.first == 0x2d || rest.first == 0x24 { grLatin1 = false }
                continue
            }
            if utf8 != nil { utf8!.append(b); i += 1; continue }
            if b < 0x80 || grLatin1 { out.unicodeScalars.append(Unicode.Scalar(b)) } else { out += "\u{FFFD}" }
            i += 1
        }
        if let u = utf8 { out += String(decoding: u, as: UTF8.self) }
        return out
    }

    private func property(_ w: Window, _ atom: Atom, type: Atom) -> [UInt8]? {
        var actualType: Atom = 0
        var format: Int32 = 0
        var count: UInt = 0, after: UInt = 0
        var value: UnsafeMutablePointer<UInt8>?
        let status = XGetWindowProperty(display.dpy, w, atom, 0, 4096, 0, type, &actualType, &format, &count,
                                        &after, &value)
        defer { if let value { XFree(value) } }
        guard status == Success, actualType == type, format == 8, let value else { return nil }
        return Array(UnsafeBufferPointer(start: value, count: Int(count)))
    }
}
