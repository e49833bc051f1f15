import CX11
import CaptureCore
import Foundation

/// One `XImage` and, for MIT-SHM, its shared-memory segment; frees both in `deinit`.
///
/// The SHM segment is marked `IPC_RMID` right after the server attached it, so it disappears
/// when this process and the server detach, even after a crash. Must be released before its
/// `X11Display` (the capturer drops buffers before the connection).
final class XImageBuffer {
    let image: UnsafeMutablePointer<XImage>
    let width: Int
    let height: Int
    private let display: X11Display
    private let shmInfo: UnsafeMutablePointer<XShmSegmentInfo>?

    /// Adopts an image returned by `XGetImage` (freed with `XDestroyImage`).
    init(takingOwnership image: UnsafeMutablePointer<XImage>, display: X11Display) {
        self.image = image
        self.display = display
        self.shmInfo = nil
        width = Int(image.pointee.width)
        height = Int(image.pointee.height)
    }

    /// Creates a `width`×`height` shared-memory image for the default visual and attaches it.
    /// - Throws: `CaptureError` when the segment cannot be made or `XShmAttach` fails
    ///   (a remote display); the caller then falls back to `XGetImage`.
    init(shmFor display: X11Display, width: Int, height: Int) throws {
        let dpy = display.dpy
        let screen = XDefaultScreen(dpy)
        let info = UnsafeMutablePointer<XShmSegmentInfo>.allocate(capacity: 1)
        info.initialize(to: XShmSegmentInfo())
        guard let image = XShmCreateImage(dpy, XDefaultVisual(dpy, screen), UInt32(XDefaultDepth(dpy, screen)),
                                          ZPixmap, nil, info, UInt32(width), UInt32(height)) else {
            info.deallocate()
            throw CaptureError(.unsupportedFormat, "XShmCreateImage failed for \(width)x\(height) on \(display.name)")
        }
        let bytes = Int(image.pointee.bytes_per_line) * height
        let id = shmget(IPC_PRIVATE, bytes, IPC_CREAT | 0o600)
        guard id >= 0 else {
            XDestroyImage(image)
            info.deallocate()
            throw CaptureError(.invalidArgument, "shmget of \(bytes) bytes failed: errno \(errno)")
        }
        guard let address = shmat(id, nil, 0), address != UnsafeMutableRawPointer(bitPattern: -1) else {
            shmctl(id, IPC_RMID, nil)
            XDestroyImage(image)
            info.deallocate()
            throw CaptureError(.invalidArgument, "shmat of segment \(id) failed: errno \(errno)")
        }
        info.pointee.shmid = id
        info.pointee.shmaddr = address.assumingMemoryBound(to: CChar.self)
        info.pointee.readOnly = 0
        image.pointee.data = info.pointee.shmaddr
        let attached = XShmAttach(dpy, info) != 0
        XSync(dpy, 0)
        let error = display.takeError()
        shmctl(id, IPC_RMID, nil)
        self.image = image
        self.display = display
        self.shmInfo = info
        self.width = width
        self.height = height
        if !attached || error != nil || display.isDead {
            throw CaptureError(.xProtocolError, "XShmAttach failed on \(display.name)")
        }
    }

    deinit {
        if let shmInfo {
            if !display.isDead {
                XShmDetach(display.dpy, shmInfo)
                XSync(display.dpy, 0)
                _ = display.takeError()
            }
            image.pointee.data = nil  // the segment is not malloc'd: XDestroyImage must not free it
            XDestroyImage(image)
            shmdt(shmInfo.pointee.shmaddr)
            shmInfo.deallocate()
        } else {
            XDestroyImage(image)
        }
    }

    var data: UnsafeRawPointer? { UnsafeRawPointer(image.pointee.data) }
    var bytesPerLine: Int { Int(image.pointee.bytes_per_line) }
    var bitsPerPixel: Int { Int(image.pointee.bits_per_pixel) }
    var msbFirst: Bool { image.pointee.byte_order == MSBFirst }
}
