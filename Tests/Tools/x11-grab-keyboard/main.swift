// x11-grab-keyboard: a real X client that grabs the keyboard as a password prompt does
// (pinentry, polkit agents, ssh-askpass, screen lockers), for the keystroke suppression tests.
//
// Usage: x11-grab-keyboard <display> core|xi2 [class]
// Maps a 200x100 window (WM_CLASS "grabber.<class>", default class "Grabber", title
// "grab test"), then grabs the keyboard: `core` with XGrabKeyboard (X11 protocol GrabKeyboard),
// `xi2` with XIGrabDevice on the master keyboard (XI 2.0). Prints "grabbed <status>" (0 is
// Success) once the reply is in, then waits. Signals, each answered by a line once done:
//   SIGUSR1  ungrab explicitly (UngrabKeyboard / XIUngrabDevice)  → "ungrabbed"
//   SIGUSR2  unmap the window without ungrabbing (the server ends the grab itself) → "unmapped"
//   SIGHUP   grab again → "grabbed <status>"
//   SIGTERM  exit while still holding whatever it holds (the server ends the grab) → exits 0
// Output is unbuffered, so a line the parent has read describes a request the server has done.
import CX11
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

func emit(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
}

let arguments = CommandLine.arguments
guard arguments.count == 3 || arguments.count == 4, ["core", "xi2"].contains(arguments[2]) else {
    FileHandle.standardError.write(Data("usage: x11-grab-keyboard <display> core|xi2 [class]\n".utf8))
    exit(2)
}
let useXI2 = arguments[2] == "xi2"
let className = arguments.count == 4 ? arguments[3] : "Grabber"
guard let dpy = XOpenDisplay(arguments[1]) else {
    FileHandle.standardError.write(Data("cannot open display \(arguments[1])\n".utf8))
    exit(1)
}

let pending = Atomic<Int32>(0)
func onSignal(_ signal: Int32) { pending.store(signal, ordering: .sequentiallyConsistent) }
for s in [SIGUSR1, SIGUSR2, SIGHUP, SIGTERM] { signal(s, onSignal) }
// A parent may have started it with these blocked (a child inherits the signal mask).
var unblock = sigset_t()
sigemptyset(&unblock)
for s in [SIGUSR1, SIGUSR2, SIGHUP, SIGTERM] { sigaddset(&unblock, s) }
pthread_sigmask(SIG_UNBLOCK, &unblock, nil)

let root = XDefaultRootWindow(dpy)
let window = XCreateSimpleWindow(dpy, root, 10, 10, 200, 100, 0, 0, 0xffffff)
var hint = XClassHint()
let name = strdup("grabber"), cls = strdup(className)
hint.res_name = name
hint.res_class = cls
XSetClassHint(dpy, window, &hint)
XStoreName(dpy, window, "grab test")
XSelectInput(dpy, window, ExposureMask | StructureNotifyMask)
XMapWindow(dpy, window)
// Wait until mapped: a grab on an unviewable window fails with GrabNotViewable.
var event = XEvent()
repeat { XNextEvent(dpy, &event) } while event.type != MapNotify

var keyboard: Int32 = 0
if useXI2 {
    var major: Int32 = 2, minor: Int32 = 0
    guard XIQueryVersion(dpy, &major, &minor) == Success else {
        FileHandle.standardError.write(Data("XInput 2 is not available\n".utf8))
        exit(1)
    }
    var count: Int32 = 0
    if let devices = XIQueryDevice(dpy, XIAllMasterDevices, &count) {
        for i in 0..<Int(count) where devices[i].use == XIMasterKeyboard { keyboard = devices[i].deviceid }
        XIFreeDeviceInfo(devices)
    }
    guard keyboard != 0 else {
        FileHandle.standardError.write(Data("no master keyboard\n".utf8))
        exit(1)
    }
}

@MainActor func grab() -> Int32 {
    if useXI2 {
        var bits = [UInt8](repeating: 0, count: 4)
        bits[Int(XI_KeyPress) >> 3] |= UInt8(1 << (Int(XI_KeyPress) & 7))
        bits[Int(XI_KeyRelease) >> 3] |= UInt8(1 << (Int(XI_KeyRelease) & 7))
        let device = keyboard
        return bits.withUnsafeMutableBufferPointer { buffer in
            var mask = XIEventMask(deviceid: device, mask_len: Int32(buffer.count), mask: buffer.baseAddress)
            return XIGrabDevice(dpy, device, window, UInt(CurrentTime), 0, XIGrabModeAsync, XIGrabModeAsync, 0, &mask)
        }
    }
    return XGrabKeyboard(dpy, window, 0, GrabModeAsync, GrabModeAsync, UInt(CurrentTime))
}

emit("grabbed \(grab())")
while true {
    // Keys the grab brings are read and thrown away (a prompt would take them as the password).
    while XPending(dpy) > 0 { XNextEvent(dpy, &event) }
    let signal = pending.exchange(0, ordering: .sequentiallyConsistent)
    switch signal {
    case SIGUSR1:
        if useXI2 { XIUngrabDevice(dpy, keyboard, UInt(CurrentTime)) } else { XUngrabKeyboard(dpy, UInt(CurrentTime)) }
        XSync(dpy, 0)
        emit("ungrabbed")
    case SIGUSR2:
        XUnmapWindow(dpy, window)
        XSync(dpy, 0)
        emit("unmapped")
    case SIGHUP:
        XMapWindow(dpy, window)
        XSync(dpy, 0)
        emit("grabbed \(grab())")
    case SIGTERM:
        exit(0)  // the connection closes with the grab held: the server releases it
    default:
        usleep(10_000)
    }
}
