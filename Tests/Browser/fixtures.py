"""Real test vectors for the browser tests: openssl keys, `custos seal` files and
`custos-agent record` recordings made on Xvfb (a painted xsetroot colour, text typed by xdotool)."""

import json
import os
import threading
import time

from support import Failure, Xvfb, make_keypair, run

PASSPHRASE = "correct horse battery staple"
TYPED = "hello custos"
# Root colours painted while recording (RGB): the video's first picture, then its last.
COLOUR_FIRST = "#c83214"
COLOUR_MID = "#808080"
COLOUR_LAST = "#1450c8"
COLOUR_PNG = "#2a7f3c"


def agent_config(path, kek, display, spool, extra=""):
    with open(path, "w") as f:
        f.write(f"enable-encryption=1\nkek-file={kek}\ndisplay={display}\nxauthority=/dev/null\n"
                f"screen-interval-ms=200\nkeystroke-idle-ms=300\nspool-dir={spool}\n{extra}")


def record(bin_dir, work, x, kek, name, seconds, extra="", during=None):
    """`custos-agent record` on display x for `seconds`; `during(x)` runs alongside."""
    cfg = os.path.join(work, name + ".cfg")
    agent_config(cfg, kek, x.name, os.path.join(work, name + "-spool"), extra)
    out = os.path.join(work, name + ".custos")
    thread = None
    if during:
        thread = threading.Thread(target=during, args=(x,), daemon=True)
        thread.start()
    p = run([os.path.join(bin_dir, "custos-agent"), "record", "--config", cfg, "--seconds", str(seconds), "--out", out],
            timeout=60 + seconds)
    if thread:
        thread.join(30)
    if not os.path.exists(out):
        raise Failure(f"custos-agent record wrote no {out}: {p.stdout} {p.stderr}")
    return os.path.basename(out), p.stdout.strip()


def make(bin_dir, work):
    """Writes every fixture into `work` and returns the manifest (also written as manifest.json)."""
    custos = os.path.join(bin_dir, "custos")
    key, pub = make_keypair(work, "keypair", PASSPHRASE)
    trad, _ = make_keypair(work, "traditional", PASSPHRASE, traditional=True)
    other, other_pub = make_keypair(work, "other", "another passphrase 42")
    kek_id = run([custos, "keys", "id", pub]).stdout.strip()
    other_kek_id = run([custos, "keys", "id", other_pub]).stdout.strip()

    # custos seal: a generic file of random bytes and a keystroke chunk.
    generic_plain = os.path.join(work, "generic.bin")
    with open(generic_plain, "wb") as f:
        f.write(os.urandom(70_000))
    run([custos, "seal", "--kek", pub, "--kind", "generic", "--agent", "pc-seal", "--in", generic_plain,
         "--out", os.path.join(work, "generic.custos")])
    chunk = {"endMs": 1764547200450, "keys": [{"text": "h", "timeMs": 1764547200100}, {"text": "i", "timeMs": 1764547200200},
                                              {"text": "[Enter]", "timeMs": 1764547200450}],
             "startMs": 1764547200100, "windowTitle": "Terminal — bash", "wmClass": "xterm.XTerm"}
    chunk_plain = os.path.join(work, "chunk.json")
    with open(chunk_plain, "w") as f:
        json.dump(chunk, f, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    run([custos, "seal", "--kek", pub, "--kind", "keystrokes", "--agent", "pc-seal", "--in", chunk_plain,
         "--out", os.path.join(work, "chunk.custos")])

    # Sealed session blobs (record type 3) of two users, made by `custos seal --user --display`;
    # `custos open` of each names the per-user folder the CLI writes (the export's rule).
    sessions = []
    for i, (user, display) in enumerate([("alice", ":1"), ("CORP\\carol", ":2")]):
        name = f"session{i}.custos"
        run([custos, "seal", "--kek", pub, "--kind", "keystrokes", "--agent", "pc-seal", "--user", user, "--display", display,
             "--in", chunk_plain, "--out", os.path.join(work, name)])
        opened = os.path.join(work, f"session{i}-opened")
        run([custos, "open", "--key", key, "--passphrase-file", os.path.join(work, "keypair.pass"),
             "--in", os.path.join(work, name), "--out", opened + "/"])
        users = os.path.join(opened, "pc-seal", "users")
        folders = os.listdir(users) if os.path.isdir(users) else []
        if len(folders) != 1:
            raise Failure(f"custos open of {name} wrote {folders} under pc-seal/users, expected one folder")
        sessions.append({"sealed": name, "user": user, "display": display, "cliFolder": "pc-seal/users/" + folders[0]})

    # Agent recordings on Xvfb: AV1 video (the default) with typing and a repaint, and PNG frames.
    x = Xvfb(320, 240, 24)
    try:
        x.run(["xsetroot", "-solid", COLOUR_FIRST])

        acted = []

        def act(x):
            time.sleep(0.6)
            x.run(["xsetroot", "-solid", COLOUR_MID])
            time.sleep(0.6)
            x.run(["xsetroot", "-solid", COLOUR_LAST])
            time.sleep(0.3)
            x.run(["xdotool", "type", "--delay", "40", TYPED])
            acted.append(time.time())

        started = time.time()
        video, video_line = record(bin_dir, work, x, pub, "video", 5, during=act)
        # The repaints and the typing must fall inside the recording (with 1 s to spare for the
        # last frame and the keystroke chunk's idle time); a machine too loaded for that says so.
        if not acted or acted[0] > started + 4:
            raise Failure(f"the repaints and typing ended {acted[0] - started if acted else 'never'} s into a 5 s recording: machine too loaded")
        x.run(["xsetroot", "-solid", COLOUR_PNG])
        png, png_line = record(bin_dir, work, x, pub, "png", 0.8, extra="screen-format=png\n")
    finally:
        x.stop()
    manifest = {
        "passphrase": PASSPHRASE, "kekID": kek_id, "otherKEKID": other_kek_id,
        "keys": {"pbes2": "keypair.pem", "traditional": "traditional.pem", "other": "other.pem", "publicKey": "keypair.crt"},
        "generic": {"sealed": "generic.custos", "plain": "generic.bin"},
        "chunk": {"sealed": "chunk.custos", "plain": "chunk.json"},
        "video": {"sealed": video, "typed": TYPED, "first": COLOUR_FIRST, "last": COLOUR_LAST, "agent": video_line},
        "png": {"sealed": png, "colour": COLOUR_PNG, "agent": png_line},
        "sessions": sessions,
    }
    with open(os.path.join(work, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest
