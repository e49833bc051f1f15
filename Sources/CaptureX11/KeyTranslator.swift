import CX11
import CaptureCore
import CaptureFormat
import Foundation

/// Translates recorded key events to text with the keyboard map current at each event.
///
/// Uses the Xkb map fetched on the control connection (`XkbGetMap`), the group and modifiers
/// from the event's own `state` field (group in bits 13–14, X11 XKB protocol §2.2.2), and an
/// override table fed from `ChangeKeyboardMapping` requests seen in the RECORD stream, so a
/// keycode that a client (xdotool) remaps for a moment is translated with the mapping in
/// force at that point of the stream, not with whatever is current when we look.
/// Used only on the recorder's thread.
final class KeyTranslator {
    private let display: X11Display
    private var xkb: XkbDescPtr?
    /// Core keysym lists per keycode from recorded `ChangeKeyboardMapping` requests.
    private var overrides: [UInt8: [KeySym]] = [:]
    private var dirty = true

    init(display: X11Display) {
        self.display = display
    }

    deinit {
        if let xkb { XkbFreeKeyboard(xkb, 0, 1) }
    }

    /// The whole map must be fetched again before the next event (an XKB keymap change).
    func invalidate(clearOverrides: Bool) {
        dirty = true
        if clearOverrides { overrides.removeAll() }
    }

    /// Applies a recorded `ChangeKeyboardMapping` (X11 protocol, request 100).
    func applyCoreMapping(firstKeycode: UInt8, keysymsPerKeycode: Int, keysyms: [KeySym]) {
        guard keysymsPerKeycode > 0 else { return }
        let count = keysyms.count / keysymsPerKeycode
        for i in 0..<count {
            let code = Int(firstKeycode) + i
            guard code <= 255 else { break }
            overrides[UInt8(code)] = Array(keysyms[(i * keysymsPerKeycode)..<((i + 1) * keysymsPerKeycode)])
        }
    }

    private func refresh() throws {
        guard dirty else { return }
        if let xkb { XkbFreeKeyboard(xkb, 0, 1) }
        xkb = XkbGetMap(display.dpy, UInt32(XkbKeyTypesMask | XkbKeySymsMask | XkbModifierMapMask),
                        UInt32(XkbUseCoreKbd))
        try display.check("reading the Xkb keyboard map")
        guard xkb != nil else {
            throw CaptureError(.extensionUnavailable, "XkbGetMap returned no keyboard map on \(display.name)")
        }
        dirty = false
    }

    static let shiftMask: UInt32 = 1, lockMask: UInt32 = 2, controlMask: UInt32 = 4
    static let mod1Mask: UInt32 = 8, mod4Mask: UInt32 = 64

    /// The text for a key event, or nil for a modifier key or a key with no symbol.
    /// - Parameters: `keycode` (8–255) and `state` as in the core KeyPress event.
    func text(keycode: UInt8, state: UInt16) throws -> String? {
        try refresh()
        let state32 = UInt32(state)
        var keysym: KeySym = 0
        var consumed: UInt32 = 0
        if let list = overrides[keycode] {
            keysym = Self.coreKeysym(list, state: state32)
            consumed = Self.shiftMask | Self.lockMask
        } else if let xkb {
            var modsReturned: UInt32 = 0
            if XkbTranslateKeyCode(xkb, KeyCode(keycode), state32, &modsReturned, &keysym) == 0 { keysym = 0 }
            consumed = modsReturned
        }
        guard keysym != 0 else { return nil }
        if Self.isModifierKeysym(keysym) { return nil }
        // Caps Lock on a key whose type does not use Lock: uppercase as Xlib and xkbcommon do.
        if state32 & Self.lockMask != 0 && consumed & Self.lockMask == 0 {
            var lower: KeySym = 0, upper: KeySym = 0
            XConvertCase(keysym, &lower, &upper)
            keysym = upper
        }
        var modifiers: [String] = []
        if state32 & Self.controlMask != 0 { modifiers.append("Ctrl") }
        if state32 & Self.mod1Mask != 0 && consumed & Self.mod1Mask == 0 { modifiers.append("Alt") }
        if state32 & Self.mod4Mask != 0 && consumed & Self.mod4Mask == 0 { modifiers.append("Super") }
        if let character = Self.character(for: keysym) {
            return modifiers.isEmpty ? KeyToken.literal(character) : KeyToken.make(modifiers: modifiers, name: character)
        }
        // ISO_Left_Tab is what Shift+Tab gives (Shift consumed): show it as Shift+Tab.
        if (state32 & Self.shiftMask != 0 && consumed & Self.shiftMask == 0) || keysym == 0xfe20 {
            modifiers.append("Shift")
        }
        return KeyToken.make(modifiers: modifiers, name: Self.keysymName(keysym))
    }

    /// Core protocol keysym selection (X11 protocol §5 "Keyboards"): the first group, Shift
    /// selects the second symbol, Lock upper-cases letters.
    static func coreKeysym(_ list: [KeySym], state: UInt32) -> KeySym {
        let first = list.first ?? 0
        let second = list.count > 1 && list[1] != 0 ? list[1] : 0
        var lower: KeySym = 0, upper: KeySym = 0
        XConvertCase(first, &lower, &upper)
        let shifted = state & shiftMask != 0
        let locked = state & lockMask != 0
        if second == 0 {
            return (shifted != locked) ? upper : lower
        }
        return shifted ? second : (locked ? upper : first)
    }

    static func isModifierKeysym(_ k: KeySym) -> Bool {
        (0xffe1...0xffee).contains(k)          // Shift_L … Hyper_R
            || (0xfe01...0xfe13).contains(k)   // ISO_Lock … ISO_Level5_Lock, group switches
            || k == 0xff7e || k == 0xff7f      // Mode_switch, Num_Lock
    }

    /// The printable character a keysym stands for, or nil for function/control keys.
    static func character(for k: KeySym) -> String? {
        let scalarValue: UInt32?
        switch k {
        case 0x20...0x7e, 0xa0...0xff: scalarValue = UInt32(k)
        case 0x0100_0000...0x0110_ffff: scalarValue = UInt32(k - 0x0100_0000)
        case 0xffb0...0xffb9: scalarValue = UInt32(k - 0xffb0 + 0x30)  // KP_0 … KP_9
        case 0xff80: scalarValue = 0x20                                  // KP_Space
        case 0xffaa: scalarValue = 0x2a                                  // KP_Multiply
        case 0xffab: scalarValue = 0x2b                                  // KP_Add
        case 0xffac: scalarValue = 0x2c                                  // KP_Separator
        case 0xffad: scalarValue = 0x2d                                  // KP_Subtract
        case 0xffae: scalarValue = 0x2e                                  // KP_Decimal
        case 0xffaf: scalarValue = 0x2f                                  // KP_Divide
        case 0xffbd: scalarValue = 0x3d                                  // KP_Equal
        default: scalarValue = k <= 0xffff ? keysymToUnicodeTable[UInt32(k)] : nil
        }
        guard let v = scalarValue, let scalar = Unicode.Scalar(v), v >= 0x20, !(0x7f..<0xa0).contains(v) else {
            return nil
        }
        return String(Character(scalar))
    }

    /// The token name of a non-text keysym: its `XKeysymToString` name, `Return`/`KP_Enter`
    /// as `Enter`, `ISO_Left_Tab` as `Tab`.
    static func keysymName(_ k: KeySym) -> String {
        switch k {
        case 0xff0d, 0xff8d: return "Enter"
        case 0xfe20: return "Tab"
        default:
            if let p = XKeysymToString(k) { return String(cString: p) }
            return String(format: "0x%lx", k)
        }
    }
}
