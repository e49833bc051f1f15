"""Checks run.py makes on bytes the unit page produced (artifacts), with real tools: ffprobe,
ffmpeg and mkvinfo for the WebM file built by webm.js, Python's zipfile for zip.js."""

import base64
import json
import os
import subprocess
import zipfile

from support import Failure, run

BIN = [None]  # the custos binaries' folder, set by run.py


def _artifact(results_artifacts, name, work):
    if name not in results_artifacts:
        raise Failure(f"the page produced no {name} (its test failed?)")
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(base64.b64decode(results_artifacts[name]))
    return path


def webm_is_valid(artifacts, work):
    path = _artifact(artifacts, "recording.webm", work)
    expected = json.loads(open(_artifact(artifacts, "recording.webm.json", work)).read())
    probe = json.loads(run(["ffprobe", "-v", "error", "-count_packets", "-show_streams", "-show_format", "-of", "json", path]).stdout)
    s = probe["streams"][0]
    if (s["codec_name"], s["width"], s["height"]) != ("av1", 320, 240):
        raise Failure(f"ffprobe: {s['codec_name']} {s['width']}x{s['height']}, expected av1 320x240")
    if int(s["nb_read_packets"]) != expected["packets"]:
        raise Failure(f"ffprobe: {s['nb_read_packets']} packets, expected {expected['packets']}")
    duration_ms = round(float(probe["format"]["duration"]) * 1000)
    if abs(duration_ms - expected["durationMs"]) > 1:
        raise Failure(f"ffprobe: duration {duration_ms} ms, expected {expected['durationMs']}")
    dec = run(["ffmpeg", "-v", "error", "-i", path, "-f", "null", "-"])
    if dec.stderr.strip():
        raise Failure(f"ffmpeg decoding reported: {dec.stderr.strip()[:500]}")
    info = run(["mkvinfo", "-a", "-x", "--abort-on-warnings", path]).stdout
    for needed in ["Document type: webm", "Codec ID: V_AV1", "Codec's private data: size", "Cue point", "Duration"]:
        if needed not in info:
            raise Failure(f"mkvinfo does not show {needed!r}")
    # The same recording opened by `custos open` (Sources/Video/WebMWriter.swift): the same
    # blocks at the same times (ffprobe packet hashes and timestamps), so webm.js mirrors it.
    opened = os.path.join(work, "opened")
    run([os.path.join(BIN[0], "custos"), "open", "--key", os.path.join(work, "keypair.pem"),
         "--passphrase-file", os.path.join(work, "keypair.pass"), "--in", os.path.join(work, "video.custos"), "--out", opened + "/"])
    swift = [os.path.join(dp, f) for dp, _, fs in os.walk(opened) for f in fs if f.endswith(".webm")]
    if len(swift) != 1:
        raise Failure(f"custos open wrote {swift}, expected one WebM file")

    def packets(p):
        return run(["ffprobe", "-v", "error", "-show_packets", "-show_data_hash", "md5", "-show_entries",
                    "packet=pts,flags,size,data_hash", "-of", "csv", p]).stdout
    ours = packets(path)
    if ours.count("packet,") != expected["packets"]:
        raise Failure(f"ffprobe -show_packets listed {ours.count('packet,')} packets, expected {expected['packets']}")
    if ours != packets(swift[0]):
        raise Failure(f"webm.js and WebMWriter.swift packets differ:\n{ours}\nvs\n{packets(swift[0])}")


def zip_is_valid(artifacts, work):
    path = _artifact(artifacts, "test.zip", work)
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
        if bad:
            raise Failure(f"zipfile: CRC mismatch in {bad}")
        names = z.namelist()
        if names != ["manifest.json", "pc-1/keystrokes/Übersicht — bash.txt", "pc-1/screens/bytes.bin"]:
            raise Failure(f"zip names {names}")
        if json.loads(z.read("manifest.json")) != {"hello": "wörld"}:
            raise Failure("manifest.json content")
        if z.getinfo("manifest.json").date_time != (2026, 12, 7, 12, 30, 10):
            raise Failure(f"date_time {z.getinfo('manifest.json').date_time}")
        if z.read("pc-1/screens/bytes.bin") != open(os.path.join(work, "generic.bin"), "rb").read():
            raise Failure("stored bytes differ from the original")
        if any(i.compress_type != zipfile.ZIP_STORED for i in z.infolist()):
            raise Failure("not stored")


CHECKS = [("webm.js output: ffprobe (av1, size, packets, duration), ffmpeg decodes without error, mkvinfo shows the layout", webm_is_valid),
          ("zip.js output: Python zipfile reads every file, CRCs and names", zip_is_valid)]
