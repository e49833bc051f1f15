// custos-bench-video: encodes raw BGRX frames (ffmpeg `-f rawvideo -pix_fmt bgr0`) with the
// agent's AV1 encoder, decodes every packet again and compares it with its source.
// Usage: custos-bench-video WIDTH HEIGHT FRAMES.bgr0 [CQ-LEVEL] [KEYFRAME-EVERY]
// Prints one line of key=value: frames, bytes, keyframes, encode CPU ms per frame (median,
// thread CPU time), mean and minimum SSIM and PSNR of the decoded frames, and the peak RSS
// (VmHWM, KiB) after encoding, before the decoder starts: the encoder's footprint.
import Foundation
import Video

func threadCPUms() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) * 1000 + Double(ts.tv_nsec) / 1e6
}

let args = CommandLine.arguments
guard args.count >= 4, let width = Int(args[1]), let height = Int(args[2]) else {
    FileHandle.standardError.write(Data("usage: custos-bench-video WIDTH HEIGHT FRAMES.bgr0 [CQ-LEVEL] [KEYFRAME-EVERY]\n".utf8))
    exit(2)
}
let cq = args.count > 4 ? Int(args[4]) ?? 30 : 30
let keyEvery = args.count > 5 ? Int(args[5]) ?? 60 : 60
guard let input = FileHandle(forReadingAtPath: args[3]) else {
    FileHandle.standardError.write(Data("custos-bench-video: cannot open \(args[3])\n".utf8))
    exit(1)
}
let frameBytes = width * height * 4

func vmHWMKiB() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
    return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
}

do {
    // Pass 1: encode only (the agent's work), so the peak RSS is the encoder's.
    var packets: [[VideoPacket]] = []
    var cpu: [Double] = []
    do {
        let encoder = try AV1Encoder(width: width, height: height, settings: AV1EncoderSettings(cqLevel: cq))
        let source = try I420Frame(width: width, height: height)
        var index = 0
        while let raw = try input.read(upToCount: frameBytes), raw.count == frameBytes {
            let t0 = threadCPUms()
            try raw.withUnsafeBytes { p in
                try source.write(rows: p.baseAddress!, firstRow: 0, rowCount: height, stride: width * 4, layout: .bgrx)
            }
            packets.append(try encoder.encode(source, timeMs: Int64(index) * 1000, keyframe: index % keyEvery == 0))
            cpu.append(threadCPUms() - t0)
            index += 1
        }
    }
    let encoderHWM = vmHWMKiB()
    // Pass 2: decode every packet and compare with its source frame.
    try input.seek(toOffset: 0)
    let decoder = try AV1Decoder()
    let source = try I420Frame(width: width, height: height)
    var ssim: [Double] = [], psnr: [Double] = []
    var bytes = 0, keyframes = 0
    for framePackets in packets {
        guard let raw = try input.read(upToCount: frameBytes), raw.count == frameBytes else { break }
        try raw.withUnsafeBytes { p in
            try source.write(rows: p.baseAddress!, firstRow: 0, rowCount: height, stride: width * 4, layout: .bgrx)
        }
        for p in framePackets {
            bytes += p.data.count
            if p.isKeyframe { keyframes += 1 }
            for picture in try decoder.decode(p.data) {
                if let q = picture.compare(with: source) { ssim.append(q.ssim); psnr.append(q.psnr) }
            }
        }
    }
    let sorted = cpu.sorted()
    let median = sorted.isEmpty ? 0 : sorted[sorted.count / 2]
    func f(_ v: Double, _ d: Int) -> String { String(format: "%.\(d)f", v) }
    print("frames=\(packets.count) bytes=\(bytes) keyframes=\(keyframes) cpu_ms_median=\(f(median, 1)) "
          + "cpu_ms_total=\(f(cpu.reduce(0, +), 0)) ssim_mean=\(f(ssim.reduce(0, +) / Double(max(ssim.count, 1)), 4)) "
          + "ssim_min=\(f(ssim.min() ?? 0, 4)) psnr_mean=\(f(psnr.reduce(0, +) / Double(max(psnr.count, 1)), 2)) "
          + "rss_kib=\(encoderHWM)")
} catch {
    FileHandle.standardError.write(Data("custos-bench-video: \(error)\n".utf8))
    exit(1)
}
